//! Behaviour of `FileStore`, one behaviour per test.

use super::*;
use crate::rados::SNAP_HEAD;
use std::sync::mpsc::channel;
use std::time::Duration;

const COLL: CollId = CollId { pool: 1, pg: 0 };
/// Long enough for any step on a loaded machine; a hang fails instead of blocking CI.
const WAIT: Duration = Duration::from_secs(60);

pub(super) fn key(name: &str) -> ObjectKey {
    ObjectKey {
        coll: COLL,
        name: name.to_string(),
        snap: SNAP_HEAD,
    }
}

/// A directory for a test store, on tmpfs when the machine has one:
/// checkpoints call syncfs, which on a shared disk waits for every other
/// writer's dirty data. What the tests check (process state lost, page cache
/// kept) behaves the same on tmpfs.
pub(super) fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn new_store() -> (tempfile::TempDir, Arc<FileStore>) {
    new_store_with(StoreConfig::default())
}

fn new_store_with(cfg: StoreConfig) -> (tempfile::TempDir, Arc<FileStore>) {
    let dir = scratch_dir();
    FileStore::mkfs(dir.path()).unwrap();
    let s = FileStore::open(dir.path(), StoreConfig::default()).unwrap();
    run(&s, vec![TxOp::CreateCollection(COLL)]).unwrap();
    s.close().unwrap();
    let s = FileStore::open(dir.path(), cfg).unwrap();
    (dir, s)
}

fn nop() -> Callback {
    Box::new(|_| {})
}

/// Queue a transaction and wait until it is applied.
fn run(s: &FileStore, ops: Vec<TxOp>) -> StoreResult<()> {
    let (tx, rx) = channel();
    s.queue_transaction(
        Transaction::from(ops),
        nop(),
        Box::new(move |r| tx.send(r).unwrap()),
    )?;
    rx.recv_timeout(WAIT).unwrap()
}

#[test]
fn test_a_panicking_commit_callback_does_not_stop_the_commits_after_it() {
    // Arrange: a commit callback that panics, then one that reports.
    let (_d, s) = new_store();
    let boom: Callback = Box::new(|_| panic!("a bug in a commit callback"));
    s.queue_transaction(Transaction::from(vec![write("a", 0, b"1")]), boom, nop())
        .unwrap();
    let (tx, rx) = channel();
    let report: Callback = Box::new(move |r| tx.send(r).unwrap());
    s.queue_transaction(Transaction::from(vec![write("b", 0, b"2")]), report, nop())
        .unwrap();

    // Act: the commit runs both, here.
    let r = s.commit_here();

    // Assert: the commit went through and the second callback ran.
    r.unwrap();
    rx.recv_timeout(WAIT).unwrap().unwrap();
    assert!(!s.commit_pending());
}

#[test]
fn test_a_closed_store_has_a_commit_to_fail_even_with_nothing_to_sync() {
    // Arrange: everything committed, then the store closes.
    let (_d, s) = new_store();
    run(&s, vec![write("a", 0, b"1")]).unwrap();
    s.commit_here().unwrap();
    assert!(!s.commit_pending());
    s.close().unwrap();

    // Act / Assert: a flush that skips stores with nothing pending still
    // asks this one, and hears that it cannot commit.
    assert!(s.commit_pending());
    assert!(s.commit_here().is_err());
}

fn write(name: &str, off: u64, data: &[u8]) -> TxOp {
    TxOp::Write {
        key: key(name),
        off,
        data: Bytes::copy_from_slice(data),
    }
}

fn zero(name: &str, off: u64, len: u64) -> TxOp {
    TxOp::Zero {
        key: key(name),
        off,
        len,
    }
}

fn read_all(s: &FileStore, name: &str) -> Vec<u8> {
    s.read(&key(name), 0, u64::MAX).unwrap().to_vec()
}

fn map(kv: &[(&str, &str)]) -> BTreeMap<String, Bytes> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

#[test]
fn test_write_then_read_returns_data() {
    let (_d, s) = new_store();

    run(&s, vec![write("o", 3, b"abc")]).unwrap();

    assert_eq!(read_all(&s, "o"), b"\0\0\0abc");
    assert_eq!(s.stat(&key("o")).unwrap(), 6);
    assert_eq!(&s.read(&key("o"), 4, 10).unwrap()[..], b"bc");
}

#[test]
fn test_read_missing_object_is_not_found() {
    let (_d, s) = new_store();

    let r = s.read(&key("nope"), 0, 1);

    assert!(matches!(r, Err(StoreError::NotFound(_))));
}

#[test]
fn test_zero_inside_object_zeroes_and_keeps_size() {
    let (_d, s) = new_store();
    run(&s, vec![write("o", 0, &[7u8; 10])]).unwrap();

    run(&s, vec![zero("o", 8, 100)]).unwrap();

    assert_eq!(read_all(&s, "o"), [7, 7, 7, 7, 7, 7, 7, 7, 0, 0]);
}

#[test]
fn test_truncate_shrink_then_grow_exposes_zeros() {
    let (_d, s) = new_store();
    run(&s, vec![write("o", 0, b"abcdef")]).unwrap();

    run(
        &s,
        vec![
            TxOp::Truncate {
                key: key("o"),
                size: 2,
            },
            TxOp::Truncate {
                key: key("o"),
                size: 4,
            },
        ],
    )
    .unwrap();

    assert_eq!(read_all(&s, "o"), b"ab\0\0");
}

#[test]
fn test_remove_object_makes_it_absent() {
    let (_d, s) = new_store();
    run(&s, vec![write("o", 0, b"x")]).unwrap();

    run(&s, vec![TxOp::Remove(key("o"))]).unwrap();

    assert!(!s.exists(&key("o")));
    assert_eq!(s.list_objects(COLL).unwrap(), vec![]);
}

#[test]
fn test_clone_then_write_source_leaves_clone_intact() {
    let (_d, s) = new_store();
    let snap = ObjectKey {
        snap: 4,
        ..key("o")
    };
    run(
        &s,
        vec![
            write("o", 0, b"old"),
            TxOp::SetAttrs {
                key: key("o"),
                attrs: map(&[("a", "1")]),
            },
        ],
    )
    .unwrap();

    run(
        &s,
        vec![
            TxOp::Clone {
                from: key("o"),
                to: snap.clone(),
            },
            write("o", 0, b"new!"),
        ],
    )
    .unwrap();

    assert_eq!(&s.read(&snap, 0, 100).unwrap()[..], b"old");
    assert_eq!(s.getattrs(&snap).unwrap(), map(&[("a", "1")]));
    assert_eq!(read_all(&s, "o"), b"new!");
}

#[test]
fn test_attrs_and_omap_set_and_remove() {
    let (_d, s) = new_store();

    run(
        &s,
        vec![
            TxOp::SetAttrs {
                key: key("o"),
                attrs: map(&[("a", "1"), ("b", "2")]),
            },
            TxOp::RmAttr {
                key: key("o"),
                name: "a".into(),
            },
            TxOp::OmapSet {
                key: key("o"),
                entries: map(&[("x", "1"), ("y", "2"), ("z", "3")]),
            },
            TxOp::OmapRmKeys {
                key: key("o"),
                keys: vec!["y".into()],
            },
        ],
    )
    .unwrap();

    assert_eq!(s.getattrs(&key("o")).unwrap(), map(&[("b", "2")]));
    assert_eq!(
        s.omap_get(&key("o")).unwrap(),
        map(&[("x", "1"), ("z", "3")])
    );
}

#[test]
fn test_coll_meta_set_and_remove() {
    let (_d, s) = new_store();

    run(
        &s,
        vec![
            TxOp::CollMetaSet {
                coll: COLL,
                entries: map(&[("info", "i"), ("log.1", "l")]),
            },
            TxOp::CollMetaRm {
                coll: COLL,
                keys: vec!["log.1".into()],
            },
        ],
    )
    .unwrap();

    assert_eq!(s.coll_meta_get(COLL).unwrap(), map(&[("info", "i")]));
}

