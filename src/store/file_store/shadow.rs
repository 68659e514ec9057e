//! Which journaled bytes replay must leave alone: those a later in-place
//! write covers.
//!
//! An in-place overwrite (`Step::InPlace`) is in its object's file before its
//! record is written, and the record carries only the range. Replay
//! re-applies the journaled `Write` and `Zero` steps in order; where a later
//! record's in-place write covers some of their bytes, the file already holds
//! the newer bytes there, and writing the older ones over them would undo an
//! acknowledged write. A first pass over the journal builds this index; the
//! second pass (the replay proper) asks it, for each journaled step, which
//! of its bytes later records overwrote in place, and skips them.
//!
//! A later in-place write shadows an earlier step only while the object
//! keeps its file and nothing read the file in between: a `Place`, `Clone`
//! (either side), `Truncate` or `Remove` of the object, or the removal of its
//! collection, ends the shadow (a barrier). What makes skipping correct is
//! the live path's rule (`Inner::in_place`, `Inner::replay_marks`): no
//! in-place write goes into a file that a record since the last checkpoint
//! grew, cut, re-created or read, so replay never cuts its bytes at an older
//! size nor copies bytes newer than a record saw. The barriers only keep a
//! skip from reaching across such a step should that rule ever change.

use std::collections::HashMap;

use super::{CollId, ObjectKey, Step, TxOp};

/// One object's in-place writes and barriers, in journal order.
enum Event {
    InPlace { seq: u64, off: u64, len: u64 },
    Barrier { seq: u64 },
}

impl Event {
    fn seq(&self) -> u64 {
        match self {
            Event::InPlace { seq, .. } | Event::Barrier { seq } => *seq,
        }
    }
}

/// The in-place writes of the journal, by object (see the module comment).
#[derive(Default)]
pub(super) struct Shadows {
    by_key: HashMap<ObjectKey, Vec<Event>>,
    /// Seqs of records that removed a collection.
    coll_removed: HashMap<CollId, Vec<u64>>,
}

impl Shadows {
    /// Note record `seq`'s steps; records must come in journal order.
    pub fn note(&mut self, seq: u64, steps: &[Step]) {
        for step in steps {
            match step {
                Step::InPlace { key, off, len } => self.push(
                    key,
                    Event::InPlace {
                        seq,
                        off: *off,
                        len: *len,
                    },
                ),
                Step::Place { key, .. }
                | Step::Op(TxOp::Truncate { key, .. })
                | Step::Op(TxOp::Remove(key)) => self.push(key, Event::Barrier { seq }),
                Step::Op(TxOp::Clone { from, to }) => {
                    self.push(from, Event::Barrier { seq });
                    self.push(to, Event::Barrier { seq });
                }
                Step::Op(TxOp::RemoveCollection(c)) => {
                    self.coll_removed.entry(*c).or_default().push(seq)
                }
                _ => {}
            }
        }
    }

    fn push(&mut self, key: &ObjectKey, ev: Event) {
        // Every object's barriers, also before its first in-place write: a
        // step before a barrier must not skip under a write after it.
        self.by_key.entry(key.clone()).or_default().push(ev);
    }

    /// The ranges of `key` that records after `seq` overwrote in place
    /// before a barrier, sorted and merged. A barrier anywhere in record
    /// `seq` itself counts (the live path never lets an in-place write
    /// follow one of the same object in one checkpoint interval).
    pub fn later(&self, key: &ObjectKey, seq: u64) -> Vec<(u64, u64)> {
        let Some(events) = self.by_key.get(key) else {
            return Vec::new();
        };
        let stop = self
            .coll_removed
            .get(&key.coll)
            .and_then(|seqs| seqs.iter().find(|s| **s >= seq).copied())
            .unwrap_or(u64::MAX);
        let first = events.partition_point(|e| e.seq() < seq);
        let mut ranges = Vec::new();
        for ev in &events[first..] {
            match *ev {
                _ if ev.seq() >= stop => break,
                Event::Barrier { .. } => break,
                Event::InPlace { seq: s, off, len } if s > seq && len > 0 => {
                    ranges.push((off, off.saturating_add(len)))
                }
                Event::InPlace { .. } => {}
            }
        }
        merge(ranges)
    }
}

/// Sort and merge overlapping or touching `[start, end)` ranges.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The parts of `[off, off + len)` outside `covered` (sorted, merged), as
/// `(offset, length)` pieces in order.
pub(super) fn uncovered(off: u64, len: u64, covered: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let end = off.saturating_add(len);
    let mut pieces = Vec::new();
    let mut pos = off;
    for &(a, b) in covered {
        if b <= pos {
            continue;
        }
        if a >= end {
            break;
        }
        if a > pos {
            pieces.push((pos, a - pos));
        }
        pos = pos.max(b);
        if pos >= end {
            break;
        }
    }
    if pos < end {
        pieces.push((pos, end - pos));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::super::tests::key;
    use super::*;

    fn in_place(name: &str, off: u64, len: u64) -> Step {
        Step::InPlace {
            key: key(name),
            off,
            len,
        }
    }

    #[test]
    fn test_uncovered_pieces_are_the_range_minus_the_covered_ranges() {
        assert_eq!(uncovered(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(uncovered(0, 100, &[(0, 100)]), vec![]);
        assert_eq!(
            uncovered(0, 100, &[(10, 20), (50, 60)]),
            vec![(0, 10), (20, 30), (60, 40)]
        );
        assert_eq!(uncovered(10, 10, &[(0, 12), (18, 40)]), vec![(12, 6)]);
        assert_eq!(uncovered(10, 10, &[(0, 5), (30, 40)]), vec![(10, 10)]);
        assert_eq!(uncovered(10, 0, &[]), vec![]);
    }

    #[test]
    fn test_later_in_place_ranges_stop_at_a_barrier_and_ignore_earlier_ones() {
        let mut s = Shadows::default();
        s.note(1, &[in_place("a", 0, 10)]);
        s.note(3, &[in_place("a", 20, 10), in_place("b", 0, 5)]);
        s.note(4, &[in_place("a", 25, 10)]);
        s.note(
            5,
            &[Step::Op(TxOp::Truncate {
                key: key("a"),
                size: 100,
            })],
        );
        s.note(6, &[in_place("a", 50, 10)]);

        assert_eq!(s.later(&key("a"), 0), vec![(0, 10), (20, 35)]);
        assert_eq!(s.later(&key("a"), 2), vec![(20, 35)]);
        assert_eq!(s.later(&key("a"), 3), vec![(25, 35)]);
        // The in-place write at 6 is past the truncate at 5, which in the
        // asking record itself also ends the shadow.
        assert_eq!(s.later(&key("a"), 4), vec![]);
        assert_eq!(s.later(&key("a"), 5), vec![]);
        assert_eq!(s.later(&key("b"), 2), vec![(0, 5)]);
        assert_eq!(s.later(&key("c"), 0), vec![]);
    }

    #[test]
    fn test_removing_the_collection_ends_every_shadow_in_it() {
        let mut s = Shadows::default();
        s.note(2, &[Step::Op(TxOp::RemoveCollection(key("a").coll))]);
        s.note(3, &[in_place("a", 0, 10)]);
        assert_eq!(s.later(&key("a"), 1), vec![]);
        assert_eq!(s.later(&key("a"), 2), vec![]);
        assert_eq!(s.later(&key("a"), 3), vec![]);
    }
}
