//! The cluster: a directory with an OSD map and N OSDs, run in this process,
//! serving the librados-shaped [`RadosBackend`].
//!
//! Layout of a cluster directory:
//!
//! ```text
//!  DIR/lock          flock'ed while a process has the cluster open
//!  DIR/osdmap.json   the OSD map (see osdmap.rs), replaced atomically
//!  DIR/osd.N/        the store of osd.N (by default; any path may be given)
//! ```
//!
//! Client side: object name -> PG (stable hash) -> acting set (placement over
//! the map) -> the primary's op queue, with a one-shot reply. The futures only
//! wait on that reply; the work happens on the OSDs' own threads, except for
//! the fast path's one-attempt ops, which run on the submitting thread when
//! their PG is idle (`Osd::enqueue_client`).
//!
//! Failure handling: an OSD whose store fails (I/O errors, its directory
//! vanished, a full journal) is reported by whoever sees it (the OSD itself,
//! or a primary whose replica failed a write) or found by the monitor
//! thread's health poll, and marked down in a new epoch. A client op that
//! cannot be served now (its PG below `min_size` or incomplete, its primary
//! failing) is answered `Busy` inside the cluster and resubmitted by the
//! client side at each new epoch, until `op_timeout`: below `min_size` I/O
//! waits instead of failing.
//!
//! Map changes (pool creation, OSDs going down/up/in/out) hold new client ops
//! back, let those in flight finish, save the new map and mark every PG
//! pending, release the held ops, then peer the PGs one by one while the
//! ones already peered serve (ops to a pending PG are retried as PGs finish):
//!
//! ```text
//!  Serving ──map change──> Draining ──inflight = 0, queues idle──> Swap map,
//!     ^                                                       mark PGs pending
//!     │                                                              │
//!     └── all PGs peered <── Peering PG by PG <── parked ops resubmitted
//! ```

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::PgId;
use super::daemon::{Osd, Shared};
use super::error::{OsdError, OsdResult};
use super::osdmap::{OSDMAP_FILE, OsdId, OsdInfo, OsdMap, PendingTrim, PoolEntry};
use super::peering::{mark_pending, peer_all};
use super::pg::PgEvent;
use super::pg_holders::PgHolders;
use super::placement::object_pg;
use super::store_open::{CloseFn, CrashFn, FailedStore, FileStoreOpener, StoreOpener};
use super::tracker::{Admit, Gate, Leave, Reply};
use crate::rados::{
    BoxFuture, Done, PoolId, PoolInfo, RadosBackend, RadosError, ReadOp, ReadResult, Result,
    SNAP_HEAD, SnapContext, SnapId, WriteOp,
};
use crate::store::{ObjectStore, StoreResult};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, Ordering, RwLock};

/// Tunables of a running cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Shards of each OSD's op queue (a PG always maps to the same shard).
    pub osd_op_num_shards: usize,
    /// Worker threads per shard.
    pub osd_op_num_threads_per_shard: usize,
    /// Threads per OSD for reads that miss the page cache: a worker hands
    /// them over instead of waiting for the disk, so that as many reads are
    /// in flight to the disk as a loop device asks for.
    pub osd_cold_read_threads: usize,
    /// Entries kept in each PG's log; a replica further behind is backfilled.
    pub pg_log_max_entries: usize,
    /// Pool defaults when `pool_create` leaves them out.
    pub default_pool_size: u32,
    pub default_pg_num: u32,
    /// Makes and opens the OSDs' stores.
    pub store: Arc<dyn StoreOpener>,
    /// How long a client op waits for its PG to become servable (enough
    /// replicas up) before it fails with `TimedOut`.
    pub op_timeout: Duration,
    /// How often the monitor polls the stores' health.
    pub monitor_interval: Duration,
    /// Bound on the rate of backfill copies made while PGs serve (bytes per
    /// second, averaged over each PG's copy); `None`: as fast as it goes.
    pub recovery_max_bytes_per_sec: Option<u64>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            // One shard per two cores, two threads each. On 2 cores, one
            // shard did 10-15% more small-I/O IOPS than two (fewer sleeping
            // workers to wake: every OSD of the process has its own pool).
            // At most 4: every OSD of the process has its own pool.
            osd_op_num_shards: std::thread::available_parallelism()
                .map_or(1, |n| (n.get() / 2).clamp(1, 4)),
            osd_op_num_threads_per_shard: 2,
            osd_cold_read_threads: 8,
            pg_log_max_entries: 3000,
            default_pool_size: 3,
            default_pg_num: 32,
            store: Arc::new(FileStoreOpener::default()),
            op_timeout: Duration::from_secs(300),
            monitor_interval: Duration::from_millis(500),
            recovery_max_bytes_per_sec: None,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("osd_op_num_shards", &self.osd_op_num_shards)
            .field(
                "osd_op_num_threads_per_shard",
                &self.osd_op_num_threads_per_shard,
            )
            .field("osd_cold_read_threads", &self.osd_cold_read_threads)
            .field("pg_log_max_entries", &self.pg_log_max_entries)
            .field("default_pool_size", &self.default_pool_size)
            .field("default_pg_num", &self.default_pg_num)
            .field("op_timeout", &self.op_timeout)
            .field("monitor_interval", &self.monitor_interval)
            .field(
                "recovery_max_bytes_per_sec",
                &self.recovery_max_bytes_per_sec,
            )
            .finish_non_exhaustive()
    }
}

/// How to lay out a new cluster.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// One store directory per OSD; empty: `num_osds` directories `DIR/osd.N`.
    pub osd_paths: Vec<PathBuf>,
    pub num_osds: usize,
    pub config: ClusterConfig,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            osd_paths: Vec::new(),
            num_osds: 3,
            config: ClusterConfig::default(),
        }
    }
}

/// Where a client op goes.
enum Target {
    Object(String),
    Pg(u32),
}

/// A client op on its way to a primary.
struct ClientOp {
    pool: PoolId,
    target: Target,
    kind: ClientKind,
    /// May run on the submitting thread (see [`Osd::enqueue_client`]): set
    /// for the one-attempt ops of a caller that answers from the completing
    /// thread, and cleared when an op is parked, so that resubmission under
    /// the map-change lock only queues.
    inline: bool,
}

enum ClientKind {
    Read {
        snap: SnapId,
        ops: Vec<ReadOp>,
        done: Done<Vec<ReadResult>>,
    },
    Write {
        snapc: SnapContext,
        ops: Vec<WriteOp>,
        done: Done<()>,
    },
    Trim {
        snap: SnapId,
        done: Done<()>,
    },
}

