//! The OSD map: which OSDs exist, where they live, which are up and in, and the
//! pools with their self-managed snapshot state. Every change bumps the epoch.
//!
//! Persisted as `osdmap.json` in the cluster directory. A save is atomic: the
//! new map is written to a temporary file, fsynced, renamed over the old one and
//! the directory is fsynced, so a crash leaves either the old or the new map.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{OsdError, OsdResult};
use super::placement;
use crate::rados::{PoolId, PoolInfo, SnapId};

/// Version of the `osdmap.json` layout; bumped on incompatible changes.
pub const OSDMAP_FORMAT: u32 = 1;

/// File name of the map inside the cluster directory.
pub const OSDMAP_FILE: &str = "osdmap.json";

/// An OSD id (`osd.N`).
pub type OsdId = u32;

/// One OSD as the map knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdInfo {
    pub id: OsdId,
    /// Its store directory; relative paths are relative to the cluster directory.
    pub path: PathBuf,
    /// Running and reachable: down OSDs are skipped by I/O (PGs run degraded).
    pub up: bool,
    /// Holding data: placement only considers OSDs that are in.
    pub in_: bool,
    /// Declared gone for good by the operator (`osd lost`): peering no
    /// longer waits for its copies, and PGs whose newest copy it held serve
    /// the newest one left. Cleared when it comes up again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

/// A pool with its snapshot state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEntry {
    pub info: PoolInfo,
    /// Newest self-managed snapshot id allocated in the pool.
    pub snap_seq: SnapId,
    /// Snapshot ids removed; reads at them fail and their clones are trimmed.
    pub removed_snaps: BTreeSet<SnapId>,
}

/// The cluster map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdMap {
    pub format: u32,
    pub epoch: u64,
    pub osds: Vec<OsdInfo>,
    pub pools: Vec<PoolEntry>,
    pub next_pool_id: PoolId,
    /// Snapshot trims that could not run when the snapshot was removed (the
    /// PG was incomplete); retried after every peering until they succeed.
    #[serde(default)]
    pub pending_trims: Vec<PendingTrim>,
}

/// A snapshot trim still owed to one PG.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTrim {
    pub pool: PoolId,
    pub pg: u32,
    pub snap: SnapId,
}

impl OsdMap {
    /// A map of fresh OSDs (all up and in) and no pools, at epoch 1.
    pub fn new(osd_paths: Vec<PathBuf>) -> Self {
        let osds = osd_paths
            .into_iter()
            .enumerate()
            .map(|(i, path)| OsdInfo {
                id: i as OsdId,
                path,
                up: true,
                in_: true,
                lost: false,
            })
            .collect();
        OsdMap {
            format: OSDMAP_FORMAT,
            epoch: 1,
            osds,
            pools: Vec::new(),
            next_pool_id: 1,
            pending_trims: Vec::new(),
        }
    }

    pub fn pool(&self, id: PoolId) -> Option<&PoolEntry> {
        self.pools.iter().find(|p| p.info.id == id)
    }

    pub fn pool_mut(&mut self, id: PoolId) -> Option<&mut PoolEntry> {
        self.pools.iter_mut().find(|p| p.info.id == id)
    }

    pub fn osd(&self, id: OsdId) -> Option<&OsdInfo> {
        self.osds.iter().find(|o| o.id == id)
    }

    /// The OSDs a PG maps to when all are up (Ceph's "up set" before filtering
    /// down OSDs): `size` distinct OSDs that are in, primary first.
    pub fn pg_up_set(&self, pool: &PoolInfo, pg: u32) -> Vec<OsdId> {
        let candidates: Vec<(OsdId, f64)> = self
            .osds
            .iter()
            .filter(|o| o.in_)
            .map(|o| (o.id, 1.0))
            .collect();
        placement::pg_to_osds(pool.id, pg, pool.size as usize, &candidates)
    }

