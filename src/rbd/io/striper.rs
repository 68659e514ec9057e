//! The striper: an image extent -> the object extents it covers.
//!
//! rbdfs images use librbd's default striping (stripe unit = object size,
//! stripe count 1): byte `b` of the image lives in object `b >> order` at
//! offset `b & (object_size - 1)`.

/// A piece of an image extent inside one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectExtent {
    pub objno: u64,
    /// Offset inside the object.
    pub offset: u64,
    pub length: u64,
    /// Offset of this piece inside the image extent (where its bytes go in the
    /// caller's buffer).
    pub buffer_offset: u64,
}

/// Objects needed to hold `size` bytes.
pub fn object_count(size: u64, order: u8) -> u64 {
    size.div_ceil(1u64 << order)
}

/// Split `[off, off + len)` into object extents, in image order.
pub fn map_extent(order: u8, off: u64, len: u64) -> Vec<ObjectExtent> {
    let osz = 1u64 << order;
    let mut out = Vec::new();
    let mut pos = off;
    let end = off.saturating_add(len);
    while pos < end {
        let objno = pos >> order;
        let offset = pos & (osz - 1);
        let length = (osz - offset).min(end - pos);
        out.push(ObjectExtent {
            objno,
            offset,
            length,
            buffer_offset: pos - off,
        });
        pos += length;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(objno: u64, offset: u64, length: u64, buffer_offset: u64) -> ObjectExtent {
        ObjectExtent {
            objno,
            offset,
            length,
            buffer_offset,
        }
    }

    #[test]
    fn test_striper_extent_inside_one_object_is_one_piece() {
        // 4 MiB objects (order 22): 4 KiB at 8 KiB stays in object 0.
        assert_eq!(map_extent(22, 8192, 4096), vec![ext(0, 8192, 4096, 0)]);
    }

    #[test]
    fn test_striper_extent_across_boundary_splits_at_object_edge() {
        // 4 KiB objects (order 12): [4000, 4000+200) crosses into object 1.
        assert_eq!(
            map_extent(12, 4000, 200),
            vec![ext(0, 4000, 96, 0), ext(1, 0, 104, 96)]
        );
    }

    #[test]
    fn test_striper_extent_spanning_three_objects_has_full_middle() {
        assert_eq!(
            map_extent(12, 4095, 4098),
            vec![ext(0, 4095, 1, 0), ext(1, 0, 4096, 1), ext(2, 0, 1, 4097)]
        );
    }

    #[test]
    fn test_striper_empty_extent_has_no_pieces() {
        assert!(map_extent(22, 123, 0).is_empty());
    }

    #[test]
    fn test_object_count_rounds_up() {
        assert_eq!(object_count(0, 22), 0);
        assert_eq!(object_count(1, 22), 1);
        assert_eq!(object_count(1 << 30, 22), 256);
        assert_eq!(object_count((1 << 30) + 1, 22), 257);
    }
}
