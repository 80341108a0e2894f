//! Collecting a lane's records into PutRecords-sized batches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;

use super::Record;

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub per_key: PerKey,
}

/// How much of one partition key a batch may hold: what strict ordering needs so that a key is in
/// at most one entry of a request (entries of one request succeed or fail independently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerKey {
    Unlimited,
    /// One record per key (strict ordering, records sent as they are).
    OneRecord,
    /// A key's records must fit in one aggregate of this many bytes (strict, aggregated).
    Aggregate(usize),
}

/// What a record takes of an aggregate's room under [`PerKey::Aggregate`]: more than the
/// aggregator charges it (the partition key is counted per record), so whatever the batcher
/// lets in, the aggregator can keep in one aggregate.
fn aggregate_cost(record: &Record) -> usize {
    record.size() + 20
}

/// Under a per-key limit, records of full keys are stepped over (and keep their place in the
/// queue) so the batch can still fill with other keys — up to this many, then the batch leaves.
const MAX_HELD_BACK: usize = 5000;

/// The room an aggregate always spends on itself and its key: magic, checksum, key table entry.
const AGGREGATE_OVERHEAD: usize = 64;

/// Pulls records from a lane's queue into batches that respect [`BatchLimits`].
///
/// The consumer thread hands records over in chunks (all of one poll round for this lane), not
/// one by one: a send wakes the lane's task, and a wake per record cost more than the record.
pub struct Batcher {
    rx: UnboundedReceiver<Vec<Record>>,
    limits: BatchLimits,
    /// Received and not yet batched, in arrival order.
    queued: VecDeque<Record>,
}

impl Batcher {
    pub fn new(rx: UnboundedReceiver<Vec<Record>>, limits: BatchLimits) -> Self {
        Self {
            rx,
            limits,
            queued: VecDeque::new(),
        }
    }

