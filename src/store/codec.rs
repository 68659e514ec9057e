//! Binary encoding of transactions and journal records.
//!
//! A journal record is length-framed and checksummed:
//!
//! ```text
//! offset size  field
//!      0    4  magic "RBDJ"
//!      4    1  version (RECORD_VERSION)
//!      5    3  reserved, zero
//!      8    4  payload length, little endian
//!     12    8  sequence number, little endian
//!     20    4  crc32c over bytes 0..20 and the payload
//!     24    n  payload: the encoded transaction
//! ```
//!
//! Version 2 adds one step, `Place` (tag 16): a large write whose data was
//! written and synced to a new data file before the record, so the record
//! carries the file's id and length instead of the data. Records without a
//! `Place` are still written as version 1, byte for byte as before.
//!
//! Version 3 adds `InPlace` (tag 17): a large overwrite inside an object
//! whose data was written into the object's own file and synced before the
//! record, so the record carries the key and the range only. Records without
//! one keep the version they had.
//!
//! The header layout is the same for every version, so a reader can always
//! frame and checksum a record; only a record whose checksum holds and whose
//! version is newer than ours is reported as [`DecodeError::NewerVersion`].
//!
//! Encoding never copies large write payloads: [`encode_record`] returns a list
//! of buffers in which each `Write`'s data is the caller's own `Bytes`.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

#[cfg(test)]
use super::Transaction;
use super::{CollId, ObjectKey, TxOp};

pub const RECORD_MAGIC: [u8; 4] = *b"RBDJ";
/// Newest record version this build writes and reads.
pub const RECORD_VERSION: u8 = 3;
/// The version of records with a [`Step::Place`] and no [`Step::InPlace`].
const RECORD_VERSION_PLACE: u8 = 2;
/// The version of records without either.
const RECORD_VERSION_PLAIN: u8 = 1;
pub const RECORD_HEADER_LEN: usize = 24;
/// Larger lengths are treated as corruption rather than allocated.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 30;

/// Data at least this long is referenced, not copied, by the encoder.
const ZERO_COPY_MIN: usize = 4096;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input ends inside {0}")]
    Truncated(&'static str),
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("length {0} is out of range")]
    BadLength(u64),
    #[error("format version {0} is newer than this build understands; upgrade rbdfs")]
    NewerVersion(u8),
    #[error("unknown format version {0}")]
    BadVersion(u8),
    #[error("unknown operation tag {0}")]
    BadTag(u8),
    #[error("string is not valid utf-8")]
    BadUtf8,
    #[error("{0} trailing bytes after the end")]
    Trailing(usize),
}

pub type DecodeResult<T> = Result<T, DecodeError>;

/// Appends little-endian fields; large byte strings become separate buffers.
#[derive(Default)]
pub struct Encoder {
    done: Vec<Bytes>,
    cur: BytesMut,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) {
        self.cur.extend_from_slice(&[v]);
    }

    pub fn u32(&mut self, v: u32) {
        self.cur.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.cur.extend_from_slice(&v.to_le_bytes());
    }

    pub fn raw(&mut self, b: &[u8]) {
        self.cur.extend_from_slice(b);
    }

    /// Length-prefixed (u32) string.
    pub fn str(&mut self, s: &str) {
        self.u32(len32(s.len()));
        self.raw(s.as_bytes());
    }

    /// Length-prefixed (u32) byte string.
    pub fn bytes32(&mut self, b: &Bytes) {
        self.u32(len32(b.len()));
        self.data(b);
    }

    /// Length-prefixed (u64) byte string, for object data.
    pub fn bytes64(&mut self, b: &Bytes) {
        self.u64(b.len() as u64);
        self.data(b);
    }

    pub fn map(&mut self, m: &BTreeMap<String, Bytes>) {
        self.u32(len32(m.len()));
        for (k, v) in m {
            self.str(k);
            self.bytes32(v);
        }
    }

    pub fn strs(&mut self, v: &[String]) {
        self.u32(len32(v.len()));
        for s in v {
            self.str(s);
        }
    }

    pub fn coll(&mut self, c: CollId) {
        self.u64(c.pool);
        self.u32(c.pg);
    }

    pub fn key(&mut self, k: &ObjectKey) {
        self.coll(k.coll);
        self.str(&k.name);
        self.u64(k.snap);
    }

    fn data(&mut self, b: &Bytes) {
        if b.len() >= ZERO_COPY_MIN {
            if !self.cur.is_empty() {
                self.done.push(self.cur.split().freeze());
            }
            self.done.push(b.clone());
        } else {
            self.cur.extend_from_slice(b);
        }
    }

    /// The encoded buffers, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.cur.is_empty() {
            self.done.push(self.cur.freeze());
        }
        self.done
    }

    /// The encoding as one contiguous buffer.
    pub fn finish_flat(self) -> Vec<u8> {
        self.finish().concat()
    }
}

