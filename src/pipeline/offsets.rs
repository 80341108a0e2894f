//! Which Kafka offset may be committed for a partition.
//!
//! Records of one partition are acknowledged by Kinesis out of order (different lanes, retries).
//! The committed offset may only move to the first record that is *not yet* acknowledged: every
//! record below it is then delivered, whatever order the acknowledgements came in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The delivery state of one partition's records between fetch and commit.
///
/// Offsets are registered in fetch order (strictly increasing, gaps allowed: compaction and
/// transaction markers leave holes) and acknowledged in any order.
#[derive(Debug, Default)]
pub struct Watermark {
    /// Registered offsets not yet released to the commit point, oldest first, with their ack flag.
    pending: VecDeque<(i64, bool)>,
    /// One past the highest registered offset: the commit point when nothing is pending.
    next: Option<i64>,
}

impl Watermark {
    /// Starts tracking `offset`. Returns false (and tracks nothing) for an offset at or below one
    /// already registered: a re-fetched copy of a record that is already on its way.
    pub fn register(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            return false;
        }
        self.pending.push_back((offset, false));
        self.next = Some(offset + 1);
        true
    }

    /// Marks `offset` delivered. Unknown offsets are ignored (already released).
    pub fn ack(&mut self, offset: i64) {
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            self.pending[i].1 = true;
        }
        while self.pending.front().is_some_and(|&(_, acked)| acked) {
            self.pending.pop_front();
        }
    }

    /// The offset to commit: the first undelivered record, or one past the last registered one.
    /// `None` until anything has been registered.
    pub fn committable(&self) -> Option<i64> {
        match self.pending.front() {
            Some(&(offset, _)) => Some(offset),
            None => self.next,
        }
    }

    /// Records registered and not yet delivered (acknowledged records behind an unacknowledged
    /// one are not counted).
    pub fn undelivered(&self) -> usize {
        self.pending.iter().filter(|(_, acked)| !acked).count()
    }

    pub fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }
}

/// One assigned partition, shared by the consumer thread (register, commit) and the lanes (ack).
///
/// A new `PartitionProgress` is made for every assignment, so acknowledgements for records fetched
/// under an earlier assignment can never move the commit point of a later one.
#[derive(Debug)]
pub struct PartitionProgress {
    pub topic: Arc<str>,
    pub partition: i32,
    watermark: Mutex<Watermark>,
    /// The last offset the broker confirmed as committed for this assignment.
    committed: Mutex<Option<i64>>,
    /// The last offset sent in an asynchronous commit (not confirmed).
    sent: Mutex<Option<i64>>,
    /// Set when the partition is revoked or lost: records fetched for this assignment and not
    /// yet handed to a lane are dropped (the next owner reads them from the committed offset).
    revoked: AtomicBool,
}

impl PartitionProgress {
    pub fn new(topic: Arc<str>, partition: i32) -> Arc<Self> {
        Arc::new(Self {
            topic,
            partition,
            watermark: Mutex::new(Watermark::default()),
            committed: Mutex::new(None),
            sent: Mutex::new(None),
            revoked: AtomicBool::new(false),
        })
    }

    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Registers offsets in fetch order under one lock; `keep` hears for each whether it is new.
    pub fn register_all(&self, offsets: impl IntoIterator<Item = i64>, mut keep: impl FnMut(bool)) {
        let mut watermark = self.watermark.lock().unwrap();
        for offset in offsets {
            keep(watermark.register(offset));
        }
    }

    pub fn register(&self, offset: i64) -> bool {
        self.watermark.lock().unwrap().register(offset)
    }

    pub fn ack(&self, offset: i64) {
        self.watermark.lock().unwrap().ack(offset);
    }

    /// Acknowledges several offsets under one lock (a batch's records of this partition).
    pub fn ack_all(&self, offsets: impl IntoIterator<Item = i64>) {
        let mut watermark = self.watermark.lock().unwrap();
        for offset in offsets {
            watermark.ack(offset);
        }
    }

    pub fn committable(&self) -> Option<i64> {
        self.watermark.lock().unwrap().committable()
    }

    pub fn is_drained(&self) -> bool {
        self.watermark.lock().unwrap().is_drained()
    }

    pub fn undelivered(&self) -> usize {
        self.watermark.lock().unwrap().undelivered()
    }