pub(super) struct Inner {
    pub(super) dir: PathBuf,
    pub(super) config: ClusterConfig,
    pub(super) shared: Arc<Shared>,
    /// Every OSD ever known, indexed by id (removed ones stay, stopped).
    osds: RwLock<Vec<Arc<Osd>>>,
    /// How to close (or crash) each OSD's store, by id; `None` once closed.
    closers: Mutex<Vec<Option<(CloseFn, CrashFn)>>>,
    gate: Arc<Gate<ClientOp>>,
    /// Serialises map changes.
    map_change: Mutex<()>,
    lock: Mutex<Option<File>>,
    /// Bumped at every map change and monitor tick; blocked client ops
    /// wake on it to retry or time out.
    changes: tokio::sync::watch::Sender<u64>,
    /// Client ops waiting for a map change before they can be served.
    pub(super) blocked: AtomicUsize,
    stopping: AtomicBool,
    /// OSDs whose stores failed holding writes not yet committed, when a
    /// flush has since committed those writes on the others: they no
    /// longer hold anything that is not also elsewhere.
    covered: Mutex<BTreeSet<OsdId>>,
}

/// A running cluster of in-process OSDs.
pub struct Cluster {
    inner: Arc<Inner>,
}

fn lock_dir(dir: &Path) -> OsdResult<File> {
    let path = dir.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| OsdError::io(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(OsdError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        return Err(OsdError::io(format!("locking {}", path.display()), e));
    }
    Ok(f)
}

/// Written before a create makes the OSDs' stores, removed once the map
/// names them: the OSD directories it lists, one per line.
const CREATING_FILE: &str = "creating";

/// Remove everything inside `path` (not `path` itself, which may be a
/// mount point); a missing `path` is empty.
fn empty_dir(path: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

impl Cluster {
    /// Make a new cluster in `dir` (created if missing): the map and an empty
    /// store per OSD. Pools are created later by clients.
    pub fn create(dir: &Path, opts: CreateOptions) -> OsdResult<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OsdError::io(format!("creating {}", dir.display()), e))?;
        let _lock = lock_dir(dir)?;
        if dir.join(OSDMAP_FILE).exists() {
            return Err(OsdError::ClusterExists(dir.to_path_buf()));
        }
        let paths: Vec<PathBuf> = if opts.osd_paths.is_empty() {
            (0..opts.num_osds.max(1))
                .map(|i| PathBuf::from(format!("osd.{i}")))
                .collect()
        } else {
            opts.osd_paths.clone()
        };
        // A create that was interrupted left OSD stores that no map names
        // (so nothing was ever written to them): empty their directories.
        let marker = dir.join(CREATING_FILE);
        let io = |what: String| move |e| OsdError::io(what, e);
        if let Ok(text) = std::fs::read_to_string(&marker) {
            for p in text.lines().filter(|l| !l.is_empty()) {
                empty_dir(&dir.join(p))
                    .map_err(io(format!("emptying {} (an interrupted create)", p)))?;
            }
        }
        let note = |listed: &str| {
            crate::store::data::write_atomic(dir, CREATING_FILE, listed.as_bytes())
                .map_err(io(format!("writing {}", marker.display())))
        };
        let mut listed = String::new();
        note(&listed)?;
        for (i, p) in paths.iter().enumerate() {
            // Listed only when empty (mkfs refuses anything else), so that a
            // directory of the user's is never emptied by a later create.
            let fresh = std::fs::read_dir(dir.join(p)).map_or(true, |mut d| d.next().is_none());
            if fresh {
                listed.push_str(&format!("{}\n", p.display()));
                note(&listed)?;
            }
            opts.config
                .store
                .mkfs(&dir.join(p))
                .map_err(|source| OsdError::Store {
                    osd: i as OsdId,
                    source,
                })?;
        }
        OsdMap::new(paths).save(dir)?;
        std::fs::remove_file(&marker)
            .and_then(|()| crate::store::data::fsync_dir(dir))
            .map_err(io(format!("removing {}", marker.display())))
    }

    /// Whether `dir` holds what a create that was interrupted left: OSD
    /// stores but no map. Creating the cluster there again is safe.
    pub fn create_interrupted(dir: &Path) -> bool {
        dir.join(CREATING_FILE).exists() && !dir.join(OSDMAP_FILE).exists()
    }

    /// Open the cluster in `dir`: lock it, open every OSD's store, mark all
    /// OSDs up (a new epoch), peer every PG.
    /// An OSD whose store cannot be opened starts down (the cluster runs
    /// degraded) instead of failing the open.
    pub fn open(dir: &Path, config: ClusterConfig) -> OsdResult<Arc<Cluster>> {
        let lock = lock_dir(dir)?;
        let mut map = OsdMap::load(dir)?;
        let max_id = map.osds.iter().map(|o| o.id).max().unwrap_or(0);
        let mut opened = Vec::new();
        for id in 0..=max_id {
            let Some(info) = map.osd(id) else {
                opened.push((Arc::new(FailedStore::new("removed")) as _, None));
                continue;
            };
            let path = dir.join(&info.path);
            match config.store.open(&path) {
                Ok(o) => opened.push((o.store, Some((o.close, o.crash)))),
                // Another process using the store is not a failed disk.
                Err(source @ crate::store::StoreError::Locked { .. }) => {
                    return Err(OsdError::Store { osd: id, source });
                }
                Err(e) => {
                    log::error!(
                        "osd.{id}: cannot open its store {}: {e}; it starts down",
                        path.display()
                    );
                    opened.push((Arc::new(FailedStore::new(&e.to_string())) as _, None));
                }
            }
        }
        for o in &mut map.osds {
            o.up = opened[o.id as usize].1.is_some();
            // A lost OSD whose store opens again is back.
            o.lost &= !o.up;
        }
        map.epoch += 1;
        map.save(dir)?;
        let holders = PgHolders::load(dir)?;
        let mut shared = Shared::new(map.clone(), config.pg_log_max_entries.max(1), holders);
        shared.recovery_max_bytes_per_sec = config.recovery_max_bytes_per_sec.filter(|r| *r > 0);
        let shared = Arc::new(shared);
        let (fail_tx, fail_rx) = std::sync::mpsc::channel();
        *shared.failures.lock() = Some(fail_tx);
        let mut osds = Vec::new();
        let mut closers = Vec::new();
        for (id, (store, closer)) in opened.into_iter().enumerate() {
            closers.push(closer);
            osds.push(Osd::start(id as OsdId, store, shared.clone(), &config)?);
        }
        let weak: Vec<_> = osds.iter().map(Arc::downgrade).collect();
        for o in &osds {
            o.set_peers(weak.clone());
        }
        peer_all(&osds, &map, &|| {})?;
        let cluster = Arc::new(Cluster {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                config,
                shared,
                osds: RwLock::new(osds),
                closers: Mutex::new(closers),
                gate: Arc::new(Gate::new()),
                map_change: Mutex::new(()),
                lock: Mutex::new(Some(lock)),
                changes: tokio::sync::watch::Sender::new(0),
                blocked: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
                covered: Mutex::new(BTreeSet::new()),
            }),
        });
        spawn_monitor(&cluster.inner, fail_rx)?;
        cluster.inner.retry_pending_trims()?;
        Ok(cluster)
    }

    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The current OSD map.
    pub fn osdmap(&self) -> Arc<OsdMap> {
        self.inner.shared.map()
    }

    /// The store of an OSD, for inspection (tests, scrub).
    pub fn osd_store(&self, osd: OsdId) -> Option<Arc<dyn ObjectStore>> {
        self.inner.osd(osd).map(|o| o.store.clone())
    }

    /// Client ops waiting for a map change (their PG below `min_size`,
    /// incomplete, or its primary failing).
    pub fn blocked_ops(&self) -> usize {
        self.inner.blocked.load(Ordering::SeqCst)
    }

    /// Create a store in `path` (relative to the cluster directory unless
    /// absolute), and add it as a new OSD, up and in: the PGs that now map
    /// to it are backfilled. Returns its id.
    pub fn add_osd(&self, path: &Path) -> OsdResult<OsdId> {
        let inner = &self.inner;
        let full = inner.dir.join(path);
        inner.config.store.mkfs(&full).map_err(|e| {
            OsdError::InvalidArgument(format!("making a store in {}: {e}", full.display()))
        })?;
        let id = {
            let _serial = inner.map_change.lock();
            let opened = inner
                .config
                .store
                .open(&full)
                .map_err(|source| OsdError::Store {
                    osd: inner.osds.read().len() as OsdId,
                    source,
                })?;
            let mut osds = inner.osds.write();
            let id = osds.len() as OsdId;
            let osd = Osd::start(id, opened.store, inner.shared.clone(), &inner.config)?;
            osds.push(osd);
            let weak: Vec<_> = osds.iter().map(Arc::downgrade).collect();
            for o in osds.iter() {
                o.set_peers(weak.clone());
            }
            inner
                .closers
                .lock()
                .push(Some((opened.close, opened.crash)));
            id
        };
        inner.change_map(true, |m| {
            m.osds.push(OsdInfo {
                id,
                path: path.to_path_buf(),
                up: true,
                in_: true,
                lost: false,
            });
            Ok(())
        })?;
        inner.retry_pending_trims()?;
        Ok(id)
    }

    /// Remove an OSD from the cluster: only once it is down and out and
    /// every PG is active+clean on the others (so it holds no needed copy).
    /// Its store is closed; its directory is left for the operator.
    pub fn remove_osd(&self, osd: OsdId) -> OsdResult<()> {
        let map = self.osdmap();
        let info = map.osd(osd).ok_or(OsdError::NoSuchOsd(osd))?;
        if info.up || info.in_ {
            return Err(OsdError::CannotRemove {
                osd,
                why: format!(
                    "it is {} and {}; mark it down and out first",
                    if info.up { "up" } else { "down" },
                    if info.in_ { "in" } else { "out" }
                ),
            });
        }
        let unclean: Vec<_> = self
            .pg_list()
            .into_iter()
            .filter(|p| p.state != "active+clean")
            .collect();
        if let Some(p) = unclean.first() {
            return Err(OsdError::CannotRemove {
                osd,
                why: format!(
                    "{} PGs are not active+clean (pg {} is {}); it may hold their only \
                     copy: wait for recovery or bring OSDs back",
                    unclean.len(),
                    p.pgid,
                    p.state
                ),
            });
        }
        // What recovery copied to the others must be durable before the
        // copy it came from goes.
        for o in self.inner.osds() {
            if o.id != osd
                && map.osd(o.id).is_some_and(|i| i.up)
                && let Err(e) = o.store.wait_committed()
            {
                return Err(OsdError::CannotRemove {
                    osd,
                    why: format!("osd.{} cannot commit: {e}", o.id),
                });
            }
        }
        self.inner.change_map(false, |m| {
            m.osds.retain(|o| o.id != osd);
            Ok(())
        })?;
        if let Some(o) = self.inner.osd(osd) {
            o.stop();
        }
        let closer = self
            .inner
            .closers
            .lock()
            .get_mut(osd as usize)
            .and_then(Option::take);
        if let Some((close, _)) = closer {
            if let Err(e) = close() {
                log::warn!("osd.{osd}: closing its store: {e}");
            }
        }
        Ok(())
    }

    /// The PG of an object and its acting set (primary first).
    pub fn object_acting(&self, pool: PoolId, name: &str) -> OsdResult<(PgId, Vec<OsdId>)> {
        let map = self.osdmap();
        let p = map
            .pool(pool)
            .ok_or_else(|| OsdError::PoolNotFound(pool.to_string()))?;
        let pg = object_pg(name, p.info.pg_num);
        Ok((
            PgId { pool, pg },
            self.inner.shared.acting(&map, &p.info, pg),
        ))
    }

    /// Mark an OSD up or down. Down: PGs it serves go on degraded with the
    /// others (while at least `min_size` remain). Up again: peering brings
    /// its PGs up to date from the primaries' logs before I/O resumes.
    pub fn set_osd_up(&self, osd: OsdId, up: bool) -> OsdResult<()> {
        if up {
            if let Some(Err(e)) = self.inner.osd(osd).map(|o| o.store.check_health()) {
                return Err(OsdError::Store { osd, source: e });
            }
            // Up again, it takes writes that only it may hold.
            self.inner.covered.lock().remove(&osd);
        }
        self.update_osd(osd, |o| {
            o.up = up;
            o.lost &= !up;
        })
    }

    /// Declare a down OSD gone for good, with whatever only it held: PGs
    /// that wait for its copy (incomplete) serve the newest copy left, and
    /// it no longer counts as holding any PG. It may then be taken out and
    /// removed. Marked up again (or found at the next open), it is back.
    pub fn mark_osd_lost(&self, osd: OsdId) -> OsdResult<()> {
        log::warn!("marking osd.{osd} lost: writes only it held are given up");
        // Checked in the map change, so an `osd up` cannot slip in between.
        self.update_osd_checked(osd, |o| {
            if o.up {
                return Err(OsdError::InvalidArgument(format!(
                    "osd.{osd} is up; only a down OSD can be marked lost"
                )));
            }
            o.lost = true;
            Ok(())
        })?;
        // Given up: a flush no longer fails for what its store never
        // committed.
        self.inner.covered.lock().insert(osd);
        Ok(())
    }

    /// Mark an OSD in or out: out moves its PGs to other OSDs (backfilled).
    pub fn set_osd_in(&self, osd: OsdId, in_: bool) -> OsdResult<()> {
        self.update_osd(osd, |o| o.in_ = in_)
    }

    /// Change one OSD's entry in a new map epoch, then retry owed trims.
    fn update_osd(&self, osd: OsdId, f: impl FnOnce(&mut OsdInfo)) -> OsdResult<()> {
        self.update_osd_checked(osd, |o| {
            f(o);
            Ok(())
        })
    }

    /// [`Cluster::update_osd`] with a change that may refuse (nothing
    /// changes then).
    fn update_osd_checked(
        &self,
        osd: OsdId,
        f: impl FnOnce(&mut OsdInfo) -> OsdResult<()>,
    ) -> OsdResult<()> {
        self.inner.change_map(true, |m| {
            let o = m
                .osds
                .iter_mut()
                .find(|o| o.id == osd)
                .ok_or(OsdError::NoSuchOsd(osd))?;
            f(o)?;
            Ok(())
        })?;
        self.inner.retry_pending_trims()
    }

    /// Test hook: stop replicating to `osd` (it is marked down and misses
    /// writes) or resume (marked up; log recovery catches it up).
    pub fn set_replica_paused(&self, osd: OsdId, paused: bool) -> OsdResult<()> {
        self.set_osd_up(osd, !paused)
    }

    /// Finish every op in flight, stop the OSDs, close their stores cleanly
    /// and release the directory lock. Later ops fail with `ShuttingDown`.
    pub fn shutdown(&self) -> OsdResult<()> {
        self.inner.stopping.store(true, Ordering::SeqCst);
        // Serialised with a monitor-driven map change in progress.
        let _serial = self.inner.map_change.lock();
        // Parked ops are answered, not dropped: a dropped completion
        // would never run.
        for op in self.inner.gate.close() {
            fail(op, RadosError::ShuttingDown);
        }
        self.inner.changes.send_modify(|v| *v += 1);
        let osds = self.inner.osds();
        for o in &osds {
            o.wait_idle();
        }
        for o in &osds {
            o.stop();
        }
        let closers = std::mem::take(&mut *self.inner.closers.lock());
        let mut first_err = None;
        for (i, closer) in closers.into_iter().enumerate() {
            let Some((close, _)) = closer else { continue };
            if let Err(source) = close() {
                first_err.get_or_insert(OsdError::Store {
                    osd: i as OsdId,
                    source,
                });
            }
        }
        self.inner.lock.lock().take();
        first_err.map_or(Ok(()), Err)
    }
}

