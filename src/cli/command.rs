//! The command layer: every CLI verb as a serialisable [`Command`], run by
//! [`execute`] against an image layer: the CLI's own (no daemon) or the
//! daemon's (the request came over the admin socket). Results are plain data
//! ([`Output`]) that `cli::render` prints as text or JSON.

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fuse::FsError;
use crate::fuse::fs::{ImageFs, OpenFile, Opener};
use crate::fuse::jobs::JobState;
use crate::fuse::loops::{self, LoopDevice};
use crate::osd::{Cluster, ClusterStatus, OsdError, PgStatus, ScrubReport};
use crate::rados::RadosError;
use crate::rbd::{
    CancelToken, CreateOptions, Image, ImageSpec, ManagementOp, ProgressSink, Rbd, RbdError,
    RequestId,
};
use crate::sync::Arc;

/// A verb with its arguments, as the CLI parsed them (specs still text, so a
/// daemon validates exactly what the user typed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Command {
    PoolCreate {
        name: String,
        size: Option<u32>,
    },
    PoolLs,
    Create {
        spec: String,
        size: u64,
        order: Option<u8>,
    },
    Ls {
        pool: String,
        long: bool,
    },
    Info {
        spec: String,
    },
    Resize {
        spec: String,
        size: u64,
        allow_shrink: bool,
    },
    Rm {
        spec: String,
    },
    Rename {
        src: String,
        dst: String,
    },
    SnapCreate {
        spec: String,
    },
    SnapLs {
        spec: String,
    },
    SnapRm {
        spec: String,
    },
    SnapProtect {
        spec: String,
    },
    SnapUnprotect {
        spec: String,
    },
    SnapRollback {
        spec: String,
    },
    Clone {
        parent: String,
        child: String,
    },
    Children {
        spec: String,
    },
    Flatten {
        spec: String,
    },
    Du {
        spec: Option<String>,
        /// For a spec without a pool, or every image of it.
        #[serde(default)]
        pool: Option<String>,
    },
    Export {
        spec: String,
        path: String,
    },
    Import {
        path: String,
        spec: String,
        order: Option<u8>,
    },
    Status {
        spec: Option<String>,
    },
    OsdLs,
    OsdOut {
        id: u32,
    },
    OsdIn {
        id: u32,
    },
    OsdDown {
        id: u32,
    },
    OsdUp {
        id: u32,
    },
    OsdAdd {
        path: String,
    },
    OsdRm {
        id: u32,
    },
    OsdLost {
        id: u32,
        confirmed: bool,
    },
    PgLs,
    Scrub {
        pool: Option<String>,
        deep: bool,
        repair: bool,
    },
}

impl Command {
    /// The verb's name, for logs and the admin request.
    pub fn verb(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("verb").and_then(|v| v.as_str().map(str::to_string)))
            .unwrap_or_default()
    }

    /// Whether the command may change what a mount shows: which images and
    /// snapshots there are, or their sizes, contents or attributes.
    pub fn changes_images(&self) -> bool {
        !matches!(
            self,
            Command::PoolLs
                | Command::Ls { .. }
                | Command::Info { .. }
                | Command::SnapLs { .. }
                | Command::Children { .. }
                | Command::Du { .. }
                | Command::Export { .. }
                | Command::Status { .. }
                | Command::OsdLs
                | Command::OsdOut { .. }
                | Command::OsdIn { .. }
                | Command::OsdDown { .. }
                | Command::OsdUp { .. }
                | Command::OsdAdd { .. }
                | Command::OsdRm { .. }
                | Command::OsdLost { .. }
                | Command::PgLs
                | Command::Scrub { .. }
        )
    }

    /// What the command does to names and files a mount shows, for the
    /// kernel's caches of them to be brought up to date.
    pub fn mount_changes(&self) -> MountChanges {
        let spec = |s: &str| s.parse::<ImageSpec>().ok();
        let mut c = MountChanges::default();
        match self {
            Command::Resize { spec: s, .. } | Command::SnapRollback { spec: s } => {
                c.rewritten = spec(s).map(|s| s.head());
            }
            Command::Rm { spec: s } | Command::SnapRm { spec: s } => c.gone = spec(s),
            Command::Rename { src, dst } => {
                c.gone = spec(src);
                c.renamed_to = spec(dst);
            }
            _ => {}
        }
        c
    }

    /// Refuse image specs that do not fit the verb, as running it would,
    /// but before anything runs: `rbd` shows no progress for those.
    pub fn check_specs(&self) -> Result<(), CmdError> {
        match self {
            Command::Create { spec, .. }
            | Command::Resize { spec, .. }
            | Command::Rm { spec }
            | Command::SnapLs { spec }
            | Command::Import { spec, .. } => parse_head(spec).map(drop),
            Command::Info { spec } | Command::Export { spec, .. } => parse_spec(spec).map(drop),
            Command::Flatten { spec } => flatten_spec(spec).map(drop),
            Command::Rename { src, dst } => parse_head(src).and(parse_head(dst)).map(drop),
            Command::SnapCreate { spec }
            | Command::SnapRm { spec }
            | Command::SnapProtect { spec }
            | Command::SnapUnprotect { spec }
            | Command::SnapRollback { spec }
            | Command::Children { spec } => parse_snap(spec).map(drop),
            Command::Clone { parent, child } => parse_snap(parent).and(parse_head(child)).map(drop),
            _ => Ok(()),
        }
    }

    /// The progress label `rbd` uses for this verb, if it reports progress.
    pub fn progress_label(&self) -> Option<&'static str> {
        match self {
            Command::Flatten { .. } => Some("Image flatten"),
            Command::SnapCreate { .. } => Some("Creating snap"),
            Command::SnapRm { .. } => Some("Removing snap"),
            Command::Rm { .. } => Some("Removing image"),
            Command::Resize { .. } => Some("Resizing image"),
            Command::SnapRollback { .. } => Some("Rolling back to snapshot"),
            Command::Export { .. } => Some("Exporting image"),
            Command::Import { .. } => Some("Importing image"),
            _ => None,
        }
    }
}

