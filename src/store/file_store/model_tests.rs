//! Reference-model test: random transactions, crashes, power losses,
//! checkpoints and reopens against `FileStore` and a plain in-memory model,
//! compared after every step.

use std::collections::BTreeMap;
use std::sync::mpsc::channel;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::{FileStore, StoreConfig};
use crate::rados::SNAP_HEAD;
use crate::store::{CollId, ObjectKey, ObjectStore, StoreError, Transaction, TxOp};
use crate::sync::{Arc, AtomicUsize, Ordering};

const WAIT: Duration = Duration::from_secs(60);
const COLLS: [CollId; 2] = [CollId { pool: 1, pg: 0 }, CollId { pool: 1, pg: 1 }];
const NAMES: [&str; 3] = ["a", "b/c", "d.e\u{e9}"];
const SNAPS: [u64; 3] = [1, 2, SNAP_HEAD];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MObj {
    data: Vec<u8>,
    attrs: BTreeMap<String, Bytes>,
    omap: BTreeMap<String, Bytes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MColl {
    meta: BTreeMap<String, Bytes>,
    objects: BTreeMap<(String, u64), MObj>,
}

/// What the store must look like: collections, their metadata and objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    colls: BTreeMap<CollId, MColl>,
}

impl Model {
    /// Byte `pos` of object `k`, if it has one.
    fn byte(&self, k: &ObjectKey, pos: usize) -> Option<u8> {
        let o = self
            .colls
            .get(&k.coll)?
            .objects
            .get(&(k.name.clone(), k.snap))?;
        o.data.get(pos).copied()
    }

    /// Whether every step names a collection that exists at that point.
    fn accepts(&self, txn: &Transaction) -> bool {
        let mut colls: Vec<CollId> = self.colls.keys().copied().collect();
        for op in &txn.ops {
            let c = match op {
                TxOp::CreateCollection(c) => {
                    if !colls.contains(c) {
                        colls.push(*c);
                    }
                    continue;
                }
                TxOp::RemoveCollection(c) => {
                    colls.retain(|x| x != c);
                    continue;
                }
                TxOp::Clone { to, .. } => to.coll,
                TxOp::CollMetaSet { coll, .. } | TxOp::CollMetaRm { coll, .. } => *coll,
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
            };
            if !colls.contains(&c) {
                return false;
            }
        }
        true
    }

    fn obj(&mut self, k: &ObjectKey) -> &mut MObj {
        self.colls
            .get_mut(&k.coll)
            .expect("collection checked by accepts")
            .objects
            .entry((k.name.clone(), k.snap))
            .or_default()
    }

    fn apply(&mut self, txn: &Transaction) {
        for op in &txn.ops {
            match op {
                TxOp::CreateCollection(c) => {
                    self.colls.entry(*c).or_default();
                }
                TxOp::RemoveCollection(c) => {
                    self.colls.remove(c);
                }
                TxOp::Touch(k) => {
                    self.obj(k);
                }
                TxOp::Write { key, off, data } => {
                    let o = self.obj(key);
                    let end = *off as usize + data.len();
                    if o.data.len() < end {
                        o.data.resize(end, 0);
                    }
                    o.data[*off as usize..end].copy_from_slice(data);
                }
                TxOp::Zero { key, off, len } => {
                    let o = self.obj(key);
                    let n = o.data.len();
                    let a = (*off as usize).min(n);
                    let b = ((off + len) as usize).min(n);
                    o.data[a..b].fill(0);
                }
                TxOp::Truncate { key, size } => self.obj(key).data.resize(*size as usize, 0),
                TxOp::Remove(k) => {
                    if let Some(c) = self.colls.get_mut(&k.coll) {
                        c.objects.remove(&(k.name.clone(), k.snap));
                    }
                }
                TxOp::Clone { from, to } => {
                    let src = self
                        .colls
                        .get(&from.coll)
                        .and_then(|c| c.objects.get(&(from.name.clone(), from.snap)))
                        .cloned();
                    match src {
                        Some(s) => *self.obj(to) = s,
                        None => {
                            if let Some(c) = self.colls.get_mut(&to.coll) {
                                c.objects.remove(&(to.name.clone(), to.snap));
                            }
                        }
                    }
                }
                TxOp::SetAttrs { key, attrs } => self.obj(key).attrs.extend(attrs.clone()),
                TxOp::RmAttr { key, name } => {
                    self.obj(key).attrs.remove(name);
                }
                TxOp::OmapSet { key, entries } => self.obj(key).omap.extend(entries.clone()),
                TxOp::OmapRmKeys { key, keys } => {
                    let o = self.obj(key);
                    for k in keys {
                        o.omap.remove(k);
                    }
                }
                TxOp::OmapClear(k) => self.obj(k).omap.clear(),
                TxOp::CollMetaSet { coll, entries } => {
                    if let Some(c) = self.colls.get_mut(coll) {
                        c.meta.extend(entries.clone());
                    }
                }
                TxOp::CollMetaRm { coll, keys } => {
                    if let Some(c) = self.colls.get_mut(coll) {
                        for k in keys {
                            c.meta.remove(k);
                        }
                    }
                }
            }
        }
    }
}