impl Cluster {
    /// Simulate a crash, for tests: every store's crash hook runs (for the
    /// file store, a killed process: nothing more is synced, what was
    /// applied stays in the page cache; a test's opener may make it a power
    /// loss instead), the OSDs stop and the directory lock is released so
    /// the cluster can be opened again.
    pub fn simulate_crash(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let closers = std::mem::take(&mut *self.inner.closers.lock());
        for (_, crash) in closers.into_iter().flatten() {
            crash();
        }
        for o in &self.inner.osds() {
            o.stop();
        }
        self.inner.lock.lock().take();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Without shutdown() this is a crash as far as the stores know; the
        // workers still exit once their queues drain.
        self.inner.stopping.store(true, Ordering::SeqCst);
        for o in &self.inner.osds() {
            o.stop();
        }
    }
}

impl Inner {
    pub(super) fn osds(&self) -> Vec<Arc<Osd>> {
        self.osds.read().clone()
    }

    pub(super) fn osd(&self, id: OsdId) -> Option<Arc<Osd>> {
        self.osds.read().get(id as usize).cloned()
    }

    /// Commit every up OSD's store and hand `done` `Ok` once all are
    /// durable (a down OSD's store committed what it applied when it went
    /// down: peering commits every store first). With `here`, the last
    /// store that has records to sync syncs on this thread while the
    /// others' store threads sync theirs.
    ///
    /// A store that fails to commit (its disk is gone) does not fail the
    /// flush while its data has another copy: as Ceph resends a write to a
    /// new acting set, the OSD is marked down and the flush runs again over
    /// the OSDs left, which applied every write it had. It fails when the
    /// OSD was the last one serving some PG, or the second try fails too.
    /// A store that failed earlier, holding writes not yet committed, fails
    /// every flush while some PG it served has no other OSD serving it.
    fn commit_all(self: &Arc<Self>, here: bool, done: Done<()>) {
        self.commit_stores(here, true, &BTreeSet::new(), done);
    }

