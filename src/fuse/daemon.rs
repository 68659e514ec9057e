//! `rbdfs mount`: the process that holds a store. It opens (or creates) the
//! store, runs the image layer, serves the admin socket and the FUSE mount, and
//! on unmount (fusermount3 -u, SIGINT, SIGTERM) flushes everything and releases
//! the store.
//!
//! ```text
//!   [--daemon: fork; parent waits on a pipe]
//!   prctl(IO_FLUSHER) -> open store -> admin socket -> FUSE mount (handshake)
//!        -> report ready (pipe) -> serve until unmounted
//!        -> flush images -> close admin socket -> flush + shut the store down
//! ```
//!
//! With `--daemon` the parent exits 0 only once the mount is ready; any failure
//! before that is printed by the parent, which exits with its errno.

use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, Session, SessionACL};

use super::adapter::FuseAdapter;
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
        Box::pin(async move {
            let cmd: Command = serde_json::from_value(args)
                .map_err(|e| (libc::EINVAL, format!("unknown request: {e}")))?;
            match command::execute(&ctx, &cmd, &progress).await {
                Ok(out) => serde_json::to_value(out).map_err(|e| (libc::EIO, e.to_string())),
                Err(e) => {
                    log::info!("admin {}: {e}", cmd.verb());
                    Err((e.errno(), e.to_string()))
                }
            }
        })
    }
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
            let log = File::options()
                .create(true)
                .append(true)
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

/// Unmount what [`mount_fuse`] mounted at `mnt`.
fn unmount(mnt: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(mnt.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
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
    let admin = {
        let _guard = rt.enter();
        AdminServer::bind(&store_dir.join(SOCKET_NAME), Arc::new(AdminHandler { ctx })).map_err(
            |e| {
                Failure(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("admin socket: {e}"),
                )
            },
        )?
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
    // unmounts its path again when the session ends, whatever is mounted
    // there by then (after a lazy unmount of this one, another file system
    // can be). Other users need fusermount3, which fuser drives.
    // SAFETY: geteuid has no preconditions.
    let (session, mut fuser_unmounter) = if unsafe { libc::geteuid() } == 0 {
        let fd = mount_fuse(mnt, args.allow_other).map_err(mount_failed)?;
        let acl = config.acl;
        let session = Session::from_fd(adapter, fd, acl, config).map_err(mount_failed)?;
        (session, None)
    } else {
        let mut session = Session::new(adapter, mnt, &config).map_err(mount_failed)?;
        let unmounter = session.unmount_callable();
        (session, Some(unmounter))
    };
    log::info!("mounted {} at {}", store_dir.display(), mnt.display());

    let mnt_path = mnt.to_path_buf();
    let mnt_text = mnt.display().to_string();
    // The unmount on a signal goes by path: it must find this mount there.
    let ours = mountinfo::top_mount_at(mnt).map(|t| t.id);
    if ours.is_none() {
        log::warn!("cannot find {mnt_text} in /proc/self/mountinfo");
    }
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            log::error!("cannot install signal handlers; unmount with fusermount3 -u");
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            let top = mountinfo::top_mount_at(&mnt_path).map(|t| t.id);
            if ours.is_some() && top != ours {
                log::warn!(
                    "signal received, but {mnt_text} is no longer this daemon's mount \
                     (it was unmounted lazily; what is there now is left alone): the \
                     daemon exits once the last file open on its detached mount is closed"
                );
                continue;
            }
            log::info!("signal received: unmounting {mnt_text}");
            let mut unmounter = fuser_unmounter.take();
            let path = mnt_path.clone();
            let r = tokio::task::spawn_blocking(move || match unmounter.as_mut() {
                Some(u) => u.unmount(),
                None => unmount(&path),
            })
            .await;
            if !matches!(r, Ok(Ok(()))) {
                log::error!("unmount of {mnt_text} failed ({r:?}); is it busy? (losetup -a, lsof)");
            }
            return;
        }
    });

    if let Some(w) = ready {
        let _ = writeln!(w, "ready");
        redirect_stdio_to_null();
    }
    let served = session.run();
    log::info!("unmounted {}", mnt.display());
    if let Err(e) = &served {
        log::error!("FUSE session ended with an error: {e}");
    }
    drop(admin);
    rt.block_on(fs.jobs().cancel_all(std::time::Duration::from_secs(30)));
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
