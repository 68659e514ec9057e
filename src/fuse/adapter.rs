//! The fuser adapter: every FUSE callback is one call into [`ImageFs`] and one
//! reply, nothing else. Requests run as tokio tasks, so a few FUSE threads keep
//! many requests in flight (a direct-I/O loop device queues dozens). Reads and
//! writes first try the path without a task (`ImageFs::read_now`), answered
//! from the thread that completes them (often this FUSE thread itself), and
//! run as tasks when that path hands them back.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::errno::FsError;
use super::fs::{Attr, FsResult, ImageFs, Kind, Opener};
use crate::cli::command::MountChanges;
use crate::rbd::ImageSpec;
use crate::sync::Arc;

/// How long the kernel may cache names and attributes. Short, because the CLI
/// can change images behind the mount's back.
const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// Requests the kernel keeps in flight in the background (async direct I/O,
/// readahead) before it throttles; the default of 12 starves a loop device.
const MAX_BACKGROUND: u16 = 64;

/// The `fuser::Filesystem` of the mount.
pub struct FuseAdapter {
    fs: Arc<ImageFs>,
    rt: tokio::runtime::Handle,
    /// O_DIRECT opens may bypass the page cache (see [`open_flags`]).
    direct_io: bool,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ImageFs>, rt: tokio::runtime::Handle) -> Self {
        Self {
            fs,
            rt,
            direct_io: false,
        }
    }
}

/// After images changed behind the kernel's back (a CLI command the daemon
/// ran), bring what it caches for the mount up to date:
/// - every inode's attributes, so sizes, `st_blocks` and modes are asked
///   again (and `losetup -c` sees a new size: the loop driver asks for the
///   file's attributes);
/// - the names that are gone, so they no longer open. Only those: dropping
///   a name in use would leave open files, a working directory or a mount
///   on it looking deleted;
/// - for a rewritten image, its cached bytes too, and its attributes read
///   back at once through `mountpoint`: older kernels' loop drivers take the
///   size from the inode without asking, and only a getattr updates it.
///
/// Blocks: not on a FUSE thread.
pub fn refresh_kernel_cache(
    fs: &ImageFs,
    notifier: &fuser::Notifier,
    mountpoint: &Path,
    changed: &MountChanges,
) {
    // ENOENT: the kernel holds nothing under that name or number. Any
    // other answer (ENODEV: the session has ended) leaves the mount alone.
    let mut refused = false;
    let mut note = |what: &str, r: std::io::Result<()>| match r {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
            refused = true;
            log::debug!("invalidating {what} in the kernel: {e}")
        }
        _ => {}
    };
    let names = fs.cached_names();
    for c in &names {
        let Some(spec) = &c.spec else {
            continue;
        };
        let gone = changed.gone.as_ref().is_some_and(|g| match g.snap {
            // A removed or renamed image: its snapshots' names go with it.
            None => spec.head() == *g,
            Some(_) => spec == g,
        });
        if gone {
            note(
                &c.name,
                notifier.inval_entry(INodeNo(c.parent), OsStr::new(&c.name)),
            );
        }
    }
    if let (Some(from), Some(to)) = (&changed.gone, &changed.renamed_to) {
        fs.renamed_elsewhere(from, to);
    }
    let rewritten = changed.rewritten.as_ref().map(ImageSpec::head);
    for c in &names {
        // Offset -1: the attributes only; 0 (and length 0): the bytes too.
        let from = if c.spec.is_some() && c.spec == rewritten {
            0
        } else {
            -1
        };
        note(&c.name, notifier.inval_inode(INodeNo(c.ino), from, 0));
    }
    if let (Some(i), false) = (rewritten, refused) {
        let path = mountpoint.join(&i.pool).join(&i.image);
        if let Err(e) = std::fs::metadata(&path) {
            log::debug!("reading {} back: {e}", path.display());
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.crtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

fn log_err(op: &str, e: &FsError) {
    // Expected refusals are the user's business; only real failures are logged.
    match e.errno() {
        libc::ENOENT | libc::ENODATA | libc::EEXIST => log::debug!("{op}: {e}"),
        libc::EIO | libc::ENOSPC | libc::ETIMEDOUT | libc::ESHUTDOWN => {
            log::error!("{op}: {e}")
        }
        _ => log::info!("{op}: {e}"),
    }
}

/// How the kernel treats an open file. An `O_DIRECT` open (a loop device
/// with `--direct-io=on`, `fio --direct=1`) goes the direct-I/O way: its
/// writes then run in parallel, and without the inode lock and the
/// `security.capability` lookup (a round trip to the daemon) that every
/// write through the page-cache path takes first. Other opens keep the
/// page cache. `direct_io`: the kernel keeps such opens mmap-able.
fn open_flags(flags: i32, direct_io: bool) -> FopenFlags {
    if direct_io && flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::empty()
    }
}

/// Answer a read, from whichever path served it.
fn answer_read(reply: ReplyData, r: FsResult<Bytes>) {
    match r {
        Ok(d) => reply.data(&d),
        Err(e) => {
            log_err("read", &e);
            reply.error(errno(&e))
        }
    }
}

/// Answer an op that returns nothing.
fn answer_empty(op: &str, reply: ReplyEmpty, r: FsResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => {
            log_err(op, &e);
            reply.error(errno(&e))
        }
    }
}

