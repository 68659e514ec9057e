//! Removing an image.
//!
//! ```text
//!  CHECK (not open in this process, no snapshots)
//!    |
//!  REMOVE_DATA (every object the map knows, N at a time, progress)
//!    |
//!  REMOVE_OBJECT_MAP -> REMOVE_CHILD_RECORD (clones) -> REMOVE_HEADER
//!    |
//!  REMOVE_FROM_DIRECTORY -> REMOVE_ID
//! ```
//! Every step tolerates what an interrupted earlier run already removed, so
//! `remove` can simply be run again.

use super::{directory, names};
use crate::rados::{IoCtx, RadosError, SNAP_HEAD, SnapContext};
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::io::striper;
use crate::rbd::object_map::ObjectMap;
use crate::rbd::spec::ImageSpec;
use crate::rbd::throttle;
use crate::rbd::types::ProgressSink;
use crate::sync::Arc;

/// How long a remove waits for the image to be closed before EBUSY.
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

async fn remove_ignoring_absent(ioctx: &IoCtx, oid: &str) -> Result<()> {
    match ioctx.remove(oid, &SnapContext::empty()).await {
        Ok(()) | Err(RadosError::NotFound) => Ok(()),
        Err(e) => Err(RbdError::rados(oid, e)),
    }
}

pub async fn remove(
    rbd: &Arc<Rbd>,
    pool: &str,
    name: &str,
    progress: &dyn ProgressSink,
) -> Result<()> {
    ImageSpec::new(pool, name).validate()?;
    let ioctx = directory::pool_ioctx(rbd, pool)?;
    let id = directory::listed_image_id(&ioctx, pool, name).await?;
    // A stat or a listing holds the image open for a moment: that is waited
    // out; an open file or a loop device, which keep it, are not.
    let key = (ioctx.pool_id(), id.clone());
    let open = || {
        rbd.registry()
            .lock()
            .get(&key)
            .is_some_and(|w| w.strong_count() > 0)
    };
    let since = std::time::Instant::now();
    while open() {
        if since.elapsed() >= BUSY_PATIENCE {
            return Err(RbdError::ImageBusy(format!("{pool}/{name}")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    match directory::read_header(&ioctx, &id).await {
        Ok(hdr) => {
            if !hdr.snaps.is_empty() {
                return Err(RbdError::HasSnapshots);
            }
            let count = striper::object_count(hdr.size, hdr.order);
            let map_oid = names::object_map_oid(&id, SNAP_HEAD);
            let map = ObjectMap::load(&ioctx, &map_oid).await.ok();
            let objs: Vec<u64> = (0..count)
                .filter(|&o| map.as_ref().is_none_or(|m| m.exists(o)))
                .collect();
            let total = objs.len() as u64;
            throttle::run(
                rbd.config().concurrent_management_ops,
                objs,
                total,
                None,
                progress,
                |objno| {
                    let ioctx = &ioctx;
                    let oid = names::data_oid(&id, objno);
                    async move { remove_ignoring_absent(ioctx, &oid).await }
                },
            )
            .await?;
            remove_ignoring_absent(&ioctx, &map_oid).await?;
            if let Some(link) = &hdr.parent {
                let pioctx = rbd.rados().ioctx_by_id(link.pool_id);
                directory::children_remove(
                    &pioctx,
                    &link.image_id,
                    link.snap_id,
                    ioctx.pool_id(),
                    &id,
                )
                .await?;
                rbd.bump_layout_epoch();
            }
            remove_ignoring_absent(&ioctx, &names::header_oid(&id)).await?;
        }
        Err(RbdError::ImageNotFound(_)) => {}
        Err(e) => return Err(e),
    }
    // Unlist before dropping the id: a crash in between leaves an unlisted
    // image whose id still resolves, so running remove again finishes it.
    directory::dir_remove(&ioctx, name, &id).await?;
    remove_ignoring_absent(&ioctx, &names::id_oid(name)).await?;
    progress.update(1, 1);
    Ok(())
}
