//! The PG log and PG info: what a PG has applied, in order, so that a replica
//! that missed writes can be told exactly which objects to recover.
//!
//! Stored as collection metadata of the PG's collection (Ceph keeps them in the
//! pgmeta object's omap): key `info` holds the [`PgInfo`], keys
//! `log.<epoch:016x>.<version:016x>` hold one [`PgLogEntry`] each, so that the
//! keys sort in log order. The log is bounded: appending past
//! `max_entries` trims the oldest entries and advances `log_tail`. Every update
//! of the log goes into the same store transaction as the object change it
//! records, so log and objects never disagree after a crash.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::codec::{DecodeError, Decoder, Encoder};
use crate::rados::SnapId;

/// An (epoch, version) pair ordering a PG's updates (Ceph's `eversion_t`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Eversion {
    pub epoch: u64,
    pub version: u64,
}

impl std::fmt::Display for Eversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}'{}", self.epoch, self.version)
    }
}

/// What a log entry did to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// A client write (the object may have been created, changed or removed).
    Modify = 1,
    /// A snapshot trim removed a snapshot from the object's clones.
    Trim = 2,
}

/// One update of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgLogEntry {
    pub version: Eversion,
    pub op: LogOp,
    pub name: String,
    /// The clone this update created (copy-on-write), if any.
    pub clone: Option<SnapId>,
}

const ENTRY_VERSION: u8 = 1;
const INFO_VERSION: u8 = 1;

/// Meta key of the PG info.
pub const INFO_KEY: &str = "info";
/// Prefix of the meta keys of log entries.
pub const LOG_PREFIX: &str = "log.";

impl PgLogEntry {
    pub fn key(&self) -> String {
        log_key(self.version)
    }

    pub fn encode(&self) -> Bytes {
        let mut e = Encoder::new(ENTRY_VERSION);
        e.u64(self.version.epoch)
            .u64(self.version.version)
            .u8(self.op as u8)
            .bytes(self.name.as_bytes());
        match self.clone {
            Some(s) => e.u8(1).u64(s),
            None => e.u8(0),
        };
        e.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(buf, ENTRY_VERSION)?;
        let version = Eversion {
            epoch: d.u64()?,
            version: d.u64()?,
        };
        let op = match d.u8()? {
            1 => LogOp::Modify,
            2 => LogOp::Trim,
            _ => return Err(DecodeError::Malformed("unknown log op")),
        };
        let name = d.string()?;
        let clone = match d.u8()? {
            0 => None,
            1 => Some(d.u64()?),
            _ => return Err(DecodeError::Malformed("bad clone flag")),
        };
        d.end()?;
        Ok(PgLogEntry {
            version,
            op,
            name,
            clone,
        })
    }
}

/// `log.<epoch>.<version>`, each as 16 hex digits, so keys sort by version.
/// Built by hand: every write makes one or two, and padded `format!` hex
/// was 3% of a small-write load.
fn log_key(v: Eversion) -> String {
    fn push_hex16(s: &mut String, n: u64) {
        for shift in (0..16).rev() {
            let digit = ((n >> (shift * 4)) & 0xf) as u32;
            s.push(char::from_digit(digit, 16).unwrap_or('0'));
        }
    }
    let mut s = String::with_capacity(LOG_PREFIX.len() + 33);
    s.push_str(LOG_PREFIX);
    push_hex16(&mut s, v.epoch);
    s.push('.');
    push_hex16(&mut s, v.version);
    s
}

/// What a PG has: the newest update applied and the oldest the log still covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgInfo {
    /// Version of the newest update this copy of the PG holds.
    pub last_update: Eversion,
    /// The log holds every entry newer than this; older ones were trimmed.
    pub log_tail: Eversion,
}

