//! One behaviour per test: data path, snapshots, errors, O(1) snapshot create.

use bytes::Bytes;

use super::model::{read_either, write_either};
use super::{TEST_ORDER, assert_bytes, reopen, setup, test_config};
use crate::rbd::{CancelToken, CreateOptions, ImageSpec, NoProgress, RbdError};

const OBJ: u64 = 1 << TEST_ORDER;

fn opts() -> CreateOptions {
    CreateOptions::default()
}

fn spec(s: &str) -> ImageSpec {
    s.parse().unwrap()
}

#[tokio::test]
async fn test_image_new_reads_zeros_and_stores_nothing() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 10 * OBJ, &opts()).await.unwrap();

    let img = rbd.open("rbd", "a", None).await.unwrap();

    assert_bytes(
        &img.read(0, 10 * OBJ).await.unwrap(),
        &vec![0u8; 10 * OBJ as usize],
    );
    assert_eq!(img.du().await.unwrap().entries[0].used_size, 0);
}

#[tokio::test]
async fn test_image_write_across_objects_reads_back() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 10 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    let data: Vec<u8> = (0..3 * OBJ + 17).map(|i| (i % 251) as u8).collect();

    img.write(OBJ - 5, Bytes::from(data.clone())).await.unwrap();

    assert_bytes(&img.read(OBJ - 5, data.len() as u64).await.unwrap(), &data);
    assert_eq!(img.du().await.unwrap().entries[0].used_size, 5 * OBJ);
}

#[tokio::test]
async fn test_image_read_is_clamped_at_end() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 1000, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();

    assert_eq!(img.read(990, 100).await.unwrap().len(), 10);
    assert!(img.read(2000, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn test_image_write_past_end_is_einval() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 1000, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();

    let err = img.write(999, Bytes::from_static(b"xy")).await.unwrap_err();

    assert_eq!(err.errno(), libc::EINVAL);
}

#[tokio::test]
async fn test_image_write_to_snapshot_is_erofs() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "a", None)
        .await
        .unwrap()
        .snap_create("s")
        .await
        .unwrap();
    let snap = rbd.open("rbd", "a", Some("s")).await.unwrap();

    let err = snap.write(0, Bytes::from_static(b"x")).await.unwrap_err();

    assert_eq!(err.errno(), libc::EROFS);
    let err = snap
        .flatten(&NoProgress, &CancelToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
}

#[tokio::test]
async fn test_snapshot_keeps_old_content_after_head_write() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(0, Bytes::from(vec![1u8; 2 * OBJ as usize]))
        .await
        .unwrap();
    img.snap_create("s").await.unwrap();

    img.write(10, Bytes::from(vec![2u8; OBJ as usize]))
        .await
        .unwrap();

    let snap = rbd.open("rbd", "a", Some("s")).await.unwrap();
    assert_bytes(
        &snap.read(0, 2 * OBJ).await.unwrap(),
        &vec![1u8; 2 * OBJ as usize],
    );
    assert_eq!(img.read(10, 1).await.unwrap()[0], 2);
}

#[tokio::test]
async fn test_snap_create_issues_constant_object_ops_whatever_the_size() {
    let mut ops = Vec::new();
    for objects in [4u64, 400] {
        let (rbd, _mem, counting) = setup().await;
        rbd.create("rbd", "a", objects * OBJ, &opts())
            .await
            .unwrap();
        let img = rbd.open("rbd", "a", None).await.unwrap();
        for o in 0..objects {
            img.write(o * OBJ, Bytes::from_static(b"x")).await.unwrap();
        }
        counting.reset();

        img.snap_create("s").await.unwrap();

        ops.push(counting.get("read") + counting.get("write") + counting.get("snap_create"));
    }
    assert_eq!(
        ops[0], ops[1],
        "snap create cost depends on image size: {ops:?}"
    );
    assert!(ops[0] <= 4, "snap create issued {} object ops", ops[0]);
}