#[test]
fn test_list_objects_sorted_by_name_then_snap() {
    let (_d, s) = new_store();
    let k = |n: &str, snap| ObjectKey {
        coll: COLL,
        name: n.into(),
        snap,
    };

    run(
        &s,
        vec![
            TxOp::Touch(k("b", SNAP_HEAD)),
            TxOp::Touch(k("a/x.y", 7)),
            TxOp::Touch(k("b", 2)),
            TxOp::Touch(k("a/x.y", SNAP_HEAD)),
        ],
    )
    .unwrap();

    assert_eq!(
        s.list_objects(COLL).unwrap(),
        vec![
            k("a/x.y", 7),
            k("a/x.y", SNAP_HEAD),
            k("b", 2),
            k("b", SNAP_HEAD)
        ]
    );
}

#[test]
fn test_write_to_missing_collection_is_refused_up_front() {
    let (_d, s) = new_store();
    let other = CollId { pool: 9, pg: 9 };
    let k = ObjectKey {
        coll: other,
        ..key("o")
    };

    let r = s.queue_transaction(Transaction::from(vec![TxOp::Touch(k)]), nop(), nop());

    assert!(matches!(r, Err(StoreError::NoCollection(c)) if c == other));
}

#[test]
fn test_collection_created_by_queued_txn_accepts_next_txn() {
    let (_d, s) = new_store();
    let other = CollId { pool: 2, pg: 3 };
    let k = ObjectKey {
        coll: other,
        ..key("o")
    };
    s.queue_transaction(
        Transaction::from(vec![TxOp::CreateCollection(other)]),
        nop(),
        nop(),
    )
    .unwrap();

    run(&s, vec![TxOp::Touch(k.clone())]).unwrap();

    assert!(s.exists(&k));
}

#[test]
fn test_callbacks_applied_at_queue_and_committed_in_seq_order_by_the_next_sync() {
    let (_d, s) = new_store_with(StoreConfig {
        commit_interval: Duration::from_secs(3600),
        ..StoreConfig::default()
    });
    let (tx, rx) = channel::<(&'static str, usize)>();
    const N: usize = 50;

    for i in 0..N {
        let (c, a) = (tx.clone(), tx.clone());
        s.queue_transaction(
            Transaction::from(vec![write("o", i as u64, b"x")]),
            Box::new(move |r| {
                r.unwrap();
                c.send(("commit", i)).unwrap()
            }),
            Box::new(move |r| {
                r.unwrap();
                a.send(("applied", i)).unwrap()
            }),
        )
        .unwrap();
        assert_eq!(
            rx.try_recv(),
            Ok(("applied", i)),
            "applied before queue returns"
        );
    }
    assert!(rx.try_recv().is_err(), "nothing committed before a sync");
    s.wait_committed().unwrap();
    let commits: Vec<_> = (0..N).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();

    assert_eq!(commits, (0..N).map(|i| ("commit", i)).collect::<Vec<_>>());
    assert_eq!(read_all(&s, "o").len(), N);
}

#[test]
fn test_no_space_refuses_and_changes_nothing() {
    // 1 MiB "available" with the default 64 MiB reserve: nothing fits.
    let (d, s) = new_store_with(StoreConfig {
        fake_available_bytes: Some(1 << 20),
        ..StoreConfig::default()
    });
    let seq = s.applied_seq();

    let r = s.queue_transaction(
        Transaction::from(vec![write("o", 0, b"data")]),
        nop(),
        nop(),
    );

    assert!(matches!(r, Err(StoreError::NoSpace { .. })), "{r:?}");
    s.wait_committed().unwrap();
    assert_eq!(s.applied_seq(), seq);
    assert!(!s.exists(&key("o")));
    s.close().unwrap();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();
    assert!(!s.exists(&key("o")));
}

#[test]
fn test_free_space_is_remeasured_after_its_ttl_and_counted_down_before() {
    let mut free = FreeSpace::default();
    let t0 = Instant::now();
    let runs = &std::cell::Cell::new(0);
    let measure = |avail: u64| {
        move || {
            runs.set(runs.get() + 1);
            Ok(avail)
        }
    };

    assert_eq!(free.get(t0, measure(1000)).unwrap(), 1000);
    free.take(300);
    let within = free.get(t0 + FREE_SPACE_TTL / 2, measure(5000)).unwrap();
    let after = free.get(t0 + FREE_SPACE_TTL, measure(5000)).unwrap();

    assert_eq!(
        within, 700,
        "bytes let through count until the next measurement"
    );
    assert_eq!(after, 5000);
    assert_eq!(runs.get(), 2);
    let err = FreeSpace::default().get(t0, || Err(io::Error::other("statfs failed")));
    assert!(
        err.is_err(),
        "a failed measurement is an error, not zero bytes free"
    );
}

#[test]
fn test_a_write_refused_by_a_standing_free_figure_is_checked_against_a_fresh_one() {
    let (_d, s) = new_store();
    // As if the count-down had eaten the free space a moment ago, when it
    // only counted overwrites.
    *s.inner.free.lock() = FreeSpace {
        measured: Some(Instant::now()),
        avail: 0,
    };

    let r = run(&s, vec![write("o", 0, b"data")]);

    assert!(r.is_ok(), "{r:?}");
    assert_eq!(read_all(&s, "o"), b"data");
}

#[test]
fn test_full_fd_cache_makes_room_for_one_and_hands_out_the_right_files() {
    let dir = scratch_dir();
    for id in 0..3u64 {
        std::fs::create_dir_all(obj_dir(dir.path(), id)).unwrap();
        std::fs::write(obj_path(dir.path(), id), [id as u8]).unwrap();
    }
    let cache = FdCache {
        map: Mutex::new(HashMap::new()),
        max: 2,
    };

    for round in 0..2 {
        for id in 0..3u64 {
            let f = cache.get(dir.path(), id, false).unwrap().unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 0).unwrap();
            assert_eq!(b[0], id as u8, "round {round}, id {id}");
            assert!(cache.map.lock().len() <= 2);
        }
    }
    assert!(cache.get(dir.path(), 7, false).unwrap().is_none());
}

