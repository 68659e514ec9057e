//! Names of the objects an image and a pool's image directory live in.

use crate::rados::{SNAP_HEAD, SnapId};

/// Pool-wide omap: `name_<name>` -> id and `id_<id>` -> name.
pub const DIRECTORY: &str = "rbd_directory";

/// Pool-wide omap of clone records, one key per (parent snapshot, child):
/// `<parent_id>.<snap_id:016x>.<child_pool_id:016x>.<child_id>`, in the
/// parent's pool.
pub const CHILDREN: &str = "rbd_children";

/// Holds the id of image `name` as its data.
pub fn id_oid(name: &str) -> String {
    format!("rbd_id.{name}")
}

pub fn header_oid(id: &str) -> String {
    format!("rbd_header.{id}")
}

/// `rbd_data.<id>`: the prefix of every data object name.
pub fn block_name_prefix(id: &str) -> String {
    format!("rbd_data.{id}")
}

pub fn data_oid(id: &str, objno: u64) -> String {
    format!("rbd_data.{id}.{objno:016x}")
}

/// The object map of the head (`SNAP_HEAD`) or of snapshot `snap`.
pub fn object_map_oid(id: &str, snap: SnapId) -> String {
    if snap == SNAP_HEAD {
        format!("rbd_object_map.{id}")
    } else {
        format!("rbd_object_map.{id}.{snap:016x}")
    }
}

pub fn dir_name_key(name: &str) -> String {
    format!("name_{name}")
}

pub fn dir_id_key(id: &str) -> String {
    format!("id_{id}")
}

/// Prefix of the `rbd_children` keys of one parent snapshot.
pub fn children_prefix(parent_id: &str, snap: SnapId) -> String {
    format!("{parent_id}.{snap:016x}.")
}

pub fn children_key(parent_id: &str, snap: SnapId, child_pool: u64, child_id: &str) -> String {
    format!(
        "{}{child_pool:016x}.{child_id}",
        children_prefix(parent_id, snap)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_match_librbd_layout() {
        assert_eq!(data_oid("abc", 0x1f), "rbd_data.abc.000000000000001f");
        assert_eq!(object_map_oid("abc", SNAP_HEAD), "rbd_object_map.abc");
        assert_eq!(
            object_map_oid("abc", 4),
            "rbd_object_map.abc.0000000000000004"
        );
        assert_eq!(header_oid("abc"), "rbd_header.abc");
        assert_eq!(
            children_key("p", 3, 1, "c"),
            "p.0000000000000003.0000000000000001.c"
        );
    }
}
