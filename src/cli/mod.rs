//! The `rbdfs` command line: parse (`args`), turn the verb into a [`Command`],
//! run it in the daemon that holds the store (admin socket) or, with no daemon,
//! on the store opened here; print the result (`render`), progress on stderr,
//! errors as one `rbdfs: ...` line with the errno as exit code.

pub mod args;
pub mod command;
pub mod progress;
pub mod render;
pub mod size;
pub mod store;

use std::io::Write;
use std::path::Path;

use clap::Parser;

use crate::admin::{AdminClient, SOCKET_NAME};
use args::{Cli, Format, OsdVerb, PgVerb, PoolVerb, SnapVerb, Verb};
pub use command::{CmdError, Command, Ctx, Output, execute};
use progress::Printer;
use render::Style;

/// Print `rbdfs: <message>` on stderr and return `errno` as the exit code.
fn fail(errno: i32, message: &str) -> i32 {
    eprintln!("rbdfs: {message}");
    errno.clamp(1, 255)
}

fn need_size(size: Option<&str>) -> Result<u64, (i32, String)> {
    match size {
        None => Err((libc::EINVAL, "must specify --size <M/G/T>".into())),
        Some(s) => size::parse_size(s).map_err(|e| (libc::EINVAL, e.to_string())),
    }
}

/// The image `import FILE` makes without a name: the file's name, as with
/// `rbd import`.
fn import_name(path: &str) -> Result<String, (i32, String)> {
    let name = std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|_| path != "-");
    name.map(str::to_string).ok_or_else(|| {
        (
            libc::EINVAL,
            format!("import from {path}: name the image to create (rbdfs import {path} IMAGE)"),
        )
    })
}

/// Build the command of a verb (everything but `init` and `mount`).
pub fn to_command(verb: &Verb) -> Result<Command, (i32, String)> {
    Ok(match verb {
        Verb::Init(_) | Verb::Mount(_) => {
            return Err((libc::EINVAL, "not a store command".into()));
        }
        Verb::Pool(PoolVerb::Create(a)) => Command::PoolCreate {
            name: a.name.clone(),
            size: a.size,
        },
        Verb::Pool(PoolVerb::Ls) => Command::PoolLs,
        Verb::Create(a) => Command::Create {
            spec: a.spec.clone(),
            size: need_size(a.size.as_deref())?,
            order: a.order,
        },
        Verb::Ls(a) => Command::Ls {
            pool: a
                .pool
                .clone()
                .or_else(|| a.pool_opt.clone())
                .unwrap_or_else(|| store::DEFAULT_POOL.to_string()),
            long: a.long,
        },
        Verb::Info(a) => Command::Info {
            spec: a.spec.clone(),
        },
        Verb::Resize(a) => Command::Resize {
            spec: a.spec.clone(),
            size: need_size(Some(&a.size))?,
            allow_shrink: a.allow_shrink,
        },
        Verb::Rm(a) => Command::Rm {
            spec: a.spec.clone(),
        },
        Verb::Rename(a) => Command::Rename {
            src: a.src.clone(),
            dst: a.dst.clone(),
        },
        Verb::Snap(s) => match s {
            SnapVerb::Create(a) => Command::SnapCreate {
                spec: a.spec.clone(),
            },
            SnapVerb::Ls(a) => Command::SnapLs {
                spec: a.spec.clone(),
            },
            SnapVerb::Rm(a) => Command::SnapRm {
                spec: a.spec.clone(),
            },
            SnapVerb::Protect(a) => Command::SnapProtect {
                spec: a.spec.clone(),
            },
            SnapVerb::Unprotect(a) => Command::SnapUnprotect {
                spec: a.spec.clone(),
            },
            SnapVerb::Rollback(a) => Command::SnapRollback {
                spec: a.spec.clone(),
            },
        },
        Verb::Clone(a) => Command::Clone {
            parent: a.parent.clone(),
            child: a.child.clone(),
        },
        Verb::Children(a) => Command::Children {
            spec: a.spec.clone(),
        },
        Verb::Flatten(a) => Command::Flatten {
            spec: a.spec.clone(),
        },
        Verb::Du(a) => Command::Du {
            spec: a.spec.clone(),
            pool: a.pool.clone(),
        },
        Verb::Export(a) => Command::Export {
            spec: a.spec.clone(),
            // The daemon resolves paths in its own working directory.
            path: absolute(&a.path),
        },
        Verb::Import(a) => Command::Import {
            path: absolute(&a.path),
            spec: match &a.spec {
                Some(s) => s.clone(),
                None => import_name(&a.path)?,
            },
            order: a.order,
        },
        Verb::Status(a) => Command::Status {
            spec: a.spec.clone(),
        },
        Verb::Osd(v) => match v {
            OsdVerb::Ls => Command::OsdLs,
            OsdVerb::Out(a) => Command::OsdOut { id: a.id },
            OsdVerb::In(a) => Command::OsdIn { id: a.id },
            OsdVerb::Down(a) => Command::OsdDown { id: a.id },
            OsdVerb::Up(a) => Command::OsdUp { id: a.id },
            OsdVerb::Add(a) => Command::OsdAdd {
                path: absolute(&a.path.to_string_lossy()),
            },
            OsdVerb::Rm(a) => Command::OsdRm { id: a.id },
            OsdVerb::Lost(a) => Command::OsdLost {
                id: a.id,
                confirmed: a.yes,
            },
        },
        Verb::Pg(PgVerb::Ls) => Command::PgLs,
        Verb::Scrub(a) => Command::Scrub {
            pool: a.pool.clone(),
            deep: a.deep,
            repair: a.repair,
        },
    })
}

