//! Opening a store directory: lock it, start its object layer, hand out a
//! [`Rados`]. One function, so the daemon and the CLI open stores the same way.

use std::path::{Path, PathBuf};

use crate::osd::{Cluster, ClusterConfig, CreateOptions, OsdError};
use crate::rados::{Rados, RadosBackend, RadosError};
use crate::sync::Arc;

/// The pool every new store gets.
pub const DEFAULT_POOL: &str = "rbd";
/// Replicas of the default pool.
pub const DEFAULT_REPLICAS: u32 = 3;
/// OSDs a store created with defaults has.
pub const DEFAULT_OSDS: usize = 3;

/// The daemon's log file inside a store directory (with `mount --daemon`).
pub const LOG_NAME: &str = "rbdfs.log";

/// Opening or creating a store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {0} is in use by another rbdfs process (a mount or a command); \
         unmount it or wait for the command, then retry (while the store is \
         mounted, commands go through the mount's daemon and may run at once: \
         `rbdfs mount --daemon`)"
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
    #[error(transparent)]
    Osd(OsdError),
}

impl StoreError {
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Locked(_) => libc::EBUSY,
            StoreError::Missing(_) => libc::ENOENT,
            StoreError::Exists(_) => libc::EEXIST,
            StoreError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StoreError::Rados(e) => e.errno(),
            StoreError::Osd(_) => libc::EIO,
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

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

fn cluster_config() -> ClusterConfig {
    ClusterConfig {
        default_pool_size: DEFAULT_REPLICAS,
        ..ClusterConfig::default()
    }
}

fn osd_err(e: OsdError) -> StoreError {
    match e {
        OsdError::Locked { dir } => StoreError::Locked(dir),
        OsdError::NoCluster(dir) => StoreError::Missing(dir),
        OsdError::ClusterExists(dir) => StoreError::Exists(dir),
        other => StoreError::Osd(other),
    }
}

/// An open store: its cluster and a client handle on it. Call
/// [`Store::shutdown`] to flush, stop the OSDs and release the lock.
pub struct Store {
    pub rados: Rados,
    cluster: Arc<Cluster>,
    dir: PathBuf,
}

/// Whether `dir` holds a store.
pub fn exists(dir: &Path) -> bool {
    dir.join("osdmap.json").exists()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            context: "opening the store".into(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Lift the soft limit on open files to the hard one: each OSD store keeps
/// a share of the limit as cached object-file handles.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::debug!("raising RLIMIT_NOFILE: {}", std::io::Error::last_os_error());
            }
        }
    }
}

async fn open_cluster(dir: &Path) -> Result<Store, StoreError> {
    raise_open_file_limit();
    let d = dir.to_path_buf();
    let cluster = blocking(move || Cluster::open(&d, cluster_config()).map_err(osd_err)).await?;
    let backend: Arc<dyn RadosBackend> = cluster.clone();
    Ok(Store {
        rados: Rados::new(backend),
        cluster,
        dir: dir.to_path_buf(),
    })
}

/// Create a new store in `dir` (which must not hold one): its OSDs, then the
/// default pool.
pub async fn init(dir: &Path, opts: &InitOptions) -> Result<Store, StoreError> {
    // Checked before anything is written: a refused init leaves no store.
    let osds = if opts.osds.is_empty() {
        DEFAULT_OSDS
    } else {
        opts.osds.len()
    };
    if opts.replicas == 0 || opts.replicas as usize > osds {
        return Err(StoreError::Rados(RadosError::InvalidArgument(format!(
            "--replicas {} needs 1 to {osds}, the number of OSDs",
            opts.replicas
        ))));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if exists(dir) {
        return Err(StoreError::Exists(dir.to_path_buf()));
    }
    let create = CreateOptions {
        osd_paths: opts.osds.clone(),
        num_osds: DEFAULT_OSDS,
        config: cluster_config(),
    };
    let d = dir.to_path_buf();
    blocking(move || Cluster::create(&d, create).map_err(osd_err)).await?;
    let st = open_cluster(dir).await?;
    // A crash between creating the OSDs and the pool leaves a store without
    // pools; `open` finishes the job then.
    st.rados
        .pool_create(DEFAULT_POOL, Some(opts.replicas))
        .await?;
    Ok(st)
}

/// Open the store in `dir`; with `create`, a missing or empty directory gets a
/// new store with the defaults.
pub async fn open(dir: &Path, create: bool) -> Result<Store, StoreError> {
    if !exists(dir) {
        // The daemon's log may already be there (it is opened first).
        let empty = match std::fs::read_dir(dir) {
            Ok(d) => d.flatten().all(|e| e.file_name() == LOG_NAME),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
        };
        // What an interrupted first mount or init left is made again.
        if create && (empty || Cluster::create_interrupted(dir)) {
            return init(dir, &InitOptions::default()).await;
        }
        return Err(StoreError::Missing(dir.to_path_buf()));
    }
    let st = open_cluster(dir).await?;
    if st.rados.pool_list()?.is_empty() {
        st.rados.pool_create(DEFAULT_POOL, None).await?;
    }
    Ok(st)
}

impl Store {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster of OSDs (for the `osd`, `pg`, `scrub` and `status` verbs).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Flush everything to every replica, stop the OSDs, release the lock.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let flushed = self.rados.flush().await;
        let cluster = self.cluster.clone();
        drop(self.rados);
        blocking(move || cluster.shutdown().map_err(osd_err)).await?;
        flushed?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_open_with_create_makes_again_what_an_interrupted_create_left() {
        // Arrange: a first mount killed while it made its OSDs: the marker
        // names osd.0, which was made; no map.
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::fs::write(store.join("creating"), "osd.0\n").unwrap();
        crate::store::FileStore::mkfs(&store.join("osd.0")).unwrap();

        // Act
        let opened = open(&store, true).await;

        // Assert: a store with the default pool.
        let st = opened.unwrap();
        assert!(exists(&store));
        let pools = st.rados.pool_list().unwrap();
        assert_eq!(
            pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            [DEFAULT_POOL]
        );
        st.shutdown().await.unwrap();
    }
}