/// See [`Command::mount_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountChanges {
    /// An image whose size or bytes changed (a resize, a rollback).
    pub rewritten: Option<ImageSpec>,
    /// A name that is gone: an image with its snapshots, or a snapshot.
    pub gone: Option<ImageSpec>,
    /// The image's new name, when `gone` was renamed.
    pub renamed_to: Option<ImageSpec>,
}

/// A pool, as `pool ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRow {
    pub name: String,
    pub id: u64,
    pub size: u32,
    pub min_size: u32,
    pub pg_num: u32,
}

/// One line of `ls -l`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LsRow {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot: Option<String>,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent: Option<ParentOut>,
    pub format: u8,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub protected: Option<String>,
}

/// The parent of a clone, in `rbd`'s JSON shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentOut {
    pub pool: String,
    pub pool_namespace: String,
    pub image: String,
    pub id: String,
    pub snapshot: String,
    pub trash: bool,
    pub overlap: u64,
}

/// `info`, in `rbd info --format json`'s shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoOut {
    pub name: String,
    pub id: String,
    pub size: u64,
    pub objects: u64,
    pub order: u8,
    pub object_size: u64,
    pub snapshot_count: u64,
    pub block_name_prefix: String,
    pub format: u8,
    pub features: Vec<String>,
    pub op_features: Vec<String>,
    pub flags: Vec<String>,
    pub create_timestamp: String,
    #[serde(default)]
    pub access_timestamp: String,
    #[serde(default)]
    pub modify_timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent: Option<ParentOut>,
    /// Only for a snapshot: `"true"`/`"false"` (a string, as `rbd` prints it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub protected: Option<String>,
}

/// One line of `snap ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRow {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub protected: String,
    pub timestamp: String,
}

/// One line of `du` (`snapshot` unset for the head).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuRow {
    pub name: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub snapshot_id: Option<u64>,
    pub provisioned_size: u64,
    pub used_size: u64,
}

/// `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusOut {
    pub store: String,
    /// Pid of the daemon holding the store, if one does.
    pub daemon_pid: Option<u32>,
    pub mountpoint: Option<String>,
    pub pools: Vec<PoolRow>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image: Option<String>,
    /// For `status IMAGE`: the mount's file handles open on it or its
    /// snapshots (none without a mount).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub watchers: Option<Vec<Watcher>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub flatten: Option<String>,
    /// For `status` of the store: the cluster summary (like `ceph -s`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cluster: Option<Box<ClusterStatus>>,
}

/// A file handle open on an image or one of its snapshots, as `rbd status`
/// lists an image's watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watcher {
    /// `pool/image` or `pool/image@snap`.
    pub file: String,
    pub writable: bool,
    /// The loop device attached to the file through this handle.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loop_device: Option<String>,
    /// The process that opened it (for a loop device, usually `losetup`).
    pub pid: u32,
    pub process: String,
    /// Whether that process still runs.
    pub running: bool,
}

/// The watchers of an image from its open files: each loop device attached
/// to one of them (a file under `mnt`) is told by the handle it holds, one
/// of the same file and access, preferably one whose opener has exited
/// (`losetup` exits once the device is set up).
fn watchers(
    open: Vec<OpenFile>,
    loops: &[LoopDevice],
    mnt: &Path,
    running: impl Fn(&Opener) -> bool,
) -> Vec<Watcher> {
    let mut out: Vec<Watcher> = open
        .into_iter()
        .map(|f| Watcher {
            running: running(&f.opener),
            file: f.file,
            writable: f.writable,
            loop_device: None,
            pid: f.opener.pid,
            process: f.opener.process,
        })
        .collect();
    for l in loops {
        let holds = |w: &Watcher| {
            w.loop_device.is_none() && w.writable != l.read_only && mnt.join(&w.file) == l.backing
        };
        let pick = out
            .iter()
            .position(|w| holds(w) && !w.running)
            .or_else(|| out.iter().position(holds));
        if let Some(i) = pick {
            out[i].loop_device = Some(l.device.clone());
        }
    }
    out
}

/// Whether the process that opened a file still runs (and is the same one,
/// not a new process with its pid).
fn still_running(o: &Opener) -> bool {
    o.pid != 0 && Opener::of_pid(o.pid) == *o
}

/// One line of `osd ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsdRow {
    pub id: u32,
    pub up: bool,
    #[serde(rename = "in")]
    pub in_: bool,
    /// Marked lost (`osd lost`).
    #[serde(default)]
    pub lost: bool,
    pub path: String,
}

