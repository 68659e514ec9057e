//! A placement group on one OSD: on the primary it executes client ops, on a
//! replica it applies repops.
//!
//! Write path (primary), as in Ceph's `ReplicatedPG::execute_ctx`:
//!
//! ```text
//!  client write ─> load PROJECTED object state (in-flight writes included)
//!    ─> make writeable (COW clone when snapc.seq > snapset.seq)
//!    ─> evaluate every step on a copy; any failure: reply, nothing queued
//!    ─> one Transaction: clone + data ops + "_"/"snapset" attrs + PG log
//!       entry + PG info
//!    ─> queue on the local store, send the same transaction to each replica
//!    ─> in-flight op: waiting_for_applied = acting set
//!  each OSD: applied (readable) ─> reply (the primary's own store usually
//!  applies before queue_transaction returns: handled on the spot)
//!  all applied ─> client reply
//!  commits (journal durable) are the stores' business: a flush asks them
//! ```
//!
//! Reads run on the primary's store directly, except that a read of an object
//! with writes in flight waits ("wait for readable") until they are applied;
//! writes to that object arriving after the waiting read queue behind it, so
//! each read sees exactly the writes that came before it. A read whose bytes
//! are not in the page cache is handed to the OSD's cold-read threads rather
//! than waiting for the disk on a worker; writes to that object wait for it
//! the same way (Ceph's object context read/write lock, per object).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;

use super::PgId;
use super::daemon::Osd;
use super::error::store_to_rados;
use super::object_info::{
    CloneRecord, OI_ATTR, ObjectInfo, SNAPSET_ATTR, SnapSet, user_attr_key, user_attrs,
};
use super::osdmap::{OsdId, PoolEntry};
use super::pg_log::{Eversion, LogOp, PgLog, PgLogEntry};
use super::tracker::Reply;
use crate::rados::mem::MAX_OBJECT_SIZE;
use crate::rados::{
    CloneInfo, ObjectStat, RadosError, ReadOp, ReadResult, Result, SNAP_HEAD, SnapContext, SnapId,
    SnapSetInfo, WriteOp,
};
use crate::store::{ObjectKey, StoreError, StoreResult, Transaction, TxOp};
use crate::sync::Mutex;

/// Everything that happens to a PG, in its queue.
pub(crate) enum PgEvent {
    Read {
        name: String,
        snap: SnapId,
        ops: Vec<ReadOp>,
        reply: Reply<Vec<ReadResult>>,
    },
    Write {
        name: String,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
        reply: Reply<()>,
    },
    /// Remove a snapshot from every clone of the PG (the snap trimmer).
    Trim { snap: SnapId, reply: Reply<()> },
    /// A replica's share of a write.
    RepOp {
        from: OsdId,
        tid: u64,
        txn: Transaction,
        entries: Vec<PgLogEntry>,
    },
    /// Write `tid` is applied (readable) on OSD `from`, or failed there.
    RepReply {
        from: OsdId,
        tid: u64,
        result: StoreResult<()>,
    },
    /// A read of `name` handed to the cold-read threads is answered.
    ReadDone { name: String },
}

/// A read that would have waited for the disk, for a cold-read thread. Until
/// its `ReadDone`, writes to the object wait, so it reads what was there
/// when it arrived.
pub(crate) struct ColdRead {
    pub key: ObjectKey,
    pub off: u64,
    pub len: u64,
    pub reply: Reply<Vec<ReadResult>>,
}

/// What a read found: the results, or that its one data read must wait for
/// the disk.
enum Reading {
    Done(Vec<ReadResult>),
    Cold { key: ObjectKey, off: u64, len: u64 },
}

/// An object's state as the write path needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ObjState {
    /// The head exists (present and not a whiteout).
    pub exists: bool,
    pub size: u64,
    /// User extended attributes of the head.
    pub xattrs: BTreeMap<String, Bytes>,
    pub snapset: SnapSet,
    /// crc32c of the head's whole data when known (see object_info.rs).
    pub digest: Option<u32>,
}

impl ObjState {
    /// Neither head nor clones.
    fn vanished(&self) -> bool {
        !self.exists && self.snapset.clones.is_empty()
    }
}

struct Projected {
    state: ObjState,
    writes: usize,
}

/// A write until it is applied on every acting OSD. Its commit is not
/// tracked here: a flush asks the stores, peering waits for them, and a store
/// that fails to commit is reported to the monitor by its callback.
struct InFlight {
    names: Vec<String>,
    waiting_for_applied: BTreeSet<OsdId>,
    reply: Option<Reply<()>>,
    error: Option<RadosError>,
    /// Replicas whose store failed this write; they are being marked down.
    failed: BTreeSet<OsdId>,
}

/// A PG on one OSD.
pub(crate) struct Pg {
    pub id: PgId,
    pub log: PgLog,
    /// Acting set from the last peering (primary first); empty on an OSD that
    /// does not serve the PG.
    pub acting: Vec<OsdId>,
    /// Map epoch of the last peering: the epoch of new log entries.
    pub epoch: u64,
    /// Set by peering when the newest copy is on this down OSD: client ops
    /// are refused until it returns.
    pub incomplete: Option<OsdId>,
    /// The map changed and this PG has not been peered under it yet: client
    /// ops are answered Busy (retried) until peering gets to it, while the
    /// PGs already peered serve.
    pub pending: bool,
    next_tid: u64,
    projected: HashMap<String, Projected>,
    inflight: BTreeMap<u64, InFlight>,
    /// Ops waiting on an object, in arrival order: reads behind writes not
    /// yet applied, writes behind cold reads, and whatever came after them.
    waiting_for_readable: HashMap<String, VecDeque<PgEvent>>,
    /// Reads on the cold-read threads, by object.
    cold_reads: HashMap<String, usize>,
    /// Set while something waits for the PG to be idle (peering,
    /// backfill): reads do not go to the cold-read threads, so that a
    /// steady stream of them cannot keep the PG busy.
    pub quiesce_reads: bool,
    /// On a replica: a replicated write failed here since the PG was last
    /// peered. Later ones are refused too, so that its log never records a
    /// write after one it lacks (peering, which recovers what comes after
    /// a replica's last version, would not see the hole).
    pub refusing: bool,
}

