//! Scenario 6: bad input through the mount gets the right errno and changes
//! nothing.

use std::ffi::CString;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::harness::{World, getfattr, pattern, run};

/// setxattr(2) directly, to see the errno.
fn set(path: &Path, name: &str, value: &str) -> Result<(), i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// getxattr(2) directly, to see the errno.
fn get(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        buf.truncate(r as usize);
        Ok(buf)
    }
}

/// What must not change: the image list, each image's info and the head's bytes.
fn snapshot_state(w: &World) -> (String, String, String, Vec<u8>) {
    (
        w.cli(&["ls", "-l", "--format", "json"]),
        w.cli(&["info", "rbd/vm", "--format", "json"]),
        w.cli(&["snap", "ls", "rbd/vm", "--format", "json"]),
        std::fs::read(w.path("rbd/vm")).unwrap(),
    )
}

#[test]
fn test_bad_xattrs_and_namespace_ops_fail_with_clear_errno_and_change_nothing() {
    // Arrange: an image with data and a protected snapshot; a plain image.
    let w = World::new();
    let vm = w.path("rbd/vm");
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s"), "16M".as_ref(), vm.as_os_str()],
    );
    std::fs::write(&vm, pattern(1, 1 << 20)).unwrap();
    w.cli(&["snap", "create", "rbd/vm@s1"]);
    w.cli(&["snap", "protect", "rbd/vm@s1"]);
    w.cli(&["snap", "create", "rbd/vm@s2"]);
    let s1 = w.path("rbd/vm@s1");
    let s2 = w.path("rbd/vm@s2");
    let before = snapshot_state(&w);

    // Act + Assert: each bad request, its errno.
    let cases: Vec<(&Path, &str, &str, i32)> = vec![
        (&vm, "user.rbd.flatten", "1", libc::EINVAL), // not a clone
        (&vm, "user.rbd.flatten", "yes", libc::EINVAL),
        (&vm, "user.rbd.flatten", "", libc::EINVAL),
        (&s1, "user.rbd.flatten", "1", libc::EROFS), // a snapshot
        (&vm, "user.rbd.protected", "1", libc::EINVAL), // not a snapshot
        (&s2, "user.rbd.protected", "2", libc::EINVAL),
        (&s1, "user.rbd.protected", "yes", libc::EINVAL),
        (&vm, "user.rbd.snap", "", libc::EINVAL),
        (&vm, "user.rbd.snap", "a/b", libc::EINVAL),
        (&vm, "user.rbd.snap", "a@b", libc::EINVAL),
        (&vm, "user.rbd.snap", "..", libc::EINVAL),
        (&vm, "user.rbd.snap", "s1", libc::EEXIST),
        (&s1, "user.rbd.snap", "x", libc::EROFS),
        (&s2, "user.rbd.clone", "rbd/c", libc::EINVAL), // not protected
        (&s1, "user.rbd.clone", "nopool/c", libc::ENOENT),
        (&s1, "user.rbd.clone", "rbd/a/b", libc::EINVAL),
        (&s1, "user.rbd.clone", "rbd/vm", libc::EEXIST),
        (&vm, "user.rbd.clone", "rbd/c", libc::EINVAL), // not a snapshot
        (&vm, "user.rbd.size", "1", libc::EPERM),
        (&vm, "user.rbd.id", "x", libc::EPERM),
        (&vm, "user.rbd.parent", "rbd/x@y", libc::EPERM),
        (&vm, "user.rbd.nosuch", "1", libc::EINVAL),
        (&vm, "user.other", "1", libc::EOPNOTSUPP),
        (&vm, "trusted.rbd.snap", "x", libc::EOPNOTSUPP),
    ];
    for (path, name, value, errno) in &cases {
        assert_eq!(
            set(path, name, value),
            Err(*errno),
            "setxattr {name}={value:?} on {}",
            path.display()
        );
    }
    assert_eq!(get(&vm, "user.rbd.nosuch"), Err(libc::ENODATA));
    assert_eq!(get(&vm, "user.rbd.parent"), Err(libc::ENODATA));
    assert_eq!(get(&vm, "user.rbd.protected"), Err(libc::ENODATA));
    assert!(
        getfattr(&vm, "user.rbd.features")
            .unwrap()
            .contains("layering")
    );
    let write_snap = std::fs::OpenOptions::new()
        .write(true)
        .open(&s1)
        .map(|_| ());
    assert_eq!(write_snap.unwrap_err().raw_os_error(), Some(libc::EROFS));
    let unlink_vm = std::fs::remove_file(&vm).unwrap_err();
    assert_eq!(unlink_vm.raw_os_error(), Some(libc::EBUSY));
    let unlink_s1 = std::fs::remove_file(&s1).unwrap_err();
    assert_eq!(unlink_s1.raw_os_error(), Some(libc::EBUSY));
    let mkdir = std::fs::create_dir(w.path("rbd/dir")).unwrap_err();
    assert_eq!(mkdir.raw_os_error(), Some(libc::EPERM));
    let symlink = std::os::unix::fs::symlink("vm", w.path("rbd/link")).unwrap_err();
    assert_eq!(symlink.raw_os_error(), Some(libc::EPERM));
    let bad_name = std::fs::File::create(w.path("rbd/x@y")).unwrap_err();
    assert_eq!(bad_name.raw_os_error(), Some(libc::EINVAL));
    let trunc_snap = std::fs::OpenOptions::new()
        .write(true)
        .open(&s2)
        .map(|_| ());
    assert_eq!(trunc_snap.unwrap_err().raw_os_error(), Some(libc::EROFS));
    let flatten_cli = w.cli_output(&["flatten", "rbd/vm"]);
    assert_eq!(flatten_cli.status.code(), Some(libc::EINVAL));
    let err = String::from_utf8_lossy(&flatten_cli.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("rbdfs: ")),
        "stderr: {err}"
    );

    // Nothing changed.
    assert_eq!(snapshot_state(&w), before);
    assert!(!w.path("rbd/c").exists());
}

