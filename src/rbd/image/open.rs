//! Opening an image: find its id, read its header and object maps, and share
//! one [`ImageCtx`] per image in the process through the `Rbd` registry.

use std::collections::HashMap;

use super::{ImageCtx, Loaded, directory, names};
use crate::rados::RadosError;
use crate::rados::SNAP_HEAD;
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::io::striper;
use crate::rbd::object_map::ObjectMap;
use crate::sync::Arc;

/// The context of `pool/name`, from the registry or freshly loaded.
pub async fn open_ctx(rbd: &Arc<Rbd>, pool: &str, name: &str) -> Result<Arc<ImageCtx>> {
    crate::rbd::spec::ImageSpec::new(pool, name).validate()?;
    let ioctx = directory::pool_ioctx(rbd, pool)?;
    let id = directory::listed_image_id(&ioctx, pool, name).await?;
    open_listed(rbd, pool, ioctx, id, name.to_string()).await
}

/// The context of image `id` of `pool`, whatever its name is now.
pub(crate) async fn open_ctx_by_id(rbd: &Arc<Rbd>, pool: &str, id: &str) -> Result<Arc<ImageCtx>> {
    let ioctx = directory::pool_ioctx(rbd, pool)?;
    let name = directory::image_name(&ioctx, id)
        .await?
        .ok_or_else(|| RbdError::ImageNotFound(format!("{pool}/(id {id})")))?;
    open_listed(rbd, pool, ioctx, id.to_string(), name).await
}

async fn open_listed(
    rbd: &Arc<Rbd>,
    pool: &str,
    ioctx: crate::rados::IoCtx,
    id: String,
    name: String,
) -> Result<Arc<ImageCtx>> {
    let key = (ioctx.pool_id(), id.clone());
    if let Some(ctx) = rbd.registry().lock().get(&key).and_then(|w| w.upgrade()) {
        return Ok(ctx);
    }
    // One open of an image at a time: two would both settle the copyups a
    // crash left, the later one from a plan the earlier one (and writes
    // made through it since) already changed.
    let slot = rbd.open_slot(&key);
    let _one = slot.lock().await;
    if let Some(ctx) = rbd.registry().lock().get(&key).and_then(|w| w.upgrade()) {
        return Ok(ctx);
    }
    let header = directory::read_header(&ioctx, &id).await?;
    let head_map = load_map(&ioctx, &id, SNAP_HEAD, header.size, header.order).await?;
    let mut snap_maps = HashMap::new();
    for s in &header.snaps {
        snap_maps.insert(
            s.id,
            load_map(&ioctx, &id, s.id, s.size, header.order).await?,
        );
    }
    let ctx = Arc::new(ImageCtx::new(
        rbd.clone(),
        Loaded {
            ioctx,
            pool: pool.to_string(),
            id,
            name,
            header,
            head_map,
            snap_maps,
        },
    ));
    ctx.preload_parents().await;
    ctx.settle_copyups().await?;
    let mut reg = rbd.registry().lock();
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(existing) = reg.get(&key).and_then(|w| w.upgrade()) {
        return Ok(existing);
    }
    reg.insert(key, Arc::downgrade(&ctx));
    Ok(ctx)
}

/// Load an object map, sized to the image; a map that does not match the
/// image's object count is resized (objects past the end are absent anyway).
/// A missing map is replaced by one that claims every object: that costs a
/// probe per object until `object_map_rebuild`, but never hides data.
async fn load_map(
    ioctx: &crate::rados::IoCtx,
    id: &str,
    snap: u64,
    size: u64,
    order: u8,
) -> Result<ObjectMap> {
    let oid = names::object_map_oid(id, snap);
    let count = striper::object_count(size, order);
    match ObjectMap::load(ioctx, &oid).await {
        Ok(mut m) => {
            m.resize(count);
            Ok(m)
        }
        Err(RbdError::Rados {
            source: RadosError::NotFound,
            ..
        }) => {
            log::warn!("{oid} is missing: assuming every object exists; run an object map rebuild");
            let m = ObjectMap::all_existing(count);
            m.save(ioctx, &oid).await?;
            Ok(m)
        }
        Err(e) => Err(e),
    }
}
