//! Surviving OSD loss and silent corruption on file stores: degraded I/O
//! while an OSD is down and log recovery of only what it missed; a store
//! whose directory vanishes is marked down and replaced (add + out + rm,
//! backfill); a flipped byte is never returned and scrub finds and repairs
//! it; below min_size I/O waits instead of failing.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::executor::block_on;
use rbdfs::osd::{Cluster, ClusterConfig, OsdError};
use rbdfs::rados::{IoCtx, Rados, SNAP_HEAD, SnapContext, WriteOp};
use rbdfs::store::ObjectKey;

fn open(dir: &Path) -> Arc<Cluster> {
    let config = ClusterConfig {
        osd_op_num_shards: 2,
        osd_op_num_threads_per_shard: 1,
        ..ClusterConfig::default()
    };
    common::create_cluster(dir, 3, config)
}

fn pool(c: &Arc<Cluster>, pg_num: u32) -> IoCtx {
    common::rbd_pool(c, 3, 2, pg_num)
}

/// Distinct content for (object, generation), with its length varying.
fn content(name: &str, generation: u64) -> Bytes {
    let seed = crc32c::crc32c(name.as_bytes()) as u64 ^ generation.wrapping_mul(0x9e37_79b9);
    let len = 512 + (seed % 1500) as usize;
    Bytes::from(
        (0..len)
            .map(|i| (seed.wrapping_add(i as u64 * 31) >> 3) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn write_full(io: &IoCtx, name: &str, data: Bytes) -> rbdfs::rados::Result<()> {
    block_on(io.operate_write(
        name,
        &SnapContext::empty(),
        vec![WriteOp::WriteFull { data }],
    ))
}

fn read_whole(io: &IoCtx, name: &str) -> Bytes {
    block_on(io.read(name, SNAP_HEAD, 0, 1 << 20)).unwrap()
}

/// A write+read load over `objects` objects on its own thread: each round
/// overwrites one object with a new generation and reads back two, checking
/// every read against what was last written. Panics (failing the test on
/// join) at the first error or mismatch.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    model: Arc<Mutex<BTreeMap<String, Bytes>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(io: &IoCtx, objects: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let model = Arc::new(Mutex::new(BTreeMap::new()));
        let (io, s, o, m) = (io.clone(), stop.clone(), ops.clone(), model.clone());
        let thread = std::thread::spawn(move || {
            let mut generation = 0u64;
            while !s.load(Ordering::SeqCst) {
                generation += 1;
                let name = format!("load{}", generation as usize % objects);
                let data = content(&name, generation);
                write_full(&io, &name, data.clone())
                    .unwrap_or_else(|e| panic!("write of {name} failed: {e}"));
                m.lock().unwrap().insert(name.clone(), data);
                let other = format!("load{}", (generation as usize * 7) % objects);
                for n in [name, other] {
                    let want = m.lock().unwrap().get(&n).cloned();
                    let got = block_on(io.read(&n, SNAP_HEAD, 0, 1 << 20));
                    match want {
                        Some(w) => assert_eq!(got.as_ref(), Ok(&w), "read of {n}"),
                        None => assert!(got.is_err(), "{n} was never written: {got:?}"),
                    }
                }
                o.fetch_add(1, Ordering::SeqCst);
            }
        });
        Load {
            stop,
            ops,
            model,
            thread,
        }
    }

    /// Wait until `n` more rounds completed (the load is making progress).
    fn advance(&self, n: u64) {
        let target = self.ops.load(Ordering::SeqCst) + n;
        let t = &self.thread;
        common::wait_until(60, "the load makes progress", || {
            assert!(!t.is_finished(), "the load thread died");
            self.ops.load(Ordering::SeqCst) >= target
        });
    }

    fn finish(self, io: &IoCtx) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the load saw an error");
        for (name, want) in self.model.lock().unwrap().iter() {
            assert_eq!(&read_whole(io, name), want, "final read of {name}");
        }
    }
}

#[test]
fn test_failure_osd_down_under_load_recovers_only_missed_objects() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let io = pool(&c, 16);
    for i in 0..100 {
        let n = format!("base{i}");
        write_full(&io, &n, content(&n, 0)).unwrap();
    }
    let load = Load::start(&io, 30);
    load.advance(20);

    c.set_osd_up(2, false).unwrap();
    load.advance(40);
    for i in 0..20 {
        let n = format!("missed{i}");
        write_full(&io, &n, content(&n, 1)).unwrap();
    }
    let before = c.status().recovery;
    c.set_osd_up(2, true).unwrap();
    let after = c.status().recovery;
    load.advance(20);
    load.finish(&io);

    // Size 3 on 3 OSDs: osd.2 holds all 150 objects; it missed the 20
    // "missed" ones and at most the 30 the load rewrote, nothing else.
    let recovered = after.objects_recovered - before.objects_recovered;
    assert!(
        (20..=50).contains(&recovered),
        "recovered {recovered} objects"
    );
    assert_eq!(after.objects_backfilled, before.objects_backfilled);
    for i in 0..100 {
        let n = format!("base{i}");
        assert_eq!(read_whole(&io, &n), content(&n, 0));
    }
    let scrub = c.scrub(None, true, false).unwrap();
    assert!(scrub.is_clean(), "{:?}", scrub.inconsistencies);
    assert_eq!(scrub.objects_scrubbed, 150);
    common::assert_replicas_identical(&c);
    assert_eq!(c.status().health, rbdfs::osd::Health::Ok);
    c.shutdown().unwrap();
}

