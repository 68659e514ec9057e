//! `FileStore`: the on-disk `ObjectStore`, write-ahead journaled.
//!
//! ```text
//! queue_transaction (caller's thread, under the submit lock)
//!   validate, space check, seq, encode
//!   append the record to the journal (write(2): page cache, survives kill -9)
//!   [commit-first transactions: fdatasync the journal now]
//!   apply the steps to the object files and the metadata table
//!   on_applied (readable)  ── returns
//!
//! journal syncer: fdatasync of everything appended so far, when asked
//!   (wait_committed, commit_soon: a client's flush) or every
//!   commit_interval; then on_commit (durable) in seq order
//! checkpoint thread: rotate journal, snapshot metadata, syncfs, write
//!   snapshot, delete covered segments (the newest becomes the spare)
//! ```
//!
//! A transaction is applied as soon as its record is in the journal file, and
//! committed (durable against power loss) by the next sync: the write-back
//! semantics of a disk with a volatile cache, with the journal as the cache.
//! A killed process loses nothing that was applied (the page cache keeps the
//! record, replay re-applies it). A power loss loses at most what was applied
//! since the last sync: the journal ends at a prefix, and object files may
//! hold some bytes of the lost transactions' in-place `Write`/`Zero` steps
//! (as a disk may hold some sectors of writes it never acknowledged as
//! flushed). Steps whose early effect could damage state that was already
//! committed are applied only after their record is durable: a `Clone` (a
//! later in-place write would otherwise change what a lost clone record
//! should have preserved), a `Truncate` of an existing file, and any
//! transaction the caller marks [`Transaction::commit_first`].
//!
//! Store directory:
//!
//! ```text
//! STORE/superblock          JSON: format name and version (written last by mkfs)
//! STORE/lock                flock'ed while open; holds the owner's pid
//! STORE/meta.snapshot       metadata table as of a journal seq (see meta.rs)
//! STORE/journal.<seq hex>   journal segments (see journal.rs, codec.rs)
//! STORE/journal-spare       a trimmed segment the next rotation writes over
//! STORE/objects/<xx>/<id>   object data, one file per object (see data.rs);
//!                           ids with the top bit set hold placed writes
//! ```
//!
//! Large writes take a direct path (BlueStore's "big writes go to new space"):
//!
//! ```text
//! queue_transaction (caller's thread)       journal writer     apply thread
//!   Write{off 0, len >= direct_write_min}:
//!   new file PLACED_ID_BIT|n, pwrite, ──────> record holds ───> object's id := n,
//!   fdatasync, fsync its directory            Place{key,len,n}  copy old tail past
//!   (before the record can be written)        (no data)         len, old file doomed
//!                                                               until a checkpoint
//! ```
//!
//! Every byte is written once; the journal carries a few dozen bytes. The
//! file's fdatasyncs run on the queueing threads, in parallel across them.
//!
//! Large overwrites inside an object go in place (`InPlace`): the data is
//! written into the object's own file before the record, which carries only
//! the range, so it too is written once. Replay leaves the bytes of earlier
//! journaled `Write`/`Zero` steps alone where a later in-place write covers
//! them (a first pass over the journal finds those ranges, see `shadow.rs`).
//! Only into a file whose size no record replay may still apply changes and
//! that none reads (a growing `Write`, a `Truncate`, `Place` or `Clone`),
//! only inside the object's size (no replay cut past the size can take
//! them), and only in a transaction with metadata steps besides, that need
//! not commit first (see `Inner::in_place`). A crash between the data and
//! the record leaves bytes of a write that was never acknowledged, as a disk
//! may.
//!
//! An in-place write's bytes are synced by the next commit, before the
//! journal (`UnsyncedFiles`), like a journaled write's. So its record may
//! reach the disk before its bytes do, and a power loss then loses the
//! write, which nobody flushed. Except over bytes that replay would skip for
//! it: into a file that a journaled `Write`/`Zero` replay may still apply
//! wrote to (`ReplayedFiles::bytes`), the bytes are synced before the
//! record, or replay could bring back what that journaled write replaced.
//!
//! Data files are never deleted by an apply: a removed, replaced or
//! overwritten-by-clone object's file is doomed with the seq that dropped it
//! and deleted by the first checkpoint whose snapshot covers that seq. So a
//! record that replay may still apply never lacks a file it names, and a
//! clone's file, once built, stays until no record can re-run the clone.
//!
//! Recovery: open loads the snapshot (seq S), replays journal records after S
//! onto it and onto the object files, checkpoints (so a torn journal tail is
//! never appended to), and only then removes files no object owns: the
//! orphans of placed writes whose record never committed, and doomed files.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::{self, MAX_PAYLOAD_LEN, Step};
use super::data::{self, PLACED_ID_BIT, fsync_dir, obj_dir, obj_path, tmp_path};
use super::journal::{self, JournalWriter, ReplayEnd, ReplayError};
use super::meta::MetaTable;
use super::{
    Callback, CollId, ObjectKey, ObjectStore, StoreError, StoreResult, StoreSpace, Transaction,
    TxOp,
};
use crate::sync::{Arc, AtomicBool, AtomicU64, Condvar, Mutex, Ordering, RwLock};
use shadow::Shadows;
use unsynced::{UndoLog, UnsyncedFiles, undoable};

const SUPERBLOCK: &str = "superblock";
const LOCK: &str = "lock";
const SNAPSHOT: &str = "meta.snapshot";
const FORMAT_NAME: &str = "rbdfs-filestore";
/// Version 2: replay leaves journaled bytes under a later in-place write
/// alone (`shadow.rs`). A build that knows only version 1 would write those
/// bytes over the in-place ones, so it must refuse the store: a version 1
/// store is upgraded when opened.
const FORMAT_VERSION: u32 = 2;

/// Tunables of a [`FileStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Checkpoint and trim the journal once it holds more than this.
    pub journal_max_bytes: u64,
    /// Refuse transactions (NoSpace) that would leave less free than this.
    pub min_free_bytes: u64,
    /// Use this instead of the file system's available bytes (tests).
    pub fake_available_bytes: Option<u64>,
    /// A `Write` at offset 0 of at least this many bytes goes straight to a
    /// new data file instead of through the journal (synced, with its
    /// directory, before the record); 0 turns this off.
    pub direct_write_min: u64,
    /// An overwrite of at least this many bytes inside an object goes into
    /// its file instead of through the journal (see `Inner::in_place`); 0
    /// turns this off.
    pub in_place_min: u64,
    /// The syncer commits applied transactions at least this often, when
    /// nobody asks sooner (a flush, `wait_committed`): the most a power loss
    /// can take of writes that nobody flushed.
    pub commit_interval: Duration,
    /// Tests: note what every unsynced write to an object file replaced,
    /// for [`FileStore::crash_losing_unsynced_data`].
    pub undo_unsynced: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            journal_max_bytes: 64 << 20,
            min_free_bytes: 64 << 20,
            fake_available_bytes: None,
            direct_write_min: 512 << 10,
            // The loop device's 512 KiB requests straddle 512 KiB
            // boundaries inside objects: pieces just under 512 KiB are
            // common.
            in_place_min: 128 << 10,
            commit_interval: Duration::from_secs(1),
            undo_unsynced: false,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Superblock {
    format: String,
    version: u32,
}

/// Open data files by id, so reads and applies do not open a file per call.
///
/// Only live ids are ever looked up: a reader holds its object's shard while
/// it resolves the id and opens the file (`Inner::prefetch` then reads
/// through the handle without it), and an id leaves the table (under that
/// shard's write lock) before it is doomed, so no entry is added for a file
/// that a checkpoint deletes; the checkpoint forgets an id as it deletes it.
struct FdCache {
    map: Mutex<HashMap<u64, Arc<File>>>,
    max: usize,
}

impl FdCache {
    /// Room for a share of the process's open-file limit: one process runs
    /// several stores, each with a journal and its own files too. 128 under
    /// the usual default soft limit of 1024; `rbdfs` raises its limit first.
    fn new() -> FdCache {
        let mut lim = libc::rlimit {
            rlim_cur: 1024,
            rlim_max: 1024,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        FdCache {
            map: Mutex::new(HashMap::new()),
            max: (lim.rlim_cur / 8).clamp(128, 8192) as usize,
        }
    }

    /// The file of `id`, created if `create`; `None` if absent and not created.
    fn get(&self, root: &Path, id: u64, create: bool) -> io::Result<Option<Arc<File>>> {
        if let Some(f) = self.map.lock().get(&id) {
            return Ok(Some(f.clone()));
        }
        let path = obj_path(root, id);
        let open = || {
            if create {
                data::open_rw(&path).map(Some)
            } else {
                data::open_rw_existing(&path)
            }
        };
        let f = match open() {
            // More stores in the process than the share assumed: give the
            // cached handles back and try once more.
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                let cached = std::mem::take(&mut *self.map.lock());
                drop(cached);
                open()?
            }
            r => r?,
        };
        let Some(f) = f else { return Ok(None) };
        let mut m = self.map.lock();
        // Full: one entry makes room (closed once the lock is released).
        let evicted = if m.len() >= self.max {
            m.keys().next().copied().and_then(|k| m.remove(&k))
        } else {
            None
        };
        let f = m.entry(id).or_insert_with(|| Arc::new(f)).clone();
        drop(m);
        drop(evicted);
        Ok(Some(f))
    }

    fn forget(&self, id: u64) {
        self.map.lock().remove(&id);
    }
}

/// How long a measured free-space figure stands in for `statvfs`: one
/// syscall per write cost 5% of a small-write load. Other writers to the
/// file system in that window are not seen; `min_free_bytes` covers them.
const FREE_SPACE_TTL: Duration = Duration::from_millis(50);

/// The last `statvfs` of the store's file system, less what was let
/// through since.
#[derive(Default)]
struct FreeSpace {
    measured: Option<Instant>,
    avail: u64,
}

impl FreeSpace {
    /// Free bytes at `now`: the standing figure, or a new `measure`.
    fn get(&mut self, now: Instant, measure: impl FnOnce() -> io::Result<u64>) -> io::Result<u64> {
        match self.measured {
            Some(at) if now.saturating_duration_since(at) < FREE_SPACE_TTL => Ok(self.avail),
            _ => {
                self.avail = measure()?;
                self.measured = Some(now);
                Ok(self.avail)
            }
        }
    }

    /// `n` bytes were let through: count them until the next measurement.
    fn take(&mut self, n: u64) {
        self.avail = self.avail.saturating_sub(n);
    }
}

struct Submit {
    /// Seq the next queued transaction gets.
    next_seq: u64,
    /// Collections as they are with everything queued applied.
    colls: BTreeSet<CollId>,
    /// False once the store stops taking transactions.
    open: bool,
}

struct Progress {
    committed: u64,
    applied: u64,
    failed: Option<String>,
}

/// Commit callbacks of journaled transactions not yet synced, in seq order.
#[derive(Default)]
struct Commits {
    waiting: std::collections::VecDeque<(u64, Callback)>,
}

/// Wakes a store thread (syncer, checkpointer) for one more round of its
/// work, or for good.
#[derive(Default)]
struct Wakeup {
    st: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Default)]
struct WakeState {
    requested: bool,
    stop: bool,
}

impl Wakeup {
    fn request(&self) {
        self.st.lock().requested = true;
        self.cv.notify_all();
    }

    fn stop(&self) {
        self.st.lock().stop = true;
        self.cv.notify_all();
    }

    /// Wait for a request (or `timeout`, when given); false once stopped.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut st = self.st.lock();
        match timeout {
            Some(t) if !st.requested && !st.stop => {
                self.cv.wait_for(&mut st, t);
            }
            _ => {
                while !st.requested && !st.stop {
                    self.cv.wait(&mut st);
                }
            }
        }
        st.requested = false;
        !st.stop
    }
}