#[tokio::test]
async fn test_remove_with_snapshots_is_refused_enotempty() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    {
        let img = rbd.open("rbd", "a", None).await.unwrap();
        img.snap_create("s").await.unwrap();
    }

    let err = rbd.remove("rbd", "a", &NoProgress).await.unwrap_err();

    assert_eq!(err, RbdError::HasSnapshots);
    assert_eq!(err.errno(), libc::ENOTEMPTY);
    assert!(err.to_string().contains("snap rm"), "{err}");
    assert_eq!(rbd.list("rbd").await.unwrap(), vec!["a".to_string()]);
}

#[tokio::test]
async fn test_remove_of_open_image_is_ebusy() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    let _img = rbd.open("rbd", "a", None).await.unwrap();

    let err = rbd.remove("rbd", "a", &NoProgress).await.unwrap_err();

    assert_eq!(err.errno(), libc::EBUSY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_remove_waits_out_an_image_held_open_for_a_moment() {
    // Arrange: the image held open (a stat) and let go 50 ms later.
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    let holder = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(img);
    });

    // Act
    let removed = rbd.remove("rbd", "a", &NoProgress).await;

    // Assert
    holder.await.unwrap();
    removed.unwrap();
    assert!(rbd.list("rbd").await.unwrap().is_empty());
}

#[tokio::test]
async fn test_remove_deletes_every_object_of_the_image() {
    let (rbd, mem, _c) = setup().await;
    rbd.create("rbd", "a", 8 * OBJ, &opts()).await.unwrap();
    {
        let img = rbd.open("rbd", "a", None).await.unwrap();
        img.write(0, Bytes::from(vec![7u8; 5 * OBJ as usize]))
            .await
            .unwrap();
    }

    rbd.remove("rbd", "a", &NoProgress).await.unwrap();

    let left = mem.list_objects(1).await.unwrap();
    assert!(
        left.iter().all(|o| o == "rbd_directory"),
        "objects left behind: {left:?}"
    );
    assert!(rbd.list("rbd").await.unwrap().is_empty());
}

#[tokio::test]
async fn test_shrink_without_flag_is_refused_and_changes_nothing() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();

    let err = img.resize(OBJ, false, &NoProgress).await.unwrap_err();

    assert_eq!(err, RbdError::ShrinkNotAllowed);
    assert_eq!(img.size(), 4 * OBJ);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_racing_growths_all_succeed_and_the_largest_wins() {
    // Arrange: one image, opened by each of 16 tasks (as FUSE writes past
    // the end arrive at once).
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    let img = std::sync::Arc::new(rbd.open("rbd", "a", None).await.unwrap());

    // Act
    let tasks: Vec<_> = (1..=16u64)
        .map(|i| {
            let img = img.clone();
            tokio::spawn(async move { img.grow_to((i * 7 % 16 + 2) * OBJ).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }

    // Assert: none was refused as a shrink.
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(img.size(), 17 * OBJ);
}

#[tokio::test]
async fn test_shrink_then_grow_reads_zeros_past_old_end() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(0, Bytes::from(vec![9u8; 4 * OBJ as usize]))
        .await
        .unwrap();

    img.resize(OBJ + 100, true, &NoProgress).await.unwrap();
    img.resize(4 * OBJ, false, &NoProgress).await.unwrap();

    let data = img.read(0, 4 * OBJ).await.unwrap();
    assert!(data[..(OBJ + 100) as usize].iter().all(|&b| b == 9));
    assert!(data[(OBJ + 100) as usize..].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn test_clone_of_unprotected_snapshot_is_einval() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "p", None)
        .await
        .unwrap()
        .snap_create("s")
        .await
        .unwrap();

    let err = rbd
        .clone_image(&spec("p@s"), &spec("c"), &opts())
        .await
        .unwrap_err();

    assert!(matches!(err, RbdError::ParentNotProtected(_)), "{err}");
    assert_eq!(err.errno(), libc::EINVAL);
}

#[tokio::test]
async fn test_clone_without_snapshot_name_is_einval() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", OBJ, &opts()).await.unwrap();

    let err = rbd
        .clone_image(&spec("p"), &spec("c"), &opts())
        .await
        .unwrap_err();

    assert_eq!(err, RbdError::SnapNameMissing);
}

#[tokio::test]
async fn test_flatten_of_non_clone_is_einval_no_parent() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "p", None).await.unwrap();

    let err = img
        .flatten(&NoProgress, &CancelToken::new())
        .await
        .unwrap_err();

    assert_eq!(err, RbdError::NoParent);
    assert_eq!(err.errno(), libc::EINVAL);
    assert_eq!(err.to_string(), "image has no parent");
}

