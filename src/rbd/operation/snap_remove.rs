//! Snapshot remove.
//!
//! ```text
//!   CHECK (exists; not protected -> else EBUSY)
//!     -> SETTLE_COPYUPS (finish those an I/O error left, planned with it)
//!     -> SAVE_HEADER (record gone: new writes stop preserving data for it)
//!     -> REMOVE_SNAP (object layer trims the clones kept only for it)
//!     -> REMOVE_OBJECT_MAP
//! ```
//! A crash after the header write leaves an untrimmed snap id and an orphan
//! map object; nothing visible refers to them.

use crate::rados::{RadosError, SnapContext};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::{ImageCtx, names};

pub async fn snap_remove(ctx: &ImageCtx, name: &str) -> Result<()> {
    let id = ctx.lock.new_request_id();
    ctx.lock.invoke(id, || run(ctx, name)).await
}

pub(crate) async fn run(ctx: &ImageCtx, name: &str) -> Result<()> {
    let _gate = ctx.io_gate.write().await;
    let hdr = ctx.header();
    let rec = hdr
        .snap_by_name(name)
        .ok_or_else(|| RbdError::SnapNotFound(ctx.spec().at_snap(name).to_string()))?
        .clone();
    if rec.protected {
        return Err(RbdError::SnapProtected(name.to_string()));
    }
    ctx.settle_pending_copyups().await?;
    let mut h = (*hdr).clone();
    h.snaps.retain(|s| s.id != rec.id);
    ctx.save_header_freeing(h).await?;
    match ctx.ioctx.snap_remove(rec.id).await {
        Ok(()) | Err(RadosError::NotFound) => {}
        Err(e) => return Err(RbdError::rados(names::header_oid(ctx.id()), e)),
    }
    let map_oid = names::object_map_oid(ctx.id(), rec.id);
    match ctx.ioctx.remove(&map_oid, &SnapContext::empty()).await {
        Ok(()) | Err(RadosError::NotFound) => {}
        Err(e) => return Err(RbdError::rados(map_oid, e)),
    }
    ctx.snap_maps.lock().remove(&rec.id);
    ctx.rbd.bump_layout_epoch();
    Ok(())
}
