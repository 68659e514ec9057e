//! The command line, as clap parses it. No logic here: `cli::run` turns these
//! into calls on the command layer.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Where the store lives when `--store` is not given and `RBDFS_STORE` is unset.
pub const DEFAULT_STORE: &str = "/var/lib/rbdfs";

/// Ceph RBD on one host: images, snapshots and clones in a local store, served
/// as files through a FUSE mount.
#[derive(Debug, Parser)]
#[command(name = "rbdfs", version, about, max_term_width = 100)]
pub struct Cli {
    /// Store directory (its OSDs, its lock, its admin socket).
    #[arg(long, global = true, env = "RBDFS_STORE", default_value = DEFAULT_STORE)]
    pub store: PathBuf,

    /// Output format of listing and info verbs.
    #[arg(long, global = true, value_enum, default_value_t = Format::Plain)]
    pub format: Format,

    /// Indent JSON output (with --format json).
    #[arg(long, global = true)]
    pub pretty_format: bool,

    /// Do not show progress of long operations.
    #[arg(long, global = true)]
    pub no_progress: bool,

    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Create a new store: its OSDs and the default pool `rbd`.
    Init(InitArgs),
    /// Pools.
    #[command(subcommand)]
    Pool(PoolVerb),
    /// Create an image.
    Create(CreateArgs),
    /// List the images of a pool.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show an image or snapshot.
    Info(SpecArg),
    /// Change an image's size.
    Resize(ResizeArgs),
    /// Remove an image (it must have no snapshots).
    #[command(alias = "remove")]
    Rm(SpecArg),
    /// Rename an image within its pool.
    #[command(alias = "mv")]
    Rename(RenameArgs),
    /// Snapshots.
    #[command(subcommand)]
    Snap(SnapVerb),
    /// Clone a protected snapshot into a new image.
    Clone(CloneArgs),
    /// List the clones of a snapshot.
    Children(SpecArg),
    /// Copy everything a clone reads from its parent into the clone, then detach it.
    Flatten(SpecArg),
    /// Provisioned and used size of images and snapshots.
    #[command(alias = "disk-usage")]
    Du(DuArgs),
    /// Write an image or snapshot's content to a file (`-` for stdout).
    Export(ExportArgs),
    /// Create an image from a file's content (`-` for stdin).
    Import(ImportArgs),
    /// Show the store (or an image): who holds it, its pools, a flatten in progress.
    Status(StatusArgs),
    /// Mount the store: every image and snapshot as a file under MOUNTPOINT.
    Mount(MountArgs),
    /// The OSDs: list them, take them down/out and back, add and remove.
    #[command(subcommand)]
    Osd(OsdVerb),
    /// Placement groups.
    #[command(subcommand)]
    Pg(PgVerb),
    /// Compare every PG's replicas; exits non-zero while inconsistencies remain.
    Scrub(ScrubArgs),
}

#[derive(Debug, Subcommand)]
pub enum OsdVerb {
    /// List the OSDs: id, up/down, in/out, store directory.
    #[command(alias = "list")]
    Ls,
    /// Move an OSD's data elsewhere (its PGs remap and backfill).
    Out(OsdIdArg),
    /// Let an OSD hold data again.
    In(OsdIdArg),
    /// Stop serving from an OSD, as a failure would.
    Down(OsdIdArg),
    /// Serve from an OSD again, as a restarted daemon would (it catches up).
    Up(OsdIdArg),
    /// Create a store in PATH and add it as a new OSD (up, in).
    Add(OsdAddArgs),
    /// Remove an OSD that is down and out, once every PG is clean.
    #[command(alias = "remove")]
    Rm(OsdIdArg),
    /// Declare a down OSD gone for good: PGs waiting for its copy serve the
    /// newest copy left, and writes only it held are lost.
    Lost(OsdLostArgs),
}

#[derive(Debug, Args)]
pub struct OsdLostArgs {
    /// OSD id (`N` of `osd.N`).
    pub id: u32,
    /// Confirm that writes only this OSD held may be lost for good.
    #[arg(long = "yes-i-really-mean-it")]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct OsdIdArg {
    /// OSD id (`N` of `osd.N`).
    pub id: u32,
}

