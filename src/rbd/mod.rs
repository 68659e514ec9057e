//! librbd: block images on the object layer.
//!
//! An image is a header object (size, order, features, snapshot table, parent
//! link), an object map and data objects `rbd_data.<id>.<objno:016x>` that exist
//! only where something was written (thin). The layout follows librbd:
//! - [`image`]: create, open/refresh, remove, rename, clone; the header codec and
//!   the pool directory (`rbd_directory`, `rbd_id.<name>`, `rbd_children`);
//! - [`operation`]: one file per maintenance operation (flatten, resize, snapshot
//!   create/remove/protect/rollback), each an explicit state machine;
//! - [`io`]: the data path: striper, reads through the parent chain, copyup;
//! - [`object_map`], [`exclusive_lock`], [`throttle`].
//!
//! Objects of one pool (all state lives in them; nothing is kept elsewhere):
//! ```text
//! rbd_directory                 omap name_<name> -> id, id_<id> -> name
//! rbd_id.<name>                 data: the image id (12 hex digits)
//! rbd_header.<id>               data: versioned, checksummed header record
//!                               (size, order, features, snap_seq, snapshots
//!                               with size/parent overlap/protected, parent)
//! rbd_object_map.<id>[.<snap:016x>]  data: u8 version, u64 count, 1 byte/object
//! rbd_data.<id>.<objno:016x>    image data, present only where written
//! rbd_children                  omap <parent id>.<snap:016x>.<child pool:016x>.<child id>
//!                               (in the parent's pool)
//! ```
//! Snapshots are self-managed snapshots of the pool: head writes carry the
//! image's SnapContext, snapshot reads are object reads at the snapshot id.
//!
//! Everything users see goes through [`Rbd`] (one per process) and the
//! [`Image`] handles it hands out. The registry in [`Rbd`] keeps one image
//! context per open image, so every user in the process (FUSE, admin socket
//! requests) shares its caches, its per-object locks and its exclusive lock.

pub mod error;
pub mod exclusive_lock;
pub mod image;
pub mod io;
pub mod object_map;
pub mod operation;
pub mod spec;
pub mod throttle;
pub mod types;

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::rados::{Rados, SNAP_HEAD, SnapId};
use std::sync::Weak;

use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

pub use error::{ERESTART, RbdError, Result};
pub use exclusive_lock::{ManagementOp, RequestId, invoke_async_request};
pub use spec::{DEFAULT_POOL, ImageSpec};
pub use types::{
    CancelToken, CreateOptions, DuEntry, DuInfo, Features, ImageInfo, NoProgress, ParentInfo,
    ProgressSink, RbdConfig, SnapInfo,
};

use image::ImageCtx;

/// The image layer of one process: configuration plus the registry of open
/// images. Cheap to share (`Arc<Rbd>`).
pub struct Rbd {
    rados: Rados,
    config: RbdConfig,
    /// Open image contexts by (pool id, image id). Weak, so an image closes
    /// when its last handle drops.
    open: Mutex<HashMap<(u64, String), Weak<ImageCtx>>>,
    /// Bumped by every operation that can change a parent chain (flatten, snap
    /// remove, ...), so open images rebuild their cached chains.
    layout_epoch: AtomicU64,
    /// This process's client id (for lock ownership and request ids).
    client_id: u64,
    /// (pool, name) being created, cloned or renamed to in this process.
    naming: Mutex<HashSet<(String, String)>>,
    /// Held by a clone from its check that the snapshot is protected until
    /// the child is listed, and by an unprotect from its count of children
    /// until it is saved: an unprotect never misses a clone being made.
    pub(crate) clone_gate: tokio::sync::Mutex<()>,
    /// Images being opened, by (pool id, image id): one open at a time per
    /// image, so that two never both settle its copyups (see `open_ctx`).
    opening: Mutex<HashMap<ImageKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// An image in this process: (pool id, image id).
pub(crate) type ImageKey = (u64, String);

/// Holds a name while an image is created under it (see `Rbd::name_guard`).
pub(crate) struct NameGuard<'a> {
    rbd: &'a Rbd,
    key: (String, String),
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        self.rbd.naming.lock().remove(&self.key);
    }
}

impl Rbd {
    /// The image layer on `rados` with `config`.
    pub fn new(rados: Rados, config: RbdConfig) -> Arc<Rbd> {
        Arc::new(Rbd {
            rados,
            config,
            open: Mutex::new(HashMap::new()),
            layout_epoch: AtomicU64::new(0),
            client_id: image::new_client_id(),
            clone_gate: tokio::sync::Mutex::new(()),
            opening: Mutex::new(HashMap::new()),
            naming: Mutex::new(HashSet::new()),
        })
    }

    pub fn rados(&self) -> &Rados {
        &self.rados
    }