#[tokio::test]
async fn test_unprotect_with_clones_is_ebusy_naming_them() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.snap_create("s").await.unwrap();
    p.snap_protect("s").await.unwrap();
    rbd.clone_image(&spec("p@s"), &spec("child1"), &opts())
        .await
        .unwrap();
    rbd.clone_image(&spec("p@s"), &spec("child2"), &opts())
        .await
        .unwrap();

    let err = p.snap_unprotect("s").await.unwrap_err();

    assert_eq!(err.errno(), libc::EBUSY);
    assert_eq!(
        err,
        RbdError::HasClones(vec!["rbd/child1".into(), "rbd/child2".into()])
    );
    assert!(err.to_string().contains("rbd/child1, rbd/child2"), "{err}");
}

#[tokio::test]
async fn test_protect_twice_is_ebusy_and_unprotect_twice_is_einval() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.snap_create("s").await.unwrap();
    p.snap_protect("s").await.unwrap();

    assert_eq!(p.snap_protect("s").await.unwrap_err().errno(), libc::EBUSY);
    p.snap_unprotect("s").await.unwrap();
    assert_eq!(
        p.snap_unprotect("s").await.unwrap_err().errno(),
        libc::EINVAL
    );
}

#[tokio::test]
async fn test_remove_protected_snapshot_is_ebusy() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.snap_create("s").await.unwrap();
    p.snap_protect("s").await.unwrap();

    let err = p.snap_remove("s").await.unwrap_err();

    assert_eq!(err.errno(), libc::EBUSY);
    assert_eq!(p.snap_list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn test_create_existing_name_is_eexist() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();

    let err = rbd.create("rbd", "a", OBJ, &opts()).await.unwrap_err();

    assert_eq!(err.errno(), libc::EEXIST);
}

#[tokio::test]
async fn test_open_missing_image_is_enoent() {
    let (rbd, _mem, _c) = setup().await;

    let err = rbd.open("rbd", "nosuch", None).await.err().unwrap();

    assert_eq!(err.errno(), libc::ENOENT);
}

#[tokio::test]
async fn test_rename_moves_the_name_and_keeps_the_data() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "a", None)
        .await
        .unwrap()
        .write(0, Bytes::from_static(b"hi"))
        .await
        .unwrap();

    rbd.rename("rbd", "a", "b").await.unwrap();

    assert_eq!(rbd.list("rbd").await.unwrap(), vec!["b".to_string()]);
    let img = rbd.open("rbd", "b", None).await.unwrap();
    assert_bytes(&img.read(0, 2).await.unwrap(), b"hi");
    assert!(rbd.open("rbd", "a", None).await.is_err());
}

#[tokio::test]
async fn test_reopen_from_objects_sees_everything() {
    let (rbd, mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    {
        let img = rbd.open("rbd", "a", None).await.unwrap();
        img.write(5, Bytes::from_static(b"abc")).await.unwrap();
        img.snap_create("s").await.unwrap();
        img.snap_protect("s").await.unwrap();
        img.write(5, Bytes::from_static(b"XYZ")).await.unwrap();
    }
    drop(rbd);

    let (rbd, _c) = reopen(&mem, test_config());

    let img = rbd.open("rbd", "a", None).await.unwrap();
    let snap = rbd.open("rbd", "a", Some("s")).await.unwrap();
    assert_bytes(&img.read(5, 3).await.unwrap(), b"XYZ");
    assert_bytes(&snap.read(5, 3).await.unwrap(), b"abc");
    assert!(img.snap_list().await.unwrap()[0].protected);
}

#[tokio::test]
async fn test_rollback_makes_head_identical_to_snapshot() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(0, Bytes::from(vec![1u8; OBJ as usize]))
        .await
        .unwrap();
    img.snap_create("s").await.unwrap();
    img.write(2 * OBJ, Bytes::from(vec![2u8; OBJ as usize]))
        .await
        .unwrap();
    img.resize(8 * OBJ, false, &NoProgress).await.unwrap();

    img.snap_rollback("s", &NoProgress).await.unwrap();

    let snap = rbd.open("rbd", "a", Some("s")).await.unwrap();
    assert_eq!(img.size(), 4 * OBJ);
    assert_bytes(
        &img.read(0, 4 * OBJ).await.unwrap(),
        &snap.read(0, 4 * OBJ).await.unwrap(),
    );
}

