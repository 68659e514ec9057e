//! `rbdfs mount`: the process that holds a store. It opens (or creates) the
//! store, runs the image layer, serves the admin socket and the FUSE mount, and
//! on unmount (fusermount3 -u, SIGINT, SIGTERM) flushes everything and releases
//! the store.
//!
//! ```text
//!   [--daemon: fork; parent waits on a pipe]
//!   prctl(IO_FLUSHER) -> open store -> admin socket -> FUSE mount (handshake)
//!        -> report ready (pipe) -> serve until unmounted
//!        -> stop flattens -> close admin socket (running commands finish)
//!        -> flush images -> flush + shut the store down
//! ```
//!
//! With `--daemon` the parent exits 0 only once the mount is ready; any failure
//! before that is printed by the parent, which exits with its errno.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fuser::{Config, MountOption, Session, SessionACL};

use super::adapter::{FuseAdapter, refresh_kernel_cache};
use super::fs::{FsOptions, ImageFs};
use super::jobs::Jobs;
use super::mountinfo;
use crate::admin::{AdminServer, Handler, Outcome, ProgressTx, SOCKET_NAME};
use crate::cli::args::MountArgs;
use crate::cli::command::{self, Command, Ctx};
use crate::cli::store;
use crate::rados::BoxFuture;
use crate::rbd::{Rbd, RbdConfig};
use crate::sync::Arc;

/// `prctl` option: this process writes back pages for others (a loop device),
/// so memory reclaim must not throttle it (linux/prctl.h).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// A failure before the mount was ready: errno + one line for the user.
struct Failure(i32, String);

/// Runs CLI commands that arrive over the admin socket.
struct AdminHandler {
    ctx: Ctx,
    /// The mount's kernel side, once mounted: what a command changes is
    /// dropped from the kernel's caches before its answer.
    kernel: Arc<OnceLock<(fuser::Notifier, PathBuf)>>,
}

impl command::Progress for ProgressTx {
    fn update(&self, what: &str, done: u64, total: u64) {
        self.send(what, done, total);
    }
}

impl Handler for AdminHandler {
    fn handle(
        &self,
        id: u64,
        args: serde_json::Value,
        progress: ProgressTx,
    ) -> BoxFuture<'static, Outcome> {
        let ctx = Ctx {
            request: Some(id),
            ..self.ctx.clone()
        };
        let kernel = self.kernel.clone();
        Box::pin(async move {
            let cmd: Command = serde_json::from_value(args)
                .map_err(|e| (libc::EINVAL, format!("unknown request: {e}")))?;
            let done = command::execute(&ctx, &cmd, &progress).await;
            // Before the answer, so the caller sees the change as soon as it
            // has it. Attributes also after a failure, which may have changed
            // something; names only after a success (a refused `rm` leaves
            // the image there).
            if let (Some(fs), Some((notifier, mnt))) = (ctx.fs.clone(), kernel.get())
                && cmd.changes_images()
            {
                let mut changed = cmd.mount_changes();
                if done.is_err() {
                    changed.gone = None;
                    changed.renamed_to = None;
                }
                let (notifier, mnt) = (notifier.clone(), mnt.clone());
                let refreshed = tokio::task::spawn_blocking(move || {
                    refresh_kernel_cache(&fs, &notifier, &mnt, &changed)
                });
                if let Err(e) = refreshed.await {
                    log::error!("refreshing the kernel's view of the mount: {e}");
                }
            }
            match done {
                Ok(out) => serde_json::to_value(out).map_err(|e| (libc::EIO, e.to_string())),
                Err(e) => {
                    log::info!("admin {}: {e}", cmd.verb());
                    Err((e.errno(), e.to_string()))
                }
            }
        })
    }
}

