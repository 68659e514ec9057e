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
//! A handler never runs another handler nested in it. What it queues for
//! an idle PG through `enqueue_or_run` or `enqueue_here` is claimed
//! instead: the slot is made, busy, holding the item, and the thread runs
//! it once it has left its handler and released its own PG, before it
//! goes back to its caller or its queue. So a write's replica ops and
//! their replies run one after another on the thread that took the write,
//! without waking a worker of each OSD on the way:
//!
//! ```text
//!  FUSE thread: enqueue_or_run(pg@osd.0, Write)
//!    run Write (primary) ── enqueue_here(pg@osd.1, RepOp) ──> claimed
//!                        └─ enqueue_here(pg@osd.2, RepOp) ──> claimed
//!    finish pg@osd.0
//!    run RepOp@osd.1 ── enqueue_here(pg@osd.0, RepReply) ──> claimed
//!    run RepOp@osd.2 ── enqueue_here(pg@osd.0, RepReply) ──> queued behind
//!    run both RepReplies@osd.0 ── reply to the client
//! ```
//!
//! A claimed slot is busy, so whatever else arrives for that PG queues
//! behind the claimed items, in order, and goes to the workers when the
//! claiming thread is done with it. A thread runs at most `CLAIM_BUDGET`
//! claimed items in a pass and hands the rest to the workers. The fast
//! dispatch asks its `may_run` again before each claim (none runs on a
//! FUSE thread while PGs peer); a worker runs its claims as any item.
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

/// A claimed PG: run up to that many of its items here (handing what is
/// left to the workers; all of them for 0), and say how many ran.
type Claim = Box<dyn FnOnce(usize) -> usize>;

/// Items a thread runs from its claims before it hands the rest to the
/// workers: a few replicated writes' worth, so a thread that took one
/// client op (a FUSE thread) does not go on serving others' for long.
const CLAIM_BUDGET: usize = 16;

thread_local! {
    /// Set while this thread runs a handler, so that what the handler
    /// queues is not run inline, nested in it.
    static IN_HANDLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Handlers this thread is inside, counted also across
    /// [`outside_handler`]: claims run only when it is back to 0.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// PGs this thread claimed from inside a handler, in claim order.
    static CLAIMED: std::cell::RefCell<VecDeque<Claim>> = const { std::cell::RefCell::new(VecDeque::new()) };
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
    DEPTH.set(DEPTH.get() + 1);
    let run = std::panic::AssertUnwindSafe(|| handler(key, batch));
    if std::panic::catch_unwind(run).is_err() {
        log::error!("an op handler panicked; its ops were dropped");
    }
    DEPTH.set(DEPTH.get() - 1);
    IN_HANDLER.set(was);
}

/// From inside a handler: when `key` has no slot, make one, busy, holding
/// `item`, for this thread to run once it leaves its handler
/// ([`run_claims`]). Gives the item back when the key is queued or running
/// already, or when this thread is in no handler (it would never get to
/// the claim).
fn claim<K, T>(
    shard: &Arc<Shard<K, T>>,
    st: &mut ShardState<K, T>,
    key: K,
    item: T,
) -> Option<(K, T)>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
{
    if DEPTH.get() == 0 || st.slots.contains_key(&key) {
        return Some((key, item));
    }
    st.slots.insert(
        key.clone(),
        Slot {
            items: VecDeque::from([item]),
            busy: true,
        },
    );
    let shard = shard.clone();
    let run: Claim = Box::new(move |most| {
        let batch: Vec<T> = match shard.state.lock().slots.get_mut(&key) {
            Some(slot) => {
                let n = slot.items.len().min(MAX_BATCH).min(most);
                slot.items.drain(..n).collect()
            }
            None => Vec::new(),
        };
        let ran = batch.len();
        if ran > 0 {
            run_guarded(&shard.handler, &key, batch);
        }
        // Hands what is left (all of it when none ran here) to the workers.
        finish(&shard, key, &mut shard.state.lock());
        ran
    });
    CLAIMED.with(|c| c.borrow_mut().push_back(run));
    None
}

