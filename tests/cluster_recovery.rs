//! Replica catch-up: an OSD misses writes while down (the pause hook), comes
//! back, and peering makes every replica identical (log recovery, or
//! backfill when it is further behind than the PG log covers); an OSD taken
//! out has its PGs backfilled elsewhere.

mod common;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::executor::block_on;
use rbdfs::osd::{Cluster, ClusterConfig, CreateOptions, MemStoreOpener, OsdError};
use rbdfs::rados::{IoCtx, Rados, SNAP_HEAD, SnapContext, WriteOp};

fn cluster(dir: &Path, osds: usize, log: usize) -> (Arc<Cluster>, ClusterConfig) {
    let config = ClusterConfig {
        store: Arc::new(MemStoreOpener::new()),
        pg_log_max_entries: log,
        ..ClusterConfig::default()
    };
    Cluster::create(
        dir,
        CreateOptions {
            num_osds: osds,
            config: config.clone(),
            ..CreateOptions::default()
        },
    )
    .unwrap();
    (Cluster::open(dir, config.clone()).unwrap(), config)
}

fn data(i: usize, round: u8) -> Bytes {
    Bytes::from(vec![round.wrapping_add(i as u8); 100 + i * 7])
}

async fn write_all(io: &IoCtx, snapc: &SnapContext, n: usize, round: u8) {
    for i in 0..n {
        io.write(&format!("obj{i}"), snapc, (i * 3) as u64, data(i, round))
            .await
            .unwrap();
    }
}

/// Writes while osd.2 is down: modifications, new objects, removals, xattrs
/// and omap, a snapshot with copy-on-write, and a snapshot trim.
async fn degraded_workload(io: &IoCtx, n: usize) -> SnapContext {
    write_all(io, &SnapContext::empty(), n / 2, 2).await;
    let s = io.snap_create().await.unwrap();
    let snapc = SnapContext {
        seq: s,
        snaps: vec![s],
    };
    for i in (0..n).step_by(3) {
        io.remove(&format!("obj{i}"), &snapc).await.unwrap();
    }
    for i in n..n + 10 {
        io.operate_write(
            &format!("obj{i}"),
            &snapc,
            vec![
                WriteOp::WriteFull { data: data(i, 9) },
                WriteOp::SetXattr {
                    name: "x".into(),
                    value: Bytes::from_static(b"v"),
                },
                WriteOp::OmapSet {
                    entries: [("k".to_string(), Bytes::from_static(b"w"))].into(),
                },
            ],
        )
        .await
        .unwrap();
    }
    snapc
}

#[test]
fn test_recovery_replica_back_from_pause_catches_up_from_log() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = cluster(dir.path(), 3, 3000);
    let rados = Rados::new(c.clone());
    let io = block_on(async {
        let p = rados.pool_create("rbd", Some(3)).await.unwrap();
        let io = rados.ioctx_by_id(p.id);
        write_all(&io, &SnapContext::empty(), 40, 1).await;
        io
    });

    c.set_replica_paused(2, true).unwrap();
    let snapc = block_on(degraded_workload(&io, 40));
    let behind = common::pgs_differing(&c, 2);
    c.set_replica_paused(2, false).unwrap();

    assert!(behind > 0, "osd.2 should have missed writes while paused");
    assert_eq!(common::pgs_differing(&c, 2), 0);
    assert_eq!(common::assert_replicas_identical(&c), 32);
    // And the data is what was written, through the primary.
    let got = block_on(io.read("obj1", SNAP_HEAD, 0, 4096)).unwrap();
    assert_eq!(&got[3..], &data(1, 2)[..]);
    assert_eq!(
        block_on(io.read("obj0", snapc.seq, 0, 4096)).unwrap().len(),
        100
    );
    c.shutdown().unwrap();
}