struct Inner {
    root: PathBuf,
    cfg: StoreConfig,
    root_dir: File,
    lock: Mutex<Option<File>>,
    meta: RwLock<MetaTable>,
    /// See [`SHARDS`].
    shards: Vec<RwLock<()>>,
    /// Held while a transaction is applied, by checkpoints to copy the
    /// table between transactions.
    apply_gate: Mutex<()>,
    /// Held while a transaction is checked, journaled and applied: queue
    /// order is journal order is apply order.
    submit: Mutex<Submit>,
    progress: Mutex<Progress>,
    progress_cv: Condvar,
    /// The last seq known durable: set before its commit callbacks run,
    /// where `Progress::committed` is set after them.
    durable: AtomicU64,
    /// Held around every sync whose success makes records durable (the
    /// journal's, in-place writes', the checkpoint's syncfs): Linux reports
    /// a writeback error to one sync only, so a sync that failed must have
    /// failed the store before any other one is trusted.
    sync_lock: Mutex<()>,
    /// Tests: the next journal sync fails with EIO.
    #[cfg(test)]
    fail_next_sync: AtomicBool,
    /// Lock order: `submit`, then `journal`, then `commits`.
    journal: Mutex<JournalWriter>,
    commits: Mutex<Commits>,
    /// Held while commit callbacks run, so they run in seq order.
    commit_run: Mutex<()>,
    sync_wake: Wakeup,
    /// (segment start seq, bytes) of the journal as last synced (tests cut
    /// the journal there to simulate a power loss).
    synced_end: Mutex<(u64, u64)>,
    /// Serialises checkpoints.
    ckpt_lock: Mutex<()>,
    ckpt_wake: Wakeup,
    /// Next placed-write file id (below `PLACED_ID_BIT`).
    next_placed: AtomicU64,
    /// Files of objects dropped by applied transactions: (seq, id). Deleted
    /// by the first checkpoint whose snapshot covers the seq.
    doomed: Mutex<Vec<(u64, u64)>>,
    /// Data files that records replay may still apply touch; pruned by
    /// checkpoints. See [`ReplayedFiles`].
    replayed_files: Mutex<ReplayedFiles>,
    /// Files written in place whose sync waits for the next commit.
    unsynced: Mutex<UnsyncedFiles>,
    /// What unsynced writes replaced, when `cfg.undo_unsynced` (tests).
    undo: Option<Mutex<UndoLog>>,
    /// In-place records since the last checkpoint began (see
    /// [`IN_PLACE_PER_CHECKPOINT`]).
    in_place_since_checkpoint: AtomicU64,
    /// Bytes of the last metadata snapshot written: a checkpoint writes the
    /// next one before it deletes anything, so a full store must keep room
    /// for it.
    snapshot_bytes: AtomicU64,
    fds: FdCache,
    free: Mutex<FreeSpace>,
    failed: AtomicBool,
    closed: AtomicBool,
    /// Simulated power loss: threads stop where they are, nothing is synced.
    crashed: AtomicBool,
}

/// Data files that records replay may still apply touch, each with the
/// newest such record's seq.
#[derive(Default)]
struct ReplayedFiles {
    /// Files whose size such a record changes, or whose bytes it reads (a
    /// journaled `Write` that grows the object, a `Truncate`, either side of
    /// a `Clone`, a `Place`). A large overwrite goes in place only into a
    /// file not in here: replay cuts a file at the size it finds first, and
    /// copies what it reads. See [`Inner::in_place`].
    cut_or_read: HashMap<u64, u64>,
    /// Files such a record's journaled `Write` or `Zero` wrote to. An
    /// in-place write into one of them is synced before its record: replay
    /// skips those journaled bytes under it, so its record must never be on
    /// disk without its bytes. Into any other file, its sync waits for the
    /// next commit: a power loss before that loses only the write itself.
    bytes: HashMap<u64, u64>,
}

impl ReplayedFiles {
    /// A checkpoint covers the records up to `seq`.
    fn checkpointed(&mut self, seq: u64) {
        self.cut_or_read.retain(|_, s| *s > seq);
        self.bytes.retain(|_, s| *s > seq);
    }
}

#[derive(Default)]
struct Threads {
    syncer: Option<JoinHandle<()>>,
    ckpt: Option<JoinHandle<()>>,
}

/// One OSD's store: a directory with a journal, a metadata snapshot and one
/// data file per object.
///
/// Callbacks run on the queueing thread or the store's own threads, in seq
/// order: they must be quick and must not call into this store, or they
/// stall or deadlock it.
pub struct FileStore {
    inner: Arc<Inner>,
    threads: Mutex<Threads>,
}

fn io_err(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let ctx = ctx.into();
    move |e| StoreError::io(ctx, e)
}

fn corrupt(root: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: root.display().to_string(),
        why: why.into(),
    }
}

fn key_str(k: &ObjectKey) -> String {
    format!("{}.{:x}/{}@{:x}", k.coll.pool, k.coll.pg, k.name, k.snap)
}

impl FileStore {
    /// Create an empty store in `path`, which must be new or an empty directory.
    pub fn mkfs(path: &Path) -> StoreResult<()> {
        std::fs::create_dir_all(path).map_err(io_err(format!("creating {}", path.display())))?;
        let mut entries =
            std::fs::read_dir(path).map_err(io_err(format!("listing {}", path.display())))?;
        if entries.next().is_some() {
            let why = if path.join(SUPERBLOCK).exists() {
                "a store already exists there"
            } else {
                "the directory is not empty; give mkfs a new or empty directory"
            };
            return Err(StoreError::io(
                format!("mkfs {}", path.display()),
                io::Error::new(io::ErrorKind::AlreadyExists, why),
            ));
        }
        let ctx = format!("mkfs {}", path.display());
        for i in 0..data::FANOUT {
            std::fs::create_dir_all(obj_dir(path, i)).map_err(io_err(&ctx))?;
        }
        fsync_dir(&path.join(data::OBJECTS_DIR)).map_err(io_err(&ctx))?;
        data::write_atomic(path, SNAPSHOT, &MetaTable::default().encode()).map_err(io_err(&ctx))?;
        journal::create_segment(path, 1).map_err(io_err(&ctx))?;
        // The superblock goes last: a directory without one is not a store.
        write_superblock(path)
    }

    /// Open the store in `path`: lock it, load the metadata snapshot, replay
    /// the journal, checkpoint, and start the syncer and checkpoint threads.
    pub fn open(path: &Path, cfg: StoreConfig) -> StoreResult<Arc<FileStore>> {
        let version = check_superblock(path)?;
        let lock = take_lock(path)?;
        let root_dir = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
        let mut meta = load_snapshot(path)?;
        recover(path, &mut meta)?;
        let next_seq = meta.seq + 1;
        // Files a lost journal tail made may still be there: no new id may
        // name one, or a record that trusts a file it finds at its target's
        // path (a Clone's replay) could take it for its own. The sweep below
        // removes them, but its unlinks may be lost too. The snapshot the
        // checkpoint writes carries the new ids on.
        let (max_plain, max_placed) = max_file_ids(path, &meta)?;
        meta.next_id = meta.next_id.max(max_plain + 1);
        let (writer, snapshot_bytes) = checkpoint_at_open(path, &root_dir, &meta)?;
        if version < FORMAT_VERSION {
            // With the journal replayed and empty, any build could open the
            // store now: this is where it becomes version 2. (Version 1
            // journals replay the same under version 2: their in-place
            // writes went only into files no journaled step wrote.)
            write_superblock(path)?;
            log::info!(
                "store {}: format upgraded to version {FORMAT_VERSION}",
                path.display()
            );
        }
        // Only now, with the replayed state in the snapshot, may files that no
        // object owns go: a crash during replay must find them again.
        sweep_objects(path, &meta)?;
        let colls = meta.colls.keys().copied().collect();
        let segment = writer.start();
        let undo = cfg.undo_unsynced.then(|| Mutex::new(UndoLog::default()));
        let inner = Arc::new(Inner {
            root: path.to_path_buf(),
            cfg,
            root_dir,
            lock: Mutex::new(Some(lock)),
            meta: RwLock::new(meta),
            shards: (0..SHARDS).map(|_| RwLock::new(())).collect(),
            apply_gate: Mutex::new(()),
            submit: Mutex::new(Submit {
                next_seq,
                colls,
                open: true,
            }),
            progress: Mutex::new(Progress {
                committed: next_seq - 1,
                applied: next_seq - 1,
                failed: None,
            }),
            progress_cv: Condvar::new(),
            durable: AtomicU64::new(next_seq - 1),
            sync_lock: Mutex::new(()),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
            journal: Mutex::new(writer),
            commits: Mutex::new(Commits::default()),
            commit_run: Mutex::new(()),
            sync_wake: Wakeup::default(),
            synced_end: Mutex::new((segment, 0)),
            ckpt_lock: Mutex::new(()),
            ckpt_wake: Wakeup::default(),
            next_placed: AtomicU64::new(max_placed + 1),
            doomed: Mutex::new(Vec::new()),
            replayed_files: Mutex::new(ReplayedFiles::default()),
            unsynced: Mutex::new(UnsyncedFiles::default()),
            undo,
            in_place_since_checkpoint: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(snapshot_bytes),
            fds: FdCache::new(),
            free: Mutex::new(FreeSpace::default()),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map_err(io_err("starting a store thread"))
        };
        let i = inner.clone();
        let syncer = spawn("store-jsync", Box::new(move || sync_loop(i)))?;
        let i = inner.clone();
        let ckpt = match spawn("store-ckpt", Box::new(move || ckpt_loop(i))) {
            Ok(t) => t,
            Err(e) => {
                inner.sync_wake.stop();
                let _ = syncer.join();
                return Err(e);
            }
        };
        Ok(Arc::new(FileStore {
            inner,
            threads: Mutex::new(Threads {
                syncer: Some(syncer),
                ckpt: Some(ckpt),
            }),
        }))
    }

    /// Checkpoint now: everything queued before the call is applied, its data
    /// synced, the metadata snapshot written and the journal trimmed.
    pub fn sync(&self) -> StoreResult<()> {
        self.inner.usable()?;
        self.wait_applied()?;
        self.inner.checkpoint()
    }

    /// Finish every queued transaction, checkpoint and release the lock.
    /// Every later call fails.
    pub fn close(&self) -> StoreResult<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Failed("store is closed".into()));
        }
        if !self.stop_threads() {
            return Err(StoreError::Failed(
                "close called from a store callback; the store shuts down without a checkpoint"
                    .into(),
            ));
        }
        let res = match self.inner.failed_reason() {
            Some(why) => Err(StoreError::Failed(why)),
            None => self.inner.checkpoint(),
        };
        // Only after a failed checkpoint: those records may still commit at
        // the next open, but nobody is left to hear it.
        self.inner
            .fail_commits(&StoreError::Failed("store is closed".into()));
        self.inner.lock.lock().take();
        res
    }

    /// Simulate a crash of the process, for tests: an apply in progress
    /// stops between steps, nothing more is synced or checkpointed, commit
    /// callbacks still waiting get `Err`, and the lock is released so the
    /// directory can be opened again. Written file contents stay (the page
    /// cache outlives a killed process), which is the hardest case for
    /// replay: it sees every effect of the transactions that were applied.
    pub fn crash(&self) {
        self.inner.crashed.store(true, Ordering::SeqCst);
        self.inner.closed.store(true, Ordering::SeqCst);
        if self.stop_threads() {
            self.inner.fail_commits(&self.inner.failed_err());
            self.inner.lock.lock().take();
        }
    }

    /// Simulate a power loss, for tests: [`FileStore::crash`], then the
    /// journal loses what was appended after its last sync (object files
    /// keep every applied byte, the worst case for replay).
    pub fn crash_losing_unsynced(&self) -> io::Result<()> {
        self.crash();
        let (start, len) = *self.inner.synced_end.lock();
        for (seg_start, path) in journal::list_segments(&self.inner.root)? {
            if seg_start == start {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(len)?;
            } else if seg_start > start {
                data::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Simulate a power loss that keeps the whole journal but none of the
    /// object files' unsynced bytes, for tests: [`FileStore::crash`], then
    /// every write to an object file since its last sync is taken back
    /// (needs [`StoreConfig::undo_unsynced`]). The worst case for records
    /// whose bytes went in place without a sync.
    pub fn crash_losing_unsynced_data(&self) -> io::Result<()> {
        self.crash();
        let Some(undo) = &self.inner.undo else {
            return Err(io::Error::other(
                "the store was opened without undo_unsynced",
            ));
        };
        undo.lock().take_back(&self.inner.root)
    }

    /// crc32c of the object's whole data (holes read as zeros).
    pub fn data_digest(&self, key: &ObjectKey) -> StoreResult<u32> {
        self.inner.usable()?;
        let _shard = self.inner.shards[shard_of(key)].read();
        let (id, size) = self.inner.id_size(key)?;
        let path = obj_path(&self.inner.root, id);
        let f = self
            .inner
            .fds
            .get(&self.inner.root, id, false)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let mut crc = 0;
        let mut buf = vec![0u8; (1 << 20).min(size as usize)];
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            match &f {
                Some(f) => data::read_at_zero_fill(f, &mut buf[..n], pos)
                    .map_err(io_err(format!("reading {}", path.display())))?,
                None => {
                    self.inner.check_root()?;
                    buf[..n].fill(0)
                }
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            pos += n as u64;
        }
        Ok(crc)
    }

    /// The file holding an object's data (absent while the object is all
    /// holes), for tools and tests that inspect the disk.
    pub fn object_file(&self, key: &ObjectKey) -> StoreResult<PathBuf> {
        self.inner.usable()?;
        let _shard = self.inner.shards[shard_of(key)].read();
        let (id, _) = self.inner.id_size(key)?;
        Ok(obj_path(&self.inner.root, id))
    }

    /// Sequence number of the last applied transaction (survives reopen).
    pub fn applied_seq(&self) -> u64 {
        self.inner.progress.lock().applied
    }

    /// Stop accepting transactions and stop the threads.
    ///
    /// Returns false if called on one of the store's own threads (from a
    /// callback): joining would wait for that very thread, directly or through
    /// the channel it feeds, so the threads finish on their own and the lock
    /// is released when the last of them drops the shared state.
    fn stop_threads(&self) -> bool {
        self.inner.submit.lock().open = false;
        self.inner.ckpt_wake.stop();
        self.inner.sync_wake.stop();
        self.inner.progress_cv.notify_all();
        let mut t = self.threads.lock();
        let me = std::thread::current().id();
        let handles: Vec<JoinHandle<()>> = [t.syncer.take(), t.ckpt.take()]
            .into_iter()
            .flatten()
            .collect();
        if handles.iter().any(|h| h.thread().id() == me) {
            return false;
        }
        for h in handles {
            if h.join().is_err() {
                log::error!("a store thread of {} panicked", self.inner.root.display());
            }
        }
        true
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        if !self.inner.closed.swap(true, Ordering::SeqCst) && self.stop_threads() {
            self.inner
                .fail_commits(&StoreError::Failed("store dropped unclosed".into()));
            self.inner.lock.lock().take();
        }
    }
}

fn write_superblock(path: &Path) -> StoreResult<()> {
    let ctx = format!("writing the superblock of {}", path.display());
    let sb = serde_json::to_vec_pretty(&Superblock {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
    })
    .map_err(|e| StoreError::io(&ctx, io::Error::other(e)))?;
    data::write_atomic(path, SUPERBLOCK, &sb).map_err(io_err(&ctx))
}

/// The store's format version (one this build opens).
fn check_superblock(path: &Path) -> StoreResult<u32> {
    let raw = match std::fs::read(path.join(SUPERBLOCK)) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(corrupt(
                path,
                "no superblock; this is not a store (create one with mkfs in an empty directory)",
            ));
        }
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
    };
    let sb: Superblock = serde_json::from_slice(&raw)
        .map_err(|e| corrupt(path, format!("unreadable superblock ({e})")))?;
    if sb.format != FORMAT_NAME {
        return Err(corrupt(
            path,
            format!("unknown store format {:?}", sb.format),
        ));
    }
    if !(1..=FORMAT_VERSION).contains(&sb.version) {
        return Err(corrupt(
            path,
            format!(
                "store format version {} but this build supports versions 1 to {FORMAT_VERSION}; use a matching rbdfs",
                sb.version
            ),
        ));
    }
    Ok(sb.version)
}