#[derive(Debug, Args)]
pub struct OsdAddArgs {
    /// Directory of the new OSD's store (created).
    #[arg(long)]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum PgVerb {
    /// Every PG with its state, up and acting OSDs.
    #[command(alias = "list")]
    Ls,
}

#[derive(Debug, Args)]
pub struct ScrubArgs {
    /// Also compare the data's crc32c (reads everything).
    #[arg(long)]
    pub deep: bool,
    /// Rewrite bad copies from the authoritative one.
    #[arg(long)]
    pub repair: bool,
    /// Pool (default: every pool).
    pub pool: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory of one OSD (repeat; default: 3 OSDs inside the store).
    #[arg(long = "osd")]
    pub osds: Vec<PathBuf>,
    /// Replicas kept of every object in the default pool.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
}

#[derive(Debug, Subcommand)]
pub enum PoolVerb {
    /// Create a pool.
    Create(PoolCreateArgs),
    /// List pools.
    #[command(alias = "list")]
    Ls,
}

#[derive(Debug, Args)]
pub struct PoolCreateArgs {
    pub name: String,
    /// Replicas kept of every object (default: the store's).
    #[arg(long)]
    pub size: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SpecArg {
    /// `[pool/]image[@snap]`
    pub spec: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// `[pool/]image`
    pub spec: String,
    /// Size: MiB, or with a B/K/M/G/T suffix (10G).
    #[arg(short, long)]
    pub size: Option<String>,
    /// Object size as a power of two (12..=25; default 22 = 4 MiB).
    #[arg(long)]
    pub order: Option<u8>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Long listing: size, parent, protection.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// Pool (default `rbd`).
    pub pool: Option<String>,
    /// Pool, as `rbd ls -p POOL` takes it.
    #[arg(
        short = 'p',
        long = "pool",
        value_name = "POOL",
        conflicts_with = "pool"
    )]
    pub pool_opt: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    pub spec: String,
    /// New size: MiB, or with a B/K/M/G/T suffix (10G).
    #[arg(short, long)]
    pub size: String,
    /// Allow making the image smaller (data past the new end is lost).
    #[arg(long)]
    pub allow_shrink: bool,
}

#[derive(Debug, Args)]
pub struct RenameArgs {
    pub src: String,
    pub dst: String,
}

#[derive(Debug, Subcommand)]
pub enum SnapVerb {
    /// Create a snapshot `image@snap`.
    #[command(alias = "add")]
    Create(SpecArg),
    /// List the snapshots of an image.
    #[command(alias = "list")]
    Ls(SpecArg),
    /// Remove a snapshot (it must not be protected).
    #[command(alias = "remove")]
    Rm(SpecArg),
    /// Protect a snapshot from removal (needed before cloning it).
    Protect(SpecArg),
    /// Unprotect a snapshot (it must have no clones).
    Unprotect(SpecArg),
    /// Make the image's head equal to the snapshot again.
    #[command(alias = "revert")]
    Rollback(SpecArg),
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// `[pool/]image@snap` (protected)
    pub parent: String,
    /// `[pool/]child`
    pub child: String,
}

#[derive(Debug, Args)]
pub struct DuArgs {
    /// `[pool/]image[@snap]` (default: every image of the pool).
    pub spec: Option<String>,
    /// Pool (default `rbd`), for a spec without one or for the whole pool.
    #[arg(short, long)]
    pub pool: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub spec: String,
    /// Output file, `-` for stdout.
    pub path: String,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input file, `-` for stdin.
    pub path: String,
    /// `[pool/]image` to create (default: the file's name).
    pub spec: Option<String>,
    /// Object size as a power of two (default 22).
    #[arg(long)]
    pub order: Option<u8>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// `[pool/]image` (default: the store).
    pub spec: Option<String>,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    /// Go to the background once the mount is ready.
    #[arg(long)]
    pub daemon: bool,
    /// Let users other than the mounting one use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// FUSE request threads.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
}