impl PgInfo {
    pub fn encode(&self) -> Bytes {
        Encoder::new(INFO_VERSION)
            .u64(self.last_update.epoch)
            .u64(self.last_update.version)
            .u64(self.log_tail.epoch)
            .u64(self.log_tail.version)
            .finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(buf, INFO_VERSION)?;
        let info = PgInfo {
            last_update: Eversion {
                epoch: d.u64()?,
                version: d.u64()?,
            },
            log_tail: Eversion {
                epoch: d.u64()?,
                version: d.u64()?,
            },
        };
        d.end()?;
        Ok(info)
    }
}

/// A PG's info and bounded log, in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgLog {
    pub info: PgInfo,
    pub entries: VecDeque<PgLogEntry>,
}

/// The collection-metadata changes that persist a log update.
#[derive(Debug, Default)]
pub struct LogDelta {
    pub set: BTreeMap<String, Bytes>,
    pub rm: Vec<String>,
    /// What [`PgLog::undo`] needs: the info before, entries added and trimmed.
    pub undo: LogUndo,
}

/// Enough to take back an append whose transaction could not be queued.
#[derive(Debug, Default)]
pub struct LogUndo {
    info: PgInfo,
    appended: usize,
    trimmed: Vec<PgLogEntry>,
}

impl PgLog {
    /// Load from a collection's metadata (empty metadata is an empty log).
    pub fn from_meta(meta: &BTreeMap<String, Bytes>) -> Result<Self, DecodeError> {
        let info = match meta.get(INFO_KEY) {
            Some(b) => PgInfo::decode(b)?,
            None => PgInfo::default(),
        };
        let mut entries = VecDeque::new();
        for (k, v) in meta.range(LOG_PREFIX.to_string()..) {
            if !k.starts_with(LOG_PREFIX) {
                break;
            }
            entries.push_back(PgLogEntry::decode(v)?);
        }
        Ok(PgLog { info, entries })
    }

    /// Append entries (newer than every entry held), trim to `max_entries`,
    /// and return the metadata changes to put in the same transaction.
    pub fn append(&mut self, new: Vec<PgLogEntry>, max_entries: usize) -> LogDelta {
        let mut delta = LogDelta::default();
        delta.undo.info = self.info;
        delta.undo.appended = new.len();
        for e in new {
            debug_assert!(e.version > self.info.last_update);
            self.info.last_update = e.version;
            delta.set.insert(e.key(), e.encode());
            self.entries.push_back(e);
        }
        while self.entries.len() > max_entries.max(1) {
            if let Some(old) = self.entries.pop_front() {
                self.info.log_tail = old.version;
                if delta.set.remove(&old.key()).is_none() {
                    delta.rm.push(old.key());
                }
                delta.undo.trimmed.push(old);
            }
        }
        delta.set.insert(INFO_KEY.to_string(), self.info.encode());
        delta
    }

    /// Take back an append (its transaction was never queued).
    pub fn undo(&mut self, undo: LogUndo) {
        for _ in 0..undo.appended {
            self.entries.pop_back();
        }
        for e in undo.trimmed.into_iter().rev() {
            self.entries.push_front(e);
        }
        self.info = undo.info;
    }

    /// The whole log as collection metadata.
    pub fn to_meta(&self) -> BTreeMap<String, Bytes> {
        let mut m: BTreeMap<String, Bytes> =
            self.entries.iter().map(|e| (e.key(), e.encode())).collect();
        m.insert(INFO_KEY.to_string(), self.info.encode());
        m
    }

