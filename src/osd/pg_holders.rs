//! Which OSDs hold every write a PG has acknowledged: the OSDs that served
//! it when it last went active. Every write of that interval went to all of
//! them, and each was brought up to date before the PG served, so any one
//! of them holds the PG's newest copy.
//!
//! Peering compares the copies it can read. A store that cannot be opened
//! shows no copy at all, so without this record an older copy elsewhere
//! would look newest, and the writes only the unreadable store holds would
//! be lost without a word. With it, a PG none of whose holders can be read
//! is incomplete and waits for one (Ceph keeps the same fact in the OSD map,
//! as past intervals and `up_thru`).
//!
//! Kept as `pg_holders.json` in the cluster directory, outside every OSD's
//! store, and saved (atomically, synced) before a PG whose holders changed
//! takes its first op: a crash in between leaves the old holders, which
//! still hold every write, since the PG took none under the new ones.
//! A cluster made before this file existed has no record for any PG until
//! it is next peered; such a PG is peered on the copies alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PgId;
use super::error::{OsdError, OsdResult};
use super::osdmap::{OsdId, OsdMap, save_json};
use super::pg_log::Eversion;
use crate::sync::Mutex;

/// File name inside the cluster directory.
pub const PG_HOLDERS_FILE: &str = "pg_holders.json";

/// Version of the file's layout.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    pgs: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    pool: crate::rados::PoolId,
    pg: u32,
    osds: Vec<OsdId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Eversion>,
}

/// A PG's holders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Holders {
    pub osds: Vec<OsdId>,
    /// The PG's version when they went active: each holds at least that
    /// much of its history. A holder whose copy is older lost it (its store
    /// was made again). `None` in a record from before this was kept.
    pub since: Option<Eversion>,
}

/// The record, loaded once at open and saved on every change.
pub(crate) struct PgHolders {
    dir: PathBuf,
    pgs: Mutex<BTreeMap<PgId, Holders>>,
}

impl PgHolders {
    /// Load the record of the cluster in `dir`; none yet is an empty one.
    pub fn load(dir: &Path) -> OsdResult<Self> {
        let path = dir.join(PG_HOLDERS_FILE);
        let pgs = match fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|why| OsdError::DecodingMap {
                path: path.clone(),
                why,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(OsdError::io(format!("reading {}", path.display()), e)),
        };
        Ok(PgHolders {
            dir: dir.to_path_buf(),
            pgs: Mutex::new(pgs),
        })
    }

    /// The OSDs that served `id` when it last went active, if known.
    pub fn get(&self, id: PgId) -> Option<Holders> {
        self.pgs.lock().get(&id).cloned()
    }

    /// Record new holders for some PGs (and forget the PGs of pools `map`
    /// no longer has); saved before this returns, unless nothing changed.
    pub fn record(&self, map: &OsdMap, changes: &[(PgId, Holders)]) -> OsdResult<()> {
        let mut pgs = self.pgs.lock();
        let mut next = pgs.clone();
        next.retain(|id, _| map.pool(id.pool).is_some_and(|p| id.pg < p.info.pg_num));
        for (id, holders) in changes {
            next.insert(*id, holders.clone());
        }
        if next == *pgs {
            return Ok(());
        }
        let on_disk = OnDisk {
            format: FORMAT,
            pgs: next
                .iter()
                .map(|(id, h)| Entry {
                    pool: id.pool,
                    pg: id.pg,
                    osds: h.osds.clone(),
                    since: h.since,
                })
                .collect(),
        };
        save_json(&self.dir, PG_HOLDERS_FILE, "the PG holders", &on_disk)?;
        *pgs = next;
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<BTreeMap<PgId, Holders>, String> {
    let d: OnDisk = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if d.format != FORMAT {
        return Err(format!(
            "format {} is not the supported format {FORMAT}",
            d.format
        ));
    }
    Ok(d.pgs
        .into_iter()
        .map(|e| {
            (
                PgId {
                    pool: e.pool,
                    pg: e.pg,
                },
                Holders {
                    osds: e.osds,
                    since: e.since,
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_with_pool(pg_num: u32) -> OsdMap {
        crate::osd::osdmap::test_map(&["osd.0", "osd.1"], pg_num)
    }

    #[test]
    fn test_pg_holders_survive_a_reload_and_forget_removed_pgs() {
        let dir = tempfile::tempdir().unwrap();
        let h = PgHolders::load(dir.path()).unwrap();
        let pg = |pg| PgId { pool: 1, pg };
        let at = Eversion {
            epoch: 3,
            version: 9,
        };
        let held = |osds: Vec<OsdId>, since| Holders { osds, since };
        h.record(
            &map_with_pool(8),
            &[
                (pg(0), held(vec![0, 1], Some(at))),
                (pg(7), held(vec![1], None)),
            ],
        )
        .unwrap();
        let again = PgHolders::load(dir.path()).unwrap();
        assert_eq!(again.get(pg(0)), Some(held(vec![0, 1], Some(at))));
        assert_eq!(again.get(pg(7)), Some(held(vec![1], None)));
        assert_eq!(again.get(pg(1)), None);
        // Fewer PGs: pg 7 is gone from the record.
        again.record(&map_with_pool(4), &[]).unwrap();
        let third = PgHolders::load(dir.path()).unwrap();
        assert_eq!(third.get(pg(7)), None);
        assert_eq!(third.get(pg(0)), Some(held(vec![0, 1], Some(at))));
    }

    #[test]
    fn test_pg_holders_read_a_record_made_before_versions_were_kept() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(PG_HOLDERS_FILE),
            br#"{"format": 1, "pgs": [{"pool": 1, "pg": 2, "osds": [2, 0]}]}"#,
        )
        .unwrap();

        let h = PgHolders::load(dir.path()).unwrap();

        let want = Holders {
            osds: vec![2, 0],
            since: None,
        };
        assert_eq!(h.get(PgId { pool: 1, pg: 2 }), Some(want));
    }

    #[test]
    fn test_pg_holders_refuse_an_unknown_format() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(PG_HOLDERS_FILE),
            br#"{"format": 9, "pgs": []}"#,
        )
        .unwrap();
        let e = PgHolders::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("format 9"), "{e}");
    }
}
