//! Tests of [`ImageFs`] without a mount, on the in-memory object layer.

use std::ffi::OsStr;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::rados::Rados;
use crate::rados::mem::MemRados;
use crate::rbd::RbdConfig;

const MIB: u64 = 1 << 20;

async fn fs() -> ImageFs {
    let rados = Rados::new(Arc::new(MemRados::new()));
    rados.pool_create("rbd", Some(3)).await.unwrap();
    let rbd = Rbd::new(rados, RbdConfig::default());
    ImageFs::new(rbd, FsOptions::default())
}

async fn pool_ino(fs: &ImageFs) -> u64 {
    fs.lookup(ROOT_INO, OsStr::new("rbd")).await.unwrap().ino
}

/// An image `name` of `size` bytes, created through the filesystem; its inode.
async fn image(fs: &ImageFs, name: &str, size: u64) -> u64 {
    let pool = pool_ino(fs).await;
    let (attr, fh) = fs
        .create(pool, OsStr::new(name), libc::O_RDWR, Opener::of_pid(0))
        .await
        .unwrap();
    fs.release(fh);
    fs.setattr(attr.ino, Some(size), None, None).await.unwrap();
    attr.ino
}

async fn lookup(fs: &ImageFs, name: &str) -> FsResult<Attr> {
    let pool = pool_ino(fs).await;
    fs.lookup(pool, OsStr::new(name)).await
}

async fn write(fs: &ImageFs, ino: u64, off: u64, data: &[u8]) {
    let fh = fs.open(ino, libc::O_RDWR, Opener::of_pid(0)).await.unwrap();
    fs.write(fh, off, Bytes::copy_from_slice(data))
        .await
        .unwrap();
    fs.fsync(fh).await.unwrap();
    fs.release(fh);
}

async fn read(fs: &ImageFs, ino: u64, off: u64, len: u32) -> Vec<u8> {
    let fh = fs
        .open(ino, libc::O_RDONLY, Opener::of_pid(0))
        .await
        .unwrap();
    let d = fs.read(fh, off, len).await.unwrap();
    fs.release(fh);
    d.to_vec()
}

/// Image `base` (8 MiB, "golden" at 1 MiB), its snapshot `s1`, protected
/// and cloned through the xattrs to `child`: the inodes of `base` and
/// `base@s1`.
async fn cloned_base(fs: &ImageFs) -> (u64, u64) {
    let ino = image(fs, "base", 8 * MIB).await;
    write(fs, ino, MIB, b"golden").await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    let snap = lookup(fs, "base@s1").await.unwrap().ino;
    fs.setxattr(snap, "user.rbd.protected", b"1").await.unwrap();
    fs.setxattr(snap, "user.rbd.clone", b"rbd/child")
        .await
        .unwrap();
    (ino, snap)
}

fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[tokio::test]
async fn test_readdir_lists_images_and_snapshots_made_behind_the_mount() {
    // Arrange: images and a snapshot made through the image layer directly.
    let fs = fs().await;
    let pool = pool_ino(&fs).await;
    let opts = CreateOptions::default();
    fs.rbd().create("rbd", "a", MIB, &opts).await.unwrap();
    fs.rbd().create("rbd", "b", MIB, &opts).await.unwrap();
    let a = fs.rbd().open("rbd", "a", None).await.unwrap();
    a.snap_create("s1").await.unwrap();

    // Act
    let names: Vec<String> = fs
        .readdir(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();

    // Assert
    assert_eq!(names, [".", "..", "a", "a@s1", "b"]);
}

#[tokio::test]
async fn test_a_files_times_are_its_images_stamps() {
    // Arrange: an image whose saved stamps say it was last read at 1000
    // and written at 2000, and a snapshot of it.
    let fs = fs().await;
    let rbd = fs.rbd().clone();
    rbd.create("rbd", "vm", MIB, &Default::default())
        .await
        .unwrap();
    let img = rbd.open("rbd", "vm", None).await.unwrap();
    img.snap_create("s").await.unwrap();
    let created = img.info().await.unwrap().create_timestamp;
    let ioctx = rbd.rados().ioctx("rbd").unwrap();
    crate::rbd::image::stamps::save_for_test(&ioctx, img.id(), 1000, 2000).await;
    drop(img);
    let at = |n: u64| std::time::UNIX_EPOCH + Duration::from_secs(n);

    // Act
    let before = lookup(&fs, "vm").await.unwrap();
    let snap = lookup(&fs, "vm@s").await.unwrap();
    write(&fs, before.ino, 0, b"x").await;
    let after = fs.getattr(before.ino).await.unwrap();

    // Assert
    assert_eq!((before.atime, before.mtime), (at(1000), at(2000)));
    assert_eq!(before.crtime, at(created));
    assert!(after.mtime >= at(created), "{:?}", after.mtime);
    assert_eq!(snap.mtime, snap.crtime);
    assert!(snap.crtime >= at(created));
}

#[tokio::test]
async fn test_create_then_truncate_sizes_the_image() {
    let fs = fs().await;

    let ino = image(&fs, "vm", 64 * MIB).await;

    let attr = fs.getattr(ino).await.unwrap();
    assert_eq!(attr.size, 64 * MIB);
    assert_eq!(attr.kind, Kind::File);
    assert_eq!(
        fs.rbd().open("rbd", "vm", None).await.unwrap().size(),
        64 * MIB
    );
}

#[tokio::test]
async fn test_read_is_clamped_at_end_of_image() {
    let fs = fs().await;
    let ino = image(&fs, "vm", 8192).await;
    write(&fs, ino, 4096, &[7u8; 4096]).await;

    let tail = read(&fs, ino, 6000, 1 << 20).await;
    let past = read(&fs, ino, 8192, 4096).await;

    assert_eq!(tail, vec![7u8; 8192 - 6000]);
    assert!(past.is_empty());
}

#[tokio::test]
async fn test_write_past_end_grows_image() {
    let fs = fs().await;
    let ino = image(&fs, "vm", 0).await;

    write(&fs, ino, 4096, b"hello").await;

    assert_eq!(fs.getattr(ino).await.unwrap().size, 4101);
    assert_eq!(read(&fs, ino, 4096, 5).await, b"hello");
}

#[tokio::test]
async fn test_blocks_count_allocated_space_in_512_byte_units() {
    let fs = fs().await;
    let ino = image(&fs, "vm", 64 * MIB).await;
    assert_eq!(fs.getattr(ino).await.unwrap().blocks, 0);

    write(&fs, ino, 0, &[1u8; 4096]).await;

    // One 4 MiB object now exists.
    assert_eq!(fs.getattr(ino).await.unwrap().blocks, (4 * MIB) / 512);
}

#[tokio::test]
async fn test_snapshot_file_is_read_only_and_keeps_old_content() {
    // Arrange
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;
    write(&fs, ino, 0, b"before").await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    write(&fs, ino, 0, b"after!").await;

    // Act
    let snap = lookup(&fs, "vm@s1").await.unwrap();

    // Assert
    assert_eq!(snap.perm, 0o444);
    assert_eq!(read(&fs, snap.ino, 0, 6).await, b"before");
    assert_eq!(read(&fs, ino, 0, 6).await, b"after!");
    assert_eq!(
        errno(fs.open(snap.ino, libc::O_WRONLY, Opener::of_pid(0)).await),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.setattr(snap.ino, Some(0), None, None).await),
        libc::EROFS
    );
}

#[tokio::test]
async fn test_fallocate_punch_hole_discards_and_zero_range_zeroes() {
    // Arrange: two objects with data.
    let fs = fs().await;
    let ino = image(&fs, "vm", 16 * MIB).await;
    write(&fs, ino, 0, &[9u8; 8 << 20]).await;
    let fh = fs.open(ino, libc::O_RDWR, Opener::of_pid(0)).await.unwrap();

    // Act
    let punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    fs.fallocate(fh, 0, 4 * MIB, punch).await.unwrap();
    let zero = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    fs.fallocate(fh, 4 * MIB, 4096, zero).await.unwrap();
    fs.release(fh);

    // Assert: the first object is gone, the zeroed range reads zeros.
    assert_eq!(fs.getattr(ino).await.unwrap().blocks, (4 * MIB) / 512);
    assert_eq!(read(&fs, ino, 0, 4096).await, vec![0u8; 4096]);
    assert_eq!(read(&fs, ino, 4 * MIB, 4096).await, vec![0u8; 4096]);
    assert_eq!(read(&fs, ino, 4 * MIB + 4096, 16).await, vec![9u8; 16]);
    assert_eq!(fs.getattr(ino).await.unwrap().size, 16 * MIB);
}

