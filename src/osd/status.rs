//! What the cluster reports about itself: each PG's state (`pg ls`) and a
//! summary with health (`status`, like `ceph -s`). Both are serde types for
//! `--format json`; [`ClusterStatus`] also renders as text.
//!
//! PG states, as Ceph names them:
//!
//! ```text
//!  no acting OSD up            down
//!  newest copy on a down OSD   incomplete (waiting_for names it)
//!  being recovered now         peering+recovering / peering+backfilling
//!  backfilled while serving    active+undersized+degraded+backfilling
//!  not peered under this map   peering  (its I/O waits; others serve)
//!  acting < min_size           undersized+degraded+peered  (I/O waits)
//!  acting < size               active+undersized+degraded
//!  otherwise                   active+clean
//!  + "+inconsistent" while a read or scrub found a bad copy not yet repaired
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::PgId;
use super::cluster::Cluster;
use super::osdmap::OsdId;
use crate::rados::PoolId;
use crate::sync::Ordering;

/// One PG as `pg ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgStatus {
    /// `POOL.PG` with the PG in hex, as Ceph prints it.
    pub pgid: String,
    pub pool: PoolId,
    pub pg: u32,
    pub state: String,
    /// Where placement puts the PG (OSDs that are in), primary first.
    pub up: Vec<OsdId>,
    /// The OSDs serving it now (the up set without the down OSDs).
    pub acting: Vec<OsdId>,
    pub primary: Option<OsdId>,
    /// Store objects (heads and clones) on the primary.
    pub objects: u64,
    /// Object copies missing because acting < size.
    pub degraded_objects: u64,
    /// Copies known bad (failed a digest or a scrub) and not yet repaired.
    pub inconsistent_objects: u64,
    /// Newest PG log version on the primary, `epoch'version`.
    pub last_update: String,
    /// Incomplete: the down OSD whose copy it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<OsdId>,
}

impl PgStatus {
    /// Serving client I/O.
    pub fn is_active(&self) -> bool {
        self.state.starts_with("active")
    }
}

/// Overall health, as Ceph grades it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Health {
    #[serde(rename = "HEALTH_OK")]
    Ok,
    #[serde(rename = "HEALTH_WARN")]
    Warn,
    #[serde(rename = "HEALTH_ERR")]
    Err,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Ok => "HEALTH_OK",
            Health::Warn => "HEALTH_WARN",
            Health::Err => "HEALTH_ERR",
        })
    }
}

/// What recovery has done since the cluster was opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// Objects copied by log-based recovery (only what replicas missed).
    pub objects_recovered: u64,
    /// Objects copied by backfill (whole PGs).
    pub objects_backfilled: u64,
    pub bytes_recovered: u64,
    /// Objects per second since the previous status call.
    pub objects_per_sec: f64,
}

/// The cluster summary of `rbdfs status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub health: Health,
    /// Why the health is not OK, one line each.
    pub checks: Vec<String>,
    pub epoch: u64,
    pub num_osds: usize,
    pub num_up_osds: usize,
    pub num_in_osds: usize,
    pub num_pools: usize,
    pub num_pgs: usize,
    pub pgs_by_state: BTreeMap<String, usize>,
    pub objects: u64,
    pub objects_degraded: u64,
    /// Always 0: copies being backfilled count as degraded instead.
    pub objects_misplaced: u64,
    pub recovery: RecoveryStatus,
    /// Client ops waiting for enough OSDs.
    pub blocked_ops: usize,
}

impl Cluster {
    /// The state of every PG of every pool.
    pub fn pg_list(&self) -> Vec<PgStatus> {
        let inner = self.inner();
        let map = self.osdmap();
        let damaged = inner.shared.damaged.lock().clone();
        let activity = inner.shared.activity.lock().clone();
        let mut out = Vec::new();
        for pool in &map.pools {
            let size = pool.info.size as usize;
            let min_size = pool.info.min_size.max(1) as usize;
            for pg in 0..pool.info.pg_num {
                let id = PgId {
                    pool: pool.info.id,
                    pg,
                };
                let up = map.pg_up_set(&pool.info, pg);
                let acting = inner.shared.acting(&map, &pool.info, pg);
                let primary = acting.first().copied();
                let posd = primary.and_then(|p| inner.osd(p));
                let objects = posd
                    .as_ref()
                    .and_then(|o| o.store.list_objects(id).ok())
                    .map_or(0, |k| k.len() as u64);
                // While peering, a PG's lock may be held for a long
                // recovery: say "peering" rather than wait for it.
                let peering = inner.shared.peering.load(Ordering::SeqCst);
                let pgst = posd.as_ref().and_then(|o| o.pg(id)).map(|pg| {
                    let g = if peering {
                        // Long enough for a worker's event, short next to
                        // a recovery.
                        pg.try_lock_for(std::time::Duration::from_millis(100))
                    } else {
                        Some(pg.lock())
                    };
                    g.map(|g| (g.incomplete, g.log.info.last_update.to_string(), g.pending))
                });
                let (incomplete, last_update, busy) = match pgst {
                    Some(Some((inc, lu, pending))) => (inc, lu, pending),
                    Some(None) => (None, String::new(), true),
                    None => (None, String::new(), peering),
                };
                let inconsistent = damaged.get(&id).map_or(0, |m| m.len() as u64);
                let mut state = if acting.is_empty() {
                    "down".to_string()
                } else if incomplete.is_some() {
                    "incomplete".to_string()
                } else if let Some(a) = activity.get(&id) {
                    if busy {
                        // Recovered while pending: its I/O waits meanwhile.
                        format!("peering+{a}")
                    } else {
                        // Backfilled while the others serve.
                        format!("active+undersized+degraded+{a}")
                    }
                } else if busy {
                    "peering".to_string()
                } else if acting.len() < min_size {
                    "undersized+degraded+peered".to_string()
                } else if acting.len() < size {
                    "active+undersized+degraded".to_string()
                } else {
                    "active+clean".to_string()
                };
                if inconsistent > 0 {
                    state.push_str("+inconsistent");
                }
                out.push(PgStatus {
                    pgid: format!("{}.{:x}", id.pool, id.pg),
                    pool: id.pool,
                    pg,
                    state,
                    up,
                    acting: acting.clone(),
                    primary,
                    objects,
                    degraded_objects: objects * size.saturating_sub(acting.len()) as u64,
                    inconsistent_objects: inconsistent,
                    last_update,
                    waiting_for: incomplete,
                });
            }
        }
        out
    }