fn key(pg: PgId, name: &str, snap: SnapId) -> ObjectKey {
    ObjectKey {
        coll: pg,
        name: name.to_string(),
        snap,
    }
}

fn check_extent(off: u64, len: u64) -> Result<u64> {
    match off.checked_add(len) {
        Some(end) if end <= MAX_OBJECT_SIZE => Ok(end),
        _ => Err(RadosError::InvalidArgument(format!(
            "extent {off}+{len} is past the largest object size {MAX_OBJECT_SIZE}"
        ))),
    }
}

fn io(e: StoreError) -> RadosError {
    store_to_rados(&e)
}

/// An op's result, unless the store behind it failed. An I/O error from a
/// store that turns out to be failing is not the client's: the OSD is
/// reported (to be marked down, a new epoch) and the op answered `Busy`,
/// which the client retries under the new map. Any error is suspect, not
/// only I/O errors: a failed store also answers "no such object".
pub(crate) fn check_store<T>(osd: &Osd, r: Result<T>) -> Result<T> {
    match r {
        Err(e) if !matches!(e, RadosError::Busy(_)) => match osd.store.check_health() {
            Err(h) => {
                osd.shared.report_failure(osd.id, &h.to_string());
                Err(RadosError::Busy(format!(
                    "osd.{} failed ({e}); retried once it is marked down",
                    osd.id
                )))
            }
            Ok(()) => Err(e),
        },
        other => other,
    }
}

/// Load an object's state from a store (applied state).
pub(crate) fn load_state(
    store: &dyn crate::store::ObjectStore,
    pg: PgId,
    name: &str,
) -> Result<Option<ObjState>> {
    let head = key(pg, name, SNAP_HEAD);
    if !store.exists(&head) {
        return Ok(None);
    }
    let attrs = store.getattrs(&head).map_err(io)?;
    let corrupt = |what: &str, e: String| {
        RadosError::Io(format!(
            "object {name} in pg {}.{:x}: bad {what}: {e}",
            pg.pool, pg.pg
        ))
    };
    let oi = match attrs.get(OI_ATTR) {
        Some(b) => ObjectInfo::decode(b).map_err(|e| corrupt("object info", e.to_string()))?,
        None => return Err(corrupt("object info", "missing".into())),
    };
    let snapset = match attrs.get(SNAPSET_ATTR) {
        Some(b) => SnapSet::decode(b).map_err(|e| corrupt("snapset", e.to_string()))?,
        None => SnapSet::default(),
    };
    let size = if oi.whiteout {
        0
    } else {
        store.stat(&head).map_err(io)?
    };
    Ok(Some(ObjState {
        exists: !oi.whiteout,
        size,
        xattrs: if oi.whiteout {
            BTreeMap::new()
        } else {
            user_attrs(&attrs)
        },
        snapset,
        digest: if oi.whiteout { None } else { oi.data_digest },
    }))
}

/// The transaction steps, new state and clone made by a client write, or
/// `None` when the write changes nothing.
struct WritePlan {
    ops: Vec<TxOp>,
    state: ObjState,
    clone: Option<SnapId>,
}

/// Evaluate a compound write against `old` (MemRados semantics, step by step).
fn plan_write(
    pg: PgId,
    name: &str,
    old: &ObjState,
    snapc: &SnapContext,
    ops: &[WriteOp],
    pool: &PoolEntry,
    version: Eversion,
) -> Result<Option<WritePlan>> {
    let head = key(pg, name, SNAP_HEAD);
    let mut st = old.clone();
    let mut t: Vec<TxOp> = Vec::new();
    let mut clone = None;

    // make_writeable: preserve the head for the snapshots taken since it was
    // last written.
    if snapc.seq > st.snapset.seq {
        if st.exists {
            let mut snaps: Vec<SnapId> = snapc
                .snaps
                .iter()
                .copied()
                .filter(|s| *s > st.snapset.seq && !pool.removed_snaps.contains(s))
                .collect();
            snaps.reverse();
            if !snaps.is_empty() {
                t.push(TxOp::Clone {
                    from: head.clone(),
                    to: key(pg, name, snapc.seq),
                });
                st.snapset.clones.push(CloneRecord {
                    id: snapc.seq,
                    snaps,
                    size: st.size,
                });
                clone = Some(snapc.seq);
            }
        }
        st.snapset.seq = snapc.seq;
    }

    for op in ops {
        apply_step(&head, &mut st, &mut t, op)?;
    }

    if t.is_empty() && (st == *old || (old.vanished() && st.vanished())) {
        return Ok(None);
    }
    if st.exists {
        t.push(TxOp::SetAttrs {
            key: head,
            attrs: head_attrs(false, version, &st.snapset, st.digest),
        });
    } else if !st.snapset.clones.is_empty() {
        // Clones remain: keep a whiteout head to carry the snapset.
        t.push(TxOp::Touch(head.clone()));
        t.push(TxOp::SetAttrs {
            key: head,
            attrs: head_attrs(true, version, &st.snapset, None),
        });
    } else {
        t.push(TxOp::Remove(head));
        st = ObjState::default();
    }
    Ok(Some(WritePlan {
        ops: t,
        state: st,
        clone,
    }))
}