    /// Entries newer than `v`, if `v` is in this history (its tail or one
    /// of its entries) and the log still covers them all. A copy at a `v`
    /// this log never had (writes never acknowledged, or given up) is not
    /// a prefix of it: only a backfill makes it one.
    pub fn entries_after(&self, v: Eversion) -> Option<impl Iterator<Item = &PgLogEntry>> {
        let known = v == self.info.log_tail || self.entries.iter().any(|e| e.version == v);
        known.then(|| self.entries.iter().filter(move |e| e.version > v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_log_key_is_prefix_and_two_padded_hex_numbers() {
        for (epoch, version) in [
            (0, 0),
            (2, 0xab),
            (u64::MAX, 1 << 63),
            (0x1234, 0xfedc_ba98_7654_3210),
        ] {
            let want = format!("{LOG_PREFIX}{epoch:016x}.{version:016x}");
            assert_eq!(log_key(Eversion { epoch, version }), want);
        }
    }

    fn entry(v: u64) -> PgLogEntry {
        PgLogEntry {
            version: Eversion {
                epoch: 2,
                version: v,
            },
            op: LogOp::Modify,
            name: "obj".into(),
            clone: (v % 2 == 0).then_some(v),
        }
    }

    #[test]
    fn test_log_entry_golden_bytes() {
        let e = PgLogEntry {
            version: Eversion {
                epoch: 1,
                version: 2,
            },
            op: LogOp::Trim,
            name: "ab".into(),
            clone: Some(3),
        };

        let b = e.encode();

        let golden: &[u8] = &[
            1, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, b'a', b'b', 1, 3, 0,
            0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&b[..], golden);
        assert_eq!(PgLogEntry::decode(golden).unwrap(), e);
    }

    #[test]
    fn test_log_entry_decode_of_every_truncation_is_an_error() {
        let b = entry(4).encode();
        for n in 0..b.len() {
            assert!(PgLogEntry::decode(&b[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn test_pg_info_decode_of_wrong_version_is_an_error() {
        let mut b = PgInfo::default().encode().to_vec();
        b[0] = 9;

        assert!(matches!(
            PgInfo::decode(&b),
            Err(DecodeError::Version { found: 9, .. })
        ));
    }

    #[test]
    fn test_pg_log_append_past_max_trims_oldest_and_advances_tail() {
        let mut log = PgLog::default();
        log.append((1..=3).map(entry).collect(), 3);

        let delta = log.append(vec![entry(4), entry(5)], 3);

        assert_eq!(log.entries.len(), 3);
        assert_eq!(log.info.log_tail.version, 2);
        assert_eq!(log.info.last_update.version, 5);
        assert_eq!(delta.rm, vec![entry(1).key(), entry(2).key()]);
        assert!(log.entries_after(entry(1).version).is_none());
        assert_eq!(log.entries_after(entry(3).version).unwrap().count(), 2);
    }

    #[test]
    fn test_pg_log_covers_only_versions_of_its_own_history() {
        // Arrange: entries 1..=5, the last two written in epoch 3 (another
        // interval), tail at 2.
        let mut log = PgLog::default();
        let mut entries: Vec<PgLogEntry> = (1..=5).map(entry).collect();
        for e in &mut entries[3..] {
            e.version.epoch = 3;
        }
        log.append(entries.clone(), 3);
        // What a replica that diverged in epoch 2 may hold.
        let diverged = Eversion {
            epoch: 2,
            version: 4,
        };

        // Act / Assert: versions of this history are covered; one between
        // two of its entries, or past the last, never was in it.
        assert_eq!(log.entries_after(entry(2).version).unwrap().count(), 3);
        assert_eq!(log.entries_after(entries[4].version).unwrap().count(), 0);
        assert!(log.entries_after(diverged).is_none());
        assert!(log.entries_after(entry(9).version).is_none());
    }

    #[test]
    fn test_pg_log_undo_restores_the_log_before_append() {
        let mut log = PgLog::default();
        log.append((1..=3).map(entry).collect(), 3);
        let before = log.clone();

        let delta = log.append(vec![entry(4), entry(5)], 3);
        log.undo(delta.undo);

        assert_eq!(log, before);
    }

    #[test]
    fn test_pg_log_meta_round_trips() {
        let mut log = PgLog::default();
        log.append((1..=5).map(entry).collect(), 4);

        let back = PgLog::from_meta(&log.to_meta()).unwrap();

        assert_eq!(back, log);
    }
}
