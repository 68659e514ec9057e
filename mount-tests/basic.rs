//! Scenario 1: ext4 on an image file through a loop device survives unmount,
//! fsck and a daemon restart byte for byte.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{World, pattern, run};

const FILES: u64 = 6;

fn file_len(i: u64) -> usize {
    // Odd sizes so partial blocks and object boundaries are exercised.
    (256 << 10) + (i as usize) * 40_961
}

#[test]
fn test_ext4_on_image_survives_umount_fsck_and_remount() {
    // Arrange: a 1 GiB sparse image with ext4 on it (direct I/O loop device).
    let mut w = World::new();
    let vm = w.path("rbd/vm");
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s"), "1G".as_ref(), vm.as_os_str()],
    );
    assert_eq!(std::fs::metadata(&vm).unwrap().len(), 1 << 30);
    let (dev, at) = w.ext4_on(&vm, "fs", &["--direct-io=on"]);

    // Act: write files, sync, unmount, check, restart the daemon, remount.
    for i in 0..FILES {
        std::fs::write(at.join(format!("f{i}")), pattern(i, file_len(i))).unwrap();
    }
    run::<&str>("sync", &[]);
    w.umount(&at);
    w.fsck_clean(&dev);
    w.detach(&dev);
    w.stop_daemon();
    w.start_daemon();
    let dev = w.losetup(&vm, &[]);
    let at = w.mount_dev(&dev, "fs2", &[]);

    // Assert
    for i in 0..FILES {
        let got = std::fs::read(at.join(format!("f{i}"))).unwrap();
        assert!(got == pattern(i, file_len(i)), "f{i} differs after remount");
    }
    w.umount(&at);
    w.fsck_clean(&dev);
}

#[test]
fn test_image_file_reads_written_bytes_and_is_clamped_at_eof() {
    // Arrange
    let w = World::new();
    let img = w.path("rbd/small");
    std::fs::File::create(&img).unwrap().set_len(8192).unwrap();

    // Act
    std::fs::write(&img, pattern(1, 8192)).unwrap();
    let got = std::fs::read(&img).unwrap();

    // Assert: exactly the image size comes back, no more.
    assert_eq!(got.len(), 8192);
    assert!(got == pattern(1, 8192));
    let ls = w.cli(&["ls"]);
    assert!(ls.lines().any(|l| l == "small"), "rbdfs ls: {ls}");
}

#[test]
fn test_second_mount_of_same_store_is_refused() {
    // Arrange
    let w = World::new();
    let other = w.dir.path().join("mnt2");
    std::fs::create_dir(&other).unwrap();

    // Act
    let out = w.cli_output(&["mount", other.to_str().unwrap()]);

    // Assert
    assert!(
        !out.status.success(),
        "a second mount of the same store succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rbdfs:"), "unclear refusal: {err}");
    assert!(!crate::harness::is_mounted(&other));
}

#[test]
fn test_a_mount_the_daemon_could_not_serve_is_refused_before_the_store_is_made() {
    // Arrange: a live mount, and a directory to mount over a store in it.
    let w = World::new();
    let outer = w.dir.path().join("outer");
    std::fs::create_dir(&outer).unwrap();
    let inner_store = outer.join("store");
    let other_store = w.dir.path().join("other");
    // In the foreground: were it not refused, `timeout` ends it.
    let mount = |store: &std::path::Path, at: &std::path::Path| {
        crate::harness::output(
            "timeout",
            &[
                std::ffi::OsStr::new("30"),
                crate::harness::rbdfs_bin().as_ref(),
                "--store".as_ref(),
                store.as_os_str(),
                "mount".as_ref(),
                at.as_os_str(),
            ],
        )
    };

    let long_store = w.dir.path().join("s".repeat(120));

    // Act
    let over_store = mount(&inner_store, &outer);
    let over_mount = mount(&other_store, &w.mnt);
    let long = mount(&long_store, &outer);

    // Assert: refused before anything is made.
    assert_eq!(over_store.status.code(), Some(libc::EINVAL));
    assert!(
        !inner_store.exists(),
        "a store was made inside the mount point"
    );
    assert!(!crate::harness::is_mounted(&outer));
    assert_eq!(over_mount.status.code(), Some(libc::EBUSY));
    let err = String::from_utf8_lossy(&over_mount.stderr);
    assert!(err.contains("already"), "{err}");
    assert_eq!(long.status.code(), Some(libc::ENAMETOOLONG));
    assert!(!long_store.exists(), "a store was made for a refused mount");
    assert!(
        !other_store.exists(),
        "a store was made for a refused mount"
    );
    assert!(w.path("rbd").exists(), "the first mount is gone");
}