/// Refuse what the daemon could not serve, before the store is opened or
/// made: a mount point that holds the store (the OSDs would open their
/// files through the mount they serve), a store path too long for the
/// admin socket, a mount point where an rbdfs mount is already.
fn check_places(store_dir: &Path, mnt: &Path) -> Result<(), Failure> {
    // The store may not exist yet: resolve what of its path does.
    let mut real = store_dir.to_path_buf();
    let mut rest = Vec::new();
    while !real.exists() {
        match (real.file_name(), real.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                real = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut real = std::fs::canonicalize(&real).unwrap_or(real);
    real.extend(rest.iter().rev());
    if real.starts_with(mnt) {
        return Err(Failure(
            libc::EINVAL,
            format!(
                "the store {} is inside the mount point {}: the daemon would read its own \
                 files through the mount it serves; mount it somewhere else",
                store_dir.display(),
                mnt.display()
            ),
        ));
    }
    // sockaddr_un holds 108 bytes with the final NUL.
    let socket = store_dir.join(SOCKET_NAME);
    if socket.as_os_str().len() > 107 {
        return Err(Failure(
            libc::ENAMETOOLONG,
            format!(
                "the store's path is too long for its admin socket {} ({} bytes, at most \
                 107); use a store with a shorter path",
                socket.display(),
                socket.as_os_str().len()
            ),
        ));
    }
    if mountinfo::top_mount_at(mnt).is_some_and(|m| m.fstype == "fuse.rbdfs") {
        return Err(Failure(
            libc::EBUSY,
            format!(
                "an rbdfs mount is at {} already; unmount it first (fusermount3 -u {})",
                mnt.display(),
                mnt.display()
            ),
        ));
    }
    Ok(())
}

/// Entry point of `rbdfs mount`; returns the exit code.
pub fn main(store_dir: &Path, args: &MountArgs) -> i32 {
    let mnt = match std::fs::canonicalize(&args.mountpoint) {
        Ok(p) if p.is_dir() => p,
        Ok(p) => {
            eprintln!("rbdfs: mount point {} is not a directory", p.display());
            return libc::ENOTDIR;
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::ENOENT);
            let hint = if errno == libc::ENOTCONN {
                format!(
                    "a dead mount is left there: run `fusermount3 -uz {}`",
                    args.mountpoint.display()
                )
            } else {
                "create the directory first".to_string()
            };
            eprintln!(
                "rbdfs: mount point {}: {e}; {hint}",
                args.mountpoint.display()
            );
            return errno;
        }
    };
    let store_dir = std::path::absolute(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
    if let Err(Failure(errno, msg)) = check_places(&store_dir, &mnt) {
        eprintln!("rbdfs: {msg}");
        return errno;
    }
    if !args.daemon {
        init_logging(None);
        return match serve(&store_dir, &mnt, args, None) {
            Ok(()) => 0,
            Err(Failure(errno, msg)) => {
                eprintln!("rbdfs: {msg}");
                errno
            }
        };
    }
    // Fork before any thread exists: the child carries on alone.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!(
            "rbdfs: creating a pipe: {}",
            std::io::Error::last_os_error()
        );
        return libc::EIO;
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: no other threads run yet, so the child may do anything.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("rbdfs: fork: {}", std::io::Error::last_os_error());
            libc::EIO
        }
        0 => {
            drop(rd);
            // SAFETY: setsid has no preconditions; failure only leaves us in the group.
            unsafe { libc::setsid() };
            // Until the mount is ready, the child dies with the parent (a
            // Ctrl-C while `mount --daemon` waits aborts the mount); the
            // parent may be gone already. Then, as daemons do, it holds no
            // directory busy.
            // SAFETY: prctl, getppid and chdir on our own process.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    libc::_exit(libc::EINTR);
                }
                libc::chdir(c"/".as_ptr());
            }
            use std::os::unix::fs::OpenOptionsExt;
            let log = File::options()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(store_log(&store_dir))
                .ok();
            init_logging(log);
            let mut ready = File::from(wr);
            match serve(&store_dir, &mnt, args, Some(&mut ready)) {
                Ok(()) => 0,
                Err(Failure(errno, msg)) => {
                    log::error!("{msg}");
                    let _ = writeln!(ready, "{errno} {msg}");
                    errno
                }
            }
        }
        _child => {
            drop(wr);
            // One line: "ready", or "<errno> <message>"; EOF means the child died.
            let mut answer = String::new();
            let _ = std::io::BufReader::new(File::from(rd)).read_line(&mut answer);
            let answer = answer.trim();
            if answer == "ready" {
                return 0;
            }
            let (errno, msg) = answer
                .split_once(' ')
                .and_then(|(e, m)| e.parse::<i32>().ok().map(|e| (e, m.to_string())))
                .unwrap_or((
                    libc::EIO,
                    "the daemon exited before the mount was ready".into(),
                ));
            eprintln!("rbdfs: {msg}");
            errno
        }
    }
}

