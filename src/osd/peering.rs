//! Peering and recovery: after every map change (and on start), each PG's
//! acting set agrees on one history before the PG serves I/O again.
//!
//! ```text
//!  for each PG:  ensure every acting OSD has it (load or create)
//!     │
//!     ├─ newest copy only on a down OSD, or no OSD that served the PG
//!     │    last (its holders) up with its copy?  incomplete: refuse I/O
//!     │    until it is back (serving an older copy would lose
//!     │    acknowledged writes; a store that cannot be opened shows none)
//!     ├─ authoritative = up OSD (acting or stray) at the newest
//!     │    last_update a holder shows (no record yet: the newest read);
//!     │    a holder, then the primary, on a tie; a copy newer than that
//!     │    holds only writes never acknowledged (or given up): backfilled
//!     └─ each acting OSD behind it:
//!          its log position covered by the authoritative log?
//!             yes: log recovery now (copy the objects named in the
//!                  entries it missed)
//!             no (or its copy is empty): backfill; if at least min_size
//!                  copies are current without it, deferred: the PG serves
//!                  from those (pg_temp) and backfill_live runs once every
//!                  PG serves; else a backfill now (copy every object)
//!
//!  recover(target from source), the PG pending:
//!     copy what the log or the backfill names, then target's PG log and
//!     info := source's (last, so that a crash in between leaves the target
//!     "behind" and recovery simply runs again)
//! ```
//!
//! A PG whose serving OSDs leave out one of its recorded holders (which
//! would then miss its writes) takes no op until the new holders are saved
//! (`pg_holders`; one save for the PGs peered within 50 ms, or before a
//! recovery); one served by all of them and more serves at once.
//!
//! Runs on the thread that changes the map. At a map change client I/O is
//! held only while the map is swapped and every PG marked pending; then it
//! flows again and PGs are peered one at a time: a pending PG answers its
//! client ops Busy (they are retried as PGs finish), the others serve. A
//! pending PG takes no ops, so peering it touches nothing in use.
//! Every OSD's log is a prefix of the authoritative one: a PG only changes
//! primary at a map change, after all its writes drained.

use std::collections::{BTreeMap, BTreeSet};

use super::PgId;
use super::daemon::{Osd, queue_and_wait};
use super::error::{OsdError, OsdResult};
use super::osdmap::{OsdId, OsdMap};
use super::pg_holders::Holders;
use super::pg_log::Eversion;
use crate::store::{ObjectKey, ObjectStore, StoreResult, Transaction, TxOp};
use crate::sync::Arc;

/// Peer every PG of every pool under `map`.
pub(crate) fn peer_all(osds: &[Arc<Osd>], map: &OsdMap, after_each: &dyn Fn()) -> OsdResult<()> {
    let Some(first) = osds.first() else {
        return Ok(());
    };
    // Every write answered so far becomes durable on every store before the
    // PGs compare logs (the logs of what was only applied could be lost).
    for o in osds {
        if let Err(e) = o.store.wait_committed() {
            log::debug!("osd.{}: commit before peering: {e}", o.id);
        }
    }
    // Raised before the queues drain: an op run on its submitter's thread
    // checks `queue_only` after taking its PG's slot (`Osd::enqueue_client`).
    // Lowered when this returns, also by a panic.
    let shared = &first.shared;
    let _flags = Raised::new(&[&shared.peering, &shared.queue_only]);
    for o in osds {
        o.wait_idle();
    }
    peer_all_pgs(osds, map, after_each)
}

/// Flags up for as long as this lives.
struct Raised<'a>(Vec<&'a crate::sync::AtomicBool>);