#[test]
fn test_unlink_or_cli_rm_of_an_attached_image_is_ebusy_and_keeps_it() {
    // Arrange: an image with data, attached to a loop device.
    let mut w = World::new();
    let vm = w.path("rbd/vm");
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s"), "16M".as_ref(), vm.as_os_str()],
    );
    std::fs::write(&vm, pattern(2, 1 << 20)).unwrap();
    let dev = w.losetup(&vm, &[]);

    // Act
    let unlink = std::fs::remove_file(&vm).unwrap_err();
    let rm = w.cli_output(&["rm", "rbd/vm"]);

    // Assert
    assert_eq!(unlink.raw_os_error(), Some(libc::EBUSY));
    assert_eq!(rm.status.code(), Some(libc::EBUSY));
    w.detach(&dev);
    assert!(std::fs::read(&vm).unwrap()[..1 << 20] == pattern(2, 1 << 20)[..]);
}

/// `prog args...`, given at most two minutes: a store that stopped serving
/// fails the test instead of hanging it.
fn bounded(prog: &str, args: &[&OsStr]) -> std::process::Output {
    let mut all: Vec<&OsStr> = vec!["120".as_ref(), prog.as_ref()];
    all.extend_from_slice(args);
    crate::harness::output("timeout", &all)
}

/// `dd` of `mib` MiB of random bytes into `file` from `at_mib` MiB on,
/// with direct I/O, each write synced; its output.
fn dd_into(file: &Path, at_mib: u64, mib: u64) -> std::process::Output {
    dd_blocks(file, "1M", at_mib, mib)
}

/// `dd` of `count` blocks of `bs` random bytes into `file` from block `at`
/// on, with direct I/O, each write synced; its output.
fn dd_blocks(file: &Path, bs: &str, at: u64, count: u64) -> std::process::Output {
    let of = format!("of={}", file.display());
    let bs = format!("bs={bs}");
    let seek = format!("seek={at}");
    let count = format!("count={count}");
    bounded(
        "dd",
        &[
            "if=/dev/urandom".as_ref(),
            of.as_ref(),
            bs.as_ref(),
            seek.as_ref(),
            count.as_ref(),
            "oflag=direct".as_ref(),
            "conv=notrunc,fsync".as_ref(),
        ],
    )
}