/// flock the store's lock file; the lock dies with the open file, so it is
/// released by close, crash or process exit.
fn take_lock(path: &Path) -> StoreResult<File> {
    let lp = path.join(LOCK);
    let f = data::open_rw(&lp).map_err(io_err(format!("opening {}", lp.display())))?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StoreError::io(format!("locking {}", lp.display()), e));
        }
        let mut owner = String::new();
        let _ = std::io::Read::read_to_string(&mut &f, &mut owner);
        let owner = owner.trim();
        let hint = if owner.is_empty() {
            "another process or handle has it open; close that first".to_string()
        } else {
            format!("process {owner} has it open (maybe this one); close it first")
        };
        return Err(StoreError::Locked {
            path: path.display().to_string(),
            hint,
        });
    }
    let pid = std::process::id().to_string();
    f.set_len(0)
        .and_then(|_| f.write_all_at(pid.as_bytes(), 0))
        .map_err(io_err(format!("writing {}", lp.display())))?;
    Ok(f)
}

fn load_snapshot(path: &Path) -> StoreResult<MetaTable> {
    let sp = path.join(SNAPSHOT);
    let raw = std::fs::read(&sp).map_err(io_err(format!("reading {}", sp.display())))?;
    MetaTable::decode(Bytes::from(raw)).map_err(|e| {
        corrupt(
            path,
            format!("metadata snapshot {} is unreadable: {e}", sp.display()),
        )
    })
}

/// Replay the journal onto `meta` and the object files, then drop files that
/// no object owns and trim files longer than their object.
fn recover(path: &Path, meta: &mut MetaTable) -> StoreResult<()> {
    let base = meta.seq;
    // First pass: where later records wrote in place (see shadow.rs). A
    // torn tail or a newer record ends it where it ends the second pass,
    // which reports them; a read error fails the open.
    let mut shadows = Shadows::default();
    let first = journal::replay(path, |seq, steps| {
        if seq > base {
            shadows.note(seq, &steps);
        }
        Ok(())
    });
    if let Err(ReplayError::Io(e)) = first {
        return Err(StoreError::io("reading the journal", e));
    }
    let mut touched = HashSet::new();
    let mut replayed = 0u64;
    let table = RwLock::new(std::mem::take(meta));
    let end = journal::replay(path, |seq, steps| {
        let cur = table.read().seq;
        if seq <= cur {
            return Ok(());
        }
        if seq != cur + 1 {
            return Err(corrupt(
                path,
                format!(
                    "journal resumes at seq {seq} but the snapshot ends at {cur}; records are missing"
                ),
            ));
        }
        let mut ctx = ApplyCtx {
            root: path,
            replay: Some(&mut touched),
            crashed: None,
            doomed: Vec::new(),
            fds: None,
            shadows: Some(&shadows),
            undo: None,
        };
        // Doomed files stay: the sweep after the open checkpoint takes them.
        apply_txn(&mut ctx, &table, seq, &steps)
            .map_err(|e| StoreError::io(format!("replaying journal seq {seq}"), e))?;
        replayed += 1;
        Ok(())
    });
    *meta = table.into_inner();
    match end {
        Ok(ReplayEnd::Clean) => {}
        Ok(ReplayEnd::Torn {
            segment,
            offset,
            why,
        }) => log::warn!(
            "journal {} is torn or corrupt at offset {offset} ({why}); replay ends at seq {}",
            segment.display(),
            meta.seq
        ),
        Err(ReplayError::Io(e)) => return Err(StoreError::io("reading the journal", e)),
        Err(ReplayError::Apply(e)) => return Err(e),
        Err(ReplayError::Damaged {
            segment,
            offset,
            why,
        }) => {
            return Err(corrupt(
                path,
                format!(
                    "journal {} is damaged at offset {offset} ({why}), and newer records follow it \
                     that replay cannot reach: the store is not opened rather than opened without \
                     them (its PGs are served from other current copies, or wait for it: rbdfs status)",
                    segment.display()
                ),
            ));
        }
        Err(ReplayError::NewerVersion {
            segment,
            offset,
            version,
        }) => {
            return Err(corrupt(
                path,
                format!(
                    "journal {} has a record of format version {version} at offset {offset}, newer than this build; use a matching rbdfs",
                    segment.display()
                ),
            ));
        }
    }
    if replayed > 0 {
        log::info!(
            "store {}: replayed journal seq {}..={}",
            path.display(),
            base + 1,
            meta.seq
        );
    }
    Ok(())
}

/// The largest plain id and the largest placed-write counter among the
/// data files in the store and the ids its objects own (0 where none).
fn max_file_ids(path: &Path, meta: &MetaTable) -> StoreResult<(u64, u64)> {
    let (mut plain, mut placed) = (0, 0);
    let mut note = |id: u64| {
        if id & PLACED_ID_BIT != 0 {
            placed = placed.max(id & !PLACED_ID_BIT);
        } else {
            plain = plain.max(id);
        }
    };
    for (id, _) in meta.ids() {
        note(id);
    }
    for i in 0..data::FANOUT {
        let dir = obj_dir(path, i);
        let ctx = || format!("scanning {}", dir.display());
        for ent in std::fs::read_dir(&dir).map_err(io_err(ctx()))? {
            let ent = ent.map_err(io_err(ctx()))?;
            if let Some(id) = ent.file_name().to_str().and_then(data::parse_name) {
                note(id);
            }
        }
    }
    Ok((plain, placed))
}

/// Remove files no object owns and trim files longer than their object.
fn sweep_objects(path: &Path, meta: &MetaTable) -> StoreResult<()> {
    let live: std::collections::HashMap<u64, u64> = meta.ids().collect();
    for i in 0..data::FANOUT {
        let dir = obj_dir(path, i);
        let ctx = || format!("scanning {}", dir.display());
        for ent in std::fs::read_dir(&dir).map_err(io_err(ctx()))? {
            let ent = ent.map_err(io_err(ctx()))?;
            let p = ent.path();
            let id = ent.file_name().to_str().and_then(data::parse_name);
            match id.and_then(|id| live.get(&id)) {
                Some(&size) => {
                    let len = ent.metadata().map_err(io_err(ctx()))?.len();
                    if len > size {
                        let f = data::open_rw(&p).map_err(io_err(ctx()))?;
                        f.set_len(size).map_err(io_err(ctx()))?;
                    }
                }
                None => data::remove_file(&p).map_err(io_err(ctx()))?,
            }
        }
    }
    Ok(())
}

/// After replay: make the replayed state durable, snapshot it, and start a
/// fresh journal. Old segments (maybe with a torn tail) are deleted before the
/// new one exists, so nothing is ever appended after a torn record.
/// Returns the journal and the snapshot's size.
fn checkpoint_at_open(
    path: &Path,
    root_dir: &File,
    meta: &MetaTable,
) -> StoreResult<(JournalWriter, u64)> {
    let ctx = format!("checkpointing {}", path.display());
    data::syncfs(root_dir).map_err(io_err(&ctx))?;
    let snapshot = meta.encode();
    data::write_atomic(path, SNAPSHOT, &snapshot).map_err(io_err(&ctx))?;
    for (_, seg) in journal::list_segments(path).map_err(io_err(&ctx))? {
        data::remove_file(&seg).map_err(io_err(&ctx))?;
    }
    fsync_dir(path).map_err(io_err(&ctx))?;
    let writer = JournalWriter::create(path, meta.seq + 1).map_err(io_err(&ctx))?;
    Ok((writer, snapshot.len() as u64))
}

