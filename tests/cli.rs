//! CLI tests: the built `rbdfs` binary on a temporary store, without a daemon
//! (each command opens the store itself): every verb, its JSON, its errors and
//! exit codes, and that refused commands change nothing.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A private copy of the binary under test (the target directory is shared,
/// so a rebuild during the run must not swap it).
fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = env!("CARGO_BIN_EXE_rbdfs");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("rbdfs-cli-bin")
            .join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create a directory for the binary");
        let copy = dir.join("rbdfs");
        std::fs::copy(built, &copy).expect("copy the rbdfs binary");
        copy.to_string_lossy().into_owned()
    })
}

/// Run `rbdfs --store STORE args...` and return what it did.
fn rbdfs_on(store: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run rbdfs")
}

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        let s = Store {
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        s.ok(&["init"]);
        s
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--store")
            .arg(self.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rbdfs")
    }

    /// Run, require success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "rbdfs {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Run, require failure with `errno` as exit code and one `rbdfs:` line.
    fn fails(&self, args: &[&str], errno: i32) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(errno), "rbdfs {args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("rbdfs: ")).collect();
        assert_eq!(lines.len(), 1, "want one error line, got: {err}");
        err
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("valid JSON")
    }
}

#[test]
fn test_create_ls_info_json_shape() {
    // Arrange
    let s = Store::new();

    // Act
    s.ok(&["create", "--size", "1G", "rbd/parent"]);

    // Assert
    assert_eq!(s.ok(&["ls"]), "parent\n");
    let info = s.json(&["info", "parent"]);
    assert_eq!(info["name"], "parent");
    assert_eq!(info["size"], 1u64 << 30);
    assert_eq!(info["objects"], 256);
    assert_eq!(info["order"], 22);
    assert_eq!(info["object_size"], 4 << 20);
    assert_eq!(info["format"], 2);
    assert!(
        info["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "layering")
    );
    assert!(info.get("parent").is_none());
    // A new image was last read and written when it was created.
    assert_eq!(info["access_timestamp"], info["create_timestamp"]);
    assert_eq!(info["modify_timestamp"], info["create_timestamp"]);
    let text = s.ok(&["info", "parent"]);
    assert!(
        text.starts_with("rbd image 'parent':\n\tsize 1 GiB in 256 objects\n"),
        "{text}"
    );
    for line in [
        "create_timestamp: ",
        "access_timestamp: ",
        "modify_timestamp: ",
    ] {
        assert!(text.contains(&format!("\t{line}")), "{text}");
    }
}

#[test]
fn test_create_errors_have_rbd_exit_codes_and_change_nothing() {
    let s = Store::new();
    s.ok(&["create", "--size", "64M", "a"]);

    s.fails(&["create", "b"], libc::EINVAL);
    s.fails(&["create", "--size", "12Q", "b"], libc::EINVAL);
    s.fails(&["create", "--size", "1M", "a"], libc::EEXIST);
    s.fails(&["create", "--size", "1M", "x/y/z"], libc::EINVAL);
    s.fails(&["create", "--size", "1M", "nopool/b"], libc::ENOENT);
    s.fails(&["info", "nosuch"], libc::ENOENT);
    let huge = s.fails(&["create", "--size", "1023T", "huge"], libc::EINVAL);
    assert!(huge.contains("larger object size"), "{huge}");

    assert_eq!(s.ok(&["ls"]), "a\n");
}

#[test]
fn test_resize_shrink_needs_flag() {
    let s = Store::new();
    s.ok(&["create", "--size", "1G", "img"]);

    s.fails(&["resize", "--size", "512M", "img"], libc::EINVAL);
    assert_eq!(s.json(&["info", "img"])["size"], 1u64 << 30);
    s.ok(&["resize", "--size", "512M", "--allow-shrink", "img"]);
    assert_eq!(s.json(&["info", "img"])["size"], 512u64 << 20);
    s.ok(&["resize", "--size", "2G", "img"]);
    assert_eq!(s.json(&["info", "img"])["size"], 2u64 << 30);
}

#[test]
fn test_a_size_without_a_unit_is_mib_as_in_rbd() {
    let s = Store::new();
    s.ok(&["create", "-s", "1024", "img"]);
    assert_eq!(s.json(&["info", "img"])["size"], 1u64 << 30);

    // The rbd user's grow must not shrink the image to 2 KiB.
    s.ok(&["resize", "-s", "2048", "--allow-shrink", "img"]);
    assert_eq!(s.json(&["info", "img"])["size"], 2u64 << 30);
    s.ok(&["resize", "-s", "4096B", "--allow-shrink", "img"]);
    assert_eq!(s.json(&["info", "img"])["size"], 4096);
}

#[test]
fn test_snapshot_protect_clone_flatten_cycle() {
    // Arrange: parent with data, snapshot s1.
    let s = Store::new();
    let data = s.dir.path().join("data");
    std::fs::write(&data, vec![b'A'; 4 << 20]).unwrap();
    s.ok(&["import", data.to_str().unwrap(), "parent"]);
    s.ok(&["snap", "create", "parent@s1"]);

    // Act + Assert: the rbd sequence of the reference, exit code by exit code.
    s.fails(&["clone", "parent@s1", "child"], libc::EINVAL);
    s.fails(&["clone", "parent", "child"], libc::EINVAL);
    s.ok(&["snap", "protect", "parent@s1"]);
    s.fails(&["snap", "protect", "parent@s1"], libc::EBUSY);
    s.ok(&["clone", "parent@s1", "child"]);
    s.fails(&["clone", "parent@s1", "child"], libc::EEXIST);
    s.fails(&["clone", "parent@nosnap", "x"], libc::ENOENT);
    assert_eq!(s.ok(&["children", "parent@s1"]), "rbd/child\n");
    let err = s.fails(&["snap", "unprotect", "parent@s1"], libc::EBUSY);
    assert!(
        err.contains("child"),
        "unprotect error names no clone: {err}"
    );
    s.fails(&["snap", "rm", "parent@s1"], libc::EBUSY);
    s.fails(&["rm", "parent"], libc::ENOTEMPTY);
    s.fails(&["flatten", "parent"], libc::EINVAL);
    let info = s.json(&["info", "child"]);
    assert_eq!(info["parent"]["image"], "parent");
    assert_eq!(info["parent"]["snapshot"], "s1");
    let out = s.run(&["flatten", "child"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.ends_with("Image flatten: 100% complete...done.\n"),
        "stderr: {err}"
    );
    s.fails(&["flatten", "child"], libc::EINVAL);
    assert!(s.json(&["info", "child"]).get("parent").is_none());
    assert_eq!(s.ok(&["children", "parent@s1"]), "");
    s.ok(&["snap", "unprotect", "parent@s1"]);
    s.fails(&["snap", "unprotect", "parent@s1"], libc::EINVAL);
    s.ok(&["snap", "rm", "parent@s1"]);
    s.ok(&["rm", "parent"]);
    assert_eq!(s.ok(&["ls"]), "child\n");
}

#[test]
fn test_snap_ls_json_and_rollback_restores_content() {
    // Arrange: an image with known bytes, a snapshot, then a change (a resize).
    let s = Store::new();
    let file = s.dir.path().join("f");
    std::fs::write(&file, b"version-1").unwrap();
    s.ok(&["import", file.to_str().unwrap(), "img"]);
    s.ok(&["snap", "create", "img@v1"]);
    s.ok(&["resize", "--size", "1M", "img"]);

    // Act
    s.ok(&["snap", "rollback", "img@v1"]);

    // Assert
    let snaps = s.json(&["snap", "ls", "img"]);
    assert_eq!(snaps[0]["name"], "v1");
    assert_eq!(snaps[0]["protected"], "false");
    assert_eq!(snaps[0]["size"], 9);
    let out = s.dir.path().join("out");
    s.ok(&["export", "img", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), b"version-1");
    s.fails(&["snap", "rollback", "img@nope"], libc::ENOENT);
    s.fails(&["rm", "img"], libc::ENOTEMPTY);
    assert_eq!(s.ok(&["ls"]), "img\n");
}

#[test]
fn test_export_of_import_is_byte_identical_and_sparse() {
    // Arrange: 9 MiB with data at the start and the end, a hole between.
    let s = Store::new();
    let mut content = vec![0u8; 9 << 20];
    content[..4096].fill(b'x');
    let n = content.len();
    content[n - 10..].fill(b'y');
    let src = s.dir.path().join("src.img");
    std::fs::write(&src, &content).unwrap();
    let dst = s.dir.path().join("dst.img");

    // Act
    s.ok(&["import", src.to_str().unwrap(), "img"]);
    s.ok(&["export", "img", dst.to_str().unwrap()]);

    // Assert
    assert!(std::fs::read(&dst).unwrap() == content);
    let du = s.json(&["du", "img"]);
    let head = &du["images"][0];
    assert_eq!(head["name"], "img");
    assert_eq!(head["provisioned_size"], 9u64 << 20);
    assert_eq!(
        head["used_size"],
        8u64 << 20,
        "the hole object stays unallocated"
    );
}

#[test]
fn test_export_to_existing_file_is_refused() {
    let s = Store::new();
    s.ok(&["create", "--size", "1M", "img"]);
    let dst = s.dir.path().join("exists");
    std::fs::write(&dst, b"keep").unwrap();

    s.fails(&["export", "img", dst.to_str().unwrap()], libc::EEXIST);

    assert_eq!(std::fs::read(&dst).unwrap(), b"keep");
}

#[test]
fn test_rename_and_ls_long_json() {
    let s = Store::new();
    s.ok(&["create", "--size", "1G", "old"]);

    s.ok(&["rename", "old", "new"]);

    let rows = s.json(&["ls", "-l"]);
    assert_eq!(rows[0]["image"], "new");
    assert_eq!(rows[0]["size"], 1u64 << 30);
    s.fails(&["rename", "new", "other/new"], libc::EINVAL);
    s.fails(&["rename", "new", "new"], libc::EEXIST);
    assert_eq!(s.ok(&["ls"]), "new\n");
}

#[test]
fn test_flatten_of_a_snapshot_is_refused_as_rbd_does() {
    let s = Store::new();
    s.ok(&["create", "--size", "1M", "img"]);
    s.ok(&["snap", "create", "img@s"]);

    let err = s.fails(&["flatten", "img@s"], libc::EINVAL);

    assert!(err.contains("snapshot name"), "{err}");
}

#[test]
fn test_du_of_a_missing_snapshot_fails() {
    let s = Store::new();
    s.ok(&["create", "--size", "1M", "img"]);

    s.fails(&["du", "img@nosuch"], libc::ENOENT);
}

#[test]
fn test_du_and_ls_take_a_pool_option() {
    let s = Store::new();
    s.ok(&["pool", "create", "fast", "--size", "2"]);
    s.ok(&["create", "--size", "1M", "fast/img"]);
    s.ok(&["create", "--size", "1M", "other"]);
    s.ok(&["create", "--size", "2M", "fast/img2"]);

    let all = s.json(&["du", "-p", "fast"]);
    let one = s.json(&["du", "--pool", "fast", "img"]);

    assert_eq!(all["images"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all["images"][0]["name"], "img");
    assert_eq!(all["total_provisioned_size"], 3u64 << 20);
    assert_eq!(one["images"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["images"][0]["name"], "img");
    assert!(one.get("total_used_size").is_none(), "a total of one row");
    assert_eq!(s.ok(&["ls", "-p", "fast"]), "img\nimg2\n");
}

#[test]
fn test_init_with_more_replicas_than_osds_leaves_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let run = |args: &[&str]| rbdfs_on(&store, args);

    for bad in ["5", "0"] {
        let out = run(&["init", "--replicas", bad]);
        assert_eq!(out.status.code(), Some(libc::EINVAL), "--replicas {bad}");
    }

    let listed = run(&["ls"]);
    assert_eq!(listed.status.code(), Some(libc::ENOENT), "a store was left");
    assert!(run(&["init", "--replicas", "3"]).status.success());
}

#[test]
fn test_pool_create_and_ls() {
    let s = Store::new();

    s.ok(&["pool", "create", "fast", "--size", "2"]);

    let pools = s.json(&["pool", "ls"]);
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rbd", "fast"]);
    assert_eq!(pools[1]["size"], 2);
    s.ok(&["create", "--size", "1M", "fast/img"]);
    assert_eq!(s.ok(&["ls", "fast"]), "img\n");
    s.fails(&["pool", "create", "fast"], libc::EEXIST);
}

#[test]
fn test_commands_on_missing_store_say_how_to_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("--store")
        .arg(dir.path().join("none"))
        .arg("ls")
        .output()
        .unwrap();

    assert_eq!(out.status.code(), Some(libc::ENOENT));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("init"), "{err}");
}

#[test]
fn test_osd_out_add_and_pg_ls_json() {
    let s = Store::new();

    s.ok(&["osd", "out", "2"]);
    let added = s.ok(&[
        "osd",
        "add",
        "--path",
        &s.dir.path().join("osd.new").to_string_lossy(),
    ]);

    assert_eq!(added, "osd.3\n");
    let osds = s.json(&["osd", "ls"]);
    let osds = osds.as_array().unwrap();
    assert_eq!(osds.len(), 4);
    assert_eq!(osds[2]["in"], false);
    assert_eq!(osds[3]["up"], true);
    let pgs = s.json(&["pg", "ls"]);
    for pg in pgs.as_array().unwrap() {
        assert_eq!(pg["state"], "active+clean", "{pg}");
        assert!(
            !pg["acting"].as_array().unwrap().contains(&2.into()),
            "{pg}"
        );
    }
    let status = s.json(&["status"]);
    assert_eq!(status["cluster"]["health"], "HEALTH_OK");
    assert_eq!(status["cluster"]["num_in_osds"], 3);
    s.fails(&["osd", "rm", "2"], libc::EBUSY);
    s.fails(&["osd", "rm", "9"], libc::ENOENT);
    assert_eq!(s.json(&["osd", "ls"]).as_array().unwrap().len(), 4);
}

#[test]
fn test_osd_lost_needs_confirmation_and_a_down_osd() {
    let s = Store::new();

    let unconfirmed = s.fails(&["osd", "lost", "2"], libc::EPERM);
    s.fails(
        &["osd", "lost", "2", "--yes-i-really-mean-it"],
        libc::EINVAL,
    );
    std::fs::rename(s.path().join("osd.2"), s.dir.path().join("osd.2.gone")).unwrap();
    s.ok(&["osd", "lost", "2", "--yes-i-really-mean-it"]);

    assert!(
        unconfirmed.contains("--yes-i-really-mean-it"),
        "{unconfirmed}"
    );
    let osds = s.json(&["osd", "ls"]);
    assert_eq!(osds[2]["lost"], true, "{osds}");
    assert_eq!(osds[1]["lost"], false, "{osds}");
    assert!(s.ok(&["osd", "ls"]).contains("down (lost)"));
}

#[test]
fn test_scrub_finds_flipped_byte_fails_then_repair_makes_it_clean() {
    let s = Store::new();
    let input = s.dir.path().join("input");
    let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    s.ok(&["import", &input.to_string_lossy(), "img"]);
    // The largest object file of osd.0 holds image data.
    let mut files = Vec::new();
    for d in std::fs::read_dir(s.path().join("osd.0/objects")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            files.push((f.metadata().unwrap().len(), f.path()));
        }
    }
    let (_, victim) = files.into_iter().max().unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();

    let found = s.fails(&["scrub", "--deep"], libc::EIO);

    assert!(found.contains("1 inconsistent"), "{found}");
    let report = s.json(&["scrub", "--deep", "--repair"]);
    assert_eq!(report["inconsistencies"].as_array().unwrap().len(), 1);
    assert_eq!(report["inconsistencies"][0]["repaired"], true);
    assert!(s.ok(&["scrub", "--deep"]).contains(" 0 inconsistent"));
    let out = s.dir.path().join("output");
    s.ok(&["export", "img", &out.to_string_lossy()]);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "export differs from import"
    );
}

