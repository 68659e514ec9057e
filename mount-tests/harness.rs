//! What every mount scenario needs: a mounted store, loop devices, ext4 mounts,
//! and a guard that tears all of it down on drop, also when the test panics.
//!
//! These tests drive the built `rbdfs` binary and the system tools as a user
//! would. They need root, `/dev/fuse`, loop devices and the tools installed by
//! `contrib/install-deps.sh`; without them they fail with a message saying what
//! is missing, they never skip.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for anything we wait on (a mount appearing, a flatten ending).
pub const WAIT: Duration = Duration::from_secs(120);

/// The `rbdfs` binary under test: a private copy of the one cargo built, taken
/// once per run, so a rebuild in the same target directory while the tests run
/// cannot swap it underneath them.
pub fn rbdfs_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = env!("CARGO_BIN_EXE_rbdfs");
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rbdfs-bin");
        // Copies of earlier runs are stale; a failure to remove one is harmless.
        for old in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(old.path());
        }
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("create a directory for the binary");
        let copy = dir.join("rbdfs");
        std::fs::copy(built, &copy).expect("copy the rbdfs binary");
        let ok = Command::new(&copy)
            .args(["mount", "--help"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{built} has no `mount` verb: it is not this tree's build; rebuild"
        );
        copy.to_string_lossy().into_owned()
    })
}

/// Panic with a clear message unless the machine can run the mount tests.
pub fn require_environment() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "mount tests need root (FUSE mounts, losetup, mount)"
    );
    for dev in ["/dev/fuse", "/dev/loop-control"] {
        assert!(
            Path::new(dev).exists(),
            "mount tests need {dev}; load the module (modprobe fuse / loop) or run on a \
             machine that has it"
        );
    }
    for tool in [
        "fusermount3",
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
        "setfattr",
        "getfattr",
        "fio",
        "fstrim",
        "fallocate",
        "fsfreeze",
        "setpriv",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "mount tests need `{tool}` on PATH: run contrib/install-deps.sh"
        );
    }
}

