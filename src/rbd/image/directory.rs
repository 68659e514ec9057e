//! The pool directory: `rbd_directory` (name <-> id), `rbd_id.<name>` and the
//! `rbd_children` clone records.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::names;
use crate::rados::{IoCtx, RadosError, SNAP_HEAD, SnapContext, SnapId, WriteOp};
use crate::rbd::Rbd;
use crate::rbd::error::{RbdError, Result};
use crate::rbd::image::header::Header;
use crate::rbd::spec::ImageSpec;

/// The I/O context of pool `pool`, with a clear error when it is missing.
pub(crate) fn pool_ioctx(rbd: &Rbd, pool: &str) -> Result<IoCtx> {
    rbd.rados().ioctx(pool).map_err(|e| match e {
        RadosError::PoolNotFound(_) => RbdError::PoolNotFound(pool.to_string()),
        e => RbdError::rados("pool list", e),
    })
}

/// The name of pool `id`, if it exists.
pub(crate) fn pool_name(rbd: &Rbd, id: u64) -> Option<String> {
    rbd.rados()
        .pool_list()
        .ok()?
        .into_iter()
        .find(|p| p.id == id)
        .map(|p| p.name)
}

/// The id of image `name`, or `ImageNotFound`.
pub(crate) async fn image_id(ioctx: &IoCtx, pool: &str, name: &str) -> Result<String> {
    let oid = names::id_oid(name);
    match ioctx.read(&oid, SNAP_HEAD, 0, 1024).await {
        Ok(d) => {
            String::from_utf8(d.to_vec()).map_err(|_| RbdError::corrupt(oid, "id is not utf-8"))
        }
        Err(RadosError::NotFound) => Err(RbdError::ImageNotFound(format!("{pool}/{name}"))),
        Err(e) => Err(RbdError::rados(oid, e)),
    }
}

/// The id of image `name` like [`image_id`], except that an `rbd_id.<name>`
/// whose image is listed under another name (left behind by an interrupted
/// rename) does not count: `ImageNotFound`.
pub(crate) async fn listed_image_id(ioctx: &IoCtx, pool: &str, name: &str) -> Result<String> {
    let id = image_id(ioctx, pool, name).await?;
    match image_name(ioctx, &id).await? {
        Some(listed) if listed != name => Err(RbdError::ImageNotFound(format!("{pool}/{name}"))),
        _ => Ok(id),
    }
}

/// The name of image `id` from the directory, if it is listed.
pub(crate) async fn image_name(ioctx: &IoCtx, id: &str) -> Result<Option<String>> {
    let key = names::dir_id_key(id);
    let r = ioctx
        .operate_read(
            names::DIRECTORY,
            SNAP_HEAD,
            vec![crate::rados::ReadOp::OmapGetValsByKeys {
                keys: vec![key.clone()],
            }],
        )
        .await;
    match r {
        Ok(mut r) => Ok(r
            .pop()
            .map(crate::rados::ReadResult::into_map)
            .and_then(|m| m.get(&key).map(|v| String::from_utf8_lossy(v).into_owned()))),
        Err(RadosError::NotFound) => Ok(None),
        Err(e) => Err(RbdError::rados(names::DIRECTORY, e)),
    }
}

/// Read and decode the header of image `id`.
pub(crate) async fn read_header(ioctx: &IoCtx, id: &str) -> Result<Header> {
    let oid = names::header_oid(id);
    let data = ioctx
        .read(&oid, SNAP_HEAD, 0, crate::rados::mem::MAX_OBJECT_SIZE)
        .await
        .map_err(|e| match e {
            RadosError::NotFound => RbdError::ImageNotFound(format!("image id {id}")),
            e => RbdError::rados(&oid, e),
        })?;
    Header::decode(&data)
}

/// Add `name` <-> `id` to the directory.
pub(crate) async fn dir_add(ioctx: &IoCtx, name: &str, id: &str) -> Result<()> {
    let mut entries = BTreeMap::new();
    entries.insert(
        names::dir_name_key(name),
        Bytes::copy_from_slice(id.as_bytes()),
    );
    entries.insert(
        names::dir_id_key(id),
        Bytes::copy_from_slice(name.as_bytes()),
    );
    ioctx
        .operate_write(
            names::DIRECTORY,
            &SnapContext::empty(),
            vec![WriteOp::OmapSet { entries }],
        )
        .await
        .map_err(|e| RbdError::rados(names::DIRECTORY, e))
}

