//! Snapshot rollback: make the head byte-identical to a snapshot.
//!
//! ```text
//!   BLOCK_WRITES -> [GROW_OBJECT_MAP, then GROW_HEADER if the snapshot is larger]
//!     -> ROLLBACK_OBJECTS  per object, N at a time, progress:
//!          in the snapshot -> write_full(its content at the snapshot)
//!          not in it      -> remove the head object (if any)
//!     -> SAVE_HEADER (size and parent overlap of the snapshot)
//!     -> SAVE_OBJECT_MAP -> UNBLOCK_WRITES
//! ```
//! Each object step is idempotent, so an interrupted rollback is finished by
//! running it again. An object missing from the snapshot but inside its parent
//! overlap reads from the parent again after its head copy is removed, which is
//! exactly what the snapshot shows.

use crate::rados::{RadosError, SNAP_HEAD, WriteOp};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::{ImageCtx, names};
use crate::rbd::io::striper;
use crate::rbd::object_map::{EXISTS, NONEXISTENT};
use crate::rbd::operation::remove_object;
use crate::rbd::throttle;
use crate::rbd::types::ProgressSink;

pub async fn snap_rollback(ctx: &ImageCtx, name: &str, progress: &dyn ProgressSink) -> Result<()> {
    let id = ctx.lock.new_request_id();
    ctx.lock.invoke(id, || run(ctx, name, progress)).await
}

pub(crate) async fn run(ctx: &ImageCtx, name: &str, progress: &dyn ProgressSink) -> Result<()> {
    let _gate = ctx.io_gate.write().await;
    let hdr = ctx.header();
    let rec = hdr
        .snap_by_name(name)
        .ok_or_else(|| RbdError::SnapNotFound(ctx.spec().at_snap(name).to_string()))?
        .clone();
    let map_oid = names::object_map_oid(ctx.id(), SNAP_HEAD);
    let snap_count = striper::object_count(rec.size, hdr.order);
    let head_count = striper::object_count(hdr.size, hdr.order);
    if snap_count > head_count {
        let mut m = ctx.head_map.lock().clone();
        m.resize(snap_count);
        m.save(&ctx.ioctx, &map_oid).await?;
        *ctx.head_map.lock() = m;
    }
    if rec.size > hdr.size {
        // Grown first, as librbd does: bytes the rollback puts past the
        // old end are then inside the image, were it stopped half way
        // (else a later grow would show them as the image's own).
        let mut h = (*hdr).clone();
        h.size = rec.size;
        ctx.save_header(h).await?;
    }
    let n = snap_count.max(head_count);
    let snapc = hdr.snapc();
    let osz = hdr.object_size();
    throttle::run(
        ctx.rbd.config().concurrent_management_ops,
        (0..n).collect(),
        n,
        None,
        progress,
        |objno| {
            let (snapc, rec) = (&snapc, &rec);
            async move {
                let _obj = ctx.object_lock(objno).write().await;
                crate::rbd::io::copyup::settle(ctx, objno).await?;
                let oid = names::data_oid(ctx.id(), objno);
                if objno < snap_count && ctx.map_exists(rec.id, objno) {
                    match ctx.ioctx.read(&oid, rec.id, 0, osz).await {
                        Ok(data) => {
                            ctx.set_head_state(objno, EXISTS).await?;
                            return ctx
                                .ioctx
                                .operate_write(&oid, snapc, vec![WriteOp::WriteFull { data }])
                                .await
                                .map_err(|e| RbdError::rados(oid, e));
                        }
                        Err(RadosError::NotFound) => {}
                        Err(e) => return Err(RbdError::rados(oid, e)),
                    }
                }
                if ctx.map_exists(SNAP_HEAD, objno) {
                    remove_object(ctx, &oid, snapc).await?;
                    ctx.set_head_state(objno, NONEXISTENT).await?;
                }
                Ok(())
            }
        },
    )
    .await?;
    let mut h = (*hdr).clone();
    h.size = rec.size;
    h.parent = rec.parent.clone();
    ctx.save_header(h).await?;
    ctx.invalidate_chains();
    let mut m = ctx.head_map.lock().clone();
    m.resize(snap_count);
    m.save(&ctx.ioctx, &map_oid).await?;
    *ctx.head_map.lock() = m;
    Ok(())
}