impl<'a> Raised<'a> {
    fn new(flags: &[&'a crate::sync::AtomicBool]) -> Self {
        for f in flags {
            f.store(true, crate::sync::Ordering::SeqCst);
        }
        Raised(flags.to_vec())
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        for f in &self.0 {
            f.store(false, crate::sync::Ordering::SeqCst);
        }
    }
}

fn peer_all_pgs(osds: &[Arc<Osd>], map: &OsdMap, after_each: &dyn Fn()) -> OsdResult<()> {
    let mut serving: BTreeMap<OsdId, BTreeSet<PgId>> = BTreeMap::new();
    let mut first_err = None;
    let mut backfills = Vec::new();
    let mut batch = HolderBatch::default();
    for pool in &map.pools {
        for pg in 0..pool.info.pg_num {
            let id = PgId {
                pool: pool.info.id,
                pg,
            };
            let acting = map.pg_acting(&pool.info, pg);
            let peered = peer_pg(osds, map, id, &acting, &mut || {
                if batch.has_waiting() {
                    if let Err(e) = batch.flush(osds, map, after_each) {
                        first_err.get_or_insert(e);
                    }
                }
            });
            if let Ok(p) = &peered {
                if !p.deferred.is_empty() {
                    backfills.push((id, acting.clone(), p.deferred.clone()));
                }
            }
            match peered {
                Ok(p) => {
                    let min_size = pool.info.min_size.max(1) as usize;
                    batch.add(osds, map, p, min_size, after_each);
                }
                Err(e) => {
                    // One PG's failure must not stop the others: an acting OSD
                    // whose store fails is reported and goes down in the next
                    // epoch, which peers this PG again without it.
                    log::error!("peering pg {}.{:x}: {e}", id.pool, id.pg);
                    let mut blamed = false;
                    // A replica that cannot take the copy (full, failing), or
                    // an OSD whose store fails to give its copy or its PG,
                    // goes down like one that fails a write.
                    if let Some(osd) = to_blame(&e) {
                        report_failure(osds, osd, &e.to_string());
                        blamed = true;
                    }
                    for &o in &acting {
                        if let Some(Err(h)) = osds.get(o as usize).map(|x| x.store.check_health()) {
                            report_failure(osds, o, &h.to_string());
                            blamed = true;
                        }
                    }
                    if !blamed {
                        // Peer the rest anyway: a pending PG waits for the next
                        // map change, every other PG should serve.
                        first_err.get_or_insert(e);
                    }
                    continue;
                }
            }
            if batch.is_old() {
                if let Err(e) = batch.flush(osds, map, after_each) {
                    first_err.get_or_insert(e);
                }
            }
            for o in acting {
                serving.entry(o).or_default().insert(id);
            }
        }
    }
    if let Err(e) = batch.flush(osds, map, after_each) {
        first_err.get_or_insert(e);
    }
    // PGs an OSD holds but no longer serves stop taking ops.
    for osd in osds {
        for (id, pg) in osd.pgs() {
            if !serving.get(&osd.id).is_some_and(|s| s.contains(&id)) {
                pg.lock().acting.clear();
            }
        }
    }
    // Every PG serves now; backfill the copies deferred above. Client ops
    // may run inline again: the backfill's catch-up locks only a target,
    // which takes no client ops until its pg_temp is gone.
    if let Some(o) = osds.first() {
        o.shared
            .queue_only
            .store(false, crate::sync::Ordering::SeqCst);
    }
    for (id, acting, targets) in backfills {
        if let Err(e) = backfill_live(osds, map, id, &acting, &targets) {
            log::error!("backfilling pg {}.{:x}: {e}", id.pool, id.pg);
            if let Some(osd) = to_blame(&e) {
                report_failure(osds, osd, &e.to_string());
            } else {
                first_err.get_or_insert(e);
            }
        }
        after_each();
    }
    first_err.map_or(Ok(()), Err)
}

/// The OSD a peering or backfill error is the failure of: the target a
/// recovery could not write to, or the OSD whose store failed.
fn to_blame(e: &OsdError) -> Option<OsdId> {
    match e {
        OsdError::Recovery { osd, .. } | OsdError::Store { osd, .. } => Some(*osd),
        _ => None,
    }
}

/// Mark every loaded PG of every OSD pending (see the module doc); called
/// while client I/O is held, right after the map changed.
pub(crate) fn mark_pending(osds: &[Arc<Osd>]) {
    for o in osds {
        for (_, pg) in o.pgs() {
            pg.lock().pending = true;
        }
    }
}

fn report_failure(osds: &[Arc<Osd>], id: OsdId, why: &str) {
    if let Some(o) = osds.first() {
        o.shared.report_failure(id, why);
    }
}

fn osd(osds: &[Arc<Osd>], id: OsdId) -> OsdResult<&Arc<Osd>> {
    osds.get(id as usize).ok_or(OsdError::NoSuchOsd(id))
}

/// A PG peered and ready to serve.
struct Peered {
    id: PgId,
    acting: Vec<OsdId>,
    /// The acting OSDs whose copy is left to backfill while the others
    /// serve (see [`backfill_live`]).
    deferred: Vec<OsdId>,
    /// Incomplete: the down OSD it waits for.
    incomplete: Option<OsdId>,
    /// The version of the copy it serves.
    version: Eversion,
}

impl Peered {
    /// A PG no OSD serves (none acting): activating it changes nothing.
    fn serving_nothing(id: PgId) -> Self {
        Peered {
            id,
            acting: Vec::new(),
            deferred: Vec::new(),
            incomplete: None,
            version: Eversion::default(),
        }
    }

