//! `ImageFs`: the mount's filesystem, independent of FUSE so tests can drive it
//! directly. Every image is a file, every snapshot a read-only file next to it:
//!
//! ```text
//! /                       root: one directory per pool
//! /<pool>/                one file per image and per snapshot
//! /<pool>/<image>         read-write, size = image size
//! /<pool>/<image>@<snap>  read-only, the snapshot's content
//! ```
//!
//! Nothing is cached but inode numbers: every lookup and readdir asks the image
//! layer, so images and snapshots made with the CLI show up at once. Open files
//! hold an image handle; the image layer shares one context per image in the
//! process, so the admin socket's requests and the mount see the same state.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;

use super::errno::FsError;
use super::jobs::{JobState, Jobs};
use super::xattr::{self, SetRequest};
use crate::rbd::{CreateOptions, Image, ImageSpec, NoProgress, Rbd, RbdError};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

/// Result of a filesystem request.
pub type FsResult<T> = Result<T, FsError>;

/// The completion of a request served without a task: `Some(result)`, or
/// `None` when the caller must run the async request instead.
pub type Then<T> = Box<dyn FnOnce(Option<FsResult<T>>) + Send>;

/// Inode number of the root directory (fixed by FUSE).
pub const ROOT_INO: u64 = 1;

pub use super::xattr::PREFIX as XATTR_PREFIX;

/// `fallocate` mode bits (linux/falloc.h).
pub const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
pub const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// `lseek` whence values FUSE forwards.
pub const SEEK_DATA: i32 = 3;
pub const SEEK_HOLE: i32 = 4;

/// What an inode stands for. Identity is the name, so an inode number stays
/// the same for as long as the name does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    Pool(String),
    Image {
        pool: String,
        image: String,
    },
    Snap {
        pool: String,
        image: String,
        snap: String,
    },
}

impl Node {
    fn spec(&self) -> Option<ImageSpec> {
        match self {
            Node::Image { pool, image } => Some(ImageSpec::new(pool, image)),
            Node::Snap { pool, image, snap } => Some(ImageSpec::new(pool, image).at_snap(snap)),
            _ => None,
        }
    }

    fn display(&self) -> String {
        match self {
            Node::Root => "/".into(),
            Node::Pool(p) => format!("{p}/"),
            other => other.spec().map(|s| s.to_string()).unwrap_or_default(),
        }
    }
}

/// File type of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes of an inode, as `stat` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Allocated space in 512-byte units, as `rbd du` counts it: objects
    /// written since the previous snapshot (so an image's files add up to its
    /// usage, snapshots included).
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    /// Preferred I/O size: the object size for images.
    pub blksize: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    /// Creation time (`statx`'s birth time).
    pub crtime: SystemTime,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// A name the kernel may have cached (a dentry, and its inode's
/// attributes), as [`ImageFs::cached_names`] lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedName {
    /// Inode number of the directory holding the name.
    pub parent: u64,
    pub name: String,
    pub ino: u64,
    /// The image or snapshot, for files.
    pub spec: Option<ImageSpec>,
}

/// Answer to `statfs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
}

#[derive(Default)]
struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_node: HashMap<Node, u64>,
    next: u64,
}

impl Inodes {
    fn new() -> Self {
        let mut t = Inodes {
            next: ROOT_INO + 1,
            ..Default::default()
        };
        t.by_ino.insert(ROOT_INO, Node::Root);
        t.by_node.insert(Node::Root, ROOT_INO);
        t
    }

    fn ino(&mut self, node: Node) -> u64 {
        if let Some(i) = self.by_node.get(&node) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.by_ino.insert(i, node.clone());
        self.by_node.insert(node, i);
        i
    }

