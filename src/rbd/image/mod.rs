//! Image lifecycle (create, open, remove, rename, clone), the header codec,
//! the pool directory, and [`ImageCtx`]: the shared state of one open image.

pub mod clone;
pub mod codec;
pub mod create;
pub mod directory;
pub mod header;
pub mod names;
pub mod open;
pub mod remove;
pub mod rename;
pub(crate) mod stamps;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::rados::{IoCtx, SNAP_HEAD, SnapContext, SnapId, WriteOp};
use crate::rbd::error::{RbdError, Result};
use crate::rbd::io::read_parent::ParentView;
use crate::rbd::io::striper;
use crate::rbd::object_map::{EXISTS, NONEXISTENT, ObjectMap};
use crate::rbd::spec::ImageSpec;
use crate::rbd::types::{DuEntry, DuInfo, Features, ImageInfo, ParentInfo, SnapInfo};
use crate::rbd::{Rbd, exclusive_lock::ExclusiveLock};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, RwLock};

pub use header::{Header, ParentLink, SnapRecord};

/// Per-object lock stripes: anything that may change an object's map state or
/// copy it up (first write, discard, copyup, flatten, rollback, trim) holds the
/// stripe `objno % OBJECT_LOCK_STRIPES` exclusively; plain writes to an object
/// that already exists and needs nothing of that share it, so they overlap and
/// the OSD orders them.
const OBJECT_LOCK_STRIPES: usize = 128;

/// A parent link's (pool id, image id, snap id).
type LinkKey = (u64, String, SnapId);

/// Parent chains by link.
type ChainCache = HashMap<LinkKey, Arc<ParentView>>;

/// What opening an image read from the store.
pub(crate) struct Loaded {
    pub ioctx: IoCtx,
    pub pool: String,
    pub id: String,
    pub name: String,
    pub header: Header,
    pub head_map: ObjectMap,
    pub snap_maps: HashMap<SnapId, ObjectMap>,
}

/// The state of one open image, shared by every handle in the process.
///
/// Lock order: `io_gate` (async) -> object stripe (async) -> the sync locks
/// (`header`, `head_map`, `snap_maps`, `chains`), which are never held across
/// an await.
pub struct ImageCtx {
    pub(crate) rbd: Arc<Rbd>,
    pub(crate) ioctx: IoCtx,
    pub(crate) pool: String,
    id: String,
    pub(crate) name: Mutex<String>,
    header: RwLock<Arc<Header>>,
    /// The head's object map (authoritative copy in memory, persisted per
    /// change before/after the data write, see `object_map`).
    pub(crate) head_map: Mutex<ObjectMap>,
    /// Object maps of the snapshots, by snapshot id.
    pub(crate) snap_maps: Mutex<HashMap<SnapId, ObjectMap>>,
    /// Parent chains, by the parent link's (pool, image, snap), built lazily
    /// and dropped when the process's layout epoch moves.
    chains: Mutex<(u64, ChainCache)>,
    /// (image name, snapshot name) of every parent link seen, for `info`.
    parent_names: Mutex<HashMap<LinkKey, (String, String)>>,
    /// Data I/O holds it shared; operations that change the header in a way
    /// I/O must not straddle (snapshot, resize, rollback, detaching the
    /// parent) hold it exclusively. This is librbd's "block writes".
    pub(crate) io_gate: Arc<tokio::sync::RwLock<()>>,
    object_locks: Vec<Arc<tokio::sync::RwLock<()>>>,
    pub(crate) lock: ExclusiveLock,
    /// Objects with a recorded copyup intent (see `io::copyup::settle`).
    pending_copyups: Mutex<std::collections::HashSet<u64>>,
    /// Bumped when a multi-write copyup starts and when it ends, so a read
    /// that ran meanwhile knows to read again under the object lock.
    copyup_generation: AtomicU64,
    /// Serialises growths by writes past the end (`Image::grow_to`).
    pub(crate) grow: tokio::sync::Mutex<()>,
    /// When the head was last read and written (see `stamps`).
    pub(crate) stamps: stamps::Stamps,
}

/// Prefix of the copyup-intent keys in the header object's omap.
const COPYUP_INTENT_PREFIX: &str = "copyup.";

