//! Clones: reads through chains, copyup, flatten (cancel/resume, deep,
//! concurrent writes), depth limit, copy-on-read.

use bytes::Bytes;

use super::{TEST_ORDER, assert_bytes, reopen, setup, setup_interleaved, test_config};
use crate::rbd::{
    CancelToken, CreateOptions, ImageSpec, NoProgress, ProgressSink, Rbd, RbdConfig, RbdError,
};
use crate::sync::{Arc, AtomicU64, Ordering};

const OBJ: u64 = 1 << TEST_ORDER;

fn opts() -> CreateOptions {
    CreateOptions::default()
}

fn spec(s: &str) -> ImageSpec {
    s.parse().unwrap()
}

/// Deterministic content distinct per (tag, position).
fn pattern(tag: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| tag.wrapping_mul(31).wrapping_add((i % 253) as u8))
        .collect()
}

/// Image `p` (4 objects of `pattern(tag)`), cloned as `c`, whose object 1
/// reads the parent whole at snapshot `c1` and half at `c2` (the clone shrank
/// to 1.5 objects and grew back between them): the head of `c`.
async fn clone_with_uneven_snapshots(rbd: &Arc<Rbd>, tag: u8) -> Arc<crate::rbd::Image> {
    rbd.create("rbd", "p", 4 * OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .write(0, Bytes::from(pattern(tag, 4 * OBJ)))
        .await
        .unwrap();
    snap_and_clone(rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    c.snap_create("c1").await.unwrap();
    c.resize(OBJ + OBJ / 2, true, &NoProgress).await.unwrap();
    c.resize(4 * OBJ, false, &NoProgress).await.unwrap();
    c.snap_create("c2").await.unwrap();
    c
}

/// [`clone_with_uneven_snapshots`] with c@c2 protected and cloned as `g`:
/// the head of `c`, and what `g` reads (object 1 half the parent's, the rest
/// zeros past it).
async fn clone_of_uneven_c2(rbd: &Arc<Rbd>) -> (Arc<crate::rbd::Image>, Vec<u8>) {
    let c = clone_with_uneven_snapshots(rbd, 16).await;
    c.snap_protect("c2").await.unwrap();
    rbd.clone_image(&spec("c@c2"), &spec("g"), &opts())
        .await
        .unwrap();
    let mut want = pattern(16, 4 * OBJ);
    want[(OBJ + OBJ / 2) as usize..].fill(0);
    (c, want)
}

/// Snapshot `name@s`, protect it and clone it as `child`.
async fn snap_and_clone(rbd: &Arc<Rbd>, name: &str, child: &str) {
    let img = rbd.open("rbd", name, None).await.unwrap();
    img.snap_create("s").await.unwrap();
    img.snap_protect("s").await.unwrap();
    rbd.clone_image(&spec(&format!("{name}@s")), &spec(child), &opts())
        .await
        .unwrap();
}

#[tokio::test]
async fn test_clone_reads_parent_data_and_write_copies_up_whole_object() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", 4 * OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    let pdata = pattern(1, 4 * OBJ);
    p.write(0, Bytes::from(pdata.clone())).await.unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    assert_eq!(c.du().await.unwrap().entries[0].used_size, 0);

    c.write(10, Bytes::from_static(b"new")).await.unwrap();

    let mut want = pdata.clone();
    want[10..13].copy_from_slice(b"new");
    assert_bytes(&c.read(0, 4 * OBJ).await.unwrap(), &want);
    assert_eq!(c.du().await.unwrap().entries[0].used_size, OBJ);
    assert_bytes(&p.read(0, 4 * OBJ).await.unwrap(), &pdata);
}

#[tokio::test]
async fn test_clone_depth_limit_is_enforced() {
    let (rbd, mem, _c) = setup().await;
    drop(rbd);
    let config = RbdConfig {
        max_clone_depth: 2,
        ..test_config()
    };
    let (rbd, _c) = reopen(&mem, config);
    rbd.create("rbd", "i0", OBJ, &opts()).await.unwrap();
    snap_and_clone(&rbd, "i0", "i1").await;
    snap_and_clone(&rbd, "i1", "i2").await;
    let i2 = rbd.open("rbd", "i2", None).await.unwrap();
    i2.snap_create("s").await.unwrap();
    i2.snap_protect("s").await.unwrap();

    let err = rbd
        .clone_image(&spec("i2@s"), &spec("i3"), &opts())
        .await
        .unwrap_err();

    assert_eq!(err, RbdError::CloneDepthExceeded { depth: 3, max: 2 });
    assert!(rbd.open("rbd", "i3", None).await.is_err());
}

#[tokio::test]
async fn test_read_through_16_deep_chain_costs_one_object_read_per_object() {
    let (rbd, _mem, counting) = setup().await;
    rbd.create("rbd", "i0", 8 * OBJ, &opts()).await.unwrap();
    let base = pattern(3, 8 * OBJ);
    rbd.open("rbd", "i0", None)
        .await
        .unwrap()
        .write(0, Bytes::from(base.clone()))
        .await
        .unwrap();
    for d in 0..16 {
        snap_and_clone(&rbd, &format!("i{d}"), &format!("i{}", d + 1)).await;
    }
    let leaf = rbd.open("rbd", "i16", None).await.unwrap();
    leaf.read(0, 1).await.unwrap(); // loads and caches the chain
    counting.reset();

    let data = leaf.read(0, 8 * OBJ).await.unwrap();

    assert_eq!(data, base);
    assert_eq!(counting.get("read:rbd_data"), 8, "one data read per object");
    assert_eq!(counting.get("read"), 8, "no header or map reads either");
}

#[tokio::test]
async fn test_flatten_skips_objects_absent_in_parent_without_io() {
    let (rbd, _mem, counting) = setup().await;
    rbd.create("rbd", "p", 32 * OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.write(5 * OBJ, Bytes::from(pattern(4, OBJ)))
        .await
        .unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    c.read(0, 1).await.unwrap();
    counting.reset();

    c.flatten(&NoProgress, &CancelToken::new()).await.unwrap();

    assert_eq!(
        counting.get("read:rbd_data"),
        1,
        "only the one parent object is read"
    );
    assert_eq!(
        counting.get("write:rbd_data"),
        1,
        "only one object is copied up"
    );
    assert_bytes(&c.read(5 * OBJ, OBJ).await.unwrap(), &pattern(4, OBJ));
    assert!(c.parent().is_none());
    assert_eq!(c.du().await.unwrap().entries[0].used_size, OBJ);
}

/// Cancels `token` once `after` objects are done.
struct CancelAfter {
    token: CancelToken,
    after: u64,
    last: AtomicU64,
}

impl ProgressSink for CancelAfter {
    fn update(&self, done: u64, _total: u64) {
        self.last.store(done, Ordering::SeqCst);
        if done >= self.after {
            self.token.cancel();
        }
    }
}

#[tokio::test]
async fn test_flatten_cancelled_part_way_then_resumed_completes() {
    let (rbd, _mem, counting) = setup().await;
    rbd.create("rbd", "p", 16 * OBJ, &opts()).await.unwrap();
    let pdata = pattern(5, 16 * OBJ);
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .write(0, Bytes::from(pdata.clone()))
        .await
        .unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    let sink = CancelAfter {
        token: CancelToken::new(),
        after: 5,
        last: AtomicU64::new(0),
    };

    let err = c.flatten(&sink, &sink.token).await.unwrap_err();

    assert_eq!(err, RbdError::Cancelled);
    assert_eq!(err.errno(), crate::rbd::ERESTART);
    assert!(
        c.parent().is_some(),
        "still a clone after a cancelled flatten"
    );
    let copied = c.du().await.unwrap().entries[0].used_size / OBJ;
    assert!(
        (5..16).contains(&copied),
        "copied {copied} objects before stopping"
    );
    assert_bytes(&c.read(0, 16 * OBJ).await.unwrap(), &pdata);

    counting.reset();
    c.flatten(&NoProgress, &CancelToken::new()).await.unwrap();

    assert_eq!(
        counting.get("write:rbd_data"),
        16 - copied,
        "done objects are skipped"
    );
    assert!(c.parent().is_none());
    assert_bytes(&c.read(0, 16 * OBJ).await.unwrap(), &pdata);
}

#[tokio::test]
async fn test_deep_flatten_frees_snapshots_and_parent_snapshot_can_go() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", 4 * OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    let pdata = pattern(6, 4 * OBJ);
    p.write(0, Bytes::from(pdata.clone())).await.unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    c.snap_create("cs").await.unwrap();
    c.write(OBJ, Bytes::from_static(b"after")).await.unwrap();

    c.flatten(&NoProgress, &CancelToken::new()).await.unwrap();
    assert!(rbd.children(&spec("p@s")).await.unwrap().is_empty());
    p.snap_unprotect("s").await.unwrap();
    p.snap_remove("s").await.unwrap();
    p.write(0, Bytes::from(vec![0xee; 4 * OBJ as usize]))
        .await
        .unwrap();

    let cs = rbd.open("rbd", "c", Some("cs")).await.unwrap();
    assert!(cs.parent().is_none());
    assert_bytes(&cs.read(0, 4 * OBJ).await.unwrap(), &pdata);
    let mut want = pdata.clone();
    want[OBJ as usize..OBJ as usize + 5].copy_from_slice(b"after");
    assert_bytes(&c.read(0, 4 * OBJ).await.unwrap(), &want);
}

/// Flatten's copyups are slowed down so that user writes to the same objects,
/// started at the same time, get in first: none of them may be overwritten
/// with parent data (the object lock or the exclusive-create guard stops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_flatten_with_concurrent_writes_loses_no_write() {
    let (rbd, _mem) = setup_interleaved(1, 200).await;
    let n = 32;
    rbd.create("rbd", "p", n * OBJ, &opts()).await.unwrap();
    let pdata = pattern(7, n * OBJ);
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .write(0, Bytes::from(pdata.clone()))
        .await
        .unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();

    let flattener = {
        let c = c.clone();
        tokio::spawn(async move { c.flatten(&NoProgress, &CancelToken::new()).await })
    };
    let mut writers = Vec::new();
    for o in 0..n {
        let c = c.clone();
        writers.push(tokio::spawn(async move {
            c.write(o * OBJ + 100, Bytes::from(vec![0xa0; 50])).await
        }));
    }
    flattener.await.unwrap().unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }

    let mut want = pdata.clone();
    for o in 0..n {
        let at = (o * OBJ + 100) as usize;
        want[at..at + 50].fill(0xa0);
    }
    assert!(c.parent().is_none());
    let got = c.read(0, n * OBJ).await.unwrap();
    let lost: Vec<u64> = (0..n)
        .filter(|o| got[(o * OBJ + 100) as usize] != 0xa0)
        .collect();
    assert!(lost.is_empty(), "writes lost in objects {lost:?}");
    assert_eq!(got, want);
}

