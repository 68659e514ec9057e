//! The fast path of the data path: a read or write inside one object, in
//! the steady state, issued without an async task and answered from the
//! thread that completes it.
//!
//! A FUSE request served through `read`/`write` in `io` wakes a task to
//! start it and again to answer it; on a loop device that is most of the
//! CPU a small request costs. Here the caller's thread takes the same locks
//! as the async path (shared, and only if free right now), sends the object
//! op, and the completion, run on the thread that finishes it (an OSD worker,
//! or this thread when the PG was idle: a callback may run before the call
//! returns), releases
//! them and answers. Whatever needs more (several objects, an object map
//! change, a copyup, a parent chain not loaded yet, a lock someone holds, a
//! cluster that is peering) is handed back as `None`: the caller then runs the async path,
//! which decides and reports errors exactly as before.

use bytes::Bytes;

use crate::rados::{RadosError, ReadOp, ReadResult, SNAP_HEAD, SnapId, WriteOp};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::stamps::Stamp;
use crate::rbd::image::{ImageCtx, names};
use crate::rbd::object_map::EXISTS;
use crate::sync::Arc;

use super::read_parent::pad;
use super::striper::{self, ObjectExtent};

/// `Some(result)` when the fast path served the request, `None` when the
/// caller must run the async path.
pub type Then<T> = Box<dyn FnOnce(Option<Result<T>>) + Send>;

/// `len` zero bytes: a range no object holds.
fn zeros(len: u64) -> Bytes {
    Bytes::from(vec![0u8; len as usize])
}

/// The one object extent `[off, off + len)` falls in, if it is one.
fn single_extent(order: u8, off: u64, len: u64) -> Option<ObjectExtent> {
    let mut extents = striper::map_extent(order, off, len);
    if extents.len() == 1 {
        extents.pop()
    } else {
        None
    }
}

/// Write `data` at `off` of the head when the object exists, has changed
/// since the newest snapshot, and no copyup is under way (the first branch
/// of `io::write_object`).
pub(crate) fn write(ctx: &Arc<ImageCtx>, off: u64, data: Bytes, then: Then<()>) {
    let Ok(gate) = ctx.io_gate.clone().try_read_owned() else {
        return then(None);
    };
    let hdr = ctx.header();
    let len = data.len() as u64;
    if off.checked_add(len).is_none_or(|end| end > hdr.size) {
        return then(None);
    }
    let Some(e) = single_extent(hdr.order, off, len) else {
        return then(None);
    };
    let Ok(stripe) = ctx.object_lock(e.objno).clone().try_read_owned() else {
        return then(None);
    };
    if ctx.head_state(e.objno) != EXISTS
        || ctx.copyup_pending(e.objno)
        || ctx.stamp_due(Stamp::Modify)
    {
        return then(None);
    }
    let has_parent = hdr.parent.is_some() || hdr.snaps.iter().any(|s| s.parent.is_some());
    let mut ops = Vec::with_capacity(2);
    if has_parent {
        ops.push(WriteOp::AssertExists);
    }
    ops.push(WriteOp::Write {
        off: e.offset,
        data,
    });
    let oid = names::data_oid(ctx.id(), e.objno);
    let done_oid = oid.clone();
    // The image stays open until the op is done, as on the async path.
    let open = ctx.clone();
    ctx.ioctx.write_then(
        &oid,
        &hdr.snapc(),
        ops,
        Box::new(move |r| {
            drop((stripe, gate, open));
            then(match r {
                Ok(()) => Some(Ok(())),
                // A map entry left by a crash (the async path copies up
                // first), or a cluster that is not serving right now (the
                // async path waits for it).
                Err(RadosError::NotFound) if has_parent => None,
                Err(RadosError::Busy(_)) => None,
                Err(e) => Some(Err(RbdError::rados(done_oid, e))),
            })
        }),
    );
}

/// Read `[off, off + len)` of the head or of snapshot `snap` (within its
/// size) from one object that is not in a copyup: from the object itself, or
/// through a parent chain already cached, from the nearest ancestor whose map
/// claims it.
pub(crate) fn read(
    ctx: &Arc<ImageCtx>,
    snap: SnapId,
    off: u64,
    len: u64,
    may_copy_up: bool,
    then: Then<Bytes>,
) {
    let Ok(gate) = ctx.io_gate.clone().try_read_owned() else {
        return then(None);
    };
    let hdr = ctx.header();
    let size = if snap == SNAP_HEAD {
        Some(hdr.size)
    } else {
        hdr.snap_by_id(snap).map(|s| s.size)
    };
    if size.is_none_or(|size| off.checked_add(len).is_none_or(|end| end > size)) || len == 0 {
        return then(None);
    }
    let Some(e) = single_extent(hdr.order, off, len) else {
        return then(None);
    };
    if may_copy_up && snap == SNAP_HEAD && ctx.stamp_due(Stamp::Access) {
        return then(None);
    }
    let link = if snap == SNAP_HEAD {
        hdr.parent.as_ref()
    } else {
        hdr.snap_by_id(snap).and_then(|s| s.parent.as_ref())
    };
    let copy_on_read =
        may_copy_up && snap == SNAP_HEAD && link.is_some() && ctx.rbd.config().clone_copy_on_read;
    if copy_on_read {
        return then(None);
    }
    let generation = ctx.copyup_generation();
    if ctx.copyup_pending(e.objno) {
        return then(None);
    }
    // Where the bytes are: the object itself, else the nearest ancestor
    // whose map claims it (through a cached chain only), else nowhere.
    let own = ctx.map_exists(snap, e.objno);
    let (ioctx, oid, at, valid) = match link {
        _ if own => (
            ctx.ioctx.clone(),
            names::data_oid(ctx.id(), e.objno),
            snap,
            e.length,
        ),
        None => return then(Some(Ok(zeros(e.length)))),
        Some(link) => {
            let Some(view) = ctx.cached_parent_view(link) else {
                return then(None);
            };
            let img_off = (e.objno << hdr.order) + e.offset;
            match view
                .holders(e.objno, img_off, e.length, link.overlap)
                .next()
            {
                Some((cur, valid)) => (
                    cur.ioctx.clone(),
                    names::data_oid(&cur.image_id, e.objno),
                    cur.snap_id,
                    valid,
                ),
                None => return then(Some(Ok(zeros(e.length)))),
            }
        }
    };
    let has_link = link.is_some();
    let done_oid = oid.clone();
    let ctx = ctx.clone();
    ioctx.read_then(
        &oid,
        at,
        vec![ReadOp::Read {
            off: e.offset,
            len: valid,
        }],
        Box::new(move |r| {
            drop(gate);
            // A copyup that started or ended meanwhile: its intermediate
            // states are nobody's content (see `io::read_object`).
            if ctx.copyup_generation() != generation {
                return then(None);
            }
            then(match r {
                Ok(mut results) => {
                    let data = results.pop().map(ReadResult::into_data);
                    Some(Ok(pad(data.unwrap_or_default(), e.length)))
                }
                Err(RadosError::NotFound) if !has_link => Some(Ok(zeros(e.length))),
                // A map that claims more than is there (a crash): the
                // async path probes further up the chain.
                Err(RadosError::NotFound) | Err(RadosError::Busy(_)) => None,
                Err(e) => Some(Err(RbdError::rados(done_oid, e))),
            })
        }),
    );
}
