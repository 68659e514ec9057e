//! A plain in-memory object store with librados semantics.
//!
//! It is the reference model the replicated store is checked against, and a
//! backend on which `rbd/` can be tested quickly. It is written for clarity, not
//! speed: every object is a `Vec<u8>`, every clone a full copy.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::{
    BoxFuture, CloneInfo, ObjectStat, PoolId, PoolInfo, RadosBackend, RadosError, ReadOp,
    ReadResult, Result, SNAP_HEAD, SnapContext, SnapId, SnapSetInfo, WriteOp,
};
use crate::sync::Mutex;

/// Largest object the layer accepts (Ceph's `osd_max_object_size` default).
pub const MAX_OBJECT_SIZE: u64 = 128 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    data: Vec<u8>,
    xattrs: BTreeMap<String, Bytes>,
    omap: BTreeMap<String, Bytes>,
}

#[derive(Clone, Debug)]
struct Clone {
    id: SnapId,
    /// Ascending.
    snaps: Vec<SnapId>,
    state: State,
}

#[derive(Clone, Debug, Default)]
struct Object {
    head: Option<State>,
    seq: SnapId,
    /// Oldest first.
    clones: Vec<Clone>,
}

#[derive(Debug)]
struct Pool {
    info: PoolInfo,
    snap_seq: SnapId,
    removed: BTreeSet<SnapId>,
    objects: BTreeMap<String, Object>,
}

#[derive(Debug, Default)]
struct Inner {
    pools: BTreeMap<PoolId, Pool>,
    next_pool: PoolId,
}

/// The in-memory backend. Every operation completes at once.
#[derive(Debug, Default)]
pub struct MemRados {
    inner: Mutex<Inner>,
}

impl MemRados {
    pub fn new() -> Self {
        Self::default()
    }

    fn pool_mut(inner: &mut Inner, pool: PoolId) -> Result<&mut Pool> {
        inner
            .pools
            .get_mut(&pool)
            .ok_or_else(|| RadosError::PoolNotFound(pool.to_string()))
    }

    /// Synchronous form of [`RadosBackend::read`].
    pub fn read_now(
        &self,
        pool: PoolId,
        oid: &str,
        snap: SnapId,
        ops: &[ReadOp],
    ) -> Result<Vec<ReadResult>> {
        let mut inner = self.inner.lock();
        let pool = Self::pool_mut(&mut inner, pool)?;
        let obj = pool.objects.get(oid);
        if ops.iter().any(|o| matches!(o, ReadOp::ListSnaps)) && snap != SNAP_HEAD {
            return Err(RadosError::InvalidArgument(
                "list_snaps is only valid at the head".into(),
            ));
        }
        let state = match obj {
            Some(o) => resolve(pool.snap_seq, &pool.removed, o, snap),
            None => None,
        };
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op {
                ReadOp::ListSnaps => {
                    let o = obj.ok_or(RadosError::NotFound)?;
                    let mut clones: Vec<CloneInfo> = o
                        .clones
                        .iter()
                        .map(|c| CloneInfo {
                            cloneid: c.id,
                            snaps: c.snaps.clone(),
                            size: c.state.data.len() as u64,
                        })
                        .collect();
                    if let Some(h) = &o.head {
                        clones.push(CloneInfo {
                            cloneid: SNAP_HEAD,
                            snaps: vec![],
                            size: h.data.len() as u64,
                        });
                    }
                    ReadResult::Snaps(SnapSetInfo { seq: o.seq, clones })
                }
                ReadOp::CmpXattr { name, value } => {
                    let s = state.ok_or(RadosError::NotFound)?;
                    if s.xattrs.get(name).map(|v| v.as_ref()).unwrap_or(b"") != value.as_ref() {
                        return Err(RadosError::Canceled);
                    }
                    ReadResult::Done
                }
                other => read_step(state.ok_or(RadosError::NotFound)?, other)?,
            });
        }
        Ok(out)
    }

    /// Synchronous form of [`RadosBackend::write`].
    pub fn write_now(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: &SnapContext,
        ops: &[WriteOp],
    ) -> Result<()> {
        if !snapc.is_valid() {
            return Err(RadosError::InvalidArgument(format!(
                "bad snap context {snapc:?}"
            )));
        }
        let mut inner = self.inner.lock();
        let pool = Self::pool_mut(&mut inner, pool)?;
        let mut obj = pool.objects.get(oid).cloned().unwrap_or_default();
        make_writeable(&mut obj, snapc, &pool.removed);
        for op in ops {
            apply_write(&mut obj, op)?;
        }
        if obj.head.is_none() && obj.clones.is_empty() {
            pool.objects.remove(oid);
        } else {
            pool.objects.insert(oid.to_string(), obj);
        }
        Ok(())
    }

    /// Synchronous form of [`RadosBackend::snap_remove`]; trims at once.
    pub fn snap_remove_now(&self, pool: PoolId, snap: SnapId) -> Result<()> {
        let mut inner = self.inner.lock();
        let pool = Self::pool_mut(&mut inner, pool)?;
        if snap == 0 || snap > pool.snap_seq || !pool.removed.insert(snap) {
            return Err(RadosError::NotFound);
        }
        pool.objects.retain(|_, o| {
            for c in &mut o.clones {
                c.snaps.retain(|&s| s != snap);
            }
            o.clones.retain(|c| !c.snaps.is_empty());
            o.head.is_some() || !o.clones.is_empty()
        });
        Ok(())
    }
}

