//! The data path: image extents -> object requests, issued concurrently.
//!
//! Reads resolve each object from the object maps (own map, then the cached
//! maps of the ancestors) and issue one object read. Writes to an object a
//! clone still reads from its parent first copy it up (`copyup`). Writes to a
//! clone's object the map claims are guarded with `assert_exists`, so a map
//! entry left by a crash can never make a write skip its copyup.

pub mod copyup;
pub mod now;
pub mod read_parent;
pub mod striper;

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;

use crate::rados::{RadosError, SNAP_HEAD, SnapId, WriteOp};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::header::{Header, ParentLink};
use crate::rbd::image::stamps::Stamp;
use crate::rbd::image::{ImageCtx, names};
use crate::rbd::object_map::{EXISTS, NONEXISTENT};
use read_parent::pad;
use striper::ObjectExtent;

/// One object's share of an image write or discard.
#[derive(Clone, Debug)]
pub(crate) enum ObjectWrite {
    Write {
        off: u64,
        data: Bytes,
    },
    /// Zero a range inside the object.
    Zero {
        off: u64,
        len: u64,
    },
    /// Cut the object at `size` (discard of its tail).
    TruncateTo(u64),
    /// Remove the whole object (discard of all of it).
    Remove,
}

impl ObjectWrite {
    fn to_ops(&self) -> Vec<WriteOp> {
        match self {
            ObjectWrite::Write { off, data } => vec![WriteOp::Write {
                off: *off,
                data: data.clone(),
            }],
            ObjectWrite::Zero { off, len } => vec![WriteOp::Zero {
                off: *off,
                len: *len,
            }],
            ObjectWrite::TruncateTo(size) => vec![WriteOp::Truncate { size: *size }],
            ObjectWrite::Remove => vec![WriteOp::Remove],
        }
    }
}

/// The size of the head or of snapshot `snap`, or `SnapNotFound`.
fn size_checked(ctx: &ImageCtx, hdr: &Header, snap: SnapId) -> Result<u64> {
    if snap == SNAP_HEAD {
        return Ok(hdr.size);
    }
    hdr.snap_by_id(snap)
        .map(|s| s.size)
        .ok_or_else(|| RbdError::SnapNotFound(format!("{}@{snap}", ctx.spec())))
}

/// Read `[off, off + len)` of the head or of snapshot `snap`, cut at the end.
/// `may_copy_up`, a read-write open: it stamps the head's access time, and a
/// clone with `clone_copy_on_read` copies up what it reads from the parent.
pub async fn read(
    ctx: &ImageCtx,
    snap: SnapId,
    off: u64,
    len: u64,
    may_copy_up: bool,
) -> Result<Bytes> {
    let _gate = ctx.io_gate.read().await;
    let hdr = ctx.header();
    let size = size_checked(ctx, &hdr, snap)?;
    if off >= size || len == 0 {
        return Ok(Bytes::new());
    }
    let len = len.min(size - off);
    if may_copy_up && snap == SNAP_HEAD {
        ctx.stamp(Stamp::Access).await;
    }
    let extents = striper::map_extent(hdr.order, off, len);
    let parts = try_join_all(
        extents
            .iter()
            .map(|e| read_object(ctx, &hdr, snap, e, may_copy_up)),
    )
    .await?;
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_default());
    }
    let mut out = BytesMut::with_capacity(len as usize);
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out.freeze())
}

/// One object extent of a read, exactly `e.length` bytes.
async fn read_object(
    ctx: &ImageCtx,
    hdr: &Header,
    snap: SnapId,
    e: &ObjectExtent,
    may_copy_up: bool,
) -> Result<Bytes> {
    let link = if snap == SNAP_HEAD {
        hdr.parent.clone()
    } else {
        hdr.snap_by_id(snap).and_then(|s| s.parent.clone())
    };
    if may_copy_up && snap == SNAP_HEAD && link.is_some() && ctx.rbd.config().clone_copy_on_read {
        copy_on_read(ctx, hdr, e.objno).await?;
    }
    // Reads take no object lock, except around a copyup of several writes:
    // its intermediate states are nobody's content. One that is pending, or
    // that started or ended while this read ran, makes the read (again) wait
    // for the object's lock.
    let generation = ctx.copyup_generation();
    if !ctx.copyup_pending(e.objno) {
        let data = read_object_unlocked(ctx, snap, link.as_ref(), e).await?;
        if ctx.copyup_generation() == generation {
            return Ok(data);
        }
    }
    let _obj = ctx.object_lock(e.objno).write().await;
    copyup::settle(ctx, e.objno).await?;
    read_object_unlocked(ctx, snap, link.as_ref(), e).await
}

