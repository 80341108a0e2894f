//! How old the data is: the age of each record when its destination acknowledged it
//! (`doka_record_age_seconds`) and of the oldest record still on its way
//! (`doka_oldest_undelivered_record_age_seconds`), both from the Kafka record's timestamp.
//!
//! Ages come from what the partitions already track (each pending offset carries its timestamp),
//! so the send path pays no lock or allocation per record for them: a delivered batch is observed
//! into a local histogram under the partition locks it takes anyway and merged once, and the
//! oldest pending record is looked for once a second by the consumer thread.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::Histogram;

use super::Record;
use super::offsets::PartitionProgress;
use crate::telemetry::metrics::Metrics;

/// Milliseconds since the Unix epoch, the unit of Kafka timestamps.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Seconds from a Kafka timestamp to `now_ms`; 0 for a timestamp ahead of this clock (a
/// producer's clock skew is not an age).
pub fn age_seconds(now_ms: i64, timestamp_ms: i64) -> f64 {
    (now_ms - timestamp_ms).max(0) as f64 / 1000.0
}

/// Acknowledges a delivered batch: one lock per run of records of the same partition, not one
/// per record (the consumer thread registers new offsets under the same lock). Each record
/// delivered by this with a timestamp is observed in `ages`, through a local histogram merged
/// once per batch.
pub fn acknowledge(batch: &[Record], ages: &Histogram) {
    let now = now_ms();
    let local = ages.local();
    for run in batch.chunk_by(|a, b| Arc::ptr_eq(&a.progress, &b.progress)) {
        run[0]
            .progress
            .ack_all(run.iter().map(|r| r.offset), |timestamp_ms| {
                local.observe(age_seconds(now, timestamp_ms))
            });
    }
    local.flush();
}

/// Per route, the age of its oldest record not yet delivered, over the partitions it reads.
pub struct OldestUndelivered {
    now_ms: i64,
    /// Per route: the earliest pending timestamp seen.
    oldest: Vec<Option<i64>>,
}

impl OldestUndelivered {
    pub fn new(routes: usize) -> Self {
        Self {
            now_ms: now_ms(),
            oldest: vec![None; routes],
        }
    }

    /// Counts in a partition that `route` reads.
    pub fn include(&mut self, progress: &PartitionProgress, route: usize) {
        if let Some(timestamp) = progress.oldest_undelivered() {
            let oldest = &mut self.oldest[route];
            *oldest = Some(oldest.map_or(timestamp, |o| o.min(timestamp)));
        }
    }

    /// Each route's age in seconds: 0 when nothing with a timestamp is on its way.
    pub fn ages(&self) -> impl Iterator<Item = (usize, f64)> + '_ {
        self.oldest
            .iter()
            .enumerate()
            .map(|(route, oldest)| (route, oldest.map_or(0.0, |t| age_seconds(self.now_ms, t))))
    }

    /// Sets each route's gauge; `name` gives a route's name from its index.
    pub fn publish<'a>(&self, metrics: &Metrics, name: impl Fn(usize) -> &'a str) {
        for (route, age) in self.ages() {
            metrics.oldest_undelivered(name(route)).set(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(progress: &Arc<PartitionProgress>, offset: i64) -> Record {
        Record {
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: vec![].into(),
            progress: progress.clone(),
            offset,
        }
    }

    #[test]
    fn a_delivered_batch_is_observed_once_per_record_with_a_timestamp() {
        let ages = Histogram::with_opts(
            prometheus::HistogramOpts::new("a", "a").buckets(vec![1.0, 60.0, 3600.0]),
        )
        .unwrap();
        let (a, b) = (
            PartitionProgress::new("t".into(), 0),
            PartitionProgress::new("t".into(), 1),
        );
        let now = now_ms();
        a.register_at(0, Some(now - 7_200_000));
        a.register_at(1, None);
        b.register_at(0, Some(now - 30_000));
        b.register_at(1, Some(now + 60_000));
        let batch = [record(&a, 0), record(&a, 1), record(&b, 0), record(&b, 1)];
        acknowledge(&batch, &ages);
        // Acknowledged again (a retried copy): not observed twice.
        acknowledge(&batch[..1], &ages);
        assert_eq!(ages.get_sample_count(), 3, "no timestamp, no observation");
        let sum = ages.get_sample_sum();
        assert!((7230.0..7240.0).contains(&sum), "2 h + 30 s + 0: {sum}");
        assert_eq!(a.committable(), Some(2));
        assert_eq!(b.committable(), Some(2));
    }

    #[test]
    fn the_oldest_undelivered_record_of_each_route() {
        let (a, b, c) = (
            PartitionProgress::new("t".into(), 0),
            PartitionProgress::new("t".into(), 1),
            PartitionProgress::new("u".into(), 0),
        );
        let now = now_ms();
        a.register_at(0, Some(now - 20_000));
        b.register_at(0, Some(now - 90_000));
        c.register_at(0, None);
        let mut oldest = OldestUndelivered::new(3);
        for (p, route) in [(&a, 0), (&b, 0), (&c, 1)] {
            oldest.include(p, route);
        }
        let ages: Vec<(usize, f64)> = oldest.ages().collect();
        assert_eq!(ages[0].0, 0);
        assert!((90.0..95.0).contains(&ages[0].1), "{ages:?}");
        assert_eq!(ages[1], (1, 0.0), "no timestamp: nothing to age");
        assert_eq!(ages[2], (2, 0.0), "no partitions");
    }
}