    pub fn config(&self) -> &RbdConfig {
        &self.config
    }

    pub(crate) fn layout_epoch(&self) -> u64 {
        self.layout_epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn bump_layout_epoch(&self) {
        self.layout_epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Create an empty (thin) image of `size` bytes.
    pub async fn create(
        &self,
        pool: &str,
        name: &str,
        size: u64,
        opts: &CreateOptions,
    ) -> Result<()> {
        image::create::create(self, pool, name, size, opts).await
    }

    /// Names of the images in `pool`, sorted.
    pub async fn list(&self, pool: &str) -> Result<Vec<String>> {
        image::directory::list(self, pool).await
    }

    /// Open `pool/name` (read-write), or one of its snapshots (read-only view).
    /// Every open of the same image in this process shares one context.
    pub async fn open(
        self: &Arc<Self>,
        pool: &str,
        name: &str,
        snap: Option<&str>,
    ) -> Result<Arc<Image>> {
        let ctx = image::open::open_ctx(self, pool, name).await?;
        let snap = match snap {
            None => None,
            Some(s) => Some((ctx.snap_id_by_name(s)?, s.to_string())),
        };
        Ok(Arc::new(Image {
            ctx,
            snap,
            read_only: false,
        }))
    }

    /// Open the head of `pool/name` read-only (like `rbd export`): writes and
    /// management operations fail with EROFS, and reads never copy up.
    pub async fn open_read_only(self: &Arc<Self>, pool: &str, name: &str) -> Result<Arc<Image>> {
        let ctx = image::open::open_ctx(self, pool, name).await?;
        Ok(Arc::new(Image {
            ctx,
            snap: None,
            read_only: true,
        }))
    }

    /// Whether `pool/name` is open in this process (this process then owns its
    /// exclusive lock).
    pub fn is_open(&self, pool: &str, name: &str) -> bool {
        self.open_images()
            .iter()
            .any(|s| s.pool == pool && s.image == name)
    }

    /// The images open in this process, sorted.
    pub fn open_images(&self) -> Vec<ImageSpec> {
        let mut v: Vec<ImageSpec> = self
            .open
            .lock()
            .values()
            .filter_map(|w| w.upgrade())
            .map(|c| c.spec())
            .collect();
        v.sort();
        v
    }

    /// Open by spec (`snap` set = read-only view).
    pub async fn open_spec(self: &Arc<Self>, spec: &ImageSpec) -> Result<Arc<Image>> {
        self.open(&spec.pool, &spec.image, spec.snap.as_deref())
            .await
    }

    /// Remove an image and all its objects. Refused while it has snapshots or
    /// is open in this process.
    pub async fn remove(
        self: &Arc<Self>,
        pool: &str,
        name: &str,
        progress: &dyn ProgressSink,
    ) -> Result<()> {
        image::remove::remove(self, pool, name, progress).await
    }

    /// Rename an image inside its pool.
    pub async fn rename(&self, pool: &str, from: &str, to: &str) -> Result<()> {
        image::rename::rename(self, pool, from, to).await
    }

    /// Clone the protected snapshot `parent` (pool/image@snap) as the new image
    /// `child` (pool/image), in O(1).
    pub async fn clone_image(
        self: &Arc<Self>,
        parent: &ImageSpec,
        child: &ImageSpec,
        opts: &CreateOptions,
    ) -> Result<()> {
        image::clone::clone_image(self, parent, child, opts).await
    }

    /// The clones of snapshot `parent` (pool/image@snap), as specs, sorted.
    pub async fn children(&self, parent: &ImageSpec) -> Result<Vec<ImageSpec>> {
        image::directory::children(self, parent).await
    }

    /// Run a management request forwarded to this process for image `spec`
    /// (its head): the admin socket's entry point. See [`Image::execute`].
    pub async fn execute(
        self: &Arc<Self>,
        spec: &ImageSpec,
        id: RequestId,
        op: &ManagementOp,
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<()> {
        if spec.snap.is_some() {
            return Err(RbdError::ReadOnly(spec.to_string()));
        }
        let img = self.open(&spec.pool, &spec.image, None).await?;
        img.execute(id, op, progress, cancel).await
    }

    /// Reserve `pool/name` in this process while an image is created under it,
    /// so that a half-made image is never mistaken for a crash leftover.
    pub(crate) fn name_guard(&self, pool: &str, name: &str) -> Result<NameGuard<'_>> {
        let key = (pool.to_string(), name.to_string());
        if !self.naming.lock().insert(key.clone()) {
            return Err(RbdError::ImageExists(format!("{pool}/{name}")));
        }
        Ok(NameGuard { rbd: self, key })
    }

    pub(crate) fn registry(&self) -> &Mutex<HashMap<(u64, String), Weak<ImageCtx>>> {
        &self.open
    }

    /// The lock that lets one open of image `key` run at a time.
    pub(crate) fn open_slot(&self, key: &ImageKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut slots = self.opening.lock();
        // Slots no open holds any more (only the map has them) go.
        slots.retain(|_, s| Arc::strong_count(s) > 1);
        slots.entry(key.clone()).or_default().clone()
    }
}

/// An open image: the head (read-write) or a snapshot (read-only).
pub struct Image {
    ctx: Arc<ImageCtx>,
    /// The snapshot this handle views, `None` for the head.
    snap: Option<(SnapId, String)>,
    /// A read-only open of the head.
    read_only: bool,
}

impl Image {
    fn snap_id(&self) -> SnapId {
        self.snap.as_ref().map_or(SNAP_HEAD, |s| s.0)
    }

    fn check_writable(&self) -> Result<()> {
        if self.is_read_only() {
            return Err(RbdError::ReadOnly(self.spec().to_string()));
        }
        Ok(())
    }

    /// `pool/image[@snap]` of this handle.
    pub fn spec(&self) -> ImageSpec {
        let head = self.ctx.spec();
        match &self.snap {
            Some((_, s)) => head.at_snap(s),
            None => head,
        }
    }

    /// The image id (`rbd_data.<id>` prefix).
    pub fn id(&self) -> &str {
        self.ctx.id()
    }

    /// What `rbd info` shows.
    pub async fn info(&self) -> Result<ImageInfo> {
        self.ctx.info(self.snap_id())
    }

    /// (created, last read, last written), in seconds since the epoch: the
    /// head's stamps (each up to `atime/mtime_update_interval` behind), or
    /// for a snapshot view its creation time, three times.
    pub fn timestamps(&self) -> (u64, u64, u64) {
        use image::stamps::Stamp;
        let h = self.ctx.header();
        match self.snap.as_ref().and_then(|(id, _)| h.snap_by_id(*id)) {
            Some(s) => (s.timestamp, s.timestamp, s.timestamp),
            None => (
                h.create_timestamp,
                self.ctx.stamps.get(Stamp::Access),
                self.ctx.stamps.get(Stamp::Modify),
            ),
        }
    }

    /// Size in bytes (of the snapshot, for a snapshot view).
    pub fn size(&self) -> u64 {
        self.ctx.size_at(self.snap_id())
    }

    /// Object size in bytes.
    pub fn object_size(&self) -> u64 {
        self.ctx.object_size()
    }

    /// True for snapshot views and read-only opens.
    pub fn is_read_only(&self) -> bool {
        self.snap.is_some() || self.read_only
    }

    /// Read `[off, off + len)`, cut short at the end of the image. Holes and
    /// unwritten ranges read as zeros.
    pub async fn read(&self, off: u64, len: u64) -> Result<Bytes> {
        io::read(&self.ctx, self.snap_id(), off, len, !self.is_read_only()).await
    }

    /// Write `data` at `off`. Past the end of the image is an error
    /// (`OutOfRange`, EINVAL); on a snapshot view EROFS.
    pub async fn write(&self, off: u64, data: Bytes) -> Result<()> {
        self.check_writable()?;
        io::write(&self.ctx, off, data).await
    }

    /// [`Image::read`] without a task, when it can be served that way:
    /// `then` gets `Some(result)` on the thread that completes it, or `None`
    /// (possibly at once) when the caller must call `read` instead. See
    /// `io::now`.
    pub fn read_now(&self, off: u64, len: u64, then: io::now::Then<Bytes>) {
        io::now::read(
            &self.ctx,
            self.snap_id(),
            off,
            len,
            !self.is_read_only(),
            then,
        )
    }

    /// [`Image::write`] as [`Image::read_now`] is to `read`.
    pub fn write_now(&self, off: u64, data: Bytes, then: io::now::Then<()>) {
        if self.is_read_only() {
            return then(None);
        }
        io::now::write(&self.ctx, off, data, then)
    }

    /// Discard `[off, off + len)`: whole objects are removed, partial ranges
    /// zeroed; reads return zeros afterwards. Clamped at the end of the image.
    pub async fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        io::discard(&self.ctx, off, len, false).await
    }

    /// Zero `[off, off + len)` (same effect as discard, never past the end).
    pub async fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        io::discard(&self.ctx, off, len, true).await
    }

