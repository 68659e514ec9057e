//! Image-layer tests on the in-memory object store: behaviours and errors
//! (`behaviour`), clone chains and flatten (`clones`), and the reference-model
//! property test (`model`).

mod behaviour;
mod clones;
mod model;

use std::collections::BTreeMap;

use crate::rados::mem::MemRados;
use crate::rados::{
    BoxFuture, PoolId, PoolInfo, Rados, RadosBackend, ReadOp, ReadResult, Result, SnapContext,
    SnapId, WriteOp,
};
use crate::rbd::{Rbd, RbdConfig};
use std::sync::atomic::AtomicI64;

use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

/// Counts the object operations `rbd/` issues, per kind and object-name prefix,
/// on top of the in-memory store.
/// With `yields` set, every operation first yields to the scheduler that many
/// times before it takes effect, so concurrent requests interleave as they
/// would on a real cluster.
/// `slow_copyup_yields` more are added to writes that replace a whole object
/// without a partial write in the same op (the shape of a copyup step), so a
/// racing user write gets in first; with `hold_copyup_for_reads` such a write
/// also waits until that many data reads were served after it arrived (or a
/// bounded number of yields passed), so racing reads see the state before it.
pub struct Counting {
    inner: Arc<dyn RadosBackend>,
    counts: Mutex<BTreeMap<String, u64>>,
    yields: u32,
    slow_copyup_yields: u32,
    hold_copyup_for_reads: u64,
    data_reads: Arc<AtomicU64>,
    /// Operations still allowed before every further one fails as if the
    /// process had crashed (negative: never).
    crash_countdown: AtomicI64,
}

impl Counting {
    pub fn new(inner: Arc<dyn RadosBackend>) -> Arc<Self> {
        Self::with_yields(inner, 0, 0)
    }

    pub fn with_yields(
        inner: Arc<dyn RadosBackend>,
        yields: u32,
        slow_copyup_yields: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner,
            counts: Mutex::new(BTreeMap::new()),
            yields,
            slow_copyup_yields,
            hold_copyup_for_reads: 0,
            data_reads: Arc::new(AtomicU64::new(0)),
            crash_countdown: AtomicI64::new(-1),
        })
    }

    /// Like `with_yields`, holding copyup-shaped writes for `reads` data reads.
    pub fn holding_copyups(inner: Arc<dyn RadosBackend>, yields: u32, reads: u64) -> Arc<Self> {
        let mut c = Self::with_yields(inner, yields, 0);
        if let Some(c) = Arc::get_mut(&mut c) {
            c.hold_copyup_for_reads = reads;
        }
        c
    }

    /// Let `ops` more operations through, then fail every one with an I/O
    /// error: the image layer sees the object store vanish mid-operation.
    pub fn crash_after(&self, ops: i64) {
        self.crash_countdown.store(ops, Ordering::SeqCst);
    }

    /// True when the operation must fail because of an armed crash.
    fn crashed(&self) -> bool {
        let left = self.crash_countdown.load(Ordering::SeqCst);
        if left < 0 {
            return false;
        }
        if left == 0 {
            return true;
        }
        self.crash_countdown.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// Run `f` against the store after the configured number of yields (and,
    /// with `hold_reads`, after that many data reads were served meanwhile,
    /// giving up after a bounded number of yields).
    fn later<T: Send + 'static>(
        &self,
        extra_yields: u32,
        hold_reads: u64,
        f: impl FnOnce(&dyn RadosBackend) -> BoxFuture<'static, Result<T>> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        const HOLD_YIELDS_MAX: u32 = 20_000;
        let inner = self.inner.clone();
        let yields = self.yields + extra_yields;
        let reads = self.data_reads.clone();
        let start = reads.load(Ordering::SeqCst);
        Box::pin(async move {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            let mut spins = 0;
            while reads.load(Ordering::SeqCst) - start < hold_reads && spins < HOLD_YIELDS_MAX {
                tokio::task::yield_now().await;
                spins += 1;
            }
            f(inner.as_ref()).await
        })
    }

    fn bump(&self, kind: &str, oid: &str) {
        let prefix = oid.split('.').next().unwrap_or(oid);
        *self
            .counts
            .lock()
            .entry(format!("{kind}:{prefix}"))
            .or_default() += 1;
        *self.counts.lock().entry(kind.to_string()).or_default() += 1;
    }

    /// Operations of `key` ("read", "write", "read:rbd_data", ...) since the
    /// last reset.
    pub fn get(&self, key: &str) -> u64 {
        self.counts.lock().get(key).copied().unwrap_or(0)
    }

    pub fn reset(&self) {
        self.counts.lock().clear();
    }
}

