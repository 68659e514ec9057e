//! Reference-model property test: random sequences of image operations run on
//! rbdfs (over the in-memory object store) and on a plain model (a `Vec<u8>`
//! per image and per snapshot); after every step every image and snapshot must
//! read the same, in full and over a random range. "Reopen" drops the image
//! layer and builds a new one on the same store, so all state must come from
//! objects. Flatten may be cancelled part-way and is then resumed later. A
//! simulated crash between an object-map update and its data write leaves a
//! map claiming an object that does not exist; nothing may read differently.
//! A crash step interrupts an operation at a random object request, restarts
//! and reruns it: the result must be that of one complete run.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use bytes::Bytes;
use proptest::prelude::*;

use super::{Counting, TEST_ORDER, reopen, setup, test_config};
use crate::rados::RadosBackend;
use crate::rados::SNAP_HEAD;
use crate::rbd::image::names;
use crate::rbd::object_map::{EXISTS, ObjectMap};
use crate::rbd::{
    CancelToken, CreateOptions, Image, ImageSpec, NoProgress, ProgressSink, Rbd, RbdConfig,
    RbdError,
};
use crate::sync::Arc;

const OBJ: u64 = 1 << TEST_ORDER;
const MAX_IMAGES: usize = 6;
const MAX_SNAPS: usize = 3;

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Create {
        objs: u64,
        extra: u64,
    },
    Write {
        img: u8,
        off: u16,
        len: u16,
        byte: u8,
    },
    Discard {
        img: u8,
        off: u16,
        len: u16,
    },
    WriteZeroes {
        img: u8,
        off: u16,
        len: u16,
    },
    Resize {
        img: u8,
        size: u16,
        allow_shrink: bool,
    },
    SnapCreate {
        img: u8,
    },
    SnapRemove {
        img: u8,
        snap: u8,
    },
    SnapProtect {
        img: u8,
        snap: u8,
    },
    SnapUnprotect {
        img: u8,
        snap: u8,
    },
    SnapRollback {
        img: u8,
        snap: u8,
    },
    Clone {
        img: u8,
        snap: u8,
    },
    Flatten {
        img: u8,
        cancel_after: Option<u8>,
    },
    Remove {
        img: u8,
    },
    Reopen,
    /// A crash after an object-map update and before its data write: mark an
    /// object EXISTS in the stored map of the head or a snapshot, reopen, and
    /// (head) issue the write again.
    CrashAfterMapUpdate {
        img: u8,
        target: u8,
        obj: u16,
    },
    RebuildObjectMap {
        img: u8,
    },
    /// Run `op` with the object store failing every operation after `after`
    /// of them (a crash), restart, and run `op` again: the end result must be
    /// that of running it once.
    Crash {
        op: Box<Op>,
        after: u8,
    },
}

pub(crate) fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u64..10, 0u64..OBJ).prop_map(|(objs, extra)| Op::Create { objs, extra }),
        6 => (any::<u8>(), any::<u16>(), 1u16..12000, 1u8..255)
            .prop_map(|(img, off, len, byte)| Op::Write { img, off, len, byte }),
        2 => (any::<u8>(), any::<u16>(), 1u16..12000)
            .prop_map(|(img, off, len)| Op::Discard { img, off, len }),
        1 => (any::<u8>(), any::<u16>(), 1u16..12000)
            .prop_map(|(img, off, len)| Op::WriteZeroes { img, off, len }),
        2 => (any::<u8>(), any::<u16>(), any::<bool>())
            .prop_map(|(img, size, allow_shrink)| Op::Resize { img, size, allow_shrink }),
        3 => any::<u8>().prop_map(|img| Op::SnapCreate { img }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapRemove { img, snap }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapProtect { img, snap }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapUnprotect { img, snap }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapRollback { img, snap }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::Clone { img, snap }),
        2 => (any::<u8>(), proptest::option::of(0u8..6))
            .prop_map(|(img, cancel_after)| Op::Flatten { img, cancel_after }),
        1 => any::<u8>().prop_map(|img| Op::Remove { img }),
        1 => Just(Op::Reopen),
        1 => (any::<u8>(), any::<u8>(), any::<u16>())
            .prop_map(|(img, target, obj)| Op::CrashAfterMapUpdate { img, target, obj }),
        1 => any::<u8>().prop_map(|img| Op::RebuildObjectMap { img }),
        3 => (crashable_strategy(), 0u8..16).prop_map(|(op, after)| Op::Crash { op: Box::new(op), after }),
    ]
}

