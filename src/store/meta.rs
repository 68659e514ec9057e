//! The metadata table (collections, objects' sizes, attributes, omaps) and its
//! on-disk snapshot.
//!
//! The table lives in memory and is authoritative for which objects exist and
//! how large they are; object files only hold data. A checkpoint writes the
//! whole table as one snapshot file that records the journal sequence number
//! it reflects:
//!
//! ```text
//! "RBDM" | version u8 | seq u64 | next_id u64 | collections | crc32c u32
//! collection: pool u64, pg u32, meta map, object count u32, objects
//! object:     name str, snap u64, id u64, size u64, attrs map, omap map
//! map:        count u32, (key str, value u32-length bytes)*
//! ```
//!
//! The crc32c covers every byte before it.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::codec::{DecodeError, DecodeResult, Decoder, Encoder};
use super::{CollId, ObjectKey, SnapId};

pub const SNAPSHOT_MAGIC: [u8; 4] = *b"RBDM";
pub const SNAPSHOT_VERSION: u8 = 1;

/// One object's metadata. `id` names its data file and is never reused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjMeta {
    pub id: u64,
    pub size: u64,
    pub attrs: BTreeMap<String, Bytes>,
    pub omap: BTreeMap<String, Bytes>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollMeta {
    pub meta: BTreeMap<String, Bytes>,
    /// name -> snap -> object; iteration order is `ObjectKey` order.
    pub objects: BTreeMap<String, BTreeMap<SnapId, ObjMeta>>,
}

/// Everything but object data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaTable {
    /// Sequence number of the last transaction applied to this table.
    pub seq: u64,
    /// The next object id to hand out.
    pub next_id: u64,
    pub colls: BTreeMap<CollId, CollMeta>,
    /// Sum of object sizes (derived, not stored).
    pub used: u64,
}

impl Default for MetaTable {
    fn default() -> Self {
        Self {
            seq: 0,
            next_id: 1,
            colls: BTreeMap::new(),
            used: 0,
        }
    }
}

impl MetaTable {
    pub fn get(&self, k: &ObjectKey) -> Option<&ObjMeta> {
        self.colls.get(&k.coll)?.objects.get(&k.name)?.get(&k.snap)
    }

    pub fn get_mut(&mut self, k: &ObjectKey) -> Option<&mut ObjMeta> {
        self.colls
            .get_mut(&k.coll)?
            .objects
            .get_mut(&k.name)?
            .get_mut(&k.snap)
    }

    /// The object, created empty with a fresh id if absent. `None` if the
    /// collection does not exist. The flag says whether it was created.
    pub fn get_or_create(&mut self, k: &ObjectKey) -> Option<(&mut ObjMeta, bool)> {
        let coll = self.colls.get_mut(&k.coll)?;
        let snaps = coll.objects.entry(k.name.clone()).or_default();
        let mut created = false;
        let obj = snaps.entry(k.snap).or_insert_with(|| {
            created = true;
            let id = self.next_id;
            self.next_id += 1;
            ObjMeta {
                id,
                ..ObjMeta::default()
            }
        });
        Some((obj, created))
    }

    /// Remove an object's metadata and return it.
    pub fn remove(&mut self, k: &ObjectKey) -> Option<ObjMeta> {
        let coll = self.colls.get_mut(&k.coll)?;
        let snaps = coll.objects.get_mut(&k.name)?;
        let obj = snaps.remove(&k.snap)?;
        if snaps.is_empty() {
            coll.objects.remove(&k.name);
        }
        self.used -= obj.size;
        Some(obj)
    }

    /// Set an object's size, keeping `used` in step.
    pub fn set_size(&mut self, k: &ObjectKey, size: u64) {
        let mut delta: i128 = 0;
        if let Some(o) = self.get_mut(k) {
            delta = i128::from(size) - i128::from(o.size);
            o.size = size;
        }
        self.used = (i128::from(self.used) + delta) as u64;
    }