/// What a command returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Output {
    Nothing,
    Pools(Vec<PoolRow>),
    Names(Vec<String>),
    Long(Vec<LsRow>),
    Info(Box<InfoOut>),
    Snaps(Vec<SnapRow>),
    Children(Vec<String>),
    Du(Vec<DuRow>),
    Status(StatusOut),
    Osds(Vec<OsdRow>),
    Pgs(Vec<PgStatus>),
    Scrub(ScrubReport),
}

/// A command that failed: an errno and one line saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("{context}: {source}")]
    Rbd {
        context: String,
        #[source]
        source: RbdError,
    },
    #[error("{context}: {source}")]
    Rados {
        context: String,
        #[source]
        source: RadosError,
    },
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error("{0}")]
    Invalid(String),
    #[error("{message}")]
    Errno { errno: i32, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl CmdError {
    pub fn errno(&self) -> i32 {
        match self {
            // ERESTART (85) stays: as an exit code it says "run it again".
            CmdError::Rbd { source, .. } => source.errno(),
            CmdError::Rados { source, .. } => source.errno(),
            CmdError::Fs(e) => e.errno(),
            CmdError::Invalid(_) => libc::EINVAL,
            CmdError::Errno { errno, .. } => *errno,
            CmdError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

fn rbd_err(context: impl Into<String>) -> impl FnOnce(RbdError) -> CmdError {
    let context = context.into();
    move |source| CmdError::Rbd { context, source }
}

fn rados_err(context: impl Into<String>) -> impl FnOnce(RadosError) -> CmdError {
    let context = context.into();
    move |source| CmdError::Rados { context, source }
}

/// Receives progress of a long command: `done` of `total` units of `what`.
pub trait Progress: Send + Sync {
    fn update(&self, what: &str, done: u64, total: u64);
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&self, _: &str, _: u64, _: u64) {}
}

struct Labelled<'a> {
    what: &'static str,
    to: &'a dyn Progress,
}

impl ProgressSink for Labelled<'_> {
    fn update(&self, done: u64, total: u64) {
        self.to.update(self.what, done, total);
    }
}

/// Where commands run: the image layer, and in the daemon its filesystem (so
/// a flatten joins the one started through the mount).
#[derive(Clone)]
pub struct Ctx {
    pub rbd: Arc<Rbd>,
    pub fs: Option<Arc<ImageFs>>,
    /// The store directory (for `status`).
    pub store: String,
    /// The mount point, when run inside the daemon.
    pub mountpoint: Option<String>,
    /// The admin request this command came in (daemon only): management
    /// operations run through the image's lock owner under this id, so a
    /// retried request is answered rather than run twice.
    pub request: Option<u64>,
    /// The cluster of OSDs, for the `osd`, `pg`, `scrub` and `status` verbs.
    pub cluster: Option<Arc<Cluster>>,
}

fn osd_err(context: String) -> impl FnOnce(OsdError) -> CmdError {
    move |e| {
        let errno = match &e {
            OsdError::NoSuchOsd(_) | OsdError::PoolNotFound(_) => libc::ENOENT,
            OsdError::CannotRemove { .. } => libc::EBUSY,
            OsdError::InvalidArgument(_) => libc::EINVAL,
            _ => libc::EIO,
        };
        CmdError::Errno {
            errno,
            message: format!("{context}: {e}"),
        }
    }
}

/// Run a cluster call (map changes fsync and peer) off the async runtime.
/// Mark osd.`id` `state` (up, down, in, out) through `f`.
async fn mark_osd(
    ctx: &Ctx,
    id: u32,
    state: &str,
    f: impl FnOnce(&Cluster) -> Result<(), OsdError> + Send + 'static,
) -> Result<Output, CmdError> {
    on_cluster(ctx, format!("marking osd.{id} {state}"), f)
        .await
        .map(|_| Output::Nothing)
}

async fn on_cluster<T: Send + 'static>(
    ctx: &Ctx,
    context: String,
    f: impl FnOnce(&Cluster) -> Result<T, OsdError> + Send + 'static,
) -> Result<T, CmdError> {
    let cluster = ctx.cluster.clone().ok_or_else(|| CmdError::Errno {
        errno: libc::ENOTSUP,
        message: format!("{context}: this store has no OSD cluster"),
    })?;
    tokio::task::spawn_blocking(move || f(&cluster))
        .await
        .map_err(|e| CmdError::Errno {
            errno: libc::EIO,
            message: format!("{context}: {e}"),
        })?
        .map_err(osd_err(context))
}

fn osd_rows(cluster: &Cluster) -> Vec<OsdRow> {
    cluster
        .osdmap()
        .osds
        .iter()
        .map(|o| OsdRow {
            id: o.id,
            up: o.up,
            in_: o.in_,
            lost: o.lost,
            path: o.path.display().to_string(),
        })
        .collect()
}