/// Mount the FUSE file system at `mnt` (root only): `/dev/fuse` opened,
/// then mount(2) with the options fusermount3 would pass. Returns the
/// descriptor the session serves.
fn mount_fuse(mnt: &Path, allow_other: bool) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?
        .into();
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let options = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions{}",
        dev.as_raw_fd(),
        if allow_other { ",allow_other" } else { "" }
    );
    let target = std::ffi::CString::new(mnt.as_os_str().as_bytes())?;
    let options = std::ffi::CString::new(options)?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"rbdfs".as_ptr(),
            target.as_ptr(),
            c"fuse.rbdfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dev)
}

/// The daemon's mount, told apart from whatever else may be mounted at its
/// path later: by its mount ID and its file system's device, as
/// `/proc/self/mountinfo` showed them right after the mount.
struct OwnMount {
    path: PathBuf,
    /// Mounted by this process (root), so unmounted with umount2(2);
    /// otherwise with fusermount3.
    root: bool,
    ours: Option<mountinfo::TopMount>,
}

impl OwnMount {
    fn new(path: &Path, root: bool) -> OwnMount {
        let ours = mountinfo::top_mount_at(path);
        if ours.is_none() {
            log::warn!("cannot find {} in /proc/self/mountinfo", path.display());
        }
        OwnMount {
            path: path.to_path_buf(),
            root,
            ours,
        }
    }

    /// Whether this mount is still the one on top of its path; `None` when
    /// that cannot be told.
    fn on_top(&self) -> Option<bool> {
        let ours = self.ours.as_ref()?;
        let top = mountinfo::top_mount_at(&self.path);
        Some(top.is_some_and(|t| t.id == ours.id && t.dev == ours.dev))
    }

    /// Unmount it, by path (check `on_top` first).
    fn unmount(&self) -> std::io::Result<()> {
        if !self.root {
            let out = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .output()?;
            if !out.status.success() {
                let why = String::from_utf8_lossy(&out.stderr);
                return Err(std::io::Error::other(why.trim().to_string()));
            }
            return Ok(());
        }
        umount2(&self.path, libc::UMOUNT_NOFOLLOW)
    }

    /// Lazily unmount it if it is still on top of its path (root only: a
    /// session that failed or ended before its mount did).
    fn detach_if_left(&self) {
        if self.root
            && self.on_top() == Some(true)
            && let Err(e) = umount2(&self.path, libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW)
        {
            log::error!("unmounting the dead mount at {}: {e}", self.path.display());
        }
    }
}