#[test]
fn test_progress_lines_as_rbd_prints_them() {
    let s = Store::new();
    s.ok(&["create", "--size", "1M", "img"]);
    let stderr = |args: &[&str]| String::from_utf8(s.run(args).stderr).unwrap();

    let created = stderr(&["snap", "create", "img@s"]);
    let again = stderr(&["snap", "create", "img@s"]);
    let bad_spec = stderr(&["rm", "img@s"]);
    let removed = stderr(&["snap", "rm", "img@s"]);

    assert_eq!(created, "Creating snap: 100% complete...done.\n");
    assert!(
        again.starts_with("Creating snap: 0% complete...failed.\n"),
        "{again}"
    );
    assert!(!bad_spec.contains("complete"), "{bad_spec}");
    assert_eq!(removed, "Removing snap: 100% complete...done.\n");
}

#[test]
fn test_import_without_a_name_names_the_image_after_the_file() {
    let s = Store::new();
    let file = s.dir.path().join("disk.img");
    std::fs::write(&file, b"content").unwrap();

    s.ok(&["import", file.to_str().unwrap()]);
    s.fails(&["import", "-"], libc::EINVAL);

    assert_eq!(s.ok(&["ls"]), "disk.img\n");
}

#[test]
fn test_init_again_after_an_init_that_failed_half_way() {
    // Arrange: an init stopped at its second OSD (the user's directory).
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let user = dir.path().join("user");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("keep"), b"mine").unwrap();
    let run = |args: &[&str]| rbdfs_on(&store, args);
    let first = dir.path().join("first");
    let last = dir.path().join("last");
    let (f, u, l) = (
        first.to_str().unwrap(),
        user.to_str().unwrap(),
        last.to_str().unwrap(),
    );
    assert!(
        !run(&["init", "--osd", f, "--osd", u, "--osd", l])
            .status
            .success()
    );

    let third = dir.path().join("third");
    let t = third.to_str().unwrap();

    // Act: again, on the OSD directory the first made, without the user's.
    let again = run(&["init", "--osd", f, "--osd", l, "--osd", t]);

    // Assert
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(run(&["ls"]).status.success());
    assert_eq!(std::fs::read(user.join("keep")).unwrap(), b"mine");
}
