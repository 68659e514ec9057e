//! Creating an image.
//!
//! ```text
//!  CLAIM_NAME (exclusive create of rbd_id.<name>; EEXIST -> "already exists")
//!      |
//!  WRITE_HEADER -> WRITE_OBJECT_MAP -> [ADD_CHILD_RECORD (clones)]
//!      |
//!  ADD_TO_DIRECTORY (the image becomes visible in `list`)
//! ```
//! Nothing is visible in `list` before the last step; a crash earlier leaves
//! an unlisted, openable image that `remove` cleans up.

use bytes::Bytes;

use super::header::{Header, ParentLink};
use super::{directory, names, new_image_id, now_secs};
use crate::rados::{IoCtx, RadosError, SNAP_HEAD, SnapContext, WriteOp};
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::io::striper;
use crate::rbd::object_map::ObjectMap;
use crate::rbd::spec::ImageSpec;
use crate::rbd::types::{CreateOptions, Features, MAX_ORDER, MIN_ORDER, check_size};

/// Check and complete the features asked for, as `rbd create` does.
pub(crate) fn resolve_features(f: Features) -> Result<Features> {
    let mut bits = f.0;
    if bits & Features::OBJECT_MAP != 0 && bits & Features::EXCLUSIVE_LOCK == 0 {
        return Err(RbdError::InvalidArgument(
            "cannot use object map without exclusive lock".into(),
        ));
    }
    if bits & Features::FAST_DIFF != 0 && bits & Features::OBJECT_MAP == 0 {
        bits &= !Features::FAST_DIFF;
    } else if bits & Features::OBJECT_MAP != 0 {
        bits |= Features::FAST_DIFF;
    }
    Ok(Features(bits | Features::LAYERING))
}

pub async fn create(
    rbd: &Rbd,
    pool: &str,
    name: &str,
    size: u64,
    opts: &CreateOptions,
) -> Result<()> {
    ImageSpec::new(pool, name).validate()?;
    let order = opts.order.unwrap_or(rbd.config().default_order);
    if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
        return Err(RbdError::InvalidArgument(format!(
            "order {order} is outside {MIN_ORDER}..={MAX_ORDER}"
        )));
    }
    check_size(size, order)?;
    let features = resolve_features(opts.features.unwrap_or(rbd.config().default_features))?;
    let ioctx = directory::pool_ioctx(rbd, pool)?;
    let hdr = Header {
        size,
        order,
        features: features.0,
        create_timestamp: now_secs(),
        snap_seq: 0,
        snaps: Vec::new(),
        parent: None,
    };
    create_image(rbd, &ioctx, pool, name, hdr, None).await
}

/// The steps shared by `create` and `clone`; `child_of` = (parent pool ioctx,
/// link) adds the children record.
pub(crate) async fn create_image(
    rbd: &Rbd,
    ioctx: &IoCtx,
    pool: &str,
    name: &str,
    hdr: Header,
    child_of: Option<(&IoCtx, &ParentLink)>,
) -> Result<()> {
    let _busy = rbd.name_guard(pool, name)?;
    let id = new_image_id();
    claim_name(rbd, ioctx, pool, name, &id).await?;
    let header_oid = names::header_oid(&id);
    ioctx
        .operate_write(
            &header_oid,
            &SnapContext::empty(),
            vec![
                WriteOp::Create { exclusive: true },
                WriteOp::WriteFull {
                    data: Bytes::from(hdr.encode()),
                },
            ],
        )
        .await
        .map_err(|e| RbdError::rados(&header_oid, e))?;
    ObjectMap::new(striper::object_count(hdr.size, hdr.order))
        .save(ioctx, &names::object_map_oid(&id, SNAP_HEAD))
        .await?;
    if let Some((pioctx, link)) = child_of {
        directory::children_add(pioctx, &link.image_id, link.snap_id, ioctx.pool_id(), &id).await?;
    }
    directory::dir_add(ioctx, name, &id).await
}

/// Claim `name` for image `id` (exclusive create of `rbd_id.<name>`). The
/// caller holds the in-process name guard, so an `rbd_id.<name>` that is not
/// in the directory under this name is a leftover of a crashed create, clone
/// or rename: it is cleaned up and the claim retried once.
pub(crate) async fn claim_name(
    rbd: &Rbd,
    ioctx: &IoCtx,
    pool: &str,
    name: &str,
    id: &str,
) -> Result<()> {
    let id_oid = names::id_oid(name);
    for attempt in 0..2 {
        let r = ioctx
            .operate_write(
                &id_oid,
                &SnapContext::empty(),
                vec![
                    WriteOp::Create { exclusive: true },
                    WriteOp::WriteFull {
                        data: Bytes::copy_from_slice(id.as_bytes()),
                    },
                ],
            )
            .await;
        match r {
            Ok(()) => return Ok(()),
            Err(RadosError::Exists) if attempt == 0 => {
                if !remove_leftover(rbd, ioctx, pool, name).await? {
                    break;
                }
            }
            Err(RadosError::Exists) => break,
            Err(e) => return Err(RbdError::rados(&id_oid, e)),
        }
    }
    Err(RbdError::ImageExists(format!("{pool}/{name}")))
}

/// If `rbd_id.<name>` is a leftover (its image is not listed under `name`),
/// remove it, and with it the pieces of an image that never got listed.
/// Returns false when `name` is a real, listed image.
async fn remove_leftover(rbd: &Rbd, ioctx: &IoCtx, pool: &str, name: &str) -> Result<bool> {
    let id = match directory::image_id(ioctx, pool, name).await {
        Ok(id) => id,
        Err(RbdError::ImageNotFound(_)) => return Ok(true),
        Err(e) => return Err(e),
    };
    match directory::image_name(ioctx, &id).await? {
        Some(listed) if listed == name => return Ok(false),
        Some(_) => {}
        None => {
            log::warn!("{pool}/{name}: removing the leftovers of an interrupted create (id {id})");
            if let Ok(hdr) = directory::read_header(ioctx, &id).await
                && let Some(link) = &hdr.parent
            {
                let pioctx = rbd.rados().ioctx_by_id(link.pool_id);
                directory::children_remove(
                    &pioctx,
                    &link.image_id,
                    link.snap_id,
                    ioctx.pool_id(),
                    &id,
                )
                .await?;
            }
            for oid in [
                names::object_map_oid(&id, SNAP_HEAD),
                names::header_oid(&id),
            ] {
                remove_if_present(ioctx, &oid).await?;
            }
        }
    }
    remove_if_present(ioctx, &names::id_oid(name)).await?;
    Ok(true)
}

async fn remove_if_present(ioctx: &IoCtx, oid: &str) -> Result<()> {
    match ioctx.remove(oid, &SnapContext::empty()).await {
        Ok(()) | Err(RadosError::NotFound) => Ok(()),
        Err(e) => Err(RbdError::rados(oid, e)),
    }
}
