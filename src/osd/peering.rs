//! Peering and recovery: after every map change (and on start), each PG's
//! acting set agrees on one history before the PG serves I/O again.
//!
//! ```text
//!  for each PG:  ensure every acting OSD has it (load or create)
//!     │
//!     ├─ newest copy only on a down OSD?  incomplete: refuse I/O until it
//!     │    is back (serving an older copy would lose acknowledged writes)
//!     ├─ authoritative = up OSD (acting or stray) with the newest
//!     │    last_update (the primary on a tie)
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
use super::pg_log::Eversion;
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
            peer_pg(osds, map, id, &acting)?;
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

fn peer_pg(osds: &[Arc<Osd>], map: &OsdMap, id: PgId, acting: &[OsdId]) -> OsdResult<()> {
    let Some(&primary) = acting.first() else {
        return Ok(());
    };
    for &o in acting {
        osd(osds, o)?.ensure_pg(id)?;
    }
    // Every copy of the PG, up or down, acting or stray (Ceph learns of the
    // down ones from past intervals; here their PG info is at hand).
    let mut copies: BTreeMap<OsdId, (Eversion, bool)> = BTreeMap::new();
    for o in osds {
        if let Some(pg) = o.find_pg(id)? {
            let up = map.osd(o.id).is_some_and(|i| i.up);
            copies.insert(o.id, (pg.lock().log.info.last_update, up));
        }
    }
    let newest = copies.values().map(|c| c.0).max().unwrap_or_default();
    let auth = copies
        .iter()
        .filter(|(_, c)| c.1)
        .max_by_key(|(o, c)| (c.0, **o == primary))
        .map(|(o, c)| (*o, c.0));
    let incomplete = match auth {
        Some((_, v)) if v == newest => None,
        _ => copies.iter().find(|(_, c)| c.0 == newest).map(|(o, _)| *o),
    };
    if let Some(holder) = incomplete {
        log::warn!(
            "pg {}.{:x} is incomplete: its newest copy ({newest}) is on osd.{holder}, which is down; \
             I/O waits for it to come back",
            id.pool,
            id.pg
        );
    } else if let Some((auth, v)) = auth {
        if v > copies[&primary].0 {
            recover(osd(osds, primary)?, osd(osds, auth)?, id)?;
        }
        for &r in &acting[1..] {
            if copies[&r].0 != v {
                recover(osd(osds, r)?, osd(osds, primary)?, id)?;
            }
        }
    }
    for &o in acting {
        if let Some(pg) = osd(osds, o)?.pg(id) {
            let mut pg = pg.lock();
            debug_assert!(pg.is_idle(), "peering a busy pg");
            pg.acting = acting.to_vec();
            pg.epoch = map.epoch;
            pg.incomplete = incomplete;
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