#[tokio::test]
async fn test_object_map_rebuild_restores_a_lost_map() {
    let (rbd, mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(OBJ, Bytes::from_static(b"q")).await.unwrap();
    let map_oid = crate::rbd::image::names::object_map_oid(img.id(), crate::rados::SNAP_HEAD);
    crate::rbd::object_map::ObjectMap::new(4)
        .save(&rbd.rados().ioctx("rbd").unwrap(), &map_oid)
        .await
        .unwrap();
    drop(img);
    let (rbd, _c) = reopen(&mem, test_config());
    let img = rbd.open("rbd", "a", None).await.unwrap();
    assert_eq!(
        img.read(OBJ, 1).await.unwrap()[0],
        0,
        "lost map hides the object"
    );

    img.object_map_rebuild().await.unwrap();

    assert_bytes(&img.read(OBJ, 1).await.unwrap(), b"q");
}

#[tokio::test]
async fn test_data_extents_report_written_objects_only() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 8 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(2 * OBJ + 1, Bytes::from(vec![1u8; OBJ as usize]))
        .await
        .unwrap();

    let ext = img.data_extents(0, 8 * OBJ).await.unwrap();

    assert_eq!(ext, vec![(2 * OBJ, 2 * OBJ)]);
}

#[tokio::test]
async fn test_forwarded_request_retried_with_same_id_runs_once() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    let id = img.new_request_id();
    let op = crate::rbd::ManagementOp::SnapCreate { name: "s".into() };

    img.execute(id, &op, &NoProgress, &CancelToken::new())
        .await
        .unwrap();
    let again = img.execute(id, &op, &NoProgress, &CancelToken::new()).await;

    assert!(
        again.is_ok(),
        "a retry gets the first answer, not EEXIST: {again:?}"
    );
    assert_eq!(img.snap_list().await.unwrap().len(), 1);
    let fresh = img
        .execute(img.new_request_id(), &op, &NoProgress, &CancelToken::new())
        .await;
    assert_eq!(fresh.unwrap_err().errno(), libc::EEXIST);
}

#[tokio::test]
async fn test_open_with_missing_object_map_still_reads_everything() {
    let (rbd, mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(2 * OBJ, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    let map_oid = crate::rbd::image::names::object_map_oid(img.id(), crate::rados::SNAP_HEAD);
    let ioctx = rbd.rados().ioctx("rbd").unwrap();
    ioctx
        .remove(&map_oid, &crate::rados::SnapContext::empty())
        .await
        .unwrap();
    drop(img);
    let (rbd, _c) = reopen(&mem, test_config());

    let img = rbd.open("rbd", "a", None).await.unwrap();

    assert_bytes(&img.read(2 * OBJ, 4).await.unwrap(), b"kept");
    img.write(0, Bytes::from_static(b"new")).await.unwrap();
    img.object_map_rebuild().await.unwrap();
    assert_eq!(img.du().await.unwrap().entries[0].used_size, 2 * OBJ);
}

#[tokio::test]
async fn test_info_of_fresh_clone_names_its_parent_and_overlap() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "p", 3 * OBJ, &opts()).await.unwrap();
    let p = rbd.open("rbd", "p", None).await.unwrap();
    p.snap_create("s1").await.unwrap();
    p.snap_protect("s1").await.unwrap();
    rbd.clone_image(&spec("p@s1"), &spec("c"), &opts())
        .await
        .unwrap();

    let info = rbd
        .open("rbd", "c", None)
        .await
        .unwrap()
        .info()
        .await
        .unwrap();

    let parent = info.parent.expect("a clone has a parent");
    assert_eq!(
        (
            parent.pool.as_str(),
            parent.image.as_str(),
            parent.snap.as_str()
        ),
        ("rbd", "p", "s1")
    );
    assert_eq!(parent.overlap, 3 * OBJ);
    assert_eq!(info.size, 3 * OBJ);
    assert_eq!(info.objects, 3);
    assert_eq!(info.block_name_prefix, format!("rbd_data.{}", info.id));
}