    /// Every object id with its size.
    pub fn ids(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.colls
            .values()
            .flat_map(|c| c.objects.values())
            .flat_map(|s| s.values())
            .map(|o| (o.id, o.size))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.raw(&SNAPSHOT_MAGIC);
        e.u8(SNAPSHOT_VERSION);
        e.u64(self.seq);
        e.u64(self.next_id);
        e.u32(self.colls.len() as u32);
        for (c, cm) in &self.colls {
            e.coll(*c);
            e.map(&cm.meta);
            let n: usize = cm.objects.values().map(|s| s.len()).sum();
            e.u32(n as u32);
            for (name, snaps) in &cm.objects {
                for (snap, o) in snaps {
                    e.str(name);
                    e.u64(*snap);
                    e.u64(o.id);
                    e.u64(o.size);
                    e.map(&o.attrs);
                    e.map(&o.omap);
                }
            }
        }
        let mut out = e.finish_flat();
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(buf: Bytes) -> DecodeResult<Self> {
        if buf.len() < 4 {
            return Err(DecodeError::Truncated("snapshot checksum"));
        }
        let body = buf.slice(..buf.len() - 4);
        let tail = &buf[buf.len() - 4..];
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = crc32c::crc32c(&body);
        if stored != computed {
            return Err(DecodeError::BadCrc { stored, computed });
        }
        let mut d = Decoder::new(body);
        let magic = d.raw(4, "snapshot magic")?;
        if magic[..] != SNAPSHOT_MAGIC {
            return Err(DecodeError::BadMagic([
                magic[0], magic[1], magic[2], magic[3],
            ]));
        }
        match d.u8("snapshot version")? {
            SNAPSHOT_VERSION => {}
            v if v > SNAPSHOT_VERSION => return Err(DecodeError::NewerVersion(v)),
            v => return Err(DecodeError::BadVersion(v)),
        }
        let mut t = MetaTable {
            seq: d.u64("snapshot seq")?,
            next_id: d.u64("snapshot next id")?,
            ..MetaTable::default()
        };
        let ncoll = d.count(16, "collection count")?;
        for _ in 0..ncoll {
            let c = d.coll()?;
            let mut cm = CollMeta {
                meta: d.map("collection metadata")?,
                ..CollMeta::default()
            };
            let nobj = d.count(36, "object count")?;
            for _ in 0..nobj {
                let name = d.str("object name")?;
                let snap = d.u64("object snap")?;
                let o = ObjMeta {
                    id: d.u64("object id")?,
                    size: d.u64("object size")?,
                    attrs: d.map("object attributes")?,
                    omap: d.map("object omap")?,
                };
                t.used = t.used.saturating_add(o.size);
                cm.objects.entry(name).or_default().insert(snap, o);
            }
            t.colls.insert(c, cm);
        }
        d.finish()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> MetaTable {
        let c = CollId { pool: 1, pg: 0 };
        let mut t = MetaTable::default();
        t.colls.insert(c, CollMeta::default());
        let k = ObjectKey {
            coll: c,
            name: "a/b.c".to_string(),
            snap: 4,
        };
        let (o, _) = t.get_or_create(&k).unwrap();
        o.attrs.insert("x".into(), Bytes::from_static(b"1"));
        o.omap.insert("y".into(), Bytes::from_static(b"2"));
        t.set_size(&k, 10);
        t.seq = 9;
        t
    }

    #[test]
    fn test_metatable_snapshot_roundtrips() {
        let t = table();

        let back = MetaTable::decode(Bytes::from(t.encode())).unwrap();

        assert_eq!(back, t);
    }

    #[test]
    fn test_metatable_decode_every_truncation_is_an_error() {
        let enc = Bytes::from(table().encode());
        for cut in 0..enc.len() {
            assert!(MetaTable::decode(enc.slice(..cut)).is_err(), "cut {cut}");
        }
    }

    proptest! {
        #[test]
        fn test_metatable_decode_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let _ = MetaTable::decode(Bytes::from(bytes));
        }
    }
}