fn head_attrs(
    whiteout: bool,
    version: Eversion,
    ss: &SnapSet,
    data_digest: Option<u32>,
) -> BTreeMap<String, Bytes> {
    [
        (
            OI_ATTR.to_string(),
            ObjectInfo {
                whiteout,
                version,
                data_digest,
            }
            .encode(),
        ),
        (SNAPSET_ATTR.to_string(), ss.encode()),
    ]
    .into()
}

/// Create the head if it does not exist (a whiteout or absent head store
/// object holds no data, user attributes or omap).
fn ensure_exists(head: &ObjectKey, st: &mut ObjState, t: &mut Vec<TxOp>) {
    if !st.exists {
        st.exists = true;
        st.size = 0;
        st.digest = Some(0); // crc32c of no data
        st.xattrs.clear();
        t.push(TxOp::Touch(head.clone()));
    }
}

fn apply_step(head: &ObjectKey, st: &mut ObjState, t: &mut Vec<TxOp>, op: &WriteOp) -> Result<()> {
    match op {
        WriteOp::FullTry => {}
        WriteOp::AssertExists => {
            if !st.exists {
                return Err(RadosError::NotFound);
            }
        }
        WriteOp::CmpXattr { name, value } => {
            let cur = if st.exists { st.xattrs.get(name) } else { None };
            if cur.map(|v| v.as_ref()).unwrap_or(b"") != value.as_ref() {
                return Err(RadosError::Canceled);
            }
        }
        WriteOp::Create { exclusive } => {
            if st.exists && *exclusive {
                return Err(RadosError::Exists);
            }
            ensure_exists(head, st, t);
        }
        WriteOp::Write { off, data } => {
            let end = check_extent(*off, data.len() as u64)?;
            ensure_exists(head, st, t);
            if data.is_empty() {
                // A zero-length write still extends the object to `off`.
                if *off > st.size {
                    t.push(TxOp::Truncate {
                        key: head.clone(),
                        size: *off,
                    });
                    st.size = *off;
                    st.digest = None;
                }
            } else {
                // Keep the digest only where it costs no read: a write that
                // covers the whole object, or an append to a known digest.
                st.digest = if *off == 0 && data.len() as u64 >= st.size {
                    Some(crc32c::crc32c(data))
                } else if *off == st.size {
                    st.digest.map(|d| crc32c::crc32c_append(d, data))
                } else {
                    None
                };
                t.push(TxOp::Write {
                    key: head.clone(),
                    off: *off,
                    data: data.clone(),
                });
                st.size = st.size.max(end);
            }
        }
        WriteOp::WriteFull { data } => {
            check_extent(0, data.len() as u64)?;
            ensure_exists(head, st, t);
            let len = data.len() as u64;
            if len > 0 {
                t.push(TxOp::Write {
                    key: head.clone(),
                    off: 0,
                    data: data.clone(),
                });
            }
            // Only a shrink needs a truncate: the write covers the rest.
            if len < st.size {
                t.push(TxOp::Truncate {
                    key: head.clone(),
                    size: len,
                });
            }
            st.size = len;
            st.digest = Some(crc32c::crc32c(data));
        }
        WriteOp::Zero { off, len } => {
            let end = check_extent(*off, *len)?;
            if st.exists {
                let (a, b) = ((*off).min(st.size), end.min(st.size));
                if b > a {
                    t.push(TxOp::Zero {
                        key: head.clone(),
                        off: a,
                        len: b - a,
                    });
                    st.digest = None;
                }
            }
        }
        WriteOp::Truncate { size } => {
            check_extent(*size, 0)?;
            ensure_exists(head, st, t);
            t.push(TxOp::Truncate {
                key: head.clone(),
                size: *size,
            });
            if *size == 0 {
                st.digest = Some(0);
            } else if *size != st.size {
                st.digest = None;
            }
            st.size = *size;
        }
        WriteOp::Remove => {
            if !st.exists {
                return Err(RadosError::NotFound);
            }
            t.push(TxOp::Remove(head.clone()));
            st.exists = false;
            st.size = 0;
            st.digest = None;
            st.xattrs.clear();
        }
        WriteOp::SetXattr { name, value } => {
            ensure_exists(head, st, t);
            t.push(TxOp::SetAttrs {
                key: head.clone(),
                attrs: [(user_attr_key(name), value.clone())].into(),
            });
            st.xattrs.insert(name.clone(), value.clone());
        }
        WriteOp::RmXattr { name } => {
            if !st.exists {
                return Err(RadosError::NotFound);
            }
            if st.xattrs.remove(name).is_none() {
                return Err(RadosError::NoData);
            }
            t.push(TxOp::RmAttr {
                key: head.clone(),
                name: user_attr_key(name),
            });
        }
        WriteOp::OmapSet { entries } => {
            ensure_exists(head, st, t);
            t.push(TxOp::OmapSet {
                key: head.clone(),
                entries: entries.clone(),
            });
        }
        WriteOp::OmapRmKeys { keys } => {
            ensure_exists(head, st, t);
            t.push(TxOp::OmapRmKeys {
                key: head.clone(),
                keys: keys.clone(),
            });
        }
        WriteOp::OmapClear => {
            if st.exists {
                t.push(TxOp::OmapClear(head.clone()));
            }
        }
    }
    Ok(())
}

/// What a read resolves to: the store object holding the state at the snap.
struct Target {
    key: ObjectKey,
    size: u64,
    /// Known user attributes (the head's); loaded on demand for clones.
    xattrs: Option<BTreeMap<String, Bytes>>,
    /// The head's stored data digest; clones read theirs from their `_`.
    digest: Option<u32>,
}

