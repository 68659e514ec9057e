//! After a map change PGs are peered one by one while the ones already
//! peered serve: a PG whose recovery is held back waits alone.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use futures::executor::block_on;
use rbdfs::osd::{ClusterConfig, OpenedStore, PgId, StoreOpener};
use rbdfs::rados::{SNAP_HEAD, SnapContext};
use rbdfs::store::memstore::MemStore;
use rbdfs::store::{
    Callback, CollId, ObjectKey, ObjectStore, StoreResult, StoreSpace, Transaction, TxOp,
};

/// Holds back transactions touching one collection while `held` is set.
#[derive(Default)]
struct Latch {
    state: Mutex<(Option<CollId>, bool)>, // (held collection, a txn is waiting)
    cond: Condvar,
}

struct LatchedStore {
    inner: MemStore,
    latch: Arc<Latch>,
}

fn coll_of(op: &TxOp) -> Option<CollId> {
    match op {
        TxOp::Touch(k) | TxOp::Remove(k) | TxOp::OmapClear(k) => Some(k.coll),
        TxOp::Write { key, .. }
        | TxOp::Zero { key, .. }
        | TxOp::Truncate { key, .. }
        | TxOp::SetAttrs { key, .. }
        | TxOp::RmAttr { key, .. }
        | TxOp::OmapSet { key, .. }
        | TxOp::OmapRmKeys { key, .. } => Some(key.coll),
        TxOp::Clone { to, .. } => Some(to.coll),
        TxOp::CollMetaSet { coll, .. } | TxOp::CollMetaRm { coll, .. } => Some(*coll),
        TxOp::CreateCollection(c) | TxOp::RemoveCollection(c) => Some(*c),
    }
}

impl ObjectStore for LatchedStore {
    fn queue_transaction(&self, t: Transaction, c: Callback, a: Callback) -> StoreResult<()> {
        let mut st = self.latch.state.lock().unwrap();
        while st.0.is_some() && t.ops.iter().any(|op| coll_of(op) == st.0) {
            st.1 = true;
            self.latch.cond.notify_all();
            st = self.latch.cond.wait(st).unwrap();
        }
        drop(st);
        self.inner.queue_transaction(t, c, a)
    }
    fn read(&self, k: &ObjectKey, off: u64, len: u64) -> StoreResult<Bytes> {
        self.inner.read(k, off, len)
    }
    fn stat(&self, k: &ObjectKey) -> StoreResult<u64> {
        self.inner.stat(k)
    }
    fn exists(&self, k: &ObjectKey) -> bool {
        self.inner.exists(k)
    }
    fn getattrs(&self, k: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.inner.getattrs(k)
    }
    fn omap_get(&self, k: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.inner.omap_get(k)
    }
    fn list_objects(&self, c: CollId) -> StoreResult<Vec<ObjectKey>> {
        self.inner.list_objects(c)
    }
    fn list_collections(&self) -> Vec<CollId> {
        self.inner.list_collections()
    }
    fn coll_meta_get(&self, c: CollId) -> StoreResult<BTreeMap<String, Bytes>> {
        self.inner.coll_meta_get(c)
    }
    fn wait_applied(&self) -> StoreResult<()> {
        self.inner.wait_applied()
    }
    fn wait_committed(&self) -> StoreResult<()> {
        self.inner.wait_committed()
    }
    fn space(&self) -> StoreResult<StoreSpace> {
        self.inner.space()
    }
}

/// In-memory stores; osd.2's is latched.
struct Opener {
    stores: Mutex<BTreeMap<std::path::PathBuf, Arc<dyn ObjectStore>>>,
    latch: Arc<Latch>,
}

impl StoreOpener for Opener {
    fn mkfs(&self, path: &Path) -> StoreResult<()> {
        let store: Arc<dyn ObjectStore> = if path.ends_with("osd.2") {
            Arc::new(LatchedStore {
                inner: MemStore::new(),
                latch: self.latch.clone(),
            })
        } else {
            Arc::new(MemStore::new())
        };
        self.stores
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), store);
        Ok(())
    }

    fn open(&self, path: &Path) -> StoreResult<OpenedStore> {
        Ok(OpenedStore {
            store: self.stores.lock().unwrap()[path].clone(),
            close: Box::new(|| Ok(())),
            crash: Box::new(|| {}),
        })
    }
}