impl Inner {
    /// Bring `[off, off + len)` of an object's file into the page cache by
    /// reading it, holding its shard only to find the file. The bytes are
    /// dropped: read without the shard, they may show half a transaction.
    /// (The file stays readable through its handle even if a checkpoint
    /// deletes it meanwhile, and ids are never reused.)
    fn prefetch(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<()> {
        let (file, size, id) = {
            let _shard = self.shards[shard_of(key)].read();
            let (id, size) = self.id_size(key)?;
            let f = self
                .fds
                .get(&self.root, id, false)
                .map_err(|e| self.obj_err("opening", id, e))?;
            (f, size, id)
        };
        let end = off.saturating_add(len).min(size);
        if let Some(f) = file
            && off < end
        {
            let mut scratch = vec![0u8; (end - off) as usize];
            data::read_at_zero_fill(&f, &mut scratch, off)
                .map_err(|e| self.obj_err("reading", id, e))?;
        }
        Ok(())
    }

    /// `what` failed on data file `id`. The path is formatted only here:
    /// formatting it per read showed up in profiles of small reads.
    fn obj_err(&self, what: &str, id: u64, e: io::Error) -> StoreError {
        StoreError::io(format!("{what} {}", obj_path(&self.root, id).display()), e)
    }

    /// `[off, off + len)` of an object; with `cached_only`, `None` where
    /// the bytes are not all in the page cache.
    fn read(
        &self,
        key: &ObjectKey,
        off: u64,
        len: u64,
        cached_only: bool,
    ) -> StoreResult<Option<Bytes>> {
        self.usable()?;
        // Holding the shard across the pread keeps a transaction being
        // applied to this object from showing half its effects.
        let _shard = self.shards[shard_of(key)].read();
        let (id, size) = self.id_size(key)?;
        let end = off.saturating_add(len).min(size);
        if off >= end {
            return Ok(Some(Bytes::new()));
        }
        let mut buf = vec![0u8; (end - off) as usize];
        let reading = |e| self.obj_err("reading", id, e);
        match self
            .fds
            .get(&self.root, id, false)
            .map_err(|e| self.obj_err("opening", id, e))?
        {
            Some(f) if cached_only => {
                if !data::read_at_zero_fill_cached(&f, &mut buf, off).map_err(reading)? {
                    return Ok(None);
                }
            }
            Some(f) => data::read_at_zero_fill(&f, &mut buf, off).map_err(reading)?,
            // A missing file is an object of holes, unless the whole store
            // vanished underneath us: then zeros would be a lie.
            None => self.check_root()?,
        }
        Ok(Some(Bytes::from(buf)))
    }

    fn failed_reason(&self) -> Option<String> {
        self.progress.lock().failed.clone()
    }

    /// Run `f` on an object's metadata, holding its shard so that no
    /// transaction is half applied to it.
    fn with_obj<T>(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&super::meta::ObjMeta) -> T,
    ) -> StoreResult<T> {
        let _shard = self.shards[shard_of(key)].read();
        let meta = self.meta.read();
        meta.get(key)
            .map(f)
            .ok_or_else(|| StoreError::NotFound(key_str(key)))
    }

    /// `(id, size)` of an object; the caller holds its shard.
    fn id_size(&self, key: &ObjectKey) -> StoreResult<(u64, u64)> {
        let meta = self.meta.read();
        meta.get(key)
            .map(|o| (o.id, o.size))
            .ok_or_else(|| StoreError::NotFound(key_str(key)))
    }

    fn usable(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Failed("store is closed".into()));
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed(self.failed_reason().unwrap_or_default()));
        }
        Ok(())
    }

    /// The store directory is still there (its superblock is); if not, the
    /// store fails: nothing it reads or writes from now on can be trusted.
    fn check_root(&self) -> StoreResult<()> {
        let sb = self.root.join(SUPERBLOCK);
        match std::fs::metadata(&sb) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.fail(format!("{} is gone: {e}", sb.display()));
                Err(self.failed_err())
            }
        }
    }

    fn fail(&self, why: String) {
        log::error!("store {} failed: {why}", self.root.display());
        let mut p = self.progress.lock();
        if p.failed.is_none() {
            p.failed = Some(why);
        }
        self.failed.store(true, Ordering::Release);
        self.progress_cv.notify_all();
        drop(p);
        self.sync_wake.request();
        self.fail_commits(&self.failed_err());
    }

    /// Fail the store for a sync (or a write of its) that failed; the
    /// error to return.
    fn fail_io(&self, ctx: &str, e: io::Error) -> StoreError {
        self.fail(format!("{ctx}: {e}"));
        StoreError::io(ctx, e)
    }

    /// Err once the store has failed (or crashed).
    fn not_failed(&self) -> StoreResult<()> {
        if self.failed.load(Ordering::Acquire) || self.crashed.load(Ordering::Acquire) {
            return Err(self.failed_err());
        }
        Ok(())
    }

    fn failed_err(&self) -> StoreError {
        if self.crashed.load(Ordering::Acquire) {
            return StoreError::Failed("store crashed".into());
        }
        StoreError::Failed(
            self.failed_reason()
                .unwrap_or_else(|| "store is closed".into()),
        )
    }

    /// Block until `seq` is applied; fails if the store fails or crashes.
    fn wait_applied_seq(&self, seq: u64) -> StoreResult<()> {
        let mut p = self.progress.lock();
        loop {
            if p.applied >= seq {
                return Ok(());
            }
            if p.failed.is_some() || self.crashed.load(Ordering::Acquire) {
                drop(p);
                return Err(self.failed_err());
            }
            self.progress_cv.wait(&mut p);
        }
    }

    fn wait_committed_seq(&self, seq: u64) -> StoreResult<()> {
        let mut p = self.progress.lock();
        loop {
            if p.committed >= seq {
                return Ok(());
            }
            if p.failed.is_some() || self.crashed.load(Ordering::Acquire) {
                drop(p);
                return Err(self.failed_err());
            }
            self.progress_cv.wait(&mut p);
        }
    }

    /// Bytes a transaction may add to the file system (journal record, data,
    /// clone copies); `None` for transactions that only remove or shrink,
    /// which always pass so that a full store can still be cleaned up.
    fn space_need(&self, txn: &Transaction, rec_len: u64) -> Option<u64> {
        let mut need = rec_len;
        let mut grows = false;
        for op in &txn.ops {
            match op {
                TxOp::Write { data, .. } => {
                    grows = true;
                    need += data.len() as u64;
                }
                TxOp::Clone { from, .. } => {
                    grows = true;
                    need += self.meta.read().get(from).map_or(0, |o| o.size);
                }
                TxOp::CreateCollection(_)
                | TxOp::Touch(_)
                | TxOp::SetAttrs { .. }
                | TxOp::OmapSet { .. }
                | TxOp::CollMetaSet { .. } => grows = true,
                _ => {}
            }
        }
        grows.then_some(need)
    }

    /// Let `need` more bytes through, or refuse them when fewer than
    /// `min_free_bytes` (less for full-try and replica transactions, see
    /// [`Transaction`]) would stay free. The free figure is read, compared
    /// and counted down under one lock, so concurrent writers cannot both
    /// take the last space. A refusal against a standing figure is checked
    /// again against a fresh one: the count-down also counts bytes that take
    /// no new blocks (overwrites, a recycled journal segment).
    fn claim_space(&self, need: u64, txn: &Transaction) -> StoreResult<()> {
        // A full-try transaction may go down to an eighth of the reserve,
        // but not below room for two metadata snapshots, which a checkpoint
        // writes before it deletes anything. A replica's copy of a
        // transaction needs half what its primary's did, so that on a shared
        // file system the primary refuses first.
        let min = self.cfg.min_free_bytes;
        let snapshots = self
            .snapshot_bytes
            .load(Ordering::Relaxed)
            .saturating_mul(2);
        let reserve = if txn.full_try {
            (min / 8).max(snapshots.min(min))
        } else {
            min
        };
        let reserve = if txn.replica { reserve / 2 } else { reserve };
        let want = need.saturating_add(reserve);
        let refuse = |avail| {
            // A checkpoint deletes the files removals dropped: a later try
            // may find the space.
            if !self.doomed.lock().is_empty() {
                self.request_checkpoint();
            }
            Err(StoreError::NoSpace {
                path: self.root.display().to_string(),
                need: want,
                avail,
            })
        };
        if let Some(avail) = self.cfg.fake_available_bytes {
            return if avail < want { refuse(avail) } else { Ok(()) };
        }
        let measure = || data::statvfs(&self.root).map(|(_, a)| a);
        let failed = |e| StoreError::io(format!("statfs {}", self.root.display()), e);
        let mut free = self.free.lock();
        let now = Instant::now();
        // Into the reserve, only against a fresh figure: the stores that
        // share a file system each count only their own claims.
        if txn.full_try {
            free.measured = None;
        }
        let mut avail = free.get(now, measure).map_err(failed)?;
        // Not measured just now: measure.
        if avail < want && free.measured != Some(now) {
            free.measured = None;
            avail = free.get(now, measure).map_err(failed)?;
        }
        if avail < want {
            return refuse(avail);
        }
        free.take(need);
        Ok(())
    }

    /// Whether the free space last measured is under twice the reserve.
    fn short_of_space(&self) -> bool {
        let low = self.cfg.min_free_bytes.saturating_mul(2);
        if let Some(avail) = self.cfg.fake_available_bytes {
            return avail < low;
        }
        let free = self.free.lock();
        free.measured.is_some() && free.avail < low
    }

    /// Checkpoint. Crash safety, step by step:
    /// 1. rotate: records below `boundary` are all in older segments;
    /// 2. wait until they are applied, then copy the table at its seq S >= boundary-1;
    /// 3. syncfs: every data-file change of transactions <= S is durable (and
    ///    maybe some later ones, which replay re-applies; see `apply_txn`);
    /// 4. write the snapshot (temp, fsync, rename, fsync dir): a crash before
    ///    the rename reopens from the old snapshot with all segments intact; after
    ///    it, from S, skipping the records <= S still on disk;
    /// 5. delete the segments holding only records <= S (step 6 below),
    ///    keeping the newest as the journal's spare.
    fn checkpoint(&self) -> StoreResult<()> {
        let _g = self.ckpt_lock.lock();
        let ctx = format!("checkpointing {}", self.root.display());
        let boundary = {
            let _sync = self.sync_lock.lock();
            self.not_failed()?;
            let boundary = {
                let mut j = self.journal.lock();
                // Failed under the sync lock: see `sync_lock`.
                let b = j.rotate().map_err(|e| self.fail_io(&ctx, e))?;
                self.in_place_since_checkpoint.store(0, Ordering::Relaxed);
                // The closed segments are synced (rotate syncs the one it closes).
                *self.synced_end.lock() = (j.start(), j.bytes());
                b
            };
            // The records below the boundary are durable; the bytes of those
            // made in place, once these are synced (the syncfs below is later).
            self.sync_in_place_writes()?;
            self.complete_commits(boundary - 1);
            boundary
        };
        self.wait_applied_seq(boundary - 1)?;
        let (snap, seq, doomed) = {
            // The gate keeps a transaction from being half applied in the copy,
            // and the doomed list in step with it.
            let _gate = self.apply_gate.lock();
            let m = self.meta.read();
            let doomed: Vec<u64> = self.doomed.lock().iter().map(|(_, id)| *id).collect();
            (m.encode(), m.seq, doomed)
        };
        let crashed = || {
            if self.crashed.load(Ordering::Acquire) {
                Err(StoreError::Failed("store crashed".into()))
            } else {
                Ok(())
            }
        };
        crashed()?;
        {
            let _sync = self.sync_lock.lock();
            self.not_failed()?;
            let in_place_stamp = self.unsynced.lock().stamp();
            let undo_stamp = self.undo.as_ref().map(|u| u.lock().stamp());
            data::syncfs(&self.root_dir).map_err(|e| self.fail_io(&ctx, e))?;
            self.unsynced.lock().synced_upto(in_place_stamp);
            if let (Some(u), Some(stamp)) = (&self.undo, undo_stamp) {
                u.lock().all_synced(stamp);
            }
        }
        crashed()?;
        // The copy may hold part of a transaction whose apply failed.
        self.not_failed()?;
        data::write_atomic(&self.root, SNAPSHOT, &snap).map_err(io_err(&ctx))?;
        self.snapshot_bytes
            .store(snap.len() as u64, Ordering::Relaxed);
        crashed()?;
        // 6. the snapshot no longer names the doomed files and no record
        //    replay could still apply (seq > S) dropped them, so they go. A
        //    crash part way leaves orphans, which open sweeps.
        self.doomed.lock().retain(|(s, _)| *s > seq);
        // Replay starts past `seq` from now on.
        self.replayed_files.lock().checkpointed(seq);
        for id in doomed {
            self.fds.forget(id);
            data::remove_file(&obj_path(&self.root, id)).map_err(io_err(&ctx))?;
        }
        self.journal.lock().trim(seq).map_err(io_err(&ctx))
    }

    fn request_checkpoint(&self) {
        self.ckpt_wake.request();
    }
}

