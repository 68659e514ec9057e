//! Exclusive lock: one writer per image.
//!
//! Within a process the `Rbd` registry hands every user the same `ImageCtx`,
//! so the process is the lock owner of every image it has open, and
//! management operations on one image run one at a time through
//! [`ExclusiveLock::invoke`]. Each request gets a request id
//! (client id, sequence) as in librbd's `invoke_async_request`; an operation
//! that returns `Cancelled`/`ERESTART` because it was interrupted is reported
//! to the caller, who may run it again (operations are restartable).
//!
//! Between processes the CLI does not write an image a running daemon owns:
//! it sends the verb over the admin socket, and the daemon runs it here, as the
//! owner. `RequestId` is what such a forwarded request carries so that a retry
//! after a timeout is recognised and not executed twice.

use std::future::Future;

use crate::rbd::error::Result;
use crate::sync::{AtomicU64, Mutex, Ordering};

/// Identifies one management request across retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    pub client_id: u64,
    pub seq: u64,
}

/// The lock owner's side: serialises management operations on one image and
/// remembers which requests completed (so a retried request is answered, not
/// re-run).
pub struct ExclusiveLock {
    client_id: u64,
    next_seq: AtomicU64,
    ops: tokio::sync::Mutex<()>,
    completed: Mutex<std::collections::VecDeque<(RequestId, Result<()>)>>,
}

/// Completed request results remembered for retries.
const COMPLETED_KEPT: usize = 64;

impl ExclusiveLock {
    pub fn new(client_id: u64) -> Self {
        Self {
            client_id,
            next_seq: AtomicU64::new(1),
            ops: tokio::sync::Mutex::new(()),
            completed: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// A fresh request id of this client.
    pub fn new_request_id(&self) -> RequestId {
        RequestId {
            client_id: self.client_id,
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
        }
    }

    /// Run management operation `op` as the lock owner, one at a time. If
    /// `id` already completed, its result is returned without running again.
    pub async fn invoke<F, Fut>(&self, id: RequestId, op: F) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let _owner = self.ops.lock().await;
        if let Some((_, r)) = self.completed.lock().iter().find(|(i, _)| *i == id) {
            return r.clone();
        }
        let r = op().await;
        let mut done = self.completed.lock();
        if done.len() == COMPLETED_KEPT {
            done.pop_front();
        }
        done.push_back((id, r.clone()));
        r
    }
}
