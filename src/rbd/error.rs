//! Errors of the image layer, each with the errno the `rbd` tool would report.

use crate::rados::RadosError;

/// `ERESTART`: "interrupted, safe to run again" (Linux value).
pub const ERESTART: i32 = 85;

/// An image-layer failure. Messages are lower-case and say what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbdError {
    #[error("invalid image spec '{spec}': {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("pool {0} does not exist - create it with 'rbdfs pool create'")]
    PoolNotFound(String),
    #[error("image {0} does not exist")]
    ImageNotFound(String),
    #[error("rbd image {0} already exists")]
    ImageExists(String),
    #[error("snapshot {0} does not exist")]
    SnapNotFound(String),
    #[error("snapshot {0} already exists")]
    SnapExists(String),
    #[error("snapshot name was not specified")]
    SnapNameMissing,
    #[error("image has no parent")]
    NoParent,
    #[error("{0} is read-only (a snapshot or a read-only open)")]
    ReadOnly(String),
    #[error("image has snapshots - remove them with 'rbdfs snap rm' before removing the image")]
    HasSnapshots,
    #[error("image {0} is still open - close it (unmount, stop the user) before removing it")]
    ImageBusy(String),
    #[error("snapshot '{0}' is protected from removal - unprotect it first")]
    SnapProtected(String),
    #[error("snap is already protected")]
    AlreadyProtected,
    #[error("snap is already unprotected")]
    AlreadyUnprotected,
    #[error("cannot unprotect: image has clones: {} - flatten or remove them first", .0.join(", "))]
    HasClones(Vec<String>),
    #[error("parent snapshot must be protected - run 'rbdfs snap protect {0}' first")]
    ParentNotProtected(String),
    #[error(
        "clone would be {depth} levels deep, more than rbd_max_clone_depth {max} - flatten an ancestor first"
    )]
    CloneDepthExceeded { depth: u32, max: u32 },
    #[error("shrinking an image is only allowed with the --allow-shrink flag")]
    ShrinkNotAllowed,
    #[error("i/o past the end of the image: {off}+{len} is beyond size {size}")]
    OutOfRange { off: u64, len: u64, size: u64 },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("operation cancelled - run it again to resume where it stopped")]
    Cancelled,
    #[error("timed out waiting for the lock owner of image {0}")]
    TimedOut(String),
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("object {oid}: {source}")]
    Rados {
        oid: String,
        #[source]
        source: RadosError,
    },
}

impl RbdError {
    /// The errno the `rbd` tool would exit with for this error.
    pub fn errno(&self) -> i32 {
        match self {
            RbdError::InvalidSpec { .. }
            | RbdError::SnapNameMissing
            | RbdError::NoParent
            | RbdError::AlreadyUnprotected
            | RbdError::ParentNotProtected(_)
            | RbdError::CloneDepthExceeded { .. }
            | RbdError::ShrinkNotAllowed
            | RbdError::OutOfRange { .. }
            | RbdError::InvalidArgument(_) => libc::EINVAL,
            RbdError::PoolNotFound(_) | RbdError::ImageNotFound(_) | RbdError::SnapNotFound(_) => {
                libc::ENOENT
            }
            RbdError::ImageExists(_) | RbdError::SnapExists(_) => libc::EEXIST,
            RbdError::ReadOnly(_) => libc::EROFS,
            RbdError::HasSnapshots => libc::ENOTEMPTY,
            RbdError::ImageBusy(_)
            | RbdError::SnapProtected(_)
            | RbdError::AlreadyProtected
            | RbdError::HasClones(_) => libc::EBUSY,
            RbdError::Cancelled => ERESTART,
            RbdError::TimedOut(_) => libc::ETIMEDOUT,
            RbdError::Corrupt { .. } => libc::EIO,
            RbdError::Rados { source, .. } => source.errno(),
        }
    }

    /// Wrap an object-layer error with the object it happened on.
    pub fn rados(oid: impl Into<String>, source: RadosError) -> Self {
        RbdError::Rados {
            oid: oid.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        RbdError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Result of an image-layer call.
pub type Result<T> = std::result::Result<T, RbdError>;