/// Run management operation `op` on the head `spec`: through the lock owner's
/// request path when the command was forwarded (`ctx.request`), else directly.
async fn manage(
    ctx: &Ctx,
    spec: &ImageSpec,
    op: ManagementOp,
    progress: &dyn ProgressSink,
    context: &str,
) -> Result<Output, CmdError> {
    let result = match ctx.request {
        Some(id) => {
            let id = RequestId {
                client_id: id,
                seq: 0,
            };
            ctx.rbd
                .execute(spec, id, &op, progress, &CancelToken::new())
                .await
        }
        None => {
            let image = open(ctx, spec).await?;
            match &op {
                ManagementOp::Resize { size, allow_shrink } => {
                    image.resize(*size, *allow_shrink, progress).await
                }
                ManagementOp::SnapCreate { name } => image.snap_create(name).await,
                ManagementOp::SnapRemove { name } => image.snap_remove(name).await,
                ManagementOp::SnapProtect { name } => image.snap_protect(name).await,
                ManagementOp::SnapUnprotect { name } => image.snap_unprotect(name).await,
                ManagementOp::SnapRollback { name } => image.snap_rollback(name, progress).await,
                ManagementOp::Flatten => image.flatten(progress, &CancelToken::new()).await,
            }
        }
    };
    result.map_err(rbd_err(context))?;
    Ok(Output::Nothing)
}

fn parse_spec(text: &str) -> Result<ImageSpec, CmdError> {
    text.parse::<ImageSpec>()
        .map_err(|e| CmdError::Invalid(e.to_string()))
}

fn parse_head(text: &str) -> Result<ImageSpec, CmdError> {
    let spec = parse_spec(text)?;
    if spec.snap.is_some() {
        return Err(CmdError::Invalid(format!(
            "{text} names a snapshot; this command takes an image (pool/image)"
        )));
    }
    Ok(spec)
}

fn parse_snap(text: &str) -> Result<(ImageSpec, String), CmdError> {
    let spec = parse_spec(text)?;
    match spec.snap.clone() {
        Some(s) => Ok((spec.head(), s)),
        None => Err(CmdError::Invalid(format!(
            "snapshot name was not specified: use {text}@SNAP"
        ))),
    }
}

/// The image a flatten names: a head, refused as rbd does otherwise.
fn flatten_spec(text: &str) -> Result<ImageSpec, CmdError> {
    let spec = parse_spec(text)?;
    if spec.snap.is_some() {
        return Err(CmdError::Errno {
            errno: libc::EINVAL,
            message: "snapshot name specified for a command that doesn't use it".into(),
        });
    }
    Ok(spec)
}

