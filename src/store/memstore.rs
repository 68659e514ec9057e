//! An in-memory [`ObjectStore`]. By default every transaction is applied at
//! once, under one lock, and both callbacks run inline before
//! `queue_transaction` returns. [`MemStore::deferred`] instead applies queued
//! transactions in order on a background thread, so that the window between
//! queueing and "applied" that a real store has can be tested; it also calls
//! every other cached read cold, as a real store whose page cache misses.
//!
//! It exists so that the OSD layer can be tested quickly and so that a cluster
//! can be "restarted" over the same in-memory stores. It keeps nothing on disk,
//! so a crash cannot be modelled with it.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{
    Callback, CollId, ObjectKey, ObjectStore, StoreError, StoreResult, StoreSpace, Transaction,
    TxOp,
};
use crate::rados::SnapId;
use crate::sync::{Arc, AtomicU64, Condvar, Mutex, Ordering};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MemObject {
    data: Vec<u8>,
    attrs: BTreeMap<String, Bytes>,
    omap: BTreeMap<String, Bytes>,
}

#[derive(Clone, Debug, Default)]
struct MemColl {
    objects: BTreeMap<(String, SnapId), MemObject>,
    meta: BTreeMap<String, Bytes>,
}

type Queued = (Transaction, Callback, Callback);

/// Transactions queued but not yet applied (deferred mode).
#[derive(Default)]
struct Backlog {
    queue: std::collections::VecDeque<Queued>,
    queued: u64,
    applied: u64,
}

/// The in-memory store.
#[derive(Default)]
pub struct MemStore {
    colls: Arc<Mutex<BTreeMap<CollId, MemColl>>>,
    deferred: Option<Arc<(Mutex<Backlog>, Condvar)>>,
    /// Cached reads asked so far (a deferred store calls every other one
    /// cold, so that callers take both paths).
    cached_reads: AtomicU64,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("deferred", &self.deferred.is_some())
            .finish_non_exhaustive()
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that applies transactions on a background thread, in order.
    pub fn deferred() -> Self {
        let colls: Arc<Mutex<BTreeMap<CollId, MemColl>>> = Arc::default();
        let backlog: Arc<(Mutex<Backlog>, Condvar)> = Arc::default();
        let (c, b) = (colls.clone(), Arc::downgrade(&backlog));
        std::thread::spawn(move || {
            loop {
                let Some(b) = b.upgrade() else { return };
                let next = {
                    let mut st = b.0.lock();
                    if st.queue.is_empty() {
                        // Wake up now and then to notice the store was dropped.
                        b.1.wait_for(&mut st, std::time::Duration::from_millis(50));
                    }
                    st.queue.pop_front()
                };
                let Some((txn, on_commit, on_applied)) = next else {
                    continue;
                };
                on_commit(Ok(()));
                Self::apply(&mut c.lock(), txn);
                on_applied(Ok(()));
                b.0.lock().applied += 1;
                b.1.notify_all();
            }
        });
        MemStore {
            colls,
            deferred: Some(backlog),
            cached_reads: AtomicU64::new(0),
        }
    }