impl ImageCtx {
    pub(crate) fn new(rbd: Arc<Rbd>, l: Loaded) -> Self {
        let Loaded {
            ioctx,
            pool,
            id,
            name,
            header,
            head_map,
            snap_maps,
        } = l;
        let epoch = rbd.layout_epoch();
        let client = rbd.client_id();
        let stamps = stamps::Stamps::new(header.create_timestamp);
        Self {
            rbd,
            ioctx,
            pool,
            id,
            name: Mutex::new(name),
            header: RwLock::new(Arc::new(header)),
            head_map: Mutex::new(head_map),
            snap_maps: Mutex::new(snap_maps),
            chains: Mutex::new((epoch, HashMap::new())),
            parent_names: Mutex::new(HashMap::new()),
            io_gate: Arc::new(tokio::sync::RwLock::new(())),
            object_locks: (0..OBJECT_LOCK_STRIPES)
                .map(|_| Arc::new(tokio::sync::RwLock::new(())))
                .collect(),
            lock: ExclusiveLock::new(client),
            pending_copyups: Mutex::new(std::collections::HashSet::new()),
            copyup_generation: AtomicU64::new(0),
            grow: tokio::sync::Mutex::new(()),
            stamps,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> ImageSpec {
        ImageSpec::new(&self.pool, &self.name.lock())
    }

    /// The current header (a cheap snapshot of it).
    pub fn header(&self) -> Arc<Header> {
        self.header.read().clone()
    }

    pub fn object_size(&self) -> u64 {
        self.header().object_size()
    }

    /// The lock stripe of object `objno`.
    pub(crate) fn object_lock(&self, objno: u64) -> &Arc<tokio::sync::RwLock<()>> {
        &self.object_locks[(objno % OBJECT_LOCK_STRIPES as u64) as usize]
    }

    /// Persist `hdr` (atomic replace of the header object), then publish it.
    pub(crate) async fn save_header(&self, hdr: Header) -> Result<()> {
        self.save_header_with(hdr, Vec::new()).await
    }

    /// [`ImageCtx::save_header`] for an operation that frees space (a
    /// snapshot's removal, a shrink): it may use the stores' reserve.
    pub(crate) async fn save_header_freeing(&self, hdr: Header) -> Result<()> {
        self.save_header_with(hdr, vec![WriteOp::FullTry]).await
    }

    async fn save_header_with(&self, hdr: Header, mut ops: Vec<WriteOp>) -> Result<()> {
        let oid = names::header_oid(&self.id);
        ops.push(WriteOp::WriteFull {
            data: Bytes::from(hdr.encode()),
        });
        self.ioctx
            .operate_write(&oid, &SnapContext::empty(), ops)
            .await
            .map_err(|e| RbdError::rados(&oid, e))?;
        *self.header.write() = Arc::new(hdr);
        Ok(())
    }

    pub(crate) fn snap_id_by_name(&self, name: &str) -> Result<SnapId> {
        self.header()
            .snap_by_name(name)
            .map(|s| s.id)
            .ok_or_else(|| RbdError::SnapNotFound(self.spec().at_snap(name).to_string()))
    }

    /// Size of the head or of snapshot `snap` (0 if it vanished).
    pub fn size_at(&self, snap: SnapId) -> u64 {
        let h = self.header();
        if snap == SNAP_HEAD {
            h.size
        } else {
            h.snap_by_id(snap).map_or(0, |s| s.size)
        }
    }

    /// The parent link of the head or of snapshot `snap`.
    pub(crate) fn parent_link(&self, snap: SnapId) -> Option<ParentLink> {
        let h = self.header();
        if snap == SNAP_HEAD {
            h.parent.clone()
        } else {
            h.snap_by_id(snap).and_then(|s| s.parent.clone())
        }
    }

    /// True when object `objno` may exist at the head or snapshot `snap`,
    /// from the object maps, without I/O.
    pub(crate) fn map_exists(&self, snap: SnapId, objno: u64) -> bool {
        if snap == SNAP_HEAD {
            self.head_map.lock().exists(objno)
        } else {
            self.snap_maps
                .lock()
                .get(&snap)
                .is_none_or(|m| m.exists(objno))
        }
    }

    /// True when object `objno` may exist at the head or in any snapshot.
    /// The head map's state of `objno` (`NONEXISTENT` past the end).
    pub(crate) fn head_state(&self, objno: u64) -> u8 {
        let m = self.head_map.lock();
        if objno < m.len() {
            m.state(objno)
        } else {
            NONEXISTENT
        }
    }

    pub(crate) fn map_exists_anywhere(&self, objno: u64) -> bool {
        self.head_map.lock().exists(objno)
            || self.snap_maps.lock().values().any(|m| m.exists(objno))
    }

    /// Mark `objno` in the head map (persisted, then in memory). Any state
    /// but `EXISTS` is the bookkeeping of data going away: it may use the
    /// stores' reserve (see [`ObjectMap::save_state`]).
    pub(crate) async fn set_head_state(&self, objno: u64, state: u8) -> Result<()> {
        self.set_head_state_for(objno, state, state != EXISTS).await
    }

    /// [`ImageCtx::set_head_state`], saying whether the change is the
    /// bookkeeping of data going away (an `EXISTS` before a discard is).
    pub(crate) async fn set_head_state_for(
        &self,
        objno: u64,
        state: u8,
        freeing: bool,
    ) -> Result<()> {
        {
            let m = self.head_map.lock();
            if objno >= m.len() || m.state(objno) == state {
                return Ok(());
            }
        }
        let oid = names::object_map_oid(&self.id, SNAP_HEAD);
        ObjectMap::save_state(&self.ioctx, &oid, objno, state, freeing).await?;
        self.head_map.lock().set(objno, state);
        Ok(())
    }

    /// Mark `objno` in the map of snapshot `snap` (persisted, then in memory).
    pub(crate) async fn set_snap_state(&self, snap: SnapId, objno: u64, state: u8) -> Result<()> {
        if self
            .snap_maps
            .lock()
            .get(&snap)
            .is_none_or(|m| objno >= m.len() || m.exists(objno) == (state != 0))
        {
            return Ok(());
        }
        let oid = names::object_map_oid(&self.id, snap);
        ObjectMap::save_state(&self.ioctx, &oid, objno, state, state != EXISTS).await?;
        if let Some(m) = self.snap_maps.lock().get_mut(&snap) {
            m.set(objno, state);
        }
        Ok(())
    }

    /// The parent chain behind `link` (cached until the layout epoch moves).
    pub(crate) async fn parent_view(&self, link: &ParentLink) -> Result<Arc<ParentView>> {
        if let Some(v) = self.cached_parent_view(link) {
            return Ok(v);
        }
        let key = (link.pool_id, link.image_id.clone(), link.snap_id);
        loop {
            let epoch = self.rbd.layout_epoch();
            let view = ParentView::load(&self.rbd, link, 0).await?;
            // Boxed: settling an ancestor loads chains again (its own, and
            // its copyup's plan), through here.
            Box::pin(self.settle_chain_copyups(&view)).await?;
            self.parent_names.lock().insert(
                key.clone(),
                (view.image_name.clone(), view.snap_name.clone()),
            );
            // A chain that changed while it loaded (a flatten up the chain)
            // may be loaded from before the change: load it again.
            let mut c = self.chains.lock();
            if self.rbd.layout_epoch() != epoch {
                continue;
            }
            if c.0 != epoch {
                *c = (epoch, HashMap::new());
            }
            c.1.insert(key, view.clone());
            return Ok(view);
        }
    }

    /// Finish the copyups a crash or an I/O error left in the ancestors of
    /// `view`'s chain before the chain is used: between the writes of a
    /// copyup, an ancestor's later snapshots read an earlier one's content.
    /// One omap read per ancestor; one with intents is settled through its
    /// context (its object locks, under its I/O gate), opened if need be.
    async fn settle_chain_copyups(&self, view: &ParentView) -> Result<()> {
        let mut cur = Some(view);
        while let Some(v) = cur {
            cur = v.up.as_ref().map(|(up, _)| &**up);
            let oid = names::header_oid(&v.image_id);
            let pending = v
                .ioctx
                .omap_get_all(&oid)
                .await
                .map_err(|e| RbdError::rados(&oid, e))?
                .keys()
                .any(|k| k.starts_with(COPYUP_INTENT_PREFIX));
            if !pending {
                continue;
            }
            let key = (v.ioctx.pool_id(), v.image_id.clone());
            let open = self
                .rbd
                .registry()
                .lock()
                .get(&key)
                .and_then(|w| w.upgrade());
            let ctx = match open {
                Some(ctx) => ctx,
                None => {
                    let pool = directory::pool_name(&self.rbd, key.0)
                        .ok_or_else(|| RbdError::PoolNotFound(key.0.to_string()))?;
                    // By id: the name the chain was loaded with may since
                    // have gone to another image.
                    open::open_ctx_by_id(&self.rbd, &pool, &v.image_id).await?
                }
            };
            let _gate = ctx.io_gate.read().await;
            ctx.settle_pending_copyups().await?;
        }
        Ok(())
    }

    /// The parent chain behind `link` if it is cached (no I/O).
    pub(crate) fn cached_parent_view(&self, link: &ParentLink) -> Option<Arc<ParentView>> {
        let key = (link.pool_id, link.image_id.clone(), link.snap_id);
        let epoch = self.rbd.layout_epoch();
        let mut c = self.chains.lock();
        if c.0 != epoch {
            *c = (epoch, HashMap::new());
        }
        c.1.get(&key).cloned()
    }

    pub(crate) fn copyup_generation(&self) -> u64 {
        self.copyup_generation.load(Ordering::SeqCst)
    }

    pub(crate) fn copyup_pending(&self, objno: u64) -> bool {
        self.pending_copyups.lock().contains(&objno)
    }

    /// Record (durably) that a multi-write copyup of `objno` is under way.
    pub(crate) async fn copyup_intent_set(&self, objno: u64) -> Result<()> {
        let oid = names::header_oid(&self.id);
        let mut entries = std::collections::BTreeMap::new();
        entries.insert(format!("{COPYUP_INTENT_PREFIX}{objno:016x}"), Bytes::new());
        self.ioctx
            .operate_write(
                &oid,
                &SnapContext::empty(),
                vec![WriteOp::AssertExists, WriteOp::OmapSet { entries }],
            )
            .await
            .map_err(|e| RbdError::rados(&oid, e))?;
        self.pending_copyups.lock().insert(objno);
        self.copyup_generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The copyup of `objno` is complete.
    pub(crate) async fn copyup_intent_clear(&self, objno: u64) -> Result<()> {
        let oid = names::header_oid(&self.id);
        self.ioctx
            .operate_write(
                &oid,
                &SnapContext::empty(),
                vec![WriteOp::OmapRmKeys {
                    keys: vec![format!("{COPYUP_INTENT_PREFIX}{objno:016x}")],
                }],
            )
            .await
            .map_err(|e| RbdError::rados(&oid, e))?;
        self.pending_copyups.lock().remove(&objno);
        self.copyup_generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Load the copyup intents a crash left behind and finish those
    /// copyups; load the access and modification stamps.
    pub(crate) async fn settle_copyups(&self) -> Result<()> {
        let oid = names::header_oid(&self.id);
        let keys = self
            .ioctx
            .omap_get_all(&oid)
            .await
            .map_err(|e| RbdError::rados(&oid, e))?;
        self.stamps.load(&keys);
        let objs: Vec<u64> = keys
            .keys()
            .filter_map(|k| k.strip_prefix(COPYUP_INTENT_PREFIX))
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .collect();
        self.pending_copyups.lock().extend(objs);
        self.settle_pending_copyups().await
    }

    /// Finish every copyup still pending here (one an I/O error stopped):
    /// its plan follows the snapshots, so it must land before they change.
    pub(crate) async fn settle_pending_copyups(&self) -> Result<()> {
        let objs: Vec<u64> = self.pending_copyups.lock().iter().copied().collect();
        for objno in objs {
            let _obj = self.object_lock(objno).write().await;
            crate::rbd::io::copyup::settle(self, objno).await?;
        }
        Ok(())
    }

    /// Load the parent chains of the head and the snapshots (so `info` can
    /// name the parents). A broken chain is logged, not fatal: the image can
    /// still be inspected and removed.
    pub(crate) async fn preload_parents(&self) {
        let h = self.header();
        let mut links: Vec<ParentLink> = h.parent.iter().cloned().collect();
        links.extend(h.snaps.iter().filter_map(|s| s.parent.clone()));
        for link in &links {
            if let Err(e) = self.parent_view(link).await {
                log::warn!("image {}: cannot load its parent chain: {e}", self.spec());
            }
        }
    }

    /// Drop cached parent chains (after this image's own links changed).
    pub(crate) fn invalidate_chains(&self) {
        self.chains.lock().1.clear();
    }

    pub async fn flush(&self) -> Result<()> {
        self.ioctx
            .flush()
            .await
            .map_err(|e| RbdError::rados(names::header_oid(&self.id), e))
    }

    /// [`ImageCtx::flush`] answered on the thread that completes it, which
    /// may be the caller's (see `RadosBackend::flush_then`).
    pub fn flush_then(&self, done: Box<dyn FnOnce(Result<()>) + Send>) {
        let id = self.id.clone();
        self.ioctx.flush_then(Box::new(move |r| {
            done(r.map_err(|e| RbdError::rados(names::header_oid(&id), e)))
        }))
    }

    pub fn snap_list(&self) -> Vec<SnapInfo> {
        self.header()
            .snaps
            .iter()
            .map(|s| SnapInfo {
                id: s.id,
                name: s.name.clone(),
                size: s.size,
                protected: s.protected,
                timestamp: s.timestamp,
            })
            .collect()
    }

    /// `ParentInfo` for a link, with names resolved (ids when a name is gone).
    pub(crate) fn describe_parent(&self, link: &ParentLink) -> ParentInfo {
        let pool = self
            .rbd
            .rados()
            .pool_list()
            .ok()
            .and_then(|ps| ps.into_iter().find(|p| p.id == link.pool_id))
            .map_or_else(|| link.pool_id.to_string(), |p| p.name);
        let (image, snap) = self
            .parent_names
            .lock()
            .get(&(link.pool_id, link.image_id.clone(), link.snap_id))
            .cloned()
            .unwrap_or_else(|| (link.image_id.clone(), link.snap_id.to_string()));
        ParentInfo {
            pool,
            image,
            image_id: link.image_id.clone(),
            snap,
            snap_id: link.snap_id,
            overlap: link.overlap,
        }
    }

    pub fn parent_info(&self, snap: SnapId) -> Option<ParentInfo> {
        self.parent_link(snap).map(|l| self.describe_parent(&l))
    }

    pub fn info(&self, snap: SnapId) -> Result<ImageInfo> {
        let h = self.header();
        let rec = if snap == SNAP_HEAD {
            None
        } else {
            Some(
                h.snap_by_id(snap)
                    .ok_or_else(|| RbdError::SnapNotFound(format!("{}@{snap}", self.spec())))?,
            )
        };
        let size = rec.map_or(h.size, |s| s.size);
        Ok(ImageInfo {
            pool: self.pool.clone(),
            name: self.name.lock().clone(),
            id: self.id.clone(),
            snap: rec.map(|s| s.name.clone()),
            size,
            objects: striper::object_count(size, h.order),
            order: h.order,
            object_size: h.object_size(),
            snapshot_count: h.snaps.len() as u64,
            block_name_prefix: names::block_name_prefix(&self.id),
            format: 2,
            features: Features(h.features)
                .names()
                .into_iter()
                .map(str::to_string)
                .collect(),
            create_timestamp: h.create_timestamp,
            access_timestamp: self.stamps.get(stamps::Stamp::Access),
            modify_timestamp: self.stamps.get(stamps::Stamp::Modify),
            parent: self.parent_info(snap),
            protected: rec.map(|s| s.protected),
        })
    }

    pub fn du(&self) -> DuInfo {
        let h = self.header();
        let osz = h.object_size();
        let maps = self.snap_maps.lock();
        let mut entries: Vec<DuEntry> = h
            .snaps
            .iter()
            .map(|s| DuEntry {
                snap: Some(s.name.clone()),
                snap_id: Some(s.id),
                provisioned_size: s.size,
                used_size: maps.get(&s.id).map_or(0, |m| m.count_dirty()) * osz,
            })
            .collect();
        entries.push(DuEntry {
            snap: None,
            snap_id: None,
            provisioned_size: h.size,
            used_size: self.head_map.lock().count_dirty() * osz,
        });
        DuInfo { entries }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A process-unique client id (time and process id mixed, never 0).
pub(crate) fn new_client_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// A fresh image id: 12 hex digits, like librbd's.
pub(crate) fn new_image_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(new_client_id());
    h.write_u64(SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}