    /// After a rename, the inodes of the old names (head and snapshots) stand
    /// for the new ones, as the kernel keeps using them.
    fn renamed(&mut self, pool: &str, from: &str, to: &str) {
        let moved: Vec<(u64, Node)> = self
            .by_ino
            .iter()
            .filter_map(|(i, n)| match n {
                Node::Image { pool: p, image } if p == pool && image == from => Some((
                    *i,
                    Node::Image {
                        pool: p.clone(),
                        image: to.to_string(),
                    },
                )),
                Node::Snap {
                    pool: p,
                    image,
                    snap,
                } if p == pool && image == from => Some((
                    *i,
                    Node::Snap {
                        pool: p.clone(),
                        image: to.to_string(),
                        snap: snap.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        for (i, new) in moved {
            if let Some(old) = self.by_ino.insert(i, new.clone()) {
                self.by_node.remove(&old);
            }
            if let Some(stale) = self.by_node.insert(new, i) {
                if stale != i {
                    self.by_ino.remove(&stale);
                }
            }
        }
    }
}

struct Handle {
    image: Arc<Image>,
    writable: bool,
    opener: Opener,
}

/// The process that opened a file handle, as the kernel named it then.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Opener {
    pub pid: u32,
    /// Its name (`/proc/PID/comm`) at the open; empty when unknown.
    pub process: String,
}

impl Opener {
    /// The process of thread `tid`, as FUSE names a request's sender (0:
    /// the kernel, or unknown).
    pub fn of_pid(tid: u32) -> Opener {
        if tid == 0 {
            return Opener {
                pid: 0,
                process: String::new(),
            };
        }
        let tgid = std::fs::read_to_string(format!("/proc/{tid}/status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("Tgid:"))?;
                line["Tgid:".len()..].trim().parse().ok()
            })
            .unwrap_or(tid);
        let process = std::fs::read_to_string(format!("/proc/{tgid}/comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        Opener { pid: tgid, process }
    }
}

/// A file handle open on an image or one of its snapshots: one of the
/// image's watchers in `rbdfs status IMAGE`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenFile {
    /// `pool/image` or `pool/image@snap`.
    pub file: String,
    pub writable: bool,
    pub opener: Opener,
}

/// An image of `size` bytes is possible (else EFBIG, as for a file that
/// cannot grow that far).
fn fits(image: &Image, size: u64) -> FsResult<()> {
    let order = image.object_size().trailing_zeros() as u8;
    crate::rbd::types::check_size(size, order).map_err(|e| FsError::TooLarge(e.to_string()))
}

/// The flatten jobs' key of an image: its pool and id, which stay when it
/// is renamed and are new when the name is reused.
fn job_key(image: &Image) -> String {
    format!("{}/{}", image.spec().pool, image.id())
}

/// Who owns the files and where free space is measured.
#[derive(Clone, Debug)]
pub struct FsOptions {
    pub uid: u32,
    pub gid: u32,
    /// Directory whose filesystem `statfs` reports (the store); `None`: zeros.
    pub capacity_dir: Option<PathBuf>,
}

impl Default for FsOptions {
    fn default() -> Self {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            uid,
            gid,
            capacity_dir: None,
        }
    }
}

/// The filesystem of a mounted store.
pub struct ImageFs {
    rbd: Arc<Rbd>,
    opts: FsOptions,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    jobs: Arc<Jobs>,
    started: SystemTime,
}

/// Parse a file name in a pool directory: `image` or `image@snap`.
fn parse_file_name(pool: &str, name: &OsStr) -> FsResult<Node> {
    let name = name
        .to_str()
        .ok_or_else(|| FsError::InvalidName(name.to_string_lossy().into(), "not UTF-8".into()))?;
    let spec_text = format!("{pool}/{name}");
    let spec: ImageSpec = spec_text
        .parse()
        .map_err(|e: RbdError| FsError::InvalidName(name.to_string(), e.to_string()))?;
    Ok(match spec.snap {
        None => Node::Image {
            pool: spec.pool,
            image: spec.image,
        },
        Some(snap) => Node::Snap {
            pool: spec.pool,
            image: spec.image,
            snap,
        },
    })
}

impl ImageFs {
    pub fn new(rbd: Arc<Rbd>, opts: FsOptions) -> Self {
        Self::with_jobs(rbd, opts, Arc::new(Jobs::new()))
    }

    /// An `ImageFs` that shares its flatten jobs with the admin socket.
    pub fn with_jobs(rbd: Arc<Rbd>, opts: FsOptions, jobs: Arc<Jobs>) -> Self {
        Self {
            rbd,
            opts,
            inodes: Mutex::new(Inodes::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            jobs,
            started: SystemTime::now(),
        }
    }

    pub fn rbd(&self) -> &Arc<Rbd> {
        &self.rbd
    }

    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Every name this file system has given an inode number, so every name
    /// the kernel may hold in its caches (for up to the TTL of its entry and
    /// attributes), with the directory that holds it. Names removed since
    /// are among them.
    pub fn cached_names(&self) -> Vec<CachedName> {
        let inodes = self.inodes.lock();
        let pool_ino = |pool: &str| inodes.by_node.get(&Node::Pool(pool.to_string())).copied();
        let mut names: Vec<CachedName> = inodes
            .by_ino
            .iter()
            .filter_map(|(ino, node)| {
                let (parent, name) = match node {
                    Node::Root => return None,
                    Node::Pool(p) => (ROOT_INO, p.clone()),
                    Node::Image { pool, image } => (pool_ino(pool)?, image.clone()),
                    Node::Snap { pool, image, snap } => {
                        (pool_ino(pool)?, format!("{image}@{snap}"))
                    }
                };
                Some(CachedName {
                    parent,
                    name,
                    ino: *ino,
                    spec: node.spec(),
                })
            })
            .collect();
        names.sort_by_key(|n| n.ino);
        names
    }

    /// An image renamed by other means than this mount (the CLI): its
    /// inodes, which the kernel keeps using for open files, stand for the
    /// new name, as after a rename through the mount.
    pub fn renamed_elsewhere(&self, from: &ImageSpec, to: &ImageSpec) {
        if from.pool == to.pool {
            self.inodes
                .lock()
                .renamed(&from.pool, &from.image, &to.image);
        }
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes
            .lock()
            .by_ino
            .get(&ino)
            .cloned()
            .ok_or_else(|| FsError::NotFound(format!("inode {ino}")))
    }

    fn ino(&self, node: Node) -> u64 {
        self.inodes.lock().ino(node)
    }

    /// The file handles open on the image `pool/image`, its head or any of
    /// its snapshots, in the order they were opened.
    pub fn open_files(&self, pool: &str, image: &str) -> Vec<OpenFile> {
        let handles = self.handles.lock();
        let mut open: Vec<(u64, OpenFile)> = handles
            .iter()
            .filter_map(|(fh, h)| {
                let spec = h.image.spec();
                (spec.pool == pool && spec.image == image).then(|| {
                    let file = OpenFile {
                        file: spec.to_string(),
                        writable: h.writable,
                        opener: h.opener.clone(),
                    };
                    (*fh, file)
                })
            })
            .collect();
        open.sort_by_key(|(fh, _)| *fh);
        open.into_iter().map(|(_, f)| f).collect()
    }

    /// Whether a file handle of the mount has `spec` (an image or one of
    /// its snapshots) open.
    pub fn has_open(&self, spec: &ImageSpec) -> bool {
        self.handles
            .lock()
            .values()
            .any(|h| h.image.spec() == *spec)
    }

    fn handle(&self, fh: u64) -> FsResult<(Arc<Image>, bool)> {
        self.handles
            .lock()
            .get(&fh)
            .map(|h| (h.image.clone(), h.writable))
            .ok_or(FsError::BadHandle(fh))
    }

    fn pool_exists(&self, pool: &str) -> FsResult<bool> {
        Ok(self.rbd.rados().pool_list()?.iter().any(|p| p.name == pool))
    }

    /// Open the image a file node stands for (a snapshot opens read-only).
    async fn open_node(&self, node: &Node) -> FsResult<Arc<Image>> {
        let spec = node
            .spec()
            .ok_or_else(|| FsError::IsADirectory(node.display()))?;
        match self.rbd.open_spec(&spec).await {
            Ok(i) => Ok(i),
            Err(
                RbdError::ImageNotFound(_) | RbdError::SnapNotFound(_) | RbdError::PoolNotFound(_),
            ) => Err(FsError::NotFound(spec.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    fn dir_attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            blocks: 0,
            perm: 0o755,
            nlink: 2,
            blksize: 4096,
            uid: self.opts.uid,
            gid: self.opts.gid,
            atime: self.started,
            mtime: self.started,
            crtime: self.started,
        }
    }

    async fn file_attr(&self, ino: u64, node: &Node, image: &Image) -> FsResult<Attr> {
        let du = image.du().await?;
        let snap = match node {
            Node::Snap { snap, .. } => Some(snap.as_str()),
            _ => None,
        };
        let used = du
            .entries
            .iter()
            .find(|e| e.snap.as_deref() == snap)
            .map_or(0, |e| e.used_size);
        let mut blocks = used.div_ceil(512);
        // A file that holds nothing of its own but reads data (a new clone,
        // a head just snapshotted) counts one block: GNU tar -S archives a
        // file with no blocks as all holes, without reading it.
        if blocks == 0 && image.size() > 0 && !image.data_extents(0, image.size()).await?.is_empty()
        {
            blocks = 1;
        }
        let (created, accessed, modified) = image.timestamps();
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        Ok(Attr {
            ino,
            kind: Kind::File,
            size: image.size(),
            blocks,
            perm: if snap.is_some() { 0o444 } else { 0o644 },
            nlink: 1,
            blksize: u32::try_from(image.object_size()).unwrap_or(1 << 22),
            uid: self.opts.uid,
            gid: self.opts.gid,
            atime: at(accessed),
            mtime: at(modified),
            crtime: at(created),
        })
    }

    async fn attr_of(&self, ino: u64, node: &Node) -> FsResult<Attr> {
        match node {
            Node::Root => Ok(self.dir_attr(ino)),
            Node::Pool(p) => {
                if self.pool_exists(p)? {
                    Ok(self.dir_attr(ino))
                } else {
                    Err(FsError::NotFound(node.display()))
                }
            }
            file => {
                let image = self.open_node(file).await?;
                self.file_attr(ino, file, &image).await
            }
        }
    }

    /// Look `name` up in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let node = match self.node(parent)? {
            Node::Root => Node::Pool(name.to_string_lossy().into_owned()),
            Node::Pool(pool) => match parse_file_name(&pool, name) {
                Ok(n) => n,
                // A name that cannot be an image simply is not there.
                Err(_) => return Err(FsError::NotFound(name.to_string_lossy().into())),
            },
            other => return Err(FsError::NotADirectory(other.display())),
        };
        let attr = self.attr_of(0, &node).await?;
        let ino = self.ino(node);
        Ok(Attr { ino, ..attr })
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.attr_of(ino, &node).await
    }

    /// Entries of a directory, `.` and `..` first.
    pub async fn readdir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let node = self.node(ino)?;
        let mut out = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: ROOT_INO,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        match node {
            Node::Root => {
                for p in self.rbd.rados().pool_list()? {
                    let ino = self.ino(Node::Pool(p.name.clone()));
                    out.push(DirEntry {
                        ino,
                        kind: Kind::Dir,
                        name: p.name,
                    });
                }
            }
            Node::Pool(pool) => {
                for image in self.rbd.list(&pool).await? {
                    let snaps = match self.rbd.open(&pool, &image, None).await {
                        Ok(i) => i.snap_list().await?,
                        // Removed between list and open: skip it.
                        Err(RbdError::ImageNotFound(_)) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let ino = self.ino(Node::Image {
                        pool: pool.clone(),
                        image: image.clone(),
                    });
                    out.push(DirEntry {
                        ino,
                        kind: Kind::File,
                        name: image.clone(),
                    });
                    for s in snaps {
                        let ino = self.ino(Node::Snap {
                            pool: pool.clone(),
                            image: image.clone(),
                            snap: s.name.clone(),
                        });
                        out.push(DirEntry {
                            ino,
                            kind: Kind::File,
                            name: format!("{image}@{}", s.name),
                        });
                    }
                }
            }
            other => return Err(FsError::NotADirectory(other.display())),
        }
        Ok(out)
    }

    /// Open a file for `opener`; `flags` are open(2)'s. Returns the file handle.
    pub async fn open(&self, ino: u64, flags: i32, opener: Opener) -> FsResult<u64> {
        let node = self.node(ino)?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        match &node {
            Node::Root | Node::Pool(_) => return Err(FsError::IsADirectory(node.display())),
            Node::Snap { .. } if writable => {
                return Err(FsError::ReadOnlySnapshot(node.display()));
            }
            _ => {}
        }
        let image = self.open_node(&node).await?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            image,
            writable,
            opener,
        };
        self.handles.lock().insert(fh, handle);
        Ok(fh)
    }

    /// Close a file handle (after the kernel's last flush of it).
    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    /// Read up to `size` bytes at `off`; short (or empty) at the end of the image.
    pub async fn read(&self, fh: u64, off: u64, size: u32) -> FsResult<Bytes> {
        let (image, _) = self.handle(fh)?;
        let end = image.size();
        if off >= end {
            return Ok(Bytes::new());
        }
        let len = u64::from(size).min(end - off);
        Ok(image.read(off, len).await?)
    }

    /// [`ImageFs::read`] without a task where it can be served that way (see
    /// `rbd::io::now`): `then` gets `Some(result)` on the thread that
    /// completes it, or `None` when the caller must run `read` instead.
    pub fn read_now(&self, fh: u64, off: u64, size: u32, then: Then<Bytes>) {
        let Ok((image, _)) = self.handle(fh) else {
            return then(None);
        };
        let end = image.size();
        if off >= end {
            return then(Some(Ok(Bytes::new())));
        }
        let len = u64::from(size).min(end - off);
        image.read_now(off, len, Box::new(move |r| then(r.map(|r| Ok(r?)))));
    }

    /// [`ImageFs::write`] as [`ImageFs::read_now`] is to `read`; writes that
    /// grow the image take the async path.
    pub fn write_now(&self, fh: u64, off: u64, data: Bytes, then: Then<u32>) {
        let Ok((image, writable)) = self.handle(fh) else {
            return then(None);
        };
        let len = data.len() as u32;
        let end = off.checked_add(u64::from(len));
        if !writable || end.is_none_or(|end| end > image.size()) {
            return then(None);
        }
        image.write_now(
            off,
            data,
            Box::new(move |r| then(r.map(|r| Ok(r.map(|()| len)?)))),
        );
    }

    /// Grow `image` to at least `end` bytes (writes and fallocate past EOF).
    async fn grow_to(&self, image: &Image, end: u64) -> FsResult<()> {
        if end <= image.size() {
            return Ok(());
        }
        fits(image, end)?;
        Ok(image.grow_to(end).await?)
    }

    /// Write `data` at `off`; a write past the end grows the image (as
    /// rbd-fuse does, so `cp disk.img MNT/rbd/new` works).
    pub async fn write(&self, fh: u64, off: u64, data: Bytes) -> FsResult<u32> {
        let (image, writable) = self.handle(fh)?;
        if !writable {
            return Err(FsError::BadHandle(fh));
        }
        let len = data.len() as u64;
        let end = off.checked_add(len).ok_or_else(|| RbdError::OutOfRange {
            off,
            len,
            size: image.size(),
        })?;
        self.grow_to(&image, end).await?;
        image.write(off, data).await?;
        Ok(len as u32)
    }

    /// fsync/fdatasync/flush: returns once every write that completed before it
    /// is durable on every replica (the loop driver relies on this).
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (image, _) = self.handle(fh)?;
        Ok(image.flush().await?)
    }

    /// [`ImageFs::fsync`] without a task, for a thread that may block (a
    /// FUSE thread): `done` gets the result on the thread that completes it,
    /// and a sync may run on the caller's.
    pub fn fsync_then(&self, fh: u64, done: Box<dyn FnOnce(FsResult<()>) + Send>) {
        match self.handle(fh) {
            Ok((image, _)) => image.flush_then(Box::new(move |r| done(r.map_err(Into::into)))),
            Err(e) => done(Err(e)),
        }
    }

    /// fallocate(2): PUNCH_HOLE -> discard, ZERO_RANGE -> write-zeroes, plain
    /// allocation -> grow only (a thin image reserves nothing).
    pub async fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> FsResult<()> {
        let (image, writable) = self.handle(fh)?;
        if !writable {
            return Err(FsError::BadHandle(fh));
        }
        let end = off.saturating_add(len);
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        let op = mode & !FALLOC_FL_KEEP_SIZE;
        let size = image.size();
        match op {
            0 => {
                if !keep_size {
                    self.grow_to(&image, end).await?;
                }
                Ok(())
            }
            FALLOC_FL_PUNCH_HOLE => {
                if off >= size {
                    return Ok(());
                }
                Ok(image.discard(off, end.min(size) - off).await?)
            }
            FALLOC_FL_ZERO_RANGE => {
                if !keep_size {
                    self.grow_to(&image, end).await?;
                }
                let size = image.size();
                if off >= size {
                    return Ok(());
                }
                Ok(image.write_zeroes(off, end.min(size) - off).await?)
            }
            _ => Err(FsError::Unsupported(format!("fallocate mode {mode:#x}"))),
        }
    }

    /// lseek(2) with SEEK_DATA / SEEK_HOLE, from the image's data extents.
    pub async fn lseek(&self, fh: u64, off: u64, whence: i32) -> FsResult<u64> {
        let (image, _) = self.handle(fh)?;
        let size = image.size();
        if off >= size {
            return Err(FsError::NoMoreData(off));
        }
        let extents = image.data_extents(off, size - off).await?;
        match whence {
            SEEK_DATA => extents
                .iter()
                .find(|(s, l)| s + l > off)
                .map(|(s, _)| (*s).max(off))
                .ok_or(FsError::NoMoreData(off)),
            SEEK_HOLE => {
                let mut pos = off;
                for (s, l) in &extents {
                    if *s > pos {
                        break;
                    }
                    pos = pos.max(s + l);
                }
                Ok(pos.min(size))
            }
            _ => Err(FsError::InvalidValue {
                name: "whence".into(),
                reason: format!("{whence} is not SEEK_DATA or SEEK_HOLE"),
            }),
        }
    }

    /// Create an image file (size 0) and open it.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        flags: i32,
        opener: Opener,
    ) -> FsResult<(Attr, u64)> {
        let pool = match self.node(parent)? {
            Node::Pool(p) => p,
            Node::Root => {
                return Err(FsError::NotPermitted(
                    "only pool directories hold images; create pools with `rbdfs pool create`"
                        .into(),
                ));
            }
            other => return Err(FsError::NotADirectory(other.display())),
        };
        let node = parse_file_name(&pool, name)?;
        let Node::Image { image, .. } = &node else {
            return Err(FsError::InvalidName(
                name.to_string_lossy().into(),
                "image names may not contain '@'; snapshots are made with user.rbd.snap".into(),
            ));
        };
        self.rbd
            .create(&pool, image, 0, &CreateOptions::default())
            .await?;
        log::info!("created image {pool}/{image} through the mount");
        let ino = self.ino(node);
        let fh = self.open(ino, flags, opener).await?;
        let attr = self.getattr(ino).await?;
        Ok((attr, fh))
    }

    /// Change attributes: only the size (resize, shrinking allowed as with
    /// rbd-fuse) can change; time updates are accepted and ignored.
    pub async fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        mode: Option<u32>,
        owner: Option<(Option<u32>, Option<u32>)>,
    ) -> FsResult<Attr> {
        let node = self.node(ino)?;
        if mode.is_some() || owner.is_some_and(|(u, g)| u.is_some() || g.is_some()) {
            // What changes nothing is accepted, so `cp -p` and `install -m`
            // into the mount work.
            let now = self.attr_of(ino, &node).await?;
            let (uid, gid) = owner.unwrap_or_default();
            if mode.is_some_and(|m| m & 0o7777 != now.perm as u32)
                || uid.is_some_and(|u| u != now.uid)
                || gid.is_some_and(|g| g != now.gid)
            {
                return Err(FsError::NotPermitted(format!(
                    "{}: modes and owners are fixed; mount with --allow-other to share",
                    node.display()
                )));
            }
        }
        if let Some(size) = size {
            match &node {
                Node::Image { .. } => {
                    let image = self.open_node(&node).await?;
                    if size != image.size() {
                        fits(&image, size)?;
                        image.resize(size, true, &NoProgress).await?;
                        log::info!("resized {} to {size} through the mount", node.display());
                    }
                }
                Node::Snap { .. } => return Err(FsError::ReadOnlySnapshot(node.display())),
                _ => return Err(FsError::IsADirectory(node.display())),
            }
        }
        self.attr_of(ino, &node).await
    }

    /// Unlink an image (remove it) or a snapshot file (remove the snapshot).
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let pool = match self.node(parent)? {
            Node::Pool(p) => p,
            Node::Root => return Err(FsError::IsADirectory(name.to_string_lossy().into())),
            other => return Err(FsError::NotADirectory(other.display())),
        };
        let node = parse_file_name(&pool, name)
            .map_err(|_| FsError::NotFound(name.to_string_lossy().into()))?;
        match &node {
            Node::Image { pool, image } => {
                let head = self.open_node(&node).await?;
                let snaps = head.snap_list().await?;
                drop(head);
                if !snaps.is_empty() {
                    log::warn!(
                        "refusing to remove {pool}/{image}: it has {} snapshot(s); \
                         remove them first (rm {pool}/{image}@<snap>)",
                        snaps.len()
                    );
                    return Err(RbdError::HasSnapshots.into());
                }
                self.rbd.remove(pool, image, &NoProgress).await?;
                log::info!("removed image {pool}/{image} through the mount");
            }
            Node::Snap { pool, image, snap } => {
                let spec = ImageSpec::new(pool, image).at_snap(snap);
                if self.has_open(&spec) {
                    log::warn!(
                        "refusing to remove snapshot {spec}: a file handle has it open \
                         (a loop device?); close or detach it first"
                    );
                    return Err(RbdError::ImageBusy(spec.to_string()).into());
                }
                let head = self
                    .open_node(&Node::Image {
                        pool: pool.clone(),
                        image: image.clone(),
                    })
                    .await?;
                head.snap_remove(snap).await?;
                log::info!("removed snapshot {} through the mount", node.display());
            }
            // parse_file_name only returns file nodes.
            Node::Root | Node::Pool(_) => return Err(FsError::IsADirectory(node.display())),
        }
        let mut t = self.inodes.lock();
        if let Some(i) = t.by_node.remove(&node) {
            t.by_ino.remove(&i);
        }
        Ok(())
    }

