//! Scenario 5: kill -9 of the daemon right after an fsync'd write loses nothing.

use std::io::Write;

use crate::harness::{World, pattern, run};

#[test]
fn test_fsynced_data_survives_kill_9() {
    // Arrange
    let mut w = World::new();
    let vm = w.path("rbd/vm");
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s"), "256M".as_ref(), vm.as_os_str()],
    );
    let (_dev, at) = w.ext4_on(&vm, "fs", &[]);

    // Act: write and fsync a file (ext4 turns it into a flush of the loop
    // device, the loop driver into an fsync of the image file), then SIGKILL.
    let mut f = std::fs::File::create(at.join("precious")).unwrap();
    f.write_all(&pattern(42, 3 << 20)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    w.kill_daemon();
    w.start_daemon();
    let dev = w.losetup(&vm, &[]);
    let at = w.mount_dev(&dev, "fs2", &[]);

    // Assert
    assert!(std::fs::read(at.join("precious")).unwrap() == pattern(42, 3 << 20));
    w.umount(&at);
    w.fsck_clean(&dev);
}