    /// The offset to commit now, if it moved since the last confirmed commit.
    pub fn commit_due(&self) -> Option<i64> {
        let committable = self.committable()?;
        let committed = *self.committed.lock().unwrap();
        (committed != Some(committable)).then_some(committable)
    }

    /// The highest offset committed, or sent to be committed, under this assignment.
    pub fn last_commit(&self) -> Option<i64> {
        let committed = *self.committed.lock().unwrap();
        let sent = *self.sent.lock().unwrap();
        committed.max(sent)
    }

    /// An asynchronous commit of `offset` was handed to the client.
    pub fn commit_sent(&self, offset: i64) {
        let mut sent = self.sent.lock().unwrap();
        if sent.is_none_or(|s| s < offset) {
            *sent = Some(offset);
        }
    }

    /// The offset of the last record fetched (registered).
    pub fn fetched(&self) -> Option<i64> {
        self.watermark.lock().unwrap().next.map(|next| next - 1)
    }

    pub fn mark_committed(&self, offset: i64) {
        let mut committed = self.committed.lock().unwrap();
        if committed.is_none_or(|c| c < offset) {
            *committed = Some(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_registered_means_nothing_to_commit() {
        let w = Watermark::default();
        assert_eq!(w.committable(), None);
    }

    #[test]
    fn commit_point_waits_for_the_oldest_unacknowledged_record() {
        let mut w = Watermark::default();
        for o in 10..15 {
            assert!(w.register(o));
        }
        assert_eq!(w.committable(), Some(10));
        // Acks arrive out of order: 12, 14, 11 — 10 is still missing.
        w.ack(12);
        w.ack(14);
        w.ack(11);
        assert_eq!(w.committable(), Some(10));
        assert_eq!(w.undelivered(), 2);
        w.ack(10);
        // 10, 11, 12 delivered; 13 still pending.
        assert_eq!(w.committable(), Some(13));
        w.ack(13);
        assert_eq!(w.committable(), Some(15));
        assert!(w.is_drained());
    }

    #[test]
    fn gaps_in_offsets_are_allowed() {
        let mut w = Watermark::default();
        for o in [3, 7, 8, 20] {
            w.register(o);
        }
        w.ack(8);
        w.ack(3);
        assert_eq!(w.committable(), Some(7));
        w.ack(7);
        assert_eq!(w.committable(), Some(20));
        w.ack(20);
        assert_eq!(w.committable(), Some(21));
    }

    #[test]
    fn refetched_offsets_are_not_tracked_twice() {
        let mut w = Watermark::default();
        assert!(w.register(5));
        assert!(w.register(6));
        assert!(!w.register(5));
        assert!(!w.register(6));
        assert!(w.register(7));
        w.ack(5);
        w.ack(6);
        assert_eq!(w.committable(), Some(7));
    }

    #[test]
    fn duplicate_and_unknown_acks_do_not_move_the_commit_point() {
        let mut w = Watermark::default();
        w.register(1);
        w.register(2);
        w.ack(2);
        w.ack(2);
        w.ack(99);
        assert_eq!(w.committable(), Some(1));
    }

    #[test]
    fn every_ack_order_ends_at_the_same_commit_point() {
        // Exhaustive over the permutations of 6 records: the commit point never passes an
        // unacknowledged record, and ends one past the last.
        fn permutations(items: Vec<i64>) -> Vec<Vec<i64>> {
            if items.len() <= 1 {
                return vec![items];
            }
            let mut out = Vec::new();
            for i in 0..items.len() {
                let mut rest = items.clone();
                let head = rest.remove(i);
                for mut p in permutations(rest) {
                    p.insert(0, head);
                    out.push(p);
                }
            }
            out
        }
        for order in permutations((0..6).collect()) {
            let mut w = Watermark::default();
            (0..6).for_each(|o| {
                w.register(o);
            });
            let mut acked = [false; 6];
            for o in order {
                w.ack(o);
                acked[o as usize] = true;
                let first_missing = acked.iter().position(|a| !a).map_or(6, |i| i as i64);
                assert_eq!(w.committable(), Some(first_missing));
            }
        }
    }

    #[test]
    fn commit_due_only_when_moved() {
        let p = PartitionProgress::new("t".into(), 0);
        assert_eq!(p.commit_due(), None);
        p.register(0);
        assert_eq!(p.commit_due(), Some(0));
        p.mark_committed(0);
        assert_eq!(p.commit_due(), None);
        p.ack(0);
        assert_eq!(p.commit_due(), Some(1));
    }
}