    /// Rename an image within its pool.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if flags != 0 {
            return Err(FsError::Unsupported(
                "rename flags (exchange, noreplace)".into(),
            ));
        }
        let (Node::Pool(pool), Node::Pool(newpool)) = (self.node(parent)?, self.node(newparent)?)
        else {
            return Err(FsError::NotPermitted(
                "only images in pools can be renamed".into(),
            ));
        };
        if pool != newpool {
            return Err(FsError::CrossPool);
        }
        let from = parse_file_name(&pool, name)
            .map_err(|_| FsError::NotFound(name.to_string_lossy().into()))?;
        let to = parse_file_name(&pool, newname)?;
        let (Node::Image { image: from, .. }, Node::Image { image: to, .. }) = (from, to) else {
            return Err(FsError::NotPermitted(
                "snapshots cannot be renamed, and images cannot become snapshots".into(),
            ));
        };
        self.rbd.rename(&pool, &from, &to).await?;
        self.inodes.lock().renamed(&pool, &from, &to);
        log::info!("renamed {pool}/{from} to {pool}/{to} through the mount");
        Ok(())
    }

    /// mkdir, symlink, link, mknod of anything but a regular file: no meaning here.
    pub fn refuse(&self, what: &str) -> FsError {
        FsError::NotPermitted(format!(
            "{what} is not supported: the mount holds only pools and image files"
        ))
    }

    /// Free space: that of the store's filesystem.
    pub fn statfs(&self) -> FsStats {
        let Some(dir) = &self.opts.capacity_dir else {
            return FsStats {
                bsize: 4096,
                ..FsStats::default()
            };
        };
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return FsStats::default();
        };
        // SAFETY: statvfs writes into a zeroed struct we own; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if r != 0 {
            return FsStats::default();
        }
        let frsize = st.f_frsize.max(1);
        let to4k = |n: u64| n.saturating_mul(frsize) / 4096;
        FsStats {
            bsize: 4096,
            blocks: to4k(st.f_blocks),
            bfree: to4k(st.f_bfree),
            bavail: to4k(st.f_bavail),
            files: 0,
        }
    }

    // ---- extended attributes ----

    fn xattr_names(&self, node: &Node, image: &Image) -> Vec<&'static str> {
        xattr::names(matches!(node, Node::Snap { .. }), image.parent().is_some())
    }

    /// Names of the extended attributes of `ino`, each with the prefix.
    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<String>> {
        let node = self.node(ino)?;
        if node.spec().is_none() {
            return Ok(Vec::new());
        }
        let image = self.open_node(&node).await?;
        Ok(self
            .xattr_names(&node, &image)
            .into_iter()
            .map(|n| format!("{XATTR_PREFIX}{n}"))
            .collect())
    }

    /// The answer to a `getxattr` of a name that is not ours (no I/O needed):
    /// `None` for names under `user.rbd.`.
    pub fn foreign_xattr(&self, ino: u64, name: &OsStr) -> Option<FsError> {
        if name.as_encoded_bytes().starts_with(XATTR_PREFIX.as_bytes()) {
            return None;
        }
        Some(match self.node(ino) {
            Ok(_) => FsError::NoAttribute(name.to_string_lossy().into_owned()),
            Err(e) => e,
        })
    }

    /// Value of extended attribute `name` of `ino`.
    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        let no = || FsError::NoAttribute(name.to_string());
        let key = name.strip_prefix(XATTR_PREFIX).ok_or_else(no)?;
        let Some(spec) = node.spec() else {
            return Err(no());
        };
        let image = self.open_node(&node).await?;
        if !self.xattr_names(&node, &image).contains(&key) {
            return Err(no());
        }
        let text = match key {
            "id" => image.id().to_string(),
            "size" => image.size().to_string(),
            "object_size" => image.object_size().to_string(),
            "features" => image.info().await?.features.join(", "),
            "flatten" => self.jobs.state(&job_key(&image)).to_string(),
            "snap" => image
                .snap_list()
                .await?
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(" "),
            "protected" => {
                let snap = spec.snap.as_deref().unwrap_or_default();
                let s = image.snap_list().await?;
                let p = s
                    .iter()
                    .find(|s| s.name == snap)
                    .is_some_and(|s| s.protected);
                if p { "1" } else { "0" }.to_string()
            }
            "clone" => self
                .rbd
                .children(&spec)
                .await?
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            "parent" => {
                let p = image.parent().ok_or_else(no)?;
                format!("{}/{}@{} overlap={}", p.pool, p.image, p.snap, p.overlap)
            }
            _ => return Err(no()),
        };
        Ok(text.into_bytes())
    }

    /// Set extended attribute `name` of `ino`: the control interface. The
    /// request is parsed in full before anything changes.
    pub async fn setxattr(&self, ino: u64, name: &str, value: &[u8]) -> FsResult<()> {
        let node = self.node(ino)?;
        let Some(spec) = node.spec() else {
            if !name.starts_with(XATTR_PREFIX) {
                return Err(FsError::Unsupported(format!("extended attribute {name}")));
            }
            return Err(FsError::InvalidValue {
                name: name.into(),
                reason: "directories have no rbd attributes".into(),
            });
        };
        match xattr::parse_set(&spec, name, value)? {
            SetRequest::StartFlatten => self.start_flatten(&spec).await.map(|_| ()),
            SetRequest::CancelFlatten => {
                match self.jobs.get(&job_key(&*self.open_node(&node).await?)) {
                    Some(j) if j.state().is_running() => {
                        j.cancel();
                        log::info!("flatten of {spec} cancelled through the mount");
                        Ok(())
                    }
                    _ => Err(FsError::InvalidValue {
                        name: name.into(),
                        reason: "no flatten of this image is running".into(),
                    }),
                }
            }
            SetRequest::SnapCreate(snap) => {
                self.open_node(&node).await?.snap_create(&snap).await?;
                log::info!("created snapshot {spec}@{snap} through the mount");
                Ok(())
            }
            SetRequest::Protect(on) => self.set_protected(&spec, on).await,
            SetRequest::Clone(child) => {
                if !self.pool_exists(&child.pool)? {
                    return Err(FsError::NotFound(format!("pool {}", child.pool)));
                }
                self.rbd
                    .clone_image(&spec, &child, &CreateOptions::default())
                    .await?;
                log::info!("cloned {spec} to {child} through the mount");
                Ok(())
            }
        }
    }

    /// Protect or unprotect snapshot `spec`. Setting the state it already has
    /// is not an error for a file attribute (unlike `rbd snap protect` twice).
    async fn set_protected(&self, spec: &ImageSpec, on: bool) -> FsResult<()> {
        let snap = spec.snap.as_deref().unwrap_or_default();
        let head = self
            .open_node(&Node::Image {
                pool: spec.pool.clone(),
                image: spec.image.clone(),
            })
            .await?;
        let was = head
            .snap_list()
            .await?
            .into_iter()
            .find(|s| s.name == snap)
            .map(|s| s.protected)
            .ok_or_else(|| FsError::NotFound(spec.to_string()))?;
        if was == on {
            return Ok(());
        }
        let r = if on {
            head.snap_protect(snap).await
        } else {
            head.snap_unprotect(snap).await
        };
        match r {
            // Set by someone else since the check: the state asked for.
            Err(RbdError::AlreadyProtected | RbdError::AlreadyUnprotected) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(()) => {
                log::info!("snapshot {spec} protected={on} through the mount");
                Ok(())
            }
        }
    }

    /// removexattr: the attributes are computed, not stored.
    pub fn removexattr(&self, _ino: u64, name: &str) -> FsError {
        FsError::Unsupported(format!("removing {name}"))
    }

    /// Start (or join) the background flatten of the head `spec`. Errors that
    /// make a flatten pointless (no parent, a snapshot) come back at once.
    pub async fn start_flatten(&self, spec: &ImageSpec) -> FsResult<Arc<super::jobs::Job>> {
        if spec.snap.is_some() {
            return Err(FsError::ReadOnlySnapshot(spec.to_string()));
        }
        let node = Node::Image {
            pool: spec.pool.clone(),
            image: spec.image.clone(),
        };
        let image = self.open_node(&node).await?;
        let key = job_key(&image);
        if let Some(j) = self.jobs.get(&key) {
            if j.state().is_running() {
                return Ok(j);
            }
        }
        if image.parent().is_none() {
            return Err(RbdError::NoParent.into());
        }
        let (job, started) = self.jobs.start(&key, image);
        if started {
            log::info!("flatten of {spec} requested");
        }
        Ok(job)
    }

    /// State of the flatten of `spec` (head).
    pub async fn flatten_state(&self, spec: &ImageSpec) -> FsResult<JobState> {
        let node = Node::Image {
            pool: spec.pool.clone(),
            image: spec.image.clone(),
        };
        let image = self.open_node(&node).await?;
        Ok(self.jobs.state(&job_key(&image)))
    }

    /// Flush every open image (unmount, shutdown).
    pub async fn flush_all(&self) -> FsResult<()> {
        let images: Vec<Arc<Image>> = self
            .handles
            .lock()
            .values()
            .map(|h| h.image.clone())
            .collect();
        for i in images {
            i.flush().await?;
        }
        self.rbd.rados().flush().await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