/// The state of `obj` as seen at `snap`, or `None` if it did not exist then.
fn resolve<'a>(
    snap_seq: SnapId,
    removed: &BTreeSet<SnapId>,
    obj: &'a Object,
    snap: SnapId,
) -> Option<&'a State> {
    if snap == SNAP_HEAD {
        return obj.head.as_ref();
    }
    if snap > snap_seq || removed.contains(&snap) {
        return None;
    }
    if snap > obj.seq {
        return obj.head.as_ref();
    }
    let clone = obj.clones.iter().find(|c| c.id >= snap)?;
    clone.snaps.contains(&snap).then_some(&clone.state)
}

/// Preserve the head as a clone for the snapshots taken since the object was last
/// written (copy-on-write), and record the writer's snapshot sequence.
fn make_writeable(obj: &mut Object, snapc: &SnapContext, removed: &BTreeSet<SnapId>) {
    if snapc.seq <= obj.seq {
        return;
    }
    if let Some(head) = &obj.head {
        let mut snaps: Vec<SnapId> = snapc
            .snaps
            .iter()
            .copied()
            .filter(|s| *s > obj.seq && !removed.contains(s))
            .collect();
        snaps.reverse();
        if !snaps.is_empty() {
            obj.clones.push(Clone {
                id: snapc.seq,
                snaps,
                state: head.clone(),
            });
        }
    }
    obj.seq = snapc.seq;
}

