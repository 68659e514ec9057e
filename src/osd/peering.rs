//! Peering and recovery: after every map change (and on start), each PG's
//! acting set agrees on one history before the PG serves I/O again.
//!
//! ```text
//!  for each PG:  ensure every acting OSD has it (load or create)
//!     │
//!     ├─ authoritative = acting OSD with the newest last_update
//!     │    (the primary on a tie)
//!     ├─ primary behind it?  recover primary from it
//!     └─ each replica behind the primary?  recover it from the primary
//!
//!  recover(target from source):
//!     source log covers target.last_update?
//!        yes: log-based: copy the objects named in the missed entries
//!        no:  backfill: copy every object of the PG
//!     then: target's PG log and info := source's (last, so that a crash in
//!     between leaves the target "behind" and recovery simply runs again)
//! ```
//!
//! Runs on the thread that changes the map, while the gate holds client ops
//! back and every OSD queue is idle, so no PG is touched concurrently.
//! Every OSD's log is a prefix of the authoritative one: a PG only changes
//! primary at a map change, after all its writes drained.

use std::collections::{BTreeMap, BTreeSet};

use super::PgId;
use super::daemon::{Osd, queue_and_wait};
use super::error::{OsdError, OsdResult};
use super::osdmap::{OsdId, OsdMap};
use crate::store::{ObjectKey, ObjectStore, StoreResult, Transaction, TxOp};
use crate::sync::Arc;

/// Peer every PG of every pool under `map`.
pub(crate) fn peer_all(osds: &[Arc<Osd>], map: &OsdMap) -> OsdResult<()> {
    let mut serving: BTreeMap<OsdId, BTreeSet<PgId>> = BTreeMap::new();
    for pool in &map.pools {
        for pg in 0..pool.info.pg_num {
            let id = PgId {
                pool: pool.info.id,
                pg,
            };
            let acting = map.pg_acting(&pool.info, pg);
            peer_pg(osds, id, &acting, map.epoch)?;
            for o in acting {
                serving.entry(o).or_default().insert(id);
            }
        }
    }
    // PGs an OSD holds but no longer serves stop taking ops.
    for osd in osds {
        for (id, pg) in osd.pgs() {
            if !serving.get(&osd.id).is_some_and(|s| s.contains(&id)) {
                pg.lock().acting.clear();
            }
        }
    }
    Ok(())
}

fn osd(osds: &[Arc<Osd>], id: OsdId) -> OsdResult<&Arc<Osd>> {
    osds.get(id as usize).ok_or(OsdError::NoSuchOsd(id))
}

fn peer_pg(osds: &[Arc<Osd>], id: PgId, acting: &[OsdId], epoch: u64) -> OsdResult<()> {
    let Some(&primary) = acting.first() else {
        return Ok(());
    };
    let mut last = BTreeMap::new();
    for &o in acting {
        let pg = osd(osds, o)?.ensure_pg(id)?;
        let pg = pg.lock();
        debug_assert!(pg.is_idle(), "peering a busy pg");
        last.insert(o, pg.log.info.last_update);
    }
    let auth = acting
        .iter()
        .copied()
        .max_by_key(|o| (last[o], *o == primary))
        .unwrap_or(primary);
    if last[&auth] > last[&primary] {
        recover(osd(osds, primary)?, osd(osds, auth)?, id)?;
    }
    for &r in &acting[1..] {
        if last[&r] != last[&auth] {
            recover(osd(osds, r)?, osd(osds, primary)?, id)?;
        }
    }
    for &o in acting {
        if let Some(pg) = osd(osds, o)?.pg(id) {
            let mut pg = pg.lock();
            pg.acting = acting.to_vec();
            pg.epoch = epoch;
        }
    }
    Ok(())
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
    let names: BTreeSet<String> = match slog.entries_after(since) {
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
                "osd.{}: pg {}.{:x}: backfill from osd.{} ({since} is older than the log tail {})",
                target.id,
                id.pool,
                id.pg,
                source.id,
                slog.info.log_tail
            );
            src.keys().chain(dst.keys()).cloned().collect()
        }
    };
    for name in names {
        let mut t = Transaction::new();
        for k in dst.get(&name).into_iter().flatten() {
            t.push(TxOp::Remove(k.clone()));
        }
        for k in src.get(&name).into_iter().flatten() {
            copy_object(source.store.as_ref(), k, &mut t).map_err(|e| err(e.to_string()))?;
        }
        queue_and_wait(target.store.as_ref(), t).map_err(|e| err(e.to_string()))?;
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
    tpg.log = slog;
    Ok(())
}

fn by_name(keys: Vec<ObjectKey>) -> BTreeMap<String, Vec<ObjectKey>> {
    let mut m: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
    for k in keys {
        m.entry(k.name.clone()).or_default().push(k);
    }
    m
}

/// Steps that recreate `key` exactly as `store` holds it: data, attributes, omap.
fn copy_object(store: &dyn ObjectStore, key: &ObjectKey, t: &mut Transaction) -> StoreResult<()> {
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
    Ok(())
}