impl Pg {
    pub fn new(id: PgId, log: PgLog) -> Self {
        Pg {
            id,
            log,
            acting: Vec::new(),
            epoch: 0,
            incomplete: None,
            pending: false,
            next_tid: 1,
            projected: HashMap::new(),
            inflight: BTreeMap::new(),
            waiting_for_readable: HashMap::new(),
            cold_reads: HashMap::new(),
            quiesce_reads: false,
            refusing: false,
        }
    }

    pub fn handle(&mut self, osd: &Osd, ev: PgEvent) {
        match ev {
            PgEvent::Read {
                name,
                snap,
                ops,
                reply,
            } => {
                if self.projected.contains_key(&name)
                    || self.waiting_for_readable.contains_key(&name)
                {
                    self.waiting_for_readable
                        .entry(name.clone())
                        .or_default()
                        .push_back(PgEvent::Read {
                            name,
                            snap,
                            ops,
                            reply,
                        });
                    return;
                }
                if !self.is_primary(osd) {
                    return reply.send(Err(self.not_primary(osd)));
                }
                match self.do_read(osd, &name, snap, &ops) {
                    Ok(Reading::Done(results)) => reply.send(Ok(results)),
                    Ok(Reading::Cold { key, off, len }) => {
                        let read = ColdRead {
                            key,
                            off,
                            len,
                            reply,
                        };
                        // Refused only when stopping: dropping the read
                        // answers it. Its ReadDone is handled after this
                        // event, so counting it now is in time.
                        if osd.defer_read(read).is_ok() {
                            *self.cold_reads.entry(name).or_default() += 1;
                        }
                    }
                    Err(e) => reply.send(check_store(osd, Err(e))),
                }
            }
            PgEvent::Write {
                name,
                snapc,
                ops,
                reply,
            } => {
                // Behind a waiting read, so that a stream of writes cannot
                // keep the read waiting forever (first come, first served),
                // and behind a cold read, which must not see it.
                if self.waiting_for_readable.contains_key(&name)
                    || self.cold_reads.contains_key(&name)
                {
                    let q = self.waiting_for_readable.entry(name.clone()).or_default();
                    q.push_back(PgEvent::Write {
                        name,
                        snapc,
                        ops,
                        reply,
                    });
                    return;
                }
                self.do_write(osd, name, snapc, ops, reply)
            }
            PgEvent::Trim { snap, reply } => self.do_trim(osd, snap, reply),
            PgEvent::RepOp {
                from,
                tid,
                txn,
                entries,
            } => self.do_repop(osd, from, tid, txn, entries),
            PgEvent::RepReply { from, tid, result } => self.on_applied(osd, from, tid, result),
            PgEvent::ReadDone { name } => {
                let Some(n) = self.cold_reads.get_mut(&name) else {
                    return;
                };
                *n -= 1;
                if *n == 0 {
                    self.cold_reads.remove(&name);
                    self.run_waiting(osd, &name);
                }
            }
        }
    }

    /// Primary of the PG and able to serve it.
    fn is_primary(&self, osd: &Osd) -> bool {
        self.acting.first() == Some(&osd.id) && self.incomplete.is_none() && !self.pending
    }

    fn not_primary(&self, osd: &Osd) -> RadosError {
        if self.pending {
            return RadosError::Busy(format!("pg {}.{:x} is peering", self.id.pool, self.id.pg));
        }
        if let Some(holder) = self.incomplete {
            return RadosError::Busy(format!(
                "pg {}.{:x} is incomplete: its newest copy is on osd.{holder}, which is down; \
                 bring osd.{holder} back up",
                self.id.pool, self.id.pg
            ));
        }
        // A map change is on its way (this OSD failed, or the op raced a
        // peering): the client retries under the next epoch.
        RadosError::Busy(format!(
            "osd.{} is not the primary of pg {}.{:x} (acting {:?})",
            osd.id, self.id.pool, self.id.pg, self.acting
        ))
    }

    fn pool(&self, osd: &Osd) -> Result<PoolEntry> {
        osd.shared
            .map()
            .pool(self.id.pool)
            .cloned()
            .ok_or_else(|| RadosError::PoolNotFound(self.id.pool.to_string()))
    }

    fn state(&self, osd: &Osd, name: &str) -> Result<ObjState> {
        match self.projected.get(name) {
            Some(p) => Ok(p.state.clone()),
            None => Ok(load_state(osd.store.as_ref(), self.id, name)?.unwrap_or_default()),
        }
    }

    fn next_version(&self, n: u64) -> Eversion {
        Eversion {
            epoch: self.epoch.max(self.log.info.last_update.epoch),
            version: self.log.info.last_update.version + n,
        }
    }