    /// The acting OSDs that serve it: all but the `deferred` ones.
    fn serving(&self) -> Vec<OsdId> {
        without(&self.acting, &self.deferred)
    }
}

/// `osds` less `out`, in order.
fn without(osds: &[OsdId], out: &[OsdId]) -> Vec<OsdId> {
    osds.iter().copied().filter(|o| !out.contains(o)).collect()
}

/// Peer one PG: bring its acting copies up to date, and say how it will
/// serve ([`activate`] lets it).
fn peer_pg(
    osds: &[Arc<Osd>],
    map: &OsdMap,
    id: PgId,
    acting: &[OsdId],
    before_recovery: &mut dyn FnMut(),
) -> OsdResult<Peered> {
    let Some(&primary) = acting.first() else {
        return Ok(Peered::serving_nothing(id));
    };
    for &o in acting {
        osd(osds, o)?.ensure_pg(id)?;
    }
    // Every copy of the PG, up or down, acting or stray (Ceph learns of the
    // down ones from past intervals; here their PG info is at hand).
    let mut copies: BTreeMap<OsdId, (Eversion, bool)> = BTreeMap::new();
    for o in osds {
        let Some(info) = map.osd(o.id).filter(|i| !i.lost) else {
            continue; // removed from the cluster, or lost
        };
        let found = match o.find_pg(id) {
            Ok(f) => f,
            // A down OSD's store may be gone; then it holds no usable copy.
            Err(e) if !info.up => {
                log::debug!("osd.{} (down): {e}", o.id);
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(pg) = found {
            copies.insert(o.id, (pg.lock().log.info.last_update, info.up));
        }
    }
    let newest = copies.values().map(|c| c.0).max().unwrap_or_default();
    let holders = osds
        .first()
        .and_then(|o| o.shared.holders.get(id))
        .map(|h| Holders {
            osds: h
                .osds
                .into_iter()
                .filter(|o| map.osd(*o).is_some_and(|i| !i.lost))
                .collect(),
            since: h.since,
        })
        .filter(|h| !h.osds.is_empty());
    let (auth, incomplete) = match holders {
        Some(h) => choose_by_holders(map, &copies, &h, primary),
        None => {
            // No record (a store made before there was one): the newest
            // copy read is the PG's, and must be on an up OSD.
            let auth = copies
                .iter()
                .filter(|(_, c)| c.1)
                .max_by_key(|(o, c)| (c.0, **o == primary))
                .map(|(o, c)| (*o, c.0));
            let incomplete = match auth {
                Some((_, v)) if v == newest => None,
                _ => copies.iter().find(|(_, c)| c.0 == newest).map(|(o, _)| *o),
            };
            (auth, incomplete)
        }
    };
    let mut deferred = Vec::new();
    if let Some(holder) = incomplete {
        log::warn!(
            "pg {}.{:x} is incomplete: its newest copy is on osd.{holder}, which is down \
             (the newest copy read is {newest}); I/O waits for it to come back",
            id.pool,
            id.pg
        );
    } else if let Some((auth, v)) = auth {
        let auth_osd = osd(osds, auth)?;
        let alog = match auth_osd.pg(id) {
            Some(pg) => pg.lock().log.clone(),
            // Gone since it was found: nothing serves until the next peering.
            None => return Ok(Peered::serving_nothing(id)),
        };
        let min_size = map
            .pool(id.pool)
            .map_or(1, |p| p.info.min_size.max(1) as usize);
        let needs_backfill =
            |since: Eversion| since == Eversion::default() || alog.entries_after(since).is_none();
        // Copies current now or after a quick log recovery.
        let ready = acting
            .iter()
            .filter(|o| copies[*o].0 == v || !needs_backfill(copies[*o].0))
            .count();
        for &o in acting {
            let since = copies[&o].0;
            if since == v {
                continue;
            }
            if needs_backfill(since) && ready >= min_size {
                deferred.push(o);
            } else {
                // Recovery may take long: PGs peered before it serve first.
                before_recovery();
                recover(osd(osds, o)?, auth_osd, id)?;
            }
        }
    }
    Ok(Peered {
        id,
        acting: acting.to_vec(),
        deferred,
        incomplete,
        version: auth.map(|(_, v)| v).unwrap_or_default(),
    })
}

/// The authoritative copy of a PG, or the OSD it must wait for, from its
/// recorded holders (`pg_holders`), each of which holds every write the PG
/// acknowledged. The newest copy of a holder that can be read (up or down)
/// is the PG's history; an up OSD with that same version serves as the
/// authority (a holder, then the primary, first). A copy newer than it
/// holds only writes never acknowledged, or given up with an `osd lost`:
/// it is not the authority, and recovery backfills it. A holder whose copy
/// is older than the PG was when they went active was made again (its
/// store re-made): it holds nothing. (A record from before that version was
/// kept: an empty holder copy, while another copy is not, is taken as one.)
fn choose_by_holders(
    map: &OsdMap,
    copies: &BTreeMap<OsdId, (Eversion, bool)>,
    holders: &Holders,
    primary: OsdId,
) -> (Option<(OsdId, Eversion)>, Option<OsdId>) {
    let newest = copies.values().map(|c| c.0).max().unwrap_or_default();
    let whole = |v: Eversion| match holders.since {
        Some(since) => v >= since,
        None => v != Eversion::default() || newest == Eversion::default(),
    };
    let holders = &holders.osds;
    let held = holders
        .iter()
        .filter_map(|o| copies.get(o).map(|c| (*o, c.0)))
        .filter(|(_, v)| whole(*v))
        .max_by_key(|(_, v)| *v);
    let Some((holder, hv)) = held else {
        let down = holders.iter().find(|o| !map.osd(**o).is_some_and(|i| i.up));
        return (None, down.or(holders.first()).copied());
    };
    let auth = copies
        .iter()
        .filter(|(_, c)| c.1 && c.0 == hv)
        .max_by_key(|(o, _)| (holders.contains(o), **o == primary))
        .map(|(o, c)| (*o, c.0));
    match auth {
        Some(a) => (Some(a), None),
        None => (None, Some(holder)),
    }
}

/// Let a peered PG serve (its holders recorded first, if they changed).
fn activate(osds: &[Arc<Osd>], map: &OsdMap, p: &Peered) -> OsdResult<()> {
    let Some(&primary) = p.acting.first() else {
        return Ok(());
    };
    let id = p.id;
    let serving = p.serving();
    {
        let mut temp = osd(osds, primary)?.shared.pg_temp.lock();
        if p.deferred.is_empty() {
            temp.remove(&id);
        } else {
            temp.insert(id, serving.clone());
        }
    }
    for &o in &p.acting {
        if let Some(pg) = osd(osds, o)?.pg(id) {
            let mut pg = pg.lock();
            debug_assert!(
                pg.is_idle(),
                "peering a busy pg {}.{:x} on osd.{o}: {}",
                id.pool,
                id.pg,
                pg.busy_summary()
            );
            pg.acting = if p.deferred.contains(&o) {
                Vec::new()
            } else {
                serving.clone()
            };
            pg.epoch = map.epoch;
            pg.incomplete = p.incomplete;
            pg.pending = false;
            pg.refusing = false;
        }
    }
    Ok(())
}

/// Peered PGs whose holders change, the ones that must wait to serve until
/// the new holders are saved among them: one save for every PG peered within
/// [`HolderBatch::MAX_AGE`] (or before a recovery), rather than one per PG.
#[derive(Default)]
struct HolderBatch {
    /// New holders to save.
    record: Vec<(PgId, Holders)>,
    /// PGs that serve once they are saved.
    waiting: Vec<Peered>,
    since: Option<std::time::Instant>,
}

impl HolderBatch {
    const MAX_AGE: std::time::Duration = std::time::Duration::from_millis(50);

    /// Activate `p` now if its holders stay as recorded; else hold it for
    /// the next [`Self::flush`]. A PG that takes no writes (incomplete, or
    /// served by fewer than `min_size`) keeps its holders: every write is
    /// still on each of them.
    fn add(
        &mut self,
        osds: &[Arc<Osd>],
        map: &OsdMap,
        p: Peered,
        min_size: usize,
        after_each: &dyn Fn(),
    ) {
        let shared = match osds.first() {
            Some(o) => &o.shared,
            None => return,
        };
        let serving = p.serving();
        let writable = p.incomplete.is_none() && serving.len() >= min_size;
        let recorded = shared.holders.get(p.id).map(|h| h.osds);
        if writable && recorded.as_ref() != Some(&serving) {
            // Every recorded holder still serving: they get every write
            // the PG takes, so it may serve before the new holders are
            // saved. One left out would miss them, and with no record yet
            // nothing says who holds what: the PG waits.
            let keeps_all = recorded.is_some_and(|r| r.iter().all(|o| serving.contains(o)));
            self.since.get_or_insert_with(std::time::Instant::now);
            let holders = Holders {
                osds: serving,
                since: Some(p.version),
            };
            self.record.push((p.id, holders));
            if !keeps_all {
                self.waiting.push(p);
                return;
            }
        }
        if let Err(e) = activate(osds, map, &p) {
            log::error!("activating pg {}.{:x}: {e}", p.id.pool, p.id.pg);
        }
        after_each();
    }

    fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    fn is_old(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= Self::MAX_AGE)
    }

    /// Save the waiting PGs' holders, then let them serve. If the save
    /// fails they stay pending (their clients wait for the next map change).
    fn flush(&mut self, osds: &[Arc<Osd>], map: &OsdMap, after_each: &dyn Fn()) -> OsdResult<()> {
        self.since = None;
        let waiting = std::mem::take(&mut self.waiting);
        let Some(first) = osds.first() else {
            return Ok(());
        };
        first
            .shared
            .holders
            .record(map, &std::mem::take(&mut self.record))?;
        for p in &waiting {
            activate(osds, map, p)?;
            after_each();
        }
        Ok(())
    }
}

/// Backfill `targets` while the rest of `acting` serves the PG (its
/// pg_temp): copy every object from the serving primary as it is now, then
/// hold the PG's I/O briefly and catch up from the log what changed during
/// the copy (an object copied mid-write was written after the copy began,
/// so the log names it). Then the whole acting set serves.
///
/// ```text
///  serving (pg_temp) ── copy pass (I/O flows) ──> PG pending, idle
///     ──> log recovery since the pass began ──> acting = up, pg_temp gone
/// ```
///
/// A crash in between leaves a target whose PG info predates the copy: the
/// next peering backfills it again.
fn backfill_live(
    osds: &[Arc<Osd>],
    map: &OsdMap,
    id: PgId,
    acting: &[OsdId],
    targets: &[OsdId],
) -> OsdResult<()> {
    let serving = without(acting, targets);
    let source = osd(osds, serving[0])?;
    let Some(spg) = source.pg(id) else {
        return Ok(());
    };
    // Not serving (its new holders could not be saved): it waits for the
    // next map change, which peers it again.
    if spg.lock().pending {
        return Ok(());
    }
    let shared = &source.shared;
    let mut began = Vec::new();
    for &t in targets {
        let target = osd(osds, t)?;
        // Between writes: every entry logged by then is applied, so all
        // the copy can miss is logged after `since`.
        let since = when_idle(osds, &spg, |pg| pg.log.info.last_update);
        shared.activity.lock().insert(id, "backfilling");
        let copied = copy_pass(target, source, id);
        shared.activity.lock().remove(&id);
        let (objects, bytes) = copied?;
        shared.count_recovered(true, objects, bytes);
        began.push((target, since));
    }
    // Wait for the writes in flight, then hold new ones (Busy, retried).
    when_idle(osds, &spg, |pg| pg.pending = true);
    let caught_up = began.iter().try_for_each(|(target, since)| {
        if let Some(tpg) = target.pg(id) {
            tpg.lock().log.info.last_update = *since;
        }
        recover(target, source, id)
    });
    let members = if caught_up.is_ok() {
        acting
    } else {
        &serving[..]
    };
    // Still taking no writes: every member holds this much.
    let since = spg.lock().log.info.last_update;
    for &o in members {
        if let Some(pg) = osd(osds, o)?.pg(id) {
            let mut pg = pg.lock();
            pg.acting = members.to_vec();
            pg.pending = false;
            pg.refusing = false;
        }
    }
    if caught_up.is_ok() {
        shared.pg_temp.lock().remove(&id);
        // More holders than recorded: the recorded ones hold every write
        // too, so this may come after the targets began to serve.
        let holders = Holders {
            osds: acting.to_vec(),
            since: Some(since),
        };
        shared.holders.record(map, &[(id, holders)])?;
    }
    caught_up
}

/// Run `f` on the PG once no write or cold read is in flight in it
/// (polled: writes in flight finish within a store round trip once the
/// stores commit, which they are asked to, and cold reads within a disk
/// read; new ones wait for the lock).
fn when_idle<T>(
    osds: &[Arc<Osd>],
    pg: &crate::sync::Mutex<super::pg::Pg>,
    f: impl FnOnce(&mut super::pg::Pg) -> T,
) -> T {
    loop {
        let mut g = pg.lock();
        if g.is_idle() {
            g.quiesce_reads = false;
            return f(&mut g);
        }
        // Reads arriving meanwhile are served on the workers, so that the
        // cold reads out now are the last.
        g.quiesce_reads = true;
        drop(g);
        for o in osds {
            o.store.commit_soon();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Make `target`'s objects of PG `id` those of `source` as they are now,
/// object by object, while `source` serves; returns objects and bytes copied.
fn copy_pass(target: &Arc<Osd>, source: &Arc<Osd>, id: PgId) -> OsdResult<(u64, u64)> {
    let err = |why: String| OsdError::Recovery {
        osd: target.id,
        from: source.id,
        why,
    };
    let src = by_name(
        source
            .store
            .list_objects(id)
            .map_err(|e| err(e.to_string()))?,
    );
    let dst = by_name(
        target
            .store
            .list_objects(id)
            .map_err(|e| err(e.to_string()))?,
    );
    let names: BTreeSet<&String> = src.keys().chain(dst.keys()).collect();
    log::info!(
        "osd.{}: pg {}.{:x}: backfill of {} objects from osd.{} while it serves",
        target.id,
        id.pool,
        id.pg,
        names.len(),
        source.id
    );
    let (mut objects, mut bytes) = (0, 0);
    let start = std::time::Instant::now();
    for name in names {
        // Client I/O shares the disks: keep to the configured rate.
        if let Some(rate) = source.shared.recovery_max_bytes_per_sec {
            let due = std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let mut t = Transaction::new();
        for k in dst.get(name).into_iter().flatten() {
            t.push(TxOp::Remove(k.clone()));
        }
        for k in src.get(name).into_iter().flatten() {
            match copy_object(source.store.as_ref(), k, &mut t) {
                Ok(n) => bytes += n,
                // Removed meanwhile: the catch-up removes it from the target.
                Err(crate::store::StoreError::NotFound(_)) => {}
                Err(e) => {
                    return Err(OsdError::Store {
                        osd: source.id,
                        source: e,
                    });
                }
            }
        }
        queue_and_wait(target.store.as_ref(), t).map_err(|e| err(e.to_string()))?;
        objects += 1;
    }
    Ok((objects, bytes))
}

/// Bring `target`'s copy of PG `id` up to `source`'s (see the module doc).
fn recover(target: &Arc<Osd>, source: &Arc<Osd>, id: PgId) -> OsdResult<()> {
    let err = |why: String| OsdError::Recovery {
        osd: target.id,
        from: source.id,
        why,
    };
    let (tpg, spg) = match (target.pg(id), source.pg(id)) {
        (Some(t), Some(s)) => (t, s),
        _ => return Err(err("pg not loaded".into())),
    };
    let slog = spg.lock().log.clone();
    let mut tpg = tpg.lock();
    let since = tpg.log.info.last_update;
    // An empty copy (a new OSD) is backfilled, as in Ceph: walking the whole
    // log would name every object anyway, many of them more than once.
    let backfill = slog.entries_after(since).is_none() || since == Eversion::default();
    target.shared.activity.lock().insert(
        id,
        if backfill {
            "backfilling"
        } else {
            "recovering"
        },
    );
    let r = recover_objects(target, source, id, &slog, &mut tpg, err).and_then(|done| {
        // The copy may be all that holds a flushed write once the source
        // goes: it is durable before the PG counts as clean.
        target
            .store
            .wait_committed()
            .map_err(|e| err(format!("committing the recovered copy: {e}")))?;
        Ok(done)
    });
    target.shared.activity.lock().remove(&id);
    let (objects, bytes) = r?;
    target.shared.count_recovered(backfill, objects, bytes);
    Ok(())
}

/// Copy the objects `target` lacks, then its log (see [`recover`]); returns
/// how many objects and bytes were copied.
fn recover_objects(
    target: &Arc<Osd>,
    source: &Arc<Osd>,
    id: PgId,
    slog: &super::pg_log::PgLog,
    tpg: &mut super::pg::Pg,
    err: impl Fn(String) -> OsdError,
) -> OsdResult<(u64, u64)> {
    let since = tpg.log.info.last_update;
    // What the source's store fails to give is the source's failure.
    let source_err = |e| OsdError::Store {
        osd: source.id,
        source: e,
    };
    let src = by_name(source.store.list_objects(id).map_err(source_err)?);
    let dst = by_name(
        target
            .store
            .list_objects(id)
            .map_err(|e| err(e.to_string()))?,
    );
    let log_covers = slog
        .entries_after(since)
        .filter(|_| since != Eversion::default());
    let names: BTreeSet<String> = match log_covers {
        Some(missed) => {
            let names: BTreeSet<String> = missed.map(|e| e.name.clone()).collect();
            log::info!(
                "osd.{}: pg {}.{:x}: log recovery of {} objects from osd.{} ({since} -> {})",
                target.id,
                id.pool,
                id.pg,
                names.len(),
                source.id,
                slog.info.last_update
            );
            names
        }
        None => {
            log::info!(
                "osd.{}: pg {}.{:x}: backfill from osd.{} (at {since}; log tail {})",
                target.id,
                id.pool,
                id.pg,
                source.id,
                slog.info.log_tail
            );
            src.keys().chain(dst.keys()).cloned().collect()
        }
    };
    let (mut objects, mut bytes) = (0, 0);
    for name in names {
        let mut t = Transaction::new();
        for k in dst.get(&name).into_iter().flatten() {
            t.push(TxOp::Remove(k.clone()));
        }
        for k in src.get(&name).into_iter().flatten() {
            bytes += copy_object(source.store.as_ref(), k, &mut t).map_err(source_err)?;
        }
        queue_and_wait(target.store.as_ref(), t).map_err(|e| err(e.to_string()))?;
        objects += 1;
    }
    let old_meta = target
        .store
        .coll_meta_get(id)
        .map_err(|e| err(e.to_string()))?;
    let mut t = Transaction::new();
    t.push(TxOp::CollMetaRm {
        coll: id,
        keys: old_meta.into_keys().collect(),
    });
    t.push(TxOp::CollMetaSet {
        coll: id,
        entries: slog.to_meta(),
    });
    queue_and_wait(target.store.as_ref(), t).map_err(|e| err(e.to_string()))?;
    tpg.log = slog.clone();
    Ok((objects, bytes))
}

fn by_name(keys: Vec<ObjectKey>) -> BTreeMap<String, Vec<ObjectKey>> {
    let mut m: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
    for k in keys {
        m.entry(k.name.clone()).or_default().push(k);
    }
    m
}

/// Steps that recreate `key` exactly as `store` holds it: data, attributes,
/// omap. Returns the data size.
pub(crate) fn copy_object(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    t: &mut Transaction,
) -> StoreResult<u64> {
    let size = store.stat(key)?;
    t.push(TxOp::Touch(key.clone()));
    if size > 0 {
        let data = store.read(key, 0, size)?;
        t.push(TxOp::Write {
            key: key.clone(),
            off: 0,
            data,
        });
        t.push(TxOp::Truncate {
            key: key.clone(),
            size,
        });
    }
    let attrs = store.getattrs(key)?;
    if !attrs.is_empty() {
        t.push(TxOp::SetAttrs {
            key: key.clone(),
            attrs,
        });
    }
    let omap = store.omap_get(key)?;
    if !omap.is_empty() {
        t.push(TxOp::OmapSet {
            key: key.clone(),
            entries: omap,
        });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: u64) -> Eversion {
        Eversion { epoch: 2, version }
    }

    #[test]
    fn test_a_holder_copy_older_than_its_record_is_not_the_pgs_history() {
        // osd.0 and osd.1 up: osd.1, the holder, shows an empty copy;
        // osd.0's copy (not a holder) is at version 3.
        let map = crate::osd::osdmap::test_map(&["osd.0", "osd.1"], 1);
        let copies = BTreeMap::from([(0, (v(3), true)), (1, (Eversion::default(), true))]);
        let held = |since| Holders {
            osds: vec![1],
            since,
        };

        // Recorded when the PG was at version 5: the empty copy lost it.
        let remade = choose_by_holders(&map, &copies, &held(Some(v(5))), 0);
        // Recorded when the PG was empty (after an `osd lost`): it is.
        let empty = choose_by_holders(&map, &copies, &held(Some(Eversion::default())), 0);

        assert_eq!(remade, (None, Some(1)));
        assert_eq!(empty, (Some((1, Eversion::default())), None));
    }
}