#[tokio::test]
async fn test_lseek_finds_data_and_holes_at_object_granularity() {
    // Arrange: data only in the second 4 MiB object of 16 MiB.
    let fs = fs().await;
    let ino = image(&fs, "vm", 16 * MIB).await;
    write(&fs, ino, 5 * MIB, b"x").await;
    let fh = fs
        .open(ino, libc::O_RDONLY, Opener::of_pid(0))
        .await
        .unwrap();

    // Act + Assert
    assert_eq!(fs.lseek(fh, 0, SEEK_DATA).await.unwrap(), 4 * MIB);
    assert_eq!(fs.lseek(fh, 0, SEEK_HOLE).await.unwrap(), 0);
    assert_eq!(fs.lseek(fh, 4 * MIB, SEEK_HOLE).await.unwrap(), 8 * MIB);
    assert_eq!(errno(fs.lseek(fh, 9 * MIB, SEEK_DATA).await), libc::ENXIO);
    assert_eq!(errno(fs.lseek(fh, 16 * MIB, SEEK_HOLE).await), libc::ENXIO);
}

#[tokio::test]
async fn test_unlink_image_with_snapshots_is_ebusy_and_keeps_it() {
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    let pool = pool_ino(&fs).await;

    let r = fs.unlink(pool, OsStr::new("vm")).await;

    assert_eq!(errno(r), libc::EBUSY);
    assert!(lookup(&fs, "vm").await.is_ok());
}

#[tokio::test]
async fn test_unlink_protected_snapshot_is_ebusy_unprotected_removes_it() {
    // Arrange
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    let snap = lookup(&fs, "vm@s1").await.unwrap().ino;
    fs.setxattr(snap, "user.rbd.protected", b"1").await.unwrap();
    let pool = pool_ino(&fs).await;

    // Act + Assert
    assert_eq!(
        errno(fs.unlink(pool, OsStr::new("vm@s1")).await),
        libc::EBUSY
    );
    fs.setxattr(snap, "user.rbd.protected", b"0").await.unwrap();
    fs.unlink(pool, OsStr::new("vm@s1")).await.unwrap();
    assert_eq!(errno(lookup(&fs, "vm@s1").await), libc::ENOENT);
    fs.unlink(pool, OsStr::new("vm")).await.unwrap();
    assert_eq!(errno(lookup(&fs, "vm").await), libc::ENOENT);
}

#[tokio::test]
async fn test_unlink_of_an_open_snapshot_is_ebusy_until_it_is_closed() {
    // Arrange: a snapshot file open for reading (a loop device on it).
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;
    write(&fs, ino, 0, b"kept").await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    let snap = lookup(&fs, "vm@s1").await.unwrap().ino;
    let fh = fs
        .open(snap, libc::O_RDONLY, Opener::of_pid(0))
        .await
        .unwrap();
    let pool = pool_ino(&fs).await;

    // Act + Assert
    assert_eq!(
        errno(fs.unlink(pool, OsStr::new("vm@s1")).await),
        libc::EBUSY
    );
    assert_eq!(read(&fs, snap, 0, 4).await, b"kept");
    fs.release(fh);
    fs.unlink(pool, OsStr::new("vm@s1")).await.unwrap();
    assert_eq!(errno(lookup(&fs, "vm@s1").await), libc::ENOENT);
}

#[tokio::test]
async fn test_rename_keeps_inode_and_content() {
    let fs = fs().await;
    let ino = image(&fs, "old", MIB).await;
    write(&fs, ino, 0, b"data").await;
    let pool = pool_ino(&fs).await;

    fs.rename(pool, OsStr::new("old"), pool, OsStr::new("new"), 0)
        .await
        .unwrap();

    assert_eq!(lookup(&fs, "new").await.unwrap().ino, ino);
    assert_eq!(errno(lookup(&fs, "old").await), libc::ENOENT);
    assert_eq!(read(&fs, ino, 0, 4).await, b"data");
}