/// Answer a write, from whichever path served it.
fn answer_write(reply: ReplyWrite, r: FsResult<u32>) {
    match r {
        Ok(n) => reply.written(n),
        Err(e) => {
            log_err("write", &e);
            reply.error(errno(&e))
        }
    }
}

/// Reply with the xattr protocol: size query when `size == 0`, else the data
/// (ERANGE when it does not fit).
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        // Async direct I/O lets the loop driver's requests overlap; parallel
        // dirops lets lookups of different names run at once.
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // O_DIRECT opens bypass the page cache (see `open_flags`) on kernels
        // that keep such files mmap-able and coherent with cached opens
        // (6.6 on); older ones take the page-cache path as before.
        self.direct_io = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        Ok(())
    }

    fn destroy(&mut self) {
        let fs = self.fs.clone();
        if let Err(e) = self.rt.block_on(async move { fs.flush_all().await }) {
            log::error!("flush at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
                Err(e) => {
                    log_err("lookup", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => {
                    log_err("getattr", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.setattr(ino.0, size, mode, Some((uid, gid))).await {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => {
                    log_err("setattr", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&self.fs.refuse("mknod")));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&self.fs.refuse("mkdir")));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&self.fs.refuse("symlink")));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&self.fs.refuse("link")));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&self.fs.refuse("rmdir")));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.fs.clone();
        let name = name.to_owned();
        self.rt
            .spawn(async move { answer_empty("unlink", reply, fs.unlink(parent.0, &name).await) });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let flags = flags.bits();
        self.rt.spawn(async move {
            let r = fs.rename(parent.0, &name, newparent.0, &newname, flags);
            answer_empty("rename", reply, r.await)
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fs, direct_io) = (self.fs.clone(), self.direct_io);
        let pid = req.pid();
        self.rt.spawn(async move {
            match fs.open(ino.0, flags.0, Opener::of_pid(pid)).await {
                Ok(fh) => reply.opened(FileHandle(fh), open_flags(flags.0, direct_io)),
                Err(e) => {
                    log_err("open", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (fs, rt) = (self.fs.clone(), self.rt.clone());
        let _rt = self.rt.enter();
        self.fs.read_now(
            fh.0,
            offset,
            size,
            Box::new(move |r| match r {
                Some(r) => answer_read(reply, r),
                None => drop(
                    rt.spawn(async move { answer_read(reply, fs.read(fh.0, offset, size).await) }),
                ),
            }),
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (fs, rt) = (self.fs.clone(), self.rt.clone());
        let data = Bytes::copy_from_slice(data);
        let _rt = self.rt.enter();
        self.fs.write_now(
            fh.0,
            offset,
            data.clone(),
            Box::new(move |r| match r {
                Some(r) => answer_write(reply, r),
                None => {
                    drop(rt.spawn(async move {
                        answer_write(reply, fs.write(fh.0, offset, data).await)
                    }))
                }
            }),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _rt = self.rt.enter();
        self.fs
            .fsync_then(fh.0, Box::new(move |r| answer_empty("flush", reply, r)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _rt = self.rt.enter();
        self.fs
            .fsync_then(fh.0, Box::new(move |r| answer_empty("fsync", reply, r)));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readdir(ino.0).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                        let kind = match e.kind {
                            Kind::Dir => FileType::Directory,
                            Kind::File => FileType::RegularFile,
                        };
                        if reply.add(INodeNo(e.ino), (i + 1) as u64, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => {
                    log_err("readdir", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, 0, s.bsize, 255, s.bsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        let name = name.to_string_lossy().into_owned();
        let value = value.to_vec();
        self.rt.spawn(async move {
            answer_empty("setxattr", reply, fs.setxattr(ino.0, &name, &value).await)
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Names outside ours are answered here: the kernel asks for
        // `security.capability` before every write through the page cache.
        if let Some(e) = self.fs.foreign_xattr(ino.0, name) {
            return reply.error(errno(&e));
        }
        let fs = self.fs.clone();
        let name = name.to_string_lossy().into_owned();
        self.rt.spawn(async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => {
                    log_err("getxattr", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.listxattr(ino.0).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(n.as_bytes());
                        buf.push(0);
                    }
                    reply_xattr(reply, size, &buf)
                }
                Err(e) => {
                    log_err("listxattr", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&self.fs.removexattr(ino.0, &name.to_string_lossy())));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, direct_io) = (self.fs.clone(), self.direct_io);
        let (name, pid) = (name.to_owned(), req.pid());
        self.rt.spawn(async move {
            match fs.create(parent.0, &name, flags, Opener::of_pid(pid)).await {
                Ok((a, fh)) => reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    open_flags(flags, direct_io),
                ),
                Err(e) => {
                    log_err("create", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            answer_empty(
                "fallocate",
                reply,
                fs.fallocate(fh.0, offset, length, mode).await,
            )
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            let off = u64::try_from(offset).unwrap_or(u64::MAX);
            match fs.lseek(fh.0, off, whence).await {
                Ok(pos) => reply.offset(pos as i64),
                Err(e) => {
                    log_err("lseek", &e);
                    reply.error(errno(&e))
                }
            }
        });
    }
}
