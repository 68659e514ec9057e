//! Placement: object name -> PG by a stable hash, PG -> ordered set of OSDs by
//! rendezvous hashing with straw2 draws.
//!
//! Both functions are part of the on-disk format: an object's PG decides which
//! collection holds it, so the hashes must never change across versions (the
//! golden tests pin them).

use super::osdmap::OsdId;
use crate::rados::PoolId;

/// Stable 32-bit hash of an object name (crc32c, as used on the wire by Ceph
/// for other purposes; fixed forever here).
pub fn object_hash(name: &str) -> u32 {
    crc32c::crc32c(name.as_bytes())
}

/// The PG of an object in a pool of `pg_num` PGs.
pub fn object_pg(name: &str, pg_num: u32) -> u32 {
    object_hash(name) % pg_num.max(1)
}

/// A fixed 64-bit mixer (the splitmix64 finaliser): every input bit affects
/// every output bit, which a linear hash like a CRC would not give.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The pseudo-random value of the (pool, pg, osd) triple.
fn draw_hash(pool: PoolId, pg: u32, osd: OsdId) -> u64 {
    mix64(mix64(mix64(pool) ^ u64::from(pg)) ^ u64::from(osd))
}

/// Straw2 draw: `ln(u) / weight` with `u` uniform in (0, 1]. The OSD with the
/// largest draw wins; since each OSD's draw depends only on its own hash and
/// weight, removing one OSD changes only the slots it held.
fn straw2_draw(pool: PoolId, pg: u32, osd: OsdId, weight: f64) -> f64 {
    let h = draw_hash(pool, pg, osd) >> 11;
    let u = (h as f64 + 1.0) / (1u64 << 53) as f64;
    u.ln() / weight
}

/// The ordered acting set of a PG: up to `size` distinct OSDs among
/// `candidates` (id, weight > 0), highest draw first (the primary).
pub fn pg_to_osds(pool: PoolId, pg: u32, size: usize, candidates: &[(OsdId, f64)]) -> Vec<OsdId> {
    let mut draws: Vec<(f64, OsdId)> = candidates
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|&(id, w)| (straw2_draw(pool, pg, id, w), id))
        .collect();
    draws.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    draws.into_iter().take(size).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn osds(n: u32) -> Vec<(OsdId, f64)> {
        (0..n).map(|i| (i, 1.0)).collect()
    }

    #[test]
    fn test_object_pg_golden_values_never_change() {
        // Pinned: changing these moves every object of every existing cluster.
        assert_eq!(object_hash("123456789"), 0xe306_9283); // the CRC-32C check value
        assert_eq!(object_hash("rbd_data.1234.0000000000000000"), 0x142b_48e4);
        assert_eq!(object_pg("rbd_header.abc", 32), 6);
    }

    #[test]
    fn test_pg_to_osds_golden_values_never_change() {
        assert_eq!(pg_to_osds(1, 0, 3, &osds(5)), vec![3, 0, 4]);
        assert_eq!(pg_to_osds(2, 7, 2, &osds(5)), vec![0, 2]);
    }

    #[test]
    fn test_pg_to_osds_returns_distinct_osds_up_to_size() {
        for pg in 0..64 {
            let set = pg_to_osds(1, pg, 3, &osds(4));
            let mut d = set.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "{set:?}");
        }
        assert_eq!(pg_to_osds(1, 0, 3, &osds(2)).len(), 2);
    }

    #[test]
    fn test_pg_to_osds_marking_one_osd_out_moves_only_its_slots() {
        // 10 OSDs, 4096 PGs x 3 replicas: removing one OSD should move about
        // 1/10 of the replicas, and only those it held.
        let (n, pgs, size) = (10u32, 4096u32, 3usize);
        let all = osds(n);
        let without: Vec<_> = all.iter().copied().filter(|(id, _)| *id != 7).collect();
        let (mut moved, mut total) = (0usize, 0usize);

        for pg in 0..pgs {
            let before = pg_to_osds(1, pg, size, &all);
            let after = pg_to_osds(1, pg, size, &without);
            total += size;
            for osd in &before {
                if *osd != 7 {
                    assert!(after.contains(osd), "pg {pg}: {before:?} -> {after:?}");
                }
            }
            moved += after.iter().filter(|o| !before.contains(o)).count();
            assert_eq!(moved_from_7(&before, &after), before.contains(&7) as usize);
        }

        let frac = moved as f64 / total as f64;
        assert!((0.08..0.12).contains(&frac), "moved fraction {frac}");
    }

    /// How many OSDs joined the set: must equal 1 exactly when osd.7 left it.
    fn moved_from_7(before: &[OsdId], after: &[OsdId]) -> usize {
        after.iter().filter(|o| !before.contains(o)).count()
    }

    #[test]
    fn test_pg_to_osds_spreads_primaries_evenly() {
        let mut primaries = [0usize; 5];
        for pg in 0..5000 {
            primaries[pg_to_osds(3, pg, 3, &osds(5))[0] as usize] += 1;
        }
        for c in primaries {
            assert!((800..1200).contains(&c), "{primaries:?}");
        }
    }
}