    /// [`Inner::commit_all`] without the OSDs in `skip`; on a `first_try`, a
    /// store that cannot commit is left out and the others committed again.
    fn commit_stores(
        self: &Arc<Self>,
        here: bool,
        first_try: bool,
        skip: &BTreeSet<OsdId>,
        done: Done<()>,
    ) {
        let map = self.shared.map();
        let covered = self.covered.lock().clone();
        let mut stores: Vec<(OsdId, Arc<dyn ObjectStore>)> = Vec::new();
        // Down OSDs whose stores failed holding writes not yet committed.
        let mut gone = BTreeSet::new();
        for o in self.osds().iter().filter(|o| !skip.contains(&o.id)) {
            if map.osd(o.id).is_some_and(|i| i.up) {
                stores.push((o.id, o.store.clone()));
            } else if !covered.contains(&o.id)
                && o.store.check_health().is_err()
                && o.store.holds_uncommitted()
            {
                gone.insert(o.id);
            }
        }
        if let Some(pg) = self.lost_pg(&map, &gone, &gone) {
            return done(Err(RadosError::Io(format!(
                "writes since the last flush are lost: pg {pg} has no other copy \
                 than on {}, whose store failed before committing them",
                osd_list(&gone)
            ))));
        }
        if here {
            stores.retain(|(_, s)| s.commit_pending());
        }
        let Some((last_id, last)) = stores.pop() else {
            self.covered.lock().extend(gone);
            return done(Ok(()));
        };
        let gather = Arc::new(Gather {
            left: AtomicUsize::new(stores.len() + 1),
            failed: Mutex::new(Vec::new()),
            inner: self.clone(),
            first_try,
            covers: gone,
            done: Mutex::new(Some(done)),
        });
        for (id, s) in stores {
            let g = gather.clone();
            s.commit_then(Box::new(move |r| g.one(id, r)));
        }
        if here {
            gather.one(last_id, last.commit_here());
        } else {
            last.commit_then(Box::new(move |r| gather.one(last_id, r)));
        }
    }