fn fmt_time(secs: u64) -> String {
    // Plain UTC, like `date -u`'s default without the zone; no tz database needed.
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MN: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        WD[(days % 7) as usize],
        MN[(mo - 1) as usize],
        d,
        h,
        m,
        s,
        y
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn parent_out(p: &crate::rbd::ParentInfo) -> ParentOut {
    ParentOut {
        pool: p.pool.clone(),
        pool_namespace: String::new(),
        image: p.image.clone(),
        id: p.image_id.clone(),
        snapshot: p.snap.clone(),
        trash: false,
        overlap: p.overlap,
    }
}

async fn open(ctx: &Ctx, spec: &ImageSpec) -> Result<Arc<Image>, CmdError> {
    ctx.rbd
        .open_spec(spec)
        .await
        .map_err(rbd_err(format!("error opening image {spec}")))
}

/// Chunk size of export and import.
const COPY_CHUNK: u64 = 4 << 20;

/// Run `cmd`. Progress of long commands goes to `progress`.
pub async fn execute(
    ctx: &Ctx,
    cmd: &Command,
    progress: &dyn Progress,
) -> Result<Output, CmdError> {
    let label = cmd.progress_label().unwrap_or("");
    let sink = Labelled {
        what: label,
        to: progress,
    };
    match cmd {
        Command::PoolCreate { name, size } => {
            crate::rbd::spec::validate_name(name, "pool", name)
                .map_err(|e| CmdError::Invalid(e.to_string()))?;
            ctx.rbd
                .rados()
                .pool_create(name, *size)
                .await
                .map_err(rados_err(format!("creating pool {name} failed")))?;
            Ok(Output::Nothing)
        }
        Command::PoolLs => {
            let pools = ctx
                .rbd
                .rados()
                .pool_list()
                .map_err(rados_err("listing pools failed"))?;
            Ok(Output::Pools(
                pools
                    .into_iter()
                    .map(|p| PoolRow {
                        name: p.name,
                        id: p.id,
                        size: p.size,
                        min_size: p.min_size,
                        pg_num: p.pg_num,
                    })
                    .collect(),
            ))
        }
        Command::Create { spec, size, order } => {
            let spec = parse_head(spec)?;
            let opts = CreateOptions {
                order: *order,
                features: None,
            };
            ctx.rbd
                .create(&spec.pool, &spec.image, *size, &opts)
                .await
                .map_err(rbd_err("create error"))?;
            Ok(Output::Nothing)
        }
        Command::Ls { pool, long } => {
            let names = ctx
                .rbd
                .list(pool)
                .await
                .map_err(rbd_err(format!("listing pool {pool} failed")))?;
            if !long {
                return Ok(Output::Names(names));
            }
            let mut rows = Vec::new();
            for name in names {
                let image = match ctx.rbd.open(pool, &name, None).await {
                    Ok(i) => i,
                    Err(RbdError::ImageNotFound(_)) => continue,
                    Err(e) => return Err(rbd_err(format!("error opening image {name}"))(e)),
                };
                rows.push(LsRow {
                    image: name.clone(),
                    snapshot: None,
                    size: image.size(),
                    parent: image.parent().as_ref().map(parent_out),
                    format: 2,
                    protected: None,
                });
                for s in image
                    .snap_list()
                    .await
                    .map_err(rbd_err("listing snapshots"))?
                {
                    let snap = ctx
                        .rbd
                        .open(pool, &name, Some(&s.name))
                        .await
                        .map_err(rbd_err(format!("error opening {name}@{}", s.name)))?;
                    rows.push(LsRow {
                        image: name.clone(),
                        snapshot: Some(s.name.clone()),
                        size: s.size,
                        parent: snap.parent().as_ref().map(parent_out),
                        format: 2,
                        protected: Some(s.protected.to_string()),
                    });
                }
            }
            Ok(Output::Long(rows))
        }
        Command::Info { spec } => {
            let spec = parse_spec(spec)?;
            let image = open(ctx, &spec).await?;
            let i = image.info().await.map_err(rbd_err("info failed"))?;
            Ok(Output::Info(Box::new(InfoOut {
                name: i.name.clone(),
                id: i.id.clone(),
                size: i.size,
                objects: i.objects,
                order: i.order,
                object_size: i.object_size,
                snapshot_count: i.snapshot_count,
                block_name_prefix: i.block_name_prefix.clone(),
                format: i.format,
                features: i.features.iter().map(|f| f.to_string()).collect(),
                op_features: Vec::new(),
                flags: Vec::new(),
                create_timestamp: fmt_time(i.create_timestamp),
                access_timestamp: fmt_time(i.access_timestamp),
                modify_timestamp: fmt_time(i.modify_timestamp),
                parent: i.parent.as_ref().map(parent_out),
                protected: i.protected.map(|p| p.to_string()),
            })))
        }
        Command::Resize {
            spec,
            size,
            allow_shrink,
        } => {
            let spec = parse_head(spec)?;
            let op = ManagementOp::Resize {
                size: *size,
                allow_shrink: *allow_shrink,
            };
            manage(ctx, &spec, op, &sink, "resize failed").await
        }
        Command::Rm { spec } => {
            let spec = parse_head(spec)?;
            ctx.rbd
                .remove(&spec.pool, &spec.image, &sink)
                .await
                .map_err(rbd_err("remove failed"))?;
            Ok(Output::Nothing)
        }
        Command::Rename { src, dst } => {
            let src = parse_head(src)?;
            let dst = parse_head(dst)?;
            // As rbd answers both.
            if src.pool != dst.pool {
                return Err(CmdError::Errno {
                    errno: libc::EINVAL,
                    message: "mv/rename across pools not supported".into(),
                });
            }
            if src == dst {
                return Err(CmdError::Errno {
                    errno: libc::EEXIST,
                    message: format!("rename failed: image {dst} already exists"),
                });
            }
            ctx.rbd
                .rename(&src.pool, &src.image, &dst.image)
                .await
                .map_err(rbd_err("rename failed"))?;
            Ok(Output::Nothing)
        }
        Command::SnapCreate { spec } => {
            let (head, name) = parse_snap(spec)?;
            let op = ManagementOp::SnapCreate { name };
            manage(ctx, &head, op, &sink, "failed to create snapshot").await
        }
        Command::SnapLs { spec } => {
            let spec = parse_head(spec)?;
            let snaps = open(ctx, &spec)
                .await?
                .snap_list()
                .await
                .map_err(rbd_err("listing snapshots failed"))?;
            Ok(Output::Snaps(
                snaps
                    .into_iter()
                    .map(|s| SnapRow {
                        id: s.id,
                        name: s.name,
                        size: s.size,
                        protected: s.protected.to_string(),
                        timestamp: fmt_time(s.timestamp),
                    })
                    .collect(),
            ))
        }
        Command::SnapRm { spec } => {
            let (head, name) = parse_snap(spec)?;
            if let Some(fs) = &ctx.fs {
                let snap = head.at_snap(&name);
                if fs.has_open(&snap) {
                    return Err(CmdError::Errno {
                        errno: libc::EBUSY,
                        message: format!(
                            "failed to remove snapshot: {snap} is open through the mount \
                             (a loop device?); close or detach it first"
                        ),
                    });
                }
            }
            let op = ManagementOp::SnapRemove { name };
            manage(ctx, &head, op, &sink, "failed to remove snapshot").await
        }
        Command::SnapProtect { spec } => {
            let (head, name) = parse_snap(spec)?;
            let op = ManagementOp::SnapProtect { name };
            manage(ctx, &head, op, &sink, "protecting snap failed").await
        }
        Command::SnapUnprotect { spec } => {
            let (head, name) = parse_snap(spec)?;
            let op = ManagementOp::SnapUnprotect { name };
            manage(ctx, &head, op, &sink, "unprotecting snap failed").await
        }
        Command::SnapRollback { spec } => {
            let (head, name) = parse_snap(spec)?;
            let op = ManagementOp::SnapRollback { name };
            manage(ctx, &head, op, &sink, "rollback failed").await
        }
        Command::Clone { parent, child } => {
            let (phead, psnap) = parse_snap(parent)?;
            let child = parse_head(child)?;
            ctx.rbd
                .clone_image(&phead.at_snap(&psnap), &child, &CreateOptions::default())
                .await
                .map_err(rbd_err("clone error"))?;
            Ok(Output::Nothing)
        }
        Command::Children { spec } => {
            let (head, snap) = parse_snap(spec)?;
            let kids = ctx
                .rbd
                .children(&head.at_snap(&snap))
                .await
                .map_err(rbd_err("listing children failed"))?;
            Ok(Output::Children(
                kids.iter().map(|k| k.to_string()).collect(),
            ))
        }
        Command::Flatten { spec } => {
            let spec = flatten_spec(spec)?;
            match &ctx.fs {
                Some(fs) => flatten_in_daemon(fs, &spec, progress).await,
                None => manage(ctx, &spec, ManagementOp::Flatten, &sink, "flatten error").await,
            }
        }
        Command::Du { spec, pool } => du(ctx, spec.as_deref(), pool.as_deref()).await,
        Command::Export { spec, path } => export(ctx, spec, path, &sink).await,
        Command::Import { path, spec, order } => import(ctx, path, spec, *order, &sink).await,
        Command::OsdLs => on_cluster(ctx, "osd ls".into(), |c| Ok(osd_rows(c)))
            .await
            .map(Output::Osds),
        Command::OsdOut { id } => {
            let id = *id;
            mark_osd(ctx, id, "out", move |c| c.set_osd_in(id, false)).await
        }
        Command::OsdIn { id } => {
            let id = *id;
            mark_osd(ctx, id, "in", move |c| c.set_osd_in(id, true)).await
        }
        Command::OsdDown { id } => {
            let id = *id;
            mark_osd(ctx, id, "down", move |c| c.set_osd_up(id, false)).await
        }
        Command::OsdUp { id } => {
            let id = *id;
            mark_osd(ctx, id, "up", move |c| c.set_osd_up(id, true)).await
        }
        Command::OsdAdd { path } => {
            let p = std::path::PathBuf::from(path);
            on_cluster(ctx, format!("adding an osd in {path}"), move |c| {
                c.add_osd(&p)
            })
            .await
            .map(|id| Output::Names(vec![format!("osd.{id}")]))
        }
        Command::OsdRm { id } => {
            let id = *id;
            on_cluster(ctx, format!("removing osd.{id}"), move |c| c.remove_osd(id))
                .await
                .map(|_| Output::Nothing)
        }
        Command::OsdLost { id, confirmed } => {
            if !confirmed {
                return Err(CmdError::Errno {
                    errno: libc::EPERM,
                    message: format!(
                        "marking osd.{id} lost gives up, for good, every write only it \
                         holds; pass --yes-i-really-mean-it if you really do"
                    ),
                });
            }
            let id = *id;
            mark_osd(ctx, id, "lost", move |c| c.mark_osd_lost(id)).await
        }
        Command::PgLs => on_cluster(ctx, "pg ls".into(), |c| Ok(c.pg_list()))
            .await
            .map(Output::Pgs),
        Command::Scrub { pool, deep, repair } => {
            let pool_id = match pool {
                None => None,
                Some(name) => Some(
                    ctx.rbd
                        .rados()
                        .pool_list()
                        .map_err(rados_err("listing pools failed"))?
                        .into_iter()
                        .find(|p| &p.name == name)
                        .map(|p| p.id)
                        .ok_or_else(|| CmdError::Errno {
                            errno: libc::ENOENT,
                            message: format!("scrub: pool {name} does not exist"),
                        })?,
                ),
            };
            let (deep, repair) = (*deep, *repair);
            on_cluster(ctx, "scrub".into(), move |c| c.scrub(pool_id, deep, repair))
                .await
                .map(Output::Scrub)
        }
        Command::Status { spec } => {
            let pools = ctx
                .rbd
                .rados()
                .pool_list()
                .map_err(rados_err("listing pools failed"))?;
            let (image, flatten, watching) = match spec {
                Some(s) => {
                    let spec = parse_head(s)?;
                    open(ctx, &spec).await?;
                    let flatten = match &ctx.fs {
                        Some(fs) => Some(fs.flatten_state(&spec).await?.to_string()),
                        None => None,
                    };
                    let watching = match (&ctx.fs, &ctx.mountpoint) {
                        (Some(fs), Some(mnt)) => watchers(
                            fs.open_files(&spec.pool, &spec.image),
                            &loops::attached(),
                            Path::new(mnt),
                            still_running,
                        ),
                        _ => Vec::new(),
                    };
                    (Some(spec.to_string()), flatten, Some(watching))
                }
                None => (None, None, None),
            };
            let cluster = match (spec, &ctx.cluster) {
                (None, Some(c)) => {
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || Box::new(c.status()))
                        .await
                        .ok()
                }
                _ => None,
            };
            Ok(Output::Status(StatusOut {
                store: ctx.store.clone(),
                daemon_pid: ctx.fs.as_ref().map(|_| std::process::id()),
                mountpoint: ctx.mountpoint.clone(),
                pools: pools
                    .into_iter()
                    .map(|p| PoolRow {
                        name: p.name,
                        id: p.id,
                        size: p.size,
                        min_size: p.min_size,
                        pg_num: p.pg_num,
                    })
                    .collect(),
                image,
                watchers: watching,
                flatten,
                cluster,
            }))
        }
    }
}