/// Remove `name` <-> `id` from the directory.
pub(crate) async fn dir_remove(ioctx: &IoCtx, name: &str, id: &str) -> Result<()> {
    ioctx
        .operate_write(
            names::DIRECTORY,
            &SnapContext::empty(),
            vec![WriteOp::OmapRmKeys {
                keys: vec![names::dir_name_key(name), names::dir_id_key(id)],
            }],
        )
        .await
        .map_err(|e| RbdError::rados(names::DIRECTORY, e))
}

/// Image names in `pool`, sorted.
pub async fn list(rbd: &Rbd, pool: &str) -> Result<Vec<String>> {
    let ioctx = pool_ioctx(rbd, pool)?;
    let all = match ioctx.omap_get_all(names::DIRECTORY).await {
        Ok(m) => m,
        Err(RadosError::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(RbdError::rados(names::DIRECTORY, e)),
    };
    Ok(all
        .keys()
        .filter_map(|k| k.strip_prefix("name_").map(str::to_string))
        .collect())
}

/// Record that `child` (pool id, image id) is a clone of `parent_id@snap` in
/// the parent's pool.
pub(crate) async fn children_add(
    parent_ioctx: &IoCtx,
    parent_id: &str,
    snap: SnapId,
    child_pool: u64,
    child_id: &str,
) -> Result<()> {
    let mut entries = BTreeMap::new();
    entries.insert(
        names::children_key(parent_id, snap, child_pool, child_id),
        Bytes::new(),
    );
    parent_ioctx
        .operate_write(
            names::CHILDREN,
            &SnapContext::empty(),
            vec![WriteOp::OmapSet { entries }],
        )
        .await
        .map_err(|e| RbdError::rados(names::CHILDREN, e))
}

pub(crate) async fn children_remove(
    parent_ioctx: &IoCtx,
    parent_id: &str,
    snap: SnapId,
    child_pool: u64,
    child_id: &str,
) -> Result<()> {
    parent_ioctx
        .operate_write(
            names::CHILDREN,
            &SnapContext::empty(),
            vec![WriteOp::OmapRmKeys {
                keys: vec![names::children_key(parent_id, snap, child_pool, child_id)],
            }],
        )
        .await
        .map_err(|e| RbdError::rados(names::CHILDREN, e))
}

/// The live clones of `parent_id@snap` in the parent's pool, as specs, sorted.
///
/// A record is live when the child is in its pool's directory and its header
/// (head or a snapshot) still links to this parent snapshot. Records left
/// behind by a crash between detaching a child and removing its record are
/// skipped, so they never keep a snapshot protected.
pub(crate) async fn live_children(
    rbd: &Rbd,
    parent_ioctx: &IoCtx,
    parent_id: &str,
    snap: SnapId,
) -> Result<Vec<ImageSpec>> {
    let all = match parent_ioctx.omap_get_all(names::CHILDREN).await {
        Ok(m) => m,
        Err(RadosError::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(RbdError::rados(names::CHILDREN, e)),
    };
    let prefix = names::children_prefix(parent_id, snap);
    let mut out = Vec::new();
    for key in all.keys() {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let Some((pool_hex, child_id)) = rest.split_once('.') else {
            continue;
        };
        let Ok(child_pool) = u64::from_str_radix(pool_hex, 16) else {
            continue;
        };
        let Some(pool) = pool_name(rbd, child_pool) else {
            continue;
        };
        let ioctx = rbd.rados().ioctx_by_id(child_pool);
        let Some(name) = image_name(&ioctx, child_id).await? else {
            continue;
        };
        let hdr = match read_header(&ioctx, child_id).await {
            Ok(h) => h,
            Err(RbdError::ImageNotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let links = |p: &Option<super::ParentLink>| {
            p.as_ref().is_some_and(|l| {
                l.pool_id == parent_ioctx.pool_id() && l.image_id == parent_id && l.snap_id == snap
            })
        };
        if links(&hdr.parent) || hdr.snaps.iter().any(|s| links(&s.parent)) {
            out.push(ImageSpec::new(&pool, &name));
        }
    }
    out.sort();
    Ok(out)
}

/// The clones of snapshot `parent` (pool/image@snap).
pub async fn children(rbd: &Rbd, parent: &ImageSpec) -> Result<Vec<ImageSpec>> {
    parent.validate()?;
    let snap_name = parent.snap.as_deref().ok_or(RbdError::SnapNameMissing)?;
    let ioctx = pool_ioctx(rbd, &parent.pool)?;
    let id = listed_image_id(&ioctx, &parent.pool, &parent.image).await?;
    let hdr = read_header(&ioctx, &id).await?;
    let snap = hdr
        .snap_by_name(snap_name)
        .ok_or_else(|| RbdError::SnapNotFound(parent.to_string()))?;
    live_children(rbd, &ioctx, &id, snap.id).await
}
