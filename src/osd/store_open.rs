//! How the cluster makes and opens the store of each OSD directory. The cluster
//! codes against [`StoreOpener`], so the store implementation is a choice of
//! configuration (the in-memory store for fast tests, the file store for real).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::store::memstore::MemStore;
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::store::{
    Callback, CollId, FileStore, ObjectKey, ObjectStore, StoreConfig, StoreError, StoreResult,
    StoreSpace, Transaction,
};
use crate::sync::{Arc, Mutex};

/// Syncs and releases a store (called once, by `Cluster::shutdown`).
pub type CloseFn = Box<dyn FnOnce() -> StoreResult<()> + Send>;

/// Simulates power loss of a store, for tests: nothing more is synced.
pub type CrashFn = Box<dyn FnOnce() + Send>;

/// An open store, how to close it cleanly and how to crash it (tests).
pub struct OpenedStore {
    pub store: Arc<dyn ObjectStore>,
    pub close: CloseFn,
    pub crash: CrashFn,
}

/// Makes and opens OSD stores.
pub trait StoreOpener: Send + Sync {
    /// Create an empty store in `path` (the directory may not exist yet).
    fn mkfs(&self, path: &Path) -> StoreResult<()>;
    /// Open the store in `path`.
    fn open(&self, path: &Path) -> StoreResult<OpenedStore>;
}

/// In-memory stores, one per directory path, kept for the life of the opener
/// so that a cluster can be shut down and opened again over the same data.
#[derive(Default)]
pub struct MemStoreOpener {
    stores: Mutex<HashMap<PathBuf, Arc<MemStore>>>,
    deferred: bool,
}

impl MemStoreOpener {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores that apply on a background thread ([`MemStore::deferred`]).
    pub fn deferred() -> Self {
        MemStoreOpener {
            deferred: true,
            ..Self::default()
        }
    }

    /// One opener shared by the whole process.
    pub fn global() -> Arc<MemStoreOpener> {
        static GLOBAL: OnceLock<Arc<MemStoreOpener>> = OnceLock::new();
        GLOBAL.get_or_init(Arc::default).clone()
    }
}

impl StoreOpener for MemStoreOpener {
    fn mkfs(&self, path: &Path) -> StoreResult<()> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
        self.stores.lock().insert(
            path.to_path_buf(),
            Arc::new(if self.deferred {
                MemStore::deferred()
            } else {
                MemStore::new()
            }),
        );
        Ok(())
    }

    fn open(&self, path: &Path) -> StoreResult<OpenedStore> {
        let store = self
            .stores
            .lock()
            .get(path)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt {
                path: path.display().to_string(),
                why: "no in-memory store was made for this directory".into(),
            })?;
        Ok(OpenedStore {
            store,
            close: Box::new(|| Ok(())),
            // Memory does not lose power: everything queued survives.
            crash: Box::new(|| {}),
        })
    }
}

/// File stores (journal + object files), the real thing.
#[derive(Clone, Debug, Default)]
pub struct FileStoreOpener {
    pub config: StoreConfig,
}

impl StoreOpener for FileStoreOpener {
    fn mkfs(&self, path: &Path) -> StoreResult<()> {
        FileStore::mkfs(path)
    }

    fn open(&self, path: &Path) -> StoreResult<OpenedStore> {
        let fs = FileStore::open(path, self.config.clone())?;
        let (c1, c2) = (fs.clone(), fs.clone());
        Ok(OpenedStore {
            store: fs,
            close: Box::new(move || c1.close()),
            crash: Box::new(move || c2.crash()),
        })
    }
}

/// Stands in for the store of an OSD that could not be opened (or was
/// removed): every call fails, so the OSD stays down.
pub(crate) struct FailedStore {
    why: String,
}

impl FailedStore {
    pub fn new(why: &str) -> Self {
        FailedStore {
            why: why.to_string(),
        }
    }

    fn err(&self) -> StoreError {
        StoreError::Failed(self.why.clone())
    }
}

impl ObjectStore for FailedStore {
    fn queue_transaction(&self, _: Transaction, _: Callback, _: Callback) -> StoreResult<()> {
        Err(self.err())
    }
    fn read(&self, _: &ObjectKey, _: u64, _: u64) -> StoreResult<Bytes> {
        Err(self.err())
    }
    fn stat(&self, _: &ObjectKey) -> StoreResult<u64> {
        Err(self.err())
    }
    fn exists(&self, _: &ObjectKey) -> bool {
        false
    }
    fn getattrs(&self, _: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        Err(self.err())
    }
    fn omap_get(&self, _: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        Err(self.err())
    }
    fn list_objects(&self, _: CollId) -> StoreResult<Vec<ObjectKey>> {
        Err(self.err())
    }
    fn list_collections(&self) -> Vec<CollId> {
        Vec::new()
    }
    fn coll_meta_get(&self, _: CollId) -> StoreResult<BTreeMap<String, Bytes>> {
        Err(self.err())
    }
    fn wait_applied(&self) -> StoreResult<()> {
        Err(self.err())
    }
    fn wait_committed(&self) -> StoreResult<()> {
        Err(self.err())
    }
    fn space(&self) -> StoreResult<StoreSpace> {
        Err(self.err())
    }
    fn check_health(&self) -> StoreResult<()> {
        Err(self.err())
    }
    fn holds_uncommitted(&self) -> bool {
        false
    }
}