#[tokio::test]
async fn test_namespace_ops_without_meaning_are_refused() {
    let fs = fs().await;
    let pool = pool_ino(&fs).await;

    assert_eq!(fs.refuse("mkdir").errno(), libc::EPERM);
    let at = fs
        .create(pool, OsStr::new("a@b"), libc::O_RDWR, Opener::of_pid(0))
        .await;
    assert_eq!(errno(at), libc::EINVAL);
    let dotdot = fs
        .create(pool, OsStr::new("a..b"), libc::O_RDWR, Opener::of_pid(0))
        .await;
    assert_eq!(errno(dotdot), libc::EINVAL);
    let in_root = fs
        .create(ROOT_INO, OsStr::new("x"), libc::O_RDWR, Opener::of_pid(0))
        .await;
    assert_eq!(errno(in_root), libc::EPERM);
    let ino = image(&fs, "vm", MIB).await;
    assert_eq!(
        errno(fs.setattr(ino, None, Some(0o600), None).await),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.setattr(ino, None, None, Some((Some(4242), None))).await),
        libc::EPERM
    );
}

#[tokio::test]
async fn test_chmod_and_chown_that_change_nothing_are_accepted() {
    // Arrange: what `cp -p` and `install -m 644` ask after writing.
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;
    let now = fs.getattr(ino).await.unwrap();

    // Act
    let mode = fs
        .setattr(ino, None, Some(libc::S_IFREG | now.perm as u32), None)
        .await;
    let owner = fs
        .setattr(ino, None, None, Some((Some(now.uid), Some(now.gid))))
        .await;

    // Assert
    assert_eq!(mode.unwrap().perm, now.perm);
    assert_eq!(owner.unwrap().uid, now.uid);
}

#[tokio::test]
async fn test_growing_past_the_largest_image_is_efbig_and_changes_nothing() {
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;
    let fh = fs.open(ino, libc::O_RDWR, Opener::of_pid(0)).await.unwrap();
    let far = 1u64 << 60;

    let written = fs.write(fh, far, Bytes::from_static(b"x")).await;
    let allocated = fs.fallocate(fh, far, 4096, 0).await;
    let truncated = fs.setattr(ino, Some(far), None, None).await;
    fs.release(fh);

    assert_eq!(errno(written), libc::EFBIG);
    assert_eq!(errno(allocated), libc::EFBIG);
    assert_eq!(errno(truncated), libc::EFBIG);
    assert_eq!(fs.getattr(ino).await.unwrap().size, MIB);
}

#[tokio::test]
async fn test_xattrs_listed_are_all_readable() {
    let fs = fs().await;
    let ino = image(&fs, "vm", 3 * MIB).await;

    let names = fs.listxattr(ino).await.unwrap();

    for n in &names {
        fs.getxattr(ino, n)
            .await
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
    assert_eq!(fs.getxattr(ino, "user.rbd.size").await.unwrap(), b"3145728");
    assert_eq!(
        fs.getxattr(ino, "user.rbd.object_size").await.unwrap(),
        b"4194304"
    );
    assert_eq!(fs.getxattr(ino, "user.rbd.flatten").await.unwrap(), b"idle");
    assert!(!names.contains(&"user.rbd.parent".to_string()));
}

#[tokio::test]
async fn test_unknown_or_absent_xattrs_are_enodata() {
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;

    assert_eq!(
        errno(fs.getxattr(ino, "user.rbd.nosuch").await),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.getxattr(ino, "user.rbd.parent").await),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.getxattr(ino, "user.rbd.protected").await),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.getxattr(ino, "security.selinux").await),
        libc::ENODATA
    );
    assert_eq!(
        errno(fs.getxattr(ROOT_INO, "user.rbd.size").await),
        libc::ENODATA
    );
}