#[test]
fn test_failure_vanished_osd_dir_is_marked_down_then_replaced_by_backfill() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let io = pool(&c, 16);
    for i in 0..40 {
        let n = format!("base{i}");
        write_full(&io, &n, content(&n, 0)).unwrap();
    }
    let load = Load::start(&io, 20);
    load.advance(10);
    let epoch = c.osdmap().epoch;

    let victim = c.osdmap().osd_path(dir.path(), 2).unwrap();
    std::fs::remove_dir_all(&victim).unwrap();

    common::wait_until(30, "osd.2 is marked down", || {
        !c.osdmap().osd(2).unwrap().up
    });
    assert!(c.osdmap().epoch > epoch);
    load.advance(30);
    let refused = c.remove_osd(2);
    assert!(
        matches!(refused, Err(OsdError::CannotRemove { .. })),
        "a down but in OSD must not be removed: {refused:?}"
    );
    let new = c.add_osd(Path::new("osd.new")).unwrap();
    c.set_osd_in(2, false).unwrap();
    load.advance(10);
    c.remove_osd(2).unwrap();
    load.advance(10);
    load.finish(&io);

    assert_eq!(new, 3);
    assert!(c.osdmap().osd(2).is_none());
    assert!(c.status().recovery.objects_backfilled > 0);
    for i in 0..40 {
        let n = format!("base{i}");
        assert_eq!(read_whole(&io, &n), content(&n, 0));
    }
    let status = c.status();
    assert_eq!(status.health, rbdfs::osd::Health::Ok, "{status}");
    assert_eq!(status.num_up_osds, 3);
    let scrub = c.scrub(None, true, false).unwrap();
    assert!(scrub.is_clean(), "{:?}", scrub.inconsistencies);
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_failure_flipped_byte_is_never_read_and_deep_scrub_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let io = pool(&c, 8);
    for i in 0..20 {
        let n = format!("obj{i}");
        write_full(&io, &n, content(&n, 0)).unwrap();
    }
    let victim = "obj7";
    let (pg, acting) = c.object_acting(io.pool_id(), victim).unwrap();
    let primary = acting[0];
    let key = ObjectKey {
        coll: pg,
        name: victim.into(),
        snap: SNAP_HEAD,
    };
    let path = c.osd_store(primary).unwrap().object_path(&key).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 100).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], 100).unwrap();
    drop(f);

    let read = read_whole(&io, victim);

    assert_eq!(read, content(victim, 0), "the flipped byte was returned");
    let bad: Vec<_> = c
        .pg_list()
        .into_iter()
        .filter(|p| p.inconsistent_objects > 0)
        .collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    let found = c.scrub(None, true, false).unwrap();
    assert_eq!(
        found.inconsistencies.len(),
        1,
        "{:?}",
        found.inconsistencies
    );
    let inc = &found.inconsistencies[0];
    assert_eq!((inc.object.as_str(), inc.snap), (victim, SNAP_HEAD));
    assert_eq!(inc.osds, vec![primary]);
    assert!(!inc.repaired);
    let repaired = c.scrub(None, true, true).unwrap();
    assert_eq!(repaired.inconsistencies.len(), 1);
    assert!(repaired.inconsistencies[0].repaired);
    let again = c.scrub(None, true, false).unwrap();
    assert!(again.is_clean(), "{:?}", again.inconsistencies);
    let store = c.osd_store(primary).unwrap();
    assert_eq!(store.read(&key, 0, 1 << 20).unwrap(), content(victim, 0));
    assert!(c.pg_list().iter().all(|p| p.inconsistent_objects == 0));
    for i in 0..20 {
        let n = format!("obj{i}");
        assert_eq!(read_whole(&io, &n), content(&n, 0));
    }
    c.shutdown().unwrap();
}

#[test]
fn test_failure_two_of_three_down_write_waits_until_one_returns() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let io = pool(&c, 8);
    write_full(&io, "o", content("o", 0)).unwrap();
    let (_, acting) = c.object_acting(io.pool_id(), "o").unwrap();
    c.set_osd_up(acting[1], false).unwrap();
    c.set_osd_up(acting[2], false).unwrap();

    let io2 = io.clone();
    let pending = common::spawn_op(async move {
        io2.operate_write(
            "o",
            &SnapContext::empty(),
            vec![WriteOp::WriteFull {
                data: content("o", 1),
            }],
        )
        .await
    });

    common::wait_until(30, "the write is blocked", || c.blocked_ops() == 1);
    let pgs = c.pg_list();
    assert!(pgs.iter().all(|p| !p.is_active()), "{pgs:?}");
    assert_eq!(c.status().health, rbdfs::osd::Health::Err);
    assert!(pending.try_recv().is_err(), "the write must wait, not fail");
    c.set_osd_up(acting[1], true).unwrap();
    pending.recv().unwrap().unwrap();
    assert_eq!(c.blocked_ops(), 0);
    assert_eq!(read_whole(&io, "o"), content("o", 1));
    c.set_osd_up(acting[2], true).unwrap();
    common::assert_replicas_identical(&c);
    assert!(c.scrub(None, true, false).unwrap().is_clean());
    c.shutdown().unwrap();
}