#[test]
fn test_peering_pg_held_in_recovery_does_not_stop_io_to_peered_pgs() {
    let dir = tempfile::tempdir().unwrap();
    let latch = Arc::new(Latch::default());
    let config = ClusterConfig {
        store: Arc::new(Opener {
            stores: Mutex::new(BTreeMap::new()),
            latch: latch.clone(),
        }),
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir.path(), 3, config);
    let io = common::rbd_pool(&c, 3, 2, 8);
    let pool = io.pool_id();
    let in_pg = |pg: u32| {
        (0..)
            .map(|i| format!("o{i}"))
            .find(|n| c.object_acting(pool, n).unwrap().0.pg == pg)
            .unwrap()
    };
    let (early, late) = (in_pg(0), in_pg(7));
    let snapc = SnapContext::empty();
    block_on(io.write(&early, &snapc, 0, Bytes::from_static(b"e0"))).unwrap();
    block_on(io.write(&late, &snapc, 0, Bytes::from_static(b"l0"))).unwrap();
    c.set_osd_up(2, false).unwrap();
    // Only the last PG misses a write: it alone needs recovery.
    block_on(io.write(&late, &snapc, 0, Bytes::from_static(b"l1"))).unwrap();
    latch.state.lock().unwrap().0 = Some(PgId { pool, pg: 7 });

    let c2 = c.clone();
    let peering = std::thread::spawn(move || c2.set_osd_up(2, true));
    {
        let mut st = latch.state.lock().unwrap();
        while !st.1 {
            st = latch.cond.wait(st).unwrap();
        }
    }

    // pg 7's recovery is held: pg 0 is peered and serves, pg 7 waits.
    block_on(io.write(&early, &snapc, 0, Bytes::from_static(b"e1"))).unwrap();
    assert_eq!(
        block_on(io.read(&early, SNAP_HEAD, 0, 2)),
        Ok(Bytes::from_static(b"e1"))
    );
    assert!(
        !peering.is_finished(),
        "the map change must still be peering"
    );
    let pgs = c.pg_list();
    assert_eq!(pgs[7].state, "peering+recovering", "{pgs:?}");
    let late_io = io.clone();
    let late2 = late.clone();
    let late_read = common::spawn_op(async move { late_io.read(&late2, SNAP_HEAD, 0, 2).await });
    common::wait_until(30, "the read of pg 7 waits", || c.blocked_ops() == 1);
    assert!(late_read.try_recv().is_err());

    {
        let mut st = latch.state.lock().unwrap();
        st.0 = None;
        latch.cond.notify_all();
    }
    peering.join().unwrap().unwrap();
    assert_eq!(late_read.recv().unwrap(), Ok(Bytes::from_static(b"l1")));
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_peering_backfill_runs_while_the_pg_serves_and_catches_up_after() {
    let dir = tempfile::tempdir().unwrap();
    let latch = Arc::new(Latch::default());
    let config = ClusterConfig {
        store: Arc::new(Opener {
            stores: Mutex::new(BTreeMap::new()),
            latch: latch.clone(),
        }),
        pg_log_max_entries: 5,
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir.path(), 3, config);
    let io = common::rbd_pool(&c, 3, 2, 8);
    let pool = io.pool_id();
    let names: Vec<String> = (0..)
        .map(|i| format!("o{i}"))
        .filter(|n| c.object_acting(pool, n).unwrap().0.pg == 7)
        .take(12)
        .collect();
    let snapc = SnapContext::empty();
    block_on(io.write(&names[0], &snapc, 0, Bytes::from_static(b"a0"))).unwrap();
    c.set_osd_up(2, false).unwrap();
    // More writes than the log keeps: osd.2's copy of pg 7 needs a backfill.
    for n in &names {
        block_on(io.write(n, &snapc, 0, Bytes::from_static(b"b1"))).unwrap();
    }
    latch.state.lock().unwrap().0 = Some(PgId { pool, pg: 7 });
    let before = c.status().recovery.objects_backfilled;

    let c2 = c.clone();
    let peering = std::thread::spawn(move || c2.set_osd_up(2, true));
    {
        let mut st = latch.state.lock().unwrap();
        while !st.1 {
            st = latch.cond.wait(st).unwrap();
        }
    }

    // The copy to osd.2 is held: pg 7 still serves, from osd.0 and osd.1.
    let pg7 = c.pg_list().into_iter().find(|p| p.pg == 7).unwrap();
    assert_eq!(
        pg7.state, "active+undersized+degraded+backfilling",
        "{pg7:?}"
    );
    assert!(!pg7.acting.contains(&2), "{pg7:?}");
    block_on(io.write(&names[3], &snapc, 0, Bytes::from_static(b"c2"))).unwrap();
    assert_eq!(
        block_on(io.read(&names[3], SNAP_HEAD, 0, 2)),
        Ok(Bytes::from_static(b"c2"))
    );
    assert!(!peering.is_finished(), "the backfill must still be running");
    {
        let mut st = latch.state.lock().unwrap();
        st.0 = None;
        latch.cond.notify_all();
    }
    peering.join().unwrap().unwrap();

    let pg7 = c.pg_list().into_iter().find(|p| p.pg == 7).unwrap();
    assert_eq!(pg7.state, "active+clean");
    assert!(pg7.acting.contains(&2));
    assert!(c.status().recovery.objects_backfilled >= before + 12);
    // The write made during the copy reached osd.2 through the catch-up.
    common::assert_replicas_identical(&c);
    assert_eq!(
        block_on(io.read(&names[3], SNAP_HEAD, 0, 2)),
        Ok(Bytes::from_static(b"c2"))
    );
    c.shutdown().unwrap();
}

#[test]
fn test_peering_rate_bounded_backfill_of_an_out_osd_leaves_identical_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        store: Arc::new(rbdfs::osd::MemStoreOpener::new()),
        recovery_max_bytes_per_sec: Some(16 << 20),
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir.path(), 4, config);
    let io = common::rbd_pool(&c, 3, 2, 16);
    let snapc = SnapContext::empty();
    for i in 0..40 {
        let data = Bytes::from(vec![i as u8; 16 << 10]);
        block_on(io.write(&format!("o{i}"), &snapc, 0, data)).unwrap();
    }
    let before = c.status().recovery.objects_backfilled;

    c.set_osd_in(3, false).unwrap();

    assert!(c.status().recovery.objects_backfilled > before);
    assert!(c.pg_list().iter().all(|p| p.state == "active+clean"));
    common::assert_replicas_identical(&c);
    for i in 0..40 {
        assert_eq!(
            block_on(io.read(&format!("o{i}"), SNAP_HEAD, 0, 1 << 20)),
            Ok(Bytes::from(vec![i as u8; 16 << 10]))
        );
    }
    c.shutdown().unwrap();
}
