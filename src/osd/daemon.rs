//! One OSD: its store, its sharded op queue and its PGs. Events for a PG
//! (client ops on the primary, repops on replicas, store completions and
//! replica replies on the primary) all go through the PG's queue, so a PG's
//! state is only ever touched by one worker at a time, in event order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{OnceLock, Weak};

use super::PgId;
use super::cluster::ClusterConfig;
use super::error::{OsdError, OsdResult, store_to_rados};
use super::op_queue::{self, ShardedOpQueue};
use super::osdmap::{OsdId, OsdMap};
use super::pg::{ColdRead, Pg, PgEvent, check_store};
use super::pg_holders::PgHolders;
use super::pg_log::PgLog;
use crate::rados::{ReadResult, SnapId};
use crate::store::{ObjectKey, ObjectStore, StoreError, StoreResult, Transaction, TxOp};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, RwLock};

/// Totals of what recovery copied since the cluster was opened.
#[derive(Default)]
pub(crate) struct RecoveryCounters {
    /// Objects copied by log-based recovery (only those a replica missed).
    pub log_objects: AtomicU64,
    /// Objects copied by backfill (every object of a PG).
    pub backfill_objects: AtomicU64,
    pub bytes: AtomicU64,
}

/// Bad copies in one PG: (object, snap) -> the OSDs holding them.
pub(crate) type DamagedCopies = BTreeMap<(String, SnapId), BTreeSet<OsdId>>;

/// What every OSD of a cluster shares.
pub(crate) struct Shared {
    pub map: RwLock<Arc<OsdMap>>,
    pub pg_log_max_entries: usize,
    /// Where OSDs report a failing store (an OSD's own or a replica's);
    /// the cluster's monitor thread marks the OSD down.
    pub failures: Mutex<Option<std::sync::mpsc::Sender<OsdId>>>,
    /// Copies found bad by a verified read (pg -> (object, snap) -> OSDs),
    /// until a scrub repairs or clears them.
    pub damaged: Mutex<BTreeMap<PgId, DamagedCopies>>,
    pub recovery: RecoveryCounters,
    /// PGs being recovered right now and how ("recovering", "backfilling").
    pub activity: Mutex<HashMap<PgId, &'static str>>,
    /// PGs served by fewer OSDs than the map says while the others are
    /// backfilled (Ceph's pg_temp): pg -> the serving OSDs, primary first.
    pub pg_temp: Mutex<HashMap<PgId, Vec<OsdId>>>,
    /// Bound on backfill copy bandwidth (see `ClusterConfig`).
    pub recovery_max_bytes_per_sec: Option<u64>,
    /// A map change is peering PGs (their locks may be held for long).
    pub peering: crate::sync::AtomicBool,
    /// Client ops only queue (none runs on its submitter's thread): up
    /// while peering may hold a PG's lock for long, which a FUSE thread
    /// would otherwise wait for; down again for the live backfill, which
    /// locks only PGs that take no client ops.
    pub queue_only: crate::sync::AtomicBool,
    /// The last recovery-rate sample: (when, objects recovered by then).
    pub rate_sample: Mutex<Option<(std::time::Instant, u64)>>,
    /// Each PG's holders of every acknowledged write (saved in the
    /// cluster directory before they change).
    pub holders: PgHolders,
}

impl Shared {
    pub fn new(map: OsdMap, pg_log_max_entries: usize, holders: PgHolders) -> Self {
        Shared {
            map: RwLock::new(Arc::new(map)),
            pg_log_max_entries,
            failures: Mutex::new(None),
            damaged: Mutex::new(BTreeMap::new()),
            recovery: RecoveryCounters::default(),
            activity: Mutex::new(HashMap::new()),
            pg_temp: Mutex::new(HashMap::new()),
            recovery_max_bytes_per_sec: None,
            peering: crate::sync::AtomicBool::new(false),
            queue_only: crate::sync::AtomicBool::new(false),
            rate_sample: Mutex::new(None),
            holders,
        }
    }

    pub fn map(&self) -> Arc<OsdMap> {
        self.map.read().clone()
    }

    /// The OSDs serving a PG now: its pg_temp while it is backfilled, else
    /// the map's acting set.
    pub fn acting(&self, map: &OsdMap, pool: &crate::rados::PoolInfo, pg: u32) -> Vec<OsdId> {
        let id = PgId { pool: pool.id, pg };
        match self.pg_temp.lock().get(&id) {
            Some(t) => t.clone(),
            None => map.pg_acting(pool, pg),
        }
    }

    /// An OSD's store is failing: have it marked down (asynchronously; the
    /// reporter may be one of that OSD's own workers).
    pub fn report_failure(&self, osd: OsdId, why: &str) {
        log::error!("osd.{osd} reported failed: {why}");
        if let Some(tx) = self.failures.lock().as_ref() {
            let _ = tx.send(osd);
        }
    }