fn absolute(path: &str) -> String {
    if path == "-" {
        return path.to_string();
    }
    std::path::absolute(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Run a store command: in the daemon when one holds the store, else here.
pub fn run_command(store_dir: &Path, cmd: &Command, printer: &Printer) -> Result<Output, CmdError> {
    if let Some(client) = AdminClient::probe(&store_dir.join(SOCKET_NAME)) {
        if let Some(out) = stream_through_mount(&client, cmd, printer)? {
            return Ok(out);
        }
        return call_daemon(&client, cmd, printer);
    }
    run_locally(store_dir, cmd, printer)
}

fn call_daemon(client: &AdminClient, cmd: &Command, printer: &Printer) -> Result<Output, CmdError> {
    let args = serde_json::to_value(cmd).map_err(|e| CmdError::Invalid(e.to_string()))?;
    let out = client
        .call(&cmd.verb(), args, &mut |what, done, total| {
            command::Progress::update(printer, what, done, total)
        })
        .map_err(|e| CmdError::Errno {
            errno: e.errno(),
            message: e.to_string(),
        })?;
    serde_json::from_value(out).map_err(|e| CmdError::Errno {
        errno: libc::EPROTO,
        message: format!("the daemon's answer is not understood ({e}); use the same rbdfs binary"),
    })
}

/// Export to stdout / import from stdin while a daemon holds the store: the
/// bytes go through the mount (the daemon cannot reach this process's stdio),
/// the namespace changes through the daemon. `None` for every other command.
fn stream_through_mount(
    client: &AdminClient,
    cmd: &Command,
    printer: &Printer,
) -> Result<Option<Output>, CmdError> {
    use std::io::{Read, Write};
    let (spec, export) = match cmd {
        Command::Export { spec, path } if path == "-" => (spec, true),
        Command::Import { path, spec, .. } if path == "-" => (spec, false),
        _ => return Ok(None),
    };
    let parsed: crate::rbd::ImageSpec = spec
        .parse()
        .map_err(|e: crate::rbd::RbdError| CmdError::Invalid(e.to_string()))?;
    let mnt = match call_daemon(client, &Command::Status { spec: None }, printer)? {
        Output::Status(s) => s.mountpoint,
        _ => None,
    }
    .ok_or_else(|| CmdError::Errno {
        errno: libc::EIO,
        message: "the daemon holding the store reports no mount point".into(),
    })?;
    let name = match &parsed.snap {
        Some(s) => format!("{}@{s}", parsed.image),
        None => parsed.image.clone(),
    };
    let file = Path::new(&mnt).join(&parsed.pool).join(name);
    let io_err = |context: String| move |source| CmdError::Io { context, source };
    let mut buf = vec![0u8; 4 << 20];
    if export {
        let mut f = std::fs::File::open(&file).map_err(io_err(format!("export error: {spec}")))?;
        let total = f.metadata().map(|m| m.len().div_ceil(4 << 20)).unwrap_or(0);
        let mut out = std::io::stdout().lock();
        let mut done = 0;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(io_err(format!("export error: reading {spec}")))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io_err("export error: writing stdout".into()))?;
            done += 1;
            command::Progress::update(printer, "Exporting image", done, total.max(done));
        }
        out.flush()
            .map_err(io_err("export error: writing stdout".into()))?;
        return Ok(Some(Output::Nothing));
    }
    if parsed.snap.is_some() {
        return Err(CmdError::Invalid(format!(
            "{spec} names a snapshot; import into an image"
        )));
    }
    let order = match cmd {
        Command::Import { order, .. } => *order,
        _ => None,
    };
    let create = Command::Create {
        spec: spec.clone(),
        size: 0,
        order,
    };
    call_daemon(client, &create, printer)?;
    let copied = (|| -> Result<(), CmdError> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(io_err(format!("import error: {spec}")))?;
        let mut input = std::io::stdin().lock();
        let (mut done, mut off) = (0, 0u64);
        loop {
            let n = read_full(&mut input, &mut buf)
                .map_err(io_err("import error: reading stdin".into()))?;
            if n == 0 {
                break;
            }
            // Zero chunks stay holes: the image is thin.
            if buf[..n].iter().any(|b| *b != 0) {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&buf[..n], off)
                    .map_err(io_err(format!("import error: writing {spec}")))?;
            }
            off += n as u64;
            done += 1;
            command::Progress::update(printer, "Importing image", done, done);
        }
        f.set_len(off)
            .map_err(io_err(format!("import error: sizing {spec}")))?;
        f.sync_all()
            .map_err(io_err(format!("import error: syncing {spec}")))
    })();
    if let Err(e) = copied {
        // Nothing half-done: a failed import leaves no image behind.
        let _ = call_daemon(
            client,
            &Command::Rm { spec: spec.clone() },
            &Printer::new(None, false),
        );
        return Err(e);
    }
    Ok(Some(Output::Nothing))
}