#[test]
fn test_no_space_still_allows_removal() {
    let (_d, s) = new_store_with(StoreConfig {
        fake_available_bytes: Some(1 << 20),
        ..StoreConfig::default()
    });

    let r = run(&s, vec![TxOp::Remove(key("o"))]);

    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn test_open_twice_is_locked() {
    let (d, _s) = new_store();

    let r = FileStore::open(d.path(), StoreConfig::default());

    match r {
        Err(StoreError::Locked { hint, .. }) => {
            assert!(hint.contains(&std::process::id().to_string()), "{hint}")
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got a second handle"),
    }
}

#[test]
fn test_open_after_close_succeeds_and_keeps_data() {
    let (d, s) = new_store();
    run(&s, vec![write("o", 0, b"kept")]).unwrap();

    s.close().unwrap();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    assert_eq!(read_all(&s, "o"), b"kept");
}

#[test]
fn test_calls_after_close_fail() {
    let (_d, s) = new_store();
    s.close().unwrap();

    let q = s.queue_transaction(Transaction::new(), nop(), nop());

    assert!(matches!(q, Err(StoreError::Failed(_))));
    assert!(matches!(
        s.read(&key("o"), 0, 1),
        Err(StoreError::Failed(_))
    ));
    assert!(s.close().is_err());
}

#[test]
fn test_mkfs_on_existing_store_fails() {
    let (d, s) = new_store();
    s.close().unwrap();

    let r = FileStore::mkfs(d.path());

    assert!(r.is_err());
    assert!(FileStore::open(d.path(), StoreConfig::default()).is_ok());
}

#[test]
fn test_open_non_store_dir_is_corrupt_with_hint() {
    let d = scratch_dir();

    let r = FileStore::open(d.path(), StoreConfig::default());

    match r {
        Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("mkfs"), "{e}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened an empty directory"),
    }
}

#[test]
fn test_crash_before_checkpoint_replays_journal() {
    let (d, s) = new_store();
    run(
        &s,
        vec![
            write("o", 0, b"journaled"),
            TxOp::OmapSet {
                key: key("o"),
                entries: map(&[("k", "v")]),
            },
        ],
    )
    .unwrap();

    s.crash();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    assert_eq!(read_all(&s, "o"), b"journaled");
    assert_eq!(s.omap_get(&key("o")).unwrap(), map(&[("k", "v")]));
}

/// The records of a segment file from its start, as replay walks them:
/// each one's seq and byte range, up to a zero header (the padding after the
/// last record; a recycled segment holds older records past it) or the end.
fn segment_records(raw: &Bytes) -> Vec<(u64, std::ops::Range<usize>)> {
    let head = codec::RECORD_HEADER_LEN;
    let mut out = Vec::new();
    let mut off = 0;
    while off + head <= raw.len() && raw[off..off + head].iter().any(|b| *b != 0) {
        let (seq, _, used) = codec::decode_record(&raw.slice(off..)).unwrap();
        out.push((seq, off..off + used));
        off += used;
    }
    out
}

/// Seqs of the records at the start of a segment file (a segment reused
/// and not written yet starts with records of its previous use).
fn record_seqs(path: &Path) -> Vec<u64> {
    let raw = Bytes::from(std::fs::read(path).unwrap());
    segment_records(&raw)
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

#[test]
fn test_sync_trims_journal_to_one_segment_without_live_records() {
    let (d, s) = new_store();
    run(&s, vec![write("o", 0, &[1u8; 10000])]).unwrap();

    s.sync().unwrap();

    let segs = journal::list_segments(d.path()).unwrap();
    assert_eq!(segs.len(), 1);
    let (start, path) = &segs[0];
    let live: Vec<u64> = record_seqs(path)
        .into_iter()
        .filter(|q| q >= start)
        .collect();
    assert!(live.is_empty(), "records {live:?} left after a sync");
}

#[test]
fn test_small_journal_limit_checkpoints_in_background() {
    let (d, s) = new_store_with(StoreConfig {
        journal_max_bytes: 4096,
        ..StoreConfig::default()
    });

    for i in 0..20u8 {
        run(&s, vec![write("o", u64::from(i) * 1000, &[i; 1000])]).unwrap();
    }
    s.wait_applied().unwrap();
    s.crash();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    let data = read_all(&s, "o");
    for i in 0..20u8 {
        assert!(data[i as usize * 1000..][..1000].iter().all(|&b| b == i));
    }
    let snap = load_snapshot(d.path()).unwrap();
    assert!(snap.seq > 1, "no checkpoint was written");
}

#[test]
fn test_data_digest_matches_crc_of_content() {
    let (_d, s) = new_store();
    run(&s, vec![write("o", 5, b"digest me")]).unwrap();

    let d = s.data_digest(&key("o")).unwrap();

    assert_eq!(d, crc32c::crc32c(b"\0\0\0\0\0digest me"));
}

#[test]
fn test_after_a_failed_journal_sync_no_later_sync_makes_records_durable() {
    // Arrange: a record not yet committed, and a journal sync that failed
    // (Linux reports that error to one sync only: the others then succeed).
    let (_d, s) = new_store();
    run(&s, vec![write("o", 0, b"lost")]).unwrap();
    s.inner.fail_next_sync.store(true, Ordering::SeqCst);
    assert!(s.inner.commit_written().is_err());

    // Act: a checkpoint, whose rotate syncs the same segment.
    let checkpointed = s.inner.checkpoint();

    // Assert: it does not report the record durable.
    assert!(checkpointed.is_err());
    assert!(
        s.holds_uncommitted(),
        "the failed sync's records count as durable"
    );
}

#[test]
fn test_journal_write_failure_fails_store_and_later_txns() {
    let (d, s) = new_store();
    // Replace the journal's file with one opened read-only: appends fail with EBADF.
    {
        let mut j = s.inner.journal.lock();
        let seg = journal::list_segments(d.path()).unwrap().pop().unwrap().1;
        j.replace_file_for_test(File::open(seg).unwrap());
    }
    let first = s.queue_transaction(Transaction::from(vec![write("o", 0, b"x")]), nop(), nop());

    assert!(matches!(first, Err(StoreError::Failed(_))), "{first:?}");
    let later = s.queue_transaction(Transaction::new(), nop(), nop());
    assert!(matches!(later, Err(StoreError::Failed(_))), "{later:?}");
}

/// Copy a store directory (to restore a pristine copy between reopens).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for ent in std::fs::read_dir(from).unwrap() {
        let ent = ent.unwrap();
        let dst = to.join(ent.file_name());
        if ent.file_type().unwrap().is_dir() {
            copy_dir(&ent.path(), &dst);
        } else {
            std::fs::copy(ent.path(), &dst).unwrap();
        }
    }
}

/// A crashed store whose only journal segment holds `n` records, each
/// writing one byte `i` at offset `i` of object "o" (the collection was
/// created before the last checkpoint). Returns the dir, the segment and the
/// byte range of the last record in it.
fn crashed_store_with_records(n: u8) -> (tempfile::TempDir, PathBuf, std::ops::Range<usize>) {
    let (d, s) = new_store();
    s.sync().unwrap();
    for i in 0..n {
        run(&s, vec![write("o", u64::from(i), &[i + 1])]).unwrap();
    }
    s.crash();
    let segs = journal::list_segments(d.path()).unwrap();
    assert_eq!(segs.len(), 1);
    let raw = Bytes::from(std::fs::read(&segs[0].1).unwrap());
    let last = segment_records(&raw).pop().map_or(0..0, |(_, range)| range);
    (d, segs[0].1.clone(), last)
}

fn expected(n: u8) -> Vec<u8> {
    (1..=n).collect()
}

#[test]
fn test_replay_torn_tail_at_every_offset_keeps_good_prefix() {
    const N: u8 = 4;
    let (pristine, seg, last) = crashed_store_with_records(N);
    let seg_name = seg.file_name().unwrap().to_owned();

    for cut in last.start..last.end {
        let work = scratch_dir();
        copy_dir(pristine.path(), work.path());
        let f = data::open_rw(&work.path().join(&seg_name)).unwrap();
        f.set_len(cut as u64).unwrap();

        let s = FileStore::open(work.path(), StoreConfig::default()).unwrap();

        assert_eq!(read_all(&s, "o"), expected(N - 1), "cut at {cut}");
    }
}

#[test]
fn test_replay_flipped_byte_in_last_record_keeps_good_prefix() {
    const N: u8 = 3;
    let (pristine, seg, last) = crashed_store_with_records(N);
    let seg_name = seg.file_name().unwrap().to_owned();

    for pos in last.clone() {
        let work = scratch_dir();
        copy_dir(pristine.path(), work.path());
        let p = work.path().join(&seg_name);
        let mut raw = std::fs::read(&p).unwrap();
        // Vary the flipped bit with the position so every bit index is hit.
        raw[pos] ^= 1 << (pos % 8);
        std::fs::write(&p, raw).unwrap();

        let s = FileStore::open(work.path(), StoreConfig::default()).unwrap();

        assert_eq!(read_all(&s, "o"), expected(N - 1), "flip at {pos}");
    }
}

#[test]
fn test_replay_untouched_journal_keeps_every_record() {
    const N: u8 = 3;
    let (d, _seg, _last) = crashed_store_with_records(N);

    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    assert_eq!(read_all(&s, "o"), expected(N));
}

#[test]
fn test_torn_tail_then_new_records_survive_next_crash() {
    const N: u8 = 3;
    let (d, seg, last) = crashed_store_with_records(N);
    data::open_rw(&seg)
        .unwrap()
        .set_len((last.start + 5) as u64)
        .unwrap();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    run(&s, vec![write("o", 10, b"z")]).unwrap();
    s.crash();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    let mut want = expected(N - 1);
    want.resize(10, 0);
    want.push(b'z');
    assert_eq!(read_all(&s, "o"), want);
}

