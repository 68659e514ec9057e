//! Snapshot protect / unprotect: a protected snapshot can be cloned and cannot
//! be removed; unprotect is refused (EBUSY, naming them) while clones exist.
//!
//! ```text
//!   protect:   CHECK (exists; not yet protected) -> SAVE_HEADER
//!   unprotect: CHECK (exists; protected) -> LIST_CHILDREN (live records only)
//!                -> none: SAVE_HEADER    some: EBUSY "image has clones: ..."
//! ```

use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::{ImageCtx, directory};

pub async fn snap_protect(ctx: &ImageCtx, name: &str) -> Result<()> {
    let id = ctx.lock.new_request_id();
    ctx.lock.invoke(id, || set(ctx, name, true)).await
}

pub async fn snap_unprotect(ctx: &ImageCtx, name: &str) -> Result<()> {
    let id = ctx.lock.new_request_id();
    ctx.lock.invoke(id, || set(ctx, name, false)).await
}

pub(crate) async fn set(ctx: &ImageCtx, name: &str, protect: bool) -> Result<()> {
    // Unprotect: no clone of the snapshot may be half made meanwhile.
    let _gate = if protect {
        None
    } else {
        Some(ctx.rbd.clone_gate.lock().await)
    };
    let hdr = ctx.header();
    let rec = hdr
        .snap_by_name(name)
        .ok_or_else(|| RbdError::SnapNotFound(ctx.spec().at_snap(name).to_string()))?;
    match (protect, rec.protected) {
        (true, true) => return Err(RbdError::AlreadyProtected),
        (false, false) => return Err(RbdError::AlreadyUnprotected),
        _ => {}
    }
    if !protect {
        let kids = directory::live_children(&ctx.rbd, &ctx.ioctx, ctx.id(), rec.id).await?;
        if !kids.is_empty() {
            return Err(RbdError::HasClones(
                kids.iter().map(|k| k.to_string()).collect(),
            ));
        }
    }
    let mut h = (*hdr).clone();
    for s in &mut h.snaps {
        if s.name == name {
            s.protected = protect;
        }
    }
    ctx.save_header(h).await
}
