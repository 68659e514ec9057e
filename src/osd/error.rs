//! Errors of the OSD layer and how they reach clients as [`RadosError`]s.

use std::path::PathBuf;

use crate::rados::RadosError;
use crate::store::StoreError;

/// What can go wrong in the cluster of OSDs.
#[derive(Debug, thiserror::Error)]
pub enum OsdError {
    #[error(
        "cluster directory {dir} is in use: another rbdfs daemon or command holds it; \
         stop that process (or unmount) and retry"
    )]
    Locked { dir: PathBuf },
    #[error("cluster directory {0} holds no cluster (no osdmap.json); create one first")]
    NoCluster(PathBuf),
    #[error("cluster directory {0} already holds a cluster")]
    ClusterExists(PathBuf),
    #[error("reading {path}: {why}; the file is damaged, restore it from a backup")]
    DecodingMap { path: PathBuf, why: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store of osd.{osd}: {source}")]
    Store {
        osd: u32,
        #[source]
        source: StoreError,
    },
    #[error("pool {0} not found")]
    PoolNotFound(String),
    #[error("pool {0} already exists")]
    PoolExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("pool size {size} exceeds the {osds} OSDs that are in; add OSDs or lower the size")]
    SizeTooLarge { size: u32, osds: usize },
    #[error("placement group {pool}.{pg:x} has {up} of min_size {min_size} replicas up")]
    Undersized {
        pool: u64,
        pg: u32,
        up: usize,
        min_size: u32,
    },
    #[error("osd.{osd} cannot be removed: {why}")]
    CannotRemove { osd: u32, why: String },
    #[error("osd.{0} does not exist")]
    NoSuchOsd(u32),
    #[error("recovering osd.{osd} from osd.{from}: {why}")]
    Recovery { osd: u32, from: u32, why: String },
    #[error("the cluster is shutting down")]
    ShuttingDown,
}

impl OsdError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        OsdError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A store error as the client sees it.
pub(crate) fn store_to_rados(e: &StoreError) -> RadosError {
    match e {
        StoreError::NoSpace { .. } => RadosError::NoSpace(e.to_string()),
        StoreError::NotFound(_) => RadosError::NotFound,
        StoreError::NoData(_) => RadosError::NoData,
        _ => RadosError::Io(e.to_string()),
    }
}

impl From<OsdError> for RadosError {
    fn from(e: OsdError) -> Self {
        match e {
            OsdError::PoolNotFound(p) => RadosError::PoolNotFound(p),
            OsdError::PoolExists(p) => RadosError::PoolExists(p),
            OsdError::InvalidArgument(s) => RadosError::InvalidArgument(s),
            OsdError::SizeTooLarge { .. } => RadosError::InvalidArgument(e.to_string()),
            OsdError::Store { ref source, .. } => store_to_rados(source),
            OsdError::Undersized { .. } | OsdError::Locked { .. } => {
                RadosError::Busy(e.to_string())
            }
            OsdError::ShuttingDown => RadosError::ShuttingDown,
            other => RadosError::Io(other.to_string()),
        }
    }
}

pub type OsdResult<T> = std::result::Result<T, OsdError>;
