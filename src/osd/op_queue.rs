//! An OSD's sharded op queue (Ceph's `ShardedOpWQ` on `osd_op_tp`).
//!
//! Items are keyed by PG. A PG's items go to shard `hash(pg) % shards`, each
//! shard served by `threads_per_shard` worker threads. Items of one PG are
//! processed strictly in queue order, even with several threads per shard:
//!
//! ```text
//!  enqueue(pg, item) ──> shard.slots[pg].items (FIFO)
//!                         │ slot not busy and was empty: pg -> shard.ready
//!  worker: pop pg from ready, mark slot busy, take its next items,
//!          run them without the shard lock, unmark busy,
//!          pg -> ready again if more items arrived meanwhile.
//! ```
//!
//! Invariant (under the shard lock): a PG is in `ready` exactly when its slot
//! is not busy and has items, so at most one thread runs a PG at a time.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::thread::JoinHandle;

use crate::sync::{Arc, Condvar, Mutex};

/// Items a worker takes from one PG at a time: enough to amortise the shard
/// lock, few enough that other PGs of the shard are not starved.
const MAX_BATCH: usize = 16;

/// Runs a batch of one key's items, in order.
pub type Handler<K, T> = Arc<dyn Fn(&K, Vec<T>) + Send + Sync>;

struct Slot<T> {
    items: VecDeque<T>,
    busy: bool,
}

struct ShardState<K, T> {
    slots: HashMap<K, Slot<T>>,
    ready: VecDeque<K>,
    stopping: bool,
}

struct Shard<K, T> {
    state: Mutex<ShardState<K, T>>,
    work: Condvar,
    idle: Condvar,
}

/// The queue with its worker threads.
pub struct ShardedOpQueue<K, T> {
    shards: Vec<Arc<Shard<K, T>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<K, T> ShardedOpQueue<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
{
    /// Start `shards * threads_per_shard` workers (at least one of each) named
    /// `<name>-<shard>-<thread>`.
    pub fn new(
        name: &str,
        shards: usize,
        threads_per_shard: usize,
        handler: Handler<K, T>,
    ) -> std::io::Result<Self> {
        let shards: Vec<Arc<Shard<K, T>>> = (0..shards.max(1))
            .map(|_| {
                Arc::new(Shard {
                    state: Mutex::new(ShardState {
                        slots: HashMap::new(),
                        ready: VecDeque::new(),
                        stopping: false,
                    }),
                    work: Condvar::new(),
                    idle: Condvar::new(),
                })
            })
            .collect();
        let q = ShardedOpQueue {
            shards,
            threads: Mutex::new(Vec::new()),
        };
        for (si, shard) in q.shards.iter().enumerate() {
            for ti in 0..threads_per_shard.max(1) {
                let shard = shard.clone();
                let handler = handler.clone();
                let t = std::thread::Builder::new()
                    .name(format!("{name}-{si}-{ti}"))
                    .spawn(move || worker(&shard, &handler));
                match t {
                    Ok(t) => q.threads.lock().push(t),
                    Err(e) => {
                        q.stop();
                        return Err(e);
                    }
                }
            }
        }
        Ok(q)
    }

    fn shard(&self, key: &K) -> &Arc<Shard<K, T>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }

    /// Queue an item behind the key's earlier items. Returns it back when the
    /// queue has stopped.
    pub fn enqueue(&self, key: K, item: T) -> Result<(), T> {
        let shard = self.shard(&key);
        let mut st = shard.state.lock();
        if st.stopping {
            return Err(item);
        }
        let slot = st.slots.entry(key.clone()).or_insert_with(|| Slot {
            items: VecDeque::new(),
            busy: false,
        });
        slot.items.push_back(item);
        if !slot.busy && slot.items.len() == 1 {
            st.ready.push_back(key);
            shard.work.notify_one();
        }
        Ok(())
    }