#[tokio::test]
async fn test_create_or_grow_beyond_max_objects_is_einval() {
    let (rbd, _mem, _c) = setup().await;

    let err = rbd
        .create("rbd", "huge", u64::MAX, &opts())
        .await
        .unwrap_err();

    assert_eq!(err.errno(), libc::EINVAL);
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    let err = img.resize(u64::MAX, false, &NoProgress).await.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert_eq!(img.size(), OBJ);
}

#[tokio::test]
async fn test_create_after_crash_mid_create_cleans_up_and_succeeds() {
    let (rbd, mem, counting) = setup().await;
    counting.crash_after(1); // rbd_id.<name> is claimed, the header write fails
    assert!(rbd.create("rbd", "a", OBJ, &opts()).await.is_err());
    counting.crash_after(-1);
    let (rbd, _c) = reopen(&mem, test_config());
    assert!(rbd.list("rbd").await.unwrap().is_empty());

    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();

    assert_eq!(rbd.list("rbd").await.unwrap(), vec!["a".to_string()]);
    assert_eq!(rbd.open("rbd", "a", None).await.unwrap().size(), OBJ);
}

#[tokio::test]
async fn test_old_name_left_by_crashed_rename_neither_opens_nor_removes_the_image() {
    let (rbd, mem, counting) = setup().await;
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    rbd.open("rbd", "a", None)
        .await
        .unwrap()
        .write(0, Bytes::from_static(b"data"))
        .await
        .unwrap();
    // rename: read rbd_id.a, read the directory, claim rbd_id.b, switch the
    // directory; the crash hits the removal of rbd_id.a.
    counting.crash_after(4);
    assert!(rbd.rename("rbd", "a", "b").await.is_err());
    counting.crash_after(-1);
    let (rbd, _c) = reopen(&mem, test_config());

    assert_eq!(rbd.list("rbd").await.unwrap(), vec!["b".to_string()]);
    assert_eq!(
        rbd.open("rbd", "a", None).await.err().unwrap().errno(),
        libc::ENOENT
    );
    assert_eq!(
        rbd.remove("rbd", "a", &NoProgress)
            .await
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert_bytes(
        &rbd.open("rbd", "b", None)
            .await
            .unwrap()
            .read(0, 4)
            .await
            .unwrap(),
        b"data",
    );
    rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
    assert_eq!(
        rbd.list("rbd").await.unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
}

#[tokio::test]
async fn test_du_reports_per_snapshot_deltas_like_fast_diff() {
    let (rbd, _mem, _c) = setup().await;
    rbd.create("rbd", "a", 8 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(0, Bytes::from(vec![1u8; 2 * OBJ as usize]))
        .await
        .unwrap();
    img.snap_create("s1").await.unwrap();
    img.write(OBJ, Bytes::from(vec![2u8; 2 * OBJ as usize]))
        .await
        .unwrap();
    img.snap_create("s2").await.unwrap();
    img.write(7 * OBJ, Bytes::from_static(b"z")).await.unwrap();

    let du = img.du().await.unwrap();

    let used: Vec<u64> = du.entries.iter().map(|e| e.used_size / OBJ).collect();
    // s1: objects 0 and 1 are new; s2: 1 and 2 changed; head: 7 changed.
    assert_eq!(used, vec![2, 2, 1]);
    assert!(du.entries.iter().all(|e| e.provisioned_size == 8 * OBJ));
}

/// The FUSE daemon and the admin socket run image calls on tokio tasks: every
/// public future must be `Send` (this fails to compile otherwise).
#[test]
fn test_public_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (rbd, _mem, _c) = setup().await;
        rbd.create("rbd", "a", OBJ, &opts()).await.unwrap();
        let img = rbd.open("rbd", "a", None).await.unwrap();
        let (p, c) = (NoProgress, CancelToken::new());
        send(&img.read(0, 1));
        send(&img.write(0, Bytes::new()));
        send(&img.discard(0, 1));
        send(&img.write_zeroes(0, 1));
        send(&img.flush());
        send(&img.resize(OBJ, false, &p));
        send(&img.snap_create("s"));
        send(&img.snap_remove("s"));
        send(&img.snap_protect("s"));
        send(&img.snap_unprotect("s"));
        send(&img.snap_rollback("s", &p));
        send(&img.flatten(&p, &c));
        send(&img.du());
        send(&img.info());
        send(&img.data_extents(0, 1));
        send(&img.object_map_rebuild());
        send(&rbd.create("rbd", "b", OBJ, &opts()));
        send(&rbd.open("rbd", "a", None));
        send(&rbd.remove("rbd", "a", &p));
        send(&rbd.rename("rbd", "a", "b"));
        send(&rbd.clone_image(&spec("a@s"), &spec("c"), &opts()));
        send(&rbd.children(&spec("a@s")));
        send(&rbd.list("rbd"));
        send(&rbd.open_read_only("rbd", "a"));
        send(&rbd.open_spec(&spec("a")));
        let op = crate::rbd::ManagementOp::Flatten;
        send(&img.execute(img.new_request_id(), &op, &p, &c));
        send(&rbd.execute(&spec("a"), img.new_request_id(), &op, &p, &c));
    });
}