#[test]
fn test_replay_newer_record_version_refuses_open() {
    let (d, seg, last) = crashed_store_with_records(2);
    let mut raw = std::fs::read(&seg).unwrap();
    let rec = &mut raw[last.clone()];
    rec[4] = codec::RECORD_VERSION + 1;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[0..20]), &rec[24..]);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, raw).unwrap();

    let r = FileStore::open(d.path(), StoreConfig::default());

    match r {
        Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("version"), "{e}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a journal with a newer record"),
    }
}

#[test]
fn test_crash_leaves_no_orphan_object_files() {
    let (d, s) = new_store();
    run(&s, vec![write("gone", 0, b"x")]).unwrap();
    run(&s, vec![TxOp::Remove(key("gone"))]).unwrap();
    // An orphan from an unfinished clone.
    let stray = data::tmp_path(d.path(), 999);
    std::fs::write(&stray, b"junk").unwrap();

    s.crash();
    let _s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    let mut files = 0;
    for i in 0..data::FANOUT {
        files += std::fs::read_dir(data::obj_dir(d.path(), i))
            .unwrap()
            .count();
    }
    assert_eq!(files, 0);
}

#[test]
fn test_write_past_max_object_size_is_refused_up_front() {
    let (_d, s) = new_store();

    let r = s.queue_transaction(
        Transaction::from(vec![write("o", u64::MAX - 1, b"xy")]),
        nop(),
        nop(),
    );

    assert!(matches!(r, Err(StoreError::Io { .. })), "{r:?}");
    s.wait_applied().unwrap();
    assert!(!s.exists(&key("o")));
}

#[test]
fn test_reads_during_applies_never_see_half_a_transaction() {
    let (_d, s) = new_store();
    const HALF: usize = 32 << 10;
    let fill = |v: u8| {
        vec![
            write("o", 0, &[v; HALF]),
            TxOp::SetAttrs {
                key: key("o"),
                attrs: map(&[("v", &v.to_string())]),
            },
            write("o", HALF as u64, &[v; HALF]),
        ]
    };
    run(&s, fill(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Acquire) {
                let d = s.read(&key("o"), 0, u64::MAX).unwrap();
                assert!(d.iter().all(|&b| b == d[0]), "torn read");
                reads += 1;
            }
            reads
        })
    };

    for v in 1..=200u8 {
        s.queue_transaction(Transaction::from(fill(v)), nop(), nop())
            .unwrap();
    }
    s.wait_applied().unwrap();
    stop.store(true, Ordering::Release);

    assert!(reader.join().unwrap() > 0);
    assert_eq!(read_all(&s, "o"), vec![200u8; 2 * HALF]);
}

/// Transactions whose replay over newer data files is the hard case:
/// a clone followed by writes to its source, a shrink then grow, a zero,
/// and a remove then re-create.
fn replay_sensitive_txns() -> Vec<Vec<TxOp>> {
    let snap = ObjectKey {
        snap: 3,
        ..key("src")
    };
    vec![
        vec![write("src", 0, b"original"), write("gone", 0, b"old")],
        vec![
            TxOp::Clone {
                from: key("src"),
                to: snap,
            },
            write("src", 0, b"CHANGED!"),
        ],
        vec![
            TxOp::Truncate {
                key: key("src"),
                size: 2,
            },
            TxOp::Truncate {
                key: key("src"),
                size: 6,
            },
            zero("src", 0, 1),
        ],
        vec![TxOp::Remove(key("gone")), write("gone", 4, b"new")],
    ]
}

fn check_replay_sensitive(s: &FileStore) {
    let snap = ObjectKey {
        snap: 3,
        ..key("src")
    };
    assert_eq!(&s.read(&snap, 0, 100).unwrap()[..], b"original");
    assert_eq!(read_all(s, "src"), b"\0H\0\0\0\0");
    assert_eq!(read_all(s, "gone"), b"\0\0\0\0new");
}

/// Copy every file of `dir` whose name starts with `prefix` into `to`.
fn save_files(dir: &Path, prefix: &str, to: &Path) {
    for ent in std::fs::read_dir(dir).unwrap() {
        let ent = ent.unwrap();
        if ent.file_name().to_str().unwrap().starts_with(prefix) {
            std::fs::copy(ent.path(), to.join(ent.file_name())).unwrap();
        }
    }
}

#[test]
fn test_crash_after_snapshot_before_trim_skips_covered_records() {
    let (d, s) = new_store();
    for t in replay_sensitive_txns() {
        run(&s, t).unwrap();
    }
    let saved = scratch_dir();
    save_files(d.path(), "journal.", saved.path());

    s.sync().unwrap();
    s.crash();
    // The segments the checkpoint deleted come back, as if it crashed before
    // deleting them.
    save_files(saved.path(), "journal.", d.path());
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    check_replay_sensitive(&s);
}

#[test]
fn test_crash_before_snapshot_rename_replays_over_newer_files() {
    let (d, s) = new_store();
    let mut txns = replay_sensitive_txns().into_iter();
    // The clone's source data predates the snapshot, so replay cannot
    // rewrite it before the clone.
    run(&s, txns.next().unwrap()).unwrap();
    s.sync().unwrap();
    let saved = scratch_dir();
    save_files(d.path(), "meta.snapshot", saved.path());
    for t in txns {
        run(&s, t).unwrap();
    }
    save_files(d.path(), "journal.", saved.path());

    s.sync().unwrap();
    s.crash();
    // Old snapshot and journal, data files as the finished checkpoint left
    // them: the state of a crash after syncfs but before the rename.
    for (_, seg) in journal::list_segments(d.path()).unwrap() {
        std::fs::remove_file(seg).unwrap();
    }
    save_files(saved.path(), "", d.path());
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    check_replay_sensitive(&s);
}

#[test]
fn test_dropping_last_handle_in_a_callback_does_not_hang() {
    let (d, s) = new_store();
    let (go_tx, go_rx) = channel::<()>();
    let (done_tx, done_rx) = channel();
    let held = s.clone();

    s.queue_transaction(
        Transaction::from(vec![write("o", 0, b"x")]),
        Box::new(move |_| {
            // Wait until the test's handle is gone, so this drop is the last.
            go_rx.recv_timeout(WAIT).unwrap();
            drop(held);
            done_tx.send(()).unwrap();
        }),
        nop(),
    )
    .unwrap();
    drop(s);
    go_tx.send(()).unwrap();

    done_rx.recv_timeout(WAIT).unwrap();
    // The threads finish on their own (applying the write) and then release
    // the lock; until then a second open must be refused.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match FileStore::open(d.path(), StoreConfig::default()) {
            Ok(s) => {
                assert_eq!(read_all(&s, "o"), b"x");
                break;
            }
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

#[test]
fn test_space_used_follows_object_sizes() {
    let (d, s) = new_store();
    let snap = ObjectKey {
        snap: 1,
        ..key("a")
    };
    run(
        &s,
        vec![
            write("a", 0, &[1; 100]),
            write("b", 0, &[1; 50]),
            TxOp::Clone {
                from: key("a"),
                to: snap,
            },
            TxOp::Truncate {
                key: key("b"),
                size: 10,
            },
        ],
    )
    .unwrap();
    run(&s, vec![TxOp::Remove(key("a"))]).unwrap();

    assert_eq!(s.space().unwrap().used, 110);
    s.close().unwrap();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();
    assert_eq!(s.space().unwrap().used, 110);
}

#[test]
fn test_clone_from_missing_source_removes_target() {
    let (_d, s) = new_store();
    run(&s, vec![write("to", 0, b"stale")]).unwrap();

    run(
        &s,
        vec![TxOp::Clone {
            from: key("absent"),
            to: key("to"),
        }],
    )
    .unwrap();

    assert!(!s.exists(&key("to")));
}

/// Every data file in the store, by id.
fn data_files(root: &Path) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for i in 0..data::FANOUT {
        for ent in std::fs::read_dir(data::obj_dir(root, i)).unwrap() {
            let name = ent.unwrap().file_name();
            ids.insert(data::parse_name(name.to_str().unwrap()).unwrap());
        }
    }
    ids
}

