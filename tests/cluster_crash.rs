//! Real crash test: a child process opens the cluster (file stores), writes
//! and flushes in a loop and reports each flushed write over its stdout pipe;
//! the parent SIGKILLs it after a random number of reports, opens every
//! OSD's store on its own and checks every reported write byte-exact on
//! EVERY replica, then opens the cluster and checks it serves them all.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures::executor::block_on;
use rbdfs::osd::placement::object_pg;
use rbdfs::osd::{Cluster, ClusterConfig, CreateOptions, OsdError, OsdMap, PgId};
use rbdfs::rados::{RadosBackend, ReadOp, SNAP_HEAD, SnapContext, WriteOp};
use rbdfs::store::{FileStore, ObjectKey, ObjectStore, StoreConfig};

const CHILD_ENV: &str = "RBDFS_CLUSTER_CRASH_CHILD";
const TEST_NAME: &str = "test_cluster_crash_flushed_writes_survive_sigkill_on_every_replica";
const BATCH: u64 = 8;

/// Content of write `i`: its size varies (4 KiB to 260 KiB) so journal
/// records of several sizes are in flight when the kill lands.
fn payload(i: u64) -> Bytes {
    let len = 4096 + (i % 5) as usize * 64 * 1024;
    let mut v = vec![0u8; len];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i as usize * 31 + j * 7) as u8;
    }
    Bytes::from(v)
}

fn name(i: u64) -> String {
    format!("obj.{i:06}")
}

/// The child: write batches of BATCH objects concurrently, flush, report.
fn child(dir: &Path) {
    let c = Cluster::open(dir, ClusterConfig::default()).expect("child: open");
    let pool = c.pool_list().unwrap()[0].id;
    for batch in 0u64.. {
        let writes: Vec<_> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| {
                c.write(
                    pool,
                    &name(i),
                    SnapContext::empty(),
                    vec![WriteOp::WriteFull { data: payload(i) }],
                )
            })
            .collect();
        for w in writes {
            block_on(w).expect("child: write");
        }
        block_on(c.flush()).expect("child: flush");
        for i in batch * BATCH..(batch + 1) * BATCH {
            println!("FLUSHED {i}");
        }
    }
}

/// A number in `lo..hi` that differs from run to run; printed for replays.
fn random_in(lo: u64, hi: u64) -> u64 {
    let seed = std::env::var("RBDFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
                ^ u64::from(std::process::id())
        });
    eprintln!("crash seed {seed} (set RBDFS_CRASH_SEED to replay)");
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    lo + x % (hi - lo)
}

#[test]
fn test_cluster_crash_flushed_writes_survive_sigkill_on_every_replica() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    Cluster::create(&dir, CreateOptions::default()).unwrap();
    let c = Cluster::open(&dir, ClusterConfig::default()).unwrap();
    let pool = block_on(c.pool_create("crash", Some(3), None, Some(8)))
        .unwrap()
        .id;
    c.shutdown().unwrap();
    drop(c);
    let kill_after = random_in(10, 200);

    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut flushed = Vec::new();
    let lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        if let Some(i) = line.strip_prefix("FLUSHED ") {
            flushed.push(i.parse::<u64>().unwrap());
            if flushed.len() == 1 {
                // The child holds the cluster: another process must not get in.
                let other = Cluster::open(&dir, ClusterConfig::default());
                assert!(
                    matches!(other, Err(OsdError::Locked { .. })),
                    "second open while the child runs: {:?}",
                    other.err()
                );
            }
            if flushed.len() as u64 >= kill_after {
                break;
            }
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(proc.id() as i32, libc::SIGKILL) };
    let status = proc.wait().unwrap();
    assert!(
        flushed.len() as u64 >= kill_after,
        "the child died before {kill_after} reports ({status}): see its stderr above"
    );

    // Each replica's store on its own, before any peering could repair it:
    // a flushed write must already be durable on every one of them.
    let map = OsdMap::load(&dir).unwrap();
    let info = map.pools[0].info.clone();
    let stores: Vec<_> = map
        .osds
        .iter()
        .map(|o| FileStore::open(&dir.join(&o.path), StoreConfig::default()).unwrap())
        .collect();
    for &i in &flushed {
        let pg = object_pg(&name(i), info.pg_num);
        let up = map.pg_up_set(&info, pg);
        assert_eq!(up.len(), 3);
        let key = ObjectKey {
            coll: PgId { pool, pg },
            name: name(i),
            snap: SNAP_HEAD,
        };
        for osd in up {
            let got = stores[osd as usize].read(&key, 0, 1 << 20);
            assert_eq!(
                got.as_ref().ok(),
                Some(&payload(i)),
                "write {i} on osd.{osd} after a kill at {kill_after} reports"
            );
        }
    }
    for s in stores {
        s.close().unwrap();
    }

    // Then the cluster: it opens, peers, serves every flushed write, and all
    // replicas agree (writes in flight at the kill included).
    let c = Cluster::open(&dir, ClusterConfig::default()).unwrap();
    for &i in &flushed {
        let got = block_on(c.read(
            pool,
            &name(i),
            SNAP_HEAD,
            vec![ReadOp::Read {
                off: 0,
                len: 1 << 20,
            }],
        ));
        assert_eq!(
            got.unwrap().pop().unwrap().into_data(),
            payload(i),
            "write {i}"
        );
    }
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}