fn read_step(s: &State, op: &ReadOp) -> Result<ReadResult> {
    Ok(match op {
        ReadOp::Read { off, len } => {
            let end = off
                .checked_add(*len)
                .ok_or_else(|| RadosError::InvalidArgument("read range overflows".into()))?;
            let size = s.data.len() as u64;
            let (a, b) = ((*off).min(size) as usize, end.min(size) as usize);
            ReadResult::Data(Bytes::copy_from_slice(&s.data[a..b]))
        }
        ReadOp::Stat => ReadResult::Stat(ObjectStat {
            size: s.data.len() as u64,
        }),
        ReadOp::GetXattr { name } => {
            ReadResult::Xattr(s.xattrs.get(name).cloned().ok_or(RadosError::NoData)?)
        }
        ReadOp::GetXattrs => ReadResult::Xattrs(s.xattrs.clone()),
        ReadOp::OmapGetVals { start_after, max } => {
            let iter = s
                .omap
                .range::<String, _>((
                    std::ops::Bound::Excluded(start_after.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .take(*max as usize);
            ReadResult::Omap(iter.map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        ReadOp::OmapGetValsByKeys { keys } => ReadResult::Omap(
            keys.iter()
                .filter_map(|k| s.omap.get(k).map(|v| (k.clone(), v.clone())))
                .collect(),
        ),
        ReadOp::AssertExists => ReadResult::Done,
        ReadOp::CmpXattr { .. } | ReadOp::ListSnaps => unreachable!("handled by the caller"),
    })
}

fn check_extent(off: u64, len: u64) -> Result<u64> {
    match off.checked_add(len) {
        Some(end) if end <= MAX_OBJECT_SIZE => Ok(end),
        _ => Err(RadosError::InvalidArgument(format!(
            "extent {off}+{len} is past the largest object size {MAX_OBJECT_SIZE}"
        ))),
    }
}

fn apply_write(obj: &mut Object, op: &WriteOp) -> Result<()> {
    match op {
        WriteOp::FullTry => {}
        WriteOp::AssertExists => {
            obj.head.as_ref().ok_or(RadosError::NotFound)?;
        }
        WriteOp::CmpXattr { name, value } => {
            let cur = obj.head.as_ref().and_then(|h| h.xattrs.get(name));
            if cur.map(|v| v.as_ref()).unwrap_or(b"") != value.as_ref() {
                return Err(RadosError::Canceled);
            }
        }
        WriteOp::Create { exclusive } => {
            if obj.head.is_some() && *exclusive {
                return Err(RadosError::Exists);
            }
            obj.head.get_or_insert_with(State::default);
        }
        WriteOp::Write { off, data } => {
            let end = check_extent(*off, data.len() as u64)? as usize;
            let h = obj.head.get_or_insert_with(State::default);
            if h.data.len() < end {
                h.data.resize(end, 0);
            }
            h.data[*off as usize..end].copy_from_slice(data);
        }
        WriteOp::WriteFull { data } => {
            check_extent(0, data.len() as u64)?;
            obj.head.get_or_insert_with(State::default).data = data.to_vec();
        }
        WriteOp::Zero { off, len } => {
            let end = check_extent(*off, *len)?;
            if let Some(h) = obj.head.as_mut() {
                let size = h.data.len() as u64;
                let (a, b) = ((*off).min(size) as usize, end.min(size) as usize);
                h.data[a..b].fill(0);
            }
        }
        WriteOp::Truncate { size } => {
            check_extent(*size, 0)?;
            obj.head
                .get_or_insert_with(State::default)
                .data
                .resize(*size as usize, 0);
        }
        WriteOp::Remove => {
            obj.head.take().ok_or(RadosError::NotFound)?;
        }
        WriteOp::SetXattr { name, value } => {
            let h = obj.head.get_or_insert_with(State::default);
            h.xattrs.insert(name.clone(), value.clone());
        }
        WriteOp::RmXattr { name } => {
            let h = obj.head.as_mut().ok_or(RadosError::NotFound)?;
            h.xattrs.remove(name).ok_or(RadosError::NoData)?;
        }
        WriteOp::OmapSet { entries } => {
            let h = obj.head.get_or_insert_with(State::default);
            h.omap
                .extend(entries.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        WriteOp::OmapRmKeys { keys } => {
            let h = obj.head.get_or_insert_with(State::default);
            for k in keys {
                h.omap.remove(k);
            }
        }
        WriteOp::OmapClear => {
            if let Some(h) = obj.head.as_mut() {
                h.omap.clear();
            }
        }
    }
    Ok(())
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl RadosBackend for MemRados {
    fn read(
        &self,
        pool: PoolId,
        oid: &str,
        snap: SnapId,
        ops: Vec<ReadOp>,
    ) -> BoxFuture<'static, Result<Vec<ReadResult>>> {
        ready(self.read_now(pool, oid, snap, &ops))
    }

    fn write(
        &self,
        pool: PoolId,
        oid: &str,
        snapc: SnapContext,
        ops: Vec<WriteOp>,
    ) -> BoxFuture<'static, Result<()>> {
        ready(self.write_now(pool, oid, &snapc, &ops))
    }

    fn flush(&self) -> BoxFuture<'static, Result<()>> {
        ready(Ok(()))
    }

    fn list_objects(&self, pool: PoolId) -> BoxFuture<'static, Result<Vec<String>>> {
        let mut inner = self.inner.lock();
        ready(Self::pool_mut(&mut inner, pool).map(|p| p.objects.keys().cloned().collect()))
    }

    fn snap_create(&self, pool: PoolId) -> BoxFuture<'static, Result<SnapId>> {
        let mut inner = self.inner.lock();
        ready(Self::pool_mut(&mut inner, pool).map(|p| {
            p.snap_seq += 1;
            p.snap_seq
        }))
    }

    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> BoxFuture<'static, Result<()>> {
        ready(self.snap_remove_now(pool, snap))
    }

    fn pool_create(
        &self,
        name: &str,
        size: Option<u32>,
        min_size: Option<u32>,
        pg_num: Option<u32>,
    ) -> BoxFuture<'static, Result<PoolInfo>> {
        let mut inner = self.inner.lock();
        if inner.pools.values().any(|p| p.info.name == name) {
            return ready(Err(RadosError::PoolExists(name.to_string())));
        }
        let id = inner.next_pool + 1;
        inner.next_pool = id;
        let size = size.unwrap_or(3);
        let info = PoolInfo {
            id,
            name: name.to_string(),
            size,
            min_size: min_size.unwrap_or(size.div_ceil(2).max(1)),
            pg_num: pg_num.unwrap_or(32),
        };
        inner.pools.insert(
            id,
            Pool {
                info: info.clone(),
                snap_seq: 0,
                removed: BTreeSet::new(),
                objects: BTreeMap::new(),
            },
        );
        ready(Ok(info))
    }

    fn pool_list(&self) -> Result<Vec<PoolInfo>> {
        Ok(self
            .inner
            .lock()
            .pools
            .values()
            .map(|p| p.info.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (MemRados, PoolId) {
        let m = MemRados::new();
        let id = futures::executor::block_on(m.pool_create("rbd", None, None, None))
            .unwrap()
            .id;
        (m, id)
    }

    fn w(data: &[u8], off: u64) -> Vec<WriteOp> {
        vec![WriteOp::Write {
            off,
            data: Bytes::copy_from_slice(data),
        }]
    }

    fn read_all(m: &MemRados, p: PoolId, snap: SnapId) -> Result<Bytes> {
        m.read_now(
            p,
            "o",
            snap,
            &[ReadOp::Read {
                off: 0,
                len: 1 << 20,
            }],
        )
        .map(|mut r| r.pop().unwrap().into_data())
    }

    #[test]
    fn test_write_after_snap_preserves_old_content_at_snap() {
        let (m, p) = setup();
        m.write_now(p, "o", &SnapContext::empty(), &w(b"old", 0))
            .unwrap();
        let s1 = futures::executor::block_on(m.snap_create(p)).unwrap();
        let snapc = SnapContext {
            seq: s1,
            snaps: vec![s1],
        };

        m.write_now(p, "o", &snapc, &w(b"new", 0)).unwrap();

        assert_eq!(read_all(&m, p, SNAP_HEAD).unwrap(), &b"new"[..]);
        assert_eq!(read_all(&m, p, s1).unwrap(), &b"old"[..]);
    }

    #[test]
    fn test_read_at_snap_before_creation_is_not_found() {
        let (m, p) = setup();
        let s1 = futures::executor::block_on(m.snap_create(p)).unwrap();
        let snapc = SnapContext {
            seq: s1,
            snaps: vec![s1],
        };

        m.write_now(p, "o", &snapc, &w(b"x", 0)).unwrap();

        assert_eq!(read_all(&m, p, s1), Err(RadosError::NotFound));
    }

    #[test]
    fn test_snap_remove_trims_clone_and_later_reads_fail() {
        let (m, p) = setup();
        m.write_now(p, "o", &SnapContext::empty(), &w(b"a", 0))
            .unwrap();
        let s1 = futures::executor::block_on(m.snap_create(p)).unwrap();
        m.write_now(
            p,
            "o",
            &SnapContext {
                seq: s1,
                snaps: vec![s1],
            },
            &w(b"b", 0),
        )
        .unwrap();

        m.snap_remove_now(p, s1).unwrap();

        assert_eq!(read_all(&m, p, s1), Err(RadosError::NotFound));
        let snaps = m.read_now(p, "o", SNAP_HEAD, &[ReadOp::ListSnaps]).unwrap();
        let ReadResult::Snaps(info) = &snaps[0] else {
            panic!()
        };
        assert_eq!(info.clones.len(), 1, "only the head is left: {info:?}");
    }

    #[test]
    fn test_failed_guard_changes_nothing() {
        let (m, p) = setup();
        m.write_now(p, "o", &SnapContext::empty(), &w(b"a", 0))
            .unwrap();
        let ops = vec![
            WriteOp::Write {
                off: 0,
                data: Bytes::from_static(b"zz"),
            },
            WriteOp::CmpXattr {
                name: "k".into(),
                value: Bytes::from_static(b"v"),
            },
        ];

        assert_eq!(
            m.write_now(p, "o", &SnapContext::empty(), &ops),
            Err(RadosError::Canceled)
        );
        assert_eq!(read_all(&m, p, SNAP_HEAD).unwrap(), &b"a"[..]);
    }
}
