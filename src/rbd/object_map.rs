//! Object maps: per image head and per snapshot, which data objects exist.
//!
//! Object `rbd_object_map.<id>` (head) or `rbd_object_map.<id>.<snapid:016x>`
//! (a snapshot) holds, version 1:
//! ```text
//! u8 version=1 | u64 object_count | object_count x u8 state
//! ```
//! with one byte per object (`NONEXISTENT` = 0, `EXISTS` = 1, `EXISTS_CLEAN` =
//! 3: exists and unchanged since the last snapshot, as librbd's fast-diff
//! states), so one object's
//! state is updated by a one-byte write at `HEADER_LEN + objno` without a
//! read-modify-write of its neighbours.
//!
//! Crash-safety rule (enforced in `io/` and `operation/`): an object is marked
//! `EXISTS` (durably) *before* the write that may create it is sent, and marked
//! `NONEXISTENT` only *after* its removal completed. The map can therefore claim
//! an object that does not exist (a read then probes and finds nothing), but never
//! miss one that does. `rebuild` recomputes every map from the objects.

use bytes::Bytes;

use crate::rados::{
    IoCtx, RadosError, ReadOp, ReadResult, SNAP_HEAD, SnapContext, SnapId, WriteOp,
};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::ImageCtx;
use crate::rbd::image::codec::{Decoder, Encoder};
use crate::rbd::image::names;

const VERSION: u8 = 1;
/// Bytes before the first state byte.
pub const HEADER_LEN: u64 = 9;
pub const NONEXISTENT: u8 = 0;
pub const EXISTS: u8 = 1;
/// Exists, and not written since the newest snapshot was taken (the head map
/// turns every `EXISTS` into this when a snapshot is taken; a write turns it
/// back). `du` counts only `EXISTS` objects per snapshot: what changed.
pub const EXISTS_CLEAN: u8 = 3;

/// An in-memory object map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMap {
    states: Vec<u8>,
}

impl ObjectMap {
    /// A map of `count` objects, none existing.
    pub fn new(count: u64) -> Self {
        Self {
            states: vec![NONEXISTENT; count as usize],
        }
    }

    /// A map of `count` objects that claims all of them (safe when unknown).
    pub fn all_existing(count: u64) -> Self {
        Self {
            states: vec![EXISTS; count as usize],
        }
    }