/// One object extent from the object or, where it has none, the parent chain.
async fn read_object_unlocked(
    ctx: &ImageCtx,
    snap: SnapId,
    link: Option<&ParentLink>,
    e: &ObjectExtent,
) -> Result<Bytes> {
    if ctx.map_exists(snap, e.objno) {
        let oid = names::data_oid(ctx.id(), e.objno);
        match ctx.ioctx.read(&oid, snap, e.offset, e.length).await {
            Ok(d) => return Ok(pad(d, e.length)),
            Err(RadosError::NotFound) => {}
            Err(err) => return Err(RbdError::rados(oid, err)),
        }
    }
    match link {
        Some(l) => {
            let view = ctx.parent_view(l).await?;
            view.read(e.objno, e.offset, e.length, l.overlap).await
        }
        None => Ok(Bytes::from(vec![0u8; e.length as usize])),
    }
}

/// `rbd_clone_copy_on_read`: copy up an object the head reads from the parent.
async fn copy_on_read(ctx: &ImageCtx, hdr: &Header, objno: u64) -> Result<()> {
    if ctx.map_exists(SNAP_HEAD, objno) {
        return Ok(());
    }
    let _obj = ctx.object_lock(objno).write().await;
    copyup::settle(ctx, objno).await?;
    if let Some(plan) = copyup::plan(ctx, hdr, objno).await? {
        copyup::execute(ctx, hdr, objno, plan, Vec::new()).await?;
    }
    Ok(())
}

/// Write `data` at `off` of the head.
pub async fn write(ctx: &ImageCtx, off: u64, data: Bytes) -> Result<()> {
    let _gate = ctx.io_gate.read().await;
    let hdr = ctx.header();
    let len = data.len() as u64;
    if off.checked_add(len).is_none_or(|end| end > hdr.size) {
        return Err(RbdError::OutOfRange {
            off,
            len,
            size: hdr.size,
        });
    }
    let extents = striper::map_extent(hdr.order, off, len);
    try_join_all(extents.iter().map(|e| {
        let piece = data.slice(e.buffer_offset as usize..(e.buffer_offset + e.length) as usize);
        write_object(
            ctx,
            &hdr,
            e.objno,
            ObjectWrite::Write {
                off: e.offset,
                data: piece,
            },
        )
    }))
    .await?;
    ctx.stamp(Stamp::Modify).await;
    Ok(())
}

/// Discard (or zero) `[off, off + len)` of the head, clamped at the end.
/// Whole objects are removed, tails truncated, the rest zeroed; an object a
/// clone still shares with its parent is truncated to 0 instead of removed, so
/// the parent's data does not show through.
pub async fn discard(ctx: &ImageCtx, off: u64, len: u64, _zero: bool) -> Result<()> {
    let _gate = ctx.io_gate.read().await;
    let hdr = ctx.header();
    if off >= hdr.size || len == 0 {
        return Ok(());
    }
    let len = len.min(hdr.size - off);
    let osz = hdr.object_size();
    let overlap = hdr.parent.as_ref().map_or(0, |p| p.overlap);
    let extents = striper::map_extent(hdr.order, off, len);
    try_join_all(extents.iter().map(|e| {
        let start = e.objno * osz;
        let obj_end = osz.min(hdr.size - start);
        let op = if e.offset == 0 && e.length >= obj_end {
            if start < overlap {
                ObjectWrite::TruncateTo(0)
            } else {
                ObjectWrite::Remove
            }
        } else if e.offset + e.length >= obj_end {
            ObjectWrite::TruncateTo(e.offset)
        } else {
            ObjectWrite::Zero {
                off: e.offset,
                len: e.length,
            }
        };
        write_object(ctx, &hdr, e.objno, op)
    }))
    .await?;
    ctx.stamp(Stamp::Modify).await;
    Ok(())
}