    fn check_colls(colls: &BTreeMap<CollId, MemColl>, txn: &Transaction) -> StoreResult<()> {
        let mut created: Vec<CollId> = Vec::new();
        let mut removed: Vec<CollId> = Vec::new();
        for op in &txn.ops {
            let coll = match op {
                TxOp::CreateCollection(c) => {
                    created.push(*c);
                    removed.retain(|r| r != c);
                    continue;
                }
                TxOp::RemoveCollection(c) => {
                    removed.push(*c);
                    created.retain(|r| r != c);
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
            let exists =
                created.contains(&coll) || (colls.contains_key(&coll) && !removed.contains(&coll));
            if !exists {
                return Err(StoreError::NoCollection(coll));
            }
        }
        Ok(())
    }

    fn apply(colls: &mut BTreeMap<CollId, MemColl>, txn: Transaction) {
        fn obj<'a>(colls: &'a mut BTreeMap<CollId, MemColl>, k: &ObjectKey) -> &'a mut MemObject {
            colls
                .entry(k.coll)
                .or_default()
                .objects
                .entry((k.name.clone(), k.snap))
                .or_default()
        }
        for op in txn.ops {
            match op {
                TxOp::CreateCollection(c) => {
                    colls.entry(c).or_default();
                }
                TxOp::RemoveCollection(c) => {
                    colls.remove(&c);
                }
                TxOp::Touch(k) => {
                    obj(colls, &k);
                }
                TxOp::Write { key, off, data } => {
                    let o = obj(colls, &key);
                    let end = off as usize + data.len();
                    if o.data.len() < end {
                        o.data.resize(end, 0);
                    }
                    o.data[off as usize..end].copy_from_slice(&data);
                }
                TxOp::Zero { key, off, len } => {
                    let o = obj(colls, &key);
                    let size = o.data.len() as u64;
                    let (a, b) = (
                        off.min(size) as usize,
                        off.saturating_add(len).min(size) as usize,
                    );
                    o.data[a..b].fill(0);
                }
                TxOp::Truncate { key, size } => obj(colls, &key).data.resize(size as usize, 0),
                TxOp::Remove(k) => {
                    if let Some(c) = colls.get_mut(&k.coll) {
                        c.objects.remove(&(k.name, k.snap));
                    }
                }
                TxOp::Clone { from, to } => {
                    let src = colls
                        .get(&from.coll)
                        .and_then(|c| c.objects.get(&(from.name.clone(), from.snap)))
                        .cloned();
                    match src {
                        Some(s) => *obj(colls, &to) = s,
                        None => {
                            if let Some(c) = colls.get_mut(&to.coll) {
                                c.objects.remove(&(to.name, to.snap));
                            }
                        }
                    }
                }
                TxOp::SetAttrs { key, attrs } => obj(colls, &key).attrs.extend(attrs),
                TxOp::RmAttr { key, name } => {
                    obj(colls, &key).attrs.remove(&name);
                }
                TxOp::OmapSet { key, entries } => obj(colls, &key).omap.extend(entries),
                TxOp::OmapRmKeys { key, keys } => {
                    let o = obj(colls, &key);
                    for k in keys {
                        o.omap.remove(&k);
                    }
                }
                TxOp::OmapClear(k) => obj(colls, &k).omap.clear(),
                TxOp::CollMetaSet { coll, entries } => {
                    colls.entry(coll).or_default().meta.extend(entries)
                }
                TxOp::CollMetaRm { coll, keys } => {
                    if let Some(c) = colls.get_mut(&coll) {
                        for k in keys {
                            c.meta.remove(&k);
                        }
                    }
                }
            }
        }
    }

    fn with_obj<T>(&self, key: &ObjectKey, f: impl FnOnce(&MemObject) -> T) -> StoreResult<T> {
        let colls = self.colls.lock();
        let c = colls
            .get(&key.coll)
            .ok_or(StoreError::NoCollection(key.coll))?;
        let o = c
            .objects
            .get(&(key.name.clone(), key.snap))
            .ok_or_else(|| StoreError::NotFound(format!("{}@{:x}", key.name, key.snap)))?;
        Ok(f(o))
    }
}

impl ObjectStore for MemStore {
    fn queue_transaction(
        &self,
        txn: Transaction,
        on_commit: Callback,
        on_applied: Callback,
    ) -> StoreResult<()> {
        if let Some(b) = &self.deferred {
            let mut st = b.0.lock();
            st.queued += 1;
            st.queue.push_back((txn, on_commit, on_applied));
            b.1.notify_all();
            return Ok(());
        }
        {
            let mut colls = self.colls.lock();
            Self::check_colls(&colls, &txn)?;
            Self::apply(&mut colls, txn);
        }
        on_commit(Ok(()));
        on_applied(Ok(()));
        Ok(())
    }

    fn read(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Bytes> {
        self.with_obj(key, |o| {
            let size = o.data.len() as u64;
            let (a, b) = (off.min(size), off.saturating_add(len).min(size));
            Bytes::copy_from_slice(&o.data[a as usize..b as usize])
        })
    }

    fn read_cached(&self, key: &ObjectKey, off: u64, len: u64) -> StoreResult<Option<Bytes>> {
        if self.deferred.is_some() && self.cached_reads.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
            return Ok(None);
        }
        self.read(key, off, len).map(Some)
    }

    fn stat(&self, key: &ObjectKey) -> StoreResult<u64> {
        self.with_obj(key, |o| o.data.len() as u64)
    }

    fn exists(&self, key: &ObjectKey) -> bool {
        self.with_obj(key, |_| ()).is_ok()
    }