/// Compare everything the store exposes with the model.
fn check(s: &FileStore, m: &Model) {
    check_allowing(s, m, &|_, _, _| false);
}

/// Whether byte `pos` of `k` may read `got` because one of the `lost`
/// transactions (applied, then lost from the journal by a power loss) wrote
/// it in place: a disk may keep some of an unflushed write's sectors.
fn lost_byte(lost: &[Transaction], k: &ObjectKey, pos: usize, got: u8) -> bool {
    lost.iter().flat_map(|t| &t.ops).any(|op| match op {
        TxOp::Write { key, off, data } if key == k => {
            let off = *off as usize;
            pos >= off && pos < off + data.len() && data[pos - off] == got
        }
        TxOp::Zero { key, off, len } if key == k => {
            got == 0 && pos as u64 >= *off && (pos as u64) < off.saturating_add(*len)
        }
        _ => false,
    })
}

/// [`check`], except that data byte `pos` of object `k` may also read
/// `got` where `may_hold(k, pos, got)`.
fn check_allowing(s: &FileStore, m: &Model, may_hold: &dyn Fn(&ObjectKey, usize, u8) -> bool) {
    assert_eq!(
        s.list_collections(),
        m.colls.keys().copied().collect::<Vec<_>>()
    );
    for c in COLLS {
        let Some(mc) = m.colls.get(&c) else {
            assert!(matches!(
                s.list_objects(c),
                Err(StoreError::NoCollection(_))
            ));
            continue;
        };
        assert_eq!(s.coll_meta_get(c).unwrap(), mc.meta, "meta of {c:?}");
        let keys: Vec<ObjectKey> = mc
            .objects
            .keys()
            .map(|(n, snap)| ObjectKey {
                coll: c,
                name: n.clone(),
                snap: *snap,
            })
            .collect();
        assert_eq!(s.list_objects(c).unwrap(), keys);
        for k in &keys {
            let o = &mc.objects[&(k.name.clone(), k.snap)];
            assert_eq!(s.stat(k).unwrap(), o.data.len() as u64, "size of {k:?}");
            let got = s.read(k, 0, u64::MAX).unwrap();
            assert_eq!(got.len(), o.data.len(), "read length of {k:?}");
            if let Some(pos) =
                (0..got.len()).find(|&i| got[i] != o.data[i] && !may_hold(k, i, got[i]))
            {
                panic!(
                    "data of {k:?} differs at byte {pos}: {} where the model has {}",
                    got[pos], o.data[pos]
                );
            }
            assert_eq!(s.getattrs(k).unwrap(), o.attrs, "attrs of {k:?}");
            assert_eq!(s.omap_get(k).unwrap(), o.omap, "omap of {k:?}");
        }
    }
}

fn key_strategy() -> impl Strategy<Value = ObjectKey> {
    (0..COLLS.len(), 0..NAMES.len(), 0..SNAPS.len()).prop_map(|(c, n, s)| ObjectKey {
        coll: COLLS[c],
        name: NAMES[n].to_string(),
        snap: SNAPS[s],
    })
}

fn small_map() -> impl Strategy<Value = BTreeMap<String, Bytes>> {
    proptest::collection::btree_map(
        "[xyz]",
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from),
        0..3,
    )
}