/// Unmounts and kills a backgrounded daemon on drop, also when the test panics.
struct Backgrounded {
    mnt: std::path::PathBuf,
    pid: Option<i32>,
}

impl Drop for Backgrounded {
    fn drop(&mut self) {
        if crate::harness::is_mounted(&self.mnt) {
            let _ = crate::harness::output(
                "fusermount3",
                &[std::ffi::OsStr::new("-u"), self.mnt.as_os_str()],
            );
        }
        if let Some(pid) = self.pid {
            // SAFETY: signalling a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        })
        .unwrap_or(false)
}

#[test]
fn test_daemon_mode_returns_when_ready_and_sigterm_unmounts_cleanly() {
    // Arrange
    crate::harness::require_environment();
    let dir = tempfile::tempdir().unwrap();
    let (store, mnt) = (dir.path().join("store"), dir.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let mut guard = Backgrounded {
        mnt: mnt.clone(),
        pid: None,
    };
    let rbdfs = |args: &[&std::ffi::OsStr]| {
        let mut all = vec![std::ffi::OsStr::new("--store"), store.as_os_str()];
        all.extend_from_slice(args);
        crate::harness::output(crate::harness::rbdfs_bin(), &all)
    };

    // Act: the parent returns only once the mount is ready.
    let started = rbdfs(&["mount".as_ref(), mnt.as_os_str(), "--daemon".as_ref()]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(
        crate::harness::is_mounted(&mnt),
        "mount not ready when --daemon returned"
    );
    assert!(mnt.join("rbd").is_dir());
    let status = rbdfs(&["status".as_ref(), "--format".as_ref(), "json".as_ref()]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let pid = v["daemon_pid"].as_i64().expect("daemon pid") as i32;
    guard.pid = Some(pid);
    std::fs::File::create(mnt.join("rbd/img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // SAFETY: signalling the daemon we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    crate::harness::wait_until("the daemon to exit", || !alive(pid));
    guard.pid = None;

    // Assert: unmounted, lock released (a local command opens the store), data kept.
    assert!(!crate::harness::is_mounted(&mnt));
    let ls = rbdfs(&["ls".as_ref()]);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "img\n");
    let log = std::fs::read_to_string(store.join("rbdfs.log")).unwrap();
    assert!(log.contains("closed cleanly"), "log: {log}");
}

#[test]
fn test_sigterm_after_a_lazy_unmount_leaves_what_is_mounted_there_now_alone() {
    use std::os::unix::fs::FileExt;
    // Arrange: an image held open through the mount, the mount lazily
    // unmounted (the daemon still serves the open file), and a tmpfs
    // mounted at the same path.
    let mut w = World::new();
    let img = w.path("rbd/img");
    std::fs::write(&img, pattern(3, 1 << 20)).unwrap();
    let held = std::fs::File::open(&img).unwrap();
    run("umount", &[std::ffi::OsStr::new("-l"), w.mnt.as_os_str()]);
    let mnt = w.mnt.clone();
    w.mount_tmpfs(&mnt);

    // Act
    // SAFETY: signalling the daemon we started.
    assert_eq!(unsafe { libc::kill(w.daemon_pid(), libc::SIGTERM) }, 0);
    crate::harness::wait_until("the daemon to handle the signal", || {
        w.log().contains("is no longer this daemon's mount")
    });

    // Assert: the tmpfs is still there, and the detached mount still serves.
    let top = rbdfs::fuse::mountinfo::top_mount_at(&mnt).expect("a mount at the path");
    assert_eq!(top.fstype, "tmpfs");
    let mut back = vec![0u8; 1 << 20];
    held.read_exact_at(&mut back, 0).unwrap();
    assert!(
        back == pattern(3, 1 << 20),
        "the open file reads back wrong"
    );

    // Act / Assert: once the last open file is closed, the daemon flushes,
    // closes the store and exits 0.
    drop(held);
    w.wait_daemon_exit();
    assert!(w.log().contains("closed cleanly"), "{}", w.log());
    assert_eq!(
        rbdfs::fuse::mountinfo::top_mount_at(&mnt).map(|t| t.fstype),
        Some("tmpfs".to_string())
    );
}

#[test]
fn test_second_sigterm_after_a_lazy_unmount_flushes_and_exits() {
    use std::os::unix::fs::FileExt;
    // Arrange: as above, and a write through the held file.
    let mut w = World::new();
    let img = w.path("rbd/img");
    std::fs::write(&img, pattern(4, 1 << 20)).unwrap();
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    run("umount", &[std::ffi::OsStr::new("-l"), w.mnt.as_os_str()]);
    let mnt = w.mnt.clone();
    w.mount_tmpfs(&mnt);
    held.write_all_at(&pattern(5, 4096), 8192).unwrap();

    // Act: two signals.
    // SAFETY: signalling the daemon we started.
    assert_eq!(unsafe { libc::kill(w.daemon_pid(), libc::SIGTERM) }, 0);
    crate::harness::wait_until("the daemon to handle the first signal", || {
        w.log().contains("is no longer this daemon's mount")
    });
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(w.daemon_pid(), libc::SIGTERM) }, 0);

    // Assert: it flushes, closes the store cleanly and exits 0 while the
    // file is still open, whose I/O fails from then on; the tmpfs stays;
    // the store opens and holds the write.
    w.wait_daemon_exit();
    assert!(w.log().contains("closed cleanly"), "{}", w.log());
    let mut back = vec![0u8; 4096];
    assert!(held.read_exact_at(&mut back, 0).is_err());
    let top = rbdfs::fuse::mountinfo::top_mount_at(&mnt).expect("a mount at the path");
    assert_eq!(top.fstype, "tmpfs");
    let exported = w.dir.path().join("img.raw");
    w.cli(&["export", "rbd/img", exported.to_str().unwrap()]);
    let mut want = pattern(4, 1 << 20);
    want[8192..8192 + 4096].copy_from_slice(&pattern(5, 4096));
    assert!(
        std::fs::read(&exported).unwrap() == want,
        "the image lost the write"
    );
}

/// `ls` of `dir` as user nobody.
fn ls_as_nobody(dir: &std::path::Path) -> std::process::Output {
    crate::harness::output(
        "setpriv",
        &[
            "--reuid=65534".as_ref(),
            "--regid=65534".as_ref(),
            "--clear-groups".as_ref(),
            "ls".as_ref(),
            dir.as_os_str(),
        ],
    )
}

#[test]
fn test_other_users_are_kept_out_unless_allow_other() {
    // Arrange: two mounts, one with --allow-other; their parents are
    // searchable by everyone, so only the mount itself can say no.
    let closed = World::new();
    let open = World::with_mount_args(&["--allow-other"]);
    for w in [&closed, &open] {
        std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(w.path("rbd/img"), b"x").unwrap();
    }

    // Act
    let denied = ls_as_nobody(&closed.mnt.join("rbd"));
    let allowed = ls_as_nobody(&open.mnt.join("rbd"));

    // Assert
    assert!(
        !denied.status.success(),
        "another user listed a mount without --allow-other"
    );
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&allowed.stdout), "img\n");
}

#[test]
fn test_export_to_stdout_and_import_from_stdin_while_mounted() {
    use std::io::Write;
    // Arrange: an image with content, written through the mount.
    let w = World::new();
    let src = w.path("rbd/src");
    let content = pattern(11, (5 << 20) + 123);
    std::fs::write(&src, &content).unwrap();

    // Act: export to a pipe, import from a pipe.
    let exported = w.cli_output(&["export", "rbd/src", "-"]);
    let mut child = std::process::Command::new(crate::harness::rbdfs_bin())
        .arg("--store")
        .arg(&w.store)
        .args(["import", "-", "rbd/dst"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&content).unwrap();
    let status = child.wait().unwrap();

    // Assert
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    assert!(exported.stdout == content, "exported bytes differ");
    assert!(status.success(), "import failed: {status}");
    assert!(std::fs::read(w.path("rbd/dst")).unwrap() == content);
}

#[test]
fn test_seek_data_and_seek_hole_see_the_images_holes() {
    use std::os::fd::AsRawFd;
    // Arrange: 64 MiB image, 4 KiB of data at 9 MiB (in the object at 8..12 MiB).
    let w = World::new();
    let img = w.path("rbd/sparse");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&img)
        .unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &pattern(4, 4096), 9 << 20).unwrap();
    f.sync_all().unwrap();

    // Act
    // SAFETY: lseek on a descriptor we own.
    let (data, hole) = unsafe {
        (
            libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA),
            libc::lseek(f.as_raw_fd(), 8 << 20, libc::SEEK_HOLE),
        )
    };