#[test]
fn test_recovery_replica_behind_past_log_tail_is_backfilled() {
    let dir = tempfile::tempdir().unwrap();
    // A 4-entry log: 8 PGs and ~60 writes leave osd.2 behind the tail.
    let (c, _) = cluster(dir.path(), 3, 4);
    let rados = Rados::new(c.clone());
    let io = block_on(async {
        let p = rados
            .backend()
            .pool_create("rbd", Some(3), None, Some(8))
            .await
            .unwrap();
        let io = rados.ioctx_by_id(p.id);
        write_all(&io, &SnapContext::empty(), 30, 1).await;
        io
    });

    c.set_replica_paused(2, true).unwrap();
    block_on(degraded_workload(&io, 30));
    c.set_replica_paused(2, false).unwrap();

    assert_eq!(common::assert_replicas_identical(&c), 8);
    c.shutdown().unwrap();
}

#[test]
fn test_recovery_osd_marked_out_has_its_pgs_backfilled_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = cluster(dir.path(), 4, 3000);
    let rados = Rados::new(c.clone());
    let io = block_on(async {
        let p = rados.pool_create("rbd", Some(3)).await.unwrap();
        let io = rados.ioctx_by_id(p.id);
        write_all(&io, &SnapContext::empty(), 40, 1).await;
        io
    });

    c.set_osd_in(1, false).unwrap();

    let map = c.osdmap();
    assert!(
        map.pools[0]
            .info
            .pg_num
            .gt(&0)
            .then(|| (0..32).all(|pg| !map.pg_acting(&map.pools[0].info, pg).contains(&1)))
            .unwrap()
    );
    assert_eq!(common::assert_replicas_identical(&c), 32);
    for i in 0..40 {
        let got = block_on(io.read(&format!("obj{i}"), SNAP_HEAD, 0, 4096)).unwrap();
        assert_eq!(&got[i * 3..], &data(i, 1)[..], "obj{i}");
    }
    c.shutdown().unwrap();
}

#[test]
fn test_recovery_restart_keeps_replicas_identical_and_data_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (c, config) = cluster(dir.path(), 3, 3000);
    let rados = Rados::new(c.clone());
    block_on(async {
        let p = rados.pool_create("rbd", Some(3)).await.unwrap();
        write_all(&rados.ioctx_by_id(p.id), &SnapContext::empty(), 20, 5).await;
    });
    c.set_replica_paused(0, true).unwrap();
    block_on(write_all(
        &rados.ioctx("rbd").unwrap(),
        &SnapContext::empty(),
        20,
        6,
    ));
    c.shutdown().unwrap();
    drop((c, rados));

    // Reopening marks every OSD up again: osd.0 must be recovered.
    let c = Cluster::open(dir.path(), config).unwrap();

    assert_eq!(common::assert_replicas_identical(&c), 32);
    let io = Rados::new(c.clone()).ioctx("rbd").unwrap();
    let got = block_on(io.read("obj3", SNAP_HEAD, 0, 4096)).unwrap();
    assert_eq!(&got[9..], &data(3, 6)[..]);
    c.shutdown().unwrap();
}

#[test]
fn test_cluster_second_open_fails_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (c, config) = cluster(dir.path(), 3, 3000);

    let second = Cluster::open(dir.path(), config.clone());

    let err = second.err().expect("second open must fail");
    assert!(matches!(err, OsdError::Locked { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
    assert!(err.to_string().contains("another rbdfs daemon or command"));
    c.shutdown().unwrap();
    drop(c);
    Cluster::open(dir.path(), config)
        .unwrap()
        .shutdown()
        .unwrap();
}

#[test]
fn test_cluster_pool_size_above_osd_count_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = cluster(dir.path(), 2, 3000);

    let r = block_on(Rados::new(c.clone()).pool_create("big", Some(3)));

    assert!(
        matches!(r, Err(rbdfs::rados::RadosError::InvalidArgument(ref m)) if m.contains("exceeds")),
        "{r:?}"
    );
    c.shutdown().unwrap();
}

#[test]
fn test_cluster_pg_below_min_size_refuses_io_until_osd_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = cluster(dir.path(), 2, 3000);
    let rados = Rados::new(c.clone());
    let io = block_on(async {
        let p = rados
            .backend()
            .pool_create("rbd", Some(2), Some(2), None)
            .await
            .unwrap();
        rados.ioctx_by_id(p.id)
    });
    c.set_replica_paused(1, true).unwrap();

    let r = block_on(io.write("o", &SnapContext::empty(), 0, Bytes::from_static(b"x")));

    assert!(matches!(r, Err(rbdfs::rados::RadosError::Busy(_))), "{r:?}");
    c.set_replica_paused(1, false).unwrap();
    block_on(io.write("o", &SnapContext::empty(), 0, Bytes::from_static(b"x"))).unwrap();
    c.shutdown().unwrap();
}