/// Flatten in the daemon: start (or join) the mount's job for the image and
/// report its progress until it ends.
async fn flatten_in_daemon(
    fs: &ImageFs,
    spec: &ImageSpec,
    progress: &dyn Progress,
) -> Result<Output, CmdError> {
    let job = fs.start_flatten(spec).await.map_err(|e| match e {
        FsError::Rbd(source) => CmdError::Rbd {
            context: "flatten error".into(),
            source,
        },
        other => CmdError::Fs(other),
    })?;
    let mut rx = job.subscribe();
    loop {
        let state = rx.borrow_and_update().clone();
        match state {
            JobState::Running { done, total } => progress.update("Image flatten", done, total),
            JobState::Done => return Ok(Output::Nothing),
            JobState::Cancelled => {
                return Err(rbd_err("flatten error")(RbdError::Cancelled));
            }
            JobState::Failed { errno, reason } => {
                return Err(CmdError::Errno {
                    errno,
                    message: format!("flatten error: {reason}"),
                });
            }
            JobState::Idle => {}
        }
        if rx.changed().await.is_err() {
            return Err(CmdError::Errno {
                errno: libc::EIO,
                message: "flatten job vanished".into(),
            });
        }
    }
}

async fn du(ctx: &Ctx, spec: Option<&str>, pool: Option<&str>) -> Result<Output, CmdError> {
    let pool = pool.unwrap_or(crate::rbd::DEFAULT_POOL);
    let specs = match spec {
        Some(s) if s.contains('/') => vec![parse_spec(s)?],
        Some(s) => vec![parse_spec(&format!("{pool}/{s}"))?],
        None => ctx
            .rbd
            .list(pool)
            .await
            .map_err(rbd_err("listing images failed"))?
            .into_iter()
            .map(|n| ImageSpec::new(pool, &n))
            .collect(),
    };
    let mut rows = Vec::new();
    for spec in specs {
        let image = open(ctx, &spec.head()).await?;
        let du = image.du().await.map_err(rbd_err("du failed"))?;
        let before = rows.len();
        for e in du.entries {
            if spec.snap.is_some() && e.snap != spec.snap {
                continue;
            }
            rows.push(DuRow {
                name: spec.image.clone(),
                id: image.id().to_string(),
                snapshot: e.snap,
                snapshot_id: e.snap_id,
                provisioned_size: e.provisioned_size,
                used_size: e.used_size,
            });
        }
        if rows.len() == before && spec.snap.is_some() {
            return Err(rbd_err("du failed")(RbdError::SnapNotFound(
                spec.to_string(),
            )));
        }
    }
    Ok(Output::Du(rows))
}

