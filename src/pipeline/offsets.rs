//! Which Kafka offset may be committed for a partition.
//!
//! Records of one partition are acknowledged by Kinesis out of order (different lanes, retries).
//! The committed offset may only move to the first record that is *not yet* acknowledged: every
//! record below it is then delivered, whatever order the acknowledgements came in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::delivered::DeliveredRanges;

/// The delivery state of one partition's records between fetch and commit.
///
/// Offsets are registered in fetch order (strictly increasing, gaps allowed: compaction and
/// transaction markers leave holes) and acknowledged in any order.
#[derive(Debug, Default)]
pub struct Watermark {
    /// Registered records not yet released to the commit point, oldest first.
    pending: VecDeque<Pending>,
    /// One past the highest registered offset: the commit point when nothing is pending.
    next: Option<i64>,
    /// Acknowledgements so far: a commit is due when it changed, even if the commit point did
    /// not move (the records delivered above it go in the commit's metadata).
    acks: u64,
}

/// A registered record: its offset, whether it is delivered, and its Kafka timestamp (for the
/// freshness metrics; `None` when the record has none).
#[derive(Debug)]
struct Pending {
    offset: i64,
    acked: bool,
    timestamp_ms: Option<i64>,
}

impl Watermark {
    /// Starts tracking `offset`. Returns false (and tracks nothing) for an offset at or below one
    /// already registered: a re-fetched copy of a record that is already on its way.
    pub fn register(&mut self, offset: i64) -> bool {
        self.register_at(offset, None)
    }

    /// [`Self::register`] with the record's Kafka timestamp (milliseconds since the epoch).
    pub fn register_at(&mut self, offset: i64, timestamp_ms: Option<i64>) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            return false;
        }
        self.pending.push_back(Pending {
            offset,
            acked: false,
            timestamp_ms,
        });
        self.next = Some(offset + 1);
        true
    }

    /// Marks `offset` delivered. Unknown offsets are ignored (already released). Returns the
    /// record's timestamp when this call delivered it (not for a repeated or unknown offset).
    pub fn ack(&mut self, offset: i64) -> Option<i64> {
        let mut timestamp = None;
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |p| p.offset) {
            let record = &mut self.pending[i];
            if !record.acked {
                record.acked = true;
                timestamp = record.timestamp_ms;
                self.acks += 1;
            }
        }
        while self.pending.front().is_some_and(|p| p.acked) {
            self.pending.pop_front();
        }
        timestamp
    }

    /// The offset to commit: the first undelivered record, or one past the last registered one.
    /// `None` until anything has been registered.
    pub fn committable(&self) -> Option<i64> {
        match self.pending.front() {
            Some(p) => Some(p.offset),
            None => self.next,
        }
    }

    /// Records registered and not yet delivered (acknowledged records behind an unacknowledged
    /// one are not counted).
    pub fn undelivered(&self) -> usize {
        self.pending.iter().filter(|p| !p.acked).count()
    }

    /// The earliest timestamp of a record registered and not yet delivered. A scan of what is
    /// pending, asked once a second for the gauge, never per record.
    pub fn oldest_undelivered(&self) -> Option<i64> {
        self.pending
            .iter()
            .filter(|p| !p.acked)
            .filter_map(|p| p.timestamp_ms)
            .min()
    }

    pub fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }

    /// The delivered records above the commit point, as runs of consecutive offsets `[start,
    /// end)` (a hole in the offsets, left by compaction or a transaction marker, ends a run:
    /// only offsets that were delivered are named).
    /// At most `limit` runs, the lowest: no metadata holds more.
    pub fn delivered_runs(&self, limit: usize) -> Vec<(i64, i64)> {
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for p in self.pending.iter().filter(|p| p.acked) {
            let full = runs.len() == limit;
            match runs.last_mut() {
                Some(run) if run.1 == p.offset => run.1 += 1,
                _ if full => break,
                _ => runs.push((p.offset, p.offset + 1)),
            }
        }
        runs
    }
}

/// What a commit of a partition says: the offset and the records delivered above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPoint {
    pub offset: i64,
    /// Delivered offsets above `offset` (sorted, disjoint).
    pub delivered: DeliveredRanges,
    /// The acknowledgements it reflects (see [`PartitionProgress::commit_point_sent`]).
    acks: u64,
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
    /// Offsets above the committed one that the last commit (an earlier owner's) says were
    /// delivered: skipped when fetched, and named again in this owner's commits until the commit
    /// point passes them.
    inherited: DeliveredRanges,
    /// The acknowledgements the last commit sent reflected.
    sent_acks: Mutex<Option<u64>>,
    /// Names the route's destination in the commit metadata ([`super::delivered::fingerprint`]).
    pub fingerprint: Arc<str>,
}

impl PartitionProgress {
    pub fn new(topic: Arc<str>, partition: i32) -> Arc<Self> {
        Self::inheriting(topic, partition, "".into(), DeliveredRanges::default())
    }