#[test]
fn test_failure_store_that_cannot_open_starts_down_and_io_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let io = pool(&c, 8);
    for i in 0..10 {
        let n = format!("obj{i}");
        write_full(&io, &n, content(&n, 0)).unwrap();
    }
    c.shutdown().unwrap();
    drop((c, io));
    std::fs::remove_dir_all(dir.path().join("osd.1")).unwrap();

    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();

    assert!(!c.osdmap().osd(1).unwrap().up);
    assert!(
        c.set_osd_up(1, true).is_err(),
        "a store that is gone cannot come up"
    );
    let rados = Rados::new(c.clone());
    let io = rados.ioctx_by_id(c.osdmap().pools[0].info.id);
    for i in 0..10 {
        let n = format!("obj{i}");
        assert_eq!(read_whole(&io, &n), content(&n, 0));
        write_full(&io, &n, content(&n, 1)).unwrap();
    }
    let st = c.status();
    assert_eq!(st.health, rbdfs::osd::Health::Warn, "{st}");
    assert_eq!(st.num_up_osds, 2);
    c.shutdown().unwrap();
}

/// File stores, osd.2's with only `room` bytes to spare (it refuses bigger
/// transactions with NoSpace, as a full disk would).
struct TightOpener {
    room: u64,
}

impl rbdfs::osd::StoreOpener for TightOpener {
    fn mkfs(&self, path: &Path) -> rbdfs::store::StoreResult<()> {
        rbdfs::store::FileStore::mkfs(path)
    }

    fn open(&self, path: &Path) -> rbdfs::store::StoreResult<rbdfs::osd::OpenedStore> {
        let mut config = rbdfs::store::StoreConfig::default();
        if path.ends_with("osd.2") {
            // No reserve, so that it takes no more as a replica than as a
            // primary.
            config.min_free_bytes = 0;
            config.fake_available_bytes = Some(self.room);
        }
        rbdfs::osd::FileStoreOpener { config }.open(path)
    }
}

#[test]
fn test_failure_full_replica_is_marked_down_and_the_write_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        store: Arc::new(TightOpener { room: 64 << 10 }),
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir.path(), 3, config);
    let io = pool(&c, 8);
    write_full(&io, "small", content("small", 0)).unwrap();
    let big = Bytes::from(vec![7u8; 256 << 10]);
    // A full primary answers NoSpace (the cluster is full for that object);
    // here the full OSD is a replica.
    let name = (0..)
        .map(|i| format!("big{i}"))
        .find(|n| c.object_acting(io.pool_id(), n).unwrap().1[0] != 2)
        .unwrap();

    write_full(&io, &name, big.clone()).unwrap();

    common::wait_until(30, "osd.2 is marked down", || {
        !c.osdmap().osd(2).unwrap().up
    });
    assert_eq!(read_whole(&io, &name), big);
    let (pg, _) = c.object_acting(io.pool_id(), &name).unwrap();
    let key = ObjectKey {
        coll: pg,
        name: name.clone(),
        snap: SNAP_HEAD,
    };
    assert!(
        !c.osd_store(2).unwrap().exists(&key),
        "the full replica must not hold a copy"
    );
    // Up again, it cannot take the copy either: down again, I/O goes on.
    let epoch = c.osdmap().epoch;
    c.set_osd_up(2, true).unwrap();
    common::wait_until(30, "osd.2 is marked down again", || {
        let m = c.osdmap();
        m.epoch > epoch + 1 && !m.osd(2).unwrap().up
    });
    assert_eq!(read_whole(&io, &name), big);
    assert_eq!(read_whole(&io, "small"), content("small", 0));
    assert!(c.scrub(None, true, false).unwrap().is_clean());
    c.shutdown().unwrap();
}

#[test]
fn test_failure_a_replica_that_refused_a_write_refuses_the_next_ones_of_its_pg() {
    // Arrange: osd.2, a replica, has no room for a big object; a small one
    // of the same PG would fit.
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        store: Arc::new(TightOpener { room: 64 << 10 }),
        monitor_interval: std::time::Duration::from_secs(3600),
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir.path(), 3, config);
    let io = pool(&c, 8);
    let names: Vec<String> = (0..).map(|i| format!("o{i}")).take(400).collect();
    let acting = |n: &String| c.object_acting(io.pool_id(), n).unwrap();
    let big = names
        .iter()
        .find(|n| acting(n).1[0] != 2 && acting(n).1.contains(&2))
        .unwrap()
        .clone();
    let small = names
        .iter()
        .find(|n| **n != big && acting(n).0 == acting(&big).0)
        .unwrap()
        .clone();

    // Act: both writes sent at once, so osd.2 gets the small one right
    // after refusing the big one, before anything marks it down.
    let big_data = Bytes::from(vec![7u8; 256 << 10]);
    let (a, b) = block_on(futures::future::join(
        io.operate_write(
            &big,
            &SnapContext::empty(),
            vec![WriteOp::WriteFull {
                data: big_data.clone(),
            }],
        ),
        io.operate_write(
            &small,
            &SnapContext::empty(),
            vec![WriteOp::WriteFull {
                data: content(&small, 1),
            }],
        ),
    ));

    // Assert: both written (two replicas are enough); osd.2 holds neither,
    // so its log has no write after the one it lacks.
    a.unwrap();
    b.unwrap();
    assert_eq!(read_whole(&io, &big), big_data);
    let (pg, _) = acting(&small);
    let key = ObjectKey {
        coll: pg,
        name: small.clone(),
        snap: SNAP_HEAD,
    };
    assert!(
        !c.osd_store(2).unwrap().exists(&key),
        "osd.2 took a write after refusing an earlier one of its pg"
    );
    c.shutdown().unwrap();
}

