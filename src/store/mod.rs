//! One OSD's local storage: transactions, a write-ahead journal, object files.
//!
//! The OSD above builds a [`Transaction`] (the ObjectStore transaction of Ceph's
//! write path) and queues it; the store journals it and applies it to the
//! object files (applied, readable), in queue order, and makes it durable
//! (committed) with a later `fdatasync` that many transactions share. Reads
//! see applied state only.
//!
//! The store knows nothing of snapshots, PGs' meaning or replication: clones are
//! plain objects with a snap id in their key, PG logs and infos are collection
//! metadata. It only promises that a transaction is atomic, durable once its
//! commit callback ran, that a killed process reopens to a prefix of the
//! queue order that includes every applied transaction, and that a power
//! loss reopens to a prefix that includes every committed one (plus, in the
//! object files, maybe some in-place bytes of the transactions it lost).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::rados::{PoolId, SnapId};

pub mod memstore;

/// A placement group's collection of objects (Ceph's `coll_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CollId {
    pub pool: PoolId,
    pub pg: u32,
}

/// An object in a collection: head (`snap == SNAP_HEAD`) or clone (Ceph's `ghobject_t`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub coll: CollId,
    pub name: String,
    pub snap: SnapId,
}

/// One step of a transaction. Every step is applied in order; a transaction is
/// all-or-nothing across a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxOp {
    CreateCollection(CollId),
    /// Removes the collection with all its objects and metadata.
    RemoveCollection(CollId),
    /// Create the object empty if it does not exist.
    Touch(ObjectKey),
    /// Write at an offset, creating and growing the object as needed.
    Write {
        key: ObjectKey,
        off: u64,
        data: Bytes,
    },
    /// Zero a range inside the object (never grows it).
    Zero {
        key: ObjectKey,
        off: u64,
        len: u64,
    },
    /// Set the size (creating the object if needed).
    Truncate {
        key: ObjectKey,
        size: u64,
    },
    /// Remove the object, its attributes and omap (no-op if absent).
    Remove(ObjectKey),
    /// Replace `to` with a full copy of `from`: data, attributes and omap.
    Clone {
        from: ObjectKey,
        to: ObjectKey,
    },
    SetAttrs {
        key: ObjectKey,
        attrs: BTreeMap<String, Bytes>,
    },
    RmAttr {
        key: ObjectKey,
        name: String,
    },
    OmapSet {
        key: ObjectKey,
        entries: BTreeMap<String, Bytes>,
    },
    OmapRmKeys {
        key: ObjectKey,
        keys: Vec<String>,
    },
    OmapClear(ObjectKey),
    /// Collection metadata: PG info, PG log entries (Ceph keeps these in the
    /// pgmeta object's omap).
    CollMetaSet {
        coll: CollId,
        entries: BTreeMap<String, Bytes>,
    },
    CollMetaRm {
        coll: CollId,
        keys: Vec<String>,
    },
}

/// An ordered, atomic list of steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<TxOp>,
    /// Apply only once the transaction is durable. A store may otherwise
    /// apply it before it commits, so that after a power loss (not a process
    /// kill) the object files can hold some in-place bytes of a transaction
    /// the journal lost. Set it when such bytes would contradict metadata
    /// that stays, e.g. an overwrite that invalidates a stored data digest.
    pub commit_first: bool,
    /// May use the free space a store keeps in reserve (most of it), as
    /// Ceph's `FULL_TRY` ops may: for transactions that free space or keep
    /// the books of an operation that does (removing an image, a snapshot
    /// trim, a discard), so that a full store can still be cleaned up.
    pub full_try: bool,
    /// A replica's copy of a transaction its primary's store took: it needs
    /// half the reserve its primary's needed (half of all of it, or of a
    /// full-try's part). On stores that share a file system (the
    /// default layout), the primary's store then refuses first, with
    /// nothing applied anywhere, rather than a replica after the primary
    /// applied it (a replica that refuses goes down, as one that fails).
    pub replica: bool,
}

impl From<Vec<TxOp>> for Transaction {
    fn from(ops: Vec<TxOp>) -> Self {
        Transaction {
            ops,
            commit_first: false,
            full_try: false,
            replica: false,
        }
    }
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, op: TxOp) -> &mut Self {
        self.ops.push(op);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Errors of the local store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("attribute {0} not set")]
    NoData(String),
    #[error("collection {0:?} not found")]
    NoCollection(CollId),
    #[error("no space left in {path}: {need} bytes needed, {avail} available")]
    NoSpace { path: String, need: u64, avail: u64 },
    #[error("store {path} is locked by another process: {hint}")]
    Locked { path: String, hint: String },
    #[error("store {path} is not a valid store: {why}")]
    Corrupt { path: String, why: String },
    #[error("store has failed and refuses I/O: {0}")]
    Failed(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}