/// In-place records that bring a checkpoint. They barely grow the journal,
/// so its size alone would let them pile up, and replay compares each
/// journaled step with the later in-place writes of its object.
const IN_PLACE_PER_CHECKPOINT: u64 = 4096;

/// Largest object size: file offsets are signed 64-bit.
const MAX_OBJECT_SIZE: u64 = i64::MAX as u64;

/// Refuse ranges a data file cannot hold, before anything is queued.
fn check_ranges(txn: &Transaction) -> StoreResult<()> {
    for op in &txn.ops {
        let (key, end) = match op {
            TxOp::Write { key, off, data } => (key, off.checked_add(data.len() as u64)),
            TxOp::Truncate { key, size } => (key, Some(*size)),
            _ => continue,
        };
        if end.is_none_or(|e| e > MAX_OBJECT_SIZE) {
            return Err(StoreError::io(
                "queueing a transaction",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a write or truncate of {} reaches past the largest object size {MAX_OBJECT_SIZE}",
                        key_str(key)
                    ),
                ),
            ));
        }
    }
    Ok(())
}

/// Check that every step names an existing collection, following the
/// collection creates and removes of earlier steps and queued transactions.
/// Returns the new set if the transaction changes it.
fn check_collections(
    colls: &BTreeSet<CollId>,
    txn: &Transaction,
) -> StoreResult<Option<BTreeSet<CollId>>> {
    let mut changed: Option<BTreeSet<CollId>> = None;
    for op in &txn.ops {
        let c = match op {
            TxOp::CreateCollection(c) => {
                changed.get_or_insert_with(|| colls.clone()).insert(*c);
                continue;
            }
            TxOp::RemoveCollection(c) => {
                changed.get_or_insert_with(|| colls.clone()).remove(c);
                continue;
            }
            TxOp::Touch(k)
            | TxOp::Remove(k)
            | TxOp::OmapClear(k)
            | TxOp::Write { key: k, .. }
            | TxOp::Zero { key: k, .. }
            | TxOp::Truncate { key: k, .. }
            | TxOp::SetAttrs { key: k, .. }
            | TxOp::RmAttr { key: k, .. }
            | TxOp::OmapSet { key: k, .. }
            | TxOp::OmapRmKeys { key: k, .. } => k.coll,
            TxOp::Clone { to, .. } => to.coll,
            TxOp::CollMetaSet { coll, .. } | TxOp::CollMetaRm { coll, .. } => *coll,
        };
        if !changed.as_ref().unwrap_or(colls).contains(&c) {
            return Err(StoreError::NoCollection(c));
        }
    }
    Ok(changed)
}

/// Page-cache granule the syncer drops journal pages in (the largest common
/// page size, so no partly written page is ever dropped).
const JOURNAL_DROP_PAGE: u64 = 64 << 10;

/// Journal syncer: commits everything appended so far when asked, or every
/// `commit_interval` while something is uncommitted. On stop it leaves the
/// rest to `close` (whose checkpoint commits it) or to a crash (which loses
/// nothing a killed process would).
fn sync_loop(inner: Arc<Inner>) {
    while inner.sync_wake.wait(Some(inner.cfg.commit_interval)) {
        if inner.crashed.load(Ordering::Acquire) || inner.failed.load(Ordering::Acquire) {
            continue;
        }
        if let Err(e) = inner.commit_written() {
            log::debug!("store {}: commit: {e}", inner.root.display());
        }
    }
}

impl Inner {
    /// Ask the syncer to commit what is appended now.
    fn request_commit(&self) {
        self.sync_wake.request();
    }

    /// Make every record appended so far durable with one `fdatasync`, then
    /// run their commit callbacks. A failed sync fails the store.
    fn commit_written(&self) -> StoreResult<()> {
        let _sync = self.sync_lock.lock();
        self.not_failed()?;
        let (file, upto, start, end) = {
            let j = self.journal.lock();
            (j.file(), j.last_seq(), j.start(), j.bytes())
        };
        if upto <= self.progress.lock().committed {
            // Nothing to sync, but a waiter may have been queued while a
            // checkpoint was committing the same records: run it.
            self.complete_commits(upto);
            return Ok(());
        }
        // Read `upto` first: the bytes of an in-place write are in the set
        // before its record is in the journal.
        self.sync_in_place_writes()?;
        #[cfg(test)]
        let synced = if self.fail_next_sync.swap(false, Ordering::AcqRel) {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            file.sync_data()
        };
        #[cfg(not(test))]
        let synced = file.sync_data();
        if let Err(e) = synced {
            self.fail(format!("journal sync failed: {e}"));
            return Err(self.failed_err());
        }
        // The journal is read only by replay: drop its now clean pages so
        // they do not crowd out object data in the page cache. Only whole
        // pages below the synced end: the partly filled last page is where
        // the next append goes, and dropping it would make that append read
        // the block back from disk first.
        let whole = (end & !(JOURNAL_DROP_PAGE - 1)) as libc::off_t;
        if whole > 0 {
            // SAFETY: posix_fadvise on a valid fd; advice only.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, whole, libc::POSIX_FADV_DONTNEED) };
        }
        {
            let mut s = self.synced_end.lock();
            if start > s.0 || (start == s.0 && end > s.1) {
                *s = (start, end);
            }
        }
        self.complete_commits(upto);
        Ok(())
    }

    /// Sync the files written in place since their last sync (see
    /// [`UnsyncedFiles`]), one `fdatasync` each, or one `syncfs` when there
    /// are many. A failure fails the store, as a failed journal sync does.
    fn sync_in_place_writes(&self) -> StoreResult<()> {
        let (files, stamp) = {
            let u = self.unsynced.lock();
            if u.is_empty() {
                return Ok(());
            }
            u.to_sync()
        };
        let undo_stamp = self.undo.as_ref().map(|u| u.lock().stamp());
        let res = if files.len() > SYNCFS_FILES {
            data::syncfs(&self.root_dir)
        } else {
            files.iter().try_for_each(|(_, f)| f.sync_data())
        };
        if let Err(e) = res {
            self.fail(format!("syncing in-place writes failed: {e}"));
            return Err(self.failed_err());
        }
        self.unsynced.lock().synced_upto(stamp);
        if let (Some(u), Some(undo_stamp)) = (&self.undo, undo_stamp) {
            let mut u = u.lock();
            for (id, _) in &files {
                u.synced(*id, undo_stamp);
            }
        }
        Ok(())
    }

    /// Records up to `upto` are durable: note it and run their commit
    /// callbacks, in seq order.
    fn complete_commits(&self, upto: u64) {
        let _run = self.commit_run.lock();
        // A store that failed answers its waiters Err (`fail_commits`).
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        self.durable.fetch_max(upto, Ordering::AcqRel);
        let ready: Vec<Callback> = {
            let mut c = self.commits.lock();
            let mut v = Vec::new();
            while c.waiting.front().is_some_and(|(seq, _)| *seq <= upto) {
                v.extend(c.waiting.pop_front().map(|(_, cb)| cb));
            }
            v
        };
        // Callbacks first: whoever waits for the seq (wait_committed) may
        // count on them having run.
        for cb in ready {
            super::run_callback(cb, Ok(()));
        }
        let mut p = self.progress.lock();
        if upto > p.committed {
            p.committed = upto;
            self.progress_cv.notify_all();
        }
    }

    /// Commit callbacks still waiting get `err` (the store failed, crashed
    /// or closed before their records were known durable).
    fn fail_commits(&self, err: &StoreError) {
        let _run = self.commit_run.lock();
        let all = std::mem::take(&mut self.commits.lock().waiting);
        for (_, cb) in all {
            super::run_callback(cb, Err(err.clone()));
        }
    }
}

fn ckpt_loop(inner: Arc<Inner>) {
    while inner.ckpt_wake.wait(None) {
        if let Err(e) = inner.checkpoint()
            && !inner.crashed.load(Ordering::Acquire)
            && !inner.failed.load(Ordering::Acquire)
        {
            inner.fail(format!("checkpoint failed: {e}"));
        }
    }
}

struct ApplyCtx<'a> {
    root: &'a Path,
    /// During replay: ids whose file has been reconciled with the table.
    replay: Option<&'a mut HashSet<u64>>,
    /// Crash simulation: stop between steps when set.
    crashed: Option<&'a AtomicBool>,
    /// Files of objects the steps dropped; deleted after a checkpoint.
    doomed: Vec<u64>,
    /// Open files (not during replay, which touches each file only once).
    fds: Option<&'a FdCache>,
    /// During replay: the bytes later records overwrote in place, which
    /// journaled steps must not write over.
    shadows: Option<&'a Shadows>,
    /// Tests: what the steps' writes replace (`StoreConfig::undo_unsynced`).
    undo: Option<&'a Mutex<UndoLog>>,
}