async fn export(
    ctx: &Ctx,
    spec: &str,
    path: &str,
    progress: &dyn ProgressSink,
) -> Result<Output, CmdError> {
    let spec = parse_spec(spec)?;
    // Read-only, as `rbd export` opens it: nothing copies up, no stamp moves.
    let image = match &spec.snap {
        Some(_) => open(ctx, &spec).await?,
        None => ctx
            .rbd
            .open_read_only(&spec.pool, &spec.image)
            .await
            .map_err(rbd_err(format!("error opening image {spec}")))?,
    };
    let mut out: Box<dyn Write + Send> = if path == "-" {
        if ctx.fs.is_some() {
            return Err(CmdError::Errno {
                errno: libc::EOPNOTSUPP,
                message: "export to stdout while the store is mounted is not supported: \
                          export to a file, or read the image file in the mount"
                    .into(),
            });
        }
        Box::new(std::io::stdout())
    } else {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| CmdError::Io {
                context: format!("export error: creating {path}"),
                source,
            })?;
        Box::new(f)
    };
    let size = image.size();
    let total = size.div_ceil(COPY_CHUNK);
    let mut off = 0;
    while off < size {
        let len = COPY_CHUNK.min(size - off);
        let data = image
            .read(off, len)
            .await
            .map_err(rbd_err("export error"))?;
        out.write_all(&data).map_err(|source| CmdError::Io {
            context: format!("export error: writing {path}"),
            source,
        })?;
        off += len;
        progress.update(off.div_ceil(COPY_CHUNK), total);
    }
    out.flush().map_err(|source| CmdError::Io {
        context: format!("export error: writing {path}"),
        source,
    })?;
    Ok(Output::Nothing)
}

async fn import(
    ctx: &Ctx,
    path: &str,
    spec: &str,
    order: Option<u8>,
    progress: &dyn ProgressSink,
) -> Result<Output, CmdError> {
    let spec = parse_head(spec)?;
    let (mut input, known_size): (Box<dyn Read + Send>, Option<u64>) = if path == "-" {
        if ctx.fs.is_some() {
            return Err(CmdError::Errno {
                errno: libc::EOPNOTSUPP,
                message: "import from stdin while the store is mounted is not supported: \
                          import from a file, or copy into a new file in the mount"
                    .into(),
            });
        }
        (Box::new(std::io::stdin()), None)
    } else {
        let f = std::fs::File::open(path).map_err(|source| CmdError::Io {
            context: format!("import error: opening {path}"),
            source,
        })?;
        let len = f.metadata().map(|m| m.len()).ok();
        (Box::new(f), len)
    };
    let opts = CreateOptions {
        order,
        features: None,
    };
    ctx.rbd
        .create(&spec.pool, &spec.image, known_size.unwrap_or(0), &opts)
        .await
        .map_err(rbd_err("import error"))?;
    let result = import_data(ctx, &spec, &mut input, known_size, progress).await;
    if result.is_err() {
        // Nothing half-done: a failed import leaves no image behind.
        let _ = ctx
            .rbd
            .remove(&spec.pool, &spec.image, &crate::rbd::NoProgress)
            .await;
    }
    result
}