/// Lengths above u32 cannot occur for strings and maps the OSD builds; they
/// are rejected by `validate_txn` before encoding, so saturating is unreachable.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Reads little-endian fields out of a shared buffer without copying.
pub struct Decoder {
    buf: Bytes,
    pos: usize,
}

impl Decoder {
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> DecodeResult<Bytes> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> DecodeResult<[u8; N]> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&b);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> DecodeResult<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u32(&mut self, what: &'static str) -> DecodeResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> DecodeResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub fn raw(&mut self, n: usize, what: &'static str) -> DecodeResult<Bytes> {
        self.take(n, what)
    }

    pub fn str(&mut self, what: &'static str) -> DecodeResult<String> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }

    pub fn bytes32(&mut self, what: &'static str) -> DecodeResult<Bytes> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    pub fn bytes64(&mut self, what: &'static str) -> DecodeResult<Bytes> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| DecodeError::BadLength(n))?;
        self.take(n, what)
    }

    /// A count of items each at least `min_item` bytes long; checked against
    /// the remaining input so garbage cannot make us allocate.
    pub fn count(&mut self, min_item: usize, what: &'static str) -> DecodeResult<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item) > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n)
    }

    pub fn map(&mut self, what: &'static str) -> DecodeResult<BTreeMap<String, Bytes>> {
        let n = self.count(8, what)?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.str(what)?;
            let v = self.bytes32(what)?;
            m.insert(k, v);
        }
        Ok(m)
    }

    pub fn strs(&mut self, what: &'static str) -> DecodeResult<Vec<String>> {
        let n = self.count(4, what)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.str(what)?);
        }
        Ok(v)
    }

    pub fn coll(&mut self) -> DecodeResult<CollId> {
        Ok(CollId {
            pool: self.u64("collection pool")?,
            pg: self.u32("collection pg")?,
        })
    }

    pub fn key(&mut self) -> DecodeResult<ObjectKey> {
        Ok(ObjectKey {
            coll: self.coll()?,
            name: self.str("object name")?,
            snap: self.u64("object snap")?,
        })
    }

    pub fn finish(self) -> DecodeResult<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

mod tag {
    pub const CREATE_COLLECTION: u8 = 1;
    pub const REMOVE_COLLECTION: u8 = 2;
    pub const TOUCH: u8 = 3;
    pub const WRITE: u8 = 4;
    pub const ZERO: u8 = 5;
    pub const TRUNCATE: u8 = 6;
    pub const REMOVE: u8 = 7;
    pub const CLONE: u8 = 8;
    pub const SET_ATTRS: u8 = 9;
    pub const RM_ATTR: u8 = 10;
    pub const OMAP_SET: u8 = 11;
    pub const OMAP_RM_KEYS: u8 = 12;
    pub const OMAP_CLEAR: u8 = 13;
    pub const COLL_META_SET: u8 = 14;
    pub const COLL_META_RM: u8 = 15;
    pub const PLACE: u8 = 16;
    pub const IN_PLACE: u8 = 17;
}