impl ApplyCtx<'_> {
    /// Open (creating) object `id`'s data file, whose object is `size` bytes.
    ///
    /// Why replay converges: after a crash a data file holds any subset of
    /// the effects of transactions after the checkpoint. After a process
    /// kill every one of those is in the journal (a record is written before
    /// its steps are applied). After a power loss the journal may have lost
    /// its unsynced tail; what those lost transactions can have left is only
    /// in-place bytes of `Write`/`Zero` steps (the tolerated loss), growth
    /// past an object's size (cut below and by the open's sweep) and new
    /// files no record names (swept): their other steps commit first. Write,
    /// Zero (clamped to the table's size), Truncate and Remove set bytes to a
    /// value that does not depend on the file's contents, so re-applying all
    /// of them in order leaves each byte as its last setter left it; where
    /// the last setter is a later in-place write, whose bytes are already in
    /// the file, replay skips the earlier steps' bytes (`shadow.rs`). Clone
    /// reads the file; see `clone_data`.
    /// Place's bytes `[0, len)` are not in the journal but in its own file,
    /// durable before the record and touched since only by later steps (its
    /// id is new), which replay re-applies; its tail copy reads the old
    /// file, which no step after the Place touches and no apply deletes, so
    /// after re-applying every earlier step it is as the Place first saw it.
    /// See `place`.
    ///
    /// Defence in depth: the first time replay touches an id, bytes past the
    /// object's size at that point are cut, so a grow never exposes them.
    fn file(&mut self, id: u64, size: u64) -> io::Result<Arc<File>> {
        let f = match self.fds {
            Some(c) => c
                .get(self.root, id, true)?
                .ok_or_else(|| io::Error::other("data file vanished while being created"))?,
            None => Arc::new(data::open_rw(&obj_path(self.root, id))?),
        };
        if let Some(touched) = self.replay.as_deref_mut()
            && touched.insert(id)
            && f.metadata()?.len() > size
        {
            f.set_len(size)?;
        }
        Ok(f)
    }

    /// Switch `key` to placed file `id`, whose `[0, len)` is durable: the
    /// object becomes those bytes followed by its old bytes past `len`
    /// (unless `!keep_tail`: the caller knows the next step cuts the object
    /// to at most `len`), and its old file is doomed.
    ///
    /// Replay: the file must exist (it was durable before its record could be
    /// written, and is deleted only by a checkpoint covering a later step that
    /// dropped it, after which this record is never replayed). Bytes past
    /// `len` it may hold from later steps are cut and rebuilt from the old
    /// file; later steps are re-applied after. A transaction that failed to
    /// queue or never committed leaves its file unnamed, and open sweeps it.
    fn place(
        &mut self,
        meta: &RwLock<MetaTable>,
        key: &ObjectKey,
        len: u64,
        id: u64,
        keep_tail: bool,
    ) -> io::Result<()> {
        let path = obj_path(self.root, id);
        let Some(f) = data::open_rw_existing(&path)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "data file {} of a committed write is missing; the store was damaged outside rbdfs",
                    path.display()
                ),
            ));
        };
        let (old_id, old_size) = {
            let mut m = meta.write();
            let Some((o, _)) = m.get_or_create(key) else {
                missing_coll(key.coll);
                self.doomed.push(id);
                return Ok(());
            };
            let old = (o.id, if keep_tail { o.size } else { 0 });
            o.id = id;
            m.set_size(key, old.1.max(len));
            old
        };
        if let Some(touched) = self.replay.as_deref_mut() {
            touched.insert(id);
            if f.metadata()?.len() > len {
                f.set_len(len)?;
            }
        }
        if old_size > len {
            if let Some(old) = data::open_ro(&obj_path(self.root, old_id))? {
                data::copy_sparse_range(&old, &f, len, old_size)?;
            }
            f.set_len(old_size)?;
        }
        self.doomed.push(old_id);
        Ok(())
    }

    /// Copy `[0, size)` of object `src`'s data into a new file for `dst`.
    ///
    /// Replay-safety invariant: the clone's data file is complete and durable
    /// (data fdatasync'd, renamed into place, directory fsync'd) before any
    /// later step can modify the source. So if replay finds the clone's file,
    /// the copy finished while the source was as the journal says, and the
    /// source may since hold later writes: it must not be copied again. Ids
    /// are never reused, so the file cannot belong to another object. If the
    /// file is missing, either the copy never finished (so no later step
    /// touched the source) or a later step removed the clone (so its content
    /// is never observed).
    fn clone_data(&mut self, src: u64, size: u64, dst: u64) -> io::Result<()> {
        let dst_path = obj_path(self.root, dst);
        if self.replay.is_some() && dst_path.exists() {
            self.file(dst, size)?;
            return Ok(());
        }
        let tmp = tmp_path(self.root, dst);
        data::remove_file(&tmp)?;
        let out = data::open_rw(&tmp)?;
        match data::open_ro(&obj_path(self.root, src))? {
            Some(s) => data::copy_sparse(&s, &out, size)?,
            None => out.set_len(size)?,
        }
        out.sync_data()?;
        std::fs::rename(&tmp, &dst_path)?;
        fsync_dir(&obj_dir(self.root, dst))?;
        if let Some(t) = self.replay.as_deref_mut() {
            t.insert(dst);
        }
        Ok(())
    }
}

/// Apply one transaction's steps in order to `meta` and the object files
/// (files the steps drop go to `ctx.doomed`, never deleted here).
/// Returns `Ok(false)` if a simulated crash stopped it part way.
///
/// The caller holds the write locks of every object shard the transaction
/// touches (readers of those objects wait) and the apply gate (checkpoints
/// wait); each step takes the table's write lock only for its metadata
/// change, so readers of other objects are not held up by file I/O.
///
/// Steps never fail on logical grounds (the transaction is already durable):
/// steps on an object create it, except `Remove`; a clone from a missing
/// object removes the target; steps on a missing collection are skipped (the
/// queue refuses them up front).
fn apply_txn(
    ctx: &mut ApplyCtx,
    meta: &RwLock<MetaTable>,
    seq: u64,
    steps: &[Step],
) -> io::Result<bool> {
    for (i, step) in steps.iter().enumerate() {
        if ctx.crashed.is_some_and(|c| c.load(Ordering::Acquire)) {
            return Ok(false);
        }
        match step {
            Step::Op(op) => apply_op(ctx, meta, seq, op)?,
            Step::Place { key, len, id } => {
                // A shrinking write_full is Write{0} then Truncate to its
                // length: the old tail would be copied only to be cut.
                let cut = matches!(steps.get(i + 1),
                    Some(Step::Op(TxOp::Truncate { key: k, size })) if k == key && size <= len);
                ctx.place(meta, key, *len, *id, !cut)?
            }
            // Written and synced before the record was.
            Step::InPlace { .. } => {}
        }
    }
    meta.write().seq = seq;
    Ok(true)
}

fn missing_coll(c: CollId) {
    log::warn!("transaction step on missing collection {c:?} skipped");
}

/// `(id, size)` of the object, created if absent; `None` if its collection
/// is missing.
fn id_size(meta: &mut MetaTable, k: &ObjectKey) -> Option<(u64, u64)> {
    match meta.get_or_create(k) {
        Some((o, _)) => Some((o.id, o.size)),
        None => {
            missing_coll(k.coll);
            None
        }
    }
}

/// Run `f` on the object (created if absent) under the table's write lock.
fn with_obj(meta: &RwLock<MetaTable>, k: &ObjectKey, f: impl FnOnce(&mut super::meta::ObjMeta)) {
    match meta.write().get_or_create(k) {
        Some((o, _)) => f(o),
        None => missing_coll(k.coll),
    }
}

/// The pieces of `[off, off + len)` of `key` record `seq` sets: all of it,
/// except during replay where later records overwrote some in place.
fn unshadowed(ctx: &ApplyCtx, key: &ObjectKey, seq: u64, off: u64, len: u64) -> Vec<(u64, u64)> {
    match ctx.shadows {
        Some(s) => shadow::uncovered(off, len, &s.later(key, seq)),
        None => vec![(off, len)],
    }
}