impl RadosBackend for Counting {
    fn read(
        &self,
        pool: PoolId,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
    ) -> BoxFuture<'static, Result<Vec<ReadResult>>> {
        self.bump("read", oid);
        if self.crashed() {
            return Box::pin(std::future::ready(Err(crate::rados::RadosError::Io(
                "injected crash".into(),
            ))));
        }
        let oid = oid.to_string();
        let reads = self.data_reads.clone();
        self.later(0, 0, move |m| {
            if oid.starts_with("rbd_data.") {
                reads.fetch_add(1, Ordering::SeqCst);
            }
            m.read(pool, &oid, snap, ops)
        })
    }

    fn write(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
    ) -> BoxFuture<'static, Result<()>> {
        self.bump("write", oid);
        if self.crashed() {
            return Box::pin(std::future::ready(Err(crate::rados::RadosError::Io(
                "injected crash".into(),
            ))));
        }
        let oid = oid.to_string();
        let whole = ops.iter().any(|o| matches!(o, WriteOp::WriteFull { .. }))
            && !ops.iter().any(|o| matches!(o, WriteOp::Write { .. }));
        let (extra, hold) = if whole {
            (self.slow_copyup_yields, self.hold_copyup_for_reads)
        } else {
            (0, 0)
        };
        self.later(extra, hold, move |m| m.write(pool, &oid, snapc, ops))
    }

    fn flush(&self) -> BoxFuture<'static, Result<()>> {
        self.inner.flush()
    }

    fn list_objects(&self, pool: PoolId) -> BoxFuture<'static, Result<Vec<String>>> {
        self.bump("list", "pool");
        self.inner.list_objects(pool)
    }

    fn snap_create(&self, pool: PoolId) -> BoxFuture<'static, Result<SnapId>> {
        self.bump("snap_create", "pool");
        if self.crashed() {
            return Box::pin(std::future::ready(Err(crate::rados::RadosError::Io(
                "injected crash".into(),
            ))));
        }
        self.inner.snap_create(pool)
    }

    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> BoxFuture<'static, Result<()>> {
        if self.crashed() {
            return Box::pin(std::future::ready(Err(crate::rados::RadosError::Io(
                "injected crash".into(),
            ))));
        }
        self.inner.snap_remove(pool, snap)
    }

    fn pool_create(
        &self,
        name: &str,
        size: Option<u32>,
        min_size: Option<u32>,
        pg_num: Option<u32>,
    ) -> BoxFuture<'static, Result<PoolInfo>> {
        self.inner.pool_create(name, size, min_size, pg_num)
    }

    fn pool_list(&self) -> Result<Vec<PoolInfo>> {
        self.inner.pool_list()
    }
}

/// Small objects (order 12 = 4 KiB) so images have many objects yet stay tiny.
pub const TEST_ORDER: u8 = 12;

pub fn test_config() -> RbdConfig {
    RbdConfig {
        default_order: TEST_ORDER,
        concurrent_management_ops: 4,
        ..RbdConfig::default()
    }
}

/// An image layer on a fresh in-memory store with pool "rbd", plus the store
/// itself (to reopen) and a counter of the object operations.
pub async fn setup() -> (Arc<Rbd>, Arc<dyn RadosBackend>, Arc<Counting>) {
    let mem: Arc<dyn RadosBackend> = Arc::new(MemRados::new());
    let counting = Counting::new(mem.clone());
    let rados = Rados::new(counting.clone());
    rados.pool_create("rbd", None).await.expect("pool create");
    (Rbd::new(rados, test_config()), mem, counting)
}

/// Like `setup`, with every object operation yielding `yields` times first
/// (and whole-object replacements `slow_copyup_yields` more).
pub async fn setup_interleaved(
    yields: u32,
    slow_copyup_yields: u32,
) -> (Arc<Rbd>, Arc<dyn RadosBackend>) {
    let mem: Arc<dyn RadosBackend> = Arc::new(MemRados::new());
    let rados = Rados::new(Counting::with_yields(
        mem.clone(),
        yields,
        slow_copyup_yields,
    ));
    rados.pool_create("rbd", None).await.expect("pool create");
    (Rbd::new(rados, test_config()), mem)
}

/// A new image layer on the same store (a restart: all state from objects).
pub fn reopen(store: &Arc<dyn RadosBackend>, config: RbdConfig) -> (Arc<Rbd>, Arc<Counting>) {
    let counting = Counting::new(store.clone());
    (Rbd::new(Rados::new(counting.clone()), config), counting)
}

/// Assert two byte strings are equal, reporting where they first differ
/// rather than printing both.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8]) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "bytes differ: {} bytes read, {} expected, first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}