    fn do_read(&self, osd: &Osd, name: &str, snap: SnapId, ops: &[ReadOp]) -> Result<Reading> {
        let pool = self.pool(osd)?;
        let store = osd.store.as_ref();
        let head = load_state(store, self.id, name)?;
        let target = head
            .as_ref()
            .and_then(|h| self.resolve(&pool, name, h, snap));
        let mut target = target;
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op {
                ReadOp::ListSnaps => {
                    let h = head.as_ref().ok_or(RadosError::NotFound)?;
                    let mut clones: Vec<CloneInfo> = h
                        .snapset
                        .clones
                        .iter()
                        .map(|c| CloneInfo {
                            cloneid: c.id,
                            snaps: c.snaps.clone(),
                            size: c.size,
                        })
                        .collect();
                    if h.exists {
                        clones.push(CloneInfo {
                            cloneid: SNAP_HEAD,
                            snaps: vec![],
                            size: h.size,
                        });
                    }
                    ReadResult::Snaps(SnapSetInfo {
                        seq: h.snapset.seq,
                        clones,
                    })
                }
                ReadOp::CmpXattr { name: attr, value } => {
                    let t = target.as_mut().ok_or(RadosError::NotFound)?;
                    let x = Self::xattrs(store, t)?;
                    if x.get(attr).map(|v| v.as_ref()).unwrap_or(b"") != value.as_ref() {
                        return Err(RadosError::Canceled);
                    }
                    ReadResult::Done
                }
                ReadOp::Read { off, len } => {
                    let t = target.as_ref().ok_or(RadosError::NotFound)?;
                    off.checked_add(*len).ok_or_else(|| {
                        RadosError::InvalidArgument("read range overflows".into())
                    })?;
                    if *off >= t.size || *len == 0 {
                        ReadResult::Data(Bytes::new())
                    } else {
                        let n = (*len).min(t.size - off);
                        if *off == 0 && n == t.size {
                            let data = store.read(&t.key, *off, n).map_err(io)?;
                            ReadResult::Data(self.verified(osd, t, data)?)
                        } else if ops.len() > 1 {
                            // Partial reads are not verified: checking them
                            // would mean reading the whole object each time.
                            ReadResult::Data(store.read(&t.key, *off, n).map_err(io)?)
                        } else if t.key.snap != SNAP_HEAD || self.quiesce_reads {
                            // A clone's read stays here: the snap trimmer
                            // may remove the clone, and it does not wait for
                            // cold reads.
                            ReadResult::Data(store.read(&t.key, *off, n).map_err(io)?)
                        } else {
                            match store.read_cached(&t.key, *off, n).map_err(io)? {
                                Some(data) => ReadResult::Data(data),
                                None => {
                                    return Ok(Reading::Cold {
                                        key: t.key.clone(),
                                        off: *off,
                                        len: n,
                                    });
                                }
                            }
                        }
                    }
                }
                ReadOp::Stat => ReadResult::Stat(ObjectStat {
                    size: target.as_ref().ok_or(RadosError::NotFound)?.size,
                }),
                ReadOp::GetXattr { name: attr } => {
                    let t = target.as_mut().ok_or(RadosError::NotFound)?;
                    ReadResult::Xattr(
                        Self::xattrs(store, t)?
                            .get(attr)
                            .cloned()
                            .ok_or(RadosError::NoData)?,
                    )
                }
                ReadOp::GetXattrs => {
                    let t = target.as_mut().ok_or(RadosError::NotFound)?;
                    ReadResult::Xattrs(Self::xattrs(store, t)?.clone())
                }
                ReadOp::OmapGetVals { start_after, max } => {
                    let t = target.as_ref().ok_or(RadosError::NotFound)?;
                    let omap = store.omap_get(&t.key).map_err(io)?;
                    let iter = omap
                        .range::<String, _>((
                            std::ops::Bound::Excluded(start_after.clone()),
                            std::ops::Bound::Unbounded,
                        ))
                        .take(usize::try_from(*max).unwrap_or(usize::MAX));
                    ReadResult::Omap(iter.map(|(k, v)| (k.clone(), v.clone())).collect())
                }
                ReadOp::OmapGetValsByKeys { keys } => {
                    let t = target.as_ref().ok_or(RadosError::NotFound)?;
                    let omap = store.omap_get(&t.key).map_err(io)?;
                    ReadResult::Omap(
                        keys.iter()
                            .filter_map(|k| omap.get(k).map(|v| (k.clone(), v.clone())))
                            .collect(),
                    )
                }
                ReadOp::AssertExists => {
                    target.as_ref().ok_or(RadosError::NotFound)?;
                    ReadResult::Done
                }
            });
        }
        Ok(Reading::Done(out))
    }

    /// `data` (a whole-object read from this OSD) if it matches the stored
    /// digest; otherwise the first replica's copy that does, and the bad
    /// local copy is recorded for repair. A flipped bit is never returned.
    fn verified(&self, osd: &Osd, t: &Target, data: Bytes) -> Result<Bytes> {
        let want = if t.key.snap == SNAP_HEAD {
            t.digest
        } else {
            osd.store
                .getattrs(&t.key)
                .ok()
                .and_then(|a| a.get(OI_ATTR).and_then(|b| ObjectInfo::decode(b).ok()))
                .and_then(|oi| oi.data_digest)
        };
        let Some(want) = want else {
            return Ok(data);
        };
        if crc32c::crc32c(&data) == want {
            return Ok(data);
        }
        log::error!(
            "osd.{}: object {} (snap {:x}) of pg {}.{:x} fails its data digest; \
             reading another copy",
            osd.id,
            t.key.name,
            t.key.snap,
            self.id.pool,
            self.id.pg
        );
        osd.shared.note_damaged(self.id, &t.key, osd.id);
        for &r in &self.acting[1..] {
            let Some(peer) = osd.peer(r) else { continue };
            match peer.store.read(&t.key, 0, t.size) {
                Ok(d) if crc32c::crc32c(&d) == want => return Ok(d),
                Ok(_) => osd.shared.note_damaged(self.id, &t.key, r),
                Err(e) => log::warn!("osd.{r}: reading {}: {e}", t.key.name),
            }
        }
        Err(RadosError::Io(format!(
            "object {} of pg {}.{:x}: no copy matches its data digest; \
             run a deep scrub to see the damage",
            t.key.name, self.id.pool, self.id.pg
        )))
    }

    fn xattrs<'a>(
        store: &dyn crate::store::ObjectStore,
        t: &'a mut Target,
    ) -> Result<&'a BTreeMap<String, Bytes>> {
        if t.xattrs.is_none() {
            t.xattrs = Some(user_attrs(&store.getattrs(&t.key).map_err(io)?));
        }
        Ok(t.xattrs.get_or_insert_default())
    }

    /// Which store object holds `name` as of `snap` (MemRados::resolve).
    fn resolve(&self, pool: &PoolEntry, name: &str, h: &ObjState, snap: SnapId) -> Option<Target> {
        let head = || {
            h.exists.then(|| Target {
                key: key(self.id, name, SNAP_HEAD),
                size: h.size,
                xattrs: Some(h.xattrs.clone()),
                digest: h.digest,
            })
        };
        if snap == SNAP_HEAD {
            return head();
        }
        if snap > pool.snap_seq || pool.removed_snaps.contains(&snap) {
            return None;
        }
        if snap > h.snapset.seq {
            return head();
        }
        let c = h.snapset.clones.iter().find(|c| c.id >= snap)?;
        c.snaps.contains(&snap).then(|| Target {
            key: key(self.id, name, c.id),
            size: c.size,
            xattrs: None,
            digest: None,
        })
    }

    fn do_write(
        &mut self,
        osd: &Osd,
        name: String,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
        reply: Reply<()>,
    ) {
        if !self.is_primary(osd) {
            return reply.send(Err(self.not_primary(osd)));
        }
        let plan = self.pool(osd).and_then(|pool| {
            let old = self.state(osd, &name)?;
            let plan = plan_write(
                self.id,
                &name,
                &old,
                &snapc,
                &ops,
                &pool,
                self.next_version(1),
            )?;
            // Bytes of an object with a digest are replaced in place: were
            // they to land without the record (a power loss), the digest
            // that stays would call every copy damaged.
            let in_place = old.exists
                && old.digest.is_some()
                && ops.iter().any(|op| match op {
                    WriteOp::Write { off, .. } | WriteOp::Zero { off, .. } => *off < old.size,
                    WriteOp::WriteFull { .. } | WriteOp::Truncate { .. } => old.size > 0,
                    _ => false,
                });
            Ok(plan.map(|p| (p, in_place)))
        });
        match plan {
            Err(e) => reply.send(check_store(osd, Err(e))),
            Ok(None) => reply.send(Ok(())),
            Ok(Some((plan, in_place))) => {
                let entry = PgLogEntry {
                    version: self.next_version(1),
                    op: LogOp::Modify,
                    name: name.clone(),
                    clone: plan.clone,
                };
                let txn = Transaction {
                    ops: plan.ops,
                    commit_first: in_place,
                    // Not when it copies the object for a snapshot first:
                    // that takes space rather than giving it back.
                    full_try: WriteOp::may_use_reserve(&ops) && plan.clone.is_none(),
                    replica: false,
                };
                self.submit(osd, txn, vec![entry], vec![(name, plan.state)], reply);
            }
        }
    }

    /// Remove `snap` from every clone of the PG; drop clones left with none.
    fn do_trim(&mut self, osd: &Osd, snap: SnapId, reply: Reply<()>) {
        if !self.is_primary(osd) {
            return reply.send(Err(self.not_primary(osd)));
        }
        let mut names: BTreeSet<String> = match osd.store.list_objects(self.id) {
            Ok(keys) => keys.into_iter().map(|k| k.name).collect(),
            Err(e) => return reply.send(Err(io(e))),
        };
        names.extend(self.projected.keys().cloned());
        let mut ops = Vec::new();
        let mut entries = Vec::new();
        let mut updates = Vec::new();
        for name in names {
            let old = match self.state(osd, &name) {
                Ok(s) => s,
                Err(e) => return reply.send(Err(e)),
            };
            if !old.snapset.clones.iter().any(|c| c.snaps.contains(&snap)) {
                continue;
            }
            let version = self.next_version(entries.len() as u64 + 1);
            let mut st = old.clone();
            for c in &mut st.snapset.clones {
                c.snaps.retain(|s| *s != snap);
                if c.snaps.is_empty() {
                    ops.push(TxOp::Remove(key(self.id, &name, c.id)));
                }
            }
            st.snapset.clones.retain(|c| !c.snaps.is_empty());
            let head = key(self.id, &name, SNAP_HEAD);
            if st.vanished() {
                ops.push(TxOp::Remove(head));
                st = ObjState::default();
            } else {
                ops.push(TxOp::SetAttrs {
                    key: head,
                    attrs: head_attrs(!st.exists, version, &st.snapset, st.digest),
                });
            }
            entries.push(PgLogEntry {
                version,
                op: LogOp::Trim,
                name: name.clone(),
                clone: None,
            });
            updates.push((name, st));
        }
        if entries.is_empty() {
            return reply.send(Ok(()));
        }
        // A trim only frees space: it may use the stores' reserve.
        let txn = Transaction {
            full_try: true,
            ..Transaction::from(ops)
        };
        self.submit(osd, txn, entries, updates, reply);
    }

    /// Log, queue locally, replicate, and track a write until it is applied
    /// on every acting OSD.
    fn submit(
        &mut self,
        osd: &Osd,
        mut txn: Transaction,
        entries: Vec<PgLogEntry>,
        updates: Vec<(String, ObjState)>,
        reply: Reply<()>,
    ) {
        let delta = self
            .log
            .append(entries.clone(), osd.shared.pg_log_max_entries);
        let undo = delta.undo;
        if !delta.rm.is_empty() {
            txn.push(TxOp::CollMetaRm {
                coll: self.id,
                keys: delta.rm,
            });
        }
        txn.push(TxOp::CollMetaSet {
            coll: self.id,
            entries: delta.set,
        });
        let tid = self.next_tid;
        self.next_tid += 1;
        let replicas: Vec<OsdId> = self.acting[1..].to_vec();
        let local = LocalApplied::new(applied(osd, osd.id, self.id, tid));
        let queued =
            osd.store
                .queue_transaction(txn.clone(), committed(osd, osd.id), local.callback());
        if let Err(e) = queued {
            // Nothing was queued: the log must not claim the entries.
            self.log.undo(undo);
            return reply.send(check_store(osd, Err(io(e))));
        }
        for r in &replicas {
            match osd.peer(*r) {
                Some(peer) => peer.enqueue(
                    self.id,
                    PgEvent::RepOp {
                        from: osd.id,
                        tid,
                        txn: txn.clone(),
                        entries: entries.clone(),
                    },
                ),
                None => log::error!("osd.{}: replica osd.{r} is gone", osd.id),
            }
        }
        let mut names = Vec::with_capacity(updates.len());
        for (name, state) in updates {
            let p = self.projected.entry(name.clone()).or_insert(Projected {
                state: ObjState::default(),
                writes: 0,
            });
            p.state = state;
            p.writes += 1;
            names.push(name);
        }
        self.inflight.insert(
            tid,
            InFlight {
                names,
                waiting_for_applied: self.acting.iter().copied().collect(),
                reply: Some(reply),
                error: None,
                failed: BTreeSet::new(),
            },
        );
        // A store that applied the transaction before returning (FileStore
        // does) is answered here, without a trip through this OSD's queue.
        if let Some(result) = local.take() {
            self.on_applied(osd, osd.id, tid, result);
        }
    }

    fn do_repop(
        &mut self,
        osd: &Osd,
        from: OsdId,
        tid: u64,
        txn: Transaction,
        entries: Vec<PgLogEntry>,
    ) {
        let Some(primary) = osd.peer(from) else {
            log::error!("osd.{}: primary osd.{from} is gone", osd.id);
            return;
        };
        if self.refusing {
            let why = "a write of this pg failed here before; refused until it is peered";
            return primary.enqueue(
                self.id,
                PgEvent::RepReply {
                    from: osd.id,
                    tid,
                    result: Err(crate::store::StoreError::Failed(why.into())),
                },
            );
        }
        let undo = self.log.append(entries, osd.shared.pg_log_max_entries).undo;
        let queued = osd.store.queue_transaction(
            Transaction {
                replica: true,
                ..txn
            },
            committed(osd, osd.id),
            applied(&primary, osd.id, self.id, tid),
        );
        if let Err(e) = queued {
            self.log.undo(undo);
            self.refusing = true;
            primary.enqueue(
                self.id,
                PgEvent::RepReply {
                    from: osd.id,
                    tid,
                    result: Err(e),
                },
            );
        }
    }

    fn on_applied(&mut self, osd: &Osd, from: OsdId, tid: u64, result: StoreResult<()>) {
        let Some(op) = self.inflight.get_mut(&tid) else {
            return;
        };
        op.waiting_for_applied.remove(&from);
        if let Err(e) = result {
            log::error!(
                "osd.{from}: write {tid} of pg {}.{:x} failed: {e}",
                self.id.pool,
                self.id.pg
            );
            if from == osd.id {
                if op.error.is_none() {
                    op.error = Some(match osd.store.check_health() {
                        Err(h) => {
                            osd.shared.report_failure(osd.id, &h.to_string());
                            RadosError::Busy(format!("osd.{} failed: {e}", osd.id))
                        }
                        Ok(()) => io(e),
                    });
                }
            } else if op.failed.insert(from) {
                // A replica that cannot store what the others stored would
                // diverge: it goes down, and recovery rewrites its copy
                // when (if) it comes back.
                osd.shared.report_failure(from, &e.to_string());
            }
        }
        if !op.waiting_for_applied.is_empty() {
            return;
        }
        let Some(op) = self.inflight.remove(&tid) else {
            return;
        };
        if let Some(reply) = op.reply {
            let min_size = osd
                .shared
                .map()
                .pool(self.id.pool)
                .map_or(1, |p| p.info.min_size.max(1) as usize);
            let stored = self.acting.len() - op.failed.len();
            reply.send(match op.error {
                Some(e) => Err(e),
                None if stored < min_size => Err(RadosError::Busy(format!(
                    "write stored on {stored} of min_size {min_size} OSDs; retried"
                ))),
                None => Ok(()),
            });
        }
        for name in op.names {
            self.release(osd, &name);
        }
    }

    /// One write of `name` is applied everywhere: once none remain, the
    /// projected state is the store's, and parked reads can run.
    fn release(&mut self, osd: &Osd, name: &str) {
        let Some(p) = self.projected.get_mut(name) else {
            return;
        };
        p.writes -= 1;
        if p.writes > 0 {
            return;
        }
        self.projected.remove(name);
        self.run_waiting(osd, name);
    }

    /// Run the ops waiting on `name` in arrival order, until one must wait
    /// again: a read behind a write in flight, a write behind a cold read.
    fn run_waiting(&mut self, osd: &Osd, name: &str) {
        let Some(mut waiting) = self.waiting_for_readable.remove(name) else {
            return;
        };
        while let Some(ev) = waiting.pop_front() {
            let blocked = match ev {
                PgEvent::Read { .. } => self.projected.contains_key(name),
                PgEvent::Write { .. } => self.cold_reads.contains_key(name),
                _ => false,
            };
            if blocked {
                waiting.push_front(ev);
                self.waiting_for_readable.insert(name.to_string(), waiting);
                return;
            }
            self.handle(osd, ev);
        }
    }

    /// What keeps the PG busy (for assertions and logs).
    pub fn busy_summary(&self) -> String {
        let ops: Vec<String> = self
            .inflight
            .iter()
            .map(|(tid, op)| format!("tid {tid}: applied {:?}", op.waiting_for_applied))
            .collect();
        format!(
            "{ops:?}, projected {:?}, parked {:?}, cold reads {:?}",
            self.projected.keys().collect::<Vec<_>>(),
            self.waiting_for_readable.keys().collect::<Vec<_>>(),
            self.cold_reads.keys().collect::<Vec<_>>()
        )
    }

    /// True when nothing is in flight (peering requires it).
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.projected.is_empty()
            && self.waiting_for_readable.is_empty()
            && self.cold_reads.is_empty()
    }
}