/// File stores, kept by directory, so a test can make one fail. They
/// commit only when asked (a flush), not on a timer.
#[derive(Default)]
struct KeptStores {
    stores: Mutex<BTreeMap<std::path::PathBuf, Arc<rbdfs::store::FileStore>>>,
}

impl rbdfs::osd::StoreOpener for KeptStores {
    fn mkfs(&self, path: &Path) -> rbdfs::store::StoreResult<()> {
        rbdfs::store::FileStore::mkfs(path)
    }

    fn open(&self, path: &Path) -> rbdfs::store::StoreResult<rbdfs::osd::OpenedStore> {
        let config = rbdfs::store::StoreConfig {
            commit_interval: std::time::Duration::from_secs(3600),
            ..rbdfs::store::StoreConfig::default()
        };
        let fs = rbdfs::store::FileStore::open(path, config)?;
        self.stores
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), fs.clone());
        let (c1, c2) = (fs.clone(), fs.clone());
        Ok(rbdfs::osd::OpenedStore {
            store: fs,
            close: Box::new(move || c1.close()),
            crash: Box::new(move || c2.crash()),
        })
    }
}

/// Generation 1 of an object's content with every bit of its first 256
/// bytes flipped.
fn flipped(name: &str) -> Bytes {
    let mut b = content(name, 1).to_vec();
    b[..256].iter_mut().for_each(|b| *b = !*b);
    Bytes::from(b)
}

/// A cluster of 3 file-store OSDs whose monitor never polls (only a
/// failure report marks an OSD down), a pool of `size` replicas with 16
/// objects written and flushed, then, with `unflushed`, overwritten with
/// [`flipped`] content and not flushed; then osd.2's store fails under it
/// (with no commit waiting, nothing reports it: the map keeps it up).
fn with_failed_store(dir: &Path, size: u32, unflushed: bool) -> (Arc<Cluster>, IoCtx) {
    retried(dir, |d| try_failed_store(d, size, unflushed))
}

/// Set a failed store up in a fresh directory under `dir` until osd.2's
/// store is seen, after it failed, to hold uncommitted writes or not as the
/// test wants: a commit the store started on its own (the syncer woken
/// earlier) can land just before the failure.
fn retried(
    dir: &Path,
    mut attempt: impl FnMut(&Path) -> Option<(Arc<Cluster>, IoCtx)>,
) -> (Arc<Cluster>, IoCtx) {
    for i in 0..10 {
        if let Some(r) = attempt(&dir.join(format!("try{i}"))) {
            return r;
        }
        eprintln!("try {i}: osd.2's store committed on its own before it failed; again");
    }
    panic!("osd.2's store never failed in the state the test needs")
}

fn try_failed_store(dir: &Path, size: u32, unflushed: bool) -> Option<(Arc<Cluster>, IoCtx)> {
    try_failed_store_with(dir, size, unflushed, false)
}

/// Like [`with_failed_store`] at size 3, min_size 1, with osd.0 and osd.1
/// marked down (by hand) before the unflushed writes: osd.2 alone holds
/// them when its store fails.
fn with_failed_store_serving_alone(dir: &Path) -> (Arc<Cluster>, IoCtx) {
    retried(dir, |d| try_failed_store_with(d, 3, true, true))
}

/// See [`with_failed_store`]; with `alone`, osd.0 and osd.1 are marked down
/// before the unflushed writes.
fn try_failed_store_with(
    dir: &Path,
    size: u32,
    unflushed: bool,
    alone: bool,
) -> Option<(Arc<Cluster>, IoCtx)> {
    let kept = Arc::new(KeptStores::default());
    let config = ClusterConfig {
        store: kept.clone(),
        monitor_interval: std::time::Duration::from_secs(3600),
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir, 3, config);
    let io = common::rbd_pool(&c, size, 1, 32);
    let names: Vec<String> = (0..16).map(|i| format!("obj{i}")).collect();
    for n in &names {
        write_full(&io, n, content(n, 1)).unwrap();
    }
    block_on(io.flush()).unwrap();
    if alone {
        c.set_osd_up(0, false).unwrap();
        c.set_osd_up(1, false).unwrap();
    }
    if unflushed {
        // Small overwrites of part of each object, which the store
        // journals and commits later (all but the first after a
        // whole-object write: that drops the object's digest, and is
        // committed before it is applied).
        for _ in 0..2 {
            for n in &names {
                let ops = vec![WriteOp::Write {
                    off: 0,
                    data: flipped(n).slice(..256),
                }];
                block_on(io.operate_write(n, &SnapContext::empty(), ops)).unwrap();
            }
        }
        assert!(
            names
                .iter()
                .any(|n| c.object_acting(io.pool_id(), n).unwrap().1[0] == 2),
            "no object is on osd.2"
        );
    }
    let victim = c.osdmap().osd_path(dir, 2).unwrap();
    let stores = kept.stores.lock().unwrap();
    let store = stores
        .iter()
        .find(|(p, _)| p.ends_with(victim.file_name().unwrap()))
        .map(|(_, s)| s.clone())
        .expect("osd.2's store");
    drop(stores);
    use rbdfs::store::ObjectStore;
    store.crash();
    if store.holds_uncommitted() != unflushed {
        let _ = c.shutdown();
        return None;
    }
    Some((c, io))
}

