//! Errors of the object layer as clients see them.

/// An object operation's failure, as librados would return it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RadosError {
    #[error("object not found")]
    NotFound,
    #[error("object already exists")]
    Exists,
    #[error("attribute not set")]
    NoData,
    /// A `CmpXattr` guard did not match: someone else changed the object first.
    #[error("guard failed: the object changed")]
    Canceled,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("pool {0} not found")]
    PoolNotFound(String),
    #[error("pool {0} already exists")]
    PoolExists(String),
    #[error("no space left on an OSD: {0}")]
    NoSpace(String),
    #[error("store is read-only")]
    ReadOnly,
    #[error("busy: {0}")]
    Busy(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("the cluster is shutting down")]
    ShuttingDown,
    #[error("I/O error: {0}")]
    Io(String),
}

impl RadosError {
    /// The errno librados would return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            RadosError::NotFound | RadosError::PoolNotFound(_) => libc::ENOENT,
            RadosError::Exists | RadosError::PoolExists(_) => libc::EEXIST,
            RadosError::NoData => libc::ENODATA,
            RadosError::Canceled => libc::ECANCELED,
            RadosError::InvalidArgument(_) => libc::EINVAL,
            RadosError::NoSpace(_) => libc::ENOSPC,
            RadosError::ReadOnly => libc::EROFS,
            RadosError::Busy(_) => libc::EBUSY,
            RadosError::TimedOut(_) => libc::ETIMEDOUT,
            RadosError::ShuttingDown => libc::ESHUTDOWN,
            RadosError::Io(_) => libc::EIO,
        }
    }
}

/// Result of an object-layer call.
pub type Result<T> = std::result::Result<T, RadosError>;
