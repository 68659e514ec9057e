//! The client side of the object layer: a librados-shaped API.
//!
//! `rbd/` talks to objects only through [`Rados`] and [`IoCtx`]. Behind them sits a
//! [`RadosBackend`]: the in-process cluster of OSDs (`osd::Cluster`), or the plain
//! in-memory [`mem::MemRados`] that serves as the reference model in tests. A third
//! backend could talk to a real Ceph cluster without touching `rbd/` or `fuse/`.
//!
//! Semantics every backend must follow (the property tests hold them to it):
//! - a compound operation on one object is atomic;
//! - a write carries a [`SnapContext`]; when its `seq` is newer than the object's,
//!   the object is first preserved as a clone for the snapshots taken since;
//! - a read at a snapshot id returns the object as it was when that snapshot was
//!   taken, or `NotFound` if it did not exist then (or the snapshot was removed);
//! - a write returns once it is applied (readable) on every replica; `flush`
//!   returns once every write that returned before it is committed (durable) on
//!   every replica.

pub mod error;
pub mod mem;
pub mod op;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use error::{RadosError, Result};
pub use op::{
    CloneInfo, ObjectStat, PoolId, ReadOp, ReadResult, SNAP_HEAD, SnapContext, SnapId, SnapSetInfo,
    WriteOp,
};

/// A boxed future, as the object-safe backend trait returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A completion callback: runs once, with the result, on whichever thread
/// finishes the operation (an OSD worker, for the in-process cluster).
pub type Done<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A pool as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolInfo {
    pub id: PoolId,
    pub name: String,
    /// Replicas kept of every object.
    pub size: u32,
    /// Replicas that must be up for I/O to proceed.
    pub min_size: u32,
    /// Placement groups the pool's objects are hashed into.
    pub pg_num: u32,
}

/// What a backend has to provide. Every method is asynchronous from the caller's
/// side; implementations may do the work on their own threads.
pub trait RadosBackend: Send + Sync + 'static {
    /// Run a read operation on `oid` at snapshot `snap` (`SNAP_HEAD` for the head).
    /// Returns one result per step.
    fn read(
        &self,
        pool: PoolId,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
    ) -> BoxFuture<'static, Result<Vec<ReadResult>>>;

    /// Run a write operation on the head of `oid` under `snapc`, atomically.
    /// Returns once it is applied on every replica.
    fn write(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
    ) -> BoxFuture<'static, Result<()>>;

    /// Like [`RadosBackend::read`], but `done` gets the result on the thread
    /// that completes the op, so a caller that answers from there (a FUSE
    /// reply) wakes no task. One attempt only: where `read` would wait for
    /// the cluster to serve the op (a PG not peered yet, too few replicas),
    /// `done` gets `Busy`, and the caller falls back to `read`; an op that
    /// arrives while the map changes waits for the peering, as with `read`.
    /// By default, `read` run on the current tokio runtime (`Busy` outside
    /// one).
    fn read_then(
        &self,
        pool: PoolId,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
        done: Done<Vec<ReadResult>>,
    ) {
        spawn_then(self.read(pool, oid, snap, ops), done)
    }

    /// [`RadosBackend::write`] as [`RadosBackend::read_then`] is to `read`.
    fn write_then(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
        done: Done<()>,
    ) {
        spawn_then(self.write(pool, oid, snapc, ops), done)
    }

    /// Returns once every write that completed before the call is committed
    /// (durable) on every replica.
    fn flush(&self) -> BoxFuture<'static, Result<()>>;

    /// [`RadosBackend::flush`] as [`RadosBackend::read_then`] is to `read`,
    /// for a caller whose thread may block: the backend may sync on it (a
    /// FUSE thread answering fsync) rather than hand the sync to another
    /// thread and wait. By default, `flush` run on the current tokio runtime.
    fn flush_then(&self, done: Done<()>) {
        spawn_then(self.flush(), done)
    }

    /// Names of the objects in a pool that have a head or a clone, sorted.
    fn list_objects(&self, pool: PoolId) -> BoxFuture<'static, Result<Vec<String>>>;

    /// Allocate a new self-managed snapshot id in `pool` (strictly increasing).
    fn snap_create(&self, pool: PoolId) -> BoxFuture<'static, Result<SnapId>>;

    /// Remove a self-managed snapshot: reads at it fail from now on, and clones
    /// kept only for it are trimmed (possibly in the background).
    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> BoxFuture<'static, Result<()>>;

    /// Create a pool with `size` replicas (`min_size`, `pg_num` from the backend's
    /// defaults when `None`).
    fn pool_create(
        &self,
        name: &str,
        size: Option<u32>,
        min_size: Option<u32>,
        pg_num: Option<u32>,
    ) -> BoxFuture<'static, Result<PoolInfo>>;

    /// All pools, by id.
    fn pool_list(&self) -> Result<Vec<PoolInfo>>;
}

/// Run `f` on the current tokio runtime and hand its result to `done`.
fn spawn_then<T: Send + 'static>(f: BoxFuture<'static, Result<T>>, done: Done<T>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(async move { done(f.await) })),
        Err(_) => done(Err(RadosError::Busy(
            "no async runtime to run the op on".into(),
        ))),
    }
}

/// A handle to a cluster, cheap to clone.
#[derive(Clone)]
pub struct Rados {
    backend: Arc<dyn RadosBackend>,
}

impl Rados {
    pub fn new(backend: Arc<dyn RadosBackend>) -> Self {
        Self { backend }
    }

    /// The backend, for callers that need its specific API.
    pub fn backend(&self) -> &Arc<dyn RadosBackend> {
        &self.backend
    }

