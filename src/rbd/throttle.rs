//! AsyncObjectThrottle: run one request per object, at most N in flight.
//!
//! Used by flatten, rollback, resize (trim) and remove. It stops starting new
//! requests at the first error or when cancelled, but always waits for the
//! requests already in flight: an object request is never abandoned half-way
//! (a copyup is several object writes that must all land or all be redone).

use std::future::Future;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::rbd::error::{RbdError, Result};
use crate::rbd::types::{CancelToken, ProgressSink};

/// Run `f(item)` for every item, `concurrency` at a time, reporting
/// `done/total` after each completion (`done` counts from `total - items.len()`,
/// so a caller may pass only the remaining items). Returns the first error, or
/// `Cancelled` if `cancel` fired before every item was started.
pub async fn run<F, Fut>(
    concurrency: usize,
    items: Vec<u64>,
    total: u64,
    cancel: Option<&CancelToken>,
    progress: &dyn ProgressSink,
    f: F,
) -> Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut done = total.saturating_sub(items.len() as u64);
    let mut pending = items.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut first_err: Option<RbdError> = None;
    loop {
        while first_err.is_none() && in_flight.len() < concurrency.max(1) {
            if cancel.is_some_and(|c| c.is_cancelled()) {
                if pending.len() > 0 {
                    first_err = Some(RbdError::Cancelled);
                }
                break;
            }
            match pending.next() {
                Some(item) => in_flight.push(f(item)),
                None => break,
            }
        }
        match in_flight.next().await {
            None => break,
            Some(Ok(())) => {
                done += 1;
                progress.update(done, total);
            }
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbd::types::NoProgress;
    use crate::sync::{AtomicUsize, Ordering};

    #[test]
    fn test_throttle_never_exceeds_concurrency() {
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);

        let r =
            futures::executor::block_on(run(3, (0..20).collect(), 20, None, &NoProgress, |_| {
                let (now, peak) = (&now, &peak);
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }));

        assert!(r.is_ok());
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn test_throttle_cancelled_stops_starting_and_reports_cancelled() {
        let cancel = CancelToken::new();
        let started = AtomicUsize::new(0);

        let r = futures::executor::block_on(run(
            1,
            (0..10).collect(),
            10,
            Some(&cancel),
            &NoProgress,
            |i| {
                let (cancel, started) = (&cancel, &started);
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    if i == 3 {
                        cancel.cancel();
                    }
                    Ok(())
                }
            },
        ));

        assert_eq!(r, Err(RbdError::Cancelled));
        assert_eq!(started.load(Ordering::SeqCst), 4);
    }
}