/// Operations the crash step interrupts: everything restartable.
fn crashable_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..10, 0u64..OBJ).prop_map(|(objs, extra)| Op::Create { objs, extra }),
        (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::Clone { img, snap }),
        (any::<u8>(), any::<u16>(), 1u16..12000, 1u8..255).prop_map(|(img, off, len, byte)| {
            Op::Write {
                img,
                off,
                len,
                byte,
            }
        }),
        (any::<u8>(), any::<u16>(), 1u16..12000).prop_map(|(img, off, len)| Op::Discard {
            img,
            off,
            len
        }),
        (any::<u8>(), any::<u16>(), any::<bool>()).prop_map(|(img, size, allow_shrink)| {
            Op::Resize {
                img,
                size,
                allow_shrink,
            }
        }),
        any::<u8>().prop_map(|img| Op::SnapCreate { img }),
        (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapRemove { img, snap }),
        (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapProtect { img, snap }),
        (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapUnprotect { img, snap }),
        (any::<u8>(), any::<u8>()).prop_map(|(img, snap)| Op::SnapRollback { img, snap }),
        any::<u8>().prop_map(|img| Op::Flatten {
            img,
            cancel_after: None
        }),
        any::<u8>().prop_map(|img| Op::Remove { img }),
    ]
}

#[derive(Clone, Debug)]
struct MSnap {
    name: String,
    data: Vec<u8>,
    protected: bool,
}

#[derive(Clone, Debug)]
struct MImage {
    name: String,
    data: Vec<u8>,
    snaps: Vec<MSnap>,
    /// (parent image name, parent snapshot name).
    parent: Option<(String, String)>,
}

#[derive(Clone, Default)]
struct Model {
    images: Vec<MImage>,
    next_image: u32,
    next_snap: u32,
}

impl Model {
    fn pick(&self, sel: u8) -> Option<usize> {
        (!self.images.is_empty()).then(|| sel as usize % self.images.len())
    }

    fn children(&self, name: &str, snap: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .images
            .iter()
            .filter(|i| {
                i.parent
                    .as_ref()
                    .is_some_and(|(p, s)| p == name && s == snap)
            })
            .map(|i| format!("rbd/{}", i.name))
            .collect();
        v.sort();
        v
    }
}

/// Scale a 16-bit selector to an offset inside `size`.
fn scale(sel: u16, size: u64) -> u64 {
    if size == 0 {
        0
    } else {
        sel as u64 * size / (u16::MAX as u64 + 1)
    }
}

struct CancelAfter {
    token: CancelToken,
    after: u64,
}

impl ProgressSink for CancelAfter {
    fn update(&self, done: u64, _total: u64) {
        if done >= self.after {
            self.token.cancel();
        }
    }
}

/// Assert `r` is an error with `errno`.
fn expect_errno<T: std::fmt::Debug>(r: Result<T, RbdError>, errno: i32, what: &str) {
    match r {
        Err(e) => assert_eq!(e.errno(), errno, "{what}: {e}"),
        Ok(v) => panic!("{what}: expected errno {errno}, got Ok({v:?})"),
    }
}

/// Head handles kept open across steps, as the FUSE daemon keeps them, so
/// every cache an open image has (header, object maps, parent chains) must
/// stay right while other images change.
type Handles = HashMap<String, Arc<Image>>;

/// The system under test: the image layer, its open handles, the store under
/// it and the counting backend in between (which can simulate a crash).
struct Sut {
    rbd: Arc<Rbd>,
    handles: Handles,
    mem: Arc<dyn RadosBackend>,
    config: RbdConfig,
    counting: Arc<Counting>,
    /// Rerunning an operation after a crash: answers meaning "that part was
    /// already done" are accepted.
    lenient: bool,
    /// Power-cycles the store under the image layer on "Reopen" (the OSD
    /// cluster crashes and is opened again from disk); `None`: the store stays.
    restart: Option<Restart>,
}