#[test]
fn test_recovery_pg_whose_newest_copy_is_down_refuses_io_until_it_returns() {
    // size 2, min_size 1, an object on osd.1 and osd.2: written while osd.2
    // is down, then osd.2 up and osd.1 down. osd.2 alone must not serve its
    // stale copy; once osd.1 is back, the write is there on both.
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = cluster(dir.path(), 3, 3000);
    let rados = Rados::new(c.clone());
    let p = block_on(
        rados
            .backend()
            .pool_create("rbd", Some(2), Some(1), Some(8)),
    )
    .unwrap();
    let io = rados.ioctx_by_id(p.id);
    let map = c.osdmap();
    let name = (0..)
        .map(|i| format!("o{i}"))
        .find(|n| {
            let pg = rbdfs::osd::placement::object_pg(n, 8);
            let mut up = map.pg_up_set(&p, pg);
            up.sort();
            up == [1, 2]
        })
        .unwrap();
    block_on(io.write(&name, &SnapContext::empty(), 0, Bytes::from_static(b"old"))).unwrap();
    c.set_osd_up(2, false).unwrap();
    block_on(io.write(&name, &SnapContext::empty(), 0, Bytes::from_static(b"new"))).unwrap();
    c.set_osd_up(1, false).unwrap();
    c.set_osd_up(2, true).unwrap();

    let stale = block_on(io.read(&name, SNAP_HEAD, 0, 3));

    assert!(
        matches!(stale, Err(rbdfs::rados::RadosError::Busy(ref m)) if m.contains("incomplete")),
        "{stale:?}"
    );
    c.set_osd_up(1, true).unwrap();
    assert_eq!(
        block_on(io.read(&name, SNAP_HEAD, 0, 3)),
        Ok(Bytes::from_static(b"new"))
    );
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}

#[test]
fn test_recovery_snap_removed_while_pg_incomplete_is_trimmed_after_it_peers() {
    // An object with a clone lives on osd.1 and osd.2; while its PG is
    // incomplete the snapshot is removed: the trim is owed (in the map) and
    // runs once the PG peers again.
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = cluster(dir.path(), 3, 3000);
    let rados = Rados::new(c.clone());
    let p = block_on(
        rados
            .backend()
            .pool_create("rbd", Some(2), Some(1), Some(8)),
    )
    .unwrap();
    let io = rados.ioctx_by_id(p.id);
    let map = c.osdmap();
    let name = (0..)
        .map(|i| format!("o{i}"))
        .find(|n| {
            let mut up = map.pg_up_set(&p, rbdfs::osd::placement::object_pg(n, 8));
            up.sort();
            up == [1, 2]
        })
        .unwrap();
    block_on(io.write(&name, &SnapContext::empty(), 0, Bytes::from_static(b"a"))).unwrap();
    let s1 = block_on(io.snap_create()).unwrap();
    let snapc = SnapContext {
        seq: s1,
        snaps: vec![s1],
    };
    block_on(io.write(&name, &snapc, 0, Bytes::from_static(b"b"))).unwrap();
    c.set_osd_up(2, false).unwrap();
    block_on(io.write(&name, &snapc, 0, Bytes::from_static(b"c"))).unwrap();
    c.set_osd_up(1, false).unwrap();
    c.set_osd_up(2, true).unwrap();

    block_on(io.snap_remove(s1)).unwrap();

    assert_eq!(c.osdmap().pending_trims.len(), 1);
    c.set_osd_up(1, true).unwrap();
    assert!(c.osdmap().pending_trims.is_empty());
    let snaps = block_on(io.list_snaps(&name)).unwrap();
    assert_eq!(snaps.clones.len(), 1, "only the head is left: {snaps:?}");
    common::assert_replicas_identical(&c);
    c.shutdown().unwrap();
}
