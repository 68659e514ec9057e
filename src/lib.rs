//! rbdfs: Ceph RBD on one host, in one process, behind a FUSE mount.
//!
//! Layers, top to bottom (each talks only to the one below):
//! - `fuse`: the daemon's filesystem, every image and snapshot as a file;
//! - `rbd`: images, striping, snapshots, clones, copyup, flatten (librbd);
//! - `rados`: the client side of the object layer (librados);
//! - `osd`: in-process OSDs with sharded op queues, PGs, replication, PG logs;
//! - `store`: one OSD's local storage: transactions, journal, object files.

pub mod admin;
pub mod cli;
pub mod fuse;
pub mod osd;
pub mod rados;
pub mod rbd;
pub mod store;
pub mod sync;
