//! The daemon side of the admin socket: accepts connections, runs each request
//! through a [`Handler`], streams its progress and the final result back.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use super::proto::{Event, MAX_LINE, PROTO_VERSION, Request, decode_line, encode_line};
use crate::rados::BoxFuture;
use crate::sync::{Arc, Mutex};

/// How often an idle request re-sends its last progress, so the client's read
/// timeout only fires when the daemon is really stuck.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long a connection may take to send its request line.
const REQUEST_WAIT: Duration = Duration::from_secs(60);

/// Completed results remembered for retried requests.
const RECENT_RESULTS: usize = 256;

/// Reports progress of a running request back to its client.
#[derive(Clone)]
pub struct ProgressTx {
    id: u64,
    tx: Option<broadcast::Sender<Event>>,
}

impl ProgressTx {
    /// `done` of `total` units of `what` (e.g. "Image flatten").
    pub fn send(&self, what: &str, done: u64, total: u64) {
        if let Some(tx) = &self.tx {
            // No receiver means the client went away; the operation carries on.
            let _ = tx.send(Event::Progress {
                id: self.id,
                what: what.to_string(),
                done,
                total,
            });
        }
    }

    /// A sink that drops everything (for callers without a client).
    pub fn discard() -> Self {
        Self { id: 0, tx: None }
    }
}

/// The outcome of one request: its output, or an errno with a message.
pub type Outcome = Result<serde_json::Value, (i32, String)>;

/// What the daemon does with a request's arguments.
pub trait Handler: Send + Sync + 'static {
    /// Run request `id` (the client's id, the same on its retries).
    fn handle(
        &self,
        id: u64,
        args: serde_json::Value,
        progress: ProgressTx,
    ) -> BoxFuture<'static, Outcome>;
}

#[derive(Default)]
struct Requests {
    running: HashMap<u64, broadcast::Sender<Event>>,
    done: VecDeque<(u64, Event)>,
}

/// The requests of a server, and a wake-up for each one that finishes.
#[derive(Default)]
struct Shared {
    requests: Mutex<Requests>,
    finished: tokio::sync::Notify,
}

/// A listening admin socket. Dropping it stops accepting and removes the
/// socket file; [`AdminServer::close`] also lets running requests finish.
pub struct AdminServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl AdminServer {
    /// Bind `path` (mode 0600) and serve requests with `handler` on the current
    /// tokio runtime. A stale socket file left by a dead daemon is replaced; the
    /// caller holds the store lock, so no live daemon can own it.
    pub fn bind(path: &Path, handler: Arc<dyn Handler>) -> io::Result<Self> {
        Self::bind_with_keepalive(path, handler, KEEPALIVE)
    }