fn op_strategy() -> impl Strategy<Value = TxOp> {
    let coll = (0..COLLS.len()).prop_map(|i| COLLS[i]);
    prop_oneof![
        2 => coll.clone().prop_map(TxOp::CreateCollection),
        1 => coll.clone().prop_map(TxOp::RemoveCollection),
        1 => key_strategy().prop_map(TxOp::Touch),
        8 => (key_strategy(), 0u64..20_000, 0usize..6000, any::<u8>()).prop_map(
            |(key, off, len, seed)| TxOp::Write {
                key,
                off,
                data: Bytes::from((0..len).map(|i| seed.wrapping_add(i as u8)).collect::<Vec<_>>()),
            }
        ),
        // Whole-object overwrites, as the OSD emits for write_full and
        // object-sized writes: direct-path writes when the test's threshold
        // is on (shorter or longer than the object's current size).
        4 => (key_strategy(), 1024usize..8000, any::<u8>()).prop_map(|(key, len, seed)| TxOp::Write {
            key,
            off: 0,
            data: Bytes::from((0..len).map(|i| seed.wrapping_mul(7).wrapping_add(i as u8)).collect::<Vec<_>>()),
        }),
        2 => (key_strategy(), 0u64..20_000, 0u64..10_000)
            .prop_map(|(key, off, len)| TxOp::Zero { key, off, len }),
        2 => (key_strategy(), 0u64..25_000).prop_map(|(key, size)| TxOp::Truncate { key, size }),
        2 => key_strategy().prop_map(TxOp::Remove),
        3 => (key_strategy(), key_strategy()).prop_map(|(from, to)| TxOp::Clone { from, to }),
        1 => (key_strategy(), small_map()).prop_map(|(key, attrs)| TxOp::SetAttrs { key, attrs }),
        1 => (key_strategy(), "[xyz]").prop_map(|(key, name)| TxOp::RmAttr { key, name }),
        1 => (key_strategy(), small_map()).prop_map(|(key, entries)| TxOp::OmapSet { key, entries }),
        1 => (key_strategy(), proptest::collection::vec("[xyz]", 0..3))
            .prop_map(|(key, keys)| TxOp::OmapRmKeys { key, keys }),
        1 => key_strategy().prop_map(TxOp::OmapClear),
        1 => (coll.clone(), small_map()).prop_map(|(coll, entries)| TxOp::CollMetaSet { coll, entries }),
        1 => (coll, proptest::collection::vec("[xyz]", 0..3))
            .prop_map(|(coll, keys)| TxOp::CollMetaRm { coll, keys }),
    ]
}

/// write_full as the OSD emits it: a write at 0, then a cut to its length
/// (a no-op unless the object was longer), maybe with attributes after.
fn write_full_strategy() -> impl Strategy<Value = Transaction> {
    (
        key_strategy(),
        0usize..8000,
        any::<u8>(),
        any::<bool>(),
        small_map(),
    )
        .prop_map(|(key, len, seed, attrs, map)| {
            let data = Bytes::from(
                (0..len)
                    .map(|i| seed.wrapping_add(i as u8))
                    .collect::<Vec<_>>(),
            );
            let mut ops = vec![
                TxOp::Write {
                    key: key.clone(),
                    off: 0,
                    data,
                },
                TxOp::Truncate {
                    key: key.clone(),
                    size: len as u64,
                },
            ];
            if attrs {
                ops.push(TxOp::SetAttrs { key, attrs: map });
            }
            Transaction::from(ops)
        })
}

/// An overwrite alone in its transaction, as the OSD emits for a client's
/// write, all of one object so that they meet: in place when large (the
/// test's threshold on) and inside the object, journaled when small.
fn overwrite_strategy() -> impl Strategy<Value = Transaction> {
    let len = prop_oneof![1usize..1000, 1024usize..5000];
    (0u64..4000, len, any::<u8>()).prop_map(|(off, len, seed)| {
        let data = (0..len).map(|i| seed.wrapping_mul(3).wrapping_add(i as u8));
        Transaction::from(vec![TxOp::Write {
            key: ObjectKey {
                coll: COLLS[0],
                name: NAMES[0].to_string(),
                snap: SNAP_HEAD,
            },
            off,
            data: Bytes::from(data.collect::<Vec<_>>()),
        }])
    })
}

