//! Resize: grow, or shrink when asked explicitly.
//!
//! ```text
//!   grow:   SAVE_OBJECT_MAP (new objects absent) -> SAVE_HEADER(size)
//!   shrink: SHRINK_OVERLAP (clone: overlap = min(overlap, size), saved first so
//!              |            no removed object re-exposes parent data)
//!           TRIM_OBJECTS (remove objects past the end, cut the partial last
//!              |          one; N at a time, progress)
//!           SAVE_HEADER(size) -> SAVE_OBJECT_MAP
//! ```
//! Writes are blocked for the whole operation. A crash while trimming leaves
//! the old size with some tail objects gone (reads as zeros); running the
//! shrink again finishes it.

use crate::rados::{SNAP_HEAD, WriteOp};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::{ImageCtx, names};
use crate::rbd::io::striper;
use crate::rbd::object_map::NONEXISTENT;
use crate::rbd::operation::remove_object;
use crate::rbd::throttle;
use crate::rbd::types::{ProgressSink, check_size};

pub async fn resize(
    ctx: &ImageCtx,
    size: u64,
    allow_shrink: bool,
    progress: &dyn ProgressSink,
) -> Result<()> {
    let id = ctx.lock.new_request_id();
    ctx.lock
        .invoke(id, || run(ctx, size, allow_shrink, progress))
        .await
}

pub(crate) async fn run(
    ctx: &ImageCtx,
    size: u64,
    allow_shrink: bool,
    progress: &dyn ProgressSink,
) -> Result<()> {
    let _gate = ctx.io_gate.write().await;
    let hdr = ctx.header();
    check_size(size, hdr.order)?;
    let map_oid = names::object_map_oid(ctx.id(), SNAP_HEAD);
    let new_count = striper::object_count(size, hdr.order);
    if size >= hdr.size {
        if size > hdr.size {
            let mut m = ctx.head_map.lock().clone();
            m.resize(new_count);
            m.save(&ctx.ioctx, &map_oid).await?;
            *ctx.head_map.lock() = m;
            let mut h = (*hdr).clone();
            h.size = size;
            ctx.save_header(h).await?;
        }
        progress.update(1, 1);
        return Ok(());
    }
    if !allow_shrink {
        return Err(RbdError::ShrinkNotAllowed);
    }

    // SHRINK_OVERLAP
    if hdr.parent.as_ref().is_some_and(|p| p.overlap > size) {
        let mut h = (*hdr).clone();
        if let Some(p) = h.parent.as_mut() {
            p.overlap = size;
        }
        ctx.save_header_freeing(h).await?;
        ctx.invalidate_chains();
    }

    // TRIM_OBJECTS
    let hdr = ctx.header();
    let osz = hdr.object_size();
    let old_count = striper::object_count(hdr.size, hdr.order);
    let first_whole = size.div_ceil(osz);
    let snapc = hdr.snapc();
    let objs: Vec<u64> = (new_count.saturating_sub(1)..old_count)
        .filter(|&o| ctx.map_exists(SNAP_HEAD, o))
        .collect();
    let total = objs.len() as u64;
    throttle::run(
        ctx.rbd.config().concurrent_management_ops,
        objs,
        total,
        None,
        progress,
        |objno| {
            let snapc = &snapc;
            async move {
                let _obj = ctx.object_lock(objno).write().await;
                crate::rbd::io::copyup::settle(ctx, objno).await?;
                let oid = names::data_oid(ctx.id(), objno);
                if objno >= first_whole {
                    remove_object(ctx, &oid, snapc).await?;
                    ctx.set_head_state(objno, NONEXISTENT).await
                } else {
                    let keep = size - objno * osz;
                    match ctx
                        .ioctx
                        .operate_write(
                            &oid,
                            snapc,
                            vec![WriteOp::AssertExists, WriteOp::Truncate { size: keep }],
                        )
                        .await
                    {
                        Ok(()) | Err(crate::rados::RadosError::NotFound) => Ok(()),
                        Err(e) => Err(RbdError::rados(oid, e)),
                    }
                }
            }
        },
    )
    .await?;

    // SAVE_HEADER, SAVE_OBJECT_MAP
    let mut h = (*hdr).clone();
    h.size = size;
    ctx.save_header_freeing(h).await?;
    let mut m = ctx.head_map.lock().clone();
    m.resize(new_count);
    m.save_freeing(&ctx.ioctx, &map_oid).await?;
    *ctx.head_map.lock() = m;
    progress.update(total.max(1), total.max(1));
    Ok(())
}