fn is_lost(flushed: &rbdfs::rados::Result<()>) -> bool {
    matches!(flushed, Err(rbdfs::rados::RadosError::Io(e)) if e.contains("no other copy"))
}

#[test]
fn test_failure_flush_goes_on_without_a_store_that_cannot_commit() {
    // Arrange: osd.2's store fails while the map still has it up.
    let dir = tempfile::tempdir().unwrap();
    let (c, io) = with_failed_store(dir.path(), 3, true);
    assert!(c.osdmap().osd(2).unwrap().up);

    // Act
    let flushed = block_on(io.flush());

    // Assert: the flush succeeds on the other two, which hold every
    // write; osd.2 is down by the time it returns; the data reads back.
    assert_eq!(flushed, Ok(()));
    assert!(!c.osdmap().osd(2).unwrap().up, "osd.2 is still up");
    for i in 0..16 {
        let n = format!("obj{i}");
        assert_eq!(read_whole(&io, &n), flipped(&n));
    }
    assert_eq!(block_on(io.flush()), Ok(()), "a second flush");
    // (Closing the failed store fails.)
    let _ = c.shutdown();
}

#[test]
fn test_failure_flush_fails_when_the_store_that_cannot_commit_held_the_only_copy() {
    // Arrange: one replica per object, and osd.2 serves some PGs alone.
    let dir = tempfile::tempdir().unwrap();
    let (c, io) = with_failed_store(dir.path(), 1, true);
    assert!(c.osdmap().osd(2).unwrap().up);

    // Act
    let flushed = block_on(io.flush());

    // Assert
    assert!(is_lost(&flushed), "{flushed:?}");
    let _ = c.shutdown();
}

#[test]
fn test_failure_flush_fails_when_the_only_copy_was_lost_before_it() {
    // Arrange: osd.2 held writes no flush had committed when its store
    // failed, and was marked down (as the monitor does) before any flush.
    let dir = tempfile::tempdir().unwrap();
    let (c, io) = with_failed_store(dir.path(), 1, true);
    c.set_osd_up(2, false).unwrap();

    // Act
    let first = block_on(io.flush());
    let second = block_on(io.flush());

    // Assert: every flush says so, not only the first.
    assert!(is_lost(&first), "{first:?}");
    assert!(is_lost(&second), "{second:?}");
    let _ = c.shutdown();
}

#[test]
fn test_failure_flush_keeps_failing_while_a_pg_waits_for_the_lost_copy() {
    // Arrange: osd.2 alone serves the PGs (osd.0 and osd.1 down by hand),
    // holds writes no flush committed, and its store fails; the flush says
    // so and the monitor marks it down.
    let dir = tempfile::tempdir().unwrap();
    let (c, io) = with_failed_store_serving_alone(dir.path());
    let first = block_on(io.flush());
    assert!(is_lost(&first), "{first:?}");
    c.set_osd_up(2, false).unwrap();

    // Act: an older copy comes back; the PGs wait for osd.2's newer one.
    c.set_osd_up(0, true).unwrap();
    let again = block_on(io.flush());

    // Assert
    assert!(is_lost(&again), "{again:?}");
    let _ = c.shutdown();
}

#[test]
fn test_failure_flush_succeeds_when_the_failed_store_had_committed_everything() {
    // Arrange: osd.2 serves some PGs alone, but its store failed after a
    // flush with nothing written since: nothing that was written is lost.
    let dir = tempfile::tempdir().unwrap();
    let (c, io) = with_failed_store(dir.path(), 1, false);

    // Act
    let flushed = block_on(io.flush());

    // Assert
    assert_eq!(flushed, Ok(()));
    assert!(!c.osdmap().osd(2).unwrap().up, "osd.2 is still up");
    let _ = c.shutdown();
}

#[test]
fn test_failure_flush_after_the_failed_replica_was_marked_down_succeeds() {
    // Arrange: three replicas; osd.2 failed holding writes not committed
    // and is already down when the flush comes.
    let dir = tempfile::tempdir().unwrap();
    let (c, io) = with_failed_store(dir.path(), 3, true);
    c.set_osd_up(2, false).unwrap();

    // Act
    let flushed = block_on(io.flush());

    // Assert: the other two hold every write; once they have committed
    // them, what osd.2 lost is not lost, even with no OSD left up.
    assert_eq!(flushed, Ok(()));
    c.set_osd_up(0, false).unwrap();
    c.set_osd_up(1, false).unwrap();
    assert_eq!(block_on(io.flush()), Ok(()), "a flush with every OSD down");
    let _ = c.shutdown();
}