    /// A PG whose writes since the last flush are lost: every OSD serving
    /// it is `failing` (or none serves it any more), and one that served
    /// it is `holding`, a failed store with writes it never committed.
    fn lost_pg(
        &self,
        map: &OsdMap,
        failing: &BTreeSet<OsdId>,
        holding: &BTreeSet<OsdId>,
    ) -> Option<String> {
        if holding.is_empty() {
            return None;
        }
        for pool in &map.pools {
            for pg in 0..pool.info.pg_num {
                let acting = self.shared.acting(map, &pool.info, pg);
                // Served again by an older copy, the PG waits for the newer
                // one (incomplete): the failed store that held it.
                let id = PgId {
                    pool: pool.info.id,
                    pg,
                };
                let waits_for = acting
                    .first()
                    .and_then(|p| self.osd(*p))
                    .and_then(|o| o.pg(id))
                    .and_then(|p| p.lock().incomplete);
                if waits_for.is_some_and(|o| holding.contains(&o)) {
                    return Some(format!("{}.{pg:x}", pool.info.id));
                }
                if !acting.iter().all(|o| failing.contains(o)) {
                    continue;
                }
                let served = if acting.is_empty() {
                    map.pg_up_set(&pool.info, pg)
                } else {
                    acting
                };
                if served.iter().any(|o| holding.contains(o)) {
                    return Some(format!("{}.{pg:x}", pool.info.id));
                }
            }
        }
        None
    }

    /// After OSDs `failed` could not commit during a flush: unless one of
    /// them was the last to serve some PG, mark them down and commit the
    /// others once more (see [`Inner::commit_all`]). Runs on its own thread:
    /// marking down peers, which waits for the stores' commit threads.
    fn flush_without(self: Arc<Self>, failed: Vec<(OsdId, String)>, done: Done<()>) {
        let ids: BTreeSet<OsdId> = failed.iter().map(|(id, _)| *id).collect();
        let why = || {
            let each: Vec<String> = failed
                .iter()
                .map(|(id, e)| format!("osd.{id}: {e}"))
                .collect();
            each.join("; ")
        };
        let map = self.shared.map();
        let holding: BTreeSet<OsdId> = ids
            .iter()
            .copied()
            .filter(|id| self.osd(*id).is_some_and(|o| o.store.holds_uncommitted()))
            .collect();
        if let Some(pg) = self.lost_pg(&map, &ids, &holding) {
            return done(Err(RadosError::Io(format!(
                "could not commit, and pg {pg} has no other copy: {}",
                why()
            ))));
        }
        let up: BTreeSet<OsdId> = ids
            .iter()
            .copied()
            .filter(|id| map.osd(*id).is_some_and(|i| i.up))
            .collect();
        if !up.is_empty() {
            if let Err(e) = self.mark_down(&up) {
                return done(Err(RadosError::Io(format!(
                    "could not commit ({}), nor mark the OSD down: {e}",
                    why()
                ))));
            }
        }
        log::warn!(
            "flush: went on without the OSDs that could not commit: {}",
            why()
        );
        self.commit_stores(false, false, &ids, done);
    }

    /// Mark failed OSDs down (one new epoch for all of them).
    fn mark_down(&self, failed: &BTreeSet<OsdId>) -> OsdResult<()> {
        log::warn!("marking failed OSDs down: {failed:?}");
        self.change_map(true, |m| {
            for o in m.osds.iter_mut().filter(|o| failed.contains(&o.id)) {
                o.up = false;
            }
            Ok(())
        })?;
        self.retry_pending_trims()
    }

    /// Quiesce client I/O (ops in flight finish, new ones are parked), run
    /// `f`, then resubmit what was parked. Serialised with map changes.
    pub(super) fn quiesced<T>(&self, f: impl FnOnce() -> T) -> T {
        let _serial = self.map_change.lock();
        self.gate.begin_peering();
        for o in self.osds() {
            o.wait_idle();
        }
        let r = f();
        for mut op in self.gate.end_peering() {
            op.inline = false;
            self.submit(op);
        }
        r
    }

    /// Change the map; with `peer`, quiesce I/O and peer every PG (module doc).
    fn change_map(
        &self,
        peer: bool,
        f: impl FnOnce(&mut OsdMap) -> OsdResult<()>,
    ) -> OsdResult<()> {
        self.change_map_with(peer, f).map(|_| ())
    }

    fn change_map_with(
        &self,
        peer: bool,
        f: impl FnOnce(&mut OsdMap) -> OsdResult<()>,
    ) -> OsdResult<Arc<OsdMap>> {
        let _serial = self.map_change.lock();
        if peer {
            self.gate.begin_peering();
            for o in self.osds() {
                o.wait_idle();
            }
        }
        let r = self.apply_map_change(peer, f);
        if peer {
            for mut op in self.gate.end_peering() {
                op.inline = false;
                self.submit(op);
            }
        }
        let r = match r {
            Ok(map) if peer => {
                let bump = || self.changes.send_modify(|v| *v += 1);
                peer_all(&self.osds(), &map, &bump).map(|_| map)
            }
            other => other,
        };
        self.changes.send_modify(|v| *v += 1);
        r
    }

    fn apply_map_change(
        &self,
        peer: bool,
        f: impl FnOnce(&mut OsdMap) -> OsdResult<()>,
    ) -> OsdResult<Arc<OsdMap>> {
        let mut map = (*self.shared.map()).clone();
        f(&mut map)?;
        map.epoch += 1;
        map.save(&self.dir)?;
        let map = Arc::new(map);
        if peer {
            // Before any op can see the new map: no PG serves under it
            // until it is peered.
            mark_pending(&self.osds());
        }
        *self.shared.map.write() = map.clone();
        Ok(map)
    }