    /// Returns once every write that completed before it is durable on every
    /// replica.
    pub async fn flush(&self) -> Result<()> {
        self.ctx.flush().await
    }

    /// [`Image::flush`] without a task: `done` gets the result on the
    /// thread that completes it, and the caller's thread may do the sync
    /// itself, so call it only from a thread that may block.
    pub fn flush_then(&self, done: Box<dyn FnOnce(Result<()>) + Send>) {
        self.ctx.flush_then(done)
    }

    /// Grow or (with `allow_shrink`) shrink the image.
    pub async fn resize(
        &self,
        size: u64,
        allow_shrink: bool,
        progress: &dyn ProgressSink,
    ) -> Result<()> {
        self.check_writable()?;
        operation::resize::resize(&self.ctx, size, allow_shrink, progress).await
    }

    /// Grow the image to at least `size` bytes, never shrinking it: for
    /// writes past the end, which may race each other. Growths of one image
    /// wait for each other, not for those of other images.
    pub async fn grow_to(&self, size: u64) -> Result<()> {
        if size <= self.size() {
            return Ok(());
        }
        let _g = self.ctx.grow.lock().await;
        if size > self.size() {
            self.resize(size, false, &NoProgress).await?;
        }
        Ok(())
    }

    /// Take snapshot `name` in O(1).
    pub async fn snap_create(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        operation::snap_create::snap_create(&self.ctx, name).await
    }

