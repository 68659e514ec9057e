//! Helpers shared by the cluster integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use rbdfs::osd::{Cluster, OsdId, PgId};
use rbdfs::store::{ObjectKey, ObjectStore};

/// One store object: data, attributes, omap.
pub type ObjectContents = (Bytes, BTreeMap<String, Bytes>, BTreeMap<String, Bytes>);

/// Everything one OSD holds for one PG: objects (data, attrs, omap) and the
/// collection metadata (PG log and info).
#[derive(Debug, PartialEq, Eq)]
pub struct PgContents {
    pub objects: BTreeMap<ObjectKey, ObjectContents>,
    pub meta: BTreeMap<String, Bytes>,
}

pub fn pg_contents(store: &dyn ObjectStore, pg: PgId) -> PgContents {
    let mut objects = BTreeMap::new();
    for k in store.list_objects(pg).unwrap_or_default() {
        let size = store.stat(&k).unwrap();
        objects.insert(
            k.clone(),
            (
                store.read(&k, 0, size).unwrap(),
                store.getattrs(&k).unwrap(),
                store.omap_get(&k).unwrap(),
            ),
        );
    }
    PgContents {
        objects,
        meta: store.coll_meta_get(pg).unwrap_or_default(),
    }
}

/// Every PG of every pool: all acting OSDs hold identical contents. Returns
/// the number of PGs compared.
pub fn assert_replicas_identical(cluster: &Cluster) -> usize {
    let map = cluster.osdmap();
    let mut n = 0;
    for pool in &map.pools {
        for pg in 0..pool.info.pg_num {
            let id = PgId {
                pool: pool.info.id,
                pg,
            };
            let acting = map.pg_acting(&pool.info, pg);
            let first = pg_contents(cluster.osd_store(acting[0]).unwrap().as_ref(), id);
            for &o in &acting[1..] {
                let other = pg_contents(cluster.osd_store(o).unwrap().as_ref(), id);
                assert_eq!(
                    first, other,
                    "pg {}.{pg:x}: osd.{} and osd.{o} differ",
                    pool.info.id, acting[0]
                );
            }
            n += 1;
        }
    }
    n
}

/// PGs (of all pools) where `osd`'s copy differs from the primary's.
pub fn pgs_differing(cluster: &Cluster, osd: OsdId) -> usize {
    let map = cluster.osdmap();
    let mut n = 0;
    for pool in &map.pools {
        for pg in 0..pool.info.pg_num {
            let id = PgId {
                pool: pool.info.id,
                pg,
            };
            let up = map.pg_up_set(&pool.info, pg);
            if !up.contains(&osd) {
                continue;
            }
            let primary = map.pg_acting(&pool.info, pg)[0];
            let a = pg_contents(cluster.osd_store(primary).unwrap().as_ref(), id);
            let b = pg_contents(cluster.osd_store(osd).unwrap().as_ref(), id);
            n += (a != b) as usize;
        }
    }
    n
}