/// Holds every data-object write until `n` of them are waiting, then lets
/// them all through: writes that the image layer serialises never meet.
struct Rendezvous {
    inner: std::sync::Arc<dyn crate::rados::RadosBackend>,
    barrier: std::sync::Arc<tokio::sync::Barrier>,
    armed: std::sync::atomic::AtomicBool,
}

impl crate::rados::RadosBackend for Rendezvous {
    fn read(
        &self,
        pool: crate::rados::PoolId,
        oid: &str,
        snap: crate::rados::SnapId,
        ops: Vec<crate::rados::ReadOp>,
    ) -> crate::rados::BoxFuture<'static, crate::rados::Result<Vec<crate::rados::ReadResult>>> {
        self.inner.read(pool, oid, snap, ops)
    }

    fn write(
        &self,
        pool: crate::rados::PoolId,
        oid: &str,
        snapc: crate::rados::SnapContext,
        ops: Vec<crate::rados::WriteOp>,
    ) -> crate::rados::BoxFuture<'static, crate::rados::Result<()>> {
        let held =
            oid.starts_with("rbd_data.") && self.armed.load(std::sync::atomic::Ordering::SeqCst);
        let barrier = self.barrier.clone();
        let inner = self.inner.clone();
        let oid = oid.to_string();
        Box::pin(async move {
            if held {
                barrier.wait().await;
            }
            inner.write(pool, &oid, snapc, ops).await
        })
    }

    fn flush(&self) -> crate::rados::BoxFuture<'static, crate::rados::Result<()>> {
        self.inner.flush()
    }

    fn list_objects(
        &self,
        pool: crate::rados::PoolId,
    ) -> crate::rados::BoxFuture<'static, crate::rados::Result<Vec<String>>> {
        self.inner.list_objects(pool)
    }

    fn snap_create(
        &self,
        pool: crate::rados::PoolId,
    ) -> crate::rados::BoxFuture<'static, crate::rados::Result<crate::rados::SnapId>> {
        self.inner.snap_create(pool)
    }

    fn snap_remove(
        &self,
        pool: crate::rados::PoolId,
        snap: crate::rados::SnapId,
    ) -> crate::rados::BoxFuture<'static, crate::rados::Result<()>> {
        self.inner.snap_remove(pool, snap)
    }

    fn pool_create(
        &self,
        name: &str,
        size: Option<u32>,
        min_size: Option<u32>,
        pg_num: Option<u32>,
    ) -> crate::rados::BoxFuture<'static, crate::rados::Result<crate::rados::PoolInfo>> {
        self.inner.pool_create(name, size, min_size, pg_num)
    }

    fn pool_list(&self) -> crate::rados::Result<Vec<crate::rados::PoolInfo>> {
        self.inner.pool_list()
    }
}