/// Crashes a backend and returns it opened again from what it made durable.
pub(crate) type Restart = Arc<dyn Fn() -> Arc<dyn RadosBackend> + Send + Sync>;

impl Sut {
    /// Drop every handle and start a new image layer on the same store
    /// (crashed and reopened first, when the store can be).
    fn reopen(&mut self) {
        self.handles.clear();
        if let Some(restart) = &self.restart {
            self.mem = restart();
        }
        (self.rbd, self.counting) = reopen(&self.mem, self.config.clone());
    }
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While set on this thread, panics are not printed: the interrupted run of a
/// crash step fails on purpose (the hook still prints every other panic).
fn quiet_panics(on: bool) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(on));
}

/// True when `r` failed with `errno` during a lenient rerun.
fn already_done<T>(sut: &Sut, r: &Result<T, RbdError>, errno: i32) -> bool {
    sut.lenient && matches!(r, Err(e) if e.errno() == errno)
}

async fn head(rbd: &Arc<Rbd>, handles: &mut Handles, name: &str) -> Arc<Image> {
    if let Some(h) = handles.get(name) {
        return h.clone();
    }
    let h = rbd.open("rbd", name, None).await.unwrap();
    handles.insert(name.to_string(), h.clone());
    h
}

async fn apply(sut: &mut Sut, m: &mut Model, op: &Op) {
    let opts = CreateOptions::default();
    match op.clone() {
        Op::Create { objs, extra } => {
            if m.images.len() >= MAX_IMAGES {
                return;
            }
            let name = format!("i{}", m.next_image);
            m.next_image += 1;
            let size = objs * OBJ + extra;
            let r = sut.rbd.create("rbd", &name, size, &opts).await;
            if !already_done(sut, &r, libc::EEXIST) {
                r.unwrap();
            }
            m.images.push(MImage {
                name,
                data: vec![0; size as usize],
                snaps: vec![],
                parent: None,
            });
        }
        Op::Write {
            img,
            off,
            len,
            byte,
        } => {
            let Some(i) = m.pick(img) else { return };
            let size = m.images[i].data.len() as u64;
            if size == 0 {
                return;
            }
            let off = scale(off, size);
            let len = (len as u64).min(size - off);
            let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
            let data = Bytes::from(vec![byte; len as usize]);
            write_either(&h, off, data, byte % 2 == 0).await.unwrap();
            m.images[i].data[off as usize..(off + len) as usize].fill(byte);
        }
        Op::Discard { img, off, len } | Op::WriteZeroes { img, off, len } => {
            let Some(i) = m.pick(img) else { return };
            let size = m.images[i].data.len() as u64;
            let off = scale(off, size);
            let len = len as u64;
            let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
            if matches!(op, Op::Discard { .. }) {
                h.discard(off, len).await.unwrap();
            } else {
                h.write_zeroes(off, len).await.unwrap();
            }
            let end = (off + len).min(size);
            m.images[i].data[off as usize..end as usize].fill(0);
        }
        Op::Resize {
            img,
            size,
            allow_shrink,
        } => {
            let Some(i) = m.pick(img) else { return };
            let new = scale(size, 12 * OBJ);
            let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
            let r = h.resize(new, allow_shrink, &NoProgress).await;
            if new < m.images[i].data.len() as u64 && !allow_shrink {
                expect_errno(r, libc::EINVAL, "shrink without flag");
            } else {
                r.unwrap();
                m.images[i].data.resize(new as usize, 0);
            }
        }
        Op::SnapCreate { img } => {
            let Some(i) = m.pick(img) else { return };
            if m.images[i].snaps.len() >= MAX_SNAPS {
                return;
            }
            let name = format!("s{}", m.next_snap);
            m.next_snap += 1;
            let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
            let r = h.snap_create(&name).await;
            if !already_done(sut, &r, libc::EEXIST) {
                r.unwrap();
            }
            let data = m.images[i].data.clone();
            m.images[i].snaps.push(MSnap {
                name,
                data,
                protected: false,
            });
        }
        Op::SnapRemove { img, snap }
        | Op::SnapProtect { img, snap }
        | Op::SnapUnprotect { img, snap }
        | Op::SnapRollback { img, snap }
        | Op::Clone { img, snap } => {
            let Some(i) = m.pick(img) else { return };
            if m.images[i].snaps.is_empty() {
                return;
            }
            let s = snap as usize % m.images[i].snaps.len();
            let iname = m.images[i].name.clone();
            let sname = m.images[i].snaps[s].name.clone();
            let protected = m.images[i].snaps[s].protected;
            let h = head(&sut.rbd, &mut sut.handles, &iname).await;
            match op {
                Op::SnapRemove { .. } => {
                    let r = h.snap_remove(&sname).await;
                    if protected {
                        expect_errno(r, libc::EBUSY, "remove protected snapshot");
                    } else {
                        if !already_done(sut, &r, libc::ENOENT) {
                            r.unwrap();
                        }
                        m.images[i].snaps.remove(s);
                    }
                }
                Op::SnapProtect { .. } => {
                    let r = h.snap_protect(&sname).await;
                    if protected {
                        expect_errno(r, libc::EBUSY, "protect twice");
                    } else {
                        if !already_done(sut, &r, libc::EBUSY) {
                            r.unwrap();
                        }
                        m.images[i].snaps[s].protected = true;
                    }
                }
                Op::SnapUnprotect { .. } => {
                    let r = h.snap_unprotect(&sname).await;
                    let kids = m.children(&iname, &sname);
                    if !protected {
                        expect_errno(r, libc::EINVAL, "unprotect twice");
                    } else if !kids.is_empty() {
                        assert_eq!(r, Err(RbdError::HasClones(kids)));
                    } else {
                        if !already_done(sut, &r, libc::EINVAL) {
                            r.unwrap();
                        }
                        m.images[i].snaps[s].protected = false;
                    }
                }
                Op::SnapRollback { .. } => {
                    h.snap_rollback(&sname, &NoProgress).await.unwrap();
                    m.images[i].data = m.images[i].snaps[s].data.clone();
                }
                _ => {
                    if m.images.len() >= MAX_IMAGES {
                        return;
                    }
                    let child = format!("i{}", m.next_image);
                    m.next_image += 1;
                    let r = sut
                        .rbd
                        .clone_image(
                            &ImageSpec::new("rbd", &iname).at_snap(&sname),
                            &ImageSpec::new("rbd", &child),
                            &opts,
                        )
                        .await;
                    if !protected {
                        expect_errno(r, libc::EINVAL, "clone of unprotected snapshot");
                    } else {
                        if !already_done(sut, &r, libc::EEXIST) {
                            r.unwrap();
                        }
                        let data = m.images[i].snaps[s].data.clone();
                        m.images.push(MImage {
                            name: child,
                            data,
                            snaps: vec![],
                            parent: Some((iname, sname)),
                        });
                    }
                }
            }
        }
        Op::Flatten { img, cancel_after } => {
            let Some(i) = m.pick(img) else { return };
            let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
            let sink = CancelAfter {
                token: CancelToken::new(),
                after: cancel_after.map_or(u64::MAX, u64::from),
            };
            let r = h.flatten(&sink, &sink.token).await;
            if m.images[i].parent.is_none() {
                expect_errno(r, libc::EINVAL, "flatten of non-clone");
            } else {
                match r {
                    Ok(()) => m.images[i].parent = None,
                    Err(RbdError::NoParent) if sut.lenient => m.images[i].parent = None,
                    Err(RbdError::Cancelled) => assert!(cancel_after.is_some()),
                    Err(e) => panic!("flatten failed: {e}"),
                }
            }
        }
        Op::Remove { img } => {
            let Some(i) = m.pick(img) else { return };
            sut.handles.remove(&m.images[i].name);
            let r = sut.rbd.remove("rbd", &m.images[i].name, &NoProgress).await;
            if !m.images[i].snaps.is_empty() {
                expect_errno(r, libc::ENOTEMPTY, "remove with snapshots");
            } else {
                if !already_done(sut, &r, libc::ENOENT) {
                    r.unwrap();
                }
                m.images.remove(i);
            }
        }
        Op::Reopen => {
            sut.reopen();
        }
        Op::CrashAfterMapUpdate { img, target, obj } => {
            let Some(i) = m.pick(img) else { return };
            let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
            let snaps = h.snap_list().await.unwrap();
            let t = target as usize % (snaps.len() + 1);
            let (snap, size) = match snaps.get(t) {
                Some(s) => (s.id, s.size),
                None => (SNAP_HEAD, h.size()),
            };
            let count = size.div_ceil(OBJ);
            if count == 0 {
                return;
            }
            let oid = names::object_map_oid(h.id(), snap);
            let ioctx = sut.rbd.rados().ioctx("rbd").unwrap();
            ObjectMap::save_state(&ioctx, &oid, obj as u64 % count, EXISTS, false)
                .await
                .unwrap();
            drop(h);
            sut.reopen();
            if snap == SNAP_HEAD {
                // The interrupted write is issued again after the restart.
                let objno = obj as u64 % count;
                let off = objno * OBJ + (obj as u64 % OBJ).min(size - objno * OBJ - 1);
                let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
                h.write(off, Bytes::from_static(b"@")).await.unwrap();
                m.images[i].data[off as usize] = b'@';
            }
        }
        Op::Crash { op, after } => {
            let mut scratch = m.clone();
            sut.counting.crash_after(after as i64);
            // The interrupted run fails somewhere; what it did is unknown to
            // the model, so it runs against a copy of the model.
            quiet_panics(true);
            let interrupted = AssertUnwindSafe(Box::pin(apply(sut, &mut scratch, &op)))
                .catch_unwind()
                .await;
            quiet_panics(false);
            drop(interrupted);
            sut.counting.crash_after(-1);
            sut.reopen();
            sut.lenient = true;
            Box::pin(apply(sut, m, &op)).await;
            sut.lenient = false;
        }
        Op::RebuildObjectMap { img } => {
            let Some(i) = m.pick(img) else { return };
            let h = head(&sut.rbd, &mut sut.handles, &m.images[i].name).await;
            h.object_map_rebuild().await.unwrap();
        }
    }
}