#[tokio::test]
async fn test_export_of_clone_of_clone_equals_read_after_flatten() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 8 * OBJ, &opts()).await.unwrap();
    let mut model = vec![0u8; 8 * OBJ as usize];
    let a = rbd.open("rbd", "a", None).await.unwrap();
    a.write(OBJ / 2, Bytes::from(pattern(8, 3 * OBJ)))
        .await
        .unwrap();
    model[(OBJ / 2) as usize..(OBJ / 2 + 3 * OBJ) as usize].copy_from_slice(&pattern(8, 3 * OBJ));
    snap_and_clone(&rbd, "a", "b").await;
    let b = rbd.open("rbd", "b", None).await.unwrap();
    b.write(5 * OBJ, Bytes::from(pattern(9, OBJ)))
        .await
        .unwrap();
    model[(5 * OBJ) as usize..(6 * OBJ) as usize].copy_from_slice(&pattern(9, OBJ));
    b.discard(OBJ, OBJ).await.unwrap();
    model[OBJ as usize..(2 * OBJ) as usize].fill(0);
    snap_and_clone(&rbd, "b", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    c.write(3 * OBJ - 7, Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    model[(3 * OBJ - 7) as usize..(3 * OBJ + 3) as usize].copy_from_slice(b"0123456789");

    let export = c.read(0, c.size()).await.unwrap();
    c.flatten(&NoProgress, &CancelToken::new()).await.unwrap();
    let flat = c.read(0, c.size()).await.unwrap();

    assert_eq!(export, model);
    assert_eq!(flat, model);
}

#[tokio::test]
async fn test_copy_on_read_copies_up_on_head_read_only() {
    let (rbd, mem, _c) = setup().await;
    rbd.create("rbd", "p", 4 * OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .write(0, Bytes::from(pattern(10, 4 * OBJ)))
        .await
        .unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    drop(rbd);
    let config = RbdConfig {
        clone_copy_on_read: true,
        ..test_config()
    };
    let (rbd, _c) = reopen(&mem, config);
    let c = rbd.open("rbd", "c", None).await.unwrap();

    let data = c.read(OBJ, 10).await.unwrap();

    assert_eq!(data, pattern(10, 4 * OBJ)[OBJ as usize..OBJ as usize + 10]);
    assert_eq!(c.du().await.unwrap().entries[0].used_size, OBJ);
}

#[tokio::test]
async fn test_copy_on_read_does_not_copy_up_on_read_only_open() {
    let (rbd, mem, _c) = setup().await;
    rbd.create("rbd", "p", 4 * OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .write(0, Bytes::from(pattern(11, 4 * OBJ)))
        .await
        .unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    drop(rbd);
    let config = RbdConfig {
        clone_copy_on_read: true,
        ..test_config()
    };
    let (rbd, _c) = reopen(&mem, config);
    let c = rbd.open_read_only("rbd", "c").await.unwrap();

    let data = c.read(0, 4 * OBJ).await.unwrap();

    assert_eq!(data, pattern(11, 4 * OBJ));
    assert_eq!(c.du().await.unwrap().entries[0].used_size, 0);
    let err = c.write(0, Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
    assert!(rbd.is_open("rbd", "c"));
}

#[tokio::test]
async fn test_shrinking_clone_shrinks_overlap_and_regrow_reads_zeros() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", 4 * OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .write(0, Bytes::from(vec![5u8; 4 * OBJ as usize]))
        .await
        .unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();

    c.resize(OBJ + 10, true, &NoProgress).await.unwrap();
    c.resize(4 * OBJ, false, &NoProgress).await.unwrap();

    assert_eq!(c.parent().unwrap().overlap, OBJ + 10);
    let data = c.read(0, 4 * OBJ).await.unwrap();
    assert!(data[..(OBJ + 10) as usize].iter().all(|&b| b == 5));
    assert!(data[(OBJ + 10) as usize..].iter().all(|&b| b == 0));
}

/// Writers keep rewriting their own region with a growing counter while
/// snapshots are taken: every snapshot must show, per region, one whole write
/// (no torn region), and counters may only grow from one snapshot to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_snapshots_taken_during_writes_are_point_in_time_per_region() {
    let (rbd, _mem) = setup_interleaved(3, 0).await;
    let writers = 4u64;
    let rounds = 40u8;
    rbd.create("rbd", "a", writers * OBJ, &opts())
        .await
        .unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();

    let mut tasks = Vec::new();
    for w in 0..writers {
        let img = img.clone();
        tasks.push(tokio::spawn(async move {
            for v in 1..=rounds {
                img.write(w * OBJ + 64, Bytes::from(vec![v; 512])).await?;
            }
            Ok::<(), RbdError>(())
        }));
    }
    for s in 0..6 {
        img.snap_create(&format!("s{s}")).await.unwrap();
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    let mut last = vec![0u8; writers as usize];
    for s in 0..6 {
        let snap = rbd.open("rbd", "a", Some(&format!("s{s}"))).await.unwrap();
        for w in 0..writers {
            let region = snap.read(w * OBJ + 64, 512).await.unwrap();
            let v = region[0];
            assert!(region.iter().all(|&b| b == v), "torn region {w} in s{s}");
            assert!(
                v >= last[w as usize],
                "region {w} went back in time at s{s}"
            );
            last[w as usize] = v;
        }
    }
    let head = img.read(0, writers * OBJ).await.unwrap();
    for w in 0..writers {
        assert_eq!(head[(w * OBJ + 64) as usize], rounds);
    }
}

/// An open leaf keeps its parent chain cached; when the middle image is
/// flattened and the grandparent snapshot it used goes away, the leaf must
/// not read through the stale chain.
#[tokio::test]
async fn test_open_leaf_reads_right_after_middle_flatten_and_grandparent_snap_removal() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "g", 2 * OBJ, &opts()).await.unwrap();
    let g = rbd.open("rbd", "g", None).await.unwrap();
    g.write(0, Bytes::from(pattern(12, 2 * OBJ))).await.unwrap();
    snap_and_clone(&rbd, "g", "p").await;
    snap_and_clone(&rbd, "p", "l").await;
    let l = rbd.open("rbd", "l", None).await.unwrap();
    assert_bytes(&l.read(0, 2 * OBJ).await.unwrap(), &pattern(12, 2 * OBJ));
    let p = rbd.open("rbd", "p", None).await.unwrap();

    p.flatten(&NoProgress, &CancelToken::new()).await.unwrap();
    g.snap_unprotect("s").await.unwrap();
    g.snap_remove("s").await.unwrap();

    assert_bytes(&l.read(0, 2 * OBJ).await.unwrap(), &pattern(12, 2 * OBJ));
}

#[tokio::test]
async fn test_clone_into_another_pool_reads_lists_and_flattens() {
    let (rbd, _mem, _c) = setup().await;
    rbd.rados().pool_create("other", None).await.unwrap();
    rbd.create("rbd", "p", 2 * OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .write(0, Bytes::from(pattern(13, 2 * OBJ)))
        .await
        .unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.snap_create("s").await.unwrap();
    p.snap_protect("s").await.unwrap();

    rbd.clone_image(&spec("rbd/p@s"), &spec("other/c"), &opts())
        .await
        .unwrap();

    assert_eq!(
        rbd.children(&spec("rbd/p@s")).await.unwrap(),
        vec![spec("other/c")]
    );
    let c = rbd.open("other", "c", None).await.unwrap();
    assert_eq!(c.parent().unwrap().pool, "rbd");
    assert_bytes(&c.read(0, 2 * OBJ).await.unwrap(), &pattern(13, 2 * OBJ));
    c.flatten(&NoProgress, &CancelToken::new()).await.unwrap();
    p.snap_unprotect("s").await.unwrap();
    assert_bytes(&c.read(0, 2 * OBJ).await.unwrap(), &pattern(13, 2 * OBJ));
}

/// What the crash-anywhere test interrupts.
#[derive(Clone, Copy, Debug)]
enum Interrupted {
    Flatten,
    /// A write into the object the snapshots need different parts of.
    Write,
}

/// A clone whose snapshots need different parts of the parent (a snapshot
/// taken before a shrink needs whole parent objects, one after it only up to
/// the shrunk overlap) has a deep flatten or a write interrupted by a crash at
/// every possible object request in turn, restarts and runs it again: every
/// snapshot and the head must read as one complete run leaves them.
async fn crash_anywhere_with_uneven_snapshot_overlaps(what: Interrupted) {
    let mut k = 0;
    loop {
        let (rbd, mem, counting) = setup().await;
        let c = clone_with_uneven_snapshots(&rbd, 14).await;
        let want_c1 = pattern(14, 4 * OBJ);
        let mut want_c2 = pattern(14, 4 * OBJ);
        want_c2[(OBJ + OBJ / 2) as usize..].fill(0);
        let mut want_head = want_c2.clone();
        let run = |c: Arc<crate::rbd::Image>| async move {
            match what {
                Interrupted::Flatten => c.flatten(&NoProgress, &CancelToken::new()).await,
                Interrupted::Write => c.write(OBJ + 10, Bytes::from_static(b"w")).await,
            }
        };
        if let Interrupted::Write = what {
            want_head[(OBJ + 10) as usize] = b'w';
        }

        counting.crash_after(k);
        let interrupted = run(c.clone()).await;
        counting.crash_after(-1);
        drop(c);
        let (rbd, _c) = reopen(&mem, test_config());
        let c = rbd.open("rbd", "c", None).await.unwrap();
        match run(c).await {
            Ok(()) | Err(RbdError::NoParent) => {}
            Err(e) => panic!("crash after {k} requests: running again failed: {e}"),
        }

        for (snap, want) in [
            (Some("c1"), &want_c1),
            (Some("c2"), &want_c2),
            (None, &want_head),
        ] {
            let h = rbd.open("rbd", "c", snap).await.unwrap();
            let got = h.read(0, 4 * OBJ).await.unwrap();
            if got != want[..] {
                let first = got.iter().zip(want.iter()).position(|(a, b)| a != b);
                panic!("{what:?}, crash after {k} requests: c@{snap:?} differs at {first:?}");
            }
        }
        if interrupted.is_ok() {
            break;
        }
        k += 1;
    }
}

#[tokio::test]
async fn test_deep_flatten_with_uneven_snapshot_overlaps_survives_a_crash_anywhere() {
    crash_anywhere_with_uneven_snapshot_overlaps(Interrupted::Flatten).await;
}

#[tokio::test]
async fn test_clone_write_with_uneven_snapshot_overlaps_survives_a_crash_anywhere() {
    crash_anywhere_with_uneven_snapshot_overlaps(Interrupted::Write).await;
}

/// Reads racing a copyup of several writes (snapshots with uneven overlaps)
/// see the object before or after the write, never an intermediate step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_reads_during_multi_write_copyup_see_before_or_after() {
    // Each history step of the copyup is held until the readers have read a
    // few times, so they run while the object holds an intermediate step.
    let mem: Arc<dyn crate::rados::RadosBackend> = Arc::new(crate::rados::mem::MemRados::new());
    let rados = crate::rados::Rados::new(super::Counting::holding_copyups(mem, 1, 6));
    rados.pool_create("rbd", None).await.unwrap();
    let rbd = crate::rbd::Rbd::new(rados, test_config());
    let c = clone_with_uneven_snapshots(&rbd, 15).await;
    let mut before = pattern(15, 4 * OBJ)[OBJ as usize..2 * OBJ as usize].to_vec();
    before[(OBJ / 2) as usize..].fill(0);
    let mut after = before.clone();
    after[10] = b'w';

    let done = Arc::new(crate::sync::AtomicBool::new(false));
    let started = Arc::new(tokio::sync::Barrier::new(4));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (c, done, started) = (c.clone(), done.clone(), started.clone());
        let (before, after) = (before.clone(), after.clone());
        readers.push(tokio::spawn(async move {
            let mut first = true;
            while first || !done.load(Ordering::SeqCst) {
                let got = c.read(OBJ, OBJ).await.unwrap();
                assert!(
                    got == before[..] || got == after[..],
                    "read an intermediate state"
                );
                if first {
                    started.wait().await;
                    first = false;
                }
            }
        }));
    }
    started.wait().await;
    c.write(OBJ + 10, Bytes::from_static(b"w")).await.unwrap();
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }

    assert_bytes(&c.read(OBJ, OBJ).await.unwrap(), &after);
}

