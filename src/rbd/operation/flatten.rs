//! Flatten: make a clone independent of its parent.
//!
//! ```text
//!   VALIDATE (no parent -> EINVAL "image has no parent"; snapshot -> EROFS)
//!      |
//!   COPYUP_OBJECTS  objects 0 .. objects(max overlap of head and snapshots),
//!      |            rbd_concurrent_management_ops at a time, progress done/total;
//!      |            per object: skip if it exists in the child (done before) or
//!      |            no ancestor has it (object maps, no I/O); else copyup
//!      |            (deep: the child's snapshots get their own copy too)
//!      |            cancel -> stop starting objects, wait for those in flight,
//!      |            return Cancelled (ERESTART): running flatten again resumes
//!   DETACH_PARENT   header: no parent at the head nor any snapshot (deep-flatten),
//!      |            with writes blocked so none straddles the change
//!   REMOVE_CHILD_RECORD  drop the rbd_children record (a crash before this
//!      |                 leaves a stale record that `children` ignores)
//!   DONE
//! ```
//! Concurrent writes are safe: a write and the flatten copyup of one object are
//! serialised by the object's lock stripe, and every copyup is guarded by an
//! exclusive create, so parent data never overwrites newer data.

use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::{ImageCtx, directory};
use crate::rbd::io::{copyup, striper};
use crate::rbd::throttle;
use crate::rbd::types::{CancelToken, ProgressSink};

pub async fn flatten(
    ctx: &ImageCtx,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<()> {
    let id = ctx.lock.new_request_id();
    ctx.lock.invoke(id, || run(ctx, progress, cancel)).await
}

pub(crate) async fn run(
    ctx: &ImageCtx,
    progress: &dyn ProgressSink,
    cancel: &CancelToken,
) -> Result<()> {
    // VALIDATE
    let hdr = ctx.header();
    let Some(link) = hdr.parent.clone() else {
        return Err(RbdError::NoParent);
    };
    let max_overlap = std::iter::once(link.overlap)
        .chain(
            hdr.snaps
                .iter()
                .filter_map(|s| s.parent.as_ref().map(|p| p.overlap)),
        )
        .max()
        .unwrap_or(0);

    // COPYUP_OBJECTS
    let n = striper::object_count(max_overlap, hdr.order);
    throttle::run(
        ctx.rbd.config().concurrent_management_ops,
        (0..n).collect(),
        n,
        Some(cancel),
        progress,
        |objno| flatten_object(ctx, objno),
    )
    .await?;

    // DETACH_PARENT
    {
        let _gate = ctx.io_gate.write().await;
        let mut h = (*ctx.header()).clone();
        h.parent = None;
        for s in &mut h.snaps {
            s.parent = None;
        }
        ctx.save_header(h).await?;
        ctx.invalidate_chains();
        // Children of this image read through its snapshots, which no
        // longer lead to the parent: their cached chains are stale now,
        // under the gate, not only once the record below is gone.
        ctx.rbd.bump_layout_epoch();
    }

    // REMOVE_CHILD_RECORD
    let pioctx = ctx.rbd.rados().ioctx_by_id(link.pool_id);
    directory::children_remove(
        &pioctx,
        &link.image_id,
        link.snap_id,
        ctx.ioctx.pool_id(),
        ctx.id(),
    )
    .await?;
    ctx.rbd.bump_layout_epoch();
    if n == 0 {
        progress.update(1, 1);
    }
    Ok(())
}

async fn flatten_object(ctx: &ImageCtx, objno: u64) -> Result<()> {
    let _gate = ctx.io_gate.read().await;
    let _obj = ctx.object_lock(objno).write().await;
    copyup::settle(ctx, objno).await?;
    let hdr = ctx.header();
    if let Some(plan) = copyup::plan(ctx, &hdr, objno).await? {
        copyup::execute(ctx, &hdr, objno, plan, Vec::new()).await?;
    }
    Ok(())
}