    /// Block until no shard holds or runs any item.
    pub fn wait_idle(&self) {
        for shard in &self.shards {
            let mut st = shard.state.lock();
            while !st.slots.is_empty() {
                shard.idle.wait(&mut st);
            }
        }
    }

    /// Let the workers finish every queued item, then stop and join them.
    /// Items queued afterwards are refused.
    pub fn stop(&self) {
        for shard in &self.shards {
            shard.state.lock().stopping = true;
            shard.work.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.join().is_err() {
                log::error!("an op queue worker panicked");
            }
        }
    }
}

impl<K, T> Drop for ShardedOpQueue<K, T> {
    fn drop(&mut self) {
        for shard in &self.shards {
            shard.state.lock().stopping = true;
            shard.work.notify_all();
        }
    }
}

fn worker<K: Hash + Eq + Clone, T>(shard: &Shard<K, T>, handler: &Handler<K, T>) {
    let mut st = shard.state.lock();
    loop {
        let Some(key) = st.ready.pop_front() else {
            if st.stopping && st.slots.is_empty() {
                return;
            }
            shard.work.wait(&mut st);
            continue;
        };
        let batch: Vec<T> = match st.slots.get_mut(&key) {
            Some(slot) => {
                slot.busy = true;
                let n = slot.items.len().min(MAX_BATCH);
                slot.items.drain(..n).collect()
            }
            None => continue,
        };
        drop(st);
        // A bug in one op must not wedge the PG (its slot would stay busy
        // forever): the replies it held are dropped, answering their callers.
        let run = std::panic::AssertUnwindSafe(|| handler(&key, batch));
        if std::panic::catch_unwind(run).is_err() {
            log::error!("an op handler panicked; its ops were dropped");
        }
        st = shard.state.lock();
        let more = match st.slots.get_mut(&key) {
            Some(slot) => {
                slot.busy = false;
                !slot.items.is_empty()
            }
            None => false,
        };
        if more {
            st.ready.push_back(key);
            shard.work.notify_one();
        } else {
            st.slots.remove(&key);
            if st.slots.is_empty() {
                shard.idle.notify_all();
                if st.stopping {
                    shard.work.notify_all();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn test_op_queue_keeps_per_key_order_with_several_threads_per_shard() {
        // 2 shards x 4 threads, 8 keys, 2000 items each: any reordering or
        // concurrent run of one key shows up as a gap or a repeat.
        let seen: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
        let running: Arc<Mutex<HashMap<u32, bool>>> = Arc::default();
        let (s2, r2) = (seen.clone(), running.clone());
        let q = ShardedOpQueue::<u32, u32>::new(
            "t",
            2,
            4,
            Arc::new(move |k, items| {
                assert!(
                    !r2.lock().insert(*k, true).unwrap_or(false),
                    "key {k} run twice at once"
                );
                std::thread::yield_now();
                s2.lock().entry(*k).or_default().extend(items);
                r2.lock().insert(*k, false);
            }),
        )
        .unwrap();

        for i in 0..2000 {
            for k in 0..8 {
                q.enqueue(k, i).unwrap();
            }
        }
        q.wait_idle();

        let seen = seen.lock();
        for k in 0..8 {
            assert_eq!(seen[&k], (0..2000).collect::<Vec<_>>(), "key {k}");
        }
    }

    #[test]
    fn test_op_queue_stop_runs_queued_items_then_refuses_new_ones() {
        let count = Arc::new(Mutex::new(0));
        let c = count.clone();
        let q = ShardedOpQueue::<u32, u32>::new(
            "t",
            1,
            1,
            Arc::new(move |_, items| {
                std::thread::sleep(Duration::from_millis(1));
                *c.lock() += items.len();
            }),
        )
        .unwrap();
        for i in 0..100 {
            q.enqueue(i % 3, i).unwrap();
        }

        q.stop();

        assert_eq!(*count.lock(), 100);
        assert_eq!(q.enqueue(0, 7), Err(7));
    }
}
