//! Reading through the parent chain.
//!
//! A [`ParentView`] is one ancestor at the snapshot a child links to: its data
//! objects, its object map at that snapshot (snapshot maps never lose objects,
//! so a cached copy is safe: copyups only move parent data down, never change
//! it) and its own link further up. To read object N the chain is resolved from
//! the cached maps first, so a read through a 16-deep chain costs one object
//! read (at the first ancestor whose map has N), not 16 probes. A probe that
//! finds nothing (a map may claim an object a crash kept from being written)
//! continues up the chain.

use bytes::{Bytes, BytesMut};

use crate::rados::{IoCtx, RadosError, SnapId};
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::header::ParentLink;
use crate::rbd::image::{directory, names};
use crate::rbd::io::striper;
use crate::rbd::object_map::ObjectMap;
use crate::sync::Arc;

/// Longest chain followed before the header data is declared corrupt (a loop).
const MAX_CHAIN: u32 = 256;

/// One ancestor image at one of its snapshots.
pub struct ParentView {
    pub ioctx: IoCtx,
    pub image_id: String,
    pub image_name: String,
    pub snap_id: SnapId,
    pub snap_name: String,
    pub order: u8,
    /// The ancestor's object map at `snap_id`.
    pub map: ObjectMap,
    /// The ancestor's own parent at that snapshot, with its overlap.
    pub up: Option<(Arc<ParentView>, u64)>,
}

impl ParentView {
    /// Load the chain starting at `link`.
    pub async fn load(rbd: &Rbd, link: &ParentLink, depth: u32) -> Result<Arc<ParentView>> {
        if depth > MAX_CHAIN {
            return Err(RbdError::corrupt(
                "parent chain",
                format!("longer than {MAX_CHAIN} links"),
            ));
        }
        let ioctx = rbd.rados().ioctx_by_id(link.pool_id);
        let hdr = directory::read_header(&ioctx, &link.image_id).await?;
        let rec = hdr.snap_by_id(link.snap_id).ok_or_else(|| {
            RbdError::SnapNotFound(format!("parent {}@{}", link.image_id, link.snap_id))
        })?;
        let mut map =
            ObjectMap::load(&ioctx, &names::object_map_oid(&link.image_id, link.snap_id)).await?;
        map.resize(striper::object_count(rec.size, hdr.order));
        let up = match &rec.parent {
            Some(pl) => Some((Box::pin(Self::load(rbd, pl, depth + 1)).await?, pl.overlap)),
            None => None,
        };
        let image_name = directory::image_name(&ioctx, &link.image_id)
            .await?
            .unwrap_or_else(|| link.image_id.clone());
        Ok(Arc::new(ParentView {
            ioctx,
            image_id: link.image_id.clone(),
            image_name,
            snap_id: link.snap_id,
            snap_name: rec.name.clone(),
            order: hdr.order,
            map,
            up,
        }))
    }

    /// The ancestors from this one up, each with the limit that applies to
    /// it: the smallest overlap on the way up (image offsets at or past it
    /// read as zeros from there on).
    fn chain(&self, overlap: u64) -> impl Iterator<Item = (&ParentView, u64)> {
        std::iter::successors(Some((self, overlap)), |&(cur, limit)| {
            cur.up.as_ref().map(|(up, ov)| (&**up, limit.min(*ov)))
        })
    }

    /// The ancestors whose maps claim object `objno`, nearest first, each with
    /// how many bytes from image offset `img_off` it may hold (at most `len`).
    /// A read takes the first; a probe that finds nothing tries the next.
    pub fn holders(
        &self,
        objno: u64,
        img_off: u64,
        len: u64,
        overlap: u64,
    ) -> impl Iterator<Item = (&ParentView, u64)> {
        self.chain(overlap)
            .take_while(move |&(_, limit)| img_off < limit)
            .filter(move |&(cur, _)| cur.map.exists(objno))
            .map(move |(cur, limit)| (cur, len.min(limit - img_off)))
    }

    /// True when some ancestor may hold data of object `objno` below image
    /// offset `limit` (the child's overlap), from the maps alone.
    pub fn may_have(&self, objno: u64, limit: u64) -> bool {
        self.holders(objno, objno << self.order, 1, limit)
            .next()
            .is_some()
    }

    /// Bytes `[off, off + len)` of object `objno` as the child sees them through
    /// this chain with `overlap`: parent data below the (chain-wide) overlap,
    /// zeros elsewhere. Always `len` bytes.
    pub async fn read(&self, objno: u64, off: u64, len: u64, overlap: u64) -> Result<Bytes> {
        let img_off = (objno << self.order) + off;
        for (cur, valid) in self.holders(objno, img_off, len, overlap) {
            let oid = names::data_oid(&cur.image_id, objno);
            match cur.ioctx.read(&oid, cur.snap_id, off, valid).await {
                Ok(d) => return Ok(pad(d, len)),
                Err(RadosError::NotFound) => {}
                Err(e) => return Err(RbdError::rados(oid, e)),
            }
        }
        Ok(Bytes::from(vec![0u8; len as usize]))
    }
}

/// `d` extended with zeros to `len` bytes.
pub fn pad(d: Bytes, len: u64) -> Bytes {
    if d.len() as u64 >= len {
        return d.slice(..len as usize);
    }
    let mut b = BytesMut::with_capacity(len as usize);
    b.extend_from_slice(&d);
    b.resize(len as usize, 0);
    b.freeze()
}