    /// The next batch: waits for a first record, then takes more until a limit is reached or the
    /// linger time has passed. `None` once the queue is closed and empty.
    pub async fn next_batch(&mut self) -> Option<Vec<Record>> {
        while self.queued.is_empty() {
            let chunk = self.rx.recv().await?;
            self.queued.extend(chunk);
        }
        let mut batch = Vec::with_capacity(self.limits.max_records.min(self.queued.len()));
        let mut bytes = 0;
        // Under a per-key limit: how much of each key (by hash) the batch holds, the keys that
        // are full (their later records wait too, keeping their order), and those records.
        let mut keys: HashMap<u64, usize> = HashMap::new();
        let mut full_keys: HashSet<u64> = HashSet::new();
        let mut held_back: VecDeque<Record> = VecDeque::new();
        let deadline = Instant::now() + self.limits.linger;
        'fill: loop {
            while let Some(next) = self.queued.pop_front() {
                if batch.len() >= self.limits.max_records
                    || (!batch.is_empty() && bytes + next.size() > self.limits.max_bytes)
                    || held_back.len() >= MAX_HELD_BACK
                {
                    self.queued.push_front(next);
                    break 'fill;
                }
                if !self.key_has_room(&mut keys, &mut full_keys, &next) {
                    held_back.push_back(next);
                    continue;
                }
                bytes += next.size();
                batch.push(next);
            }
            let chunk = match self.rx.try_recv() {
                Ok(chunk) => chunk,
                Err(TryRecvError::Disconnected) => break,
                // Records were held back: the lane has a backlog, lingering only delays it.
                Err(TryRecvError::Empty) if !held_back.is_empty() => break,
                Err(TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            self.queued.extend(chunk);
        }
        // Held-back records came before everything still queued.
        while let Some(r) = held_back.pop_back() {
            self.queued.push_front(r);
        }
        Some(batch)
    }

    /// Whether `record` fits its key's share of the batch; counts it in when it does. Once a
    /// key's record did not fit, none of its later ones does (they would overtake it). Two keys
    /// with one hash only make a batch smaller.
    fn key_has_room(
        &self,
        keys: &mut HashMap<u64, usize>,
        full_keys: &mut HashSet<u64>,
        record: &Record,
    ) -> bool {
        let (limit, cost) = match self.limits.per_key {
            PerKey::Unlimited => return true,
            PerKey::OneRecord => (1, 1),
            PerKey::Aggregate(max) => (
                max.saturating_sub(AGGREGATE_OVERHEAD),
                aggregate_cost(record),
            ),
        };
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(&record.partition_key);
        if full_keys.contains(&hash) {
            return false;
        }
        let used = keys.entry(hash).or_insert(0);
        // A key's first record always fits (alone, it needs no aggregate).
        if *used != 0 && *used + cost > limit {
            full_keys.insert(hash);
            return false;
        }
        *used += cost;
        true
    }

    /// Closes the queue and returns every record still in it (used when the lane stops early).
    pub fn close_and_drain(&mut self) -> Vec<Record> {
        self.rx.close();
        let mut rest: Vec<Record> = self.queued.drain(..).collect();
        while let Ok(chunk) = self.rx.try_recv() {
            rest.extend(chunk);
        }
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::offsets::PartitionProgress;
    use tokio::sync::mpsc::unbounded_channel;

    fn record(key: &str, data_len: usize, offset: i64) -> Record {
        Record {
            partition_key: key.to_owned(),
            data: vec![b'x'; data_len].into(),
            explicit_hash_key: None,
            progress: PartitionProgress::new("t".into(), 0),
            offset,
        }
    }

    fn limits(max_records: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_records,
            max_bytes,
            linger: Duration::from_millis(5),
            per_key: PerKey::Unlimited,
        }
    }

    #[tokio::test]
    async fn batches_stop_at_the_record_count() {
        let (tx, rx) = unbounded_channel();
        for i in 0..12 {
            tx.send(vec![record("k", 1, i)]).unwrap();
        }
        drop(tx);
        let mut b = Batcher::new(rx, limits(5, 1 << 20));
        let mut got = Vec::new();
        while let Some(batch) = b.next_batch().await {
            got.push(batch.len());
        }
        assert_eq!(got, vec![5, 5, 2]);
    }

    #[tokio::test]
    async fn a_chunk_is_split_over_batches_in_order() {
        let (tx, rx) = unbounded_channel();
        tx.send((0..7).map(|i| record("k", 1, i)).collect())
            .unwrap();
        tx.send((7..9).map(|i| record("k", 1, i)).collect())
            .unwrap();
        drop(tx);
        let mut b = Batcher::new(rx, limits(4, 1 << 20));
        let mut offsets = Vec::new();
        while let Some(batch) = b.next_batch().await {
            offsets.push(batch.iter().map(|r| r.offset).collect::<Vec<_>>());
        }
        assert_eq!(offsets, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8]]);
    }

    #[tokio::test]
    async fn batches_stop_before_the_byte_limit_and_keep_order() {
        let (tx, rx) = unbounded_channel();
        // Each record is 1 (key) + 99 (data) = 100 bytes; 250 bytes hold two.
        for i in 0..5 {
            tx.send(vec![record("k", 99, i)]).unwrap();
        }
        drop(tx);
        let mut b = Batcher::new(rx, limits(500, 250));
        let mut offsets = Vec::new();
        while let Some(batch) = b.next_batch().await {
            assert!(batch.iter().map(Record::size).sum::<usize>() <= 250);
            offsets.push(batch.iter().map(|r| r.offset).collect::<Vec<_>>());
        }
        assert_eq!(offsets, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[tokio::test]
    async fn a_single_record_at_the_byte_limit_gets_its_own_batch() {
        let (tx, rx) = unbounded_channel();
        tx.send(vec![record("k", 10, 0)]).unwrap();
        tx.send(vec![record("k", 249, 1)]).unwrap();
        tx.send(vec![record("k", 10, 2)]).unwrap();
        drop(tx);
        let mut b = Batcher::new(rx, limits(500, 250));
        let mut lens = Vec::new();
        while let Some(batch) = b.next_batch().await {
            lens.push(batch.len());
        }
        assert_eq!(lens, vec![1, 1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_after_the_linger_time() {
        let (tx, rx) = unbounded_channel();
        tx.send(vec![record("k", 1, 0)]).unwrap();
        let mut b = Batcher::new(
            rx,
            BatchLimits {
                max_records: 500,
                max_bytes: 1 << 20,
                linger: Duration::from_millis(50),
                per_key: PerKey::Unlimited,
            },
        );
        let started = Instant::now();
        let batch = b.next_batch().await.unwrap();
        assert_eq!(batch.len(), 1);
        // With the clock paused, time only moves when every task waits: the batch left exactly at
        // the linger deadline, not before.
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        drop(tx);
    }

    #[tokio::test]
    async fn strict_batches_hold_one_record_per_key() {
        let (tx, rx) = unbounded_channel();
        let keys = ["a", "b", "a", "c", "b", "d"];
        tx.send(keys.iter().zip(0..).map(|(k, i)| record(k, 1, i)).collect())
            .unwrap();
        drop(tx);
        let mut b = Batcher::new(
            rx,
            BatchLimits {
                per_key: PerKey::OneRecord,
                ..limits(500, 1 << 20)
            },
        );
        let mut offsets = Vec::new();
        while let Some(batch) = b.next_batch().await {
            offsets.push(batch.iter().map(|r| r.offset).collect::<Vec<_>>());
        }
        // A key's second record waits for the next batch, which other keys fill meanwhile; each
        // key keeps its order.
        assert_eq!(offsets, vec![vec![0, 1, 3, 5], vec![2, 4]]);
    }

    /// The sizes of the batches `records`, queued at once, are cut into.
    async fn batch_lens(records: Vec<Record>, limits: BatchLimits) -> Vec<usize> {
        let (tx, rx) = unbounded_channel();
        tx.send(records).unwrap();
        drop(tx);
        let mut b = Batcher::new(rx, limits);
        let mut lens = Vec::new();
        while let Some(batch) = b.next_batch().await {
            lens.push(batch.len());
        }
        lens
    }

    #[tokio::test]
    async fn strict_aggregated_batches_hold_what_one_aggregate_of_a_key_can() {
        let strict = BatchLimits {
            per_key: PerKey::Aggregate(300),
            ..limits(500, 1 << 20)
        };
        // Each record costs 1 (key) + 100 + 20 = 121 of the 300 - 64 = 236 a key may have.
        let big = (0..5).map(|i| record("a", 100, i)).collect();
        assert_eq!(batch_lens(big, strict).await, vec![1, 1, 1, 1, 1]);
        // 71 each: three fit in 236.
        let small = (0..5).map(|i| record("a", 50, i)).collect();
        assert_eq!(batch_lens(small, strict).await, vec![3, 2]);
    }

    #[tokio::test]
    async fn close_and_drain_returns_what_was_queued() {
        let (tx, rx) = unbounded_channel();
        for i in 0..3 {
            tx.send(vec![record("k", 1, i)]).unwrap();
        }
        let mut b = Batcher::new(rx, limits(2, 1 << 20));
        assert_eq!(b.next_batch().await.unwrap().len(), 2);
        let rest = b.close_and_drain();
        assert_eq!(rest.len(), 1);
        assert!(tx.send(vec![record("k", 1, 9)]).is_err());
    }
}
