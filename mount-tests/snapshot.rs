//! Scenario 2: a snapshot taken while the filesystem is frozen, attached
//! read-only, shows the content as of the snapshot while the head changes.

use std::path::Path;

use crate::harness::{World, pattern, run, setfattr};

fn truncate(path: &Path, size: &str) {
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s"), size.as_ref(), path.as_os_str()],
    );
}

#[test]
fn test_snapshot_of_frozen_ext4_keeps_old_content_while_head_changes() {
    // Arrange: ext4 with two files on the image head.
    let mut w = World::new();
    let vm = w.path("rbd/vm");
    truncate(&vm, "512M");
    let (_dev, at) = w.ext4_on(&vm, "head", &[]);
    std::fs::write(at.join("a"), pattern(1, 300_000)).unwrap();
    std::fs::write(at.join("b"), pattern(2, 70_000)).unwrap();
    run::<&str>("sync", &[]);

    // Act: freeze, snapshot through the xattr, thaw, then change the head.
    run("fsfreeze", &[std::ffi::OsStr::new("-f"), at.as_os_str()]);
    let snapped = setfattr(&vm, "user.rbd.snap", "s1");
    run("fsfreeze", &[std::ffi::OsStr::new("-u"), at.as_os_str()]);
    snapped.expect("setfattr user.rbd.snap");
    std::fs::write(at.join("a"), pattern(3, 123_456)).unwrap();
    std::fs::write(at.join("c"), pattern(4, 50_000)).unwrap();
    std::fs::remove_file(at.join("b")).unwrap();
    run::<&str>("sync", &[]);
    let snap = w.path("rbd/vm@s1");
    assert!(snap.exists(), "rbd/vm@s1 not listed after the snapshot");
    let sdev = w.losetup(&snap, &["-r"]);
    let sat = w.mount_dev(&sdev, "snap", &["-o", "ro,noload"]);
    // The head keeps changing while the snapshot is mounted.
    std::fs::write(at.join("d"), pattern(5, 1 << 20)).unwrap();
    run::<&str>("sync", &[]);

    // Assert
    assert!(std::fs::read(sat.join("a")).unwrap() == pattern(1, 300_000));
    assert!(std::fs::read(sat.join("b")).unwrap() == pattern(2, 70_000));
    assert!(!sat.join("c").exists() && !sat.join("d").exists());
    assert!(std::fs::read(at.join("a")).unwrap() == pattern(3, 123_456));
    let ls = w.cli(&["snap", "ls", "rbd/vm"]);
    assert!(ls.contains("s1"), "snap ls: {ls}");
}

#[test]
fn test_snapshot_file_is_read_only() {
    // Arrange
    let w = World::new();
    let vm = w.path("rbd/vm");
    truncate(&vm, "16M");
    std::fs::write(&vm, pattern(9, 4096)).unwrap();
    w.cli(&["snap", "create", "rbd/vm@s1"]);

    // Act
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(w.path("rbd/vm@s1"))
        .expect_err("a snapshot file opened for writing");

    // Assert
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let head = std::fs::read(&vm).unwrap();
    assert!(head[..4096] == pattern(9, 4096)[..]);
}

#[test]
fn test_a_snapshot_attached_to_a_loop_device_cannot_be_removed() {
    // Arrange: a snapshot attached read-only.
    let mut w = World::new();
    let vm = w.path("rbd/vm");
    std::fs::write(&vm, pattern(6, 1 << 20)).unwrap();
    setfattr(&vm, "user.rbd.snap", "s1").unwrap();
    let snap = w.path("rbd/vm@s1");
    let dev = w.losetup(&snap, &["-r"]);

    // Act: through the mount, and through the CLI (sent to the daemon).
    let unlinked = std::fs::remove_file(&snap);
    let cli = w.cli_output(&["snap", "rm", "rbd/vm@s1"]);

    // Assert: both refused, the device still reads the snapshot; once it
    // is detached the snapshot goes.
    assert_eq!(
        unlinked.unwrap_err().raw_os_error(),
        Some(libc::EBUSY),
        "rm of an attached snapshot"
    );
    assert_eq!(cli.status.code(), Some(libc::EBUSY), "rbdfs snap rm");
    assert!(std::fs::read(&dev).unwrap() == pattern(6, 1 << 20));
    w.detach(&dev);
    std::fs::remove_file(&snap).expect("rm once detached");
    assert!(!snap.exists());
}
