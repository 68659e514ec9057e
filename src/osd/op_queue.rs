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
//! `enqueue_or_run` is the fast dispatch: a PG with no slot gets one, marked
//! busy, and the item runs on the calling thread; what arrives meanwhile
//! waits in the slot and goes to the workers afterwards.
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
    handler: Handler<K, T>,
}

thread_local! {
    /// Set while this thread runs a handler, so that what the handler
    /// queues is not run inline, nested in it.
    static IN_HANDLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` as if this thread ran no handler, so that
/// [`ShardedOpQueue::enqueue_or_run`] may run items here. Only for the
/// handler of one queue handing an item to another queue, when it holds
/// nothing that queue's handler could need.
pub fn outside_handler<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_HANDLER.replace(false);
    let r = f();
    IN_HANDLER.set(was);
    r
}

/// Run a batch; a bug in one op must not wedge its key (the slot would stay
/// busy forever): the replies the batch held are dropped, answering their
/// callers.
fn run_guarded<K, T>(handler: &Handler<K, T>, key: &K, batch: Vec<T>) {
    let was = IN_HANDLER.replace(true);
    let run = std::panic::AssertUnwindSafe(|| handler(key, batch));
    if std::panic::catch_unwind(run).is_err() {
        log::error!("an op handler panicked; its ops were dropped");
    }
    IN_HANDLER.set(was);
}

/// Queue `item` behind the key's items, and the key for the workers if
/// it is neither queued nor running.
fn push<K: Hash + Eq + Clone, T>(shard: &Shard<K, T>, st: &mut ShardState<K, T>, key: K, item: T) {
    let slot = st.slots.entry(key.clone()).or_insert_with(|| Slot {
        items: VecDeque::new(),
        busy: false,
    });
    slot.items.push_back(item);
    if !slot.busy && slot.items.len() == 1 {
        st.ready.push_back(key);
        shard.work.notify_one();
    }
}

/// After a run of `key`: unmark it busy, and hand it to the workers if
/// items arrived meanwhile, or drop its slot.
fn finish<K: Hash + Eq + Clone, T>(shard: &Shard<K, T>, key: K, st: &mut ShardState<K, T>) {
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
                    handler: handler.clone(),
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
                let t = std::thread::Builder::new()
                    .name(format!("{name}-{si}-{ti}"))
                    .spawn(move || worker(&shard));
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
        push(shard, &mut st, key, item);
        Ok(())
    }

    /// Like [`ShardedOpQueue::enqueue`], but when the key has nothing queued
    /// or running, run the item here and now, on the calling thread, as a
    /// worker would (Ceph's fast dispatch). That spares the hand-off to a
    /// worker: a wakeup of a sleeping thread per op, which on a small VM
    /// costs as much as the op. Items queued for the key meanwhile wait and
    /// go to the workers afterwards. A thread already inside a handler (a
    /// worker, or an item run this way whose handler queues more) queues.
    ///
    /// `may_run` is asked once the key is marked busy (so a caller that
    /// waits for the queue to go idle after raising a flag `may_run` reads
    /// sees this item): when it says no, the item goes to the workers.
    pub fn enqueue_or_run(&self, key: K, item: T, may_run: impl FnOnce() -> bool) -> Result<(), T> {
        if IN_HANDLER.get() {
            return self.enqueue(key, item);
        }
        let shard = self.shard(&key);
        {
            let mut st = shard.state.lock();
            if st.stopping {
                return Err(item);
            }
            if st.slots.contains_key(&key) {
                push(shard, &mut st, key, item);
                return Ok(());
            }
            st.slots.insert(
                key.clone(),
                Slot {
                    items: VecDeque::new(),
                    busy: true,
                },
            );
        }
        if may_run() {
            run_guarded(&shard.handler, &key, vec![item]);
        } else if let Some(slot) = shard.state.lock().slots.get_mut(&key) {
            // Ahead of what arrived meanwhile; `finish` hands them over.
            slot.items.push_front(item);
        }
        finish(shard, key, &mut shard.state.lock());
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

fn worker<K: Hash + Eq + Clone, T>(shard: &Shard<K, T>) {
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
        run_guarded(&shard.handler, &key, batch);
        st = shard.state.lock();
        finish(shard, key, &mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
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
    fn test_enqueue_or_run_runs_idle_keys_here_and_keeps_order_with_queued_items() {
        // Each key's items arrive from 4 threads, half inline-capable, with
        // 2 workers per shard: runs of one key never overlap, and the items
        // of each submitting thread come out in its order.
        let seen: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
        let running: Arc<Mutex<HashMap<u32, bool>>> = Arc::default();
        let here = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s2, r2, h2) = (seen.clone(), running.clone(), here.clone());
        let q = Arc::new(
            ShardedOpQueue::<u32, u32>::new(
                "t",
                2,
                2,
                Arc::new(move |k, items| {
                    assert!(
                        !r2.lock().insert(*k, true).unwrap_or(false),
                        "key {k} run twice at once"
                    );
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    if name.starts_with("submit") {
                        h2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    s2.lock().entry(*k).or_default().extend(items);
                    r2.lock().insert(*k, false);
                }),
            )
            .unwrap(),
        );

        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let q = q.clone();
                std::thread::Builder::new()
                    .name(format!("submit-{t}"))
                    .spawn(move || {
                        for i in 0..500 {
                            for k in 0..4 {
                                let item = t * 1000 + i;
                                if t % 2 == 0 {
                                    q.enqueue_or_run(k, item, || true).unwrap();
                                } else {
                                    q.enqueue(k, item).unwrap();
                                }
                            }
                        }
                    })
                    .unwrap()
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        q.wait_idle();

        let seen = seen.lock();
        for k in 0..4 {
            let items = &seen[&k];
            assert_eq!(items.len(), 2000, "key {k}");
            for t in 0..4u32 {
                let mine: Vec<u32> = items.iter().copied().filter(|i| i / 1000 == t).collect();
                assert_eq!(
                    mine,
                    (0..500).map(|i| t * 1000 + i).collect::<Vec<_>>(),
                    "key {k}"
                );
            }
        }
        assert!(
            here.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "nothing ran inline"
        );
    }

    #[test]
    fn test_enqueue_or_run_hands_the_item_to_a_worker_when_it_may_not_run() {
        let ran_on: Arc<Mutex<Vec<String>>> = Arc::default();
        let r2 = ran_on.clone();
        let q = ShardedOpQueue::<u32, u32>::new(
            "worker",
            1,
            1,
            Arc::new(move |_, _| {
                let name = std::thread::current().name().unwrap_or("").to_string();
                r2.lock().push(name);
            }),
        )
        .unwrap();

        q.enqueue_or_run(1, 1, || false).unwrap();
        q.wait_idle();
        q.enqueue_or_run(1, 2, || true).unwrap();

        let ran_on = ran_on.lock();
        assert!(ran_on[0].starts_with("worker"), "{ran_on:?}");
        assert_eq!(ran_on[1], std::thread::current().name().unwrap_or(""));
    }

    #[test]
    fn test_enqueue_or_run_from_a_handler_queues_instead_of_nesting() {
        let depth = Arc::new(Mutex::new(0u32));
        let q: Arc<OnceLock<ShardedOpQueue<u32, u32>>> = Arc::default();
        let (d2, q2) = (depth.clone(), q.clone());
        let queue = ShardedOpQueue::<u32, u32>::new(
            "t",
            1,
            1,
            Arc::new(move |_, items| {
                // Nesting is per thread: a worker may run while the
                // submitter's own inline run is still going.
                thread_local! {
                    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
                }
                let depth = DEPTH.get() + 1;
                DEPTH.set(depth);
                let mut max = d2.lock();
                *max = (*max).max(depth);
                drop(max);
                for i in items {
                    if i > 0 {
                        q2.get().unwrap().enqueue_or_run(i, i - 1, || true).unwrap();
                    }
                }
                DEPTH.set(depth - 1);
            }),
        )
        .unwrap();
        let _ = q.set(queue);

        q.get().unwrap().enqueue_or_run(100, 50, || true).unwrap();
        q.get().unwrap().wait_idle();

        assert_eq!(*depth.lock(), 1, "a handler ran inside another");
        q.get().unwrap().stop();
        assert_eq!(q.get().unwrap().enqueue_or_run(0, 7, || true), Err(7));
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
