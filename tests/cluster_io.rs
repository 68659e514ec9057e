//! Ordering guarantees of the replicated path with many ops in flight.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use futures::executor::block_on;
use rbdfs::osd::{Cluster, ClusterConfig, CreateOptions, FileStoreOpener, MemStoreOpener};
use rbdfs::rados::{RadosBackend, ReadOp, SNAP_HEAD, SnapContext, WriteOp};
use rbdfs::store::StoreConfig;

fn open(dir: &std::path::Path) -> Arc<Cluster> {
    let config = ClusterConfig {
        store: Arc::new(MemStoreOpener::deferred()),
        osd_op_num_shards: 2,
        osd_op_num_threads_per_shard: 3,
        ..ClusterConfig::default()
    };
    Cluster::create(
        dir,
        CreateOptions {
            config: config.clone(),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    Cluster::open(dir, config).unwrap()
}

#[test]
fn test_cluster_read_among_writes_in_flight_sees_exactly_the_writes_before_it() {
    // The backend queues an op before returning its future, so w0 r0 w1 r1 ...
    // issued without waiting reach the primary in that order; read i must
    // see exactly write i: it waits for the writes in flight before it to be
    // applied, and the writes after it wait for it. Odd reads are partial
    // (3 of 4 bytes): the store calls every other one cold, and the writes
    // after a cold read wait for its thread to read.
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let pool = block_on(c.pool_create("rbd", Some(3), None, None))
        .unwrap()
        .id;
    let mut writes = Vec::new();
    let mut reads = Vec::new();

    for i in 0u32..300 {
        let obj = format!("o{}", i % 3);
        let data = Bytes::copy_from_slice(&i.to_le_bytes());
        writes.push(c.write(
            pool,
            &obj,
            SnapContext::empty(),
            vec![WriteOp::WriteFull { data }],
        ));
        reads.push((
            i,
            c.read(
                pool,
                &obj,
                SNAP_HEAD,
                vec![ReadOp::Read {
                    off: 0,
                    len: 4 - (i % 2) as u64,
                }],
            ),
        ));
    }

    for w in writes {
        block_on(w).unwrap();
    }
    for (i, r) in reads {
        let got = block_on(r).unwrap().pop().unwrap().into_data();
        let want = &i.to_le_bytes()[..4 - (i % 2) as usize];
        assert_eq!(&got[..], want, "the read right after write {i} saw another");
    }
    let r = block_on(c.read(pool, "o0", SNAP_HEAD, vec![ReadOp::Read { off: 0, len: 4 }]));
    assert_eq!(
        r.unwrap().pop().unwrap().into_data(),
        &297u32.to_le_bytes()[..]
    );
    block_on(c.flush()).unwrap();
    c.shutdown().unwrap();
}

#[test]
fn test_cluster_ops_after_shutdown_fail_with_shutting_down() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let pool = block_on(c.pool_create("rbd", Some(3), None, None))
        .unwrap()
        .id;
    c.shutdown().unwrap();

    let r = block_on(c.write(
        pool,
        "o",
        SnapContext::empty(),
        vec![WriteOp::Create { exclusive: false }],
    ));

    assert_eq!(r, Err(rbdfs::rados::RadosError::ShuttingDown));
}

#[test]
fn test_cluster_map_changes_under_load_lose_no_write() {
    // Writers keep going while osd.2 goes down and up again and again: ops
    // arriving during peering are parked and resubmitted, none is lost, and
    // every replica ends up identical.
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    let pool = block_on(c.pool_create("rbd", Some(3), None, Some(16)))
        .unwrap()
        .id;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                    let data = Bytes::copy_from_slice(&n.to_le_bytes());
                    block_on(c.write(
                        pool,
                        &format!("t{t}.{}", n % 40),
                        SnapContext::empty(),
                        vec![WriteOp::WriteFull { data }],
                    ))
                    .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();

    for i in 0..20 {
        c.set_osd_up(2, i % 2 == 1).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts: Vec<u32> = writers.into_iter().map(|w| w.join().unwrap()).collect();

    for (t, n) in counts.into_iter().enumerate() {
        for k in 0..40.min(n) {
            let last = (0..n).rev().find(|v| v % 40 == k).unwrap();
            let r = block_on(c.read(
                pool,
                &format!("t{t}.{k}"),
                SNAP_HEAD,
                vec![ReadOp::Read { off: 0, len: 4 }],
            ));
            assert_eq!(
                r.unwrap().pop().unwrap().into_data(),
                &last.to_le_bytes()[..],
                "t{t}.{k}"
            );
        }
    }
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_cluster_with_osds_in_other_directories_reopens_with_its_data() {
    // OSD directories may live anywhere (other disks): the map records them.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let paths: Vec<_> = (0..3)
        .map(|i| elsewhere.path().join(format!("disk{i}/osd")))
        .collect();
    let config = ClusterConfig::default();
    Cluster::create(
        &dir.path().join("c"),
        CreateOptions {
            osd_paths: paths.clone(),
            config: config.clone(),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let c = Cluster::open(&dir.path().join("c"), config.clone()).unwrap();
    let pool = block_on(c.pool_create("rbd", Some(3), None, Some(4)))
        .unwrap()
        .id;
    block_on(c.write(
        pool,
        "o",
        SnapContext::empty(),
        vec![WriteOp::WriteFull {
            data: Bytes::from_static(b"far away"),
        }],
    ))
    .unwrap();
    c.shutdown().unwrap();
    drop(c);

    let c = Cluster::open(&dir.path().join("c"), config).unwrap();

    let map = c.osdmap();
    assert_eq!(
        map.osds.iter().map(|o| o.path.clone()).collect::<Vec<_>>(),
        paths
    );
    assert!(
        paths
            .iter()
            .all(|p| std::fs::read_dir(p).unwrap().next().is_some())
    );
    let r = block_on(c.read(pool, "o", SNAP_HEAD, vec![ReadOp::Read { off: 0, len: 64 }]));
    assert_eq!(r.unwrap().pop().unwrap().into_data(), &b"far away"[..]);
    c.shutdown().unwrap();
}

#[test]
fn test_cluster_write_refused_for_space_is_no_space_and_changes_nothing() {
    // Every store claims 80 MiB free and keeps 64 MiB in reserve: a 32 MiB
    // write (journal record + data) cannot fit, a small one can.
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        store: Arc::new(FileStoreOpener {
            config: StoreConfig {
                fake_available_bytes: Some(80 << 20),
                ..StoreConfig::default()
            },
        }),
        ..ClusterConfig::default()
    };
    Cluster::create(
        dir.path(),
        CreateOptions {
            config: config.clone(),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let c = Cluster::open(dir.path(), config).unwrap();
    let pool = block_on(c.pool_create("rbd", Some(3), None, Some(4)))
        .unwrap()
        .id;
    let write = |data: Bytes| {
        block_on(c.write(
            pool,
            "o",
            SnapContext::empty(),
            vec![WriteOp::WriteFull { data }],
        ))
    };
    write(Bytes::from_static(b"small")).unwrap();

    let r = write(Bytes::from(vec![1u8; 32 << 20]));

    assert!(
        matches!(r, Err(rbdfs::rados::RadosError::NoSpace(_))),
        "{r:?}"
    );
    let got = block_on(c.read(pool, "o", SNAP_HEAD, vec![ReadOp::Read { off: 0, len: 64 }]));
    assert_eq!(got.unwrap().pop().unwrap().into_data(), &b"small"[..]);
    write(Bytes::from_static(b"still works")).unwrap();
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}