/// One step of a transaction as the store journals and applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Op(TxOp),
    /// Replace the object's data with data file `id`, whose first `len`
    /// bytes were written and synced before the record: the object becomes
    /// the file's `[0, len)` followed by its old bytes past `len`, if any.
    Place {
        key: ObjectKey,
        len: u64,
        id: u64,
    },
    /// Bytes `[off, off + len)` of the object, inside its size, were
    /// overwritten in its data file and synced before the record: nothing to
    /// do on apply or replay.
    InPlace {
        key: ObjectKey,
        off: u64,
        len: u64,
    },
}

/// A transaction's steps, with no write placed in a file.
#[cfg(test)]
pub fn steps_of(txn: Transaction) -> Vec<Step> {
    txn.ops.into_iter().map(Step::Op).collect()
}

/// Encode a step list (the record payload) and return the record version it needs.
pub fn encode_steps(e: &mut Encoder, steps: &[Step]) -> u8 {
    let mut version = RECORD_VERSION_PLAIN;
    e.u32(len32(steps.len()));
    for s in steps {
        match s {
            Step::Op(op) => encode_op(e, op),
            Step::Place { key, len, id } => {
                version = version.max(RECORD_VERSION_PLACE);
                e.u8(tag::PLACE);
                e.key(key);
                e.u64(*len);
                e.u64(*id);
            }
            Step::InPlace { key, off, len } => {
                version = RECORD_VERSION;
                e.u8(tag::IN_PLACE);
                e.key(key);
                e.u64(*off);
                e.u64(*len);
            }
        }
    }
    version
}

fn encode_op(e: &mut Encoder, op: &TxOp) {
    match op {
        TxOp::CreateCollection(c) => {
            e.u8(tag::CREATE_COLLECTION);
            e.coll(*c);
        }
        TxOp::RemoveCollection(c) => {
            e.u8(tag::REMOVE_COLLECTION);
            e.coll(*c);
        }
        TxOp::Touch(k) => {
            e.u8(tag::TOUCH);
            e.key(k);
        }
        TxOp::Write { key, off, data } => {
            e.u8(tag::WRITE);
            e.key(key);
            e.u64(*off);
            e.bytes64(data);
        }
        TxOp::Zero { key, off, len } => {
            e.u8(tag::ZERO);
            e.key(key);
            e.u64(*off);
            e.u64(*len);
        }
        TxOp::Truncate { key, size } => {
            e.u8(tag::TRUNCATE);
            e.key(key);
            e.u64(*size);
        }
        TxOp::Remove(k) => {
            e.u8(tag::REMOVE);
            e.key(k);
        }
        TxOp::Clone { from, to } => {
            e.u8(tag::CLONE);
            e.key(from);
            e.key(to);
        }
        TxOp::SetAttrs { key, attrs } => {
            e.u8(tag::SET_ATTRS);
            e.key(key);
            e.map(attrs);
        }
        TxOp::RmAttr { key, name } => {
            e.u8(tag::RM_ATTR);
            e.key(key);
            e.str(name);
        }
        TxOp::OmapSet { key, entries } => {
            e.u8(tag::OMAP_SET);
            e.key(key);
            e.map(entries);
        }
        TxOp::OmapRmKeys { key, keys } => {
            e.u8(tag::OMAP_RM_KEYS);
            e.key(key);
            e.strs(keys);
        }
        TxOp::OmapClear(k) => {
            e.u8(tag::OMAP_CLEAR);
            e.key(k);
        }
        TxOp::CollMetaSet { coll, entries } => {
            e.u8(tag::COLL_META_SET);
            e.coll(*coll);
            e.map(entries);
        }
        TxOp::CollMetaRm { coll, keys } => {
            e.u8(tag::COLL_META_RM);
            e.coll(*coll);
            e.strs(keys);
        }
    }
}