    pub fn len(&self) -> u64 {
        self.states.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// True when object `objno` may exist (false past the end of the map).
    pub fn exists(&self, objno: u64) -> bool {
        self.states
            .get(objno as usize)
            .is_some_and(|&s| s != NONEXISTENT)
    }

    /// The state of `objno` (`NONEXISTENT` past the end).
    pub fn state(&self, objno: u64) -> u8 {
        self.states
            .get(objno as usize)
            .copied()
            .unwrap_or(NONEXISTENT)
    }

    /// Mark every existing object clean (a snapshot was just taken).
    pub fn mark_clean(&mut self) {
        for s in &mut self.states {
            if *s == EXISTS {
                *s = EXISTS_CLEAN;
            }
        }
    }

    /// Number of objects written since the previous snapshot (`EXISTS`).
    pub fn count_dirty(&self) -> u64 {
        self.states.iter().filter(|&&s| s == EXISTS).count() as u64
    }

    pub fn set(&mut self, objno: u64, state: u8) {
        if let Some(s) = self.states.get_mut(objno as usize) {
            *s = state;
        }
    }

    /// Grow (new objects absent) or shrink the map.
    pub fn resize(&mut self, count: u64) {
        self.states.resize(count as usize, NONEXISTENT);
    }

    /// Number of objects marked existing.
    pub fn count_existing(&self) -> u64 {
        self.states.iter().filter(|&&s| s != NONEXISTENT).count() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u8(VERSION);
        e.u64(self.len());
        e.buf.extend_from_slice(&self.states);
        e.buf
    }

    pub fn decode(buf: &[u8]) -> Result<ObjectMap> {
        let mut d = Decoder::new(buf, "object map");
        let v = d.u8()?;
        if v != VERSION {
            return Err(d.err(format!("unknown version {v}")));
        }
        let n = d.u64()?;
        if n != d.remaining() as u64 {
            return Err(d.err(format!(
                "{n} objects announced, {} state bytes present",
                d.remaining()
            )));
        }
        let states = d.bytes(n as usize)?.to_vec();
        if let Some(bad) = states
            .iter()
            .find(|&&s| ![NONEXISTENT, EXISTS, EXISTS_CLEAN].contains(&s))
        {
            return Err(d.err(format!("bad object state {bad}")));
        }
        Ok(ObjectMap { states })
    }

    /// Read the map stored in `oid`.
    pub async fn load(ioctx: &IoCtx, oid: &str) -> Result<ObjectMap> {
        let data = ioctx
            .operate_read(
                oid,
                SNAP_HEAD,
                vec![ReadOp::Read {
                    off: 0,
                    len: crate::rados::mem::MAX_OBJECT_SIZE,
                }],
            )
            .await
            .map_err(|e| RbdError::rados(oid, e))?
            .pop()
            .map(ReadResult::into_data)
            .unwrap_or_default();
        Self::decode(&data)
    }

    /// Store the whole map in `oid` (atomic replace).
    pub async fn save(&self, ioctx: &IoCtx, oid: &str) -> Result<()> {
        self.save_with(ioctx, oid, Vec::new()).await
    }

    /// [`ObjectMap::save`] for an operation that frees space (a shrink): it
    /// may use the stores' reserve (`WriteOp::FullTry`).
    pub async fn save_freeing(&self, ioctx: &IoCtx, oid: &str) -> Result<()> {
        self.save_with(ioctx, oid, vec![WriteOp::FullTry]).await
    }

    async fn save_with(&self, ioctx: &IoCtx, oid: &str, mut ops: Vec<WriteOp>) -> Result<()> {
        ops.push(WriteOp::WriteFull {
            data: Bytes::from(self.encode()),
        });
        ioctx
            .operate_write(oid, &SnapContext::empty(), ops)
            .await
            .map_err(|e| RbdError::rados(oid, e))
    }

    /// Store one object's state in `oid` (a one-byte write). With
    /// `freeing`, the bookkeeping of data going away (a discard, a trim): it
    /// may use the stores' reserve.
    pub async fn save_state(
        ioctx: &IoCtx,
        oid: &str,
        objno: u64,
        state: u8,
        freeing: bool,
    ) -> Result<()> {
        let mut ops = vec![WriteOp::AssertExists];
        if freeing {
            ops.push(WriteOp::FullTry);
        }
        ops.push(WriteOp::Write {
            off: HEADER_LEN + objno,
            data: Bytes::copy_from_slice(&[state]),
        });
        ioctx
            .operate_write(oid, &SnapContext::empty(), ops)
            .await
            .map_err(|e| RbdError::rados(oid, e))
    }
}

/// Recompute the head map and every snapshot map of `ctx` from the objects:
/// an object exists at the head if its head exists, and at snapshot `s` if a
/// read at `s` finds it.
pub async fn rebuild(ctx: &ImageCtx) -> Result<()> {
    let _gate = ctx.io_gate.write().await;
    let hdr = ctx.header();
    let count = crate::rbd::io::striper::object_count(hdr.size, hdr.order);
    let mut head = ObjectMap::new(count);
    let mut snaps: Vec<(SnapId, ObjectMap)> = hdr
        .snaps
        .iter()
        .map(|s| {
            (
                s.id,
                ObjectMap::new(crate::rbd::io::striper::object_count(s.size, hdr.order)),
            )
        })
        .collect();
    let max = snaps
        .iter()
        .map(|s| s.1.len())
        .max()
        .unwrap_or(0)
        .max(count);
    for objno in 0..max {
        let oid = names::data_oid(ctx.id(), objno);
        for (snap, map) in
            std::iter::once((SNAP_HEAD, &mut head)).chain(snaps.iter_mut().map(|(s, m)| (*s, m)))
        {
            if objno >= map.len() {
                continue;
            }
            match ctx.ioctx.stat(&oid, snap).await {
                Ok(_) => map.set(objno, EXISTS),
                Err(RadosError::NotFound) => {}
                Err(e) => return Err(RbdError::rados(&oid, e)),
            }
        }
    }
    head.save(&ctx.ioctx, &names::object_map_oid(ctx.id(), SNAP_HEAD))
        .await?;
    for (snap, map) in &snaps {
        map.save(&ctx.ioctx, &names::object_map_oid(ctx.id(), *snap))
            .await?;
    }
    *ctx.head_map.lock() = head;
    let mut cache = ctx.snap_maps.lock();
    for (snap, map) in snaps {
        cache.insert(snap, map);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_object_map_encode_matches_golden_bytes() {
        let mut m = ObjectMap::new(3);
        m.set(1, EXISTS);

        assert_eq!(m.encode(), vec![1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn test_object_map_roundtrip_is_identity() {
        let mut m = ObjectMap::new(10);
        m.set(9, EXISTS);

        assert_eq!(ObjectMap::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn test_object_map_corrupt_input_is_error() {
        let good = ObjectMap::new(4).encode();
        for cut in 0..good.len() {
            assert!(ObjectMap::decode(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = good.clone();
        bad[HEADER_LEN as usize] = 2;
        assert!(ObjectMap::decode(&bad).is_err());
        bad = good;
        bad[0] = 2;
        assert!(ObjectMap::decode(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn test_objectmap_decode_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = ObjectMap::decode(&bytes);
        }
    }
}
