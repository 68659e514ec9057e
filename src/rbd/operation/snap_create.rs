//! Snapshot create, O(1) in the image size.
//!
//! ```text
//!   BLOCK_WRITES -> FLUSH -> ALLOCATE_SNAP_ID (self-managed snap of the pool)
//!      -> COPY_OBJECT_MAP (head map -> rbd_object_map.<id>.<snap>)
//!      -> SAVE_HEADER (snapshot record: name, id, size, parent overlap; snap_seq)
//!      -> MARK_HEAD_MAP_CLEAN (EXISTS -> EXISTS_CLEAN, for du's deltas)
//!      -> UNBLOCK_WRITES
//! ```
//! The header write is the commit point: writes issued afterwards carry the
//! new snap context, so the object layer preserves every object's content at
//! its next write (copy-on-write), and nothing is copied now. A crash before it
//! leaves an unused snap id and an orphan map object, nothing visible.

use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::{ImageCtx, SnapRecord, names, now_secs};
use crate::rbd::spec::validate_name;

pub async fn snap_create(ctx: &ImageCtx, name: &str) -> Result<()> {
    let id = ctx.lock.new_request_id();
    ctx.lock.invoke(id, || run_checked(ctx, name)).await
}

/// Validate the name, then create (as the lock owner).
pub(crate) async fn run_checked(ctx: &ImageCtx, name: &str) -> Result<()> {
    let spec = ctx.spec().at_snap(name).to_string();
    validate_name(&spec, "snapshot", name)?;
    run(ctx, name, spec).await
}

async fn run(ctx: &ImageCtx, name: &str, spec: String) -> Result<()> {
    let _gate = ctx.io_gate.write().await;
    let hdr = ctx.header();
    if hdr.snap_by_name(name).is_some() {
        return Err(RbdError::SnapExists(spec));
    }
    // A copyup an I/O error left is finished as planned, before a new
    // snapshot changes its plan.
    ctx.settle_pending_copyups().await?;
    ctx.flush().await?;
    let snap = ctx
        .ioctx
        .snap_create()
        .await
        .map_err(|e| RbdError::rados(names::header_oid(ctx.id()), e))?;
    let map = ctx.head_map.lock().clone();
    map.save(&ctx.ioctx, &names::object_map_oid(ctx.id(), snap))
        .await?;
    let mut h = (*hdr).clone();
    h.snaps.push(SnapRecord {
        id: snap,
        name: name.to_string(),
        size: h.size,
        parent: h.parent.clone(),
        protected: false,
        timestamp: now_secs(),
    });
    h.snap_seq = h.snap_seq.max(snap);
    ctx.snap_maps.lock().insert(snap, map);
    ctx.save_header(h).await?;
    // After the commit point: a crash before this only leaves the head map
    // counting objects as changed that are not (du over-reports).
    let mut head = ctx.head_map.lock().clone();
    head.mark_clean();
    head.save(
        &ctx.ioctx,
        &names::object_map_oid(ctx.id(), crate::rados::SNAP_HEAD),
    )
    .await?;
    *ctx.head_map.lock() = head;
    Ok(())
}
