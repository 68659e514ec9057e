//! Object-level benchmark of the replicated store: write and read throughput
//! and latency for 4 KiB, 64 KiB and 4 MiB objects, pools of size 1 and 3,
//! 1 and 16 ops in flight, and the cost of a flush.
//!
//! Run with `cargo bench --bench objects`. The cluster goes into
//! `$RBDFS_BENCH_DIR` (default: a fresh directory under `target/`), which is
//! removed afterwards. `RBDFS_BENCH_MIB` sets the data written per case
//! (default 256 MiB for 4 MiB objects, less for smaller ones).
//! Compare with the disk's own sequential write speed:
//! `contrib/bench/disk-baseline.sh DIR`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::executor::block_on;
use rbdfs::osd::{Cluster, ClusterConfig, CreateOptions};
use rbdfs::rados::{RadosBackend, ReadOp, SNAP_HEAD, SnapContext, WriteOp};

struct Sample {
    bytes: u64,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Sample {
    fn row(&self, what: &str) -> String {
        let mut lat = self.lat.clone();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        let avg = lat.iter().sum::<Duration>() / lat.len() as u32;
        format!(
            "{what:<28} {:>9.1} {:>9} {:>10.3} {:>10.3} {:>10.3}",
            self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64(),
            lat.len(),
            avg.as_secs_f64() * 1e3,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
        )
    }
}

fn run(cluster: &Arc<Cluster>, qd: usize, ops: Vec<(String, Option<Bytes>)>, pool: u64) -> Sample {
    let bytes: u64 = ops
        .iter()
        .map(|(_, d)| d.as_ref().map_or(0, |d| d.len() as u64))
        .sum();
    let start = Instant::now();
    let lat: Vec<(Duration, u64)> = block_on(
        futures::stream::iter(ops.into_iter().map(|(name, data)| {
            let c = cluster.clone();
            async move {
                let t = Instant::now();
                let n = match data {
                    Some(data) => {
                        c.write(
                            pool,
                            &name,
                            SnapContext::empty(),
                            vec![WriteOp::WriteFull { data }],
                        )
                        .await
                        .expect("write");
                        0
                    }
                    None => c
                        .read(
                            pool,
                            &name,
                            SNAP_HEAD,
                            vec![ReadOp::Read {
                                off: 0,
                                len: 8 << 20,
                            }],
                        )
                        .await
                        .expect("read")
                        .pop()
                        .map_or(0, |r| r.into_data().len() as u64),
                };
                (t.elapsed(), n)
            }
        }))
        .buffer_unordered(qd)
        .collect(),
    );
    let elapsed = start.elapsed();
    let read_bytes: u64 = lat.iter().map(|(_, n)| n).sum();
    Sample {
        bytes: bytes + read_bytes,
        elapsed,
        lat: lat.into_iter().map(|(d, _)| d).collect(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. a test harness
    // listing) gets no run.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("RBDFS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = base.join(format!("rbdfs-bench-{}", std::process::id()));
    let mib: u64 = std::env::var("RBDFS_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let config = ClusterConfig::default();
    Cluster::create(
        &dir,
        CreateOptions {
            config: config.clone(),
            ..CreateOptions::default()
        },
    )
    .expect("create the cluster");
    let cluster = Cluster::open(&dir, config).expect("open the cluster");
    println!("cluster in {} (3 OSDs)", dir.display());
    println!(
        "{:<28} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "case", "MiB/s", "ops", "avg ms", "p50 ms", "p99 ms"
    );
    for size in [1u32, 3] {
        let pool =
            block_on(cluster.pool_create(&format!("bench{size}"), Some(size), Some(1), Some(32)))
                .expect("pool")
                .id;
        for (label, obj) in [("4K", 4usize << 10), ("64K", 64 << 10), ("4M", 4 << 20)] {
            // Small objects: cap the op count so a case stays short.
            let count = ((mib << 20) / obj as u64).clamp(16, 4000) as usize;
            let data = Bytes::from(vec![0xa5u8; obj]);
            for qd in [1usize, 16] {
                let names: Vec<String> =
                    (0..count).map(|i| format!("b.{label}.{qd}.{i}")).collect();
                let w = run(
                    &cluster,
                    qd,
                    names
                        .iter()
                        .map(|n| (n.clone(), Some(data.clone())))
                        .collect(),
                    pool,
                );
                let t = Instant::now();
                block_on(cluster.flush()).expect("flush");
                let flush = t.elapsed();
                let r = run(
                    &cluster,
                    qd,
                    names.iter().map(|n| (n.clone(), None)).collect(),
                    pool,
                );
                println!("{}", w.row(&format!("size={size} write {label} qd={qd}")));
                println!("{}", r.row(&format!("size={size} read  {label} qd={qd}")));
                println!(
                    "{:<28} {:>41.3}",
                    format!("size={size} flush after {label}"),
                    flush.as_secs_f64() * 1e3
                );
            }
        }
    }
    cluster.shutdown().expect("shutdown");
    drop(cluster);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("removing {}: {e}", dir.display());
    }
}