fn direct_cfg() -> StoreConfig {
    StoreConfig {
        direct_write_min: 1024,
        in_place_min: 1024,
        ..StoreConfig::default()
    }
}

#[test]
fn test_direct_write_journal_failure_then_crash_leaves_no_orphan() {
    let (d, s) = new_store_with(direct_cfg());
    // The placed file gets written and synced; the record's append fails
    // (read-only journal file), so it never commits.
    {
        let mut j = s.inner.journal.lock();
        let seg = journal::list_segments(d.path()).unwrap().pop().unwrap().1;
        j.replace_file_for_test(File::open(seg).unwrap());
    }
    let r = s.queue_transaction(
        Transaction::from(vec![write("o", 0, &[7u8; 4096])]),
        nop(),
        nop(),
    );
    assert!(matches!(r, Err(StoreError::Failed(_))), "{r:?}");
    let placed: Vec<u64> = data_files(d.path())
        .into_iter()
        .filter(|id| id & data::PLACED_ID_BIT != 0)
        .collect();
    assert_eq!(placed.len(), 1, "the write was placed before the journal");

    s.crash();
    let s = FileStore::open(d.path(), direct_cfg()).unwrap();

    assert!(data_files(d.path()).is_empty());
    assert!(!s.exists(&key("o")));
}

#[test]
fn test_direct_write_old_file_kept_until_checkpoint() {
    let (d, s) = new_store_with(direct_cfg());
    run(&s, vec![write("o", 0, b"small, journaled")]).unwrap();
    let old = data_files(d.path());
    assert_eq!(old.len(), 1);

    run(&s, vec![write("o", 0, &[9u8; 2048])]).unwrap();

    let both = data_files(d.path());
    assert!(
        both.is_superset(&old),
        "old file deleted before a checkpoint"
    );
    assert_eq!(both.len(), 2);
    s.sync().unwrap();
    let after = data_files(d.path());
    assert_eq!(after.len(), 1);
    assert!(after.is_disjoint(&old));
    assert_eq!(read_all(&s, "o"), vec![9u8; 2048]);
}

#[test]
fn test_direct_write_crash_right_after_commit_replays_new_content() {
    let (d, s) = new_store_with(direct_cfg());
    run(&s, vec![write("o", 0, &[1u8; 6000])]).unwrap();
    s.sync().unwrap();
    let (tx, rx) = channel();

    s.queue_transaction(
        Transaction::from(vec![write("o", 0, &[2u8; 4000])]),
        Box::new(move |r| tx.send(r).unwrap()),
        nop(),
    )
    .unwrap();
    rx.recv_timeout(WAIT).unwrap().unwrap();
    s.crash();
    let s = FileStore::open(d.path(), direct_cfg()).unwrap();

    let mut want = vec![2u8; 4000];
    want.extend_from_slice(&[1u8; 2000]);
    assert_eq!(read_all(&s, "o"), want);
}

