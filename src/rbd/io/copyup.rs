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
//! (invariant kept by doing every first creation through here; objects no
//! ancestor has are created without a copyup, as reading the parent and
//! reading nothing agree for them). Object maps of
//! the snapshots and the head are marked before the writes (crash-safety rule).
//! A copyup that needs more than one write before the user's (snapshots with
//! different overlaps, or a head that differs from the newest run) records an
//! intent in the header object's omap first and clears it last. A crash in
//! between leaves the intent; `settle` (run at open, before any I/O to an
//! object with a pending intent, and before a child loads a chain through
//! the image) finishes the history: every writing step
//! raises the object's snapshot sequence to its own snap context's, strictly
//! increasing, so the object's sequence tells which steps landed.

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

impl Plan {
    /// Whether no snapshot of the image needs the parent's data of the
    /// object: then only the head would get it.
    pub fn only_head_needs_it(&self) -> bool {
        self.snap_limits.iter().all(|(_, lim)| *lim == 0)
    }
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
    plan_inner(ctx, hdr, objno, true).await
}

async fn plan_inner(
    ctx: &ImageCtx,
    hdr: &Header,
    objno: u64,
    check_presence: bool,
) -> Result<Option<Plan>> {
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
    if check_presence && exists_anywhere(ctx, hdr, objno).await? {
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
    run_steps(ctx, hdr, objno, plan, user_ops, None).await
}

/// Finish a copyup of `objno` that was interrupted (crash, I/O error) after
/// its intent was recorded: the steps the object's snapshot sequence shows as
/// done are skipped, the rest are run. The caller holds the object's lock
/// stripe. A no-op unless an intent for `objno` is pending.
pub async fn settle(ctx: &ImageCtx, objno: u64) -> Result<()> {
    if !ctx.copyup_pending(objno) {
        return Ok(());
    }
    let hdr = ctx.header();
    let oid = names::data_oid(ctx.id(), objno);
    let info = match ctx.ioctx.list_snaps(&oid).await {
        Ok(info) => Some(info),
        Err(RadosError::NotFound) => None,
        Err(e) => return Err(RbdError::rados(oid, e)),
    };
    let plan = plan_inner(ctx, &hdr, objno, false).await?;
    match (info, plan) {
        (Some(info), Some(plan)) => {
            let head_exists = info
                .clones
                .iter()
                .any(|c| c.cloneid == crate::rados::SNAP_HEAD);
            log::info!("{oid}: finishing an interrupted copyup");
            run_steps(
                ctx,
                &hdr,
                objno,
                plan,
                Vec::new(),
                Some((info.seq, head_exists)),
            )
            .await
        }
        // Nothing was written (a fresh copyup will happen when needed), or
        // the object no longer needs one.
        _ => ctx.copyup_intent_clear(objno).await,
    }
}

/// One write of a copyup's history: the content a run of snapshots (or the
/// head) must see, written under `snapc`.
struct Step {
    snapc: SnapContext,
    content: Option<Bytes>,
}

/// The copyup itself; `resume` = (snapshot sequence, head exists) of the
/// object after an interrupted run.
async fn run_steps(
    ctx: &ImageCtx,
    hdr: &Header,
    objno: u64,
    plan: Plan,
    user_ops: Vec<WriteOp>,
    resume: Option<(SnapId, bool)>,
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
    let mut steps = Vec::new();
    let mut written: Vec<SnapId> = Vec::new();
    for (snaps, c) in &runs {
        steps.push(Step {
            snapc: SnapContext {
                seq: written.last().copied().unwrap_or(0),
                snaps: written.iter().rev().copied().collect(),
            },
            content: c.clone(),
        });
        written.extend(snaps);
    }
    // More than one write before the user's own: a crash in between would
    // leave a history no rerun could see is incomplete, so record an intent.
    let multi = !runs.is_empty() && (runs.len() > 1 || runs[0].1 != head);

    for (snaps, c) in &runs {
        if c.is_some() {
            for s in snaps {
                ctx.set_snap_state(*s, objno, EXISTS).await?;
            }
        }
    }
    ctx.set_head_state(objno, EXISTS).await?;
    if multi && resume.is_none() {
        ctx.copyup_intent_set(objno).await?;
    }

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
    // Steps whose snap context the object has already seen are done: each
    // writing step raises the object's sequence to its own, strictly
    // increasing from step to step.
    let done = |seq: SnapId| resume.is_some_and(|(obs, _)| seq <= obs);

    let mut exists = false;
    let mut wrote_any = resume.is_some();
    let mut last_content: Option<Bytes> = None;
    for step in steps {
        match &step.content {
            Some(d) => {
                if done(step.snapc.seq) {
                    exists = true;
                } else {
                    let mut ops = Vec::new();
                    if !exists {
                        ops.push(WriteOp::Create { exclusive: true });
                    }
                    ops.push(WriteOp::WriteFull { data: d.clone() });
                    match send(step.snapc.clone(), ops).await {
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
            }
            None if exists => {
                if !done(step.snapc.seq) {
                    send(step.snapc.clone(), vec![WriteOp::Remove])
                        .await
                        .map_err(|e| RbdError::rados(&oid, e))?;
                }
                exists = false;
            }
            None => {}
        }
        last_content = step.content;
    }
    if let Some((obs, head_exists)) = resume
        && hdr.snap_seq <= obs
    {
        // The head step itself landed.
        exists = head_exists;
        last_content = head.clone();
    }

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
    // A user's remove of what the head step leaves absent (a discard past
    // the head's overlap) is done already: removing it again fails.
    let user: Vec<WriteOp> = user_ops
        .iter()
        .filter(|o| head.is_some() || !matches!(o, WriteOp::Remove))
        .cloned()
        .collect();
    let head_absent_after = head.is_none() && user.is_empty();
    let guarded = matches!(ops.first(), Some(WriteOp::Create { .. }));
    ops.extend(user);
    if !ops.is_empty() {
        match send(hdr.snapc(), ops).await {
            Ok(()) => {}
            Err(RadosError::Exists) if guarded && !wrote_any => {
                return plain(user_ops).await;
            }
            Err(e) => return Err(RbdError::rados(&oid, e)),
        }
    }
    if multi || resume.is_some() {
        ctx.copyup_intent_clear(objno).await?;
    }
    if head_absent_after {
        ctx.set_head_state(objno, NONEXISTENT).await?;
    }
    Ok(())
}