    /// An I/O context on the pool called `name`.
    pub fn ioctx(&self, name: &str) -> Result<IoCtx> {
        let pool = self
            .backend
            .pool_list()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| RadosError::PoolNotFound(name.to_string()))?;
        Ok(self.ioctx_by_id(pool.id))
    }

    /// An I/O context on pool `id` (not checked until the first operation).
    pub fn ioctx_by_id(&self, id: PoolId) -> IoCtx {
        IoCtx {
            backend: self.backend.clone(),
            pool: id,
        }
    }

    pub fn pool_list(&self) -> Result<Vec<PoolInfo>> {
        self.backend.pool_list()
    }

    pub async fn pool_create(&self, name: &str, size: Option<u32>) -> Result<PoolInfo> {
        self.backend.pool_create(name, size, None, None).await
    }

    pub async fn flush(&self) -> Result<()> {
        self.backend.flush().await
    }
}

/// An I/O context: a pool, through which objects are read and written.
#[derive(Clone)]
pub struct IoCtx {
    backend: Arc<dyn RadosBackend>,
    pool: PoolId,
}

impl IoCtx {
    pub fn pool_id(&self) -> PoolId {
        self.pool
    }

    /// Run a compound read at `snap`.
    pub async fn operate_read(
        &self,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
    ) -> Result<Vec<ReadResult>> {
        self.backend.read(self.pool, oid, snap, ops).await
    }

    /// Run a compound write under `snapc`.
    pub async fn operate_write(
        &self,
        oid: &str,
        snapc: &SnapContext,
        ops: Vec<WriteOp>,
    ) -> Result<()> {
        self.backend.write(self.pool, oid, snapc.clone(), ops).await
    }

    /// See [`RadosBackend::read_then`].
    pub fn read_then(
        &self,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
        done: Done<Vec<ReadResult>>,
    ) {
        self.backend.read_then(self.pool, oid, snap, ops, done)
    }

    /// See [`RadosBackend::write_then`].
    pub fn write_then(&self, oid: &str, snapc: &SnapContext, ops: Vec<WriteOp>, done: Done<()>) {
        self.backend
            .write_then(self.pool, oid, snapc.clone(), ops, done)
    }

    /// Read `[off, off + len)` of `oid` at `snap` (short at the end of the object).
    pub async fn read(&self, oid: &str, snap: SnapId, off: u64, len: u64) -> Result<Bytes> {
        let mut r = self
            .operate_read(oid, snap, vec![ReadOp::Read { off, len }])
            .await?;
        Ok(r.pop().map(ReadResult::into_data).unwrap_or_default())
    }

    /// Size of `oid` at `snap`.
    pub async fn stat(&self, oid: &str, snap: SnapId) -> Result<u64> {
        match self
            .operate_read(oid, snap, vec![ReadOp::Stat])
            .await?
            .pop()
        {
            Some(ReadResult::Stat(s)) => Ok(s.size),
            other => Err(RadosError::Io(format!("unexpected stat reply {other:?}"))),
        }
    }

    /// Write `data` at `off` of the head of `oid`.
    pub async fn write(&self, oid: &str, snapc: &SnapContext, off: u64, data: Bytes) -> Result<()> {
        self.operate_write(oid, snapc, vec![WriteOp::Write { off, data }])
            .await
    }

    /// Remove the head of `oid`.
    pub async fn remove(&self, oid: &str, snapc: &SnapContext) -> Result<()> {
        self.operate_write(oid, snapc, vec![WriteOp::Remove]).await
    }

    /// All omap entries of `oid` (head), fetched in pages.
    pub async fn omap_get_all(
        &self,
        oid: &str,
    ) -> Result<std::collections::BTreeMap<String, Bytes>> {
        const PAGE: u64 = 1024;
        let mut all = std::collections::BTreeMap::new();
        let mut after = String::new();
        loop {
            let page = self
                .operate_read(
                    oid,
                    SNAP_HEAD,
                    vec![ReadOp::OmapGetVals {
                        start_after: after.clone(),
                        max: PAGE,
                    }],
                )
                .await?
                .pop()
                .map(ReadResult::into_map)
                .unwrap_or_default();
            let n = page.len() as u64;
            if let Some(last) = page.keys().next_back() {
                after = last.clone();
            }
            all.extend(page);
            if n < PAGE {
                return Ok(all);
            }
        }
    }

    /// The clones of `oid` (librados `list_snaps`).
    pub async fn list_snaps(&self, oid: &str) -> Result<SnapSetInfo> {
        match self
            .operate_read(oid, SNAP_HEAD, vec![ReadOp::ListSnaps])
            .await?
            .pop()
        {
            Some(ReadResult::Snaps(s)) => Ok(s),
            other => Err(RadosError::Io(format!(
                "unexpected list_snaps reply {other:?}"
            ))),
        }
    }

    pub async fn list_objects(&self) -> Result<Vec<String>> {
        self.backend.list_objects(self.pool).await
    }

    /// Allocate a self-managed snapshot id in this pool.
    pub async fn snap_create(&self) -> Result<SnapId> {
        self.backend.snap_create(self.pool).await
    }

    /// Remove a self-managed snapshot of this pool.
    pub async fn snap_remove(&self, snap: SnapId) -> Result<()> {
        self.backend.snap_remove(self.pool, snap).await
    }

    /// See [`RadosBackend::flush`].
    pub async fn flush(&self) -> Result<()> {
        self.backend.flush().await
    }

    /// See [`RadosBackend::flush_then`].
    pub fn flush_then(&self, done: Done<()>) {
        self.backend.flush_then(done)
    }
}