/// Read until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn run_locally(store_dir: &Path, cmd: &Command, printer: &Printer) -> Result<Output, CmdError> {
    let rt = runtime().map_err(|source| CmdError::Io {
        context: "starting the runtime".into(),
        source,
    })?;
    rt.block_on(async {
        let st = store::open(store_dir, false)
            .await
            .map_err(|e| CmdError::Errno {
                errno: e.errno(),
                message: e.to_string(),
            })?;
        let ctx = Ctx {
            rbd: crate::rbd::Rbd::new(st.rados.clone(), crate::rbd::RbdConfig::default()),
            fs: None,
            store: store_dir.display().to_string(),
            mountpoint: None,
            request: None,
            cluster: Some(st.cluster().clone()),
        };
        let result = execute(&ctx, cmd, printer).await;
        drop(ctx);
        let shut = st.shutdown().await;
        let out = result?;
        shut.map_err(|e| CmdError::Errno {
            errno: e.errno(),
            message: e.to_string(),
        })?;
        Ok(out)
    })
}

fn init(cli: &Cli, a: &args::InitArgs) -> i32 {
    if AdminClient::probe(&cli.store.join(SOCKET_NAME)).is_some() {
        return fail(libc::EBUSY, "the store is mounted; it exists already");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(libc::EIO, &format!("starting the runtime: {e}")),
    };
    let opts = store::InitOptions {
        osds: a.osds.clone(),
        replicas: a.replicas,
    };
    match rt.block_on(async {
        let st = store::init(&cli.store, &opts).await?;
        st.shutdown().await
    }) {
        Ok(()) => 0,
        Err(e) => fail(e.errno(), &e.to_string()),
    }
}

/// The whole CLI: parse `argv`, run, return the exit code.
pub fn main_with(argv: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { libc::EINVAL } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let style = match cli.format {
        Format::Plain => Style::Plain,
        Format::Json => Style::Json {
            pretty: cli.pretty_format,
        },
    };
    match &cli.verb {
        Verb::Mount(m) => return crate::fuse::daemon::main(&cli.store, m),
        Verb::Init(a) => return init(&cli, a),
        _ => {}
    }
    // Like other Unix filters, `rbdfs export IMG - | head` ends quietly when
    // the reader goes away (Rust ignores SIGPIPE by default).
    // SAFETY: restoring the default disposition of one signal.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cmd = match to_command(&cli.verb) {
        Ok(c) => c,
        Err((errno, msg)) => return fail(errno, &msg),
    };
    if let Err(e) = cmd.check_specs() {
        return fail(e.errno(), &e.to_string());
    }
    let printer = Printer::new(cmd.progress_label(), !cli.no_progress);
    match run_command(&cli.store, &cmd, &printer) {
        Ok(out) => {
            printer.finish(true);
            let text = render::render(&out, style);
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return libc::EPIPE;
            }
            // A scrub that leaves damage behind fails, so scripts notice.
            if let Output::Scrub(r) = &out {
                if r.unrepaired() > 0 {
                    return fail(
                        libc::EIO,
                        &format!("scrub found {} inconsistent objects", r.unrepaired()),
                    );
                }
            }
            0
        }
        Err(e) => {
            printer.finish(false);
            fail(e.errno(), &e.to_string())
        }
    }
}