/// Run a command, panic with its output unless it succeeds; return stdout.
pub fn run<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> String {
    let out = output(prog, args);
    assert!(
        out.status.success(),
        "`{prog} {}` failed ({}):\nstdout: {}\nstderr: {}",
        show_args(args),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command and return its output, whatever its status.
pub fn output<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Output {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{prog}`: {e}"))
}

fn show_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Poll `cond` until it holds or [`WAIT`] passes (then panic naming `what`).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `path` is a mount point right now (per /proc/mounts).
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let want = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == want)
}

/// A test's world: a store, its FUSE mount, and everything attached on top.
/// Dropping it unmounts the ext4 mounts, detaches the loop devices, unmounts
/// the FUSE mount and kills the daemon, in that order.
pub struct World {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    daemon: Option<Child>,
    /// Extra arguments of `rbdfs mount`.
    mount_args: Vec<String>,
    loops: Vec<String>,
    mounts: Vec<PathBuf>,
    /// The file system the store is on, when it has one of its own
    /// (unmounted once the daemon is gone).
    store_disk: Option<PathBuf>,
}

impl World {
    /// A fresh store mounted at a fresh mount point.
    pub fn new() -> Self {
        Self::with_mount_args(&[])
    }

    /// [`World::new`], with extra arguments to `rbdfs mount`.
    pub fn with_mount_args(args: &[&str]) -> Self {
        Self::build(args, None)
    }

    /// [`World::new`], the store on an ext4 file system of its own of `mib`
    /// MiB (on a loop device), so that it can fill up.
    pub fn on_small_disk(mib: u64) -> Self {
        Self::build(&[], Some(mib))
    }

    fn build(args: &[&str], disk_mib: Option<u64>) -> Self {
        require_environment();
        let dir = tempfile::Builder::new()
            .prefix("rbdfs-mt-")
            .tempdir()
            .expect("create a temporary directory");
        let mut store = dir.path().join("store");
        let mut store_disk = None;
        if let Some(mib) = disk_mib {
            let image = dir.path().join("disk.img");
            let at = dir.path().join("disk");
            std::fs::create_dir(&at).expect("create the disk's mount point");
            run(
                "truncate",
                &[
                    OsStr::new("-s"),
                    format!("{mib}M").as_ref(),
                    image.as_os_str(),
                ],
            );
            run(
                "mkfs.ext4",
                &[OsStr::new("-q"), "-F".as_ref(), image.as_os_str()],
            );
            run(
                "mount",
                &[
                    OsStr::new("-o"),
                    "loop".as_ref(),
                    image.as_os_str(),
                    at.as_os_str(),
                ],
            );
            store = at.join("store");
            store_disk = Some(at);
        }
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("create the mount point");
        let mut w = World {
            dir,
            store,
            mnt,
            daemon: None,
            mount_args: args.iter().map(|a| a.to_string()).collect(),
            loops: Vec::new(),
            mounts: Vec::new(),
            store_disk,
        };
        w.start_daemon();
        w
    }

    /// Start the daemon in the foreground (as a child) and wait for the mount.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).expect("log file");
        let child = Command::new(rbdfs_bin())
            .arg("--store")
            .arg(&self.store)
            .arg("mount")
            .arg(&self.mnt)
            .args(&self.mount_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn rbdfs mount");
        self.daemon = Some(child);
        let mnt = self.mnt.clone();
        let start = Instant::now();
        while !is_mounted(&mnt) {
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.daemon = None;
                panic!(
                    "rbdfs mount exited with {status} before mounting:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "mount did not appear:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_until("the rbd pool directory", || self.mnt.join("rbd").is_dir());
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Kill the daemon with SIGKILL and clear what it left behind: the dead FUSE
    /// mount (lazily), and everything stacked on it.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.teardown_stack();
        let _ = output("umount", &[OsStr::new("-l"), self.mnt.as_os_str()]);
        wait_until("the dead mount to go", || !is_mounted(&self.mnt));
    }

    /// Unmount cleanly (fusermount3 -u) and wait for the daemon to exit 0.
    pub fn stop_daemon(&mut self) {
        self.teardown_stack();
        run("fusermount3", &[OsStr::new("-u"), self.mnt.as_os_str()]);
        self.wait_daemon_exit();
    }

    /// Wait for the daemon to exit (something else ended its mount), which
    /// must be with status 0.
    pub fn wait_daemon_exit(&mut self) {
        let status = self.daemon_status();
        assert!(
            status.success(),
            "daemon exited with {status}:\n{}",
            self.log()
        );
    }

    /// Wait for the daemon to exit, whatever its status.
    pub fn daemon_status(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("daemon running");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("wait for daemon") {
                return s;
            }
            assert!(start.elapsed() < WAIT, "daemon did not exit after unmount");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process ID of the running daemon.
    pub fn daemon_pid(&self) -> i32 {
        self.daemon.as_ref().expect("daemon running").id() as i32
    }

    /// Mount a tmpfs at `at` (unmounted at teardown).
    pub fn mount_tmpfs(&mut self, at: &Path) {
        run(
            "mount",
            &[
                OsStr::new("-t"),
                "tmpfs".as_ref(),
                "tmpfs".as_ref(),
                at.as_os_str(),
            ],
        );
        self.mounts.push(at.to_path_buf());
    }

    /// Path of a file in the mount: `rel` like "rbd/vm".
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Run `rbdfs --store STORE args...`, panic unless it succeeds; stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--store"), self.store.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        run(rbdfs_bin(), &all)
    }

    /// Run `rbdfs --store STORE args...` and return its output whatever happens.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--store"), self.store.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        output(rbdfs_bin(), &all)
    }

    /// `losetup -f --show [extra] FILE`: attach, remember for teardown.
    pub fn losetup(&mut self, file: &Path, extra: &[&str]) -> String {
        let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), OsStr::new("--show")];
        args.extend(extra.iter().map(OsStr::new));
        args.push(file.as_os_str());
        let dev = run("losetup", &args).trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        self.loops.push(dev.clone());
        dev
    }

    /// Detach a loop device attached by [`World::losetup`].
    pub fn detach(&mut self, dev: &str) {
        run("losetup", &["-d", dev]);
        self.loops.retain(|d| d != dev);
    }

    /// Mount `dev` at a new directory `name` under the test dir.
    pub fn mount_dev(&mut self, dev: &str, name: &str, opts: &[&str]) -> PathBuf {
        let at = self.dir.path().join(name);
        std::fs::create_dir_all(&at).expect("create mount dir");
        let mut args: Vec<&OsStr> = Vec::new();
        for o in opts {
            args.push(OsStr::new(o));
        }
        args.push(OsStr::new(dev));
        args.push(at.as_os_str());
        run("mount", &args);
        self.mounts.push(at.clone());
        at
    }

    /// Unmount a directory mounted by [`World::mount_dev`].
    pub fn umount(&mut self, at: &Path) {
        run("umount", &[at]);
        self.mounts.retain(|m| m != at);
    }

    /// Attach `file`, make ext4 on it, mount it; returns (device, mount dir).
    pub fn ext4_on(&mut self, file: &Path, name: &str, loop_opts: &[&str]) -> (String, PathBuf) {
        let dev = self.losetup(file, loop_opts);
        run("mkfs.ext4", &["-F", "-q", &dev]);
        let at = self.mount_dev(&dev, name, &[]);
        (dev, at)
    }

    /// Attach `file` (which has a filesystem already) and mount it.
    pub fn ext4_on_existing(&mut self, file: &Path, name: &str) -> (String, PathBuf) {
        self.ext4_on_existing_opts(file, name, &[])
    }

    /// [`World::ext4_on_existing`] with extra losetup options.
    pub fn ext4_on_existing_opts(
        &mut self,
        file: &Path,
        name: &str,
        loop_opts: &[&str],
    ) -> (String, PathBuf) {
        let dev = self.losetup(file, loop_opts);
        let at = self.mount_dev(&dev, name, &[]);
        (dev, at)
    }

    /// `e2fsck -fn DEV` must report a clean filesystem.
    pub fn fsck_clean(&self, dev: &str) {
        let out = output("e2fsck", &["-fn", dev]);
        assert!(
            out.status.success(),
            "e2fsck -fn {dev} found problems ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn teardown_stack(&mut self) {
        for m in std::mem::take(&mut self.mounts).into_iter().rev() {
            if !output("umount", &[&m]).status.success() {
                let _ = output("umount", &[OsStr::new("-l"), m.as_os_str()]);
            }
        }
        for d in std::mem::take(&mut self.loops).into_iter().rev() {
            let _ = output("losetup", &["-d", &d]);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.teardown_stack();
        if let Some(mut child) = self.daemon.take() {
            if is_mounted(&self.mnt) {
                let _ = output("fusermount3", &[OsStr::new("-u"), self.mnt.as_os_str()]);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mnt) {
            let _ = output("umount", &[OsStr::new("-l"), self.mnt.as_os_str()]);
        }
        // Mounted with `-o loop`: the loop device goes with it.
        if let Some(d) = self.store_disk.take() {
            if !output("umount", &[&d]).status.success() {
                let _ = output("umount", &[OsStr::new("-l"), d.as_os_str()]);
            }
        }
    }
}

/// Deterministic content for file `i` of `len` bytes (so the tests can check
/// it without keeping a copy).
pub fn pattern(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Read xattr `name` of `path` with getfattr; `Err(stderr)` when it fails.
pub fn getfattr(path: &Path, name: &str) -> Result<String, String> {
    let out = output(
        "getfattr",
        &[
            OsStr::new("--only-values"),
            OsStr::new("-n"),
            OsStr::new(name),
            path.as_os_str(),
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Set xattr `name` to `value` with setfattr; `Err(stderr)` when it fails.
pub fn setfattr(path: &Path, name: &str, value: &str) -> Result<(), String> {
    let out = output(
        "setfattr",
        &[
            OsStr::new("-n"),
            OsStr::new(name),
            OsStr::new("-v"),
            OsStr::new(value),
            path.as_os_str(),
        ],
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
