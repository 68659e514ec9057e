//! Cloning a protected snapshot, in O(1): the child is a header with a parent
//! link (pool, image id, snap id, overlap = the snapshot's size), an empty object
//! map and a record in the parent pool's `rbd_children`. Steps as in `create`.

use super::header::{Header, ParentLink};
use super::{create, directory, now_secs};
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::spec::ImageSpec;
use crate::rbd::types::{CreateOptions, Features};
use crate::sync::Arc;

/// Number of parent links above `link` (1 for a clone of a plain image).
pub(crate) async fn chain_depth(rbd: &Rbd, link: &ParentLink) -> Result<u32> {
    let mut depth = 1;
    let mut cur = link.clone();
    loop {
        let ioctx = rbd.rados().ioctx_by_id(cur.pool_id);
        let hdr = directory::read_header(&ioctx, &cur.image_id).await?;
        let next = hdr.snap_by_id(cur.snap_id).and_then(|s| s.parent.clone());
        match next {
            Some(n) => {
                depth += 1;
                cur = n;
            }
            None => return Ok(depth),
        }
    }
}

pub async fn clone_image(
    rbd: &Arc<Rbd>,
    parent: &ImageSpec,
    child: &ImageSpec,
    opts: &CreateOptions,
) -> Result<()> {
    parent.validate()?;
    child.validate()?;
    let snap_name = parent.snap.as_deref().ok_or(RbdError::SnapNameMissing)?;
    if child.snap.is_some() {
        return Err(RbdError::InvalidSpec {
            spec: child.to_string(),
            reason: "a clone's name may not name a snapshot".into(),
        });
    }
    let _gate = rbd.clone_gate.lock().await;
    let pioctx = directory::pool_ioctx(rbd, &parent.pool)?;
    let pid = directory::listed_image_id(&pioctx, &parent.pool, &parent.image).await?;
    // Read the header from the store: the parent may be open elsewhere, but its
    // snapshot table is what was persisted.
    let phdr = directory::read_header(&pioctx, &pid).await?;
    let snap = phdr
        .snap_by_name(snap_name)
        .ok_or_else(|| RbdError::SnapNotFound(parent.to_string()))?;
    if !snap.protected {
        return Err(RbdError::ParentNotProtected(parent.to_string()));
    }
    let link = ParentLink {
        pool_id: pioctx.pool_id(),
        image_id: pid.clone(),
        snap_id: snap.id,
        overlap: snap.size,
    };
    let depth = chain_depth(rbd, &link).await?;
    let max = rbd.config().max_clone_depth;
    if depth > max {
        return Err(RbdError::CloneDepthExceeded { depth, max });
    }
    let features = create::resolve_features(opts.features.unwrap_or(Features(phdr.features)))?;
    let cioctx = directory::pool_ioctx(rbd, &child.pool)?;
    let hdr = Header {
        size: snap.size,
        order: phdr.order,
        features: features.0,
        create_timestamp: now_secs(),
        snap_seq: 0,
        snaps: Vec::new(),
        parent: Some(link.clone()),
    };
    create::create_image(
        rbd,
        &cioctx,
        &child.pool,
        &child.image,
        hdr,
        Some((&pioctx, &link)),
    )
    .await
}
