//! Scrub: compare the copies of each PG on its acting OSDs and, on request,
//! repair the bad ones.
//!
//! ```text
//!  for each PG (client I/O to the cluster held while one PG is compared):
//!    every acting OSD: list objects; per object: size, attributes, omap
//!      (deep: crc32c of the data too)
//!    per object, the authoritative copy:
//!      deep and some copy's data matches the digest stored in its object
//!        info -> the most common such copy
//!      otherwise -> the most common copy (absent counts as a vote; a tie
//!        goes to the copy nearest the primary)
//!    every copy that differs is an inconsistency; repair replaces it with
//!    the authoritative copy (or removes it when the object should not be)
//! ```
//!
//! The scrub result replaces what verified reads recorded for the PG: what
//! it leaves unrepaired shows as `+inconsistent` in `pg ls`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::PgId;
use super::cluster::Cluster;
use super::daemon::queue_and_wait;
use super::error::{OsdError, OsdResult};
use super::object_info::{OI_ATTR, ObjectInfo};
use super::osdmap::OsdId;
use super::peering::copy_object;
use crate::rados::{PoolId, SnapId};
use crate::store::{ObjectKey, ObjectStore, StoreError, Transaction, TxOp};
use crate::sync::Arc;

/// One bad object found by a scrub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inconsistency {
    pub pgid: String,
    pub object: String,
    /// `u64::MAX` for the head, else the clone id.
    pub snap: SnapId,
    /// The OSDs whose copy is bad.
    pub osds: Vec<OsdId>,
    /// What differs, e.g. `osd.1: data_digest 0x1234 != 0xabcd`.
    pub errors: Vec<String>,
    /// Rewritten from the authoritative copy by this scrub.
    pub repaired: bool,
}

/// What a scrub found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    pub deep: bool,
    pub repair: bool,
    pub pgs_scrubbed: usize,
    /// PGs not scrubbed, as Ceph scrubs only PGs that serve: their copies
    /// are not yet made the same by peering and recovery.
    #[serde(default)]
    pub pgs_skipped: Vec<SkippedPg>,
    /// Distinct objects (heads and clones) compared.
    pub objects_scrubbed: u64,
    pub inconsistencies: Vec<Inconsistency>,
}

/// A PG scrub left alone, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedPg {
    pub pgid: String,
    /// `down`, `incomplete`, `peering` or `backfilling`.
    pub state: String,
}

impl ScrubReport {
    /// No inconsistency found.
    pub fn is_clean(&self) -> bool {
        self.inconsistencies.is_empty()
    }

    /// Inconsistencies this scrub did not repair.
    pub fn unrepaired(&self) -> usize {
        self.inconsistencies.iter().filter(|i| !i.repaired).count()
    }
}

/// One OSD's copy of an object as scrub compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Copy {
    size: u64,
    attrs: BTreeMap<String, Bytes>,
    omap: BTreeMap<String, Bytes>,
    /// Deep scrub only.
    digest: Option<u32>,
}

impl Copy {
    fn read(store: &dyn ObjectStore, key: &ObjectKey, deep: bool) -> Result<Self, StoreError> {
        Ok(Copy {
            size: store.stat(key)?,
            attrs: store.getattrs(key)?,
            omap: store.omap_get(key)?,
            digest: if deep {
                Some(store.data_digest(key)?)
            } else {
                None
            },
        })
    }

    fn stored_digest(&self) -> Option<u32> {
        let oi = ObjectInfo::decode(self.attrs.get(OI_ATTR)?).ok()?;
        if oi.whiteout { None } else { oi.data_digest }
    }

    /// Data matches the digest its object info records.
    fn digest_ok(&self) -> bool {
        matches!((self.digest, self.stored_digest()), (Some(a), Some(b)) if a == b)
    }

    fn differences(&self, auth: &Copy) -> Vec<String> {
        let mut d = Vec::new();
        if self.size != auth.size {
            d.push(format!("size {} != {}", self.size, auth.size));
        }
        if self.attrs != auth.attrs {
            d.push("attributes differ".into());
        }
        if self.omap != auth.omap {
            d.push("omap differs".into());
        }
        if self.digest != auth.digest {
            d.push(format!(
                "data_digest {:#010x} != {:#010x}",
                self.digest.unwrap_or_default(),
                auth.digest.unwrap_or_default()
            ));
        }
        d
    }
}

