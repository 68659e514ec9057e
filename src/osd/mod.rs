//! In-process OSDs: the cluster, its map and placement, each OSD's sharded op
//! queue and PGs (primary-copy replication with PG logs), peering and recovery.
//!
//! Entry point: [`Cluster`] (create/open a cluster directory), which implements
//! [`crate::rados::RadosBackend`]; wrap it in [`crate::rados::Rados`].

pub mod cluster;
pub mod codec;
mod daemon;
pub mod error;
pub mod object_info;
pub mod op_queue;
pub mod osdmap;
mod peering;
mod pg;
pub mod pg_log;
pub mod placement;
pub mod store_open;
mod tracker;

pub use cluster::{Cluster, ClusterConfig, CreateOptions};
pub use error::{OsdError, OsdResult};
pub use osdmap::{OsdId, OsdMap};
pub use store_open::{MemStoreOpener, OpenedStore, StoreOpener};

/// A placement group: the same pair as its store collection.
pub type PgId = crate::store::CollId;