/// A write as the FUSE adapter issues it: with `now`, `Image::write_now`
/// first, and `write` where that hands it back.
pub(super) async fn write_either(
    h: &Image,
    off: u64,
    data: Bytes,
    now: bool,
) -> Result<(), RbdError> {
    if now {
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.write_now(off, data.clone(), Box::new(move |r| drop(tx.send(r))));
        if let Some(r) = rx.await.expect("write_now answers") {
            return r;
        }
    }
    h.write(off, data).await
}

/// A read as [`write_either`] writes.
pub(super) async fn read_either(
    h: &Image,
    off: u64,
    len: u64,
    now: bool,
) -> Result<Bytes, RbdError> {
    if now {
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.read_now(off, len, Box::new(move |r| drop(tx.send(r))));
        if let Some(r) = rx.await.expect("read_now answers") {
            return r;
        }
    }
    h.read(off, len).await
}

/// Every image and snapshot reads as the model says: in full (through
/// `read`), and over a range chosen by `sel` (through `read_now` first).
async fn check(rbd: &Arc<Rbd>, handles: &mut Handles, m: &Model, sel: u16) {
    let mut listed = rbd.list("rbd").await.unwrap();
    listed.sort();
    let mut want: Vec<String> = m.images.iter().map(|i| i.name.clone()).collect();
    want.sort();
    assert_eq!(listed, want, "image list");
    for img in &m.images {
        let views = std::iter::once((None, &img.data))
            .chain(img.snaps.iter().map(|s| (Some(s.name.as_str()), &s.data)));
        for (snap, data) in views {
            let h = rbd.open("rbd", &img.name, snap).await.unwrap();
            let what = format!("{}@{:?}", img.name, snap);
            assert_eq!(h.size(), data.len() as u64, "size of {what}");
            let got = h.read(0, data.len() as u64 + 10).await.unwrap();
            if got != data[..] {
                let first = got.iter().zip(data.iter()).position(|(a, b)| a != b);
                panic!("{what} differs from the model, first at {first:?}");
            }
            let off = scale(sel, data.len() as u64);
            let len = (sel as u64 % (3 * OBJ)).min(data.len() as u64 - off);
            let part = read_either(&h, off, len, true).await.unwrap();
            assert_eq!(
                part,
                data[off as usize..(off + len) as usize],
                "range of {what}"
            );
        }
        let h = head(rbd, handles, &img.name).await;
        assert_eq!(
            h.parent().is_some(),
            img.parent.is_some(),
            "parent of {}",
            img.name
        );
        check_maps_cover_objects(rbd, &h).await;
    }
}