    // Assert: object granularity, as the object map knows it.
    assert_eq!(data, 8 << 20);
    assert_eq!(hole, 12 << 20);
}

#[test]
fn test_direct_and_cached_opens_of_an_image_see_each_others_writes() {
    // Arrange: an image whose first blocks sit in the page cache of a
    // cached open (as `cmp` or `cp` next to a direct-I/O loop device).
    use std::os::unix::fs::FileExt;
    let w = World::new();
    let img = w.path("rbd/shared");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::write(&img, pattern(1, 1 << 20)).unwrap();
    let cached = std::fs::File::open(&img).unwrap();
    let mut before = vec![0u8; 1 << 16];
    cached.read_exact_at(&mut before, 0).unwrap();
    assert!(before[..] == pattern(1, 1 << 20)[..1 << 16]);
    let block = w.dir.path().join("block");
    std::fs::write(&block, pattern(2, 4096)).unwrap();

    // Act: a direct write into the cached range, then a cached write read
    // back directly.
    let dd = |args: &[&str]| {
        let mut all = vec!["bs=4096", "count=1", "status=none"];
        all.extend_from_slice(args);
        run("dd", &all);
    };
    let (img_s, block_s) = (img.to_str().unwrap(), block.to_str().unwrap());
    dd(&[
        &format!("if={block_s}"),
        &format!("of={img_s}"),
        "seek=2",
        "oflag=direct",
        "conv=notrunc",
    ]);
    let mut seen_cached = vec![0u8; 4096];
    cached.read_exact_at(&mut seen_cached, 8192).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&pattern(3, 4096), 16384)
        .unwrap();
    let out = w.dir.path().join("out");
    dd(&[
        &format!("if={img_s}"),
        &format!("of={}", out.to_str().unwrap()),
        "skip=4",
        "iflag=direct",
    ]);

    // Assert
    assert!(
        seen_cached == pattern(2, 4096),
        "a cached open still sees the bytes a direct write replaced"
    );
    assert!(
        std::fs::read(&out).unwrap() == pattern(3, 4096),
        "a direct read misses a cached open's write"
    );
}