    /// Admit and route a client op (or park it while peering).
    fn submit(&self, op: ClientOp) {
        match self.gate.admit(op) {
            Admit::Go(op) => self.route(op),
            Admit::Parked => {}
            Admit::Closed(op) => fail(op, RadosError::ShuttingDown),
        }
    }

    fn locate(&self, pool: PoolId, target: &Target) -> Result<(PgId, OsdId)> {
        let map = self.shared.map();
        let p = map
            .pool(pool)
            .ok_or_else(|| RadosError::PoolNotFound(pool.to_string()))?;
        let pg = match target {
            Target::Object(name) => object_pg(name, p.info.pg_num),
            Target::Pg(pg) => *pg,
        };
        let acting = self.shared.acting(&map, &p.info, pg);
        if acting.len() < p.info.min_size.max(1) as usize {
            return Err(OsdError::Undersized {
                pool,
                pg,
                up: acting.len(),
                min_size: p.info.min_size,
            }
            .into());
        }
        Ok((PgId { pool, pg }, acting[0]))
    }

    /// Send an admitted op to its PG's primary.
    fn route(&self, op: ClientOp) {
        let gate: Arc<dyn Leave> = self.gate.clone();
        let located = self.locate(op.pool, &op.target);
        let name = match op.target {
            Target::Object(n) => n,
            Target::Pg(_) => String::new(),
        };
        let inline = op.inline;
        let send = |pgid: PgId, primary: OsdId, ev: PgEvent| {
            // An OSD that is gone drops the event; its reply answers ShuttingDown.
            if let Some(o) = self.osd(primary) {
                if inline {
                    o.enqueue_client(pgid, ev);
                } else {
                    o.enqueue(pgid, ev);
                }
            }
        };
        match op.kind {
            ClientKind::Read { snap, ops, done } => {
                let reply = Reply::new(done, gate);
                match located {
                    Ok((pgid, primary)) => send(
                        pgid,
                        primary,
                        PgEvent::Read {
                            name,
                            snap,
                            ops,
                            reply,
                        },
                    ),
                    Err(e) => reply.send(Err(e)),
                }
            }
            ClientKind::Write { snapc, ops, done } => {
                let reply = Reply::new(done, gate);
                match located {
                    Ok((pgid, primary)) => send(
                        pgid,
                        primary,
                        PgEvent::Write {
                            name,
                            snapc,
                            ops,
                            reply,
                        },
                    ),
                    Err(e) => reply.send(Err(e)),
                }
            }
            ClientKind::Trim { snap, done } => {
                let reply = Reply::new(done, gate);
                match located {
                    Ok((pgid, primary)) => send(pgid, primary, PgEvent::Trim { snap, reply }),
                    Err(e) => reply.send(Err(e)),
                }
            }
        }
    }

    fn pool_create(
        &self,
        name: &str,
        size: Option<u32>,
        min_size: Option<u32>,
        pg_num: Option<u32>,
    ) -> OsdResult<PoolInfo> {
        let mut created = None;
        self.change_map(true, |m| {
            if m.pools.iter().any(|p| p.info.name == name) {
                return Err(OsdError::PoolExists(name.to_string()));
            }
            let size = size.unwrap_or(self.config.default_pool_size);
            let in_osds = m.osds.iter().filter(|o| o.in_).count();
            if size == 0 {
                return Err(OsdError::InvalidArgument(
                    "pool size must be at least 1".into(),
                ));
            }
            if size as usize > in_osds {
                return Err(OsdError::SizeTooLarge {
                    size,
                    osds: in_osds,
                });
            }
            let min_size = min_size.unwrap_or(size.div_ceil(2).max(1));
            if min_size == 0 || min_size > size {
                return Err(OsdError::InvalidArgument(format!(
                    "min_size {min_size} must be between 1 and the size {size}"
                )));
            }
            let pg_num = pg_num.unwrap_or(self.config.default_pg_num);
            if pg_num == 0 {
                return Err(OsdError::InvalidArgument(
                    "pg_num must be at least 1".into(),
                ));
            }
            let info = PoolInfo {
                id: m.next_pool_id,
                name: name.to_string(),
                size,
                min_size,
                pg_num,
            };
            m.next_pool_id += 1;
            m.pools.push(PoolEntry {
                info: info.clone(),
                snap_seq: 0,
                removed_snaps: Default::default(),
            });
            created = Some(info);
            Ok(())
        })?;
        created.ok_or_else(|| OsdError::InvalidArgument("pool was not created".into()))
    }

    fn snap_create(&self, pool: PoolId) -> OsdResult<SnapId> {
        let map = self.change_map_with(false, |m| {
            let p = m
                .pool_mut(pool)
                .ok_or_else(|| OsdError::PoolNotFound(pool.to_string()))?;
            p.snap_seq += 1;
            Ok(())
        })?;
        Ok(map.pool(pool).map(|p| p.snap_seq).unwrap_or_default())
    }

    /// Record the removal in the map, then trim every PG of the pool and wait.
    fn snap_remove(self: &Arc<Self>, pool: PoolId, snap: SnapId) -> Result<()> {
        let mut missing = false;
        let map = self.change_map_with(false, |m| {
            let p = m
                .pool_mut(pool)
                .ok_or_else(|| OsdError::PoolNotFound(pool.to_string()))?;
            if snap == 0 || snap > p.snap_seq || !p.removed_snaps.insert(snap) {
                missing = true;
                return Err(OsdError::InvalidArgument(format!("no snap {snap}")));
            }
            Ok(())
        });
        let map = match map {
            Err(_) if missing => return Err(RadosError::NotFound),
            other => other?,
        };
        let pg_num = map.pool(pool).map(|p| p.info.pg_num).unwrap_or_default();
        let trims = (0..pg_num)
            .map(|pg| PendingTrim { pool, pg, snap })
            .collect();
        let failed = self.run_trims(trims);
        if failed.is_empty() {
            return Ok(());
        }
        // The snapshot is gone for readers already; the clones of the PGs
        // that could not trim now are trimmed once they peer again.
        log::warn!(
            "snap {snap} of pool {pool}: {} PGs could not trim now; retried after peering",
            failed.len()
        );
        self.change_map(false, |m| {
            m.pending_trims.extend(failed);
            Ok(())
        })?;
        Ok(())
    }

