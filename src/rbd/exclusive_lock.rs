//! Exclusive lock: one writer per image, and management requests routed to it.
//!
//! Within a process the `Rbd` registry hands every user the same `ImageCtx`,
//! so the process is the lock owner of every image it has open read-write.
//! Management operations (flatten, resize, snapshots ...) run on the owner,
//! one at a time per image, through [`ExclusiveLock::invoke`].
//!
//! Between processes (the CLI while a daemon has the store mounted) a request
//! is forwarded to the owner, as librbd's `invoke_async_request` does over
//! watch/notify:
//! ```text
//!   client: id = new RequestId ──send(id, op)──> owner: Image::execute(id, op)
//!             │  no answer within the timeout         │ id already done? -> its result
//!             └─ send(id, op) again (same id) ─────>  │ id running? -> wait for it
//!                ... up to max attempts, then ETIMEDOUT└ else run op, remember result
//! ```
//! Reusing the id on a retry is what keeps a slow (not lost) request from
//! running twice. The transport (`send`) is the admin socket's business.

use std::future::Future;
use std::time::Duration;

use crate::rbd::error::{RbdError, Result};
use crate::sync::{AtomicU64, Mutex, Ordering};

/// Identifies one management request across retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RequestId {
    pub client_id: u64,
    pub seq: u64,
}

/// A management operation, as a forwarded request carries it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ManagementOp {
    Flatten,
    Resize { size: u64, allow_shrink: bool },
    SnapCreate { name: String },
    SnapRemove { name: String },
    SnapProtect { name: String },
    SnapUnprotect { name: String },
    SnapRollback { name: String },
}

/// The lock owner's side: serialises management operations on one image and
/// remembers the results of recent requests, so a retried request is
/// answered, not run again.
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
    /// request `id` already completed, its result is returned and `op` is not
    /// run; a retry of a request still running waits for it (the operations
    /// lock) and then finds its result.
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

/// The client's side of a forwarded request: send it with one request id,
/// and send it again with the same id when the owner does not answer within
/// `timeout`, at most `attempts` times; then `TimedOut`.
pub async fn invoke_async_request<F, Fut>(
    what: &str,
    id: RequestId,
    timeout: Duration,
    attempts: u32,
    send: F,
) -> Result<()>
where
    F: Fn(RequestId) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for attempt in 1..=attempts.max(1) {
        match tokio::time::timeout(timeout, send(id)).await {
            Ok(r) => return r,
            Err(_) => log::warn!(
                "{what}: lock owner did not answer request {id:?} (attempt {attempt}), retrying"
            ),
        }
    }
    Err(RbdError::TimedOut(what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::AtomicUsize;

    #[tokio::test]
    async fn test_lock_same_request_id_runs_once() {
        let lock = ExclusiveLock::new(7);
        let id = lock.new_request_id();
        let runs = AtomicUsize::new(0);
        let op = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };

        lock.invoke(id, op).await.unwrap();
        lock.invoke(id, op).await.unwrap();

        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    // The short timeout is no performance threshold: the first send never
    // answers, and the retry's future is ready at its first poll, which
    // `timeout` does before it looks at the clock.
    #[tokio::test]
    async fn test_invoke_async_request_retries_with_same_id_after_timeout() {
        let seen = Mutex::new(Vec::new());

        let r = invoke_async_request(
            "flatten",
            RequestId {
                client_id: 1,
                seq: 9,
            },
            Duration::from_millis(10),
            3,
            |id| {
                let first = {
                    let mut s = seen.lock();
                    s.push(id);
                    s.len() == 1
                };
                async move {
                    if first {
                        futures::future::pending::<()>().await;
                    }
                    Ok(())
                }
            },
        )
        .await;

        assert!(r.is_ok());
        let seen = seen.lock();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], seen[1], "a retry reuses the request id");
    }

    #[tokio::test]
    async fn test_invoke_async_request_gives_up_with_etimedout() {
        let r = invoke_async_request(
            "resize",
            RequestId {
                client_id: 1,
                seq: 1,
            },
            Duration::from_millis(10),
            2,
            |_| futures::future::pending::<Result<()>>(),
        )
        .await;

        assert_eq!(r.unwrap_err().errno(), libc::ETIMEDOUT);
    }
}