fn apply_op(ctx: &mut ApplyCtx, meta: &RwLock<MetaTable>, seq: u64, op: &TxOp) -> io::Result<()> {
    match op {
        TxOp::CreateCollection(c) => {
            meta.write().colls.entry(*c).or_default();
        }
        TxOp::RemoveCollection(c) => {
            let ids: Vec<u64> = {
                let mut m = meta.write();
                match m.colls.remove(c) {
                    Some(cm) => {
                        let objs: Vec<_> = cm.objects.values().flat_map(|s| s.values()).collect();
                        m.used -= objs.iter().map(|o| o.size).sum::<u64>();
                        objs.iter().map(|o| o.id).collect()
                    }
                    None => Vec::new(),
                }
            };
            ctx.doomed.extend(ids);
        }
        TxOp::Touch(k) => {
            id_size(&mut meta.write(), k);
        }
        TxOp::Write { key, off, data } => {
            let end = off + data.len() as u64;
            let Some((id, size)) = ({
                let mut m = meta.write();
                let r = id_size(&mut m, key);
                if r.is_some_and(|(_, size)| end > size) {
                    m.set_size(key, end);
                }
                r
            }) else {
                return Ok(());
            };
            let f = ctx.file(id, size)?;
            if data.is_empty() {
                if end > size {
                    f.set_len(end)?;
                }
            } else {
                for (at, n) in unshadowed(ctx, key, seq, *off, data.len() as u64) {
                    let from = (at - off) as usize;
                    undoable(ctx.undo, &f, id, at, n, || {
                        data::write_in_pieces(&f, &data[from..from + n as usize], at)
                    })?;
                }
            }
        }
        TxOp::Zero { key, off, len } => {
            let Some((id, size)) = id_size(&mut meta.write(), key) else {
                return Ok(());
            };
            let end = off.saturating_add(*len).min(size);
            if *off < end {
                let f = ctx.file(id, size)?;
                for (at, n) in unshadowed(ctx, key, seq, *off, end - off) {
                    undoable(ctx.undo, &f, id, at, n, || data::zero_range(&f, at, n))?;
                }
            }
        }
        TxOp::Truncate { key, size: new } => {
            let Some((id, size)) = ({
                let mut m = meta.write();
                let r = id_size(&mut m, key);
                if r.is_some() {
                    m.set_size(key, *new);
                }
                r
            }) else {
                return Ok(());
            };
            ctx.file(id, size)?.set_len(*new)?;
        }
        TxOp::Remove(k) => {
            let old = meta.write().remove(k);
            ctx.doomed.extend(old.map(|o| o.id));
        }
        TxOp::Clone { from, to } => {
            if from == to {
                return Ok(());
            }
            let (old, copy) = {
                let mut m = meta.write();
                let src = m
                    .get(from)
                    .map(|o| (o.id, o.size, o.attrs.clone(), o.omap.clone()));
                let old = m.remove(to);
                let mut copy = None;
                if let Some((sid, ssize, attrs, omap)) = src {
                    if let Some((o, _)) = m.get_or_create(to) {
                        o.attrs = attrs;
                        o.omap = omap;
                        copy = Some((sid, ssize, o.id));
                        m.set_size(to, ssize);
                    } else {
                        missing_coll(to.coll);
                    }
                }
                (old, copy)
            };
            ctx.doomed.extend(old.map(|o| o.id));
            if let Some((sid, ssize, tid)) = copy {
                ctx.clone_data(sid, ssize, tid)?;
            }
        }
        TxOp::SetAttrs { key, attrs } => with_obj(meta, key, |o| {
            o.attrs
                .extend(attrs.iter().map(|(k, v)| (k.clone(), v.clone())))
        }),
        TxOp::RmAttr { key, name } => with_obj(meta, key, |o| {
            o.attrs.remove(name);
        }),
        TxOp::OmapSet { key, entries } => with_obj(meta, key, |o| {
            o.omap
                .extend(entries.iter().map(|(k, v)| (k.clone(), v.clone())))
        }),
        TxOp::OmapRmKeys { key, keys } => with_obj(meta, key, |o| {
            for k in keys {
                o.omap.remove(k);
            }
        }),
        TxOp::OmapClear(key) => with_obj(meta, key, |o| o.omap.clear()),
        TxOp::CollMetaSet { coll, entries } => match meta.write().colls.get_mut(coll) {
            Some(c) => c
                .meta
                .extend(entries.iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => missing_coll(*coll),
        },
        TxOp::CollMetaRm { coll, keys } => match meta.write().colls.get_mut(coll) {
            Some(c) => {
                for k in keys {
                    c.meta.remove(k);
                }
            }
            None => missing_coll(*coll),
        },
    }
    Ok(())
}

/// Object shards: a reader of an object holds its shard's read lock for the
/// whole read, the apply thread holds the write locks of every shard a
/// transaction touches for the whole transaction, so no read sees part of a
/// transaction's effect on an object, and reads of other objects go on.
const SHARDS: usize = 64;

fn shard_of(k: &ObjectKey) -> usize {
    let mut h = crc32c::crc32c(k.name.as_bytes());
    h = crc32c::crc32c_append(h, &k.coll.pool.to_le_bytes());
    h = crc32c::crc32c_append(h, &k.coll.pg.to_le_bytes());
    h = crc32c::crc32c_append(h, &k.snap.to_le_bytes());
    h as usize % SHARDS
}

/// The shards a transaction touches, sorted (the lock order).
fn txn_shards(txn: &Transaction) -> Vec<usize> {
    let mut v = Vec::new();
    for op in &txn.ops {
        match op {
            TxOp::RemoveCollection(_) => return (0..SHARDS).collect(),
            TxOp::CreateCollection(_) | TxOp::CollMetaSet { .. } | TxOp::CollMetaRm { .. } => {}
            TxOp::Clone { from, to } => {
                v.push(shard_of(from));
                v.push(shard_of(to));
            }
            TxOp::Touch(k)
            | TxOp::Remove(k)
            | TxOp::OmapClear(k)
            | TxOp::Write { key: k, .. }
            | TxOp::Zero { key: k, .. }
            | TxOp::Truncate { key: k, .. }
            | TxOp::SetAttrs { key: k, .. }
            | TxOp::RmAttr { key: k, .. }
            | TxOp::OmapSet { key: k, .. }
            | TxOp::OmapRmKeys { key: k, .. } => v.push(shard_of(k)),
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// More files than this to sync at a commit take one `syncfs` instead of a
/// `fdatasync` (and a device cache flush) each.
const SYNCFS_FILES: usize = 16;

/// Journal room an in-place transaction's record is allowed, on top of its
/// data, when its space is checked before the data goes in place.
const IN_PLACE_RECORD_ROOM: u64 = 1 << 20;

/// Where a transaction's write's data goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direct {
    /// Into the journal record (and the object file at apply).
    Journal,
    /// Into new data file `id`, before the record (`Step::Place`).
    Place(u64),
    /// Into the object's own file, before the record (`Step::InPlace`).
    InPlace,
}

/// An in-place write's file, and whether its bytes are synced before the
/// record (else by the next commit). See [`Inner::in_place`].
#[derive(Clone, Copy)]
struct InPlace {
    id: u64,
    sync_now: bool,
}

/// What a transaction's large writes did before its record, by step index.
struct Placed {
    how: Vec<Direct>,
    /// Bytes written before the record (they need no journal space).
    bytes: u64,
}

impl Placed {
    /// The transaction's steps, placed writes as `Step::Place` or
    /// `Step::InPlace`.
    fn steps(&self, txn: &Transaction) -> Vec<Step> {
        txn.ops
            .iter()
            .zip(&self.how)
            .map(|(op, how)| match (op, how) {
                (TxOp::Write { key, data, .. }, Direct::Place(id)) => Step::Place {
                    key: key.clone(),
                    len: data.len() as u64,
                    id: *id,
                },
                (TxOp::Write { key, off, data }, Direct::InPlace) => Step::InPlace {
                    key: key.clone(),
                    off: *off,
                    len: data.len() as u64,
                },
                _ => Step::Op(op.clone()),
            })
            .collect()
    }

    /// The transaction was refused: its new files are not named by any
    /// record. (In-place bytes stay, as those of a lost write.)
    fn discard(&self, root: &Path) {
        let ids = self.how.iter().filter_map(|h| match h {
            Direct::Place(id) => Some(id),
            _ => None,
        });
        for id in ids {
            if let Err(e) = data::remove_file(&obj_path(root, *id)) {
                log::warn!("removing unused data file {id:x}: {e}; open removes it");
            }
        }
    }
}

impl Inner {
    /// Whether a step writes through the direct path: a large write at
    /// offset 0, which replaces the object's bytes `[0, len)` and keeps the
    /// rest. Only offset 0, so the new file never needs the old head copied
    /// in; the old tail past `len` is copied at apply, so only while it is no
    /// longer than the write (a 1 MiB overwrite at the start of a 4 MiB
    /// object would copy 3 MiB to save journaling 1 MiB). The size is read
    /// now, without the submit lock: a race only changes which path a write
    /// takes, both are correct.
    fn direct_write(&self, op: &TxOp) -> bool {
        let TxOp::Write { key, off: 0, data } = op else {
            return false;
        };
        let len = data.len() as u64;
        if self.cfg.direct_write_min == 0 || len < self.cfg.direct_write_min {
            return false;
        }
        let size = self.meta.read().get(key).map_or(0, |o| o.size);
        size.saturating_sub(len) <= len
    }

    /// Whether write `op` of `txn` may overwrite its object's file in place
    /// before the record (`Step::InPlace`), and the file's id. Only:
    /// - a large write (`in_place_min`) inside the object's size, into
    ///   an existing file: nothing grows, so no replay's cut past the size
    ///   can take those bytes;
    /// - into a file whose size no record since the last checkpoint changed
    ///   and that none read (`replayed_files`): replay would cut these bytes
    ///   at an older size, or copy newer bytes than the record read. Plain
    ///   journaled overwrites of the file are fine: replay skips their bytes
    ///   under a later in-place write (`shadow.rs`);
    /// - in a transaction whose other steps touch metadata of the object's
    ///   own collection only (none the queue could refuse once the bytes are
    ///   in place, none that reads the object's data) and that need not
    ///   commit first (an object with a stored digest: bytes landing before
    ///   their record would fail it).
    ///
    /// Transactions on one object are queued one at a time (the OSD's PG
    /// serialises them), so what is checked here still holds at apply. The
    /// caller also checks the space for the data and the record before it
    /// writes, and the queue does not refuse the transaction for space after.
    /// A `close` racing the write refuses it with the bytes in place, as a
    /// crash would leave them.
    ///
    /// Also whether the bytes must be synced before the record: only when
    /// a journaled `Write` or `Zero` that replay may still apply wrote to
    /// the file (see [`ReplayedFiles::bytes`]). Otherwise the next commit
    /// syncs them, before the journal.
    fn in_place(&self, txn: &Transaction, op: &TxOp) -> Option<InPlace> {
        let TxOp::Write { key, off, data } = op else {
            return None;
        };
        let len = data.len() as u64;
        if self.cfg.in_place_min == 0 || len < self.cfg.in_place_min || txn.commit_first {
            return None;
        }
        // Metadata of the object's own collection, which exists (the
        // object does): no step the queue could refuse.
        let metadata_only = txn.ops.iter().all(|o| {
            std::ptr::eq(o, op)
                || match o {
                    TxOp::SetAttrs { key: k, .. }
                    | TxOp::RmAttr { key: k, .. }
                    | TxOp::OmapSet { key: k, .. }
                    | TxOp::OmapRmKeys { key: k, .. }
                    | TxOp::OmapClear(k) => k.coll == key.coll,
                    TxOp::CollMetaSet { coll, .. } | TxOp::CollMetaRm { coll, .. } => {
                        *coll == key.coll
                    }
                    _ => false,
                }
        });
        if !metadata_only {
            return None;
        }
        let (id, size) = self.meta.read().get(key).map(|o| (o.id, o.size))?;
        if off.checked_add(len).is_none_or(|end| end > size) {
            return None;
        }
        let files = self.replayed_files.lock();
        if files.cut_or_read.contains_key(&id) {
            // A checkpoint clears the file for the writes after this one
            // (the journal barely grows while writes go in place, so size
            // alone would not bring one).
            drop(files);
            self.request_checkpoint();
            return None;
        }
        Some(InPlace {
            id,
            sync_now: files.bytes.contains_key(&id),
        })
    }

    /// Write each direct-path step's data before the record: to a new file
    /// (`Place`) or into the object's file (`InPlace`), and make it durable
    /// (data, then a new file's directory entry). Runs on the queueing
    /// thread, so callers on several threads sync in parallel.
    fn place_writes(&self, txn: &Transaction) -> StoreResult<Placed> {
        let mut placed = Placed {
            how: Vec::with_capacity(txn.ops.len()),
            bytes: 0,
        };
        let want: u64 = txn
            .ops
            .iter()
            .filter(|op| self.direct_write(op))
            .map(|op| match op {
                TxOp::Write { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        if want > 0 {
            self.claim_space(want, txn)?;
        }
        for op in &txn.ops {
            let TxOp::Write { key, off, data } = op else {
                placed.how.push(Direct::Journal);
                continue;
            };
            if self.direct_write(op) {
                let id = PLACED_ID_BIT | self.next_placed.fetch_add(1, Ordering::Relaxed);
                placed.how.push(Direct::Place(id));
                let path = obj_path(&self.root, id);
                let res = data::write_new_durable(&path, data)
                    .and_then(|()| fsync_dir(&obj_dir(&self.root, id)));
                if let Err(e) = res {
                    placed.discard(&self.root);
                    return Err(StoreError::io(format!("writing {}", path.display()), e));
                }
                placed.bytes += data.len() as u64;
                continue;
            }
            // Room for the data (it may fill holes) and the record, checked
            // now: past this point nothing may refuse the transaction (the
            // queue skips its space check for it), and an open store.
            let written = match self.in_place(txn, op) {
                Some(to)
                    if !self.closed.load(Ordering::Acquire)
                        && self
                            .claim_space(data.len() as u64 + IN_PLACE_RECORD_ROOM, txn)
                            .is_ok() =>
                {
                    self.overwrite_in_place(key, to, *off, data)?
                }
                _ => false,
            };
            if written {
                placed.how.push(Direct::InPlace);
                placed.bytes += data.len() as u64;
            } else {
                placed.how.push(Direct::Journal);
            }
        }
        Ok(placed)
    }

    /// Write `data` at `off` of data file `to.id`, and `fdatasync` it or
    /// leave that to the next commit (`to.sync_now`). False when the file is
    /// not there (a hole-only object): the write is journaled instead. An
    /// I/O error fails the store: the file may hold part of the bytes, which
    /// no record describes.
    ///
    /// The object's shard is held while the bytes are copied (readers see
    /// all of them or none), not while they are synced.
    fn overwrite_in_place(
        &self,
        key: &ObjectKey,
        to: InPlace,
        off: u64,
        data: &[u8],
    ) -> StoreResult<bool> {
        let path = obj_path(&self.root, to.id);
        let res = self
            .fds
            .get(&self.root, to.id, false)
            .and_then(|f| match f {
                Some(f) => {
                    let shard = self.shards[shard_of(key)].write();
                    let w = undoable(
                        self.undo.as_ref(),
                        &f,
                        to.id,
                        off,
                        data.len() as u64,
                        || data::write_in_pieces(&f, data, off),
                    );
                    if w.is_ok() && !to.sync_now {
                        // Before the record is written: a commit that covers
                        // the record sees the file.
                        self.unsynced.lock().add(to.id, &f);
                    }
                    drop(shard);
                    w?;
                    if to.sync_now {
                        let _sync = self.sync_lock.lock();
                        let stamp = self.undo.as_ref().map(|u| u.lock().stamp());
                        if let Err(e) = f.sync_data() {
                            self.fail(format!("syncing {} failed: {e}", path.display()));
                            return Err(e);
                        }
                        if let (Some(u), Some(stamp)) = (&self.undo, stamp) {
                            u.lock().synced(to.id, stamp);
                        }
                    }
                    Ok(true)
                }
                None => Ok(false),
            });
        res.map_err(|e| {
            let why = format!("writing {} in place: {e}", path.display());
            self.fail(why.clone());
            StoreError::io(why, e)
        })
    }

    /// Check, journal and apply a transaction on the caller's thread; see
    /// the module comment. Runs `on_applied` before it returns `Ok`.
    fn queue_inline(
        &self,
        txn: Transaction,
        on_commit: Callback,
        on_applied: Callback,
    ) -> StoreResult<()> {
        // Ordering invariant of the direct path: every placed file is written,
        // fdatasync'd and its directory entry fsync'd HERE, before the
        // transaction gets a seq and reaches the journal, so no record naming
        // a placed file can be on disk (even unsynced) before the file is
        // durable. Replay relies on it and fails loudly if a file is absent.
        let placed = self.place_writes(&txn)?;
        let steps = placed.steps(&txn);
        let payload = codec::encode_payload(&steps);
        let refuse = |e: StoreError| {
            placed.discard(&self.root);
            Err(e)
        };
        if payload.len > u64::from(MAX_PAYLOAD_LEN) {
            return refuse(StoreError::io(
                "queueing a transaction",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "transaction encodes to {} bytes, more than the journal's limit of {MAX_PAYLOAD_LEN}; split it",
                        payload.len
                    ),
                ),
            ));
        }
        // The placed data is on disk already: `available` counts it.
        // A transaction with bytes already in place must not be refused
        // now: `place_writes` checked its space.
        let need = self
            .space_need(&txn, payload.len)
            .map(|n| n.saturating_sub(placed.bytes))
            .filter(|_| !placed.how.contains(&Direct::InPlace));
        let shards = txn_shards(&txn);
        let commit_first = txn.commit_first || must_commit_first(&steps);

        let mut s = self.submit.lock();
        let checked = check_collections(&s.colls, &txn).and_then(|after| {
            if let Some(need) = need {
                self.claim_space(need, &txn)?;
            }
            Ok(after)
        });
        let after = match checked {
            Ok(a) => a,
            Err(e) => return refuse(e),
        };
        if !s.open || self.crashed.load(Ordering::Acquire) {
            return refuse(self.failed_err());
        }
        let seq = s.next_seq;
        let rec = codec::frame_record(seq, payload);
        let appended = {
            let mut j = self.journal.lock();
            let r = j.write(seq, 1, &rec.bufs);
            if r.is_ok() {
                // Under the journal lock, so a sync that covers the record
                // also finds its callback.
                self.commits.lock().waiting.push_back((seq, on_commit));
            }
            r
        };
        let journal_bytes = match appended {
            Ok(total) => total,
            Err(e) => {
                // The segment may end in part of this record (a torn tail to
                // replay): nothing may be appended after it.
                // Its placed file stays for the open's sweep: were the record
                // whole on disk after all, replay would need the file.
                let why = format!("journal write failed: {e}");
                self.fail(why);
                return Err(self.failed_err());
            }
        };
        s.next_seq += 1;
        if let Some(after) = after {
            s.colls = after;
        }
        let in_place = placed.how.contains(&Direct::InPlace)
            && self
                .in_place_since_checkpoint
                .fetch_add(1, Ordering::Relaxed)
                + 1
                >= IN_PLACE_PER_CHECKPOINT;
        if journal_bytes > self.cfg.journal_max_bytes || in_place {
            self.request_checkpoint();
        }
        if commit_first && self.commit_written().is_err() {
            drop(s);
            on_applied(Err(self.failed_err()));
            return Ok(());
        }
        let res = {
            let _gate = self.apply_gate.lock();
            let _shards: Vec<_> = shards.iter().map(|i| self.shards[*i].write()).collect();
            let mut ctx = ApplyCtx {
                root: &self.root,
                replay: None,
                crashed: Some(&self.crashed),
                doomed: Vec::new(),
                fds: Some(&self.fds),
                shadows: None,
                undo: self.undo.as_ref(),
            };
            let marks = self.replay_marks(&steps);
            let r = apply_txn(&mut ctx, &self.meta, seq, &steps);
            // Files dropped are deleted at the next checkpoint: soon, when
            // space is short, so that removing data gives the space back.
            if !ctx.doomed.is_empty() && self.short_of_space() {
                self.request_checkpoint();
            }
            // Under the gate, so a checkpoint's table copy and doomed list agree.
            self.doomed
                .lock()
                .extend(ctx.doomed.into_iter().map(|id| (seq, id)));
            self.note_replayed_files(seq, &marks);
            // Failed under the gate too: a checkpoint that copies the table
            // with part of this transaction in it sees the store failed
            // before it writes the copy out.
            if let Err(e) = &r {
                self.fail(format!("applying seq {seq} failed: {e}"));
            }
            r
        };
        let res = match res {
            Ok(true) => {
                let mut p = self.progress.lock();
                p.applied = seq;
                self.progress_cv.notify_all();
                Ok(())
            }
            Ok(false) | Err(_) => Err(self.failed_err()),
        };
        drop(s);
        on_applied(res);
        Ok(())
    }
}

impl Inner {
    /// The objects of `steps` whose files replay may cut or read, asked
    /// before the apply: those a `Write` creates or grows, and those a
    /// `Truncate`, `Place`, `Clone` (either side), `Remove` or `Touch` names
    /// or whose collection a step creates or removes (any of which may
    /// change the size replay finds for a later step of the transaction).
    /// And those a journaled `Write` or `Zero` writes to.
    fn replay_marks<'a>(&self, steps: &'a [Step]) -> ReplayMarks<'a> {
        let m = self.meta.read();
        let colls: Vec<CollId> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Op(TxOp::CreateCollection(c) | TxOp::RemoveCollection(c)) => Some(*c),
                _ => None,
            })
            .collect();
        let mut marks = ReplayMarks::default();
        for step in steps {
            match step {
                Step::Op(TxOp::Write { key, off, data }) => {
                    let grows = m.get(key).is_none_or(|o| off + data.len() as u64 > o.size);
                    if grows || colls.contains(&key.coll) {
                        marks.cut_or_read.push(key);
                    }
                    marks.bytes.push(key);
                }
                Step::Op(TxOp::Zero { key, .. }) => marks.bytes.push(key),
                Step::Op(TxOp::Truncate { key, .. } | TxOp::Remove(key) | TxOp::Touch(key))
                | Step::Place { key, .. } => marks.cut_or_read.push(key),
                Step::Op(TxOp::Clone { from, to }) => marks.cut_or_read.extend([from, to]),
                _ => {}
            }
        }
        marks
    }

    /// Record the files of `marks` (from [`Inner::replay_marks`]) in
    /// [`ReplayedFiles`] for record `seq`, by their ids after the apply.
    fn note_replayed_files(&self, seq: u64, marks: &ReplayMarks) {
        let m = self.meta.read();
        let mut files = self.replayed_files.lock();
        let id = |k: &&ObjectKey| m.get(k).map(|o| o.id);
        for id in marks.cut_or_read.iter().filter_map(id) {
            files.cut_or_read.insert(id, seq);
        }
        for id in marks.bytes.iter().filter_map(id) {
            files.bytes.insert(id, seq);
        }
    }
}