/// Once out of every handler: run the PGs this thread claimed, and those
/// their items claim in turn, up to [`CLAIM_BUDGET`] items and while
/// `may_run` says so; hand the rest to the workers.
fn run_claims(may_run: &dyn Fn() -> bool) {
    if DEPTH.get() > 0 {
        return;
    }
    let mut budget = CLAIM_BUDGET;
    while let Some(run) = CLAIMED.with(|c| c.borrow_mut().pop_front()) {
        let most = if budget > 0 && may_run() { budget } else { 0 };
        budget -= run(most);
    }
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

    /// Like [`ShardedOpQueue::enqueue`], but from inside a handler, an item
    /// for a key with nothing queued or running is claimed: this thread runs
    /// it once it has left its handler (see the module's doc), sparing the
    /// wake-up of a worker. Outside any handler, the same as `enqueue`.
    pub fn enqueue_here(&self, key: K, item: T) -> Result<(), T> {
        let shard = self.shard(&key);
        let mut st = shard.state.lock();
        if st.stopping {
            return Err(item);
        }
        if let Some((key, item)) = claim(shard, &mut st, key, item) {
            push(shard, &mut st, key, item);
        }
        Ok(())
    }

    /// Like [`ShardedOpQueue::enqueue`], but when the key has nothing queued
    /// or running, run the item here and now, on the calling thread, as a
    /// worker would (Ceph's fast dispatch). That spares the hand-off to a
    /// worker: a wakeup of a sleeping thread per op, which on a small VM
    /// costs as much as the op. Items queued for the key meanwhile wait and
    /// go to the workers afterwards. A thread already inside a handler (a
    /// worker, or an item run this way whose handler queues more) claims
    /// the item as [`ShardedOpQueue::enqueue_here`] does. After the item,
    /// the thread runs what it claimed.
    ///
    /// `may_run` is asked once the key is marked busy (so a caller that
    /// waits for the queue to go idle after raising a flag `may_run` reads
    /// sees this item), and again for each claimed key: when it says no,
    /// the item goes to the workers.
    pub fn enqueue_or_run(&self, key: K, item: T, may_run: impl Fn() -> bool) -> Result<(), T> {
        if IN_HANDLER.get() {
            return self.enqueue_here(key, item);
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
        run_claims(&may_run);
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
        finish(shard, key, &mut shard.state.lock());
        run_claims(&|| true);
        st = shard.state.lock();
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
        // of each submitting thread come out in its order. (How many run
        // inline depends on timing; the tests below pin where items run.)
        let seen: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
        let running: Arc<Mutex<HashMap<u32, bool>>> = Arc::default();
        let (s2, r2) = (seen.clone(), running.clone());
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

    type Log = Arc<Mutex<Vec<String>>>;

    /// A queue of one worker thread named `worker-0-0` whose handler logs
    /// `"<key>:<item> on <thread>"` and then runs `then(queue, log, key, item)`.
    fn logging_queue(
        then: impl Fn(&ShardedOpQueue<u32, u32>, &Log, u32, u32) + Send + Sync + 'static,
    ) -> (Arc<OnceLock<ShardedOpQueue<u32, u32>>>, Log) {
        let log: Log = Arc::default();
        let q: Arc<OnceLock<ShardedOpQueue<u32, u32>>> = Arc::default();
        let (l2, q2) = (log.clone(), q.clone());
        let queue = ShardedOpQueue::<u32, u32>::new(
            "worker",
            1,
            1,
            Arc::new(move |k, items| {
                for i in items {
                    let me = std::thread::current().name().unwrap_or("?").to_string();
                    l2.lock().push(format!("{k}:{i} on {me}"));
                    then(q2.get().unwrap(), &l2, *k, i);
                }
            }),
        )
        .unwrap();
        let _ = q.set(queue);
        (q, log)
    }

    fn me() -> String {
        std::thread::current().name().unwrap_or("?").to_string()
    }

    #[test]
    fn test_what_a_handler_queues_for_an_idle_key_runs_on_its_thread_after_it() {
        let (q, log) = logging_queue(|q, _, k, i| {
            if k == 1 {
                q.enqueue_here(2, i + 1).unwrap();
                // Not yet: the claimed item waits for this handler to end.
                q.enqueue_or_run(3, i + 2, || true).unwrap();
            }
        });

        q.get().unwrap().enqueue_or_run(1, 10, || true).unwrap();

        // Both ran before enqueue_or_run returned, here, in claim order.
        let me = me();
        assert_eq!(
            *log.lock(),
            vec![
                format!("1:10 on {me}"),
                format!("2:11 on {me}"),
                format!("3:12 on {me}")
            ]
        );
    }

    #[test]
    fn test_items_queued_behind_a_claimed_key_run_after_it_in_order() {
        let (q, log) = logging_queue(|q, _, k, _| {
            if k == 1 {
                q.enqueue_here(2, 0).unwrap();
                for i in 1..40 {
                    q.enqueue(2, i).unwrap();
                }
            }
        });

        q.get().unwrap().enqueue_or_run(1, 0, || true).unwrap();
        q.get().unwrap().wait_idle();

        let log = log.lock();
        let key2: Vec<u32> = log
            .iter()
            .filter_map(|l| l.strip_prefix("2:"))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(key2, (0..40).collect::<Vec<_>>());
        // The claimed item and its batch ran here; the rest went to the worker.
        assert_eq!(log[1], format!("2:0 on {}", me()));
        assert!(log.last().unwrap().ends_with("on worker-0-0"), "{log:?}");
    }

    #[test]
    fn test_claimed_keys_go_to_the_workers_when_items_may_not_run_here() {
        let (q, log) = logging_queue(|q, _, k, i| {
            if k == 1 {
                q.enqueue_here(2, i + 1).unwrap();
            }
        });
        let asked = std::cell::Cell::new(0);

        // Yes for the item itself, no for what it claimed.
        q.get()
            .unwrap()
            .enqueue_or_run(1, 10, || {
                asked.set(asked.get() + 1);
                asked.get() == 1
            })
            .unwrap();
        q.get().unwrap().wait_idle();

        assert_eq!(
            *log.lock(),
            vec![
                format!("1:10 on {}", me()),
                "2:11 on worker-0-0".to_string()
            ]
        );
    }

    #[test]
    fn test_enqueue_here_outside_a_handler_queues_for_the_workers() {
        let (q, log) = logging_queue(|_, _, _, _| {});

        q.get().unwrap().enqueue_here(5, 1).unwrap();
        q.get().unwrap().wait_idle();

        assert_eq!(*log.lock(), vec!["5:1 on worker-0-0".to_string()]);
    }

    #[test]
    fn test_claims_wait_until_the_thread_is_out_of_every_handler() {
        // Key 1's handler runs key 2 inline (outside_handler), whose handler
        // claims key 3: key 3 runs only once key 1's handler has ended.
        let (q, log) = logging_queue(|q, log, k, i| match k {
            1 => {
                outside_handler(|| q.enqueue_or_run(2, i, || true)).unwrap();
                log.lock().push("1 ends".into());
            }
            2 => q.enqueue_here(3, i).unwrap(),
            _ => {}
        });

        q.get().unwrap().enqueue_or_run(1, 7, || true).unwrap();

        let me = me();
        assert_eq!(
            *log.lock(),
            vec![
                format!("1:7 on {me}"),
                format!("2:7 on {me}"),
                "1 ends".to_string(),
                format!("3:7 on {me}")
            ]
        );
    }

    #[test]
    fn test_a_thread_runs_a_bounded_number_of_claimed_items() {
        // Key 0's handler claims 40 idle keys: this thread runs the first
        // CLAIM_BUDGET of them, the worker the rest.
        let (q, log) = logging_queue(|q, _, k, i| {
            if k == 0 {
                for key in 1..=40 {
                    q.enqueue_here(key, i).unwrap();
                }
            }
        });

        q.get().unwrap().enqueue_or_run(0, 5, || true).unwrap();
        q.get().unwrap().wait_idle();

        let log = log.lock();
        let here = format!(" on {}", me());
        let ran_here: Vec<&String> = log.iter().filter(|l| l.ends_with(&here)).collect();
        assert_eq!(ran_here.len(), 1 + CLAIM_BUDGET, "{log:?}");
        assert_eq!(log.len(), 41, "{log:?}");
        for key in 1..=40 {
            let want = if key as usize <= CLAIM_BUDGET {
                format!("{key}:5{here}")
            } else {
                format!("{key}:5 on worker-0-0")
            };
            assert!(log.contains(&want), "{want} missing: {log:?}");
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