#[test]
fn test_direct_write_replay_with_placed_file_missing_refuses_open() {
    let (d, s) = new_store_with(direct_cfg());
    s.sync().unwrap();
    run(&s, vec![write("o", 0, &[3u8; 2048])]).unwrap();
    s.crash();
    for id in data_files(d.path()) {
        std::fs::remove_file(data::obj_path(d.path(), id)).unwrap();
    }

    let r = FileStore::open(d.path(), direct_cfg());

    match r {
        Err(StoreError::Io { context, source }) => {
            assert!(context.contains("replaying journal"), "{context}");
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        Err(e) => panic!("expected a replay error, got {e}"),
        Ok(_) => panic!("opened a store whose committed write lost its data file"),
    }
}

#[test]
fn test_direct_write_placed_ids_not_reused_after_reopen() {
    let (d, s) = new_store_with(direct_cfg());
    run(&s, vec![write("a", 0, &[4u8; 2048])]).unwrap();
    let first = data_files(d.path());
    s.close().unwrap();
    let s = FileStore::open(d.path(), direct_cfg()).unwrap();

    run(&s, vec![write("b", 0, &[5u8; 2048])]).unwrap();

    let all = data_files(d.path());
    assert_eq!(all.len(), 2);
    assert!(all.is_superset(&first));
    assert_eq!(read_all(&s, "a"), vec![4u8; 2048]);
}

#[test]
fn test_direct_write_full_shrink_drops_old_tail_across_crash() {
    let (d, s) = new_store_with(direct_cfg());
    run(&s, vec![write("o", 0, &[1u8; 8000])]).unwrap();
    s.sync().unwrap();

    run(
        &s,
        vec![
            write("o", 0, &[2u8; 3000]),
            TxOp::Truncate {
                key: key("o"),
                size: 3000,
            },
        ],
    )
    .unwrap();
    assert_eq!(read_all(&s, "o"), vec![2u8; 3000]);
    s.crash();
    let s = FileStore::open(d.path(), direct_cfg()).unwrap();

    assert_eq!(read_all(&s, "o"), vec![2u8; 3000]);
}

#[test]
fn test_checkpoint_drops_cached_handles_of_deleted_files() {
    let (_d, s) = new_store();
    run(&s, vec![write("o", 0, b"cached")]).unwrap();
    assert_eq!(read_all(&s, "o"), b"cached");
    assert_eq!(s.inner.fds.map.lock().len(), 1);

    run(&s, vec![TxOp::Remove(key("o"))]).unwrap();
    s.sync().unwrap();

    assert!(s.inner.fds.map.lock().is_empty());
}

#[test]
fn test_commit_then_runs_after_the_sync_that_covers_earlier_transactions() {
    let (d, s) = new_store_with(StoreConfig {
        commit_interval: Duration::from_secs(3600),
        ..StoreConfig::default()
    });
    run(&s, vec![write("o", 0, b"before the flush")]).unwrap();
    let (tx, rx) = channel();

    s.commit_then(Box::new(move |r| tx.send(r).unwrap()));

    rx.recv_timeout(WAIT).unwrap().unwrap();
    // Durable now: a power loss right after keeps it.
    s.crash_losing_unsynced().unwrap();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();
    assert_eq!(read_all(&s, "o"), b"before the flush");
    // Nothing left to commit: it runs at once.
    let (tx, rx) = channel();
    s.commit_then(Box::new(move |r| tx.send(r).unwrap()));
    assert!(rx.try_recv().unwrap().is_ok());
}

#[test]
fn test_power_loss_without_a_commit_loses_the_unsynced_tail_only() {
    let (d, s) = new_store_with(StoreConfig {
        commit_interval: Duration::from_secs(3600),
        ..StoreConfig::default()
    });
    run(&s, vec![write("o", 0, b"committed")]).unwrap();
    s.wait_committed().unwrap();
    run(
        &s,
        vec![TxOp::SetAttrs {
            key: key("o"),
            attrs: [("a".to_string(), Bytes::from_static(b"unflushed"))].into(),
        }],
    )
    .unwrap();

    s.crash_losing_unsynced().unwrap();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    assert_eq!(read_all(&s, "o"), b"committed");
    assert!(s.getattrs(&key("o")).unwrap().is_empty());
}

/// Bytes in all of the store's journal segments.
/// Bytes the store has appended to its journal since it was opened (not its
/// length on disk, which a checkpoint may cut at any time).
fn journal_len(s: &FileStore) -> u64 {
    s.inner.journal.lock().appended()
}

/// A store that takes overwrites of 4 KiB or more in place, with object
/// "o": 64 KiB of 1s.
fn store_with_64k_object() -> (tempfile::TempDir, Arc<FileStore>, StoreConfig) {
    let cfg = StoreConfig {
        direct_write_min: 4096,
        in_place_min: 4096,
        ..StoreConfig::default()
    };
    let (d, s) = new_store_with(cfg.clone());
    run(&s, vec![write("o", 0, &[1u8; 65536])]).unwrap();
    (d, s, cfg)
}

/// Journal bytes `ops` took.
fn journaled(s: &FileStore, ops: Vec<TxOp>) -> u64 {
    let start = journal_len(s);
    run(s, ops).unwrap();
    journal_len(s) - start
}

/// [`store_with_64k_object`], checkpointed: no record replay could apply
/// names the object's file.
fn checkpointed_64k_object() -> (tempfile::TempDir, Arc<FileStore>, StoreConfig) {
    let (d, s, cfg) = store_with_64k_object();
    s.sync().unwrap();
    (d, s, cfg)
}

/// The store as a kill -9 leaves it (page cache kept), opened again.
fn killed_and_reopened(s: &FileStore, dir: &Path, cfg: StoreConfig) -> Arc<FileStore> {
    s.crash();
    FileStore::open(dir, cfg).unwrap()
}

#[test]
fn test_large_overwrite_goes_in_place_over_journaled_overwrites_and_replay_keeps_it() {
    // Arrange: a 64 KiB object, checkpointed.
    let (d, s, cfg) = checkpointed_64k_object();

    // Act: small (journaled) overwrites, each followed by a large overwrite
    // covering some of it; then a kill.
    let mut sizes = Vec::new();
    run(&s, vec![write("o", 100, &[2u8; 200])]).unwrap();
    sizes.push(journaled(&s, vec![write("o", 0, &[3u8; 16384])]));
    run(&s, vec![write("o", 16000, &[4u8; 1000])]).unwrap();
    run(&s, vec![zero("o", 20000, 100)]).unwrap();
    sizes.push(journaled(&s, vec![write("o", 16384, &[5u8; 8192])]));
    let s = killed_and_reopened(&s, d.path(), cfg);

    // Assert: both large ones went in place (a record of a few dozen
    // bytes), and replay did not put the small ones' older bytes over
    // theirs: each byte is its last writer's.
    for n in sizes {
        assert!(
            n < 200,
            "an overwrite after a journaled one took {n} journal bytes"
        );
    }
    let mut want = vec![1u8; 65536];
    want[100..300].fill(2);
    want[..16384].fill(3);
    want[16000..17000].fill(4);
    want[20000..20100].fill(0);
    want[16384..24576].fill(5);
    assert!(read_all(&s, "o") == want, "content after replay differs");
}

#[test]
fn test_large_overwrite_after_a_growing_journaled_write_is_journaled_until_a_checkpoint() {
    // Arrange: a 64 KiB object, checkpointed, then grown by a small write.
    let (d, s, cfg) = checkpointed_64k_object();
    run(&s, vec![write("o", 65536, &[2u8; 100])]).unwrap();

    // Act: a large overwrite inside the new size, then a kill.
    let n = journaled(&s, vec![write("o", 60000, &[3u8; 5636])]);
    let s = killed_and_reopened(&s, d.path(), cfg);

    // Assert: it was journaled (replay cuts the file at the size it finds
    // first, 64 KiB, and would have taken in-place bytes past it), and
    // replay rebuilt both.
    assert!(
        n > 5636,
        "a write after a growing one took only {n} journal bytes"
    );
    let mut want = vec![1u8; 65636];
    want[60000..65636].fill(3);
    assert!(read_all(&s, "o") == want, "content after replay differs");
}

/// [`checkpointed_64k_object`], noting what unsynced writes replace, with
/// nothing committed unless the test asks.
fn checkpointed_64k_object_with_undo() -> (tempfile::TempDir, Arc<FileStore>, StoreConfig) {
    let cfg = StoreConfig {
        direct_write_min: 4096,
        in_place_min: 4096,
        undo_unsynced: true,
        commit_interval: Duration::from_secs(3600),
        ..StoreConfig::default()
    };
    let (d, s) = new_store_with(cfg.clone());
    run(&s, vec![write("o", 0, &[1u8; 65536])]).unwrap();
    s.sync().unwrap();
    (d, s, cfg)
}

/// The store after a power loss that kept its whole journal but no
/// unsynced byte of its object files, opened again.
fn data_lost_and_reopened(s: &FileStore, dir: &Path, cfg: StoreConfig) -> Arc<FileStore> {
    s.crash_losing_unsynced_data().unwrap();
    FileStore::open(dir, cfg).unwrap()
}

#[test]
fn test_unflushed_in_place_write_is_not_synced_and_a_power_loss_may_take_it_back() {
    // Arrange
    let (d, s, cfg) = checkpointed_64k_object_with_undo();

    // Act: a large overwrite (in place), never flushed; then a power loss
    // that keeps the journal and loses what the file was not synced with.
    let n = journaled(&s, vec![write("o", 0, &[3u8; 8192])]);
    let s = data_lost_and_reopened(&s, d.path(), cfg);

    // Assert: it went in place without a sync (its sync waits for a
    // commit), so it is gone; the store opens with the object as before.
    assert!(n < 200, "the overwrite took {n} journal bytes");
    assert!(
        read_all(&s, "o") == vec![1u8; 65536],
        "an unsynced in-place write survived the loss of its bytes"
    );
}

#[test]
fn test_commit_makes_in_place_writes_durable() {
    // Arrange
    let (d, s, cfg) = checkpointed_64k_object_with_undo();

    // Act: a large overwrite (in place), committed; then a power loss.
    let n = journaled(&s, vec![write("o", 0, &[3u8; 8192])]);
    s.wait_committed().unwrap();
    let s = data_lost_and_reopened(&s, d.path(), cfg);

    // Assert
    assert!(n < 200, "the overwrite took {n} journal bytes");
    let mut want = vec![1u8; 65536];
    want[..8192].fill(3);
    assert!(read_all(&s, "o") == want, "a committed write was lost");
}

#[test]
fn test_checkpoint_syncs_in_place_writes_before_it_reports_their_records_durable() {
    // Arrange: a large overwrite (in place, not synced), whose commit
    // callback counts the writes still unsynced when it runs.
    let (_d, s, _cfg) = checkpointed_64k_object_with_undo();
    let (tx, rx) = channel();
    let inner = s.inner.clone();
    s.queue_transaction(
        Transaction::from(vec![write("o", 0, &[3u8; 8192])]),
        Box::new(move |r| {
            let unsynced = inner.undo.as_ref().unwrap().lock().len();
            tx.send((r, unsynced)).unwrap();
        }),
        nop(),
    )
    .unwrap();

    // Act: a checkpoint, which makes the record durable first.
    s.sync().unwrap();

    // Assert
    let (r, unsynced) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    r.unwrap();
    assert_eq!(
        unsynced, 0,
        "a record was reported durable before its bytes"
    );
}

#[test]
fn test_in_place_write_over_committed_journaled_bytes_is_synced_before_its_record() {
    in_place_write_over_committed_journaled_step_is_synced_before_its_record(write(
        "o",
        100,
        &[2u8; 200],
    ));
}

#[test]
fn test_in_place_write_over_a_committed_journaled_zero_is_synced_before_its_record() {
    in_place_write_over_committed_journaled_step_is_synced_before_its_record(zero("o", 100, 200));
}

fn in_place_write_over_committed_journaled_step_is_synced_before_its_record(small: TxOp) {
    // Arrange: a small (journaled) overwrite, committed: its bytes are
    // durable in the journal only.
    let (d, s, cfg) = checkpointed_64k_object_with_undo();
    run(&s, vec![small]).unwrap();
    s.wait_committed().unwrap();

    // Act: a large overwrite covering it (in place), not flushed; then a
    // power loss that keeps its record but loses unsynced file bytes.
    let n = journaled(&s, vec![write("o", 0, &[3u8; 8192])]);
    let s = data_lost_and_reopened(&s, d.path(), cfg);

    // Assert: replay skips the small write's bytes under the large one,
    // so the large one's bytes must have been synced before its record:
    // else the committed small write would read as the bytes before it.
    assert!(n < 200, "the overwrite took {n} journal bytes");
    let mut want = vec![1u8; 65536];
    want[..8192].fill(3);
    assert!(
        read_all(&s, "o") == want,
        "a committed write went back to older bytes"
    );
}

#[test]
fn test_replica_and_full_try_transactions_may_use_part_of_the_reserve() {
    // Arrange: stores with 40 and with 6 MiB available, against a reserve
    // of 64: a replica's transaction needs half the reserve its primary's
    // does, a full-try one an eighth of it (a replica's copy a sixteenth).
    let store = |mib: u64| {
        new_store_with(StoreConfig {
            fake_available_bytes: Some(mib << 20),
            ..StoreConfig::default()
        })
    };
    let ((_d1, roomy), (_d2, tight)) = (store(40), store(6));
    let txn = |replica: bool, full_try: bool| Transaction {
        replica,
        full_try,
        ..Transaction::from(vec![write("o", 0, b"data")])
    };
    let fits = |s: &FileStore, replica, full_try| match s.queue_transaction(
        txn(replica, full_try),
        nop(),
        nop(),
    ) {
        Ok(()) => true,
        Err(StoreError::NoSpace { .. }) => false,
        Err(e) => panic!("{e}"),
    };

    // Act
    let at_40 = [
        fits(&roomy, false, false),
        fits(&roomy, true, false),
        fits(&roomy, false, true),
    ];
    let at_6 = [fits(&tight, false, true), fits(&tight, true, true)];

    // Assert
    assert_eq!(at_40, [false, true, true]);
    assert_eq!(at_6, [false, true]);
}

#[test]
fn test_large_overwrite_without_room_is_refused_and_changes_nothing() {
    // Arrange: a checkpointed 64 KiB object (eligible to be overwritten in
    // place), then a store with only the reserve left.
    let (d, s, cfg) = store_with_64k_object();
    s.close().unwrap();
    let s = FileStore::open(
        d.path(),
        StoreConfig {
            min_free_bytes: 1000,
            fake_available_bytes: Some(1010),
            ..cfg
        },
    )
    .unwrap();

    // Act
    let r = s.queue_transaction(
        Transaction::from(vec![write("o", 8192, &[2u8; 8192])]),
        nop(),
        nop(),
    );

    // Assert: refused, and the object's bytes are as before.
    assert!(matches!(r, Err(StoreError::NoSpace { .. })), "{r:?}");
    assert!(
        read_all(&s, "o") == vec![1u8; 65536],
        "a refused write changed the object"
    );
}

#[test]
fn test_cached_read_is_none_until_the_bytes_are_in_the_page_cache() {
    // Arrange: an object on disk, not in /dev/shm (tmpfs is all page cache).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    FileStore::mkfs(dir.path()).unwrap();
    let cfg = StoreConfig {
        direct_write_min: 4096,
        in_place_min: 4096,
        ..StoreConfig::default()
    };
    let s = FileStore::open(dir.path(), cfg).unwrap();
    run(&s, vec![TxOp::CreateCollection(COLL)]).unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    run(&s, vec![write("o", 0, &data)]).unwrap();
    let f = std::fs::File::open(s.object_file(&key("o")).unwrap()).unwrap();
    // Written back, so the advice below drops the pages (it only starts
    // the writeback of dirty ones, and keeps them).
    f.sync_data().unwrap();

    // Act / Assert: with its pages dropped, a cached read says it would
    // wait rather than block. The kernel starts the disk read before it
    // answers, and when that read is done at once (on a busy machine this
    // thread may be preempted in between) the answer is the bytes: so each
    // try may have them, right, but some try must say None. A read that
    // blocks never does.
    let mut missed = false;
    for _ in 0..2000 {
        // In the cache, clean and unlocked, then dropped.
        s.read(&key("o"), 0, 65536).unwrap();
        // SAFETY: posix_fadvise on a valid fd; advice only.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        match s.read_cached(&key("o"), 4096, 8192).unwrap() {
            None => {
                missed = true;
                break;
            }
            Some(got) => assert_eq!(&got[..], &data[4096..12288]),
        }
    }
    assert!(missed, "a cached read never missed with its pages dropped");

    // Act / Assert: a blocking read brings the bytes in; then the cached
    // read has them, short at the end.
    assert_eq!(&s.read(&key("o"), 0, 65536).unwrap()[..], &data[..]);
    let got = s.read_cached(&key("o"), 4096, 8192).unwrap();
    assert_eq!(got.as_deref(), Some(&data[4096..12288]));
    let tail = s.read_cached(&key("o"), 65536 - 100, 4096).unwrap();
    assert_eq!(tail.as_deref(), Some(&data[65536 - 100..]));
    s.close().unwrap();
}