#[tokio::test]
async fn test_image_writes_to_one_existing_object_overlap() {
    // Arrange: an image whose object 0 exists, on a backend that holds data
    // writes until two are in flight at once.
    let backend = std::sync::Arc::new(Rendezvous {
        inner: std::sync::Arc::new(crate::rados::mem::MemRados::new()),
        barrier: std::sync::Arc::new(tokio::sync::Barrier::new(2)),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let rados = crate::rados::Rados::new(backend.clone());
    rados.pool_create("rbd", None).await.unwrap();
    let rbd = crate::rbd::Rbd::new(rados, test_config());
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    img.write(0, Bytes::from(vec![1u8; 512])).await.unwrap();
    backend
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // Act: two writes to different ranges of object 0.
    let both = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(
            img.write(0, Bytes::from(vec![2u8; 512])),
            img.write(1024, Bytes::from(vec![3u8; 512])),
        )
    })
    .await
    .expect("the second write never reached the object store while the first was in flight");

    // Assert
    both.0.unwrap();
    both.1.unwrap();
    backend
        .armed
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut want = vec![2u8; 512];
    want.extend_from_slice(&[0u8; 512]);
    want.extend_from_slice(&[3u8; 512]);
    assert_bytes(&img.read(0, 1536).await.unwrap(), &want);
}

#[tokio::test]
async fn test_reads_and_writes_of_the_head_stamp_its_access_and_modify_times() {
    // Arrange: an image with data and a snapshot, whose saved stamps are
    // old, opened again.
    let (rbd, mem, _c) = setup().await;
    rbd.create("rbd", "a", 4 * OBJ, &opts()).await.unwrap();
    let img = rbd.open("rbd", "a", None).await.unwrap();
    let created = img.info().await.unwrap().create_timestamp;
    assert_eq!(img.timestamps(), (created, created, created));
    img.write(0, Bytes::from(vec![1u8; OBJ as usize]))
        .await
        .unwrap();
    img.snap_create("s").await.unwrap();
    img.write(0, Bytes::from(vec![2u8; OBJ as usize]))
        .await
        .unwrap();
    let ioctx = rbd.rados().ioctx("rbd").unwrap();
    crate::rbd::image::stamps::save_for_test(&ioctx, img.id(), 1000, 1000).await;
    drop(img);
    let (rbd, _c) = reopen(&mem, test_config());
    let t0 = crate::rbd::image::now_secs();

    // Act: reads of the snapshot and of a read-only open, then a read and
    // a write of the head, each as the FUSE adapter issues them.
    let snap = rbd.open("rbd", "a", Some("s")).await.unwrap();
    read_either(&snap, 0, 4096, true).await.unwrap();
    let ro = rbd.open_read_only("rbd", "a").await.unwrap();
    read_either(&ro, 0, 4096, true).await.unwrap();
    let untouched = ro.timestamps();
    let head = rbd.open("rbd", "a", None).await.unwrap();
    read_either(&head, 0, 4096, true).await.unwrap();
    write_either(&head, 10, Bytes::from_static(b"x"), true)
        .await
        .unwrap();

    // Assert: only the head's read and write stamp it, and the stamps are
    // saved.
    assert_eq!(untouched, (created, 1000, 1000));
    let (_, accessed, modified) = head.timestamps();
    assert!(accessed >= t0 && modified >= t0, "{:?}", head.timestamps());
    drop((snap, ro, head));
    let (rbd, _c) = reopen(&mem, test_config());
    let info = rbd
        .open("rbd", "a", None)
        .await
        .unwrap()
        .info()
        .await
        .unwrap();
    assert_eq!(info.create_timestamp, created);
    assert_eq!(
        (info.access_timestamp, info.modify_timestamp),
        (accessed, modified)
    );
}
