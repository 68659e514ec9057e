//! Helpers shared by the cluster integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::executor::block_on;
use rbdfs::osd::{Cluster, ClusterConfig, CreateOptions, OsdId, PgId};
use rbdfs::rados::{IoCtx, Rados};
use rbdfs::store::{ObjectKey, ObjectStore};

/// A new cluster of `num_osds` OSDs in `dir` with `config`, opened.
pub fn create_cluster(dir: &Path, num_osds: usize, config: ClusterConfig) -> Arc<Cluster> {
    Cluster::create(
        dir,
        CreateOptions {
            num_osds,
            config: config.clone(),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    Cluster::open(dir, config).unwrap()
}

/// Pool `rbd` with `size` replicas, `min_size` and `pg_num` PGs.
pub fn rbd_pool(c: &Arc<Cluster>, size: u32, min_size: u32, pg_num: u32) -> IoCtx {
    let rados = Rados::new(c.clone());
    let p = block_on(
        rados
            .backend()
            .pool_create("rbd", Some(size), Some(min_size), Some(pg_num)),
    )
    .unwrap();
    rados.ioctx_by_id(p.id)
}

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

/// Poll `cond` until it holds; panics after `secs` seconds (a generous bound
/// for a condition that must come true, not a timing assertion).
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Drive a client op's future on its own thread; its result arrives on the
/// returned channel (empty while the op is pending).
pub fn spawn_op<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> std::sync::mpsc::Receiver<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(futures::executor::block_on(fut));
    });
    rx
}