/// Decode a payload of record version `version`; the whole input must be consumed.
pub fn decode_steps(buf: Bytes, version: u8) -> DecodeResult<Vec<Step>> {
    let mut d = Decoder::new(buf);
    let n = d.count(1, "operation count")?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let t = d.u8("operation tag")?;
        if t == tag::IN_PLACE && version >= RECORD_VERSION {
            ops.push(Step::InPlace {
                key: d.key()?,
                off: d.u64("in-place offset")?,
                len: d.u64("in-place length")?,
            });
            continue;
        }
        if t == tag::PLACE && version >= RECORD_VERSION_PLACE {
            ops.push(Step::Place {
                key: d.key()?,
                len: d.u64("placed length")?,
                id: d.u64("placed file id")?,
            });
            continue;
        }
        let op = match t {
            tag::CREATE_COLLECTION => TxOp::CreateCollection(d.coll()?),
            tag::REMOVE_COLLECTION => TxOp::RemoveCollection(d.coll()?),
            tag::TOUCH => TxOp::Touch(d.key()?),
            tag::WRITE => TxOp::Write {
                key: d.key()?,
                off: d.u64("write offset")?,
                data: d.bytes64("write data")?,
            },
            tag::ZERO => TxOp::Zero {
                key: d.key()?,
                off: d.u64("zero offset")?,
                len: d.u64("zero length")?,
            },
            tag::TRUNCATE => TxOp::Truncate {
                key: d.key()?,
                size: d.u64("truncate size")?,
            },
            tag::REMOVE => TxOp::Remove(d.key()?),
            tag::CLONE => TxOp::Clone {
                from: d.key()?,
                to: d.key()?,
            },
            tag::SET_ATTRS => TxOp::SetAttrs {
                key: d.key()?,
                attrs: d.map("attributes")?,
            },
            tag::RM_ATTR => TxOp::RmAttr {
                key: d.key()?,
                name: d.str("attribute name")?,
            },
            tag::OMAP_SET => TxOp::OmapSet {
                key: d.key()?,
                entries: d.map("omap entries")?,
            },
            tag::OMAP_RM_KEYS => TxOp::OmapRmKeys {
                key: d.key()?,
                keys: d.strs("omap keys")?,
            },
            tag::OMAP_CLEAR => TxOp::OmapClear(d.key()?),
            tag::COLL_META_SET => TxOp::CollMetaSet {
                coll: d.coll()?,
                entries: d.map("collection metadata")?,
            },
            tag::COLL_META_RM => TxOp::CollMetaRm {
                coll: d.coll()?,
                keys: d.strs("collection metadata keys")?,
            },
            other => return Err(DecodeError::BadTag(other)),
        };
        ops.push(Step::Op(op));
    }
    d.finish()?;
    Ok(ops)
}

/// A journal record as buffers ready to be written with one `writev`.
pub struct EncodedRecord {
    pub bufs: Vec<Bytes>,
}

/// An encoded transaction with its length and crc32c, ready to be framed.
pub struct Payload {
    pub bufs: Vec<Bytes>,
    pub len: u64,
    crc: u32,
    version: u8,
}

/// Encode a step list as a payload (the expensive part, done before a seq exists).
pub fn encode_payload(steps: &[Step]) -> Payload {
    let mut e = Encoder::new();
    let version = encode_steps(&mut e, steps);
    let bufs = e.finish();
    let mut crc = 0;
    let mut len = 0;
    for b in &bufs {
        crc = crc32c::crc32c_append(crc, b);
        len += b.len() as u64;
    }
    Payload {
        bufs,
        len,
        crc,
        version,
    }
}

/// Reflected crc32c (Castagnoli) polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a * b mod P` over GF(2), both in the reflected bit order of the crc
/// (bit 31 is x^0).
const fn crc32c_mulmod(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
    p
}

