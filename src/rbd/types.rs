//! Plain public types of the image layer: configuration, options, the records
//! `info`/`snap ls`/`du` return, progress and cancellation.

use std::time::Duration;

use crate::rados::SnapId;
use crate::sync::{Arc, AtomicBool, Ordering};

/// Image feature bits (same values as librbd's `RBD_FEATURE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Features(pub u64);

impl Features {
    pub const LAYERING: u64 = 1 << 0;
    pub const EXCLUSIVE_LOCK: u64 = 1 << 2;
    pub const OBJECT_MAP: u64 = 1 << 3;
    pub const FAST_DIFF: u64 = 1 << 4;
    pub const DEEP_FLATTEN: u64 = 1 << 5;

    /// What `rbd create` gives an image by default.
    pub const DEFAULT: Features = Features(
        Self::LAYERING
            | Self::EXCLUSIVE_LOCK
            | Self::OBJECT_MAP
            | Self::FAST_DIFF
            | Self::DEEP_FLATTEN,
    );

    const NAMES: [(u64, &'static str); 5] = [
        (Self::LAYERING, "layering"),
        (Self::EXCLUSIVE_LOCK, "exclusive-lock"),
        (Self::OBJECT_MAP, "object-map"),
        (Self::FAST_DIFF, "fast-diff"),
        (Self::DEEP_FLATTEN, "deep-flatten"),
    ];

    pub fn contains(self, bit: u64) -> bool {
        self.0 & bit == bit
    }

    /// Feature names in `rbd info` order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(b, _)| self.contains(*b))
            .map(|(_, n)| *n)
            .collect()
    }

    /// Parse a feature name (`layering`, `exclusive-lock`, ...).
    pub fn bit_by_name(name: &str) -> Option<u64> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(b, _)| *b)
    }
}

/// Per-process settings of the image layer (the `rbd_*` config options).
#[derive(Clone, Debug)]
pub struct RbdConfig {
    /// `rbd_concurrent_management_ops`: object requests a flatten, rollback,
    /// resize or remove keeps in flight.
    pub concurrent_management_ops: usize,
    /// `rbd_clone_copy_on_read`: a read of a clone's object that comes from the
    /// parent copies it up (head, read-write opens only).
    pub clone_copy_on_read: bool,
    /// `rbd_max_clone_depth`: longest parent chain a new clone may have.
    pub max_clone_depth: u32,
    /// Object order of new images (22 = 4 MiB objects).
    pub default_order: u8,
    /// Features of new images.
    pub default_features: Features,
    /// How long a forwarded management request waits for the lock owner before
    /// it is sent again (`rbd_request_timed_out_seconds`).
    pub request_timeout: Duration,
    /// `rbd_atime_update_interval`: the access stamp is saved at most this
    /// often (0: never).
    pub atime_update_interval: Duration,
    /// `rbd_mtime_update_interval`: the modification stamp is saved at
    /// most this often (0: never).
    pub mtime_update_interval: Duration,
}

impl Default for RbdConfig {
    fn default() -> Self {
        Self {
            concurrent_management_ops: 10,
            clone_copy_on_read: false,
            max_clone_depth: 32,
            default_order: 22,
            default_features: Features::DEFAULT,
            request_timeout: Duration::from_secs(30),
            atime_update_interval: Duration::from_secs(60),
            mtime_update_interval: Duration::from_secs(60),
        }
    }
}

/// Smallest and largest object order accepted (4 KiB .. 32 MiB objects).
pub const MIN_ORDER: u8 = 12;
pub const MAX_ORDER: u8 = 25;

/// Most objects an image may have: its object map, a byte per object after
/// a header, must fit in one RADOS object (about 512 TiB with 4 MiB
/// objects).
pub const MAX_OBJECTS: u64 =
    crate::rados::mem::MAX_OBJECT_SIZE - crate::rbd::object_map::HEADER_LEN;

/// Check that an image of `size` bytes with objects of order `order` fits.
pub fn check_size(size: u64, order: u8) -> Result<(), crate::rbd::RbdError> {
    if size.div_ceil(1u64 << order) > MAX_OBJECTS {
        return Err(crate::rbd::RbdError::InvalidArgument(format!(
            "image size {size} needs more than {MAX_OBJECTS} objects of {} bytes - use a larger object size or a smaller image",
            1u64 << order
        )));
    }
    Ok(())
}

/// Options of `create` and `clone`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CreateOptions {
    /// Object order; `None` takes `RbdConfig::default_order` (a clone always
    /// takes its parent's order).
    pub order: Option<u8>,
    /// Features; `None` takes `RbdConfig::default_features`.
    pub features: Option<Features>,
}

/// The parent of a clone, as `info` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParentInfo {
    pub pool: String,
    pub image: String,
    pub image_id: String,
    pub snap: String,
    pub snap_id: SnapId,
    /// Bytes of the child, from offset 0, that may still come from the parent.
    pub overlap: u64,
}

/// What `rbd info` shows about an image or one of its snapshots.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    pub pool: String,
    pub name: String,
    pub id: String,
    /// Set when this is a snapshot view.
    pub snap: Option<String>,
    pub size: u64,
    pub objects: u64,
    pub order: u8,
    pub object_size: u64,
    pub snapshot_count: u64,
    pub block_name_prefix: String,
    pub format: u8,
    pub features: Vec<String>,
    /// Seconds since the Unix epoch.
    pub create_timestamp: u64,
    /// Last read of the head, within `atime_update_interval`.
    pub access_timestamp: u64,
    /// Last write of the head, within `mtime_update_interval`.
    pub modify_timestamp: u64,
    pub parent: Option<ParentInfo>,
    /// For a snapshot view: whether the snapshot is protected.
    pub protected: Option<bool>,
}

/// One snapshot, as `snap ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapInfo {
    pub id: SnapId,
    pub name: String,
    pub size: u64,
    pub protected: bool,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

/// Space use of one snapshot or of the head, from the object maps.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DuEntry {
    /// `None` for the head.
    pub snap: Option<String>,
    pub snap_id: Option<SnapId>,
    pub provisioned_size: u64,
    /// Objects written since the previous snapshot (for the head: since the
    /// newest snapshot) times the object size, as `rbd du` with fast-diff
    /// reports: the sum over all entries is the space the image uses.
    pub used_size: u64,
}

/// What `du` reports: snapshots oldest first, then the head.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DuInfo {
    pub entries: Vec<DuEntry>,
}

/// Receives progress of a long operation: `done` of `total` units (objects).
pub trait ProgressSink: Send + Sync {
    fn update(&self, done: u64, total: u64);
}

/// A sink that ignores progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn update(&self, _done: u64, _total: u64) {}
}

/// Asks a running operation to stop at the next object boundary. Cheap to clone;
/// every clone cancels the same operation.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
