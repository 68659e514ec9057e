//! Copyup: give a clone its own copy of an object it still reads from the
//! parent, before the first write to it (or on flatten / copy-on-read).
//!
//! The parent data is written together with the write that triggered it, as
//! one operation guarded by an exclusive create, when the child has no
//! snapshots:
//! ```text
//!   [create(exclusive), write_full(parent data), <the write>]   snapc = head's
//!       EEXIST -> someone else copied up first -> send <the write> alone
//! ```
//! so parent data can never land on top of a write that won a race.
//!
//! Snapshots (deep-flatten): the child's snapshots must see the parent data the
//! object had when they were taken, not the new write, and must stop depending
//! on the parent. Each snapshot `s` needs the parent object clipped to its own
//! overlap (`overlap(s)` can differ from the head's after a shrink, or be 0
//! past it). Snapshots are grouped, oldest first, into runs needing the same
//! content, and the object's history is written with growing snap contexts, so
//! the object layer's copy-on-write preserves each run's content as the clone
//! for exactly that run:
//! ```text
//!   FIRST_RUN   [create(exclusive), write_full(c1)]   snapc {seq 0, []}
//!   NEXT_RUN i  [write_full(ci)] or [remove] (ci = nothing)
//!                                   snapc {seq: newest of runs < i, those snaps}
//!   HEAD        [write_full(head data)|remove, <the write>]  snapc = head's
//! ```
//! This is librbd's "copyup with an empty snap context" generalised to
//! snapshots with different overlaps. It is only done while the object exists
//! nowhere in the child (not at the head, in no snapshot): once it exists
//! anywhere, every snapshot that needs parent data for it already has it
//! (invariant kept by doing every first creation through here). Object maps of
//! the snapshots and the head are marked before the writes (crash-safety rule).
//! A crash between the runs of a multi-run copyup (only after shrinks) can
//! leave a later snapshot seeing an earlier run's content; the single-run case
//! is one or two atomic writes and is crash-safe.

use bytes::Bytes;

use crate::rados::{RadosError, SnapContext, SnapId, WriteOp};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::header::{Header, ParentLink};
use crate::rbd::image::{ImageCtx, names};
use crate::rbd::io::read_parent::ParentView;
use crate::rbd::object_map::{EXISTS, NONEXISTENT};
use crate::sync::Arc;

/// What a copyup of one object has to write.
pub struct Plan {
    view: Arc<ParentView>,
    /// The largest overlap among head and snapshots (what is read).
    overlap: u64,
    /// Bytes of parent data the head needs (0 = none).
    head_limit: u64,
    /// Per snapshot, ascending: bytes of parent data it needs.
    snap_limits: Vec<(SnapId, u64)>,
}

/// Bytes of object `objno` (starting at `start`) that `link` covers.
fn limit(link: &Option<ParentLink>, start: u64, osz: u64) -> u64 {
    link.as_ref()
        .map_or(0, |l| l.overlap.saturating_sub(start).min(osz))
}

/// True when object `objno` exists at the head or in a snapshot of `ctx`. The
/// maps answer "no" without I/O; a "yes" from a map is confirmed by listing the
/// object's clones, since a map may claim an object a crash kept from landing.
pub async fn exists_anywhere(ctx: &ImageCtx, hdr: &Header, objno: u64) -> Result<bool> {
    if !ctx.map_exists_anywhere(objno) {
        return Ok(false);
    }
    let oid = names::data_oid(ctx.id(), objno);
    match ctx.ioctx.list_snaps(&oid).await {
        Ok(info) => Ok(info.clones.iter().any(|c| {
            c.cloneid == crate::rados::SNAP_HEAD
                || c.snaps.iter().any(|s| hdr.snap_by_id(*s).is_some())
        })),
        Err(RadosError::NotFound) => Ok(false),
        Err(e) => Err(RbdError::rados(oid, e)),
    }
}

/// The copyup object `objno` needs before it is first written, or `None` when
/// it needs none: the object already exists somewhere in the child, no
/// snapshot nor the head covers it with a parent overlap, or no ancestor has
/// the object (decided from the object maps, without I/O).
pub async fn plan(ctx: &ImageCtx, hdr: &Header, objno: u64) -> Result<Option<Plan>> {
    let osz = hdr.object_size();
    let start = objno * osz;
    let head_limit = limit(&hdr.parent, start, osz);
    let snap_limits: Vec<(SnapId, u64)> = hdr
        .snaps
        .iter()
        .map(|s| (s.id, limit(&s.parent, start, osz)))
        .collect();
    // Every link of one image names the same parent snapshot (they are all
    // dropped together by flatten), so the widest one serves for all.
    let widest = std::iter::once(&hdr.parent)
        .chain(hdr.snaps.iter().map(|s| &s.parent))
        .filter_map(|l| l.as_ref())
        .max_by_key(|l| l.overlap);
    let Some(link) = widest else { return Ok(None) };
    if link.overlap <= start {
        return Ok(None);
    }
    let view = ctx.parent_view(link).await?;
    if !view.may_have(objno, link.overlap) {
        return Ok(None);
    }
    if exists_anywhere(ctx, hdr, objno).await? {
        return Ok(None);
    }
    Ok(Some(Plan {
        view,
        overlap: link.overlap,
        head_limit,
        snap_limits,
    }))
}