fn umount2(path: &Path, flags: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn store_log(store_dir: &Path) -> PathBuf {
    // The store may not exist yet; its parent does (or logging goes nowhere).
    let _ = std::fs::create_dir_all(store_dir);
    store_dir.join(store::LOG_NAME)
}

fn init_logging(file: Option<File>) {
    // fuser warns at every clean `fusermount3 -u` that its own second unmount
    // attempt failed (the kernel already did it); that is noise, not news.
    let mut b = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,fuser::session=error"),
    );
    if let Some(f) = file {
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    let _ = b.try_init();
}

fn redirect_stdio_to_null() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of our own process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn serve(
    store_dir: &Path,
    mnt: &Path,
    args: &MountArgs,
    ready: Option<&mut File>,
) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rbdfs-io")
        .build()
        .map_err(|e| Failure(libc::EIO, format!("starting the runtime: {e}")))?;
    let st = rt
        .block_on(store::open(store_dir, true))
        .map_err(|e| Failure(e.errno(), e.to_string()))?;
    log::info!("store {} open", store_dir.display());
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        log::warn!(
            "prctl(PR_SET_IO_FLUSHER) failed ({}); a loop device on the mount may stall \
             under memory pressure (needs CAP_SYS_RESOURCE)",
            std::io::Error::last_os_error()
        );
    }

    let rbd = Rbd::new(st.rados.clone(), RbdConfig::default());
    let jobs = Arc::new(Jobs::new());
    let fs = Arc::new(ImageFs::with_jobs(
        rbd.clone(),
        FsOptions {
            capacity_dir: Some(store_dir.to_path_buf()),
            ..FsOptions::default()
        },
        jobs,
    ));
    let ctx = Ctx {
        rbd,
        fs: Some(fs.clone()),
        store: store_dir.display().to_string(),
        mountpoint: Some(mnt.display().to_string()),
        request: None,
        cluster: Some(st.cluster().clone()),
    };
    // A failure before the mount is up closes the store cleanly (dropped,
    // the stores would take it for a crash).
    let abandon = |st: store::Store, f: Failure| {
        if let Err(e) = rt.block_on(st.shutdown()) {
            log::error!("closing the store after the failure: {e}");
        }
        f
    };
    let kernel = Arc::new(OnceLock::new());
    let bound = {
        let _guard = rt.enter();
        let handler = AdminHandler {
            ctx,
            kernel: kernel.clone(),
        };
        AdminServer::bind(&store_dir.join(SOCKET_NAME), Arc::new(handler)).map_err(|e| {
            Failure(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("admin socket: {e}"),
            )
        })
    };
    let admin = match bound {
        Ok(a) => a,
        Err(f) => return Err(abandon(st, f)),
    };

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("rbdfs".into()),
        MountOption::Subtype("rbdfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RW,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let mount_failed = |e: std::io::Error| {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        // A daemon that died leaves its mount behind, answering ENOTCONN.
        let hint = if errno == libc::ENOTCONN {
            format!(
                "; a dead mount is left there: run `fusermount3 -uz {}`",
                mnt.display()
            )
        } else {
            String::new()
        };
        Failure(
            errno,
            format!("mounting {} failed: {e}{hint}", mnt.display()),
        )
    };
    // As root, the daemon mounts and unmounts itself: fuser's own mount
    // unmounts its path again when the session ends, which after a lazy
    // unmount of this one can be another file system's by then. Other users
    // need fusermount3, which fuser drives.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mounted = if root {
        mount_fuse(mnt, args.allow_other).and_then(|fd| {
            let own = OwnMount::new(mnt, true);
            let acl = config.acl;
            match Session::from_fd(adapter, fd, acl, config) {
                Ok(session) => Ok((session, own)),
                Err(e) => {
                    own.detach_if_left();
                    Err(e)
                }
            }
        })
    } else {
        Session::new(adapter, mnt, &config).map(|s| (s, OwnMount::new(mnt, false)))
    };
    let (session, own) = match mounted {
        Ok(m) => m,
        Err(e) => {
            drop(admin);
            return Err(abandon(st, mount_failed(e)));
        }
    };
    log::info!("mounted {} at {}", store_dir.display(), mnt.display());
    let _ = kernel.set((session.notifier(), mnt.to_path_buf()));
    let own = Arc::new(own);

    // Installed before the mount is reported ready, so that a signal right
    // after `--daemon` returns is handled.
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Some((int, term)),
            _ => {
                log::error!("cannot install signal handlers; unmount with fusermount3 -u");
                None
            }
        }
    };
    // Set once a second signal closes the store: that task ends the
    // process, and the session ending meanwhile must not close it again.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set once the session has ended and the main thread closes the store.
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some((mut int, mut term)) = signals {
        let (own, fs, cluster) = (own.clone(), fs.clone(), st.cluster().clone());
        let (closing, ended) = (closing.clone(), ended.clone());
        let store_text = store_dir.display().to_string();
        rt.spawn(async move {
            let mnt_text = own.path.display().to_string();
            let mut refused = false;
            let mut told = false;
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if ended.load(std::sync::atomic::Ordering::SeqCst) {
                    if told {
                        // As a kill: what was flushed stays, the store opens.
                        log::warn!("signal again while closing the store: exiting now");
                        std::process::exit(1);
                    }
                    told = true;
                    log::info!(
                        "signal received: already unmounted, flushing and closing the store \
                         (signal again to exit without waiting)"
                    );
                    continue;
                }
                match own.on_top() {
                    Some(false) if !refused => {
                        refused = true;
                        log::warn!(
                            "signal received, but {mnt_text} is no longer this daemon's \
                             mount (it was unmounted lazily; what is there now is left \
                             alone): the daemon exits once the last file open on its \
                             detached mount is closed; a second signal flushes every \
                             image and exits now, failing those files' I/O"
                        );
                        continue;
                    }
                    Some(false) => {
                        // The session cannot be ended from here (the detached
                        // mount's requests keep coming), so the store is
                        // closed under it: what still comes fails.
                        log::warn!(
                            "second signal: flushing every image, closing the store, exiting"
                        );
                        closing.store(true, std::sync::atomic::Ordering::SeqCst);
                        fs.jobs()
                            .cancel_all(std::time::Duration::from_secs(30))
                            .await;
                        let mut code = 0;
                        if let Err(e) = fs.flush_all().await {
                            log::error!("flush before exit failed: {e}");
                            code = 1;
                        }
                        let c = cluster.clone();
                        match tokio::task::spawn_blocking(move || c.shutdown()).await {
                            Ok(Ok(())) => log::info!("store {store_text} closed cleanly"),
                            r => {
                                log::error!("closing the store failed: {r:?}");
                                code = 1;
                            }
                        }
                        std::process::exit(code);
                    }
                    Some(true) => {}
                    None => log::warn!(
                        "cannot tell from /proc/self/mountinfo whether {mnt_text} is still \
                         this daemon's mount; unmounting it by path"
                    ),
                }
                log::info!("signal received: unmounting {mnt_text}");
                let o = own.clone();
                let r = tokio::task::spawn_blocking(move || o.unmount()).await;
                if matches!(r, Ok(Ok(()))) {
                    // The session ends and the main thread closes the store.
                    ended.store(true, std::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                log::error!(
                    "unmount of {mnt_text} failed ({r:?}); is it busy? (losetup -a, lsof); \
                     signal again once it is not"
                );
            }
        });
    }

    if let Some(w) = ready {
        // Ready: the daemon outlives the command that started it, which
        // exits once it reads this.
        // SAFETY: prctl on our own process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
        let _ = writeln!(w, "ready");
        redirect_stdio_to_null();
    }
    let served = session.run();
    ended.store(true, std::sync::atomic::Ordering::SeqCst);
    log::info!("unmounted {}", mnt.display());
    if let Err(e) = &served {
        log::error!("FUSE session ended with an error: {e}");
    }
    // A session that ended on its own (an error, an aborted connection)
    // leaves its mount behind, dead: take it away.
    own.detach_if_left();
    if closing.load(std::sync::atomic::Ordering::SeqCst) {
        // The signal task is closing the store and exits when done.
        loop {
            std::thread::park();
        }
    }
    // Flattens stop at their next object (a rerun resumes them), then the
    // CLI commands still running (an import) finish before the store closes.
    rt.block_on(fs.jobs().cancel_all(std::time::Duration::from_secs(30)));
    rt.block_on(admin.close(std::time::Duration::from_secs(60)));
    let flushed = rt.block_on(fs.flush_all());
    drop(fs);
    let shut = rt.block_on(st.shutdown());
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Err(e) = flushed {
        return Err(Failure(e.errno(), format!("flush at unmount failed: {e}")));
    }
    shut.map_err(|e| Failure(e.errno(), format!("closing the store failed: {e}")))?;
    log::info!("store {} closed cleanly", store_dir.display());
    Ok(())
}