#[test]
fn test_cli_resize_grows_a_loop_attached_ext4_at_once() {
    // Arrange: ext4 on a 256 MiB image, attached and mounted, with a file.
    let mut w = World::new();
    let vm = w.path("rbd/vm");
    std::fs::File::create(&vm)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let (dev, at) = w.ext4_on(&vm, "fs", &["--direct-io=on"]);
    std::fs::write(at.join("f"), pattern(3, 1 << 20)).unwrap();
    // The kernel holds the image's size now (for the 1 s attribute TTL).
    assert_eq!(std::fs::metadata(&vm).unwrap().len(), 256 << 20);

    // Act: grow it with the CLI while mounted, then as a user grows a VM's
    // disk: tell the loop device, then the filesystem. Nothing reads the
    // image file's size in between (`losetup -c` takes the kernel's).
    // (Offline: this machine refuses ext4's online resize ioctl.)
    w.cli(&["resize", "rbd/vm", "--size", "512M"]);
    run("losetup", &["-c", &dev]);
    let dev_size = run("blockdev", &["--getsize64", &dev]);
    w.umount(&at);
    w.fsck_clean(&dev);
    // resize2fs wants a check newer than the last mount (`-n` records none).
    run("e2fsck", &["-f", "-y", &dev]);
    run("resize2fs", &[&dev]);
    let at = w.mount_dev(&dev, "fs2", &[]);

    // Assert: the device and the filesystem grew, the file is intact, and
    // the filesystem checks clean.
    assert_eq!(dev_size.trim(), (512u64 << 20).to_string());
    assert_eq!(std::fs::metadata(&vm).unwrap().len(), 512 << 20);
    let df = run("df", &["-B1", "--output=size", at.to_str().unwrap()]);
    let fs_size: u64 = df.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(fs_size > 400 << 20, "ext4 did not grow: {df}");
    assert!(std::fs::read(at.join("f")).unwrap() == pattern(3, 1 << 20));
    w.umount(&at);
    w.fsck_clean(&dev);
}

