//! Little-endian binary encoding helpers for the OSD's on-disk records (PG log
//! entries, PG info, object info, snapsets). Decoding never panics: short or
//! malformed input is a [`DecodeError`].

use bytes::Bytes;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early: {0} more bytes expected")]
    Truncated(usize),
    #[error("record version {found} is not supported (expected {expected})")]
    Version { found: u8, expected: u8 },
    #[error("record is malformed: {0}")]
    Malformed(&'static str),
}

/// Appends fields to a buffer.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new(version: u8) -> Self {
        Encoder { buf: vec![version] }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

/// Reads fields from a buffer.
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Starts decoding, checking the leading version byte.
    pub fn new(buf: &'a [u8], version: u8) -> Result<Self, DecodeError> {
        let mut d = Decoder { buf };
        let found = d.u8()?;
        if found != version {
            return Err(DecodeError::Version {
                found,
                expected: version,
            });
        }
        Ok(d)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(n - self.buf.len()));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::Malformed("not utf-8"))
    }
    /// A count of items that each take at least `min_item` bytes, checked
    /// against what is left so a corrupt count cannot make us allocate wildly.
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(DecodeError::Malformed("item count exceeds the record"));
        }
        Ok(n)
    }
    /// Fails unless every byte was consumed.
    pub fn end(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::object_info::{ObjectInfo, SnapSet};
    use super::super::pg_log::{PgInfo, PgLogEntry};

    proptest! {
        #[test]
        fn test_decoders_on_random_bytes_return_without_panicking(
            b in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let _ = PgLogEntry::decode(&b);
            let _ = PgInfo::decode(&b);
            let _ = SnapSet::decode(&b);
            let _ = ObjectInfo::decode(&b);
        }

        #[test]
        fn test_decoders_on_mutated_records_return_without_panicking(
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..4)
        ) {
            let ss = SnapSet {
                seq: 9,
                clones: vec![super::super::object_info::CloneRecord {
                    id: 3,
                    snaps: vec![1, 2, 3],
                    size: 10,
                }],
            };
            let mut b = ss.encode().to_vec();
            for (i, v) in flips {
                let n = b.len();
                b[i % n] = v;
            }
            let _ = SnapSet::decode(&b);
        }
    }
}