    /// Snapshots, oldest first.
    pub async fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        Ok(self.ctx.snap_list())
    }

    /// Remove snapshot `name` (refused while protected).
    pub async fn snap_remove(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        operation::snap_remove::snap_remove(&self.ctx, name).await
    }

    /// Protect snapshot `name` so it can be cloned.
    pub async fn snap_protect(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        operation::snap_protect::snap_protect(&self.ctx, name).await
    }

    /// Unprotect snapshot `name`; EBUSY naming the clones while any exist.
    pub async fn snap_unprotect(&self, name: &str) -> Result<()> {
        self.check_writable()?;
        operation::snap_protect::snap_unprotect(&self.ctx, name).await
    }

    /// Make the head byte-identical to snapshot `name`.
    pub async fn snap_rollback(&self, name: &str, progress: &dyn ProgressSink) -> Result<()> {
        self.check_writable()?;
        operation::snap_rollback::snap_rollback(&self.ctx, name, progress).await
    }

    /// Copy every object the clone still takes from its parent, then detach it
    /// (and its snapshots) from the parent. Cancellable; running it again
    /// resumes.
    pub async fn flatten(&self, progress: &dyn ProgressSink, cancel: &CancelToken) -> Result<()> {
        self.check_writable()?;
        operation::flatten::flatten(&self.ctx, progress, cancel).await
    }

    /// The parent of this image (or of this snapshot), if it is a clone.
    pub fn parent(&self) -> Option<ParentInfo> {
        self.ctx.parent_info(self.snap_id())
    }

    /// Provisioned and used space per snapshot and for the head.
    pub async fn du(&self) -> Result<DuInfo> {
        Ok(self.ctx.du())
    }

    /// Extents in `[off, off + len)` that may hold data (object granularity,
    /// including data reachable through the parent inside the overlap), sorted
    /// and merged. Everything else reads as zeros.
    pub async fn data_extents(&self, off: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        io::data_extents(&self.ctx, self.snap_id(), off, len).await
    }

    /// Run a management request forwarded to this process (the lock owner),
    /// e.g. by the admin socket. A request id seen before is answered with its
    /// earlier result instead of running again (see `exclusive_lock`).
    pub async fn execute(
        &self,
        id: RequestId,
        op: &ManagementOp,
        progress: &dyn ProgressSink,
        cancel: &CancelToken,
    ) -> Result<()> {
        self.check_writable()?;
        let ctx = &self.ctx;
        ctx.lock
            .invoke(id, || async move {
                match op {
                    ManagementOp::Flatten => operation::flatten::run(ctx, progress, cancel).await,
                    ManagementOp::Resize { size, allow_shrink } => {
                        operation::resize::run(ctx, *size, *allow_shrink, progress).await
                    }
                    ManagementOp::SnapCreate { name } => {
                        operation::snap_create::run_checked(ctx, name).await
                    }
                    ManagementOp::SnapRemove { name } => {
                        operation::snap_remove::run(ctx, name).await
                    }
                    ManagementOp::SnapProtect { name } => {
                        operation::snap_protect::set(ctx, name, true).await
                    }
                    ManagementOp::SnapUnprotect { name } => {
                        operation::snap_protect::set(ctx, name, false).await
                    }
                    ManagementOp::SnapRollback { name } => {
                        operation::snap_rollback::run(ctx, name, progress).await
                    }
                }
            })
            .await
    }

    /// A fresh request id for a management request from this process.
    pub fn new_request_id(&self) -> RequestId {
        self.ctx.lock.new_request_id()
    }

    /// Rebuild the object maps (head and snapshots) from the objects themselves.
    pub async fn object_map_rebuild(&self) -> Result<()> {
        self.check_writable()?;
        object_map::rebuild(&self.ctx).await
    }
}

#[cfg(test)]
pub(crate) mod tests;