    /// The cluster summary: health with its reasons, OSD and PG counts,
    /// degraded objects and recovery progress.
    pub fn status(&self) -> ClusterStatus {
        let inner = self.inner();
        let map = self.osdmap();
        let pgs = self.pg_list();
        let mut pgs_by_state = BTreeMap::new();
        for p in &pgs {
            *pgs_by_state.entry(p.state.clone()).or_insert(0) += 1;
        }
        let num_osds = map.osds.len();
        let num_up_osds = map.osds.iter().filter(|o| o.up).count();
        let num_in_osds = map.osds.iter().filter(|o| o.in_).count();
        let mut health = Health::Ok;
        let mut checks = Vec::new();
        let mut check = |h: Health, n: usize, what: &str| {
            if n > 0 {
                health = health.max(h);
                checks.push(format!("{n} {what}"));
            }
        };
        check(Health::Warn, num_osds - num_up_osds, "osds down");
        let count = |f: &dyn Fn(&PgStatus) -> bool| pgs.iter().filter(|p| f(p)).count();
        check(
            Health::Err,
            count(&|p| !p.is_active() && !p.state.starts_with("peering")),
            "pgs inactive (I/O to them waits)",
        );
        check(
            Health::Warn,
            count(&|p| p.state.starts_with("peering")),
            "pgs peering",
        );
        check(
            Health::Warn,
            count(&|p| p.state.contains("degraded")),
            "pgs degraded",
        );
        check(
            Health::Err,
            count(&|p| p.inconsistent_objects > 0),
            "pgs inconsistent (run a scrub with repair)",
        );
        let mut waiting: BTreeMap<OsdId, usize> = BTreeMap::new();
        for o in pgs.iter().filter_map(|p| p.waiting_for) {
            *waiting.entry(o).or_default() += 1;
        }
        for (o, n) in waiting {
            check(
                Health::Err,
                n,
                &format!(
                    "pgs incomplete: their newest copy is on osd.{o}; bring it back up \
                     (a store that will not open: see the daemon's log)"
                ),
            );
        }
        let blocked_ops = inner.blocked.load(Ordering::SeqCst);
        check(Health::Warn, blocked_ops, "client ops blocked");
        let c = &inner.shared.recovery;
        let recovered = c.log_objects.load(Ordering::Relaxed);
        let backfilled = c.backfill_objects.load(Ordering::Relaxed);
        let now = Instant::now();
        let objects_per_sec = {
            let mut sample = inner.shared.rate_sample.lock();
            let total = recovered + backfilled;
            let rate = match *sample {
                Some((t, n)) if now > t => (total - n) as f64 / now.duration_since(t).as_secs_f64(),
                _ => 0.0,
            };
            *sample = Some((now, total));
            rate
        };
        ClusterStatus {
            health,
            checks,
            epoch: map.epoch,
            num_osds,
            num_up_osds,
            num_in_osds,
            num_pools: map.pools.len(),
            num_pgs: pgs.len(),
            pgs_by_state,
            objects: pgs.iter().map(|p| p.objects).sum(),
            objects_degraded: pgs.iter().map(|p| p.degraded_objects).sum(),
            objects_misplaced: 0,
            recovery: RecoveryStatus {
                objects_recovered: recovered,
                objects_backfilled: backfilled,
                bytes_recovered: c.bytes.load(Ordering::Relaxed),
                objects_per_sec,
            },
            blocked_ops,
        }
    }
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  cluster:")?;
        writeln!(f, "    health: {}", self.health)?;
        for c in &self.checks {
            writeln!(f, "            {c}")?;
        }
        writeln!(f)?;
        writeln!(f, "  services:")?;
        writeln!(
            f,
            "    osd: {} osds: {} up, {} in; epoch e{}",
            self.num_osds, self.num_up_osds, self.num_in_osds, self.epoch
        )?;
        writeln!(f)?;
        writeln!(f, "  data:")?;
        writeln!(
            f,
            "    pools:   {} pools, {} pgs",
            self.num_pools, self.num_pgs
        )?;
        writeln!(f, "    objects: {} objects", self.objects)?;
        if self.objects_degraded > 0 {
            writeln!(
                f,
                "    degraded: {} object copies missing",
                self.objects_degraded
            )?;
        }
        let mut first = true;
        for (state, n) in &self.pgs_by_state {
            let label = if first {
                "    pgs:     "
            } else {
                "             "
            };
            first = false;
            writeln!(f, "{label}{n} {state}")?;
        }
        writeln!(f)?;
        writeln!(f, "  recovery:")?;
        writeln!(
            f,
            "    {} objects from logs, {} backfilled, {} bytes; {:.1} objects/s",
            self.recovery.objects_recovered,
            self.recovery.objects_backfilled,
            self.recovery.bytes_recovered,
            self.recovery.objects_per_sec
        )?;
        if self.blocked_ops > 0 {
            writeln!(f, "    {} client ops blocked", self.blocked_ops)?;
        }
        Ok(())
    }
}