    pub fn note_damaged(&self, pg: PgId, key: &ObjectKey, osd: OsdId) {
        self.damaged
            .lock()
            .entry(pg)
            .or_default()
            .entry((key.name.clone(), key.snap))
            .or_default()
            .insert(osd);
    }

    pub fn count_recovered(&self, backfill: bool, objects: u64, bytes: u64) {
        let c = &self.recovery;
        if backfill {
            c.backfill_objects.fetch_add(objects, Ordering::Relaxed);
        } else {
            c.log_objects.fetch_add(objects, Ordering::Relaxed);
        }
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// An in-process OSD.
pub(crate) struct Osd {
    pub id: OsdId,
    pub store: Arc<dyn ObjectStore>,
    pub shared: Arc<Shared>,
    queue: OnceLock<ShardedOpQueue<PgId, PgEvent>>,
    /// Reads a worker handed over because they would wait for the disk,
    /// each its own key, so any of the pool's threads takes the next.
    cold_reads: OnceLock<ShardedOpQueue<u64, ColdRead>>,
    next_cold_read: AtomicU64,
    pgs: Mutex<HashMap<PgId, Arc<Mutex<Pg>>>>,
    /// Every OSD of the cluster by id (this one included); weak so that the
    /// OSDs do not keep each other alive. Grows when OSDs are added.
    peers: RwLock<Vec<Weak<Osd>>>,
}

impl Osd {
    /// Start an OSD over an open store with the op queue workers and
    /// cold-read threads `config` asks for.
    pub fn start(
        id: OsdId,
        store: Arc<dyn ObjectStore>,
        shared: Arc<Shared>,
        config: &ClusterConfig,
    ) -> OsdResult<Arc<Osd>> {
        let osd = Arc::new(Osd {
            id,
            store,
            shared,
            queue: OnceLock::new(),
            cold_reads: OnceLock::new(),
            next_cold_read: AtomicU64::new(0),
            pgs: Mutex::new(HashMap::new()),
            peers: RwLock::new(Vec::new()),
        });
        let starting = |e| OsdError::io(format!("starting the workers of osd.{id}"), e);
        let weak = Arc::downgrade(&osd);
        let queue = ShardedOpQueue::new(
            &format!("osd.{id}"),
            config.osd_op_num_shards,
            config.osd_op_num_threads_per_shard,
            Arc::new(move |pg: &PgId, events: Vec<PgEvent>| {
                if let Some(osd) = weak.upgrade() {
                    osd.handle(*pg, events);
                }
            }),
        )
        .map_err(starting)?;
        let _ = osd.queue.set(queue);
        let weak = Arc::downgrade(&osd);
        let cold_reads = ShardedOpQueue::new(
            &format!("osd.{id}-rd"),
            1,
            config.osd_cold_read_threads,
            Arc::new(move |_: &u64, reads: Vec<ColdRead>| {
                if let Some(osd) = weak.upgrade() {
                    for r in reads {
                        osd.cold_read(r);
                    }
                }
            }),
        )
        .map_err(starting)?;
        let _ = osd.cold_reads.set(cold_reads);
        Ok(osd)
    }

    pub fn set_peers(&self, peers: Vec<Weak<Osd>>) {
        *self.peers.write() = peers;
    }

    pub fn peer(&self, id: OsdId) -> Option<Arc<Osd>> {
        self.peers.read().get(id as usize)?.upgrade()
    }

    /// Queue an event for a PG of this OSD. From inside a handler (a
    /// replica op, its reply), an idle PG is claimed by the calling thread
    /// instead, which runs the event once it leaves its handler
    /// ([`ShardedOpQueue::enqueue_here`]). A stopped OSD drops it (dropping
    /// a client reply answers `ShuttingDown`).
    pub fn enqueue(&self, pg: PgId, ev: PgEvent) {
        if let Some(q) = self.queue.get() {
            if q.enqueue_here(pg, ev).is_err() {
                log::debug!("osd.{}: dropped an event for {pg:?}: stopping", self.id);
            }
        }
    }

    /// Queue a client op for a PG of this OSD, or run it on the calling
    /// thread when the PG has nothing queued or running (see
    /// [`ShardedOpQueue::enqueue_or_run`]). A stopped OSD drops it.
    pub fn enqueue_client(&self, pg: PgId, ev: PgEvent) {
        if let Some(q) = self.queue.get() {
            // Not while PGs peer: a PG being recovered is locked for as long
            // as that takes, and the calling thread (a FUSE thread) would
            // wait for it. Peering raises the flag before it waits for the
            // queues to go idle (`peer_all`), so an op that saw it down is
            // waited for.
            let may_run = || !self.shared.queue_only.load(Ordering::SeqCst);
            if q.enqueue_or_run(pg, ev, may_run).is_err() {
                log::debug!("osd.{}: dropped an op for {pg:?}: stopping", self.id);
            }
        }
    }

    /// Hand a read that would wait for the disk to the cold-read threads.
    /// A stopped OSD hands it back.
    pub fn defer_read(&self, read: ColdRead) -> Result<(), ColdRead> {
        let Some(q) = self.cold_reads.get() else {
            return Err(read);
        };
        let n = self.next_cold_read.fetch_add(1, Ordering::Relaxed);
        q.enqueue(n, read)
    }

    /// On a cold-read thread: read, answer, and tell the PG the object may
    /// be written again.
    fn cold_read(&self, r: ColdRead) {
        let got = self
            .store
            .read_missed(&r.key, r.off, r.len)
            .map(|data| vec![ReadResult::Data(data)])
            .map_err(|e| store_to_rados(&e));
        r.reply.send(check_store(self, got));
        // Run here when the PG is idle: a worker woken for this alone cost
        // a seventh of the CPU of a cold random-read run. This thread holds
        // nothing of the PG.
        let done = PgEvent::ReadDone { name: r.key.name };
        op_queue::outside_handler(|| self.enqueue_client(r.key.coll, done));
    }

    /// Returns once no event is queued or running, cold reads included.
    pub fn wait_idle(&self) {
        let (Some(q), Some(reads)) = (self.queue.get(), self.cold_reads.get()) else {
            return;
        };
        q.wait_idle();
        // A cold read finishing queues an event for its PG.
        reads.wait_idle();
        q.wait_idle();
    }

    /// Stop the cold-read threads (their reads answered, their `ReadDone` run or
    /// queued), then the op queue (which runs what is queued, those
    /// included, so no op stays parked behind a cold read).
    pub fn stop(&self) {
        if let Some(q) = self.cold_reads.get() {
            q.stop();
        }
        if let Some(q) = self.queue.get() {
            q.stop();
        }
    }

    pub fn pg(&self, id: PgId) -> Option<Arc<Mutex<Pg>>> {
        self.pgs.lock().get(&id).cloned()
    }

    pub fn pgs(&self) -> Vec<(PgId, Arc<Mutex<Pg>>)> {
        self.pgs
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// The PG, loaded from the store or created empty there.
    pub fn ensure_pg(&self, id: PgId) -> OsdResult<Arc<Mutex<Pg>>> {
        self.load_pg(id, true)?
            .ok_or_else(|| OsdError::io("creating a pg", std::io::Error::other("not created")))
    }

    /// The PG if this OSD holds a copy of it (loading it from the store).
    pub fn find_pg(&self, id: PgId) -> OsdResult<Option<Arc<Mutex<Pg>>>> {
        self.load_pg(id, false)
    }

    fn load_pg(&self, id: PgId, create: bool) -> OsdResult<Option<Arc<Mutex<Pg>>>> {
        if let Some(pg) = self.pg(id) {
            return Ok(Some(pg));
        }
        let store_err = |source| OsdError::Store {
            osd: self.id,
            source,
        };
        let log = if self.store.list_collections().contains(&id) {
            let meta = self.store.coll_meta_get(id).map_err(store_err)?;
            PgLog::from_meta(&meta).map_err(|e| {
                store_err(StoreError::Corrupt {
                    path: format!("osd.{} pg {}.{:x}", self.id, id.pool, id.pg),
                    why: format!("pg log: {e}"),
                })
            })?
        } else if !create {
            return Ok(None);
        } else {
            let log = PgLog::default();
            let mut t = Transaction::new();
            t.push(TxOp::CreateCollection(id));
            t.push(TxOp::CollMetaSet {
                coll: id,
                entries: log.to_meta(),
            });
            queue_and_wait(self.store.as_ref(), t).map_err(store_err)?;
            log
        };
        let pg = Arc::new(Mutex::new(Pg::new(id, log)));
        self.pgs.lock().insert(id, pg.clone());
        Ok(Some(pg))
    }

    fn handle(self: &Arc<Self>, id: PgId, events: Vec<PgEvent>) {
        let Some(pg) = self.pg(id) else {
            // A client op that raced peering (the PG is created here when
            // it is peered): it is retried.
            log::debug!(
                "osd.{}: {} events for unknown pg {id:?}",
                self.id,
                events.len()
            );
            for ev in events {
                super::pg::refuse(ev, id);
            }
            return;
        };
        let mut pg = pg.lock();
        for ev in events {
            pg.handle(self, ev);
        }
    }
}

/// Queue a transaction and wait until it is applied (for peering and setup,
/// which run on their own thread while no client I/O is in flight).
pub(crate) fn queue_and_wait(store: &dyn ObjectStore, t: Transaction) -> StoreResult<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    store.queue_transaction(t, Box::new(|_| {}), Box::new(move |r| drop(tx.send(r))))?;
    rx.recv()
        .map_err(|_| StoreError::Failed("the store dropped a transaction".into()))?
}