    fn getattrs(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.with_obj(key, |o| o.attrs.clone())
    }

    fn omap_get(&self, key: &ObjectKey) -> StoreResult<BTreeMap<String, Bytes>> {
        self.with_obj(key, |o| o.omap.clone())
    }

    fn list_objects(&self, coll: CollId) -> StoreResult<Vec<ObjectKey>> {
        let colls = self.colls.lock();
        let c = colls.get(&coll).ok_or(StoreError::NoCollection(coll))?;
        Ok(c.objects
            .keys()
            .map(|(name, snap)| ObjectKey {
                coll,
                name: name.clone(),
                snap: *snap,
            })
            .collect())
    }

    fn list_collections(&self) -> Vec<CollId> {
        self.colls.lock().keys().copied().collect()
    }

    fn coll_meta_get(&self, coll: CollId) -> StoreResult<BTreeMap<String, Bytes>> {
        let colls = self.colls.lock();
        let c = colls.get(&coll).ok_or(StoreError::NoCollection(coll))?;
        Ok(c.meta.clone())
    }

    fn wait_applied(&self) -> StoreResult<()> {
        if let Some(b) = &self.deferred {
            let mut st = b.0.lock();
            let target = st.queued;
            while st.applied < target {
                b.1.wait(&mut st);
            }
        }
        Ok(())
    }

    fn wait_committed(&self) -> StoreResult<()> {
        self.wait_applied()
    }

    fn space(&self) -> StoreResult<StoreSpace> {
        let used = self
            .colls
            .lock()
            .values()
            .flat_map(|c| c.objects.values())
            .map(|o| o.data.len() as u64)
            .sum();
        Ok(StoreSpace {
            total: u64::MAX,
            available: u64::MAX - used,
            used,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            coll: CollId { pool: 1, pg: 0 },
            name: name.into(),
            snap: crate::rados::SNAP_HEAD,
        }
    }

    fn queue(s: &MemStore, ops: Vec<TxOp>) -> StoreResult<()> {
        s.queue_transaction(Transaction::from(ops), Box::new(|_| {}), Box::new(|_| {}))
    }

    #[test]
    fn test_memstore_write_without_collection_is_rejected_and_changes_nothing() {
        let s = MemStore::new();

        let r = queue(
            &s,
            vec![TxOp::Write {
                key: key("a"),
                off: 0,
                data: Bytes::from_static(b"x"),
            }],
        );

        assert!(matches!(r, Err(StoreError::NoCollection(_))));
        assert!(s.list_collections().is_empty());
    }

    #[test]
    fn test_memstore_deferred_applies_in_order_and_wait_applied_waits() {
        let s = MemStore::deferred();
        let coll = key("a").coll;
        queue(&s, vec![TxOp::CreateCollection(coll)]).unwrap();
        for i in 0..50u8 {
            queue(
                &s,
                vec![TxOp::Write {
                    key: key("a"),
                    off: 0,
                    data: Bytes::copy_from_slice(&[i]),
                }],
            )
            .unwrap();
        }

        s.wait_applied().unwrap();

        assert_eq!(s.read(&key("a"), 0, 1).unwrap(), &[49u8][..]);
    }

    #[test]
    fn test_memstore_clone_copies_data_attrs_and_omap() {
        let s = MemStore::new();
        let mut to = key("a");
        to.snap = 4;
        queue(
            &s,
            vec![
                TxOp::CreateCollection(key("a").coll),
                TxOp::Write {
                    key: key("a"),
                    off: 2,
                    data: Bytes::from_static(b"xy"),
                },
                TxOp::SetAttrs {
                    key: key("a"),
                    attrs: [("k".to_string(), Bytes::from_static(b"v"))].into(),
                },
                TxOp::OmapSet {
                    key: key("a"),
                    entries: [("o".to_string(), Bytes::from_static(b"w"))].into(),
                },
            ],
        )
        .unwrap();

        queue(
            &s,
            vec![TxOp::Clone {
                from: key("a"),
                to: to.clone(),
            }],
        )
        .unwrap();

        assert_eq!(s.read(&to, 0, 10).unwrap(), &b"\0\0xy"[..]);
        assert_eq!(s.getattrs(&to).unwrap().len(), 1);
        assert_eq!(s.omap_get(&to).unwrap().len(), 1);
    }
}