/// Append records `seqs` (each touching object "o") to `j`.
fn append_touches(j: &mut JournalWriter, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let rec = codec::frame_record(
            seq,
            codec::encode_payload(&[Step::Op(TxOp::Touch(key("o")))]),
        );
        j.write(seq, 1, &rec.bufs).unwrap();
    }
}

/// Every record replay reads, and how it ended.
fn replayed(dir: &Path) -> (Vec<u64>, journal::ReplayEnd) {
    let mut seqs = Vec::new();
    let end = journal::replay(dir, |seq, _| {
        seqs.push(seq);
        Ok(())
    })
    .unwrap();
    (seqs, end)
}

#[test]
fn test_recycled_segment_replays_its_own_records_and_not_its_old_ones() {
    // Arrange: segment 1 (records 1..=200) trimmed into the spare, which the
    // next rotation makes segment 211: written over from its start.
    let d = scratch_dir();
    let mut j = JournalWriter::create(d.path(), 1).unwrap();
    append_touches(&mut j, 1..=200);
    assert_eq!(j.rotate().unwrap(), 201);
    append_touches(&mut j, 201..=210);
    j.trim(200).unwrap();
    assert_eq!(j.rotate().unwrap(), 211);
    j.trim(210).unwrap();
    let seg = journal::segment_path(d.path(), 211);
    let old_len = std::fs::metadata(&seg).unwrap().len();

    // Act / Assert: right after the reuse, the segment holds only old
    // records, and replay reads none of them.
    assert_eq!(replayed(d.path()), (vec![], journal::ReplayEnd::Clean));

    // Act / Assert: two records written over the old ones; the file keeps
    // its length (an overwrite), and replay reads exactly the two.
    append_touches(&mut j, 211..=212);
    j.file().sync_data().unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), old_len);
    assert_eq!(
        replayed(d.path()),
        (vec![211, 212], journal::ReplayEnd::Clean)
    );

    // Act / Assert: after a rotation, replay ends the closed segment at the
    // padding after its records, not at its old ones, and reads on into the
    // next segment.
    assert_eq!(j.rotate().unwrap(), 213);
    append_touches(&mut j, 213..=213);
    let want = vec![211, 212, 213];
    assert_eq!(replayed(d.path()), (want, journal::ReplayEnd::Clean));

    // Act / Assert: trimmed, it is the spare again with all its room: a
    // short use does not shrink what the next one can write over.
    j.trim(212).unwrap();
    let spare = std::fs::metadata(d.path().join("journal-spare")).unwrap();
    assert_eq!(spare.len(), old_len);
}