/// `X2N[k]` = x^(2^k) mod P, for every bit of a `u64` byte count (k = 3..67).
const CRC32C_X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p: u32 = 1 << 30;
    let mut k = 0;
    while k < 67 {
        t[k] = p;
        p = crc32c_mulmod(p, p);
        k += 1;
    }
    t
};

/// crc32c of `A || B` from `crc(A)`, `crc(B)` and `|B|`: `crc(A)` shifted
/// over `|B|` zero bytes (a multiplication by x^(8|B|) mod P), xor `crc(B)`.
/// The pre- and post-inversion of crc32c cancel out in the xor. A few dozen
/// word operations per set bit of `|B|`, where the `crc32c` crate's combine
/// squares 32x32 bit matrices for every bit and dominated the journal's
/// per-record cost.
fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    let mut shift: u32 = 1 << 31;
    let mut n = len_b;
    // Bytes, so start at x^(2^3).
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            shift = crc32c_mulmod(CRC32C_X2N[k], shift);
        }
        n >>= 1;
        k += 1;
    }
    crc32c_mulmod(shift, crc_a) ^ crc_b
}

/// Frame a payload as a journal record with sequence number `seq`. The
/// payload's length must not exceed [`MAX_PAYLOAD_LEN`].
pub fn frame_record(seq: u64, payload: Payload) -> EncodedRecord {
    let mut head = [0u8; RECORD_HEADER_LEN];
    head[0..4].copy_from_slice(&RECORD_MAGIC);
    head[4] = payload.version;
    head[8..12].copy_from_slice(&len32(payload.len as usize).to_le_bytes());
    head[12..20].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c_combine(crc32c::crc32c(&head[0..20]), payload.crc, payload.len);
    head[20..24].copy_from_slice(&crc.to_le_bytes());
    let mut bufs = Vec::with_capacity(payload.bufs.len() + 1);
    bufs.push(Bytes::copy_from_slice(&head));
    bufs.extend(payload.bufs);
    EncodedRecord { bufs }
}

/// Frame a transaction as a journal record with sequence number `seq`.
#[cfg(test)]
pub fn encode_record(seq: u64, txn: &Transaction) -> EncodedRecord {
    frame_record(seq, encode_payload(&steps_of(txn.clone())))
}

/// A parsed record header; the checksum is not verified yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub version: u8,
    pub payload_len: u32,
    pub seq: u64,
    pub crc: u32,
    raw: [u8; 20],
}

/// Parse the fixed header: magic and a sane length.
pub fn parse_header(h: &[u8]) -> DecodeResult<RecordHeader> {
    if h.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated("record header"));
    }
    let magic: [u8; 4] = [h[0], h[1], h[2], h[3]];
    if magic != RECORD_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let payload_len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(DecodeError::BadLength(payload_len.into()));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[12..20]);
    let mut raw = [0u8; 20];
    raw.copy_from_slice(&h[0..20]);
    Ok(RecordHeader {
        version: h[4],
        payload_len,
        seq: u64::from_le_bytes(seq),
        crc: u32::from_le_bytes([h[20], h[21], h[22], h[23]]),
        raw,
    })
}

/// Check the payload against the header and decode its steps.
pub fn decode_payload(h: &RecordHeader, payload: Bytes) -> DecodeResult<Vec<Step>> {
    if payload.len() != h.payload_len as usize {
        return Err(DecodeError::Truncated("record payload"));
    }
    let computed = crc32c::crc32c_append(crc32c::crc32c(&h.raw), &payload);
    if computed != h.crc {
        return Err(DecodeError::BadCrc {
            stored: h.crc,
            computed,
        });
    }
    if h.version > RECORD_VERSION {
        return Err(DecodeError::NewerVersion(h.version));
    }
    if h.version < RECORD_VERSION_PLAIN || h.raw[5..8] != [0, 0, 0] {
        return Err(DecodeError::BadVersion(h.version));
    }
    decode_steps(payload, h.version)
}