#[test]
fn test_cli_rename_and_remove_while_mounted_show_at_once() {
    use std::os::fd::AsRawFd;
    // Arrange: three images, all looked up (the kernel caches their names
    // for the 1 s entry TTL), two of them open.
    let w = World::new();
    for name in ["a", "b", "keep"] {
        std::fs::File::create(w.path(&format!("rbd/{name}")))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert!(w.path(&format!("rbd/{name}")).exists());
    }
    let open = std::fs::File::open(w.path("rbd/keep")).unwrap();
    let open_a = std::fs::File::open(w.path("rbd/a")).unwrap();

    // Act
    w.cli(&["rename", "rbd/a", "rbd/c"]);
    let a_after_rename = w.path("rbd/a").exists();
    w.cli(&["rm", "rbd/b"]);
    let b_after_rm = w.path("rbd/b").exists();

    // Assert: the old names are gone at once, the new one is there, the
    // file opened under the old name is the renamed image, and the other
    // open file's name was left alone (not shown as deleted).
    assert!(
        !a_after_rename,
        "rbd/a still there after the CLI renamed it"
    );
    assert!(!b_after_rm, "rbd/b still there after the CLI removed it");
    assert_eq!(std::fs::metadata(w.path("rbd/c")).unwrap().len(), 1 << 20);
    assert_eq!(open_a.metadata().unwrap().len(), 1 << 20);
    let link = std::fs::read_link(format!("/proc/self/fd/{}", open.as_raw_fd())).unwrap();
    assert_eq!(link, w.path("rbd/keep"));
}

#[test]
fn test_signals_while_the_store_closes_are_heard_and_a_second_exits() {
    // Arrange: a CLI import the daemon runs from a FIFO nobody writes, so
    // after the unmount the daemon waits for it before closing the store.
    let mut w = World::new();
    let fifo = w.dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut import = std::process::Command::new(crate::harness::rbdfs_bin())
        .arg("--store")
        .arg(&w.store)
        .args(["--no-progress", "import"])
        .arg(&fifo)
        .arg("img")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::harness::wait_until("the daemon to run the import", || {
        w.log().contains(" import")
    });
    run(
        "fusermount3",
        &[std::ffi::OsStr::new("-u"), w.mnt.as_os_str()],
    );
    crate::harness::wait_until("the daemon to wait for the import", || {
        w.log().contains("waiting for 1 admin request")
    });
    let pid = w.daemon_pid();

    // Act
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    crate::harness::wait_until("the first signal to be heard", || {
        w.log().contains("already unmounted")
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = w.daemon_status();

    // Assert: it exited at once, and the store opens again.
    assert_eq!(status.code(), Some(1), "{}", w.log());
    let _ = import.kill();
    let _ = import.wait();
    w.start_daemon();
    assert!(w.path("rbd").is_dir());
}

#[test]
fn test_status_lists_who_holds_an_image_open_loop_devices_included() {
    // Arrange: an image with a snapshot, neither open.
    let mut w = World::new();
    let img = w.path("rbd/img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    w.cli(&["snap", "create", "rbd/img@s"]);
    let watchers = |w: &World| -> serde_json::Value {
        let out = w.cli(&["status", "rbd/img", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
        v["watchers"].clone()
    };
    let idle = watchers(&w);
    let idle_text = w.cli(&["status", "rbd/img"]);

    // Act: a loop device on the head, the snapshot open here.
    let dev = w.losetup(&img, &[]);
    let snap = std::fs::File::open(w.path("rbd/img@s")).unwrap();
    let busy = watchers(&w);
    let busy_text = w.cli(&["status", "rbd/img"]);
    drop(snap);
    w.detach(&dev);

    // Assert: losetup has exited; the loop device holds its handle.
    assert_eq!(idle, serde_json::json!([]), "idle: {idle}");
    assert!(idle_text.contains("Watchers: none"), "{idle_text}");
    let list = busy.as_array().expect("watchers array");
    assert_eq!(list.len(), 2, "{busy}");
    let head = list.iter().find(|x| x["file"] == "rbd/img").expect("head");
    assert_eq!(head["loop_device"], serde_json::json!(dev), "{busy}");
    assert_eq!(head["writable"], true);
    assert_eq!(head["process"], "losetup");
    assert_eq!(head["running"], false);
    let reader = list
        .iter()
        .find(|x| x["file"] == "rbd/img@s")
        .expect("snap");
    assert_eq!(reader["pid"], std::process::id(), "{busy}");
    assert_eq!(reader["running"], true);
    assert_eq!(reader["writable"], false);
    assert!(reader.get("loop_device").is_none(), "{busy}");
    assert!(
        busy_text.contains(&format!("watcher={dev} rbd/img read-write, set up by pid")),
        "{busy_text}"
    );
    // FUSE sends a release after the last close returns: wait for it.
    crate::harness::wait_until("the handles to be released", || {
        watchers(&w) == serde_json::json!([])
    });
}