async fn import_data(
    ctx: &Ctx,
    spec: &ImageSpec,
    input: &mut Box<dyn Read + Send>,
    known_size: Option<u64>,
    progress: &dyn ProgressSink,
) -> Result<Output, CmdError> {
    let image = open(ctx, spec).await?;
    let total = known_size.map_or(0, |s| s.div_ceil(COPY_CHUNK));
    let mut off = 0u64;
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = input.read(&mut buf[n..]).map_err(|source| CmdError::Io {
                context: "import error: reading input".into(),
                source,
            })?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        let end = off + n as u64;
        if end > image.size() {
            image
                .resize(end, false, &crate::rbd::NoProgress)
                .await
                .map_err(rbd_err("import error"))?;
        }
        // Zero chunks stay holes: the image is thin.
        if buf[..n].iter().any(|b| *b != 0) {
            image
                .write(off, bytes::Bytes::copy_from_slice(&buf[..n]))
                .await
                .map_err(rbd_err("import error"))?;
        }
        off = end;
        progress.update(
            off.div_ceil(COPY_CHUNK),
            total.max(off.div_ceil(COPY_CHUNK)),
        );
    }
    image.flush().await.map_err(rbd_err("import error"))?;
    Ok(Output::Nothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_watchers_tell_a_loop_device_by_the_handle_it_holds() {
        // Arrange: rbd/img open read-write by fio (running) and by losetup
        // (exited); its snapshot open read-only by a running process only.
        let opened = |file: &str, writable: bool, pid: u32, process: &str| OpenFile {
            file: file.into(),
            writable,
            opener: Opener {
                pid,
                process: process.into(),
            },
        };
        let open = vec![
            opened("rbd/img", true, 10, "fio"),
            opened("rbd/img", true, 11, "losetup"),
            opened("rbd/img@s", false, 12, "qemu"),
            opened("rbd/other", true, 13, "losetup"),
        ];
        let attached = |device: &str, backing: &str, read_only: bool| LoopDevice {
            device: device.into(),
            backing: backing.into(),
            read_only,
        };
        let loops = [
            attached("/dev/loop0", "/mnt/rbd/img", false),
            attached("/dev/loop1", "/mnt/rbd/img@s", true),
            // Another mount's file of the same name, and a plain file.
            attached("/dev/loop2", "/elsewhere/rbd/img", false),
            attached("/dev/loop3", "/var/tmp/disk.img", false),
        ];

        // Act
        let ws = watchers(open, &loops, Path::new("/mnt"), |o| o.pid != 11);

        // Assert: loop0 is losetup's handle, not fio's; loop1 has only the
        // running reader's to be told by; nothing else is a loop device.
        let devices: Vec<(u32, Option<&str>, bool)> = ws
            .iter()
            .map(|w| (w.pid, w.loop_device.as_deref(), w.running))
            .collect();
        assert_eq!(
            devices,
            vec![
                (10, None, true),
                (11, Some("/dev/loop0"), false),
                (12, Some("/dev/loop1"), true),
                (13, None, true),
            ]
        );
    }

    #[test]
    fn test_still_running_tells_our_process_from_a_reused_pid() {
        let me = Opener::of_pid(std::process::id());
        let renamed = Opener {
            process: format!("{}-not", me.process),
            ..me.clone()
        };

        // SAFETY: gettid has no preconditions.
        let thread = std::thread::spawn(|| Opener::of_pid(unsafe { libc::gettid() } as u32));
        let from_thread = thread.join().unwrap();

        assert!(still_running(&me));
        assert!(!still_running(&renamed));
        assert!(!still_running(&Opener::of_pid(0)));
        // FUSE names a request's thread: the watcher is its process.
        assert_eq!(from_thread, me);
    }

    #[test]
    fn test_command_serialises_with_verb_tag() {
        let cmd = Command::Flatten {
            spec: "rbd/c".into(),
        };

        let v = serde_json::to_value(&cmd).unwrap();

        assert_eq!(v, serde_json::json!({"verb": "flatten", "spec": "rbd/c"}));
        assert_eq!(cmd.verb(), "flatten");
    }

    #[test]
    fn test_mount_changes_name_what_a_mount_must_see_again() {
        let rollback = Command::SnapRollback {
            spec: "vm@s".into(),
        };
        let rename = Command::Rename {
            src: "p/a".into(),
            dst: "p/b".into(),
        };
        let snap_rm = Command::SnapRm {
            spec: "p/a@s".into(),
        };

        // A rollback rewrites the head (in the default pool), not the snapshot.
        assert_eq!(
            rollback.mount_changes().rewritten,
            Some(ImageSpec::new("rbd", "vm"))
        );
        assert_eq!(rollback.mount_changes().gone, None);
        assert_eq!(
            rename.mount_changes(),
            MountChanges {
                rewritten: None,
                gone: Some(ImageSpec::new("p", "a")),
                renamed_to: Some(ImageSpec::new("p", "b")),
            }
        );
        assert_eq!(
            snap_rm.mount_changes().gone,
            Some(ImageSpec::new("p", "a").at_snap("s"))
        );
        assert!(
            !Command::Ls {
                pool: "rbd".into(),
                long: false
            }
            .changes_images()
        );
        assert!(rename.changes_images());
    }

    #[test]
    fn test_fmt_time_matches_ctime_layout() {
        // 2026-11-21 13:51:17 UTC, the reference's create_timestamp.
        assert_eq!(fmt_time(1_795_269_077), "Sat Nov 21 13:51:17 2026");
    }
}