/// Run `plan` for object `objno`, then `user_ops` on the head. The caller
/// holds the object's lock stripe.
pub async fn execute(
    ctx: &ImageCtx,
    hdr: &Header,
    objno: u64,
    plan: Plan,
    user_ops: Vec<WriteOp>,
) -> Result<()> {
    let osz = hdr.object_size();
    let read_len = plan.overlap.saturating_sub(objno * osz).min(osz);
    let data = plan.view.read(objno, 0, read_len, plan.overlap).await?;
    let content = |lim: u64| (lim > 0).then(|| data.slice(..lim as usize));

    let mut runs: Vec<(Vec<SnapId>, Option<Bytes>)> = Vec::new();
    for (id, lim) in &plan.snap_limits {
        let c = content(*lim);
        match runs.last_mut() {
            Some(last) if last.1 == c => last.0.push(*id),
            _ => runs.push((vec![*id], c)),
        }
    }
    let head = content(plan.head_limit);

    for (snaps, c) in &runs {
        if c.is_some() {
            for s in snaps {
                ctx.set_snap_state(*s, objno, EXISTS).await?;
            }
        }
    }
    ctx.set_head_state(objno, EXISTS).await?;

    let oid = names::data_oid(ctx.id(), objno);
    let send = |snapc: SnapContext, ops: Vec<WriteOp>| {
        let oid = oid.clone();
        async move { ctx.ioctx.operate_write(&oid, &snapc, ops).await }
    };
    let plain = |ops: Vec<WriteOp>| async move {
        if ops.is_empty() {
            return Ok(());
        }
        send(hdr.snapc(), ops)
            .await
            .map_err(|e| RbdError::rados(names::data_oid(ctx.id(), objno), e))
    };

    let mut exists = false;
    let mut wrote_any = false;
    let mut written: Vec<SnapId> = Vec::new();
    for (snaps, c) in runs.iter() {
        let snapc = SnapContext {
            seq: written.last().copied().unwrap_or(0),
            snaps: written.iter().rev().copied().collect(),
        };
        match c {
            Some(d) => {
                let mut ops = Vec::new();
                if !exists {
                    ops.push(WriteOp::Create { exclusive: true });
                }
                ops.push(WriteOp::WriteFull { data: d.clone() });
                match send(snapc, ops).await {
                    Ok(()) => {
                        exists = true;
                        wrote_any = true;
                    }
                    Err(RadosError::Exists) if !wrote_any => {
                        return plain(user_ops).await;
                    }
                    Err(e) => return Err(RbdError::rados(&oid, e)),
                }
            }
            None if exists => {
                send(snapc, vec![WriteOp::Remove])
                    .await
                    .map_err(|e| RbdError::rados(&oid, e))?;
                exists = false;
            }
            None => {}
        }
        written.extend(snaps);
    }

    let last_content = runs.last().and_then(|r| r.1.clone());
    let mut ops = Vec::new();
    match &head {
        Some(d) if exists && last_content.as_ref() == Some(d) => {}
        Some(d) => {
            if !exists {
                ops.push(WriteOp::Create { exclusive: true });
            }
            ops.push(WriteOp::WriteFull { data: d.clone() });
        }
        None if exists => ops.push(WriteOp::Remove),
        None => {}
    }
    let head_absent_after = head.is_none() && user_ops.is_empty();
    let guarded = matches!(ops.first(), Some(WriteOp::Create { .. }));
    ops.extend(user_ops.iter().cloned());
    if !ops.is_empty() {
        match send(hdr.snapc(), ops).await {
            Ok(()) => {}
            Err(RadosError::Exists) if guarded && !wrote_any => {
                return plain(user_ops).await;
            }
            Err(e) => return Err(RbdError::rados(&oid, e)),
        }
    }
    if head_absent_after {
        ctx.set_head_state(objno, NONEXISTENT).await?;
    }
    Ok(())
}
