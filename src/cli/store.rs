//! Opening a store directory: lock it, start its object layer, hand out a
//! [`Rados`]. One function, so the daemon and the CLI open stores the same way.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::rados::mem::MemRados;
use crate::rados::{Rados, RadosError};
use crate::sync::Arc;

/// The pool every new store gets.
pub const DEFAULT_POOL: &str = "rbd";
/// Replicas of the default pool.
pub const DEFAULT_REPLICAS: u32 = 3;
/// OSDs a store created with defaults has.
pub const DEFAULT_OSDS: usize = 3;

/// Opening or creating a store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {0} is in use by another rbdfs process (a mount or a command); \
         unmount it or wait for the command, then retry"
    )]
    Locked(PathBuf),
    #[error("store {0} does not exist; create it with `rbdfs --store {0} init`")]
    Missing(PathBuf),
    #[error("store {0} already exists")]
    Exists(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Rados(#[from] RadosError),
}

impl StoreError {
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Locked(_) => libc::EBUSY,
            StoreError::Missing(_) => libc::ENOENT,
            StoreError::Exists(_) => libc::EEXIST,
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StoreError::Rados(e) => e.errno(),
        }
    }
}

/// How to lay out a new store.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// One directory per OSD; empty: [`DEFAULT_OSDS`] inside the store.
    pub osds: Vec<PathBuf>,
    /// Replicas of the default pool.
    pub replicas: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            osds: Vec::new(),
            replicas: DEFAULT_REPLICAS,
        }
    }
}

/// An open store: its client handle and its lock. Call [`Store::shutdown`] to
/// flush and release it.
pub struct Store {
    pub rados: Rados,
    dir: PathBuf,
    _lock: File,
}

const MARKER: &str = "rbdfs-store";

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("rbdfs.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StoreError::Locked(dir.to_path_buf()));
    }
    Ok(f)
}

/// Whether `dir` holds a store.
pub fn exists(dir: &Path) -> bool {
    dir.join(MARKER).exists()
}

/// Create a new store in `dir` (which must not hold one).
pub async fn init(dir: &Path, opts: &InitOptions) -> Result<Store, StoreError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if exists(dir) {
        return Err(StoreError::Exists(dir.to_path_buf()));
    }
    let lock = lock(dir)?;
    let rados = Rados::new(Arc::new(MemRados::new()));
    rados.pool_create(DEFAULT_POOL, Some(opts.replicas)).await?;
    std::fs::write(dir.join(MARKER), b"1\n").map_err(io(format!("writing {MARKER}")))?;
    Ok(Store {
        rados,
        dir: dir.to_path_buf(),
        _lock: lock,
    })
}

/// Open the store in `dir`; with `create`, a missing or empty directory gets a
/// new store with the defaults.
pub async fn open(dir: &Path, create: bool) -> Result<Store, StoreError> {
    if !exists(dir) {
        let empty = match std::fs::read_dir(dir) {
            Ok(mut d) => d.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
        };
        if create && empty {
            return init(dir, &InitOptions::default()).await;
        }
        return Err(StoreError::Missing(dir.to_path_buf()));
    }
    let lock = lock(dir)?;
    let rados = Rados::new(Arc::new(MemRados::new()));
    rados
        .pool_create(DEFAULT_POOL, Some(DEFAULT_REPLICAS))
        .await?;
    Ok(Store {
        rados,
        dir: dir.to_path_buf(),
        _lock: lock,
    })
}

impl Store {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flush everything to every replica, stop the object layer, release the lock.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.rados.flush().await?;
        Ok(())
    }
}