    /// A partition of the destination `fingerprint` whose last commit names `inherited` as
    /// delivered above its offset.
    pub fn inheriting(
        topic: Arc<str>,
        partition: i32,
        fingerprint: Arc<str>,
        inherited: DeliveredRanges,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic,
            partition,
            watermark: Mutex::new(Watermark::default()),
            committed: Mutex::new(None),
            sent: Mutex::new(None),
            revoked: AtomicBool::new(false),
            inherited,
            sent_acks: Mutex::new(None),
            fingerprint,
        })
    }

    /// Whether the last commit said `offset` was delivered already (by an earlier owner).
    pub fn was_delivered(&self, offset: i64) -> bool {
        !self.inherited.is_empty() && self.inherited.contains(offset)
    }

    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Registers (offset, timestamp) pairs in fetch order under one lock; `keep` hears for each
    /// whether it is new.
    pub fn register_all(
        &self,
        records: impl IntoIterator<Item = (i64, Option<i64>)>,
        mut keep: impl FnMut(bool),
    ) {
        let mut watermark = self.watermark.lock().unwrap();
        for (offset, timestamp_ms) in records {
            keep(watermark.register_at(offset, timestamp_ms));
        }
    }

    pub fn register(&self, offset: i64) -> bool {
        self.register_at(offset, None)
    }

    pub fn register_at(&self, offset: i64, timestamp_ms: Option<i64>) -> bool {
        self.watermark
            .lock()
            .unwrap()
            .register_at(offset, timestamp_ms)
    }

    pub fn ack(&self, offset: i64) {
        self.watermark.lock().unwrap().ack(offset);
    }

    /// Acknowledges several offsets under one lock (a batch's records of this partition);
    /// `delivered` hears the timestamp of each record this delivered that has one.
    pub fn ack_all(&self, offsets: impl IntoIterator<Item = i64>, mut delivered: impl FnMut(i64)) {
        let mut watermark = self.watermark.lock().unwrap();
        for offset in offsets {
            if let Some(timestamp_ms) = watermark.ack(offset) {
                delivered(timestamp_ms);
            }
        }
    }

    /// The earliest timestamp of this partition's records not yet delivered.
    pub fn oldest_undelivered(&self) -> Option<i64> {
        self.watermark.lock().unwrap().oldest_undelivered()
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

    /// What to commit now, with (at most `max_runs` runs of) the records delivered above it:
    /// when the commit point moved since the last confirmed commit, or — with metadata on
    /// (`max_runs` > 0) — records above it were delivered since the last one sent.
    pub fn commit_point_due(&self, max_runs: usize) -> Option<CommitPoint> {
        let watermark = self.watermark.lock().unwrap();
        let offset = watermark.committable()?;
        let acks = watermark.acks;
        let moved = *self.committed.lock().unwrap() != Some(offset);
        let delivered_since = max_runs > 0 && *self.sent_acks.lock().unwrap() != Some(acks);
        if !moved && !delivered_since {
            return None;
        }
        let mut runs = watermark.delivered_runs(max_runs);
        drop(watermark);
        runs.extend(self.inherited.above(offset).take(max_runs));
        Some(CommitPoint {
            offset,
            delivered: DeliveredRanges::from_ranges(runs),
            acks,
        })
    }

    /// A commit of `point` was sent (its metadata is not sent again until more is delivered).
    pub fn commit_point_sent(&self, point: &CommitPoint) {
        *self.sent_acks.lock().unwrap() = Some(point.acks);
    }

    /// An asynchronous commit failed: the next one sends the metadata again, changed or not.
    pub fn commit_failed(&self) {
        *self.sent_acks.lock().unwrap() = None;
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
    fn the_oldest_undelivered_timestamp_follows_the_acknowledgements() {
        let mut w = Watermark::default();
        assert_eq!(w.oldest_undelivered(), None);
        // Producer timestamps need not follow offsets; a record without one is not counted.
        w.register_at(0, Some(5_000));
        w.register_at(1, Some(2_000));
        w.register_at(2, None);
        w.register_at(3, Some(9_000));
        assert_eq!(w.oldest_undelivered(), Some(2_000));
        assert_eq!(w.ack(1), Some(2_000), "delivered now: its timestamp");
        assert_eq!(w.ack(1), None, "a repeated ack delivers nothing");
        assert_eq!(w.oldest_undelivered(), Some(5_000));
        assert_eq!(w.ack(2), None, "no timestamp");
        w.ack(0);
        assert_eq!(w.oldest_undelivered(), Some(9_000));
        w.ack(3);
        assert_eq!(w.oldest_undelivered(), None);
        assert!(w.is_drained());
    }

    #[test]
    fn a_commit_point_names_the_runs_delivered_above_it_and_what_it_inherited() {
        let inherited = DeliveredRanges::from_ranges([(3, 5), (8, 10)]);
        let p = PartitionProgress::inheriting("t".into(), 0, "fp".into(), inherited);
        assert!(p.was_delivered(4) && !p.was_delivered(5) && p.was_delivered(9));
        for o in 0..3 {
            p.register(o);
        }
        p.ack(1);
        p.ack(2);
        let point = p.commit_point_due(100).unwrap();
        assert_eq!(point.offset, 0);
        assert_eq!(point.delivered.ranges(), &[(1, 5), (8, 10)]);
        p.commit_point_sent(&point);
        p.mark_committed(0);
        assert_eq!(p.commit_point_due(100), None, "nothing new delivered");
        // 3 and 4 come as inherited (skipped: registered and acknowledged), then 5 is delivered.
        for o in 3..6 {
            p.register(o);
            p.ack(o);
        }
        let point = p
            .commit_point_due(100)
            .expect("more delivered above the same offset");
        assert_eq!(point.offset, 0);
        assert_eq!(point.delivered.ranges(), &[(1, 6), (8, 10)]);
        p.ack(0);
        let point = p.commit_point_due(100).unwrap();
        assert_eq!(point.offset, 6);
        assert_eq!(
            point.delivered.ranges(),
            &[(8, 10)],
            "what is left of the inherited"
        );
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
