//! Maintenance operations, one file each, in librbd's shape. Every operation
//! runs through the image's exclusive lock (`ImageCtx::lock`), one at a time
//! per image, and is written as a state machine that can be run again after a
//! crash or cancel.

pub mod flatten;
pub mod resize;
pub mod snap_create;
pub mod snap_protect;
pub mod snap_remove;
pub mod snap_rollback;

use crate::rados::{RadosError, SnapContext};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::ImageCtx;

/// Remove object `oid`'s head under `snapc`; an absent object is fine.
pub(crate) async fn remove_object(ctx: &ImageCtx, oid: &str, snapc: &SnapContext) -> Result<()> {
    match ctx.ioctx.remove(oid, snapc).await {
        Ok(()) | Err(RadosError::NotFound) => Ok(()),
        Err(e) => Err(RbdError::rados(oid, e)),
    }
}