/// `fallocate --punch-hole` of `len` at `off` (both as fallocate reads them).
fn punch(file: &Path, off: &str, len: &str) -> std::process::Output {
    let (o, l) = ("-o".as_ref(), "-l".as_ref());
    bounded(
        "fallocate",
        &[
            "--punch-hole".as_ref(),
            o,
            off.as_ref(),
            l,
            len.as_ref(),
            file.as_os_str(),
        ],
    )
}

/// Its stderr, for a failure message.
fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn test_a_full_store_refuses_writes_and_can_still_be_cleaned_up() {
    // Arrange: a store on a 256 MiB file system, and an image written until
    // the store is full (three replicas, each keeping 64 MiB free); 8 MiB of
    // it near its end were written before a snapshot, since removed.
    let mut w = World::on_small_disk(256);
    let vm = w.path("rbd/vm");
    run("truncate", &["-s".as_ref(), "1G".as_ref(), vm.as_os_str()]);
    let early = dd_into(&vm, 900, 8);
    assert!(early.status.success(), "{}", err(&early));
    w.cli(&["snap", "create", "rbd/vm@s"]);
    w.cli(&["snap", "rm", "rbd/vm@s"]);
    let filled = dd_into(&vm, 0, 400);
    // Then the file system filled further from outside, to 60 MiB free:
    // below every OSD's reserve, so no write of any size fits.
    let disk = w.store.parent().expect("the store's disk").to_path_buf();
    let df = run(
        "df",
        &["--output=avail".as_ref(), "-B1".as_ref(), disk.as_os_str()],
    );
    let avail: u64 = df
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("df");
    // (The stores, each counting only its own claims, may already have
    // gone below it together.)
    let extra = avail.saturating_sub(60 << 20);
    if extra > 0 {
        let (filler, len) = (disk.join("filler"), extra.to_string());
        run(
            "fallocate",
            &["-l".as_ref(), len.as_ref(), filler.as_os_str()],
        );
    }
    // The stores measure free space again within 50 ms: until then a small
    // write may still pass on the figure from before the filler.
    let filled_small = (0..200)
        .map(|i| dd_blocks(&vm, "512", (700 << 11) + i, 1))
        .find(|o| !o.status.success())
        .expect("a small write failed once the disk was full");

    // Act: holes punched (first part of an object written before the
    // snapshot, which frees nothing, then whole objects), a shrink, then the
    // image removed; a new image is written.
    let punched_part = punch(&vm, "901M", "1M");
    let punched = punch(&vm, "0", "8M");
    let shrunk = bounded("truncate", &["-s".as_ref(), "16M".as_ref(), vm.as_os_str()]);
    let removed = bounded("rm", &[vm.as_os_str()]);
    let vm2 = w.path("rbd/vm2");
    let created = bounded("truncate", &["-s".as_ref(), "1G".as_ref(), vm2.as_os_str()]);
    let again = dd_into(&vm2, 0, 16);

    // Assert: the fill failed for lack of space, and no OSD went down for
    // it; everything after worked.
    for fill in [&filled, &filled_small] {
        assert!(!fill.status.success(), "the store took it all");
        assert!(
            err(fill).contains("No space left on device"),
            "{}",
            err(fill)
        );
    }
    let osds = w.cli(&["osd", "ls", "--format", "json"]);
    assert!(!osds.contains("\"up\":false"), "{osds}");
    for (what, o) in [
        ("punching part of an object", &punched_part),
        ("punching a hole", &punched),
        ("shrinking", &shrunk),
        ("removing the image", &removed),
        ("creating another", &created),
        ("writing it", &again),
    ] {
        assert!(o.status.success(), "{what} on a full store: {}", err(o));
    }
    w.stop_daemon();
}