    /// Trim PGs and wait; returns the trims that failed.
    fn run_trims(&self, trims: Vec<PendingTrim>) -> Vec<PendingTrim> {
        let waits: Vec<_> = trims
            .into_iter()
            .map(|t| {
                let (tx, rx) = oneshot::channel();
                self.submit(ClientOp {
                    pool: t.pool,
                    target: Target::Pg(t.pg),
                    inline: false,
                    kind: ClientKind::Trim {
                        snap: t.snap,
                        done: sender(tx),
                    },
                });
                (t, rx)
            })
            .collect();
        waits
            .into_iter()
            .filter_map(|(t, rx)| match rx.blocking_recv() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => {
                    log::warn!("trimming snap {} in pg {}.{:x}: {e}", t.snap, t.pool, t.pg);
                    Some(t)
                }
                Err(_) => Some(t),
            })
            .collect()
    }

    /// Retry the trims the map still owes (after peering, and at open).
    fn retry_pending_trims(&self) -> OsdResult<()> {
        let pending = self.shared.map().pending_trims.clone();
        if pending.is_empty() {
            return Ok(());
        }
        let failed = self.run_trims(pending.clone());
        self.change_map(false, |m| {
            m.pending_trims
                .retain(|t| !pending.contains(t) || failed.contains(t));
            Ok(())
        })
    }

    fn list_objects(&self, pool: PoolId) -> Result<Vec<String>> {
        // Not while PGs are being peered: a primary not yet recovered would
        // miss objects. (Taken before the gate, like map changes.)
        let _serial = self.map_change.lock();
        if !self.gate.enter_blocking() {
            return Err(RadosError::ShuttingDown);
        }
        let r = (|| {
            let map = self.shared.map();
            let p = map
                .pool(pool)
                .ok_or_else(|| RadosError::PoolNotFound(pool.to_string()))?;
            let mut names = Vec::new();
            for pg in 0..p.info.pg_num {
                let Some(&primary) = map.pg_acting(&p.info, pg).first() else {
                    continue;
                };
                let Some(o) = self.osd(primary) else {
                    continue;
                };
                let keys = o
                    .store
                    .list_objects(PgId { pool, pg })
                    .map_err(|e| super::error::store_to_rados(&e))?;
                names.extend(keys.into_iter().map(|k| k.name));
            }
            names.sort();
            names.dedup();
            Ok(names)
        })();
        self.gate.leave();
        r
    }
}

/// Answer an op that was never admitted.
fn fail(op: ClientOp, e: RadosError) {
    match op.kind {
        ClientKind::Read { done, .. } => done(Err(e)),
        ClientKind::Write { done, .. } | ClientKind::Trim { done, .. } => done(Err(e)),
    }
}

/// The stores' answers to one flush, gathered into one result.
struct Gather {
    left: AtomicUsize,
    /// The stores that could not commit, and why.
    failed: Mutex<Vec<(OsdId, String)>>,
    inner: Arc<Inner>,
    /// Whether to go on without the stores that could not commit.
    first_try: bool,
    /// Failed stores whose writes this flush commits on the others.
    covers: BTreeSet<OsdId>,
    done: Mutex<Option<Done<()>>>,
}

impl Gather {
    /// One store's answer; the last one calls `done`.
    fn one(&self, id: OsdId, r: StoreResult<()>) {
        if let Err(e) = r {
            log::error!("flush: osd.{id} could not commit: {e}");
            self.failed.lock().push((id, e.to_string()));
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(done) = self.done.lock().take() else {
            return;
        };
        let failed = std::mem::take(&mut *self.failed.lock());
        let Some((id, e)) = failed.first().cloned() else {
            self.inner.covered.lock().extend(&self.covers);
            return done(Ok(()));
        };
        if !self.first_try {
            return done(Err(RadosError::Io(format!(
                "osd.{id} could not commit: {e}"
            ))));
        }
        // The answer may be on a store's commit thread, which peering waits for.
        let inner = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Done<()>>();
        let spawned = std::thread::Builder::new()
            .name("rbdfs-flush".into())
            .spawn(move || {
                if let Ok(done) = rx.recv() {
                    inner.flush_without(failed, done);
                }
            });
        match spawned {
            Ok(_) => drop(tx.send(done)),
            Err(err) => done(Err(RadosError::Io(format!(
                "osd.{id} could not commit: {e} (and spawning a thread: {err})"
            )))),
        }
    }
}

/// A completion that hands the result to a waiting task.
fn sender<T: Send + 'static>(tx: oneshot::Sender<Result<T>>) -> Done<T> {
    Box::new(move |r| drop(tx.send(r)))
}

/// Run `f` on its own thread (map changes fsync and may wait for peering;
/// the caller's async runtime must not block on that).
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> BoxFuture<'static, Result<T>> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("rbdfs-admin".into())
        .spawn(move || drop(tx.send(f())));
    Box::pin(async move {
        spawned.map_err(|e| RadosError::Io(format!("spawning a thread: {e}")))?;
        rx.await.unwrap_or(Err(RadosError::ShuttingDown))
    })
}

/// Submit a client op and wait for its reply; an op answered `Busy` (its PG
/// cannot be served under this map) is resubmitted once the map changes,
/// until `op_timeout` runs out.
fn submit_retrying<T: Send + 'static>(
    inner: Arc<Inner>,
    make: impl Fn(Done<T>) -> ClientOp + Send + 'static,
) -> BoxFuture<'static, Result<T>> {
    // The first attempt is queued before the future is returned: ops issued
    // one after another reach their primary in that order.
    let deadline = Instant::now() + inner.config.op_timeout;
    let mut changes = inner.changes.subscribe();
    let (tx, first) = oneshot::channel();
    inner.submit(make(sender(tx)));
    Box::pin(async move {
        let mut rx = first;
        loop {
            let why = match rx.await.unwrap_or(Err(RadosError::ShuttingDown)) {
                Err(RadosError::Busy(why)) => why,
                r => return r,
            };
            log::debug!("client op waits for the cluster: {why}");
            // Retried at the next change: a new map, a PG peered, or the
            // monitor's tick (which bounds the wait by the timeout).
            inner.blocked.fetch_add(1, Ordering::SeqCst);
            let waited = if inner.stopping.load(Ordering::SeqCst) {
                Err(RadosError::ShuttingDown)
            } else if Instant::now() >= deadline {
                Err(RadosError::TimedOut(format!(
                    "waited {:?} for the cluster to serve the op: {why}",
                    inner.config.op_timeout
                )))
            } else {
                changes
                    .changed()
                    .await
                    .map_err(|_| RadosError::ShuttingDown)
            };
            inner.blocked.fetch_sub(1, Ordering::SeqCst);
            waited?;
            changes.borrow_and_update();
            let (tx, next) = oneshot::channel();
            inner.submit(make(sender(tx)));
            rx = next;
        }
    })
}

