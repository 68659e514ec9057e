//! Renaming an image: claim the new `rbd_id.<to>`, move the directory entry,
//! drop `rbd_id.<from>`. The header and data keep their id-based names.

use bytes::Bytes;

use super::{directory, names};
use crate::rados::{RadosError, SnapContext, WriteOp};
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::spec::ImageSpec;

pub async fn rename(rbd: &Rbd, pool: &str, from: &str, to: &str) -> Result<()> {
    ImageSpec::new(pool, from).validate()?;
    ImageSpec::new(pool, to).validate()?;
    let ioctx = directory::pool_ioctx(rbd, pool)?;
    let id = directory::image_id(&ioctx, pool, from).await?;
    if from == to {
        return Ok(());
    }
    let to_oid = names::id_oid(to);
    ioctx
        .operate_write(
            &to_oid,
            &SnapContext::empty(),
            vec![
                WriteOp::Create { exclusive: true },
                WriteOp::WriteFull {
                    data: Bytes::copy_from_slice(id.as_bytes()),
                },
            ],
        )
        .await
        .map_err(|e| match e {
            RadosError::Exists => RbdError::ImageExists(format!("{pool}/{to}")),
            e => RbdError::rados(&to_oid, e),
        })?;
    directory::dir_remove(&ioctx, from, &id).await?;
    directory::dir_add(&ioctx, to, &id).await?;
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