impl Cluster {
    /// Scrub every PG of `pool` (all pools when `None`): compare the copies
    /// on the acting OSDs (deep: their data's crc32c too, against each
    /// other and the stored digest); with `repair`, rewrite bad copies.
    pub fn scrub(&self, pool: Option<PoolId>, deep: bool, repair: bool) -> OsdResult<ScrubReport> {
        let map = self.osdmap();
        if let Some(p) = pool {
            map.pool(p)
                .ok_or_else(|| OsdError::PoolNotFound(p.to_string()))?;
        }
        let mut report = ScrubReport {
            deep,
            repair,
            ..ScrubReport::default()
        };
        let pgs: Vec<PgId> = map
            .pools
            .iter()
            .filter(|p| pool.is_none_or(|id| id == p.info.id))
            .flat_map(|p| {
                (0..p.info.pg_num).map(|pg| PgId {
                    pool: p.info.id,
                    pg,
                })
            })
            .collect();
        for id in pgs {
            let inner = self.inner();
            // Per PG, so that client I/O runs between PGs.
            inner.quiesced(|| match self.serving_copies(id) {
                Ok(acting) => {
                    report.pgs_scrubbed += 1;
                    self.scrub_pg(id, &acting, deep, repair, &mut report)
                }
                Err(state) => {
                    let pgid = format!("{}.{:x}", id.pool, id.pg);
                    log::info!("scrub: skipped pg {pgid}: {state}");
                    report.pgs_skipped.push(SkippedPg { pgid, state });
                    Ok(())
                }
            })?;
        }
        Ok(report)
    }

    /// The OSDs that serve `id`, whose copies peering made the same; or,
    /// when it does not serve, its state. Copies of a PG that does not
    /// serve may be of different ages, and "repairing" one from another
    /// could put an older copy over the newest (Ceph, too, scrubs only
    /// PGs that are active).
    fn serving_copies(&self, id: PgId) -> Result<Vec<OsdId>, String> {
        let inner = self.inner();
        let map = self.osdmap();
        let pool = map.pool(id.pool).ok_or_else(|| "down".to_string())?;
        let acting = inner.shared.acting(&map, &pool.info, id.pg);
        let pg = acting
            .first()
            .and_then(|&p| inner.osd(p))
            .and_then(|o| o.pg(id))
            .ok_or_else(|| "down".to_string())?;
        let pg = pg.lock();
        if pg.incomplete.is_some() {
            return Err("incomplete".into());
        }
        if pg.pending || pg.acting.is_empty() {
            return Err("peering".into());
        }
        if inner.shared.activity.lock().contains_key(&id) {
            return Err("backfilling".into());
        }
        Ok(pg.acting.clone())
    }

