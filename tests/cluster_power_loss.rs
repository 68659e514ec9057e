//! Power loss of a whole 3-OSD file-store cluster: each store's journal
//! loses everything after its last sync (object files keep every applied
//! byte, the hardest case for replay), or keeps it all while the object
//! files lose every byte not synced (the hardest case for writes made in
//! place). Every write a completed flush covered must read back byte-exact,
//! on every replica; a later write is absent or whole; an object never ends
//! up failing its own checksum; and the cluster opens and serves.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::executor::block_on;
use rbdfs::osd::{Cluster, ClusterConfig, OpenedStore, StoreOpener};
use rbdfs::rados::{IoCtx, Rados, RadosError, SNAP_HEAD, SnapContext, WriteOp};
use rbdfs::store::{
    Callback, CollId, FileStore, ObjectKey, ObjectStore, StoreConfig, StoreError, StoreResult,
    StoreSpace, Transaction,
};

/// File stores whose crash hook is a power loss, syncing only when asked;
/// it keeps them so that the test can checkpoint them.
#[derive(Default)]
struct PowerLossOpener {
    stores: Mutex<Vec<Arc<FileStore>>>,
    /// The power loss keeps the journals whole and takes back every byte
    /// the object files were not synced with, instead of cutting the
    /// journals at their last sync.
    loses_file_data: bool,
}

impl StoreOpener for PowerLossOpener {
    fn mkfs(&self, path: &Path) -> StoreResult<()> {
        FileStore::mkfs(path)
    }

    fn open(&self, path: &Path) -> StoreResult<OpenedStore> {
        let config = StoreConfig {
            // Nothing commits behind the test's back: what survives is
            // exactly what the flush made durable.
            commit_interval: Duration::from_secs(3600),
            undo_unsynced: self.loses_file_data,
            ..StoreConfig::default()
        };
        let fs = FileStore::open(path, config)?;
        self.stores.lock().unwrap().push(fs.clone());
        let (c1, c2) = (fs.clone(), fs.clone());
        let loses_file_data = self.loses_file_data;
        Ok(OpenedStore {
            store: fs,
            close: Box::new(move || c1.close()),
            crash: Box::new(move || {
                if loses_file_data {
                    c2.crash_losing_unsynced_data()
                        .expect("taking back the unsynced bytes of the object files")
                } else {
                    c2.crash_losing_unsynced()
                        .expect("cutting the journal at its last sync")
                }
            }),
        })
    }
}

fn config(opener: &Arc<PowerLossOpener>) -> ClusterConfig {
    ClusterConfig {
        store: opener.clone(),
        ..ClusterConfig::default()
    }
}