/// The monitor: marks OSDs down when their stores are reported failing or
/// fail the health poll, and ticks the change signal so that blocked ops
/// notice their timeout.
fn spawn_monitor(inner: &Arc<Inner>, failures: std::sync::mpsc::Receiver<OsdId>) -> OsdResult<()> {
    use std::sync::mpsc::RecvTimeoutError;
    let weak = Arc::downgrade(inner);
    let interval = inner.config.monitor_interval;
    std::thread::Builder::new()
        .name("rbdfs-osdmon".into())
        .spawn(move || {
            loop {
                let msg = failures.recv_timeout(interval);
                let Some(inner) = weak.upgrade() else { return };
                if inner.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let mut failed = BTreeSet::new();
                match msg {
                    Ok(id) => {
                        failed.insert(id);
                        failed.extend(failures.try_iter());
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let map = inner.shared.map();
                let is_up = |id: OsdId| map.osd(id).is_some_and(|i| i.up);
                for o in inner.osds() {
                    if is_up(o.id) {
                        if let Err(e) = o.store.check_health() {
                            log::error!("osd.{}: store unhealthy: {e}", o.id);
                            failed.insert(o.id);
                        }
                    }
                }
                failed.retain(|id| is_up(*id));
                if !failed.is_empty() {
                    if let Err(e) = inner.mark_down(&failed) {
                        log::error!("marking {failed:?} down: {e}");
                    }
                }
                inner.changes.send_modify(|v| *v += 1);
            }
        })
        .map(drop)
        .map_err(|e| OsdError::io("starting the monitor thread", e))
}

/// `osd.1, osd.2`
fn osd_list(ids: &BTreeSet<OsdId>) -> String {
    let each: Vec<String> = ids.iter().map(|id| format!("osd.{id}")).collect();
    each.join(", ")
}

/// What a read is refused for before it is sent.
fn check_read(inner: &Inner, pool: PoolId, snap: SnapId, ops: &[ReadOp]) -> Result<()> {
    if inner.shared.map().pool(pool).is_none() {
        return Err(RadosError::PoolNotFound(pool.to_string()));
    }
    if snap != SNAP_HEAD && ops.iter().any(|o| matches!(o, ReadOp::ListSnaps)) {
        return Err(RadosError::InvalidArgument(
            "list_snaps is only valid at the head".into(),
        ));
    }
    Ok(())
}

/// What a write is refused for before it is sent.
fn check_write(snapc: &SnapContext) -> Result<()> {
    if !snapc.is_valid() {
        return Err(RadosError::InvalidArgument(format!(
            "bad snap context {snapc:?}"
        )));
    }
    Ok(())
}

impl RadosBackend for Cluster {
    fn read(
        &self,
        pool: PoolId,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
    ) -> BoxFuture<'static, Result<Vec<ReadResult>>> {
        if let Err(e) = check_read(&self.inner, pool, snap, &ops) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let oid = oid.to_string();
        submit_retrying(self.inner.clone(), move |done| ClientOp {
            pool,
            target: Target::Object(oid.clone()),
            inline: false,
            kind: ClientKind::Read {
                snap,
                ops: ops.clone(),
                done,
            },
        })
    }

    fn write(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
    ) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = check_write(&snapc) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let oid = oid.to_string();
        submit_retrying(self.inner.clone(), move |done| ClientOp {
            pool,
            target: Target::Object(oid.clone()),
            inline: false,
            kind: ClientKind::Write {
                snapc: snapc.clone(),
                ops: ops.clone(),
                done,
            },
        })
    }

    /// One attempt, answered from the thread that completes it: an OSD
    /// worker, or the caller's own thread when the PG was idle.
    fn read_then(
        &self,
        pool: PoolId,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
        done: Done<Vec<ReadResult>>,
    ) {
        if let Err(e) = check_read(&self.inner, pool, snap, &ops) {
            return done(Err(e));
        }
        self.inner.submit(ClientOp {
            pool,
            target: Target::Object(oid.to_string()),
            inline: true,
            kind: ClientKind::Read { snap, ops, done },
        });
    }

    /// One attempt, answered from the thread that completes it: an OSD
    /// worker, or the caller's own thread when the PG was idle.
    fn write_then(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
        done: Done<()>,
    ) {
        if let Err(e) = check_write(&snapc) {
            return done(Err(e));
        }
        self.inner.submit(ClientOp {
            pool,
            target: Target::Object(oid.to_string()),
            inline: true,
            kind: ClientKind::Write { snapc, ops, done },
        });
    }

    /// Every write that completed before the call is applied on each of
    /// its replicas, so it is in each one's journal: the flush is a commit
    /// of every up OSD's store, and fails if one of them fails it (a flush
    /// never claims what a replica could not make durable).
    fn flush(&self) -> BoxFuture<'static, Result<()>> {
        let (tx, rx) = oneshot::channel();
        self.inner.commit_all(false, sender(tx));
        Box::pin(async move { rx.await.unwrap_or(Err(RadosError::ShuttingDown)) })
    }

    /// [`Cluster::flush`], with one store's sync (the last with
    /// records to sync) run on the caller's thread: at qd1 an fsync then
    /// wakes neither a task nor a store thread.
    fn flush_then(&self, done: Done<()>) {
        self.inner.commit_all(true, done)
    }

    fn list_objects(&self, pool: PoolId) -> BoxFuture<'static, Result<Vec<String>>> {
        let inner = self.inner.clone();
        blocking(move || inner.list_objects(pool))
    }

    fn snap_create(&self, pool: PoolId) -> BoxFuture<'static, Result<SnapId>> {
        let inner = self.inner.clone();
        blocking(move || Ok(inner.snap_create(pool)?))
    }

    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> BoxFuture<'static, Result<()>> {
        let inner = self.inner.clone();
        blocking(move || inner.snap_remove(pool, snap))
    }

    fn pool_create(
        &self,
        name: &str,
        size: Option<u32>,
        min_size: Option<u32>,
        pg_num: Option<u32>,
    ) -> BoxFuture<'static, Result<PoolInfo>> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking(move || Ok(inner.pool_create(&name, size, min_size, pg_num)?))
    }

    fn pool_list(&self) -> Result<Vec<PoolInfo>> {
        Ok(self
            .inner
            .shared
            .map()
            .pools
            .iter()
            .map(|p| p.info.clone())
            .collect())
    }
}
