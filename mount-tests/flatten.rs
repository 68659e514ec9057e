//! Scenario 4: flatten a loop-attached clone through `setfattr` while fio
//! writes and verifies on it; afterwards the clone stands alone and the parent
//! snapshot can go.

use std::process::{Command, Stdio};

use crate::harness::{World, getfattr, pattern, run, setfattr, wait_until};

fn flatten_state_is_valid(s: &str) -> bool {
    if s == "idle" || s == "done" || s.starts_with("failed: ") {
        return true;
    }
    let Some(rest) = s.strip_prefix("running ") else {
        return false;
    };
    match rest.split_once('/') {
        Some((d, t)) => matches!((d.parse::<u64>(), t.parse::<u64>()), (Ok(d), Ok(t)) if d <= t),
        None => false,
    }
}

/// `base@s1` (protected) with ext4 and some data, and a clone `child` of it.
fn golden_clone(w: &mut World) {
    let base = w.path("rbd/base");
    run(
        "truncate",
        &[
            std::ffi::OsStr::new("-s"),
            "512M".as_ref(),
            base.as_os_str(),
        ],
    );
    let (dev, at) = w.ext4_on(&base, "base", &[]);
    for i in 0..4 {
        std::fs::write(at.join(format!("g{i}")), pattern(i, 3 << 20)).unwrap();
    }
    w.umount(&at);
    w.detach(&dev);
    w.cli(&["snap", "create", "rbd/base@s1"]);
    w.cli(&["snap", "protect", "rbd/base@s1"]);
    w.cli(&["clone", "rbd/base@s1", "rbd/child"]);
}

#[test]
fn test_flatten_by_xattr_under_fio_verify_detaches_clone() {
    // Arrange: the clone mounted through a direct-I/O loop device, fio running.
    let mut w = World::new();
    golden_clone(&mut w);
    let child = w.path("rbd/child");
    assert_eq!(getfattr(&child, "user.rbd.flatten").unwrap(), "idle");
    let (dev, at) = w.ext4_on_existing_opts(&child, "child", &["--direct-io=on"]);
    let fio_file = at.join("fio.dat");
    let fio = Command::new("fio")
        .args(["--name=verify", "--rw=randwrite", "--bs=4k", "--size=24M"])
        .args([
            "--ioengine=psync",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
        ])
        .args(["--loops=3", "--fsync=64", "--verify_state_save=0"])
        .arg(format!("--filename={}", fio_file.display()))
        .current_dir(&at)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fio");
    wait_until("fio to create its file", || fio_file.exists());

    // Act
    setfattr(&child, "user.rbd.flatten", "1").expect("start flatten");
    let mut states = Vec::new();
    wait_until("flatten to finish", || {
        let s = getfattr(&child, "user.rbd.flatten").unwrap();
        let finished = s == "done" || s.starts_with("failed");
        states.push(s);
        finished
    });
    let fio_out = fio.wait_with_output().expect("wait for fio");

    // Assert
    assert_eq!(
        states.last().map(String::as_str),
        Some("done"),
        "states: {states:?}"
    );
    assert!(
        states.iter().all(|s| flatten_state_is_valid(s)),
        "states: {states:?}"
    );
    assert!(
        fio_out.status.success(),
        "fio verify failed:\n{}{}",
        String::from_utf8_lossy(&fio_out.stdout),
        String::from_utf8_lossy(&fio_out.stderr)
    );
    assert!(
        getfattr(&child, "user.rbd.parent").is_err(),
        "clone still has a parent"
    );
    w.cli(&["snap", "unprotect", "rbd/base@s1"]);
    w.cli(&["snap", "rm", "rbd/base@s1"]);
    for i in 0..4 {
        assert!(std::fs::read(at.join(format!("g{i}"))).unwrap() == pattern(i, 3 << 20));
    }
    w.umount(&at);
    w.fsck_clean(&dev);
}

#[test]
fn test_flatten_from_cli_while_mounted_runs_in_daemon_with_progress() {
    // Arrange
    let mut w = World::new();
    golden_clone(&mut w);

    // Act
    let out = w.cli_output(&["flatten", "rbd/child"]);

    // Assert
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flatten failed: {err}");
    assert!(
        err.contains("Image flatten: 100% complete...done."),
        "stderr: {err}"
    );
    assert!(getfattr(&w.path("rbd/child"), "user.rbd.parent").is_err());
    assert_eq!(
        getfattr(&w.path("rbd/child"), "user.rbd.flatten").unwrap(),
        "done"
    );
    assert!(
        w.log().contains("flatten"),
        "the daemon did not run the flatten"
    );
}