/// Answer the client op in `ev` Busy (its PG is not loaded here yet: it is
/// about to be peered); other events are dropped.
pub(crate) fn refuse(ev: PgEvent, pg: PgId) {
    let why = || RadosError::Busy(format!("pg {}.{:x} is not peered yet", pg.pool, pg.pg));
    match ev {
        PgEvent::Read { reply, .. } => reply.send(Err(why())),
        PgEvent::Write { reply, .. } | PgEvent::Trim { reply, .. } => reply.send(Err(why())),
        PgEvent::RepOp { .. } | PgEvent::RepReply { .. } | PgEvent::ReadDone { .. } => {}
    }
}

/// A store callback that reports write `tid` applied on `from` to the
/// primary's queue.
fn applied(primary: &Osd, from: OsdId, pg: PgId, tid: u64) -> crate::store::Callback {
    let target = primary
        .peer(primary.id)
        .map(|p| std::sync::Arc::downgrade(&p));
    Box::new(move |result| {
        if let Some(p) = target.and_then(|w| w.upgrade()) {
            p.enqueue(pg, PgEvent::RepReply { from, tid, result });
        }
    })
}

/// A store callback for a commit: a store that cannot make its journal
/// durable is failing, and goes to the monitor to be marked down.
fn committed(osd: &Osd, id: OsdId) -> crate::store::Callback {
    let shared = std::sync::Arc::downgrade(&osd.shared);
    Box::new(move |result| {
        if let (Err(e), Some(shared)) = (result, shared.upgrade()) {
            shared.report_failure(id, &format!("commit failed: {e}"));
        }
    })
}