fn txn_strategy() -> impl Strategy<Value = Transaction> {
    prop_oneof![
        4 => proptest::collection::vec(op_strategy(), 1..5).prop_map(Transaction::from),
        1 => write_full_strategy(),
        2 => overwrite_strategy(),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    /// Queue and wait until applied.
    Txn(Transaction),
    /// Queue several without waiting, then crash at once.
    QueueThenCrash(Vec<Transaction>),
    /// Crash with everything applied.
    Crash,
    /// Checkpoint.
    Sync,
    /// Checkpoint, then crash right after.
    SyncThenCrash,
    /// Clean close and open.
    Reopen,
    /// Power loss: the journal loses everything after its last sync.
    PowerLoss,
    /// Power loss: the journal keeps everything, the object files lose
    /// every byte written since their last sync.
    PowerLossLosingData,
    /// Wait until everything applied is committed.
    Commit,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => txn_strategy().prop_map(Step::Txn),
        2 => proptest::collection::vec(txn_strategy(), 1..6).prop_map(Step::QueueThenCrash),
        1 => Just(Step::Crash),
        1 => Just(Step::Sync),
        1 => Just(Step::SyncThenCrash),
        1 => Just(Step::Reopen),
        2 => Just(Step::PowerLoss),
        2 => Just(Step::PowerLossLosingData),
        1 => Just(Step::Commit),
    ]
}

struct Harness {
    dir: tempfile::TempDir,
    cfg: StoreConfig,
    store: Arc<FileStore>,
    model: Model,
    /// The store's seq and the model when they were last known durable.
    base: (u64, Model),
    /// Since then: each accepted transaction's seq, the model after it, and
    /// the transaction (what a power loss may take back).
    since: Vec<(u64, Model, Transaction)>,
}

impl Harness {
    fn reopen(&mut self) {
        self.store = FileStore::open(self.dir.path(), self.cfg.clone()).unwrap();
    }

    fn run_txn(&mut self, txn: Transaction) {
        let accept = self.model.accepts(&txn);
        let (tx, rx) = channel();
        let r = self.store.queue_transaction(
            txn.clone(),
            Box::new(|_| {}),
            Box::new(move |r| tx.send(r).unwrap()),
        );
        assert_eq!(r.is_ok(), accept, "queue result {r:?}");
        if accept {
            rx.recv_timeout(WAIT).unwrap().unwrap();
            self.model.apply(&txn);
            self.since
                .push((self.store.applied_seq(), self.model.clone(), txn));
        }
    }

    /// Everything applied is durable now (checkpoint, commit, reopen).
    fn all_durable(&mut self) {
        self.base = (self.store.applied_seq(), self.model.clone());
        self.since.clear();
    }

    /// Power loss, reopen: the store must hold the state after some prefix
    /// of the transactions since the last durable point that includes every
    /// committed one, plus maybe in-place bytes of the ones it lost.
    fn power_loss(&mut self) {
        let committed = self.store.inner.progress.lock().committed;
        self.store.crash_losing_unsynced().unwrap();
        self.reopen();
        let kept = self.store.applied_seq();
        let last = self.since.last().map_or(self.base.0, |e| e.0);
        assert!(
            committed <= kept && kept <= last,
            "reopened at seq {kept}; {committed} was committed, {last} applied"
        );
        let state = if kept == self.base.0 {
            self.base.1.clone()
        } else {
            let e = self.since.iter().find(|e| e.0 == kept);
            e.expect("reopened at a transaction boundary").1.clone()
        };
        let lost: Vec<Transaction> = self
            .since
            .iter()
            .filter(|e| e.0 > kept)
            .map(|e| e.2.clone())
            .collect();
        check_allowing(&self.store, &state, &|k, pos, got| {
            lost_byte(&lost, k, pos, got)
        });
        self.model = state;
        self.take_data_as_found();
    }