    fn scrub_pg(
        &self,
        id: PgId,
        acting: &[OsdId],
        deep: bool,
        repair: bool,
        report: &mut ScrubReport,
    ) -> OsdResult<()> {
        let inner = self.inner();
        let stores: Vec<(OsdId, Arc<dyn ObjectStore>)> = acting
            .iter()
            .filter_map(|&o| inner.osd(o).map(|x| (o, x.store.clone())))
            .collect();
        let mut keys = std::collections::BTreeSet::new();
        for (o, s) in &stores {
            match s.list_objects(id) {
                Ok(k) => keys.extend(k),
                Err(StoreError::NoCollection(_)) => {}
                Err(e) => return Err(OsdError::Store { osd: *o, source: e }),
            }
        }
        let pgid = format!("{}.{:x}", id.pool, id.pg);
        let mut unrepaired = BTreeMap::new();
        for key in keys {
            report.objects_scrubbed += 1;
            let copies: Vec<(OsdId, Result<Option<Copy>, String>)> = stores
                .iter()
                .map(|(o, s)| {
                    let c = if s.exists(&key) {
                        Copy::read(s.as_ref(), &key, deep)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    } else {
                        Ok(None)
                    };
                    (*o, c)
                })
                .collect();
            let Some(auth) = authoritative(&copies) else {
                continue;
            };
            let mut bad = Vec::new();
            let mut errors = Vec::new();
            for (o, c) in &copies {
                let why = match (c, &auth) {
                    (Err(e), _) => vec![format!("read error: {e}")],
                    (Ok(None), None) => vec![],
                    (Ok(None), Some(_)) => vec!["missing".into()],
                    (Ok(Some(_)), None) => vec!["present but should not be".into()],
                    (Ok(Some(c)), Some(a)) => {
                        let mut d = c.differences(a);
                        if d.is_empty() && deep && c.stored_digest().is_some() && !c.digest_ok() {
                            d.push("data does not match its stored digest".into());
                        }
                        d
                    }
                };
                if !why.is_empty() {
                    bad.push(*o);
                    errors.extend(why.into_iter().map(|w| format!("osd.{o}: {w}")));
                }
            }
            if bad.is_empty() {
                continue;
            }
            // With no copy matching the stored digest there is nothing
            // trustworthy to repair from.
            let hopeless = deep
                && auth
                    .as_ref()
                    .is_some_and(|a| a.stored_digest().is_some() && !a.digest_ok());
            let mut repaired = false;
            if repair && !hopeless {
                let source = copies
                    .iter()
                    .find(|(_, c)| matches!((c, &auth), (Ok(x), a) if x == a));
                if let Some((src, _)) = source {
                    let src_store = &stores.iter().find(|(o, _)| o == src).expect("listed").1;
                    for o in &bad {
                        let dst = &stores.iter().find(|(x, _)| x == o).expect("listed").1;
                        let mut t = Transaction::new();
                        t.push(TxOp::Remove(key.clone()));
                        if auth.is_some() {
                            copy_object(src_store.as_ref(), &key, &mut t).map_err(|e| {
                                OsdError::Store {
                                    osd: *src,
                                    source: e,
                                }
                            })?;
                        }
                        queue_and_wait(dst.as_ref(), t)
                            .map_err(|e| OsdError::Store { osd: *o, source: e })?;
                        log::warn!(
                            "scrub: repaired {} of pg {pgid} on osd.{o} from osd.{src}",
                            key.name
                        );
                    }
                    repaired = true;
                }
            }
            if !repaired {
                unrepaired.insert((key.name.clone(), key.snap), bad.iter().copied().collect());
            }
            report.inconsistencies.push(Inconsistency {
                pgid: pgid.clone(),
                object: key.name.clone(),
                snap: key.snap,
                osds: bad,
                errors,
                repaired,
            });
        }
        let mut damaged = inner.shared.damaged.lock();
        if unrepaired.is_empty() {
            damaged.remove(&id);
        } else if deep {
            damaged.insert(id, unrepaired);
        } else {
            // A shallow scrub cannot vouch for data a read found bad.
            damaged.entry(id).or_default().extend(unrepaired);
        }
        Ok(())
    }
}

/// The copy the others should equal (see the module doc); `None` inside
/// means the object should not exist. `None` outside: no copy was readable.
fn authoritative(copies: &[(OsdId, Result<Option<Copy>, String>)]) -> Option<Option<Copy>> {
    let readable: Vec<&Option<Copy>> = copies.iter().filter_map(|(_, c)| c.as_ref().ok()).collect();
    let trusted: Vec<&Option<Copy>> = readable
        .iter()
        .copied()
        .filter(|c| c.as_ref().is_some_and(Copy::digest_ok))
        .collect();
    let pool = if trusted.is_empty() {
        readable
    } else {
        trusted
    };
    // Most common first; among equals the earliest (nearest the primary).
    let mut best: Option<(&Option<Copy>, usize)> = None;
    for c in &pool {
        let n = pool.iter().filter(|x| x == &c).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((c, n));
        }
    }
    best.map(|(c, _)| c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::osd::pg_log::Eversion;

    fn copy(data: &[u8], stored: Option<&[u8]>) -> Option<Copy> {
        let oi = ObjectInfo {
            whiteout: false,
            version: Eversion::default(),
            data_digest: stored.map(crc32c::crc32c),
        };
        Some(Copy {
            size: data.len() as u64,
            attrs: [(OI_ATTR.to_string(), oi.encode())].into(),
            omap: BTreeMap::new(),
            digest: Some(crc32c::crc32c(data)),
        })
    }

    #[test]
    fn test_scrub_authority_is_the_copy_matching_the_stored_digest_even_outvoted() {
        let good = copy(b"good", Some(b"good"));
        let bad = copy(b"gxod", Some(b"good"));

        let auth = authoritative(&[(0, Ok(bad.clone())), (1, Ok(bad)), (2, Ok(good.clone()))]);

        assert_eq!(auth, Some(good));
    }

    #[test]
    fn test_scrub_authority_without_digest_is_the_majority() {
        let a = copy(b"aaaa", None);
        let b = copy(b"abaa", None);

        let auth = authoritative(&[(0, Ok(b)), (1, Ok(a.clone())), (2, Ok(a.clone()))]);

        assert_eq!(auth, Some(a));
    }

    #[test]
    fn test_scrub_authority_majority_absent_means_the_object_should_not_be() {
        let a = copy(b"aaaa", None);

        let auth = authoritative(&[(0, Ok(None)), (1, Ok(a)), (2, Ok(None))]);

        assert_eq!(auth, Some(None));
    }
}