/// File stores whose mkfs fails for one directory name (a full disk there,
/// or a create killed before it got that far).
struct MkfsFailsFor(&'static str);

impl rbdfs::osd::StoreOpener for MkfsFailsFor {
    fn mkfs(&self, path: &Path) -> rbdfs::store::StoreResult<()> {
        if path.ends_with(self.0) {
            return Err(rbdfs::store::StoreError::Failed("injected: mkfs".into()));
        }
        rbdfs::store::FileStore::mkfs(path)
    }

    fn open(&self, path: &Path) -> rbdfs::store::StoreResult<rbdfs::osd::OpenedStore> {
        rbdfs::osd::FileStoreOpener::default().open(path)
    }
}

fn create_with(
    dir: &Path,
    store: Arc<dyn rbdfs::osd::StoreOpener>,
    osd_paths: Vec<std::path::PathBuf>,
) -> Result<(), OsdError> {
    Cluster::create(
        dir,
        rbdfs::osd::CreateOptions {
            osd_paths,
            num_osds: 3,
            config: ClusterConfig {
                store,
                ..ClusterConfig::default()
            },
        },
    )
}

#[test]
fn test_failure_an_interrupted_create_can_be_run_again() {
    // Arrange: a create that made osd.0 and osd.1, then stopped.
    let dir = tempfile::tempdir().unwrap();
    let failed = create_with(dir.path(), Arc::new(MkfsFailsFor("osd.2")), Vec::new());
    assert!(failed.is_err());
    assert!(dir.path().join("osd.0").exists());
    assert!(Cluster::create_interrupted(dir.path()));

    // Act
    let again = create_with(
        dir.path(),
        Arc::new(rbdfs::osd::FileStoreOpener::default()),
        Vec::new(),
    );

    // Assert: a whole cluster that opens and serves.
    again.unwrap();
    assert!(!Cluster::create_interrupted(dir.path()));
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();
    let io = common::rbd_pool(&c, 3, 2, 8);
    write_full(&io, "o", content("o", 1)).unwrap();
    assert_eq!(read_whole(&io, "o"), content("o", 1));
    c.shutdown().unwrap();
}

#[test]
fn test_failure_a_create_again_never_empties_a_directory_it_did_not_make() {
    // Arrange: the second OSD path holds the user's files, so the first
    // create fails there after making the first OSD.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    std::fs::create_dir(&b).unwrap();
    std::fs::write(b.join("keep"), b"user data").unwrap();
    let opener =
        || -> Arc<dyn rbdfs::osd::StoreOpener> { Arc::new(rbdfs::osd::FileStoreOpener::default()) };
    assert!(create_with(&store, opener(), vec![a.clone(), b.clone(), c.clone()]).is_err());

    // Act: again, with the user's directory left out.
    let again = create_with(
        &store,
        opener(),
        vec![a.clone(), c.clone(), dir.path().join("d")],
    );

    // Assert
    again.unwrap();
    assert_eq!(std::fs::read(b.join("keep")).unwrap(), b"user data");
    let c = Cluster::open(&store, ClusterConfig::default()).unwrap();
    assert_eq!(c.osdmap().osds.len(), 3);
    c.shutdown().unwrap();
}

/// An object of `io`'s pool (of `pg_num` PGs) that maps to `osds`.
fn object_on(c: &Cluster, io: &IoCtx, pg_num: u32, osds: [u32; 2]) -> String {
    let map = c.osdmap();
    let pool = &map.pool(io.pool_id()).unwrap().info;
    (0..)
        .map(|i| format!("o{i}"))
        .find(|n| {
            let mut up = map.pg_up_set(pool, rbdfs::osd::placement::object_pg(n, pg_num));
            up.sort();
            up == osds
        })
        .unwrap()
}

/// A closed cluster in `dir` (3 OSDs, a pool of size 2, min_size 1) with an
/// object on osd.1 and osd.2, written on both, then written again and
/// flushed while osd.2 was down; osd.1's store is then moved away (to the
/// returned path), so osd.2 alone shows a copy, an older one. Returns the
/// object, its pool and where osd.1's store went.
fn newest_copy_only_on_an_unreadable_store(
    dir: &Path,
) -> (String, rbdfs::rados::PoolId, std::path::PathBuf) {
    let c = common::create_cluster(dir, 3, ClusterConfig::default());
    let io = common::rbd_pool(&c, 2, 1, 8);
    let name = object_on(&c, &io, 8, [1, 2]);
    write_full(&io, &name, Bytes::from_static(b"old")).unwrap();
    c.set_osd_up(2, false).unwrap();
    write_full(&io, &name, Bytes::from_static(b"new")).unwrap();
    block_on(io.flush()).unwrap();
    c.shutdown().unwrap();
    let away = dir.join("osd.1.away");
    std::fs::rename(dir.join("osd.1"), &away).unwrap();
    (name, io.pool_id(), away)
}

/// The cluster in `dir` opened, with a read of `name`'s first 3 bytes sent
/// and waiting (its PG incomplete); the read's answer arrives on the channel.
fn open_with_a_read_of(
    dir: &Path,
    pool: rbdfs::rados::PoolId,
    name: &str,
) -> (
    Arc<Cluster>,
    IoCtx,
    std::sync::mpsc::Receiver<rbdfs::rados::Result<Bytes>>,
) {
    let c = Cluster::open(dir, ClusterConfig::default()).unwrap();
    let io = Rados::new(c.clone()).ioctx_by_id(pool);
    let (io2, name2) = (io.clone(), name.to_string());
    let pending = common::spawn_op(async move { io2.read(&name2, SNAP_HEAD, 0, 3).await });
    common::wait_until(30, "the read is blocked", || c.blocked_ops() == 1);
    (c, io, pending)
}

#[test]
fn test_failure_a_pg_whose_last_holders_cannot_be_opened_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let (name, pool, away) = newest_copy_only_on_an_unreadable_store(dir.path());

    // Act
    let (c, _io, pending) = open_with_a_read_of(dir.path(), pool, &name);

    // Assert: the read waits; the PG says why; the old copy is never served.
    let pgs = c.pg_list();
    let waiting: Vec<_> = pgs.iter().filter(|p| p.state == "incomplete").collect();
    assert_eq!(waiting.len(), 1, "{pgs:?}");
    assert_eq!(waiting[0].waiting_for, Some(1));
    let checks = c.status().checks;
    assert!(
        checks
            .iter()
            .any(|l| l.contains("incomplete") && l.contains("osd.1")),
        "{checks:?}"
    );
    c.shutdown().unwrap();
    let answered = pending.recv().unwrap();
    assert!(answered.is_err(), "served {answered:?}");
    // With osd.1 back, the flushed write is there.
    std::fs::rename(&away, dir.path().join("osd.1")).unwrap();
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();
    let io = Rados::new(c.clone()).ioctx_by_id(pool);
    assert_eq!(read_whole(&io, &name), Bytes::from_static(b"new"));
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_failure_an_osd_marked_lost_is_no_longer_waited_for() {
    // Arrange: the PG waits for osd.1, whose store is gone for good.
    let dir = tempfile::tempdir().unwrap();
    let (name, pool, _away) = newest_copy_only_on_an_unreadable_store(dir.path());
    let (c, io, pending) = open_with_a_read_of(dir.path(), pool, &name);

    // Act
    let up = c.mark_osd_lost(2).unwrap_err().to_string();
    c.mark_osd_lost(1).unwrap();

    // Assert: an up OSD is refused; the read is served the newest copy
    // left, and so is a new write, on a cluster opened again too.
    assert!(up.contains("only a down OSD"), "{up}");
    assert_eq!(pending.recv().unwrap(), Ok(Bytes::from_static(b"old")));
    assert!(c.pg_list().iter().all(|p| p.state.starts_with("active")));
    write_full(&io, &name, Bytes::from_static(b"after")).unwrap();
    c.shutdown().unwrap();
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();
    assert!(c.osdmap().osd(1).unwrap().lost);
    let io = Rados::new(c.clone()).ioctx_by_id(pool);
    assert_eq!(read_whole(&io, &name), Bytes::from_static(b"after"));
    c.shutdown().unwrap();
}

#[test]
fn test_failure_an_osd_lost_that_comes_back_brings_back_nothing_given_up() {
    // Arrange: osd.1 alone held the newest write to `name`; it was marked
    // lost (the older copy on osd.2 serves), then its store opens again.
    let dir = tempfile::tempdir().unwrap();
    let (name, pool, away) = newest_copy_only_on_an_unreadable_store(dir.path());
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();
    c.mark_osd_lost(1).unwrap();
    let io = Rados::new(c.clone()).ioctx_by_id(pool);
    assert_eq!(read_whole(&io, &name), Bytes::from_static(b"old"));
    c.shutdown().unwrap();
    std::fs::rename(&away, dir.path().join("osd.1")).unwrap();

    // Act
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();

    // Assert: osd.1 is back, and what was given up stays given up, on
    // every copy.
    assert!(!c.osdmap().osd(1).unwrap().lost);
    let io = Rados::new(c.clone()).ioctx_by_id(pool);
    assert_eq!(read_whole(&io, &name), Bytes::from_static(b"old"));
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_failure_scrub_repair_leaves_a_pg_that_does_not_serve_alone() {
    // Arrange: one PG, size 3, min_size 1. O is written everywhere, again
    // without x, then P on z only; then z goes down and x, y come back: the
    // PG waits, incomplete, for z's newest copy, and x and y hold O at two
    // different ages.
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let io = common::rbd_pool(&c, 3, 1, 1);
    write_full(&io, "O", content("O", 0)).unwrap();
    let (_, acting) = c.object_acting(io.pool_id(), "O").unwrap();
    let (x, y, z) = (acting[0], acting[1], acting[2]);
    c.set_osd_up(x, false).unwrap();
    write_full(&io, "O", content("O", 1)).unwrap();
    c.set_osd_up(y, false).unwrap();
    write_full(&io, "P", content("P", 0)).unwrap();
    block_on(io.flush()).unwrap();
    c.set_osd_up(z, false).unwrap();
    c.set_osd_up(x, true).unwrap();
    c.set_osd_up(y, true).unwrap();
    assert!(
        c.pg_list().iter().all(|p| p.state == "incomplete"),
        "{:?}",
        c.pg_list()
    );

    // Act
    let scrub = c.scrub(None, true, true).unwrap();
    c.set_osd_up(z, true).unwrap();
    c.set_osd_up(x, false).unwrap();

    // Assert: nothing rolled back, and the PG was skipped.
    assert!(
        read_whole(&io, "O") == content("O", 1),
        "O rolled back: {scrub:?}"
    );
    assert!(read_whole(&io, "P") == content("P", 0), "P lost");
    assert_eq!(scrub.pgs_scrubbed, 0);
    assert_eq!(scrub.pgs_skipped.len(), 1, "{scrub:?}");
    assert_eq!(scrub.pgs_skipped[0].state, "incomplete");
    assert!(scrub.inconsistencies.is_empty(), "{scrub:?}");
    c.set_osd_up(x, true).unwrap();
    let clean = c.scrub(None, true, false).unwrap();
    assert_eq!((clean.pgs_scrubbed, clean.pgs_skipped.len()), (1, 0));
    assert!(clean.is_clean(), "{:?}", clean.inconsistencies);
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_failure_a_recovery_source_that_cannot_read_its_copy_is_the_one_marked_down() {
    // Arrange: O rewritten while z was down, so z needs it from x, the
    // primary; then (across a restart, so no open handle hides it) x's file
    // of O is unreadable, as a bad sector would leave it.
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let io = pool(&c, 8);
    write_full(&io, "O", content("O", 0)).unwrap();
    let (pg, acting) = c.object_acting(io.pool_id(), "O").unwrap();
    let (x, y, z) = (acting[0], acting[1], acting[2]);
    c.set_osd_up(z, false).unwrap();
    write_full(&io, "O", content("O", 1)).unwrap();
    block_on(io.flush()).unwrap();
    let key = ObjectKey {
        coll: pg,
        name: "O".into(),
        snap: SNAP_HEAD,
    };
    let bad = c.osd_store(x).unwrap().object_path(&key).unwrap();
    c.shutdown().unwrap();
    drop((c, io));
    // Opening it fails (EISDIR); the store opens, it only fails that read.
    std::fs::remove_file(&bad).unwrap();
    std::os::unix::fs::symlink(dir.path(), &bad).unwrap();

    // Act: z comes back at the start and is recovered from x.
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();
    common::wait_until(30, "an OSD to be marked down", || {
        c.osdmap().osds.iter().any(|o| !o.up)
    });

    // Assert: x is down, not z; z took the newest copy from y.
    let map = c.osdmap();
    assert!(!map.osd(x).unwrap().up, "osd.{x}, the bad source, is up");
    assert!(map.osd(z).unwrap().up && map.osd(y).unwrap().up);
    let rados = Rados::new(c.clone());
    let io = rados.ioctx_by_id(map.pools[0].info.id);
    assert!(
        read_whole(&io, "O") == content("O", 1),
        "O is not the newest"
    );
    let on_z = c.osd_store(z).unwrap().read(&key, 0, 1 << 20).unwrap();
    assert!(on_z == content("O", 1), "z's copy is not the newest");
    c.shutdown().unwrap();
}

#[test]
fn test_failure_an_osd_lost_that_comes_back_over_an_empty_copy_brings_back_nothing() {
    // Arrange: the only write to `name` went to osd.1 alone (osd.2 down);
    // osd.1's store is away and it is marked lost, so the PG serves
    // osd.2's empty copy; then osd.1's store opens again.
    let dir = tempfile::tempdir().unwrap();
    let c = common::create_cluster(dir.path(), 3, ClusterConfig::default());
    let io = common::rbd_pool(&c, 2, 1, 8);
    let name = object_on(&c, &io, 8, [1, 2]);
    c.set_osd_up(2, false).unwrap();
    write_full(&io, &name, Bytes::from_static(b"given up")).unwrap();
    block_on(io.flush()).unwrap();
    c.shutdown().unwrap();
    let away = dir.path().join("osd.1.away");
    std::fs::rename(dir.path().join("osd.1"), &away).unwrap();
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();
    c.mark_osd_lost(1).unwrap();
    let io = Rados::new(c.clone()).ioctx_by_id(io.pool_id());
    let before = block_on(io.read(&name, SNAP_HEAD, 0, 8));
    c.shutdown().unwrap();
    std::fs::rename(&away, dir.path().join("osd.1")).unwrap();

    // Act
    let c = Cluster::open(dir.path(), ClusterConfig::default()).unwrap();

    // Assert: the PG serves (it used to wait, incomplete, for osd.2, which
    // was up), and the write given up stays given up on every copy.
    assert_eq!(before, Err(rbdfs::rados::RadosError::NotFound));
    let pgs = c.pg_list();
    assert!(pgs.iter().all(|p| p.state.starts_with("active")), "{pgs:?}");
    let io = Rados::new(c.clone()).ioctx_by_id(io.pool_id());
    let after = block_on(io.read(&name, SNAP_HEAD, 0, 8));
    assert_eq!(after, Err(rbdfs::rados::RadosError::NotFound));
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_failure_an_osd_that_cannot_make_a_pg_is_marked_down_and_the_pg_serves() {
    // Arrange: osd.2's store refuses every transaction for space, so it
    // cannot make the PGs of a new pool.
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        store: Arc::new(TightOpener { room: 0 }),
        op_timeout: std::time::Duration::from_secs(20),
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir.path(), 3, config);

    // Act: a pool of size 3, min_size 2, on all three OSDs.
    let io = pool(&c, 4);
    common::wait_until(30, "osd.2 is marked down", || {
        !c.osdmap().osd(2).unwrap().up
    });
    let written = write_full(&io, "o", content("o", 0));

    // Assert: the others serve (the PGs used to wait, peering, for good).
    assert_eq!(written, Ok(()));
    assert_eq!(read_whole(&io, "o"), content("o", 0));
    let pgs = c.pg_list();
    assert!(pgs.iter().all(|p| p.state.starts_with("active")), "{pgs:?}");
    c.shutdown().unwrap();
}
