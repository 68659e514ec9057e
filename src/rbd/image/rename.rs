//! Renaming an image: claim the new `rbd_id.<to>`, switch the directory entry
//! in one atomic update, drop `rbd_id.<from>`. The header and data keep their
//! id-based names.

use bytes::Bytes;

use std::collections::BTreeMap;

use super::{create, directory, names};
use crate::rados::{RadosError, SnapContext, WriteOp};
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::spec::ImageSpec;

pub async fn rename(rbd: &Rbd, pool: &str, from: &str, to: &str) -> Result<()> {
    ImageSpec::new(pool, from).validate()?;
    ImageSpec::new(pool, to).validate()?;
    let ioctx = directory::pool_ioctx(rbd, pool)?;
    let id = directory::listed_image_id(&ioctx, pool, from).await?;
    if from == to {
        return Ok(());
    }
    let _busy = rbd.name_guard(pool, to)?;
    create::claim_name(rbd, &ioctx, pool, to, &id).await?;
    // One atomic directory update, so a crash never leaves the image
    // unlisted (a leftover rbd_id.<from> or rbd_id.<to> is harmless and
    // cleaned up by the next create of that name).
    let mut set = BTreeMap::new();
    set.insert(
        names::dir_name_key(to),
        Bytes::copy_from_slice(id.as_bytes()),
    );
    set.insert(
        names::dir_id_key(&id),
        Bytes::copy_from_slice(to.as_bytes()),
    );
    ioctx
        .operate_write(
            names::DIRECTORY,
            &SnapContext::empty(),
            vec![
                WriteOp::OmapRmKeys {
                    keys: vec![names::dir_name_key(from)],
                },
                WriteOp::OmapSet { entries: set },
            ],
        )
        .await
        .map_err(|e| RbdError::rados(names::DIRECTORY, e))?;
    let from_oid = names::id_oid(from);
    match ioctx.remove(&from_oid, &SnapContext::empty()).await {
        Ok(()) | Err(RadosError::NotFound) => {}
        Err(e) => return Err(RbdError::rados(&from_oid, e)),
    }
    if let Some(ctx) = rbd
        .registry()
        .lock()
        .get(&(ioctx.pool_id(), id))
        .and_then(|w| w.upgrade())
    {
        *ctx.name.lock() = to.to_string();
    }
    Ok(())
}
