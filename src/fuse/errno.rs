//! The one table from the filesystem's errors to the errnos the kernel (and so
//! the user's tool) sees. Every choice a reader could argue with says why.

use crate::rados::RadosError;
use crate::rbd::RbdError;

/// A failed filesystem request, as [`super::ImageFs`] reports it.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{0} is a directory")]
    IsADirectory(String),
    #[error("{0} is a snapshot, which is read-only")]
    ReadOnlySnapshot(String),
    #[error("{0}")]
    NotPermitted(String),
    #[error("invalid name '{0}': {1}")]
    InvalidName(String, String),
    #[error("invalid value for {name}: {reason}")]
    InvalidValue { name: String, reason: String },
    #[error("attribute {0} is not set")]
    NoAttribute(String),
    #[error("attribute {0} is read-only")]
    ReadOnlyAttribute(String),
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("{0}")]
    Busy(String),
    #[error("rename across pools is not supported")]
    CrossPool,
    #[error("no open file with handle {0}")]
    BadHandle(u64),
    #[error("offset {0} is past the end of the data")]
    NoMoreData(u64),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Rbd(#[from] RbdError),
    #[error(transparent)]
    Rados(#[from] RadosError),
}

impl FsError {
    /// The errno to answer the kernel with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::ReadOnlySnapshot(_) => libc::EROFS,
            // mkdir in a pool, symlink, chmod ...: the operation has no meaning
            // here, which is what EPERM says ("not permitted for this object").
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::InvalidName(..) | FsError::InvalidValue { .. } => libc::EINVAL,
            FsError::NoAttribute(_) => libc::ENODATA,
            // Writing `user.rbd.size` and friends: EPERM rather than EINVAL, as
            // no value would be accepted.
            FsError::ReadOnlyAttribute(_) => libc::EPERM,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::Busy(_) => libc::EBUSY,
            FsError::CrossPool => libc::EXDEV,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NoMoreData(_) => libc::ENXIO,
            FsError::TooLarge(_) => libc::EFBIG,
            FsError::Rbd(e) => rbd_errno(e),
            FsError::Rados(e) => e.errno(),
        }
    }
}

/// Image-layer errors as seen through the filesystem. Mostly what `rbd` itself
/// returns; the exceptions are marked.
fn rbd_errno(e: &RbdError) -> i32 {
    match e {
        // `rbd rm` says ENOTEMPTY; for unlink(2) ENOTEMPTY reads as "directory
        // not empty", so the mount answers EBUSY: the file is in use by its
        // snapshots.
        RbdError::HasSnapshots => libc::EBUSY,
        // A write or read past the end that was not clamped: the file cannot
        // grow that way, which is EFBIG for write(2).
        RbdError::OutOfRange { .. } => libc::EFBIG,
        // ERESTART must never reach user space; a cancelled operation was
        // interrupted, which is EINTR for a system call.
        RbdError::Cancelled => libc::EINTR,
        other => other.errno(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_errno_has_snapshots_is_ebusy_at_the_fs_edge() {
        assert_eq!(FsError::Rbd(RbdError::HasSnapshots).errno(), libc::EBUSY);
    }

    #[test]
    fn test_errno_snapshot_protected_is_ebusy() {
        let e = FsError::Rbd(RbdError::SnapProtected("s1".into()));

        assert_eq!(e.errno(), libc::EBUSY);
    }

    #[test]
    fn test_errno_rados_error_passes_through() {
        assert_eq!(
            FsError::Rados(RadosError::NoSpace("osd.0".into())).errno(),
            libc::ENOSPC
        );
    }
}