/// Decode one record at the start of `buf`: `(seq, txn, bytes consumed)`.
#[cfg(test)]
pub fn decode_record(buf: &Bytes) -> DecodeResult<(u64, Vec<Step>, usize)> {
    let h = parse_header(buf)?;
    let end = RECORD_HEADER_LEN + h.payload_len as usize;
    if buf.len() < end {
        return Err(DecodeError::Truncated("record payload"));
    }
    let txn = decode_payload(&h, buf.slice(RECORD_HEADER_LEN..end))?;
    Ok((h.seq, txn, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            coll: CollId { pool: 1, pg: 2 },
            name: name.to_string(),
            snap: 3,
        }
    }

    fn sample() -> Transaction {
        let mut t = Transaction::new();
        t.push(TxOp::Write {
            key: key("o"),
            off: 5,
            data: Bytes::from_static(b"hi"),
        });
        t.push(TxOp::SetAttrs {
            key: key("o"),
            attrs: [("a".to_string(), Bytes::from_static(b"v"))].into(),
        });
        t
    }

    #[test]
    fn test_encode_record_sample_matches_golden_bytes() {
        let rec = encode_record(7, &sample());
        let flat: Vec<u8> = rec.bufs.concat();

        #[rustfmt::skip]
        let golden: Vec<u8> = vec![
            // header: magic, version 1, reserved, payload length 88, seq 7, crc32c
            // (checked against a bitwise CRC-32C, polynomial 0x82f63b78)
            b'R', b'B', b'D', b'J', 1, 0, 0, 0, 88, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
            0xad, 0xd9, 0xe3, 0xdc,
            // 2 ops
            2, 0, 0, 0,
            // Write: tag, coll (pool 1, pg 2), name "o", snap 3, off 5, len 2, "hi"
            4, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, b'o', 3, 0, 0, 0, 0, 0, 0, 0,
            5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i',
            // SetAttrs: tag, key, 1 entry "a" -> "v"
            9, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, b'o', 3, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0, 0, 1, 0, 0, 0, b'a', 1, 0, 0, 0, b'v',
        ];
        assert_eq!(flat, golden);
    }

    fn placed() -> Vec<Step> {
        vec![Step::Place {
            key: key("o"),
            len: 4 << 20,
            id: (1 << 63) | 5,
        }]
    }

    #[test]
    fn test_encode_record_place_matches_golden_bytes() {
        let flat: Vec<u8> = frame_record(9, encode_payload(&placed())).bufs.concat();

        #[rustfmt::skip]
        let golden: Vec<u8> = vec![
            // header: magic, version 2 (has a Place), reserved, payload length 46,
            // seq 9, crc32c (checked against a bitwise CRC-32C)
            b'R', b'B', b'D', b'J', 2, 0, 0, 0, 46, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0,
            0x6e, 0xd0, 0x45, 0x1f,
            // 1 op
            1, 0, 0, 0,
            // Place: tag 16, coll (pool 1, pg 2), name "o", snap 3, len 4 MiB,
            // file id 1 << 63 | 5
            16, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, b'o', 3, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0x40, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0x80,
        ];
        assert_eq!(flat, golden);
    }

    #[test]
    fn test_decode_record_place_golden_roundtrips() {
        let flat = Bytes::from(frame_record(9, encode_payload(&placed())).bufs.concat());

        let (seq, steps, used) = decode_record(&flat).unwrap();

        assert_eq!((seq, used), (9, flat.len()));
        assert_eq!(steps, placed());
    }

    #[test]
    fn test_decode_version_1_record_with_place_tag_is_an_error() {
        let mut e = Encoder::new();
        encode_steps(&mut e, &placed());

        let r = decode_steps(Bytes::from(e.finish_flat()), RECORD_VERSION_PLAIN);

        assert_eq!(r.unwrap_err(), DecodeError::BadTag(tag::PLACE));
    }

    fn in_place() -> Vec<Step> {
        vec![
            Step::Place {
                key: key("p"),
                len: 1 << 20,
                id: (1 << 63) | 6,
            },
            Step::InPlace {
                key: key("o"),
                off: 1 << 20,
                len: 2 << 20,
            },
        ]
    }

    #[test]
    fn test_record_with_in_place_step_is_version_3_and_roundtrips() {
        let flat = Bytes::from(frame_record(4, encode_payload(&in_place())).bufs.concat());

        let (seq, steps, used) = decode_record(&flat).unwrap();

        assert_eq!(flat[4], 3, "record version");
        assert_eq!((seq, used), (4, flat.len()));
        assert_eq!(steps, in_place());
    }

    #[test]
    fn test_decode_version_2_record_with_in_place_tag_is_an_error() {
        let mut e = Encoder::new();
        encode_steps(&mut e, &in_place());

        let r = decode_steps(Bytes::from(e.finish_flat()), RECORD_VERSION_PLACE);

        assert_eq!(r.unwrap_err(), DecodeError::BadTag(tag::IN_PLACE));
    }

    #[test]
    fn test_decode_record_golden_roundtrips() {
        let flat = Bytes::from(encode_record(7, &sample()).bufs.concat());

        let (seq, txn, used) = decode_record(&flat).unwrap();

        assert_eq!((seq, used), (7, flat.len()));
        assert_eq!(txn, steps_of(sample()));
    }

    #[test]
    fn test_encode_record_large_write_is_not_copied() {
        let data = Bytes::from(vec![7u8; 1 << 20]);
        let mut t = Transaction::new();
        t.push(TxOp::Write {
            key: key("o"),
            off: 0,
            data: data.clone(),
        });

        let rec = encode_record(1, &t);

        assert!(rec.bufs.iter().any(|b| b.as_ptr() == data.as_ptr()));
    }

    #[test]
    fn test_decode_record_every_truncation_is_an_error() {
        let flat = Bytes::from(encode_record(7, &sample()).bufs.concat());
        for cut in 0..flat.len() {
            let r = decode_record(&flat.slice(..cut));
            assert!(r.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn test_decode_record_newer_version_with_valid_crc_is_reported() {
        let mut flat = encode_record(7, &sample()).bufs.concat();
        flat[4] = RECORD_VERSION + 1;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&flat[0..20]), &flat[24..]);
        flat[20..24].copy_from_slice(&crc.to_le_bytes());

        let r = decode_record(&Bytes::from(flat));

        assert_eq!(
            r.unwrap_err(),
            DecodeError::NewerVersion(RECORD_VERSION + 1)
        );
    }

    proptest! {
        #[test]
        fn test_decode_record_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let _ = decode_record(&Bytes::from(bytes.clone()));
            let _ = decode_steps(Bytes::from(bytes), RECORD_VERSION);
        }

        #[test]
        fn test_decode_record_flipped_byte_is_an_error(idx in 0usize..106, bit in 0u8..8) {
            let mut flat = encode_record(7, &sample()).bufs.concat();
            prop_assume!(idx < flat.len());
            flat[idx] ^= 1 << bit;
            prop_assert!(decode_record(&Bytes::from(flat)).is_err());
        }

        #[test]
        fn test_crc32c_combine_equals_crc_of_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..64),
            b in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let whole = crc32c::crc32c(&[a.as_slice(), b.as_slice()].concat());
            let combined = crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len() as u64);
            prop_assert_eq!(combined, whole);
        }
    }

    #[test]
    fn test_crc32c_combine_long_lengths_agree_with_the_crate() {
        for len in [
            1u64 << 20,
            (1 << 24) + 3,
            u64::from(MAX_PAYLOAD_LEN),
            1 << 40,
        ] {
            let ours = crc32c_combine(0x1234_5678, 0x9abc_def0, len);
            let crate_says = crc32c::crc32c_combine(0x1234_5678, 0x9abc_def0, len as usize);
            assert_eq!(ours, crate_says, "len {len}");
        }
    }
}
