//! Background flattens the daemon runs, one per image at most, whoever asked
//! for it: `setfattr user.rbd.flatten 1` and `rbdfs flatten` while mounted are
//! the same job, so both see the same progress and the same result.
//!
//! ```text
//!   Idle --start--> Running{done,total} --ok--------> Done
//!                        |         \------error-----> Failed(reason)
//!                        \--cancel (next object)----> Cancelled
//!   Done/Failed/Cancelled --start--> Running   (a rerun resumes: copied
//!                                               objects are skipped)
//! ```

use std::collections::HashMap;
use std::fmt;

use tokio::sync::watch;

use crate::rbd::{CancelToken, Image, ProgressSink, RbdError};
use crate::sync::{Arc, Mutex};

/// Where a flatten stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Idle,
    Running { done: u64, total: u64 },
    Done,
    Failed { errno: i32, reason: String },
    Cancelled,
}

impl JobState {
    pub fn is_running(&self) -> bool {
        matches!(self, JobState::Running { .. })
    }

    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed { .. } | JobState::Cancelled
        )
    }
}

/// The text `getfattr -n user.rbd.flatten` shows.
impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Idle => write!(f, "idle"),
            JobState::Running { done, total } => write!(f, "running {done}/{total}"),
            JobState::Done => write!(f, "done"),
            JobState::Failed { reason, .. } => write!(f, "failed: {reason}"),
            JobState::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// One flatten job: its state (watchable) and its cancel token.
pub struct Job {
    state: watch::Sender<JobState>,
    cancel: CancelToken,
}

impl Job {
    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    /// Follow the state as it changes.
    pub fn subscribe(&self) -> watch::Receiver<JobState> {
        self.state.subscribe()
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

struct Sink(Arc<Job>);

impl ProgressSink for Sink {
    fn update(&self, done: u64, total: u64) {
        self.0.state.send_replace(JobState::Running { done, total });
    }
}

/// The flatten jobs of the daemon, by image (`pool/id`: a rename keeps its
/// job, a new image under a reused name starts with none).
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state for `key` (`Idle` when no job ever ran).
    pub fn state(&self, key: &str) -> JobState {
        self.jobs
            .lock()
            .get(key)
            .map(|j| j.state())
            .unwrap_or(JobState::Idle)
    }

    /// The job for `key`, if one ran or runs.
    pub fn get(&self, key: &str) -> Option<Arc<Job>> {
        self.jobs.lock().get(key).cloned()
    }

    /// Cancel every running flatten and wait (at most `limit`) for each to
    /// stop at its next object boundary; a rerun resumes them. For shutdown.
    pub async fn cancel_all(&self, limit: std::time::Duration) {
        let jobs: Vec<Arc<Job>> = self.jobs.lock().values().cloned().collect();
        for j in &jobs {
            j.cancel();
        }
        let wait_all = async {
            for j in &jobs {
                let mut rx = j.subscribe();
                // An error means the job is gone, which is as good as finished.
                let _ = rx.wait_for(|s| !s.is_running()).await;
            }
        };
        if tokio::time::timeout(limit, wait_all).await.is_err() {
            log::warn!("a flatten did not stop within {limit:?}; it resumes when rerun");
        }
    }

    /// Start flattening `image` in the background unless a flatten of it runs
    /// already; returns the job and whether this call started it. The image
    /// must be a clone's head (the caller checks, so errors reach it directly).
    pub fn start(&self, key: &str, image: Arc<Image>) -> (Arc<Job>, bool) {
        let mut jobs = self.jobs.lock();
        if let Some(j) = jobs.get(key) {
            if j.state().is_running() {
                return (j.clone(), false);
            }
        }
        let (tx, _) = watch::channel(JobState::Running { done: 0, total: 0 });
        let job = Arc::new(Job {
            state: tx,
            cancel: CancelToken::new(),
        });
        jobs.insert(key.to_string(), job.clone());
        drop(jobs);
        let key = key.to_string();
        let j = job.clone();
        tokio::spawn(async move {
            log::info!("flatten of {key} started");
            let sink = Sink(j.clone());
            let result = image.flatten(&sink, &j.cancel).await;
            let end = match result {
                Ok(()) => JobState::Done,
                Err(RbdError::Cancelled) => JobState::Cancelled,
                Err(e) => JobState::Failed {
                    errno: e.errno(),
                    reason: e.to_string(),
                },
            };
            log::info!("flatten of {key} ended: {end}");
            j.state.send_replace(end);
        });
        (job, true)
    }
}