/// The objects of a transaction's steps whose files go in [`ReplayedFiles`].
#[derive(Default)]
struct ReplayMarks<'a> {
    cut_or_read: Vec<&'a ObjectKey>,
    bytes: Vec<&'a ObjectKey>,
}

/// Steps that must not reach the object files before their record is
/// durable (see the module comment): a `Clone`, whose source a later
/// in-place write may change; a `Truncate` of a file that holds committed
/// bytes (not the new file of a `Place` earlier in the transaction).
fn must_commit_first(steps: &[Step]) -> bool {
    steps.iter().enumerate().any(|(i, step)| match step {
        Step::Op(TxOp::Clone { .. }) => true,
        Step::Op(TxOp::Truncate { key, .. }) => !steps[..i]
            .iter()
            .any(|s| matches!(s, Step::Place { key: k, .. } if k == key)),
        _ => false,
    })
}

impl ObjectStore for FileStore {
    fn queue_transaction(
        &self,
        txn: Transaction,
        on_commit: Callback,
        on_applied: Callback,
    ) -> StoreResult<()> {
        self.inner.usable()?;
        check_ranges(&txn)?;
        self.inner.queue_inline(txn, on_commit, on_applied)
    }

    fn read(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Bytes> {
        match self.inner.read(key, off, len, true)? {
            Some(b) => Ok(b),
            None => self.read_missed(key, off, len),
        }
    }

    fn read_missed(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Bytes> {
        self.inner.usable()?;
        // Wait for the disk without the object's shard, which a transaction
        // of any object of the shard would otherwise wait for (and the
        // submit lock with it); then read under it, from the page cache
        // unless the pages went again.
        self.inner.prefetch(key, off, len)?;
        if let Some(b) = self.inner.read(key, off, len, true)? {
            return Ok(b);
        }
        self.inner
            .read(key, off, len, false)
            .map(|b| b.expect("a blocking read always has the bytes"))
    }

    fn read_cached(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Option<Bytes>> {
        self.inner.read(key, off, len, true)
    }

    fn stat(&self, key: &ObjectKey) -> StoreResult<u64> {
        self.inner.usable()?;
        self.inner.with_obj(key, |o| o.size)
    }

    fn exists(&self, key: &ObjectKey) -> bool {
        self.inner.usable().is_ok() && self.inner.with_obj(key, |_| ()).is_ok()
    }

    fn getattrs(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.inner.usable()?;
        self.inner.with_obj(key, |o| o.attrs.clone())
    }

    fn omap_get(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.inner.usable()?;
        self.inner.with_obj(key, |o| o.omap.clone())
    }

    fn list_objects(&self, coll: CollId) -> StoreResult<Vec<ObjectKey>> {
        self.inner.usable()?;
        let meta = self.inner.meta.read();
        let c = meta
            .colls
            .get(&coll)
            .ok_or(StoreError::NoCollection(coll))?;
        Ok(c.objects
            .iter()
            .flat_map(|(name, snaps)| {
                snaps.keys().map(move |snap| ObjectKey {
                    coll,
                    name: name.clone(),
                    snap: *snap,
                })
            })
            .collect())
    }

    fn list_collections(&self) -> Vec<CollId> {
        if self.inner.usable().is_err() {
            return Vec::new();
        }
        self.inner.meta.read().colls.keys().copied().collect()
    }

    fn coll_meta_get(&self, coll: CollId) -> StoreResult<BTreeMap<String, Bytes>> {
        self.inner.usable()?;
        let meta = self.inner.meta.read();
        meta.colls
            .get(&coll)
            .map(|c| c.meta.clone())
            .ok_or(StoreError::NoCollection(coll))
    }

    fn wait_applied(&self) -> StoreResult<()> {
        self.inner.usable()?;
        let target = self.inner.submit.lock().next_seq - 1;
        self.inner.wait_applied_seq(target)
    }

    fn wait_committed(&self) -> StoreResult<()> {
        self.inner.usable()?;
        let target = self.inner.submit.lock().next_seq - 1;
        self.inner.request_commit();
        self.inner.wait_committed_seq(target)
    }

    fn commit_soon(&self) {
        self.inner.request_commit();
    }

    fn commit_then(&self, done: Callback) {
        if let Err(e) = self.inner.usable() {
            return done(Err(e));
        }
        {
            // Under the journal lock, as a transaction's commit callback is
            // queued: the next sync that covers `upto` also finds `done`.
            let j = self.inner.journal.lock();
            let upto = j.last_seq();
            if upto > self.inner.progress.lock().committed {
                self.inner.commits.lock().waiting.push_back((upto, done));
                drop(j);
                return self.inner.request_commit();
            }
        }
        done(Ok(()))
    }

    fn commit_pending(&self) -> bool {
        // A store that failed says so at the commit, as `commit_then` does.
        self.inner.usable().is_err()
            || self.inner.journal.lock().last_seq() > self.inner.progress.lock().committed
    }

    fn holds_uncommitted(&self) -> bool {
        self.inner.journal.lock().last_seq() > self.inner.durable.load(Ordering::Acquire)
    }

    fn commit_here(&self) -> StoreResult<()> {
        self.inner.usable()?;
        self.inner.commit_written()
    }

    fn data_digest(&self, key: &ObjectKey) -> StoreResult<u32> {
        FileStore::data_digest(self, key)
    }

    fn check_health(&self) -> StoreResult<()> {
        self.inner.usable()?;
        self.inner.check_root()
    }

    fn object_path(&self, key: &ObjectKey) -> Option<PathBuf> {
        self.object_file(key).ok()
    }

    fn space(&self) -> StoreResult<StoreSpace> {
        self.inner.usable()?;
        let (total, available) = data::statvfs(&self.inner.root)
            .map_err(io_err(format!("statfs {}", self.inner.root.display())))?;
        Ok(StoreSpace {
            total,
            available: self.inner.cfg.fake_available_bytes.unwrap_or(available),
            used: self.inner.meta.read().used,
        })
    }
}

#[cfg(test)]
mod model_tests;
mod shadow;
#[cfg(test)]
mod tests;
mod unsynced;
