//! Mount tests: the built `rbdfs` binary, mounted for real, driven with the
//! tools a user would use (truncate, losetup, mkfs.ext4, mount, fio, setfattr).
//! One module per scenario; `harness` holds the setup and teardown they share.
//!
//! They need root, `/dev/fuse` and loop devices and fail loudly without them.

mod harness;

mod bad_input;
mod basic;
mod clone;
mod crash;
mod discard;
mod flatten;
mod snapshot;