#[tokio::test]
async fn test_unprotect_racing_a_clone_never_leaves_the_clone_unprotected() {
    // Each store op yields, so the clone's and the unprotect's steps
    // interleave; the unprotect starts `lag` yields after the clone.
    for lag in 0..24u32 {
        // Arrange
        let (rbd, _mem) = setup_interleaved(3, 0).await;
        rbd.create("rbd", "p", 4 * OBJ, &opts()).await.unwrap();
        let img = rbd.open("rbd", "p", None).await.unwrap();
        img.snap_create("s").await.unwrap();
        img.snap_protect("s").await.unwrap();

        // Act
        let (parent, child, o) = (spec("p@s"), spec("c"), opts());
        let clone = rbd.clone_image(&parent, &child, &o);
        let unprotect = async {
            for _ in 0..lag {
                tokio::task::yield_now().await;
            }
            img.snap_unprotect("s").await
        };
        let (cloned, unprotected) = tokio::join!(clone, unprotect);

        // Assert: one of them lost.
        assert!(
            cloned.is_err() || unprotected.is_err(),
            "lag {lag}: the clone was made and its snapshot unprotected"
        );
        if cloned.is_ok() {
            assert!(matches!(unprotected, Err(RbdError::HasClones(_))));
        }
    }
}

#[tokio::test]
async fn test_discard_past_the_heads_overlap_inside_a_snapshots_overlap() {
    // Arrange: a clone whose snapshot s1 still reads the parent's object 1,
    // while the head's overlap ends before it (shrunk, then grown).
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", 2 * OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.write(OBJ, Bytes::from(pattern(5, OBJ))).await.unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    c.snap_create("s1").await.unwrap();
    c.resize(OBJ, true, &NoProgress).await.unwrap();
    c.resize(2 * OBJ, false, &NoProgress).await.unwrap();

    // Act: discard the whole of object 1 (blkdiscard, mkfs's discard).
    let discarded = c.discard(OBJ, OBJ).await;

    // Assert: the head reads zeros, s1 still the parent's bytes.
    discarded.unwrap();
    assert_bytes(&c.read(OBJ, OBJ).await.unwrap(), &vec![0u8; OBJ as usize]);
    let s1 = rbd.open("rbd", "c", Some("s1")).await.unwrap();
    assert_bytes(&s1.read(OBJ, OBJ).await.unwrap(), &pattern(5, OBJ));
}