impl StoreError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source: std::sync::Arc::new(source),
        }
    }
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// Called once a queued transaction reaches a stage (commit or applied), with
/// the outcome.
pub type Callback = Box<dyn FnOnce(StoreResult<()>) + Send + 'static>;

/// Run a completion on a store thread: a panic in it (a bug in the code
/// that queued it) is logged, not let loose on the thread, which every
/// later commit needs.
pub(crate) fn run_callback(cb: Callback, r: StoreResult<()>) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(r))).is_err() {
        log::error!("a store completion callback panicked");
    }
}

/// Space as `statfs` reports it for the store's file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSpace {
    pub total: u64,
    pub available: u64,
    /// Bytes of object data this store holds (logical, after holes).
    pub used: u64,
}

/// What an OSD needs from its local store.
pub trait ObjectStore: Send + Sync + 'static {
    /// Queue a transaction. `on_applied` runs once it is readable, `on_commit`
    /// once it is durable (journal synced); each runs exactly once, each kind
    /// in queue order across transactions, and either may run first. Callbacks
    /// may run on the caller's thread before this returns, or on a store
    /// thread: they must be quick and must not call into the same store. An
    /// `Err` return (no space, store failed) means nothing was queued and no
    /// callback runs. May block while a large write's data is written and
    /// synced (on the caller's thread, so callers on several threads write in
    /// parallel).
    fn queue_transaction(
        &self,
        txn: Transaction,
        on_commit: Callback,
        on_applied: Callback,
    ) -> StoreResult<()>;

    /// `[off, off + len)` of an object, short at its end.
    fn read(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Bytes>;
    /// Like [`ObjectStore::read`], but `None` where the read would wait for
    /// the disk (the bytes are not all in memory), so that a thread that
    /// must not block can hand the read to one that may. The default reads.
    fn read_cached(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Option<Bytes>> {
        self.read(key, off, len).map(Some)
    }
    /// [`ObjectStore::read`] for the thread a missed
    /// [`ObjectStore::read_cached`] was handed to: it skips trying the
    /// cache first. The default reads.
    fn read_missed(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Bytes> {
        self.read(key, off, len)
    }
    /// Size of an object.
    fn stat(&self, key: &ObjectKey) -> StoreResult<u64>;
    fn exists(&self, key: &ObjectKey) -> bool;
    fn getattrs(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>>;
    fn omap_get(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>>;
    /// Objects (heads and clones) in a collection, sorted by key.
    fn list_objects(&self, coll: CollId) -> StoreResult<Vec<ObjectKey>>;
    fn list_collections(&self) -> Vec<CollId>;
    fn coll_meta_get(&self, coll: CollId) -> StoreResult<BTreeMap<String, Bytes>>;

    /// Returns once every transaction queued before the call is applied.
    fn wait_applied(&self) -> StoreResult<()>;
    /// Returns once every transaction queued before the call is committed.
    fn wait_committed(&self) -> StoreResult<()>;
    /// Start committing every transaction queued so far, without waiting.
    fn commit_soon(&self) {}
    /// Run `done` once every transaction queued before the call is
    /// committed (a client flush); `Err` if the store cannot tell. May run it
    /// before returning. The default waits on the caller's thread.
    fn commit_then(&self, done: Callback) {
        done(self.wait_committed());
    }
    /// Whether a [`ObjectStore::commit_then`] now would have records to
    /// make durable. The default cannot tell and says yes.
    fn commit_pending(&self) -> bool {
        true
    }
    /// Whether transactions were applied that are not yet committed, also
    /// once the store has failed (then they are lost with it, unless
    /// another store holds them). The default cannot tell and says yes.
    fn holds_uncommitted(&self) -> bool {
        true
    }
    /// [`ObjectStore::wait_committed`] for a caller that may block on the
    /// sync itself: it syncs on the caller's thread rather than waking a
    /// store thread to do it. The default waits.
    fn commit_here(&self) -> StoreResult<()> {
        self.wait_committed()
    }
    fn space(&self) -> StoreResult<StoreSpace>;

    /// crc32c of the object's whole data (deep scrub).
    fn data_digest(&self, key: &ObjectKey) -> StoreResult<u32> {
        let size = self.stat(key)?;
        Ok(crc32c::crc32c(&self.read(key, 0, size)?))
    }

    /// Fails when the store can no longer be trusted (failed, or its
    /// directory vanished); polled by the cluster to mark its OSD down.
    fn check_health(&self) -> StoreResult<()> {
        Ok(())
    }

    /// The file holding an object's data, for stores that have one (tools
    /// and tests that inspect or damage the disk).
    fn object_path(&self, _key: &ObjectKey) -> Option<std::path::PathBuf> {
        None
    }
}

mod codec;
pub(crate) mod data;
mod file_store;
mod journal;
mod meta;

pub use file_store::{FileStore, StoreConfig};