    /// Power loss that keeps the whole journal but takes back every byte
    /// the object files were not synced with: every applied transaction
    /// survives, and each data byte reads as some state since the last
    /// commit has it. A committed byte never goes back to an older value
    /// (replay must not skip a journaled write for an in-place one whose
    /// bytes were lost).
    fn power_loss_losing_data(&mut self) {
        let committed = self.store.inner.progress.lock().committed;
        let last = self.since.last().map_or(self.base.0, |e| e.0);
        let mut states: Vec<Model> = Vec::new();
        if self.base.0 >= committed {
            states.push(self.base.1.clone());
        }
        states.extend(
            self.since
                .iter()
                .filter(|e| e.0 >= committed)
                .map(|e| e.1.clone()),
        );
        self.store.crash_losing_unsynced_data().unwrap();
        self.reopen();
        assert_eq!(self.store.applied_seq(), last, "the whole journal was kept");
        check_allowing(&self.store, &self.model, &|k, pos, got| {
            states.iter().any(|m| m.byte(k, pos) == Some(got))
        });
        self.take_data_as_found();
    }

    /// After a power loss: the model takes the objects' bytes as read (lost
    /// bytes that did land stay), and all of it is durable now.
    fn take_data_as_found(&mut self) {
        for (c, mc) in &mut self.model.colls {
            for ((name, snap), o) in &mut mc.objects {
                let k = ObjectKey {
                    coll: *c,
                    name: name.clone(),
                    snap: *snap,
                };
                o.data = self.store.read(&k, 0, u64::MAX).unwrap().to_vec();
            }
        }
        self.all_durable();
    }

    /// Queue `txns`, crash, reopen: the store must hold a prefix of them that
    /// includes every transaction whose commit callback ran.
    fn queue_then_crash(&mut self, txns: Vec<Transaction>) {
        let base = self.store.applied_seq();
        let committed = Arc::new(AtomicUsize::new(0));
        let mut states = vec![self.model.clone()];
        for txn in txns {
            let mut next = states.last().unwrap().clone();
            if !next.accepts(&txn) {
                continue;
            }
            let c = committed.clone();
            self.store
                .queue_transaction(
                    txn.clone(),
                    Box::new(move |r| {
                        if r.is_ok() {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                    }),
                    Box::new(|_| {}),
                )
                .unwrap();
            next.apply(&txn);
            states.push(next);
        }
        self.store.crash();
        let acked = committed.load(Ordering::SeqCst);
        self.reopen();
        let kept = (self.store.applied_seq() - base) as usize;
        assert!(
            acked <= kept && kept < states.len(),
            "{kept} transactions survived, {acked} were acknowledged, {} queued",
            states.len() - 1
        );
        self.model = states.swap_remove(kept);
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Txn(t) => self.run_txn(t),
            Step::QueueThenCrash(ts) => {
                self.queue_then_crash(ts);
                self.all_durable();
            }
            Step::Crash => {
                self.store.crash();
                self.reopen();
                self.all_durable();
            }
            Step::Sync => {
                self.store.sync().unwrap();
                self.all_durable();
            }
            Step::SyncThenCrash => {
                self.store.sync().unwrap();
                self.store.crash();
                self.reopen();
                self.all_durable();
            }
            Step::Reopen => {
                self.store.close().unwrap();
                self.reopen();
                self.all_durable();
            }
            Step::PowerLoss => return self.power_loss(),
            Step::PowerLossLosingData => return self.power_loss_losing_data(),
            Step::Commit => {
                self.store.wait_committed().unwrap();
                self.all_durable();
            }
        }
        check(&self.store, &self.model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn test_filestore_matches_model_across_crashes(
        journal_max in prop_oneof![Just(2048u64), Just(32 << 10), Just(64 << 20)],
        direct_write_min in prop_oneof![Just(0u64), Just(1024), Just(4096)],
        in_place_min in prop_oneof![Just(0u64), Just(1024), Just(4096)],
        steps in proptest::collection::vec(step_strategy(), 1..40),
    ) {
        let dir = super::tests::scratch_dir();
        FileStore::mkfs(dir.path()).unwrap();
        let cfg = StoreConfig {
            journal_max_bytes: journal_max,
            direct_write_min,
            in_place_min,
            undo_unsynced: true,
            ..StoreConfig::default()
        };
        let store = FileStore::open(dir.path(), cfg.clone()).unwrap();
        let base = (store.applied_seq(), Model::default());
        let mut h = Harness { dir, cfg, store, model: Model::default(), base, since: Vec::new() };
        for s in steps {
            h.step(s);
        }
        h.store.close().unwrap();
        h.reopen();
        check(&h.store, &h.model);
    }
}