#[tokio::test]
async fn test_bad_xattr_values_fail_and_change_nothing() {
    // Arrange
    let fs = fs().await;
    let ino = image(&fs, "vm", MIB).await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    let snap = lookup(&fs, "vm@s1").await.unwrap().ino;
    let snaps_before = fs.getxattr(ino, "user.rbd.snap").await.unwrap();

    // Act + Assert
    let cases: [(u64, &str, &[u8], i32); 14] = [
        (ino, "user.rbd.flatten", b"1", libc::EINVAL),
        (ino, "user.rbd.flatten", b"2", libc::EINVAL),
        (ino, "user.rbd.flatten", b"cancel", libc::EINVAL),
        (snap, "user.rbd.flatten", b"1", libc::EROFS),
        (ino, "user.rbd.snap", b"", libc::EINVAL),
        (ino, "user.rbd.snap", b"a/b", libc::EINVAL),
        (ino, "user.rbd.snap", b"s1", libc::EEXIST),
        (ino, "user.rbd.protected", b"1", libc::EINVAL),
        (snap, "user.rbd.protected", b"yes", libc::EINVAL),
        (snap, "user.rbd.clone", b"rbd/c", libc::EINVAL),
        (snap, "user.rbd.clone", b"c", libc::EINVAL),
        (ino, "user.rbd.size", b"1", libc::EPERM),
        (ino, "user.rbd.bogus", b"1", libc::EINVAL),
        (ino, "trusted.x", b"1", libc::EOPNOTSUPP),
    ];
    for (i, name, value, want) in cases {
        let got = fs.setxattr(i, name, value).await;
        assert_eq!(
            errno(got),
            want,
            "{name}={:?}",
            String::from_utf8_lossy(value)
        );
    }

    // Nothing changed.
    assert_eq!(
        fs.getxattr(ino, "user.rbd.snap").await.unwrap(),
        snaps_before
    );
    assert_eq!(fs.getxattr(snap, "user.rbd.protected").await.unwrap(), b"0");
    assert_eq!(errno(lookup(&fs, "c").await), libc::ENOENT);
    assert_eq!(fs.getattr(ino).await.unwrap().size, MIB);
}

#[tokio::test]
async fn test_clone_through_xattr_then_flatten_detaches_it() {
    // Arrange: a protected snapshot with data, cloned through the xattr.
    let fs = fs().await;
    let (_, snap) = cloned_base(&fs).await;
    let child = lookup(&fs, "child").await.unwrap().ino;
    let parent = fs.getxattr(child, "user.rbd.parent").await.unwrap();
    assert!(
        String::from_utf8(parent)
            .unwrap()
            .ends_with(&format!("overlap={}", 8 * MIB))
    );
    assert_eq!(
        fs.getxattr(snap, "user.rbd.clone").await.unwrap(),
        b"rbd/child"
    );

    // Act
    fs.setxattr(child, "user.rbd.flatten", b"1").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let state = loop {
        let s = String::from_utf8(fs.getxattr(child, "user.rbd.flatten").await.unwrap()).unwrap();
        if s == "done" || s.starts_with("failed") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "flatten stuck at {s}");
        tokio::task::yield_now().await;
    };

    // Assert
    assert_eq!(state, "done");
    assert_eq!(
        errno(fs.getxattr(child, "user.rbd.parent").await),
        libc::ENODATA
    );
    assert_eq!(read(&fs, child, MIB, 6).await, b"golden");
    fs.setxattr(snap, "user.rbd.protected", b"0").await.unwrap();

    // The state follows the image, not its name.
    let pool = pool_ino(&fs).await;
    fs.rename(pool, OsStr::new("child"), pool, OsStr::new("moved"), 0)
        .await
        .unwrap();
    let moved = lookup(&fs, "moved").await.unwrap().ino;
    assert_eq!(
        fs.getxattr(moved, "user.rbd.flatten").await.unwrap(),
        b"done"
    );
    let reused = image(&fs, "child", MIB).await;
    assert_eq!(
        fs.getxattr(reused, "user.rbd.flatten").await.unwrap(),
        b"idle"
    );
}