#[tokio::test]
async fn test_whole_object_discard_of_a_fresh_clone_copies_nothing_up() {
    // Arrange: a fresh clone of a parent with data in both objects.
    let (rbd, _mem, counting) = setup().await;
    rbd.create("rbd", "p", 2 * OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.write(0, Bytes::from(pattern(7, 2 * OBJ))).await.unwrap();
    snap_and_clone(&rbd, "p", "c").await;
    let c = rbd.open("rbd", "c", None).await.unwrap();
    let parent_reads = counting.get("read:rbd_data");

    // Act: discard all of object 1 (fstrim, blkdiscard), then part of 0.
    c.discard(OBJ, OBJ).await.unwrap();
    let after_whole = counting.get("read:rbd_data");
    c.discard(0, 100).await.unwrap();

    // Assert: object 1 reads zeros and was not read from the parent;
    // object 0 was copied up, then cut; the parent is as it was.
    assert_eq!(after_whole, parent_reads, "object 1 was copied up");
    assert!(
        counting.get("read:rbd_data") > after_whole,
        "object 0 was not"
    );
    let mut want = pattern(7, 2 * OBJ);
    want[..100].fill(0);
    want[OBJ as usize..].fill(0);
    assert_bytes(&c.read(0, 2 * OBJ).await.unwrap(), &want);
    let ps = rbd.open("rbd", "p", Some("s")).await.unwrap();
    assert_bytes(&ps.read(0, 2 * OBJ).await.unwrap(), &pattern(7, 2 * OBJ));
}

#[tokio::test]
async fn test_rollback_to_a_larger_snapshot_interrupted_anywhere_leaves_no_stale_data() {
    // Shrunk to a whole object, and into the middle of the next one.
    for keep in [0, 100] {
        rollback_interrupted_anywhere(keep).await;
    }
}

/// For every point a crash can stop a rollback to a snapshot larger than
/// the head: reopen, grow the image back and write into the object the
/// rollback restores. What reads back is the snapshot's data (the rollback
/// got that far and says so in the size) or what the head had (`keep`
/// bytes of object 1, then zeros), never old data under a size that hid it.
async fn rollback_interrupted_anywhere(keep: u64) {
    let mut k = 0;
    loop {
        // Arrange: object 1 written, snapshot s1, shrunk.
        let (rbd, mem, counting) = setup().await;
        rbd.create("rbd", "a", 2 * OBJ, &opts()).await.unwrap();
        let a = rbd.open("rbd", "a", None).await.unwrap();
        a.write(OBJ, Bytes::from(pattern(6, OBJ))).await.unwrap();
        a.snap_create("s1").await.unwrap();
        a.resize(OBJ + keep, true, &NoProgress).await.unwrap();

        // Act
        counting.crash_after(k);
        let rolled = a.snap_rollback("s1", &NoProgress).await;
        counting.crash_after(-1);
        drop(a);
        let (rbd, _c) = reopen(&mem, test_config());
        let a = rbd.open("rbd", "a", None).await.unwrap();
        let grown_by_rollback = a.size() == 2 * OBJ;
        a.resize(2 * OBJ, false, &NoProgress).await.unwrap();
        a.write(OBJ + 10, Bytes::from_static(b"new")).await.unwrap();

        // Assert
        let got = a.read(OBJ, OBJ).await.unwrap();
        let mut head = vec![0u8; OBJ as usize];
        head[..keep as usize].copy_from_slice(&pattern(6, OBJ)[..keep as usize]);
        head[10..13].copy_from_slice(b"new");
        let mut snap = pattern(6, OBJ);
        snap[10..13].copy_from_slice(b"new");
        assert!(
            got[..] == head[..] || (grown_by_rollback && got[..] == snap[..]),
            "keep {keep}, crash after {k} requests: object 1 holds old data"
        );
        if rolled.is_ok() {
            break;
        }
        k += 1;
    }
}

#[tokio::test]
async fn test_snap_rm_after_an_interrupted_copyup_keeps_the_other_snapshots_content() {
    // For every point an I/O error can stop a clone write whose copyup
    // fills two snapshots with different content, then `snap rm` of the
    // first: the second still reads what it did.
    let mut k = 0;
    loop {
        // Arrange: object 1 of the clone reads the parent whole at c1 and
        // half at c2 (it shrank and grew between them).
        let (rbd, _mem, counting) = setup().await;
        let c = clone_with_uneven_snapshots(&rbd, 14).await;
        let mut want_c2 = pattern(14, 4 * OBJ);
        want_c2[(OBJ + OBJ / 2) as usize..].fill(0);

        // Act
        counting.crash_after(k);
        let written = c.write(OBJ + 10, Bytes::from_static(b"w")).await;
        counting.crash_after(-1);
        c.snap_remove("c1").await.unwrap();

        // Assert
        let c2 = rbd.open("rbd", "c", Some("c2")).await.unwrap();
        let got = c2.read(0, 4 * OBJ).await.unwrap();
        if got != want_c2[..] {
            let first = got.iter().zip(want_c2.iter()).position(|(a, b)| a != b);
            panic!("stopped after {k} requests: c@c2 differs at {first:?}");
        }
        if written.is_ok() {
            break;
        }
        k += 1;
    }
}

#[tokio::test]
async fn test_clone_of_a_snapshot_reads_it_whole_after_a_crash_stopped_the_parents_copyup() {
    // For every point a crash can stop a write into `c` whose copyup fills
    // c1 and c2 with different content: after a restart, a clone of c@c2,
    // opened without opening `c`, reads what c@c2 holds, never c1's content
    // that `c`'s object 1 has between the copyup's writes.
    let mut k = 0;
    loop {
        // Arrange: `g` clones c@c2, whose object 1 reads the parent half.
        let (rbd, mem, counting) = setup().await;
        let (c, want) = clone_of_uneven_c2(&rbd).await;

        // Act
        counting.crash_after(k);
        let written = c.write(OBJ + 10, Bytes::from_static(b"w")).await;
        counting.crash_after(-1);
        drop(c);
        let (rbd, _c) = reopen(&mem, test_config());
        let g = rbd.open("rbd", "g", None).await.unwrap();
        let got = g.read(0, 4 * OBJ).await.unwrap();

        // Assert
        if got != want[..] {
            let first = got.iter().zip(want.iter()).position(|(a, b)| a != b);
            panic!("crash after {k} requests: g differs at {first:?}");
        }
        if written.is_ok() {
            break;
        }
        k += 1;
    }
}

#[tokio::test]
async fn test_an_open_clone_never_reads_its_parents_copyup_an_io_error_stopped() {
    // For every point an I/O error can stop a write into `c` whose copyup
    // fills c1 and c2 with different content: `g`, a clone of c@c2 already
    // open with its chain loaded, then reads what c@c2 holds (its cached
    // maps of `c` predate the copyup, so it reads through to `p`; a chain
    // loaded again settles the copyup first).
    let mut k = 0;
    loop {
        // Arrange
        let (rbd, _mem, counting) = setup().await;
        let (c, want) = clone_of_uneven_c2(&rbd).await;
        let g = rbd.open("rbd", "g", None).await.unwrap();
        assert_bytes(&g.read(0, 4 * OBJ).await.unwrap(), &want);

        // Act
        counting.crash_after(k);
        let written = c.write(OBJ + 10, Bytes::from_static(b"w")).await;
        counting.crash_after(-1);
        let got = g.read(0, 4 * OBJ).await.unwrap();

        // Assert
        if got != want[..] {
            let first = got.iter().zip(want.iter()).position(|(a, b)| a != b);
            panic!("error after {k} requests: g differs at {first:?}");
        }
        if written.is_ok() {
            break;
        }
        k += 1;
    }
}

/// A store where a crash stopped a write into `c` (of
/// `clone_with_uneven_snapshots`) between its copyup's writes: its header
/// holds the copyup's intent.
async fn store_with_a_crashed_copyup() -> Arc<dyn crate::rados::RadosBackend> {
    for k in 0.. {
        let (rbd, mem, counting) = setup().await;
        let c = clone_with_uneven_snapshots(&rbd, 16).await;
        counting.crash_after(k);
        let written = c.write(OBJ + 10, Bytes::from_static(b"w")).await;
        counting.crash_after(-1);
        assert!(written.is_err(), "no crash point left an intent");
        let header = crate::rbd::image::names::header_oid(c.id());
        let omap = rbd
            .rados()
            .ioctx("rbd")
            .unwrap()
            .omap_get_all(&header)
            .await;
        if omap.unwrap().keys().any(|k| k.starts_with("copyup.")) {
            return mem;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn test_two_opens_at_once_settle_a_crashed_copyup_once() {
    // Arrange: the same crashed copyup, twice, each store yielding before
    // every operation so that opens at once interleave.
    let reopen = |store| {
        let counting = super::Counting::with_yields(store, 2, 0);
        let rados = crate::rados::Rados::new(counting.clone());
        (Rbd::new(rados, test_config()), counting)
    };
    let (one, counting_one) = reopen(store_with_a_crashed_copyup().await);
    let (two, counting_two) = reopen(store_with_a_crashed_copyup().await);

    // Act: one open on the first store, two at once on the second.
    let _c = one.open("rbd", "c", None).await.unwrap();
    let (a, b) = tokio::join!(two.open("rbd", "c", None), two.open("rbd", "c", None));

    // Assert: settling writes; the second open waited for the first and
    // found nothing left to settle.
    let (_a, _b) = (a.unwrap(), b.unwrap());
    assert!(counting_one.get("write") > 0);
    assert_eq!(counting_two.get("write"), counting_one.get("write"));
}