/// The stored object maps (head and every snapshot) claim every data object
/// that exists: a map may claim too much, never too little.
async fn check_maps_cover_objects(rbd: &Arc<Rbd>, h: &Image) {
    let ioctx = rbd.rados().ioctx("rbd").unwrap();
    let views = std::iter::once((SNAP_HEAD, h.size())).chain(
        h.snap_list()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.id, s.size)),
    );
    for (snap, size) in views {
        let map = ObjectMap::load(&ioctx, &names::object_map_oid(h.id(), snap))
            .await
            .unwrap();
        for objno in 0..size.div_ceil(OBJ) {
            let oid = names::data_oid(h.id(), objno);
            if ioctx.stat(&oid, snap).await.is_ok() {
                assert!(
                    map.exists(objno),
                    "{oid} exists at {snap} but its map misses it"
                );
            }
        }
    }
}

fn run_case(ops: Vec<(Op, u16)>, copy_on_read: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_, mem, _c) = setup().await;
        run_case_on(mem, None, ops, copy_on_read).await;
    });
}

/// Run one case on `mem`, an object store with an empty pool "rbd" (any
/// backend: the in-memory one here, the OSD cluster elsewhere).
pub(crate) async fn run_case_on(
    mem: Arc<dyn RadosBackend>,
    restart: Option<Restart>,
    ops: Vec<(Op, u16)>,
    copy_on_read: bool,
) {
    let config = RbdConfig {
        clone_copy_on_read: copy_on_read,
        ..test_config()
    };
    let (rbd, counting) = reopen(&mem, config.clone());
    let mut sut = Sut {
        rbd,
        handles: Handles::new(),
        mem,
        config,
        counting,
        lenient: false,
        restart,
    };
    let mut m = Model::default();
    // Start with one image with data, so short sequences reach clones.
    apply(
        &mut sut,
        &mut m,
        &Op::Create {
            objs: 6,
            extra: 100,
        },
    )
    .await;
    apply(
        &mut sut,
        &mut m,
        &Op::Write {
            img: 0,
            off: 0,
            len: 9000,
            byte: 1,
        },
    )
    .await;
    for (op, sel) in &ops {
        apply(&mut sut, &mut m, op).await;
        check(&sut.rbd, &mut sut.handles, &m, *sel).await;
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn test_model_random_image_ops_match_reference(
        ops in proptest::collection::vec((op_strategy(), any::<u16>()), 1..40),
        copy_on_read in any::<bool>(),
    ) {
        run_case(ops, copy_on_read);
    }
}

/// The same model run on the replicated OSD cluster (three FileStore OSDs,
/// pool size 3), where "Reopen" also crashes every OSD and reopens the cluster
/// from disk: every acknowledged image operation must survive.
fn run_case_on_cluster(ops: Vec<(Op, u16)>, copy_on_read: bool) {
    use crate::osd::{Cluster, ClusterConfig, CreateOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    Cluster::create(&path, CreateOptions::default()).unwrap();
    let open = move |path: &std::path::Path| {
        let c = Cluster::open(path, ClusterConfig::default()).unwrap();
        (c.clone(), c as Arc<dyn RadosBackend>)
    };
    let (first, backend) = open(&path);
    let current = Arc::new(crate::sync::Mutex::new(first));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        backend.pool_create("rbd", None, None, None).await.unwrap();
    });
    let restart: Restart = {
        let current = current.clone();
        Arc::new(move || {
            let mut cur = current.lock();
            cur.simulate_crash();
            let (cluster, backend) = open(&path);
            *cur = cluster;
            backend
        })
    };
    rt.block_on(run_case_on(backend, Some(restart), ops, copy_on_read));
    current.lock().shutdown().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases() / 6 + 1))]

    #[test]
    fn test_model_random_image_ops_on_osd_cluster_match_reference(
        ops in proptest::collection::vec((op_strategy(), any::<u16>()), 1..30),
        copy_on_read in any::<bool>(),
    ) {
        run_case_on_cluster(ops, copy_on_read);
    }
}
