//! When an image was last read and last written: Ceph's `access_timestamp`
//! and `modify_timestamp`, in seconds since the epoch, kept as omap keys of
//! the header object (the header record itself is rewritten only by
//! operations).
//!
//! As librbd does, each is saved at most once per its update interval
//! (`rbd_atime_update_interval`, `rbd_mtime_update_interval`: 60 s; 0 never
//! updates). The first read or write of the head that finds its stamp that
//! old saves it, waiting at most a second for the save before it is answered
//! (the fast path hands such a request to the async path), so the cost is
//! one small omap write per image per interval, and a stamp is at most one
//! interval behind. An image that never
//! had one shows its creation time. Snapshot views and read-only opens leave
//! both alone.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{ImageCtx, names, now_secs};
use crate::rados::{SnapContext, WriteOp};
use crate::sync::{AtomicU64, Ordering};

/// The omap key of the access stamp.
pub(crate) const ACCESS_KEY: &str = "access_timestamp";
/// The omap key of the modification stamp.
pub(crate) const MODIFY_KEY: &str = "modify_timestamp";

/// Which stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stamp {
    Access,
    Modify,
}

impl Stamp {
    fn key(self) -> &'static str {
        match self {
            Stamp::Access => ACCESS_KEY,
            Stamp::Modify => MODIFY_KEY,
        }
    }
}

/// Both stamps of an open image, as last saved (or about to be).
pub(crate) struct Stamps {
    access: AtomicU64,
    modify: AtomicU64,
}

impl Stamps {
    /// Stamps of an image created at `created` that has saved none yet.
    pub fn new(created: u64) -> Self {
        Stamps {
            access: AtomicU64::new(created),
            modify: AtomicU64::new(created),
        }
    }

    /// Take the stamps the header object's omap holds (a value that is not
    /// eight bytes is ignored, as if never saved).
    pub fn load(&self, omap: &BTreeMap<String, Bytes>) {
        for which in [Stamp::Access, Stamp::Modify] {
            let saved = omap
                .get(which.key())
                .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok());
            if let Some(b) = saved {
                self.cell(which)
                    .store(u64::from_le_bytes(b), Ordering::SeqCst);
            }
        }
    }

    pub fn get(&self, which: Stamp) -> u64 {
        self.cell(which).load(Ordering::SeqCst)
    }

    fn cell(&self, which: Stamp) -> &AtomicU64 {
        match which {
            Stamp::Access => &self.access,
            Stamp::Modify => &self.modify,
        }
    }
}

impl ImageCtx {
    fn stamp_interval(&self, which: Stamp) -> u64 {
        let c = self.rbd.config();
        match which {
            Stamp::Access => c.atime_update_interval.as_secs(),
            Stamp::Modify => c.mtime_update_interval.as_secs(),
        }
    }

    /// Whether `which` is old enough to be saved again (cheap enough for
    /// the fast path).
    pub(crate) fn stamp_due(&self, which: Stamp) -> bool {
        let interval = self.stamp_interval(which);
        interval > 0 && now_secs() >= self.stamps.get(which).saturating_add(interval)
    }

    /// Save `which` as now if it is due; of requests at once, one saves and
    /// the others go on. The save runs on its own task, and the request
    /// waits for it at most [`SAVE_PATIENCE`]: a header whose PG is busy
    /// must not hold up data I/O. A save that fails (the store failing, the
    /// image gone) is logged and tried again by a later request.
    pub(crate) async fn stamp(&self, which: Stamp) {
        let cell = self.stamps.cell(which);
        let last = cell.load(Ordering::SeqCst);
        let now = now_secs();
        let claimed = self.stamp_due(which)
            && cell
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        if !claimed {
            return;
        }
        let oid = names::header_oid(self.id());
        let entries = BTreeMap::from([(
            which.key().to_string(),
            Bytes::copy_from_slice(&now.to_le_bytes()),
        )]);
        let ioctx = self.ioctx.clone();
        let spec = self.spec();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Never creates a header that was removed meanwhile.
            let ops = vec![WriteOp::AssertExists, WriteOp::OmapSet { entries }];
            let saved = ioctx.operate_write(&oid, &SnapContext::empty(), ops).await;
            if let Err(e) = &saved {
                log::warn!("image {spec}: saving its {}: {e}", which.key());
            }
            let _ = tx.send(saved.is_ok());
        });
        let saved = tokio::time::timeout(SAVE_PATIENCE, rx).await;
        if let Ok(Ok(false)) = saved {
            // Not saved: the next request due tries again.
            let _ = cell.compare_exchange(now, last, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// How long a read or write waits for the stamp it saves.
const SAVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Tests: make image `id` of `ioctx`'s pool look last read at `access` and
/// written at `modify` to the next open (its saved stamps).
#[cfg(test)]
pub(crate) async fn save_for_test(ioctx: &crate::rados::IoCtx, id: &str, access: u64, modify: u64) {
    let entries = [(ACCESS_KEY, access), (MODIFY_KEY, modify)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(&v.to_le_bytes())))
        .collect();
    ioctx
        .operate_write(
            &names::header_oid(id),
            &SnapContext::empty(),
            vec![WriteOp::OmapSet { entries }],
        )
        .await
        .unwrap();
}
