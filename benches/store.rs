//! FileStore alone on a real disk: write and read throughput, IOPS and
//! latency for 4 KiB, 64 KiB and 4 MiB operations at queue depth 1 and 16.
//!
//! `cargo bench --bench store`. The store lives in `RBDFS_BENCH_DIR` if set,
//! else in a temporary directory under `target/`; never put it on tmpfs, the
//! point is to measure the disk (compare with `contrib/bench/disk-baseline.sh`).
//! Queue depth N is N threads, each queueing a transaction, asking for a
//! commit and waiting for it (durable) before the next: every write is
//! flushed, the store's worst case (syncs are shared by the threads). Write
//! throughput includes a final `sync()` (every byte durable in its object
//! file, journal trimmed), so data parked in the page cache is paid for;
//! latency is queue-to-commit. Reads follow the writes and mostly hit the
//! page cache.

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rbdfs::rados::SNAP_HEAD;
use rbdfs::store::{CollId, FileStore, ObjectKey, ObjectStore, StoreConfig, Transaction, TxOp};

const COLL: CollId = CollId { pool: 1, pg: 0 };
const OBJ: u64 = 4 << 20;

fn key(i: u64) -> ObjectKey {
    ObjectKey {
        coll: COLL,
        name: format!("rbd_data.bench.{i:016x}"),
        snap: SNAP_HEAD,
    }
}

struct Stats {
    ops: u64,
    bytes: u64,
    secs: f64,
    lat: Vec<Duration>,
}

impl Stats {
    fn print(&mut self, what: &str) {
        self.lat.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.lat.len() as f64 * p) as usize).min(self.lat.len() - 1);
            self.lat[i].as_secs_f64() * 1e3
        };
        println!(
            "{what:<22} {:>9.1} MB/s {:>9.0} IOPS  p50 {:>8.3} ms  p99 {:>8.3} ms",
            self.bytes as f64 / self.secs / 1e6,
            self.ops as f64 / self.secs,
            pct(0.50),
            pct(0.99),
        );
    }
}

/// A cheap xorshift, so offsets differ between threads without a crate.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Run `ops` operations of `size` bytes from `qd` threads; `op(thread_rng, i)`
/// performs one and returns when it is done.
fn drive(
    qd: u64,
    ops: u64,
    size: u64,
    op: impl Fn(&mut u64) + Sync,
    finish: impl FnOnce(),
) -> Stats {
    let per = ops / qd;
    let start = Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..qd)
            .map(|t| {
                let op = &op;
                s.spawn(move || {
                    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                    let mut lat = Vec::with_capacity(per as usize);
                    for _ in 0..per {
                        let t0 = Instant::now();
                        op(&mut rng);
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("bench thread panicked"))
            .collect()
    });
    finish();
    Stats {
        ops: per * qd,
        bytes: per * qd * size,
        secs: start.elapsed().as_secs_f64(),
        lat,
    }
}

fn commit(store: &FileStore, ops: Vec<TxOp>) {
    let (tx, rx) = channel();
    store
        .queue_transaction(
            Transaction::from(ops),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            Box::new(|_| {}),
        )
        .expect("queue_transaction failed");
    store.commit_soon();
    rx.recv()
        .expect("commit callback dropped")
        .expect("commit failed");
}

fn main() {
    let base = std::env::var_os("RBDFS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("bench-store")
        });
    std::fs::create_dir_all(&base).expect("creating the bench directory");
    let dir = tempfile::tempdir_in(&base).expect("creating a temporary store directory");
    println!("store in {}", dir.path().display());
    FileStore::mkfs(dir.path()).expect("mkfs");
    let store = FileStore::open(dir.path(), StoreConfig::default()).expect("open");
    commit(&store, vec![TxOp::CreateCollection(COLL)]);

    // (size, total ops): 1 GiB per 4 MiB run, shorter for small ops.
    let cases = [(4u64 << 10, 4000u64), (64 << 10, 2000), (4 << 20, 256)];
    let objects = 64u64;
    for (size, ops) in cases {
        for qd in [1u64, 16] {
            let data = Bytes::from(vec![0xa5u8; size as usize]);
            let mut w = drive(
                qd,
                ops,
                size,
                |rng| {
                    let r = next(rng);
                    let obj = r % objects;
                    let off = if size >= OBJ {
                        0
                    } else {
                        (r >> 8) % (OBJ / size) * size
                    };
                    commit(
                        &store,
                        vec![TxOp::Write {
                            key: key(obj),
                            off,
                            data: data.clone(),
                        }],
                    );
                },
                || store.sync().expect("sync"),
            );
            w.print(&format!("write {}K qd{qd}", size >> 10));
            let mut r = drive(
                qd,
                ops,
                size,
                |rng| {
                    let r = next(rng);
                    let obj = r % objects;
                    let off = if size >= OBJ {
                        0
                    } else {
                        (r >> 8) % (OBJ / size) * size
                    };
                    let _ = store.read(&key(obj), off, size).expect("read");
                },
                || {},
            );
            r.print(&format!("read  {}K qd{qd}", size >> 10));
        }
    }
    store.close().expect("close");
}