#[tokio::test]
async fn test_cancel_all_leaves_no_flatten_running() {
    // Arrange: a clone of a 32 MiB parent with data in every object.
    let fs = fs().await;
    let ino = image(&fs, "base", 32 * MIB).await;
    for i in 0..8 {
        write(&fs, ino, i * 4 * MIB, b"data").await;
    }
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    let snap = lookup(&fs, "base@s1").await.unwrap().ino;
    fs.setxattr(snap, "user.rbd.protected", b"1").await.unwrap();
    fs.setxattr(snap, "user.rbd.clone", b"rbd/child")
        .await
        .unwrap();
    let child = lookup(&fs, "child").await.unwrap().ino;
    fs.setxattr(child, "user.rbd.flatten", b"1").await.unwrap();

    // Act
    fs.jobs().cancel_all(Duration::from_secs(60)).await;

    // Assert: stopped (or finished first); a rerun completes the flatten.
    let child_spec = ImageSpec::new("rbd", "child");
    let state = fs.flatten_state(&child_spec).await.unwrap();
    assert!(
        matches!(state, JobState::Cancelled | JobState::Done),
        "{state}"
    );
    if state == JobState::Cancelled {
        fs.setxattr(child, "user.rbd.flatten", b"1").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while fs.flatten_state(&child_spec).await.unwrap().is_running() {
            assert!(std::time::Instant::now() < deadline, "rerun stuck");
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(fs.flatten_state(&child_spec).await.unwrap(), JobState::Done);
}

#[tokio::test]
async fn test_blocks_of_an_image_and_its_snapshot_add_up_to_its_usage() {
    // Arrange: one object written, snapshot, a second object written.
    let fs = fs().await;
    let ino = image(&fs, "vm", 64 * MIB).await;
    write(&fs, ino, 0, &[1u8; 4096]).await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    write(&fs, ino, 8 * MIB, &[2u8; 4096]).await;

    // Act
    let head = fs.getattr(ino).await.unwrap().blocks;
    let snap = lookup(&fs, "vm@s1").await.unwrap().blocks;

    // Assert: each counts what it holds on its own.
    assert_eq!(snap, (4 * MIB) / 512);
    assert_eq!(head, (4 * MIB) / 512);
}

#[tokio::test]
async fn test_a_file_that_reads_data_it_does_not_hold_counts_one_block() {
    // Arrange: a head with data, snapshotted (so it holds nothing written
    // since), the snapshot protected and cloned; and an empty image.
    let fs = fs().await;
    let (ino, _) = cloned_base(&fs).await;
    let empty = image(&fs, "empty", 8 * MIB).await;

    // Act
    let head = fs.getattr(ino).await.unwrap().blocks;
    let child = lookup(&fs, "child").await.unwrap().blocks;
    let none = fs.getattr(empty).await.unwrap().blocks;

    // Assert: not 0, which tools take for "all holes"; 0 when it is.
    assert_eq!(head, 1);
    assert_eq!(child, 1);
    assert_eq!(none, 0);
}

#[tokio::test]
async fn test_protect_set_from_two_shells_at_once_succeeds_in_both() {
    // Arrange: store ops that yield, so the two setxattrs interleave.
    let (rbd, _mem) = crate::rbd::tests::setup_interleaved(2, 0).await;
    let fs = ImageFs::new(rbd, FsOptions::default());
    let ino = image(&fs, "vm", MIB).await;
    fs.setxattr(ino, "user.rbd.snap", b"s1").await.unwrap();
    let snap = lookup(&fs, "vm@s1").await.unwrap().ino;

    // Act
    let (a, b) = tokio::join!(
        fs.setxattr(snap, "user.rbd.protected", b"1"),
        fs.setxattr(snap, "user.rbd.protected", b"1")
    );

    // Assert
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert_eq!(fs.getxattr(snap, "user.rbd.protected").await.unwrap(), b"1");
}

#[tokio::test]
async fn test_open_files_are_an_images_handles_and_its_snapshots() {
    // Arrange: two images; `a` open read-write by one process and its
    // snapshot read-only by another, `b` open too.
    let fs = fs().await;
    let a = image(&fs, "a", MIB).await;
    let b = image(&fs, "b", MIB).await;
    fs.setxattr(a, "user.rbd.snap", b"s").await.unwrap();
    let snap = lookup(&fs, "a@s").await.unwrap().ino;
    let me = Opener::of_pid(std::process::id());
    let other = Opener {
        pid: 4242,
        process: "losetup".into(),
    };

    // Act
    let head = fs.open(a, libc::O_RDWR, other.clone()).await.unwrap();
    let ro = fs.open(snap, libc::O_RDONLY, me.clone()).await.unwrap();
    let not_a = fs.open(b, libc::O_RDWR, me.clone()).await.unwrap();
    let open = fs.open_files("rbd", "a");
    fs.release(head);
    let after = fs.open_files("rbd", "a");

    // Assert: in the order opened; `b`'s handle is not `a`'s.
    assert!(!me.process.is_empty(), "no name read for our own pid");
    assert_eq!(
        open,
        vec![
            OpenFile {
                file: "rbd/a".into(),
                writable: true,
                opener: other,
            },
            OpenFile {
                file: "rbd/a@s".into(),
                writable: false,
                opener: me.clone(),
            },
        ]
    );
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].file, "rbd/a@s");
    fs.release(ro);
    fs.release(not_a);
    assert!(fs.open_files("rbd", "a").is_empty());
}
