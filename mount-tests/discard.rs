//! Scenario 7: discards from the filesystem or the block device free objects.

use crate::harness::{World, pattern, run};

fn used(w: &World, spec: &str) -> u64 {
    let out = w.cli(&["du", spec, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("du json");
    v["images"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e.get("snapshot").is_none()))
        .and_then(|e| e["used_size"].as_u64())
        .unwrap_or_else(|| panic!("no head entry in du output: {out}"))
}

#[test]
fn test_fstrim_after_delete_shrinks_du() {
    // Arrange: ext4 with a 24 MiB file.
    let mut w = World::new();
    let vm = w.path("rbd/vm");
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s"), "256M".as_ref(), vm.as_os_str()],
    );
    let (_dev, at) = w.ext4_on(&vm, "fs", &[]);
    std::fs::write(at.join("big"), pattern(3, 24 << 20)).unwrap();
    run::<&str>("sync", &[]);
    let before = used(&w, "rbd/vm");

    // Act
    std::fs::remove_file(at.join("big")).unwrap();
    run::<&str>("sync", &[]);
    run("fstrim", &[at.as_os_str()]);

    // Assert
    let after = used(&w, "rbd/vm");
    assert!(
        after + (16 << 20) <= before,
        "du went from {before} to {after} only"
    );
}

#[test]
fn test_blkdiscard_of_loop_device_frees_all_objects() {
    // Arrange: 8 MiB written straight to the loop device.
    let mut w = World::new();
    let vm = w.path("rbd/raw");
    run(
        "truncate",
        &[std::ffi::OsStr::new("-s"), "64M".as_ref(), vm.as_os_str()],
    );
    let dev = w.losetup(&vm, &[]);
    std::fs::write(&dev, pattern(5, 8 << 20)).unwrap();
    run("sync", &[&dev]);
    assert_eq!(used(&w, "rbd/raw"), 8 << 20);

    // Act
    run("blkdiscard", &[&dev]);

    // Assert
    assert_eq!(used(&w, "rbd/raw"), 0);
}