fn superblock_version(dir: &Path) -> u64 {
    let raw = std::fs::read(dir.join(SUPERBLOCK)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    v["version"].as_u64().unwrap()
}

fn set_superblock_version(dir: &Path, version: u32) {
    let sb = serde_json::json!({ "format": FORMAT_NAME, "version": version });
    std::fs::write(dir.join(SUPERBLOCK), sb.to_string()).unwrap();
}

#[test]
fn test_version_1_store_is_upgraded_on_open_and_a_newer_one_refused() {
    // Arrange: a store with data, its superblock at version 1.
    let (d, s) = new_store();
    run(&s, vec![write("o", 0, &[7u8; 100])]).unwrap();
    s.crash();
    set_superblock_version(d.path(), 1);

    // Act / Assert: it opens, replays, and says version 2 from then on.
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();
    assert_eq!(read_all(&s, "o"), vec![7u8; 100]);
    assert_eq!(superblock_version(d.path()), 2);
    s.close().unwrap();

    // Act / Assert: a version this build does not know is refused, and the
    // superblock is left as it was.
    set_superblock_version(d.path(), 3);
    let Err(e) = FileStore::open(d.path(), StoreConfig::default()) else {
        panic!("a version 3 store opened");
    };
    assert!(e.to_string().contains("format version 3"), "{e}");
    assert_eq!(superblock_version(d.path()), 3);
}

#[test]
fn test_overwrite_after_remove_and_recreate_in_one_transaction_survives_replay() {
    // Arrange: a checkpointed 64 KiB object, removed and written again in
    // one transaction: its new file is 16 KiB, smaller than the old object.
    let (d, s, cfg) = checkpointed_64k_object();
    run(
        &s,
        vec![
            TxOp::Remove(key("o")),
            TxOp::Touch(key("o")),
            write("o", 8192, &[2u8; 8192]),
        ],
    )
    .unwrap();

    // Act: a large overwrite of the new bytes, then a kill.
    run(&s, vec![write("o", 8192, &[3u8; 8192])]).unwrap();
    let s = killed_and_reopened(&s, d.path(), cfg);

    // Assert: the overwrite's bytes, not the first write's (replay starts
    // the recreated object at size 0, and would cut in-place bytes there).
    let mut want = vec![0u8; 16384];
    want[8192..].fill(3);
    assert!(read_all(&s, "o") == want, "content after replay differs");
}

#[test]
fn test_replay_ends_cleanly_where_records_end_near_a_page_end() {
    // Arrange: 54-byte records, 303 of them: the last ends 22 bytes short
    // of a page end, less than a record header.
    let d = scratch_dir();
    let mut j = JournalWriter::create(d.path(), 1).unwrap();
    append_touches(&mut j, 1..=303);
    assert_eq!(
        j.bytes() % 4096,
        4096 - 22,
        "record size changed; pick another count"
    );

    // Act / Assert: replay reads all of them and finds the padding, not a
    // torn record.
    let (seqs, end) = replayed(d.path());
    assert_eq!(seqs, (1..=303).collect::<Vec<u64>>());
    assert_eq!(end, journal::ReplayEnd::Clean);
}

#[test]
fn test_an_id_whose_file_outlived_a_lost_journal_tail_is_never_handed_out_again() {
    // Arrange: the next id's file exists, as when a record that created it
    // was lost with the journal's tail but the file's entry reached disk.
    let (d, s) = new_store();
    run(&s, vec![write("a", 0, b"snapshot data")]).unwrap();
    s.sync().unwrap();
    let next = s.inner.meta.read().next_id;
    s.crash();
    let stray = obj_path(d.path(), next);
    std::fs::write(&stray, b"stale bytes!!").unwrap();

    // Act: reopen (the sweep removes the stray file), clone `a`, then lose
    // power with the sweep's unlink undone: the stray file is back.
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();
    run(
        &s,
        vec![TxOp::Clone {
            from: key("a"),
            to: key("b"),
        }],
    )
    .unwrap();
    let clone_file = s.object_path(&key("b")).unwrap();
    s.crash();
    std::fs::write(&stray, b"stale bytes!!").unwrap();
    let s = FileStore::open(d.path(), StoreConfig::default()).unwrap();

    // Assert
    assert_ne!(clone_file, stray, "the stray file's id was handed out");
    assert_eq!(read_all(&s, "b"), b"snapshot data");
}

#[test]
fn test_a_reopened_store_keeps_room_for_two_snapshots_from_the_start() {
    // Arrange: a table of about 2 MiB (collection metadata), closed.
    let (d, s) = new_store();
    let big = "x".repeat(1 << 10);
    let entries: BTreeMap<String, Bytes> = (0..2048)
        .map(|i| (format!("log.{i:05}"), Bytes::from(big.clone())))
        .collect();
    run(
        &s,
        vec![TxOp::CollMetaSet {
            coll: COLL,
            entries,
        }],
    )
    .unwrap();
    s.close().unwrap();

    // Act: reopen with 3 MiB free against a 16 MiB reserve; a full-try
    // transaction may go down to 2 MiB (an eighth), but not below room for
    // two snapshots of this table.
    let s = FileStore::open(
        d.path(),
        StoreConfig {
            min_free_bytes: 16 << 20,
            fake_available_bytes: Some(3 << 20),
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let r = s.queue_transaction(
        Transaction {
            full_try: true,
            ..Transaction::from(vec![write("o", 0, b"x")])
        },
        nop(),
        nop(),
    );

    // Assert
    assert!(
        matches!(r, Err(StoreError::NoSpace { .. })),
        "took the room of the next snapshot: {r:?}"
    );
}

/// Segments 1 (records 1..=10, closed by a rotation) and 11 (11..=20).
fn two_segments() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = scratch_dir();
    let mut j = JournalWriter::create(d.path(), 1).unwrap();
    append_touches(&mut j, 1..=10);
    assert_eq!(j.rotate().unwrap(), 11);
    append_touches(&mut j, 11..=20);
    j.file().sync_data().unwrap();
    let first = journal::segment_path(d.path(), 1);
    (d, first)
}

fn replay_error(dir: &Path) -> String {
    match journal::replay(dir, |_, _| Ok(())) {
        Err(ReplayError::Damaged { why, .. }) => why,
        other => panic!("replay went on: {other:?}"),
    }
}

#[test]
fn test_damage_in_a_segment_a_later_one_follows_is_an_error_not_a_torn_tail() {
    // Arrange: a flipped byte in record 3 of the closed segment; record 8
    // on cut to zeros; and the same flip in the last segment.
    let (flipped, first) = two_segments();
    let raw = Bytes::from(std::fs::read(&first).unwrap());
    let recs = segment_records(&raw);
    let mut bytes = raw.to_vec();
    bytes[recs[2].1.end - 1] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let (cut, first) = two_segments();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[recs[7].1.start..].fill(0);
    std::fs::write(&first, &bytes).unwrap();
    let (torn, _) = two_segments();
    let last = journal::segment_path(torn.path(), 11);
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[recs[2].1.end - 1] ^= 0x40;
    std::fs::write(&last, &bytes).unwrap();

    // Act
    let flipped_why = replay_error(flipped.path());
    let cut_why = replay_error(cut.path());
    let (seqs, end) = replayed(torn.path());

    // Assert: the closed segment's damage stops the replay with an error;
    // the last segment's ends it, as a crash's torn tail would.
    assert!(!flipped_why.is_empty());
    assert!(
        cut_why.contains("starts at seq 11") && cut_why.contains("ends at 7"),
        "{cut_why}"
    );
    assert_eq!(seqs, (1..=12).collect::<Vec<u64>>());
    assert!(matches!(end, journal::ReplayEnd::Torn { .. }), "{end:?}");
}

#[test]
fn test_a_store_whose_closed_journal_segment_is_damaged_does_not_open() {
    // Arrange: writes on both sides of a rotation, committed; then a byte
    // of the closed segment's first record flipped.
    let (d, s) = new_store();
    s.sync().unwrap();
    run(&s, vec![write("o", 0, b"one")]).unwrap();
    s.inner.journal.lock().rotate().unwrap();
    run(&s, vec![write("o", 0, b"two")]).unwrap();
    s.commit_here().unwrap();
    s.crash();
    let (_, first) = journal::list_segments(d.path()).unwrap().remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    let recs = segment_records(&Bytes::from(bytes.clone()));
    bytes[recs[0].1.end - 1] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();

    // Act
    let r = FileStore::open(d.path(), StoreConfig::default());

    // Assert: refused, and the journal kept for whoever mends it.
    match r {
        Err(StoreError::Corrupt { ref why, .. }) => {
            assert!(why.contains("damaged"), "{why}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened without the records after the damage"),
    }
    assert_eq!(journal::list_segments(d.path()).unwrap().len(), 2);
}