    /// [`AdminServer::bind`], re-sending progress every `keepalive`.
    pub fn bind_with_keepalive(
        path: &Path,
        handler: Arc<dyn Handler>,
        keepalive: Duration,
    ) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Created 0600 (umask), not made so after: no moment anyone else
        // may connect. The umask is the process's, so this is brief.
        // SAFETY: umask only swaps the process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, putting the mask back.
        unsafe { libc::umask(old) };
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        let shared = serving.clone();
                        tokio::spawn(async move {
                            if let Err(e) = serve_one(stream, handler, shared, keepalive).await {
                                log::debug!("admin connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        log::warn!("admin socket accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
            task,
            shared,
        })
    }

    /// Stop taking requests now (the socket file goes), then wait, at most
    /// `limit`, for those running to finish: an import must not be cut off
    /// half written by a shutdown.
    pub fn close(self, limit: Duration) -> impl std::future::Future<Output = ()> + Send {
        let shared = self.shared.clone();
        drop(self);
        async move {
            let wait = async {
                loop {
                    let finished = shared.finished.notified();
                    let left = shared.requests.lock().running.len();
                    if left == 0 {
                        return;
                    }
                    log::info!("waiting for {left} admin request(s) to finish");
                    finished.await;
                }
            };
            if tokio::time::timeout(limit, wait).await.is_err() {
                log::warn!("admin requests still running after {limit:?}; closing anyway");
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(
    stream: UnixStream,
    handler: Arc<dyn Handler>,
    shared: Arc<Shared>,
    keepalive: Duration,
) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd).take(MAX_LINE as u64);
    let mut line = Vec::new();
    // A client sends its request at once; one that sends nothing is not
    // kept for ever.
    tokio::time::timeout(REQUEST_WAIT, rd.read_until(b'\n', &mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request line"))??;
    let req: Request = match decode_line(&line) {
        Ok(r) => r,
        Err(e) => {
            let ev = result_event(0, Err((libc::EINVAL, format!("malformed request: {e}"))));
            return wr.write_all(&encode_line(&ev)).await;
        }
    };
    if req.v != PROTO_VERSION {
        let msg = format!(
            "admin protocol version {} not supported (daemon speaks {PROTO_VERSION}); \
             use the rbdfs binary that runs the daemon",
            req.v
        );
        let ev = result_event(req.id, Err((libc::EPROTO, msg)));
        return wr.write_all(&encode_line(&ev)).await;
    }
    log::info!("admin request {} {}", req.id, req.verb);
    let req_id = req.id;

    // A retry of a request we know: replay its result or follow it while it runs.
    let attached = {
        let mut r = shared.requests.lock();
        if let Some((_, ev)) = r.done.iter().find(|(id, _)| *id == req.id) {
            Err(ev.clone())
        } else {
            match r.running.get(&req.id) {
                Some(tx) => Ok(tx.subscribe()),
                None => {
                    let (tx, rx) = broadcast::channel(64);
                    r.running.insert(req.id, tx.clone());
                    tokio::spawn(run_request(req, handler, shared.clone(), tx));
                    Ok(rx)
                }
            }
        }
    };
    let mut events = match attached {
        Ok(rx) => rx,
        Err(done) => return wr.write_all(&encode_line(&done)).await,
    };
    let mut last: Option<Event> = None;
    loop {
        match tokio::time::timeout(keepalive, events.recv()).await {
            Ok(Ok(ev)) => {
                wr.write_all(&encode_line(&ev)).await?;
                if matches!(ev, Event::Result { .. }) {
                    return Ok(());
                }
                last = Some(ev);
            }
            // Lagging behind only loses progress lines; the result comes last.
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                // Finished between our subscribe and now: the result is recorded.
                let ev = {
                    let r = shared.requests.lock();
                    r.done
                        .iter()
                        .rev()
                        .find(|(i, _)| *i == req_id)
                        .map(|(_, e)| e.clone())
                };
                if let Some(ev) = ev {
                    wr.write_all(&encode_line(&ev)).await?;
                }
                return Ok(());
            }
            Err(_) => {
                // The last progress again, or a line the client skips
                // (`what` empty) from a request that reports none (scrub).
                let ev = last.clone().unwrap_or_else(|| Event::Progress {
                    id: req_id,
                    what: String::new(),
                    done: 0,
                    total: 0,
                });
                wr.write_all(&encode_line(&ev)).await?;
            }
        }
    }
}

async fn run_request(
    req: Request,
    handler: Arc<dyn Handler>,
    shared: Arc<Shared>,
    tx: broadcast::Sender<Event>,
) {
    let id = req.id;
    let progress = ProgressTx {
        id,
        tx: Some(tx.clone()),
    };
    // Run apart, so that a handler that panics still answers (and leaves
    // no entry that its retries would follow for ever).
    let outcome = match tokio::spawn(handler.handle(id, req.args, progress)).await {
        Ok(outcome) => outcome,
        Err(e) => {
            log::error!("admin request {id} failed: {e}");
            Err((
                libc::EIO,
                format!("the daemon failed running the command: {e}"),
            ))
        }
    };
    let ev = result_event(id, outcome);
    {
        let mut r = shared.requests.lock();
        r.running.remove(&id);
        r.done.push_back((id, ev.clone()));
        if r.done.len() > RECENT_RESULTS {
            r.done.pop_front();
        }
    }
    shared.finished.notify_waiters();
    let _ = tx.send(ev);
    log::info!("admin request {id} finished");
}

fn result_event(id: u64, outcome: Outcome) -> Event {
    match outcome {
        Ok(output) => Event::Result {
            id,
            errno: 0,
            message: String::new(),
            output,
        },
        Err((errno, message)) => Event::Result {
            id,
            errno,
            message,
            output: serde_json::Value::Null,
        },
    }
}