/// Catches the primary's own `on_applied` when the store runs it before
/// `queue_transaction` returns, so the write is answered on the spot;
/// when it runs later, it goes through the queue as a replica's does.
struct LocalApplied {
    slot: std::sync::Arc<Mutex<Inline>>,
    late: crate::store::Callback,
}

enum Inline {
    /// `queue_transaction` has not returned yet.
    Waiting,
    /// The store applied it before returning.
    Ran(StoreResult<()>),
    /// `queue_transaction` returned first: the callback reports as usual.
    Late(crate::store::Callback),
}

impl LocalApplied {
    fn new(late: crate::store::Callback) -> Self {
        LocalApplied {
            slot: std::sync::Arc::new(Mutex::new(Inline::Waiting)),
            late,
        }
    }

    fn callback(&self) -> crate::store::Callback {
        let slot = self.slot.clone();
        Box::new(move |result| {
            let mut s = slot.lock();
            match std::mem::replace(&mut *s, Inline::Waiting) {
                Inline::Late(late) => {
                    drop(s);
                    late(result);
                }
                _ => *s = Inline::Ran(result),
            }
        })
    }

    /// After `queue_transaction` returned: the result if it already ran.
    fn take(self) -> Option<StoreResult<()>> {
        let mut s = self.slot.lock();
        match std::mem::replace(&mut *s, Inline::Waiting) {
            Inline::Ran(r) => Some(r),
            _ => {
                *s = Inline::Late(self.late);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rados::PoolInfo;

    fn pool() -> PoolEntry {
        PoolEntry {
            info: PoolInfo {
                id: 1,
                name: "p".into(),
                size: 3,
                min_size: 2,
                pg_num: 1,
            },
            snap_seq: 0,
            removed_snaps: Default::default(),
        }
    }

    fn after(old: &ObjState, ops: Vec<WriteOp>) -> ObjState {
        let pg = PgId { pool: 1, pg: 0 };
        plan_write(
            pg,
            "o",
            old,
            &SnapContext::empty(),
            &ops,
            &pool(),
            Eversion::default(),
        )
        .unwrap()
        .unwrap()
        .state
    }

    fn write(off: u64, data: &'static [u8]) -> WriteOp {
        WriteOp::Write {
            off,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn test_plan_write_full_records_the_digest_of_its_data() {
        let st = after(
            &ObjState::default(),
            vec![WriteOp::WriteFull {
                data: Bytes::from_static(b"hello"),
            }],
        );

        assert_eq!(st.digest, Some(crc32c::crc32c(b"hello")));
    }

    #[test]
    fn test_plan_write_append_extends_the_digest_and_overwrite_inside_clears_it() {
        let full = after(&ObjState::default(), vec![write(0, b"abc")]);

        let appended = after(&full, vec![write(3, b"def")]);
        let inside = after(&appended, vec![write(1, b"x")]);

        assert_eq!(appended.digest, Some(crc32c::crc32c(b"abcdef")));
        assert_eq!(inside.digest, None);
    }

    #[test]
    fn test_plan_write_covering_the_object_again_restores_the_digest() {
        let partial = after(
            &after(&ObjState::default(), vec![write(0, b"abcd")]),
            vec![WriteOp::Zero { off: 1, len: 1 }],
        );

        let covered = after(&partial, vec![write(0, b"wxyz")]);

        assert_eq!(partial.digest, None);
        assert_eq!(covered.digest, Some(crc32c::crc32c(b"wxyz")));
    }

    #[test]
    fn test_plan_write_truncate_to_zero_is_the_empty_digest() {
        let st = after(
            &after(&ObjState::default(), vec![write(5, b"abc")]),
            vec![WriteOp::Truncate { size: 0 }],
        );

        assert_eq!(st.digest, Some(0));
    }
}
