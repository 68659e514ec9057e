//! What the OSD keeps about each object beside its data, as store attributes of
//! the head object (Ceph's `_` and `snapset` xattrs):
//! - `_`: [`ObjectInfo`], whether the head is a whiteout (removed, but kept
//!   because clones remain and need the snapset) and the last version written;
//! - `snapset`: [`SnapSet`], the object's snapshot sequence and its clones with
//!   the snapshots each stands for;
//! - user extended attributes, under the prefix [`USER_ATTR_PREFIX`].
//!
//! Clones are store objects of the same name with the clone id as snap id.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::codec::{DecodeError, Decoder, Encoder};
use super::pg_log::Eversion;
use crate::rados::SnapId;

pub const OI_ATTR: &str = "_";
pub const SNAPSET_ATTR: &str = "snapset";
pub const USER_ATTR_PREFIX: &str = "u.";

const OI_VERSION: u8 = 1;
const SNAPSET_VERSION: u8 = 1;

/// The head's own record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The head was removed; the store object only carries the snapset.
    pub whiteout: bool,
    pub version: Eversion,
}

impl ObjectInfo {
    pub fn encode(&self) -> Bytes {
        Encoder::new(OI_VERSION)
            .u8(self.whiteout as u8)
            .u64(self.version.epoch)
            .u64(self.version.version)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(buf, OI_VERSION)?;
        let whiteout = match d.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::Malformed("bad whiteout flag")),
        };
        let version = Eversion {
            epoch: d.u64()?,
            version: d.u64()?,
        };
        d.end()?;
        Ok(ObjectInfo { whiteout, version })
    }
}

/// One clone of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloneRecord {
    /// Its id: the snapshot sequence of the write that made it.
    pub id: SnapId,
    /// Snapshots it stands for, ascending; never empty (trimmed when it would be).
    pub snaps: Vec<SnapId>,
    pub size: u64,
}

/// An object's snapshot state (Ceph's `SnapSet`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapSet {
    /// The newest snapshot context sequence that wrote the object.
    pub seq: SnapId,
    /// Clones oldest first.
    pub clones: Vec<CloneRecord>,
}

impl SnapSet {
    pub fn encode(&self) -> Bytes {
        let mut e = Encoder::new(SNAPSET_VERSION);
        e.u64(self.seq).u32(self.clones.len() as u32);
        for c in &self.clones {
            e.u64(c.id).u64(c.size).u32(c.snaps.len() as u32);
            for s in &c.snaps {
                e.u64(*s);
            }
        }
        e.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(buf, SNAPSET_VERSION)?;
        let seq = d.u64()?;
        let n = d.count(20)?;
        let mut clones = Vec::with_capacity(n);
        for _ in 0..n {
            let id = d.u64()?;
            let size = d.u64()?;
            let m = d.count(8)?;
            let snaps = (0..m).map(|_| d.u64()).collect::<Result<Vec<_>, _>>()?;
            clones.push(CloneRecord { id, snaps, size });
        }
        d.end()?;
        Ok(SnapSet { seq, clones })
    }
}

/// The user attributes among a store object's attributes, without the prefix.
pub fn user_attrs(attrs: &BTreeMap<String, Bytes>) -> BTreeMap<String, Bytes> {
    attrs
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(USER_ATTR_PREFIX)
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect()
}

pub fn user_attr_key(name: &str) -> String {
    format!("{USER_ATTR_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_snapset_golden_bytes() {
        let ss = SnapSet {
            seq: 5,
            clones: vec![CloneRecord {
                id: 4,
                snaps: vec![3, 4],
                size: 7,
            }],
        };

        let b = ss.encode();

        let golden: &[u8] = &[
            1, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
            2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&b[..], golden);
        assert_eq!(SnapSet::decode(golden).unwrap(), ss);
    }

    #[test]
    fn test_snapset_decode_with_huge_count_is_an_error_not_an_allocation() {
        let b = [1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];

        assert!(SnapSet::decode(&b).is_err());
    }

    #[test]
    fn test_object_info_round_trips_and_rejects_truncation() {
        let oi = ObjectInfo {
            whiteout: true,
            version: Eversion {
                epoch: 3,
                version: 9,
            },
        };
        let b = oi.encode();

        assert_eq!(ObjectInfo::decode(&b).unwrap(), oi);
        for n in 0..b.len() {
            assert!(ObjectInfo::decode(&b[..n]).is_err());
        }
    }
}
