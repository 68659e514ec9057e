//! Bookkeeping shared by the client side and the OSDs:
//! - [`Reply`]: the one-shot answer to a client op; dropping it unanswered
//!   answers `ShuttingDown`, so a caller never hangs on a lost op;
//! - [`Gate`]: counts client ops in flight and holds new ones back while the
//!   map changes and PGs peer (Ceph's "waiting for map").

use crate::rados::{Done, RadosError, Result};
use crate::sync::{Arc, Condvar, Mutex};

/// Counts ops in flight and blocks new ones during peering.
pub(crate) struct Gate<P> {
    st: Mutex<GateState<P>>,
    cond: Condvar,
}

struct GateState<P> {
    inflight: usize,
    peering: bool,
    closed: bool,
    /// Ops that arrived during peering, in arrival order.
    parked: Vec<P>,
}

/// What the gate says about a new op.
pub(crate) enum Admit<P> {
    /// Go ahead; the op counts as in flight until its [`Reply`] is dropped.
    Go(P),
    /// Parked until peering ends.
    Parked,
    /// The cluster is shutting down; the op is handed back.
    Closed(P),
}

impl<P> Gate<P> {
    pub fn new() -> Self {
        Gate {
            st: Mutex::new(GateState {
                inflight: 0,
                peering: false,
                closed: false,
                parked: Vec::new(),
            }),
            cond: Condvar::new(),
        }
    }

    pub fn admit(&self, op: P) -> Admit<P> {
        let mut st = self.st.lock();
        if st.closed {
            return Admit::Closed(op);
        }
        if st.peering {
            st.parked.push(op);
            return Admit::Parked;
        }
        st.inflight += 1;
        Admit::Go(op)
    }

    /// Like [`Gate::admit`] but waits out peering instead of parking (for
    /// callers on their own thread). Returns false when closed.
    pub fn enter_blocking(&self) -> bool {
        let mut st = self.st.lock();
        while st.peering && !st.closed {
            self.cond.wait(&mut st);
        }
        if st.closed {
            return false;
        }
        st.inflight += 1;
        true
    }

    pub fn leave(&self) {
        let mut st = self.st.lock();
        st.inflight -= 1;
        if st.inflight == 0 {
            self.cond.notify_all();
        }
    }

    /// Stop admitting ops and wait for those in flight to finish.
    pub fn begin_peering(&self) {
        let mut st = self.st.lock();
        while st.peering {
            self.cond.wait(&mut st);
        }
        st.peering = true;
        while st.inflight > 0 {
            self.cond.wait(&mut st);
        }
    }

    /// Admit ops again; returns the parked ones for the caller to resubmit.
    pub fn end_peering(&self) -> Vec<P> {
        let mut st = self.st.lock();
        st.peering = false;
        self.cond.notify_all();
        std::mem::take(&mut st.parked)
    }

    /// Refuse new ops, wait for those in flight; returns the parked ones.
    pub fn close(&self) -> Vec<P> {
        let mut st = self.st.lock();
        st.closed = true;
        self.cond.notify_all();
        while st.inflight > 0 {
            self.cond.wait(&mut st);
        }
        std::mem::take(&mut st.parked)
    }
}

/// Something that can leave the gate (type-erased over the parked op type).
pub(crate) trait Leave: Send + Sync {
    fn leave(&self);
}

impl<P: Send> Leave for Gate<P> {
    fn leave(&self) {
        Gate::leave(self)
    }
}

/// The answer to one client op; counts as in flight until dropped.
pub(crate) struct Reply<T> {
    done: Option<Done<T>>,
    gate: Arc<dyn Leave>,
}

impl<T> Reply<T> {
    /// Wrap the completion of an op the gate admitted.
    pub fn new(done: Done<T>, gate: Arc<dyn Leave>) -> Self {
        Reply {
            done: Some(done),
            gate,
        }
    }

    /// Answer the op. The gate is left first: the caller may issue its next
    /// op from `done`.
    pub fn send(mut self, r: Result<T>) {
        let done = self.done.take();
        drop(self);
        if let Some(done) = done {
            done(r);
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        self.gate.leave();
        if let Some(done) = self.done.take() {
            done(Err(RadosError::ShuttingDown));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reply_dropped_unanswered_answers_shutting_down_and_leaves_gate() {
        let gate: Arc<Gate<()>> = Arc::new(Gate::new());
        assert!(matches!(gate.admit(()), Admit::Go(())));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<Result<()>>();

        drop(Reply::new(
            Box::new(move |r| drop(tx.send(r))),
            gate.clone(),
        ));

        assert_eq!(rx.try_recv(), Ok(Err(RadosError::ShuttingDown)));
        assert!(
            gate.close().is_empty(),
            "close returns once nothing is in flight"
        );
    }
}
