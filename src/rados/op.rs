//! Compound operations on one object, in the shape of librados' `ObjectReadOperation`
//! and `ObjectWriteOperation`.
//!
//! A compound operation is applied atomically: either every step takes effect or,
//! when one step fails (a guard, a missing object ...), none does and the whole
//! operation returns that step's error.

use std::collections::BTreeMap;

use bytes::Bytes;

/// A snapshot id. Allocated per pool by `selfmanaged_snap_create`, never reused.
pub type SnapId = u64;

/// The id of a pool.
pub type PoolId = u64;

/// "No snapshot": read or write the head (current) version of an object.
/// Same value as Ceph's `CEPH_NOSNAP`.
pub const SNAP_HEAD: SnapId = u64::MAX;

/// The snapshot context a writer carries (librados `SnapContext`).
///
/// `seq` is the newest snapshot id the writer knows of; `snaps` are the ids of the
/// snapshots that still exist, newest first. A write whose `seq` is newer than the
/// object's snapshot sequence first preserves the object as a clone (copy-on-write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapContext {
    /// Newest snapshot id known to the writer (0: none ever taken).
    pub seq: SnapId,
    /// Existing snapshot ids, strictly descending, all `<= seq`.
    pub snaps: Vec<SnapId>,
}

impl SnapContext {
    /// A context with no snapshots: writes never clone.
    pub fn empty() -> Self {
        Self::default()
    }

    /// True when `snaps` is strictly descending and bounded by `seq`, as the object
    /// layer requires.
    pub fn is_valid(&self) -> bool {
        self.snaps.first().is_none_or(|&s| s <= self.seq)
            && self.snaps.windows(2).all(|w| w[0] > w[1])
    }
}

/// One step of a read operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// Bytes `[off, off + len)`, cut short at the end of the object.
    Read { off: u64, len: u64 },
    /// Size of the object.
    Stat,
    /// One extended attribute; `NoData` when it is not set.
    GetXattr { name: String },
    /// All extended attributes.
    GetXattrs,
    /// Fails the whole operation with `Canceled` unless the attribute equals
    /// `value` (a missing attribute compares as empty).
    CmpXattr { name: String, value: Bytes },
    /// Up to `max` omap entries with keys strictly after `start_after`, in key order.
    OmapGetVals { start_after: String, max: u64 },
    /// The omap entries for exactly these keys (missing keys are left out).
    OmapGetValsByKeys { keys: Vec<String> },
    /// The object's clones and the snapshots each covers (librados `list_snaps`).
    /// Valid at `SNAP_HEAD` only; succeeds even if only clones remain.
    ListSnaps,
    /// Fails with `NotFound` when the object does not exist.
    AssertExists,
}

/// One step of a write operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Create an empty object; with `exclusive`, fail with `Exists` if it exists.
    Create { exclusive: bool },
    /// Write `data` at `off`, creating the object and growing it as needed
    /// (a gap past the old end reads as zeros).
    Write { off: u64, data: Bytes },
    /// Replace the whole content with `data` (size becomes `data.len()`).
    WriteFull { data: Bytes },
    /// Zero `[off, off + len)` inside the object; never grows it, and is a no-op
    /// on an object that does not exist.
    Zero { off: u64, len: u64 },
    /// Set the size, creating the object if needed; growth reads as zeros.
    Truncate { size: u64 },
    /// Remove the head object; `NotFound` when there is none.
    Remove,
    /// Set an extended attribute (creates the object).
    SetXattr { name: String, value: Bytes },
    /// Remove an extended attribute; `NoData` when it is not set.
    RmXattr { name: String },
    /// Set omap entries (creates the object).
    OmapSet { entries: BTreeMap<String, Bytes> },
    /// Remove omap keys (missing keys are ignored; creates the object).
    OmapRmKeys { keys: Vec<String> },
    /// Remove every omap entry.
    OmapClear,
    /// Guard: fail the whole operation with `Canceled` unless the attribute equals
    /// `value` (a missing attribute compares as empty).
    CmpXattr { name: String, value: Bytes },
    /// Guard: fail the whole operation with `NotFound` unless the object exists.
    AssertExists,
    /// Changes nothing: lets the operation use most of the free space the
    /// stores keep in reserve, as Ceph's `FULL_TRY` flag does. For the
    /// bookkeeping of operations that free space (an image's removal, a
    /// discard, a shrink, a snapshot's removal), so that a full cluster can
    /// still be cleaned up. Operations that only remove or cut data have it
    /// without asking.
    FullTry,
}

impl WriteOp {
    /// True when an operation of these steps may use the stores' reserve:
    /// it asks ([`WriteOp::FullTry`]), or it only removes or cuts.
    pub fn may_use_reserve(ops: &[WriteOp]) -> bool {
        let frees = |op: &WriteOp| {
            matches!(
                op,
                WriteOp::Remove
                    | WriteOp::Truncate { .. }
                    | WriteOp::Zero { .. }
                    | WriteOp::RmXattr { .. }
                    | WriteOp::OmapRmKeys { .. }
                    | WriteOp::OmapClear
            )
        };
        ops.contains(&WriteOp::FullTry)
            || (ops.iter().any(frees) && ops.iter().all(|op| frees(op) || op.is_guard()))
    }

    /// True for steps that only check state and change nothing.
    pub fn is_guard(&self) -> bool {
        matches!(self, WriteOp::CmpXattr { .. } | WriteOp::AssertExists)
    }
}

/// What `Stat` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
}

/// One clone of an object as `ListSnaps` reports it (librados `clone_info_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneInfo {
    /// The clone's id (the newest snapshot it was taken for), or `SNAP_HEAD`
    /// for the head object when it exists.
    pub cloneid: SnapId,
    /// Snapshots this clone stands for, ascending. Empty for the head.
    pub snaps: Vec<SnapId>,
    /// Size of the object in this clone.
    pub size: u64,
}

/// What `ListSnaps` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapSetInfo {
    /// The object's snapshot sequence: the newest `SnapContext::seq` that wrote it.
    pub seq: SnapId,
    /// Clones oldest first, then the head (if it exists).
    pub clones: Vec<CloneInfo>,
}

/// The result of one `ReadOp`, in the same position as the step that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadResult {
    Data(Bytes),
    Stat(ObjectStat),
    Xattr(Bytes),
    Xattrs(BTreeMap<String, Bytes>),
    Omap(BTreeMap<String, Bytes>),
    Snaps(SnapSetInfo),
    /// Steps that return nothing (`CmpXattr`, `AssertExists`).
    Done,
}

impl ReadResult {
    /// The data of a `Read` step (empty for any other result).
    pub fn into_data(self) -> Bytes {
        match self {
            ReadResult::Data(d) | ReadResult::Xattr(d) => d,
            _ => Bytes::new(),
        }
    }

    /// The map of a `GetXattrs` or omap step (empty for any other result).
    pub fn into_map(self) -> BTreeMap<String, Bytes> {
        match self {
            ReadResult::Xattrs(m) | ReadResult::Omap(m) => m,
            _ => BTreeMap::new(),
        }
    }
}