    /// The OSDs that serve a PG now: its up set without the OSDs that are down.
    pub fn pg_acting(&self, pool: &PoolInfo, pg: u32) -> Vec<OsdId> {
        self.pg_up_set(pool, pg)
            .into_iter()
            .filter(|id| self.osd(*id).is_some_and(|o| o.up))
            .collect()
    }

    /// Resolve an OSD's store directory against the cluster directory.
    pub fn osd_path(&self, cluster_dir: &Path, id: OsdId) -> Option<PathBuf> {
        self.osd(id).map(|o| cluster_dir.join(&o.path))
    }

    /// Read the map of the cluster in `dir`.
    pub fn load(dir: &Path) -> OsdResult<OsdMap> {
        let path = dir.join(OSDMAP_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OsdError::NoCluster(dir.to_path_buf()));
            }
            Err(e) => return Err(OsdError::io(format!("reading {}", path.display()), e)),
        };
        Self::decode(&bytes).map_err(|why| OsdError::DecodingMap { path, why })
    }

    /// Parse a map, checking its format version.
    pub fn decode(bytes: &[u8]) -> Result<OsdMap, String> {
        let map: OsdMap = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if map.format != OSDMAP_FORMAT {
            return Err(format!(
                "format {} is not the supported format {OSDMAP_FORMAT}",
                map.format
            ));
        }
        Ok(map)
    }

    /// Write the map atomically into `dir` (see the module doc).
    pub fn save(&self, dir: &Path) -> OsdResult<()> {
        save_json(dir, OSDMAP_FILE, "the OSD map", self)
    }
}

/// Write `value` as JSON to `dir/file` atomically (see
/// [`crate::store::data::write_atomic`]).
pub(crate) fn save_json<T: Serialize>(
    dir: &Path,
    file: &str,
    what: &str,
    value: &T,
) -> OsdResult<()> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| OsdError::io(format!("encoding {what}"), std::io::Error::other(e)))?;
    crate::store::data::write_atomic(dir, file, &json)
        .map_err(|e| OsdError::io(format!("saving {what} in {}", dir.join(file).display()), e))
}

/// Tests: a map of OSDs at `paths` with pool 1, `rbd` (size 2, min_size 1,
/// `pg_num` PGs).
#[cfg(test)]
pub(crate) fn test_map(paths: &[&str], pg_num: u32) -> OsdMap {
    let mut map = OsdMap::new(paths.iter().map(PathBuf::from).collect());
    map.pools.push(PoolEntry {
        info: PoolInfo {
            id: 1,
            name: "rbd".into(),
            size: 2,
            min_size: 1,
            pg_num,
        },
        snap_seq: 0,
        removed_snaps: BTreeSet::new(),
    });
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_osdmap_save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = test_map(&["osd.0", "/elsewhere/osd.1"], 8);
        map.pools[0].snap_seq = 4;
        map.pools[0].removed_snaps = [2, 3].into();

        map.save(dir.path()).unwrap();

        assert_eq!(OsdMap::load(dir.path()).unwrap(), map);
    }

    #[test]
    fn test_osdmap_load_of_garbage_is_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(OSDMAP_FILE), b"{\"format\": 1, \"epo").unwrap();

        let r = OsdMap::load(dir.path());

        assert!(matches!(r, Err(OsdError::DecodingMap { .. })), "{r:?}");
    }

    #[test]
    fn test_osdmap_load_of_future_format_is_rejected() {
        let mut map = OsdMap::new(vec!["osd.0".into()]);
        map.format = OSDMAP_FORMAT + 1;
        let json = serde_json::to_vec(&map).unwrap();

        assert!(OsdMap::decode(&json).is_err());
    }

    #[test]
    fn test_osdmap_acting_skips_down_osds() {
        let mut map = OsdMap::new((0..3).map(|i| format!("osd.{i}").into()).collect());
        let pool = PoolInfo {
            id: 1,
            name: "p".into(),
            size: 3,
            min_size: 2,
            pg_num: 4,
        };
        map.osds[1].up = false;

        let acting = map.pg_acting(&pool, 0);

        assert_eq!(acting.len(), 2);
        assert!(!acting.contains(&1));
    }
}
