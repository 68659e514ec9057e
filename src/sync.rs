//! One place for the locks and atomics the crate uses.
//!
//! Every module takes its `Mutex`, `RwLock`, `Condvar` and atomics from here, so
//! a model checker (shuttle, loom) can later be swapped in for targeted
//! concurrency tests without touching the modules themselves.

pub use parking_lot::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use std::sync::Arc;
pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
