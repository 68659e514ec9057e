//! In-process OSDs: the cluster, its map and placement, each OSD's sharded op
//! queue and PGs (primary-copy replication with PG logs), peering and recovery.
//!
//! Entry point: [`Cluster`] (create/open a cluster directory), which implements
//! [`crate::rados::RadosBackend`]; wrap it in [`crate::rados::Rados`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use rbdfs::osd::{Cluster, ClusterConfig, CreateOptions};
//! use rbdfs::rados::{Rados, SnapContext};
//!
//! let dir = Path::new("/srv/rbdfs");
//! Cluster::create(dir, CreateOptions::default())?; // 3 OSDs in dir/osd.N
//! let cluster = Cluster::open(dir, ClusterConfig::default())?;
//! let rados = Rados::new(cluster.clone());
//! let pool = rados.pool_create("rbd", None).await?; // size 3, min_size 2
//! let io = rados.ioctx_by_id(pool.id);
//! io.write("obj", &SnapContext::empty(), 0, "hello".into()).await?;
//! io.flush().await?;
//! cluster.shutdown()?;
//! # Ok(())
//! # }
//! ```

pub mod cluster;
pub mod codec;
mod daemon;
pub mod error;
pub mod object_info;
pub mod op_queue;
pub mod osdmap;
mod peering;
mod pg;
mod pg_holders;
pub mod pg_log;
pub mod placement;
pub mod scrub;
pub mod status;
pub mod store_open;
mod tracker;

pub use cluster::{Cluster, ClusterConfig, CreateOptions};
pub use error::{OsdError, OsdResult};
pub use osdmap::{OsdId, OsdMap};
pub use scrub::{Inconsistency, ScrubReport};
pub use status::{ClusterStatus, Health, PgStatus, RecoveryStatus};
pub use store_open::{FileStoreOpener, MemStoreOpener, OpenedStore, StoreOpener};

/// A placement group: the same pair as its store collection.
pub type PgId = crate::store::CollId;
