//! Collecting a lane's records into PutRecords-sized batches.

use std::collections::VecDeque;
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
}

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
        let deadline = Instant::now() + self.limits.linger;
        loop {
            while let Some(next) = self.queued.front() {
                let full = batch.len() >= self.limits.max_records
                    || (!batch.is_empty() && bytes + next.size() > self.limits.max_bytes);
                if full {
                    return Some(batch);
                }
                bytes += next.size();
                batch.extend(self.queued.pop_front());
            }
            let chunk = match self.rx.try_recv() {
                Ok(chunk) => chunk,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            self.queued.extend(chunk);
        }
        Some(batch)
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
            data: vec![b'x'; data_len],
            progress: PartitionProgress::new("t".into(), 0),
            offset,
        }
    }

    fn limits(max_records: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_records,
            max_bytes,
            linger: Duration::from_millis(5),
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
