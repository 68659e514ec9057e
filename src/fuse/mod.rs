//! The daemon's filesystem: every image and snapshot of a store as a file.
//!
//! - [`fs`]: [`ImageFs`], the filesystem itself, tested without a mount;
//! - [`adapter`]: the thin fuser adapter (one `ImageFs` call + one reply);
//! - [`errno`]: the one table from errors to errnos;
//! - [`jobs`]: background flattens shared by the mount and the admin socket;
//! - [`mountinfo`]: which mount is on top of a path (the daemon unmounts only its own);
//! - [`xattr`]: the `user.rbd.*` attributes: names, and parsing of requests;
//! - [`daemon`]: `rbdfs mount`: store, admin socket, FUSE session, signals.

pub mod adapter;
pub mod daemon;
pub mod errno;
pub mod fs;
pub mod jobs;
pub mod loops;
pub mod mountinfo;
pub mod xattr;

pub use errno::FsError;
pub use fs::ImageFs;