/// Apply `op` to object `objno` of the head: copyup first when the clone still
/// takes it from the parent; keep the head object map ahead of the data.
pub(crate) async fn write_object(
    ctx: &ImageCtx,
    hdr: &Header,
    objno: u64,
    op: ObjectWrite,
) -> Result<()> {
    let oid = names::data_oid(ctx.id(), objno);
    let snapc = hdr.snapc();
    let has_parent = hdr.parent.is_some() || hdr.snaps.iter().any(|s| s.parent.is_some());
    if matches!(op, ObjectWrite::Write { .. } | ObjectWrite::Zero { .. }) {
        // Steady state: the object exists and has changed since the newest
        // snapshot (EXISTS, not EXISTS_CLEAN) and no copyup is under way, so
        // neither the map nor a copyup is needed. Every transition away from
        // that state holds the stripe exclusively (and snapshot creation holds
        // the I/O gate), so it cannot change while the shared lock is held.
        let _shared = ctx.object_lock(objno).read().await;
        if ctx.head_state(objno) == EXISTS && !ctx.copyup_pending(objno) {
            let mut ops = op.to_ops();
            if has_parent {
                ops.insert(0, WriteOp::AssertExists);
            }
            match ctx.ioctx.operate_write(&oid, &snapc, ops).await {
                Ok(()) => return Ok(()),
                // A map entry left by a crash: take the exclusive path,
                // which copies up first.
                Err(RadosError::NotFound) if has_parent => {}
                Err(e) => return Err(RbdError::rados(oid, e)),
            }
        }
    }
    let _obj = ctx.object_lock(objno).write().await;
    copyup::settle(ctx, objno).await?;
    if ctx.map_exists(SNAP_HEAD, objno) {
        if !matches!(op, ObjectWrite::Remove) {
            // EXISTS_CLEAN -> EXISTS: the object changes after the snapshot
            // (as bookkeeping of a discard, it may use the reserve).
            let freeing = !matches!(op, ObjectWrite::Write { .. });
            ctx.set_head_state_for(objno, EXISTS, freeing).await?;
        }
        let mut ops = op.to_ops();
        if has_parent && !matches!(op, ObjectWrite::Remove) {
            ops.insert(0, WriteOp::AssertExists);
        }
        match ctx.ioctx.operate_write(&oid, &snapc, ops).await {
            Ok(()) => {
                if matches!(op, ObjectWrite::Remove) {
                    ctx.set_head_state(objno, NONEXISTENT).await?;
                }
                return Ok(());
            }
            Err(RadosError::NotFound) => {
                // The map claimed an object that is not there: treat as absent.
            }
            Err(e) => return Err(RbdError::rados(oid, e)),
        }
    }
    if has_parent && let Some(plan) = copyup::plan(ctx, hdr, objno).await? {
        if matches!(op, ObjectWrite::TruncateTo(0)) && plan.only_head_needs_it() {
            // A whole-object discard that only the head would have read the
            // parent for: an empty object hides the parent, with nothing
            // copied up only to be cut (as `fstrim` of a fresh clone does).
            ctx.set_head_state_for(objno, EXISTS, true).await?;
            return ctx
                .ioctx
                .operate_write(&oid, &snapc, op.to_ops())
                .await
                .map_err(|e| RbdError::rados(oid, e));
        }
        return copyup::execute(ctx, hdr, objno, plan, op.to_ops()).await;
    }
    match op {
        ObjectWrite::Write { .. } => {
            ctx.set_head_state(objno, EXISTS).await?;
            ctx.ioctx
                .operate_write(&oid, &snapc, op.to_ops())
                .await
                .map_err(|e| RbdError::rados(oid, e))
        }
        // Nothing to zero, cut or remove in an object that is not there.
        ObjectWrite::Zero { .. } | ObjectWrite::TruncateTo(_) | ObjectWrite::Remove => {
            if ctx.map_exists(SNAP_HEAD, objno) {
                ctx.set_head_state(objno, NONEXISTENT).await?;
            }
            Ok(())
        }
    }
}

/// Extents of `[off, off + len)` that may hold data, at object granularity.
pub async fn data_extents(
    ctx: &ImageCtx,
    snap: SnapId,
    off: u64,
    len: u64,
) -> Result<Vec<(u64, u64)>> {
    let hdr = ctx.header();
    let size = size_checked(ctx, &hdr, snap)?;
    let end = off.saturating_add(len).min(size);
    if off >= end {
        return Ok(Vec::new());
    }
    let link = if snap == SNAP_HEAD {
        hdr.parent.clone()
    } else {
        hdr.snap_by_id(snap).and_then(|s| s.parent.clone())
    };
    let view = match &link {
        Some(l) => Some(ctx.parent_view(l).await?),
        None => None,
    };
    let osz = hdr.object_size();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for objno in (off / osz)..end.div_ceil(osz) {
        let has = ctx.map_exists(snap, objno)
            || match (&view, &link) {
                (Some(v), Some(l)) => v.may_have(objno, l.overlap),
                _ => false,
            };
        if !has {
            continue;
        }
        let a = (objno * osz).max(off);
        let b = ((objno + 1) * osz).min(end);
        match out.last_mut() {
            Some(last) if last.0 + last.1 == a => last.1 += b - a,
            _ => out.push((a, b - a)),
        }
    }
    Ok(out)
}
