//! The image header (`rbd_header.<id>`): size, order, features, snapshot table
//! and parent link, as one versioned, checksummed record in the object's data.
//!
//! Layout (little-endian), version 1:
//! ```text
//! u8 version=1 | u64 size | u8 order | u64 features | u64 create_ts | u64 snap_seq
//! | parent | u32 nsnaps | nsnaps x (u64 id | str name | u64 size | parent
//! | bool protected | u64 ts) | u32 crc32c(all previous bytes)
//! parent = u8 0 | u8 1 u64 pool_id str image_id u64 snap_id u64 overlap
//! str    = u32 len | bytes
//! ```
//! The header is rewritten whole (`WriteFull`, atomic) by the lock owner only.

use super::codec::{Decoder, Encoder};
use crate::rados::{SnapContext, SnapId};
use crate::rbd::error::Result;
use crate::rbd::types::{MAX_OBJECTS, MAX_ORDER, MIN_ORDER};

const VERSION: u8 = 1;

/// A clone's link to its parent snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLink {
    pub pool_id: u64,
    pub image_id: String,
    pub snap_id: SnapId,
    /// Bytes of the child, from 0, that may still come from the parent.
    pub overlap: u64,
}

/// One snapshot of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapRecord {
    pub id: SnapId,
    pub name: String,
    pub size: u64,
    /// The parent link as it was when the snapshot was taken (`None` once a
    /// deep flatten freed the snapshot from the parent).
    pub parent: Option<ParentLink>,
    pub protected: bool,
    pub timestamp: u64,
}

/// Everything the header object holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub size: u64,
    pub order: u8,
    pub features: u64,
    pub create_timestamp: u64,
    /// Newest snapshot id ever taken of this image (the SnapContext `seq`).
    pub snap_seq: SnapId,
    /// Snapshots, ascending by id.
    pub snaps: Vec<SnapRecord>,
    pub parent: Option<ParentLink>,
}

impl Header {
    pub fn object_size(&self) -> u64 {
        1 << self.order
    }

    /// The context head writes carry: every existing snapshot, newest first.
    pub fn snapc(&self) -> SnapContext {
        SnapContext {
            seq: self.snap_seq,
            snaps: self.snaps.iter().rev().map(|s| s.id).collect(),
        }
    }

    pub fn snap_by_name(&self, name: &str) -> Option<&SnapRecord> {
        self.snaps.iter().find(|s| s.name == name)
    }

    pub fn snap_by_id(&self, id: SnapId) -> Option<&SnapRecord> {
        self.snaps.iter().find(|s| s.id == id)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u8(VERSION);
        e.u64(self.size);
        e.u8(self.order);
        e.u64(self.features);
        e.u64(self.create_timestamp);
        e.u64(self.snap_seq);
        encode_parent(&mut e, &self.parent);
        e.u32(self.snaps.len() as u32);
        for s in &self.snaps {
            e.u64(s.id);
            e.str(&s.name);
            e.u64(s.size);
            encode_parent(&mut e, &s.parent);
            e.bool(s.protected);
            e.u64(s.timestamp);
        }
        let crc = crc32c::crc32c(&e.buf);
        e.u32(crc);
        e.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Header> {
        let mut d = Decoder::new(buf, "image header");
        if buf.len() < 5 {
            return Err(d.err("too short"));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != want {
            return Err(d.err("checksum mismatch"));
        }
        d = Decoder::new(body, "image header");
        let version = d.u8()?;
        if version != VERSION {
            return Err(d.err(format!("unknown version {version}")));
        }
        let size = d.u64()?;
        let order = d.u8()?;
        let features = d.u64()?;
        let create_timestamp = d.u64()?;
        let snap_seq = d.u64()?;
        let parent = decode_parent(&mut d)?;
        let n = d.u32()? as usize;
        let mut snaps = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            snaps.push(SnapRecord {
                id: d.u64()?,
                name: d.str()?,
                size: d.u64()?,
                parent: decode_parent(&mut d)?,
                protected: d.bool()?,
                timestamp: d.u64()?,
            });
        }
        d.finish()?;
        if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
            return Err(d.err(format!("bad order {order}")));
        }
        let too_big = |sz: u64| sz.div_ceil(1u64 << order) > MAX_OBJECTS;
        if too_big(size) || snaps.iter().any(|s| too_big(s.size)) {
            return Err(d.err("size beyond the largest image"));
        }
        Ok(Header {
            size,
            order,
            features,
            create_timestamp,
            snap_seq,
            snaps,
            parent,
        })
    }
}

fn encode_parent(e: &mut Encoder, p: &Option<ParentLink>) {
    match p {
        None => e.u8(0),
        Some(p) => {
            e.u8(1);
            e.u64(p.pool_id);
            e.str(&p.image_id);
            e.u64(p.snap_id);
            e.u64(p.overlap);
        }
    }
}

fn decode_parent(d: &mut Decoder<'_>) -> Result<Option<ParentLink>> {
    match d.u8()? {
        0 => Ok(None),
        1 => Ok(Some(ParentLink {
            pool_id: d.u64()?,
            image_id: d.str()?,
            snap_id: d.u64()?,
            overlap: d.u64()?,
        })),
        v => Err(d.err(format!("bad parent tag {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            size: 1 << 30,
            order: 22,
            features: 1,
            create_timestamp: 7,
            snap_seq: 4,
            snaps: vec![SnapRecord {
                id: 4,
                name: "s".into(),
                size: 4096,
                parent: None,
                protected: true,
                timestamp: 9,
            }],
            parent: Some(ParentLink {
                pool_id: 2,
                image_id: "ab".into(),
                snap_id: 3,
                overlap: 4096,
            }),
        }
    }

    #[test]
    fn test_header_encode_matches_golden_bytes() {
        let bytes = sample().encode();

        let mut want = vec![1u8];
        want.extend_from_slice(&(1u64 << 30).to_le_bytes());
        want.push(22);
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&4u64.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(b"ab");
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&4096u64.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&4u64.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(b"s");
        want.extend_from_slice(&4096u64.to_le_bytes());
        want.push(0);
        want.push(1);
        want.extend_from_slice(&9u64.to_le_bytes());
        let crc = crc32c::crc32c(&want);
        want.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, want);
    }

    #[test]
    fn test_header_roundtrip_is_identity() {
        let h = sample();

        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn test_header_corrupt_or_truncated_input_is_error_not_panic() {
        let good = sample().encode();
        for cut in 0..good.len() {
            assert!(Header::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(Header::decode(&bad).is_err(), "flip at {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn test_header_decode_of_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn test_header_decode_of_arbitrary_body_with_valid_checksum_never_panics(
            mut body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            // Past the checksum, so the field decoders themselves are exercised.
            if let Some(v) = body.first_mut() {
                *v = VERSION;
            }
            let crc = crc32c::crc32c(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            let _ = Header::decode(&body);
        }
    }
}