fn content(i: u64, generation: u64) -> Bytes {
    let len = 1000 + ((i * 7919 + generation * 31) % 9000) as usize;
    Bytes::from(
        (0..len)
            .map(|j| (i as usize * 13 + generation as usize * 101 + j * 7) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Generation 1 of object `i` with every byte changed (same length).
fn rewritten(i: u64) -> Bytes {
    content(i, 1)
        .iter()
        .map(|b| b ^ 0x5a)
        .collect::<Vec<u8>>()
        .into()
}

fn write_full(io: &IoCtx, name: &str, data: Bytes) {
    block_on(io.operate_write(
        name,
        &SnapContext::empty(),
        vec![WriteOp::WriteFull { data }],
    ))
    .unwrap();
}

fn read(io: &IoCtx, name: &str) -> Result<Bytes, RadosError> {
    block_on(io.read(name, SNAP_HEAD, 0, 1 << 20))
}

/// A cluster over `dir` whose stores lose power when it crashes, and a pool
/// of `size` replicas on it.
fn create(dir: &Path, opener: &Arc<PowerLossOpener>, size: u32) -> (Arc<Cluster>, IoCtx) {
    let c = common::create_cluster(dir, 3, config(opener));
    let io = common::rbd_pool(&c, size, size.min(2), 8);
    (c, io)
}

/// Lose power, then open the cluster again with ordinary stores.
fn power_loss_and_reopen(c: Arc<Cluster>, dir: &Path) -> (Arc<Cluster>, IoCtx) {
    c.simulate_crash();
    drop(c);
    let c = Cluster::open(dir, ClusterConfig::default()).unwrap();
    let io = Rados::new(c.clone()).ioctx("rbd").unwrap();
    (c, io)
}

/// A flush as the FUSE fsync runs it: `flush_then`, which may sync on this
/// thread, waited for here.
fn flush_here(io: &IoCtx) -> Result<(), RadosError> {
    let (tx, rx) = std::sync::mpsc::channel();
    io.flush_then(Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

fn flush_async(io: &IoCtx) -> Result<(), RadosError> {
    block_on(io.flush())
}

#[test]
fn test_power_loss_keeps_every_flushed_write_on_every_replica() {
    // With one replica, each object's only copy is on the store that must
    // have synced it; with three, recovery must not be needed to find it.
    flushed_writes_survive_power_loss(flush_async, 1);
    flushed_writes_survive_power_loss(flush_async, 3);
}

#[test]
fn test_power_loss_keeps_every_write_a_flush_on_the_callers_thread_covered() {
    flushed_writes_survive_power_loss(flush_here, 1);
    flushed_writes_survive_power_loss(flush_here, 3);
}

fn flushed_writes_survive_power_loss(flush: fn(&IoCtx) -> Result<(), RadosError>, size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let opener = Arc::new(PowerLossOpener::default());
    let (c, io) = create(dir.path(), &opener, size);
    const FLUSHED: u64 = 40;
    const LATER: u64 = 20;
    // New objects: nothing but the flush makes them durable.
    for i in 0..FLUSHED {
        write_full(&io, &format!("o{i}"), content(i, 0));
    }
    flush(&io).unwrap();
    for i in FLUSHED..FLUSHED + LATER {
        write_full(&io, &format!("o{i}"), content(i, 0));
    }

    let (c, io) = power_loss_and_reopen(c, dir.path());

    for i in 0..FLUSHED {
        assert_eq!(
            read(&io, &format!("o{i}")).unwrap(),
            content(i, 0),
            "flushed object o{i}"
        );
    }
    let mut lost = 0;
    for i in FLUSHED..FLUSHED + LATER {
        match read(&io, &format!("o{i}")) {
            Ok(d) => assert_eq!(d, content(i, 0), "unflushed object o{i} is partly there"),
            Err(RadosError::NotFound) => lost += 1,
            Err(e) => panic!("reading unflushed object o{i}: {e}"),
        }
    }
    // Nothing committed them (no flush, no commit-first step, no timer in
    // the test's time): the power loss is real, and took them all.
    assert_eq!(lost, LATER);
    assert!(common::assert_replicas_identical(&c) > 0);
    c.shutdown().unwrap();
}

#[test]
fn test_power_loss_after_in_place_overwrites_leaves_objects_readable() {
    let dir = tempfile::tempdir().unwrap();
    let opener = Arc::new(PowerLossOpener::default());
    let (c, io) = create(dir.path(), &opener, 3);
    const N: u64 = 24;
    for i in 0..N {
        write_full(&io, &format!("o{i}"), content(i, 1));
    }
    block_on(io.flush()).unwrap();
    // A checkpoint, so replay will not re-apply the flushed writes over
    // whatever the overwrites leave in the object files.
    for s in opener.stores.lock().unwrap().iter() {
        s.sync().unwrap();
    }
    // Unflushed overwrites in place, same length: a power loss may keep
    // their bytes; the object's stored checksum must still match them.
    for i in 0..N {
        write_full(&io, &format!("o{i}"), rewritten(i));
    }

    let (c, io) = power_loss_and_reopen(c, dir.path());

    for i in 0..N {
        let got = read(&io, &format!("o{i}")).unwrap();
        assert!(
            got == content(i, 1) || got == rewritten(i),
            "object o{i} is neither its flushed nor its new content"
        );
    }
    assert!(c.scrub(None, true, false).unwrap().is_clean());
    c.shutdown().unwrap();
}

#[test]
fn test_power_loss_keeps_every_flushed_overwrite_made_in_place() {
    // Arrange: objects of 1 MiB, their checksums dropped by a small write
    // (an object with one takes no write in place), checkpointed so that
    // no journaled write is left for replay under the overwrites.
    let dir = tempfile::tempdir().unwrap();
    let opener = Arc::new(PowerLossOpener {
        loses_file_data: true,
        ..PowerLossOpener::default()
    });
    let (c, io) = create(dir.path(), &opener, 3);
    const N: u64 = 12;
    const BIG: usize = 256 << 10;
    let block = |i: u64, g: u8| Bytes::from(vec![(i as u8).wrapping_mul(7) ^ g; BIG]);
    let write_at = |name: &str, off: u64, data: Bytes| {
        block_on(io.operate_write(
            name,
            &SnapContext::empty(),
            vec![WriteOp::Write { off, data }],
        ))
        .unwrap()
    };
    for i in 0..N {
        let name = format!("o{i}");
        write_full(&io, &name, Bytes::from(vec![1u8; 1 << 20]));
        write_at(&name, 0, Bytes::from_static(b"no checksum"));
    }
    block_on(io.flush()).unwrap();
    for s in opener.stores.lock().unwrap().iter() {
        s.sync().unwrap();
    }

    // Act: large overwrites (in place, their syncs left to the flush),
    // flushed; then more, not flushed; then the power loss.
    for i in 0..N {
        write_at(&format!("o{i}"), 256 << 10, block(i, 2));
    }
    flush_here(&io).unwrap();
    for i in 0..N {
        write_at(&format!("o{i}"), 512 << 10, block(i, 3));
    }
    let (c, io) = power_loss_and_reopen(c, dir.path());

    // Assert: each flushed overwrite is there on every replica; each later
    // one is gone (nothing synced its bytes: no flush, no checkpoint), even
    // though its record is in the journal.
    for i in 0..N {
        let got = read(&io, &format!("o{i}")).unwrap();
        assert_eq!(got.len(), 1 << 20, "size of o{i}");
        assert!(
            got[256 << 10..512 << 10] == block(i, 2)[..],
            "o{i} lost a flushed overwrite"
        );
        assert!(
            got[512 << 10..768 << 10].iter().all(|b| *b == 1),
            "o{i}: an unflushed overwrite's bytes survived"
        );
    }
    assert!(common::assert_replicas_identical(&c) > 0);
    c.shutdown().unwrap();
}

/// A file store whose flushes fail (as a disk whose cache flush errors)
/// while everything else works.
struct CommitFails(Arc<FileStore>);

fn flush_error() -> StoreError {
    StoreError::Failed("injected: the journal cannot be synced".into())
}

impl ObjectStore for CommitFails {
    fn queue_transaction(&self, t: Transaction, c: Callback, a: Callback) -> StoreResult<()> {
        // Transactions' own commit callbacks are left alone: a replica whose
        // commits fail is marked down, and this test is about the flush.
        self.0.queue_transaction(t, c, a)
    }
    fn read(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Bytes> {
        self.0.read(key, off, len)
    }
    fn stat(&self, key: &ObjectKey) -> StoreResult<u64> {
        self.0.stat(key)
    }
    fn exists(&self, key: &ObjectKey) -> bool {
        self.0.exists(key)
    }
    fn getattrs(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.0.getattrs(key)
    }
    fn omap_get(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.0.omap_get(key)
    }
    fn list_objects(&self, coll: CollId) -> StoreResult<Vec<ObjectKey>> {
        self.0.list_objects(coll)
    }
    fn list_collections(&self) -> Vec<CollId> {
        self.0.list_collections()
    }
    fn coll_meta_get(&self, coll: CollId) -> StoreResult<BTreeMap<String, Bytes>> {
        self.0.coll_meta_get(coll)
    }
    fn wait_applied(&self) -> StoreResult<()> {
        self.0.wait_applied()
    }
    fn wait_committed(&self) -> StoreResult<()> {
        Err(flush_error())
    }
    fn commit_then(&self, done: Callback) {
        done(Err(flush_error()))
    }
    fn space(&self) -> StoreResult<StoreSpace> {
        self.0.space()
    }
}

/// osd.2's store cannot commit; the others can.
struct CommitFailsOnOsd2;

impl StoreOpener for CommitFailsOnOsd2 {
    fn mkfs(&self, path: &Path) -> StoreResult<()> {
        FileStore::mkfs(path)
    }

    fn open(&self, path: &Path) -> StoreResult<OpenedStore> {
        let fs = FileStore::open(path, StoreConfig::default())?;
        let (c1, c2) = (fs.clone(), fs.clone());
        let store: Arc<dyn ObjectStore> = if path.ends_with("osd.2") {
            Arc::new(CommitFails(fs))
        } else {
            fs
        };
        Ok(OpenedStore {
            store,
            close: Box::new(move || c1.close()),
            crash: Box::new(move || c2.crash()),
        })
    }
}

#[test]
fn test_flush_goes_on_without_a_replica_that_cannot_commit() {
    flush_goes_on_without_a_replica_that_cannot_commit(flush_async);
}

#[test]
fn test_flush_on_the_callers_thread_goes_on_without_a_replica_that_cannot_commit() {
    flush_goes_on_without_a_replica_that_cannot_commit(flush_here);
}

/// As Ceph resends a write to a new acting set: the replica that cannot
/// commit is marked down, and the flush returns once the other two, which
/// applied the write, have committed it.
fn flush_goes_on_without_a_replica_that_cannot_commit(flush: fn(&IoCtx) -> Result<(), RadosError>) {
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        store: Arc::new(CommitFailsOnOsd2),
        ..ClusterConfig::default()
    };
    let c = common::create_cluster(dir.path(), 3, config);
    let io = common::rbd_pool(&c, 3, 2, 8);
    write_full(&io, "o", content(0, 0));

    let r = flush(&io);

    assert_eq!(r, Ok(()));
    assert!(!c.osdmap().osd(2).unwrap().up, "osd.2 is still up");
    assert_eq!(
        block_on(io.read("o", SNAP_HEAD, 0, 1 << 20)).unwrap(),
        content(0, 0)
    );
    c.shutdown().unwrap();
}
