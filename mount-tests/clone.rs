//! Scenario 3: protect a snapshot, clone it through the xattr and through the
//! CLI, mount a clone and change it; the parent snapshot stays as it was.

use crate::harness::{World, getfattr, pattern, run, setfattr};

#[test]
fn test_clones_from_xattr_and_cli_change_without_touching_parent() {
    // Arrange: ext4 with a file on `base`, snapshot s1, protected.
    let mut w = World::new();
    let base = w.path("rbd/base");
    run(
        "truncate",
        &[
            std::ffi::OsStr::new("-s"),
            "256M".as_ref(),
            base.as_os_str(),
        ],
    );
    let (dev, at) = w.ext4_on(&base, "base", &[]);
    std::fs::write(at.join("golden"), pattern(7, 2 << 20)).unwrap();
    w.umount(&at);
    w.detach(&dev);
    setfattr(&base, "user.rbd.snap", "s1").expect("snapshot through xattr");
    let snap = w.path("rbd/base@s1");
    setfattr(&snap, "user.rbd.protected", "1").expect("protect through xattr");
    assert_eq!(getfattr(&snap, "user.rbd.protected").unwrap(), "1");

    // Act: one clone per interface, then change the first.
    setfattr(&snap, "user.rbd.clone", "rbd/c1").expect("clone through xattr");
    w.cli(&["clone", "rbd/base@s1", "rbd/c2"]);
    let c1 = w.path("rbd/c1");
    let (cdev, cat) = w.ext4_on_existing(&c1, "c1");
    assert!(std::fs::read(cat.join("golden")).unwrap() == pattern(7, 2 << 20));
    std::fs::write(cat.join("golden"), pattern(8, 1 << 20)).unwrap();
    std::fs::write(cat.join("new"), pattern(9, 100_000)).unwrap();
    w.umount(&cat);
    w.fsck_clean(&cdev);

    // Assert: parent snapshot and the other clone unchanged; the clone records its parent.
    let sdev = w.losetup(&snap, &["-r"]);
    let sat = w.mount_dev(&sdev, "snap", &["-o", "ro,noload"]);
    assert!(std::fs::read(sat.join("golden")).unwrap() == pattern(7, 2 << 20));
    assert!(!sat.join("new").exists());
    let (_d2, c2at) = w.ext4_on_existing(&w.path("rbd/c2"), "c2");
    assert!(std::fs::read(c2at.join("golden")).unwrap() == pattern(7, 2 << 20));
    let parent = getfattr(&c1, "user.rbd.parent").unwrap();
    assert_eq!(parent, format!("rbd/base@s1 overlap={}", 256u64 << 20));
    let children = w.cli(&["children", "rbd/base@s1"]);
    let mut kids: Vec<&str> = children.lines().collect();
    kids.sort();
    assert_eq!(kids, ["rbd/c1", "rbd/c2"]);
}

#[test]
fn test_tar_sparse_archives_what_a_fresh_clone_reads() {
    // Arrange: a parent with data in two objects, a clone that holds
    // nothing of its own yet, and a plain file with the same bytes.
    let w = World::new();
    let base = w.path("rbd/base");
    let mut want = vec![0u8; 16 << 20];
    want[1 << 20..(1 << 20) + 100_000].copy_from_slice(&pattern(3, 100_000));
    want[9 << 20..(9 << 20) + 4096].copy_from_slice(&pattern(4, 4096));
    std::fs::write(&base, &want).unwrap();
    setfattr(&base, "user.rbd.snap", "s1").unwrap();
    let snap = w.path("rbd/base@s1");
    setfattr(&snap, "user.rbd.protected", "1").unwrap();
    setfattr(&snap, "user.rbd.clone", "rbd/c1").unwrap();
    let out = w.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let archive = w.dir.path().join("c1.tar");

    // Act: GNU tar with --sparse, which trusts st_blocks == 0 to mean "all
    // holes".
    let mnt_rbd = w.path("rbd");
    run(
        "tar",
        &[
            "-S".as_ref(),
            "-cf".as_ref(),
            archive.as_os_str(),
            "-C".as_ref(),
            mnt_rbd.as_os_str(),
            "c1".as_ref(),
        ],
    );
    run(
        "tar",
        &[
            "-xf".as_ref(),
            archive.as_os_str(),
            "-C".as_ref(),
            out.as_os_str(),
        ],
    );

    // Assert
    assert!(std::fs::read(out.join("c1")).unwrap() == want);
}
