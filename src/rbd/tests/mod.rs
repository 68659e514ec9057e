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
use crate::sync::{Arc, Mutex};

/// Counts the object operations `rbd/` issues, per kind and object-name prefix,
/// on top of the in-memory store.
pub struct Counting {
    inner: Arc<MemRados>,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Counting {
    pub fn new(inner: Arc<MemRados>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            counts: Mutex::new(BTreeMap::new()),
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
        self.inner.read(pool, oid, snap, ops)
    }

    fn write(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
    ) -> BoxFuture<'static, Result<()>> {
        self.bump("write", oid);
        self.inner.write(pool, oid, snapc, ops)
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
        self.inner.snap_create(pool)
    }

    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> BoxFuture<'static, Result<()>> {
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
pub async fn setup() -> (Arc<Rbd>, Arc<MemRados>, Arc<Counting>) {
    let mem = Arc::new(MemRados::new());
    let counting = Counting::new(mem.clone());
    let rados = Rados::new(counting.clone());
    rados.pool_create("rbd", None).await.expect("pool create");
    (Rbd::new(rados, test_config()), mem, counting)
}

/// A new image layer on the same store (a restart: all state from objects).
pub fn reopen(mem: &Arc<MemRados>, config: RbdConfig) -> (Arc<Rbd>, Arc<Counting>) {
    let counting = Counting::new(mem.clone());
    (Rbd::new(Rados::new(counting.clone()), config), counting)
}
