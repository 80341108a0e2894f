//! A lane: one request in flight at a time, retried until every entry is delivered.
//!
//! Records of a partition key always share a lane and a lane never starts a batch before the
//! previous one is fully delivered, so without failures a key's records reach the stream in Kafka
//! order. What retries can do to that order is spelled out in docs/ORDERING.md and decided here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use super::batch::Batcher;
use super::freshness::acknowledge;
use super::pace::Pace;
use super::settings::Ordering;
use super::{Halt, Record, Share};
use crate::sink::{Entry, EntryFailure, RequestError, Sink};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::{DestinationMetrics, PutOutcome};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Attempts per batch before the pipeline halts; 0 = unlimited.
    pub max_attempts: u32,
}

impl Backoff {
    /// The pause after the `failures`-th consecutive failed attempt (1-based): a random time up to
    /// `initial * 2^(failures-1)`, capped at `max`, and never less than a tenth of that cap so a
    /// throttled lane cannot spin.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let cap = exp.min(self.max);
        let floor = cap / 10;
        floor + (cap - floor).mul_f64(rand::random::<f64>())
    }
}

pub struct Lane<S> {
    pub id: usize,
    pub batcher: Batcher,
    pub sink: Arc<S>,
    pub backoff: Backoff,
    pub ordering: Ordering,
    /// The route's part of the in-flight bound.
    pub budget: Arc<Share>,
    /// The route's index: its destination's health.
    pub route: usize,
    /// Shared by every lane of the destination.
    pub pace: Arc<Pace>,
    pub halt: Arc<Halt>,
    pub metrics: DestinationMetrics,
    pub health: Arc<Health>,
}

impl<S: Sink> Lane<S> {
    /// [`Self::run_watched`] until `finished` is cancelled: the consumer is done, and what this
    /// lane still holds was not committed (shutdown timed out), so it stops where it is.
    pub async fn run_until(self, finished: tokio_util::sync::CancellationToken) {
        tokio::select! {
            () = self.run_watched() => {}
            () = finished.cancelled() => {}
        }
    }

    /// [`Self::run`], and if the lane dies of a bug (a panic), the pipeline halts with the reason
    /// instead of leaving this lane's keys undelivered while everything else looks alive: nothing
    /// it held committed, a restart sends it again. Under `doka run` the panic hook
    /// (src/panics.rs) ends the process first, at once; this is the line behind it.
    pub async fn run_watched(self) {
        use futures::FutureExt;
        let (id, halt) = (self.id, self.halt.clone());
        if let Err(panic) = std::panic::AssertUnwindSafe(self.run())
            .catch_unwind()
            .await
        {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            halt.halt(format!(
                "lane {id} failed ({what}); its records were not committed and are sent again after a restart"
            ));
        }
    }

    pub async fn run(mut self) {
        while let Some(batch) = self.batcher.next_batch().await {
            let bytes: u64 = batch.iter().map(|r| r.size() as u64).sum();
            crate::panics::test_panic("lane");
            let delivered = self.deliver(&batch).await;
            if delivered {
                acknowledge(&batch, &self.metrics.record_age);
                self.metrics.delivered.inc_by(batch.len() as u64);
            }
            self.budget.release(batch.len() as u64, bytes);
            if !delivered || self.halt.is_halted() {
                break;
            }
        }
        // Halted: whatever is still queued here is neither delivered nor acknowledged, so its
        // offsets are never committed. Give the memory back so shutdown does not wait for it.
        let rest = self.batcher.close_and_drain();
        let bytes: u64 = rest.iter().map(|r| r.size() as u64).sum();
        self.budget.release(rest.len() as u64, bytes);
    }

    /// Sends `batch` until every entry is accepted. False when the pipeline halted first.
    ///
    /// The backoff grows with consecutive attempts that delivered nothing or had most of their
    /// entries throttled, and starts over after an attempt that delivered most of its entries: a
    /// stream that takes most of each request is keeping up, one that refuses most is not.
    /// `retry.max_attempts` counts only attempts that delivered nothing. Every request also waits
    /// for its slot in the stream's shared [`Pace`].
    async fn deliver(&self, batch: &[Record]) -> bool {
        let mut todo: Vec<usize> = (0..batch.len()).collect();
        let mut fruitless = 0u32;
        // Consecutive attempts that delivered nothing or had most entries throttled: what the
        // backoff grows with. A stream that throttles most of each request is not keeping up.
        let mut strained = 0u32;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let request: Vec<&Record> = todo.iter().map(|&i| &batch[i]).collect();
            self.pace.admit(request.len()).await;
            let outcome = self.attempt(&request).await;
            let (next, progress, congested) = match outcome {
                Ok(failed) if failed.is_empty() => {
                    self.pace.record(request.len(), 0);
                    return true;
                }
                Ok(failed) => {
                    let throttled = failed.iter().filter(|f| f.throttled).count();
                    self.pace.record(request.len() - failed.len(), throttled);
                    self.metrics.throttled.inc_by(throttled as u64);
                    self.metrics
                        .failed
                        .inc_by((failed.len() - throttled) as u64);
                    let failed_positions: Vec<usize> = failed.iter().map(|f| f.index).collect();
                    let next = retry_set(&request, &failed_positions, self.ordering);
                    let msg = format!(
                        "{} of {} entries failed (first: {}; {} throttled); resending {}",
                        failed.len(),
                        request.len(),
                        failed[0].code,
                        throttled,
                        next.len()
                    );
                    if attempt == 1 {
                        warn!(lane = self.id, "{msg}");
                    } else {
                        debug!(lane = self.id, attempt, "{msg}");
                    }
                    let progress = failed.len() < request.len();
                    let congested = throttled * 2 > request.len();
                    (
                        next.into_iter().map(|p| todo[p]).collect(),
                        progress,
                        congested,
                    )
                }
                Err(e) => {
                    if matches!(e, RequestError::Throttled(_) | RequestError::Overloaded(_)) {
                        self.pace.record(0, request.len());
                    }
                    // A request throttled as a whole (e.g. KMSThrottlingException) throttled
                    // every entry in it: the throttling alert must see it too.
                    if matches!(e, RequestError::Throttled(_)) {
                        self.metrics.throttled.inc_by(request.len() as u64);
                    }
                    match &e {
                        RequestError::Configuration(_) | RequestError::Credentials(_) => {
                            error!(lane = self.id, entries = request.len(), attempt, "{e}")
                        }
                        _ if attempt == 1 => {
                            warn!(
                                lane = self.id,
                                entries = request.len(),
                                "request failed, retrying: {e}"
                            )
                        }
                        _ => debug!(
                            lane = self.id,
                            entries = request.len(),
                            attempt,
                            "request failed again: {e}"
                        ),
                    }
                    (todo.clone(), false, false)
                }
            };
            self.metrics.retried.inc_by(next.len() as u64);
            todo = next;
            fruitless = if progress { 0 } else { fruitless + 1 };
            strained = if progress && !congested {
                0
            } else {
                strained + 1
            };
            if self.backoff.max_attempts != 0 && fruitless >= self.backoff.max_attempts {
                let first = &batch[todo[0]];
                self.halt.halt(format!(
                    "gave up after {fruitless} attempts in a row that delivered nothing (retry.max_attempts) \
                     with {} records undelivered, the first {}[{}] offset {}; nothing from there on is committed",
                    todo.len(),
                    first.progress.topic,
                    first.progress.partition,
                    first.offset
                ));
                return false;
            }
            if self.halt.is_halted() {
                return false;
            }
            tokio::time::sleep(self.backoff.delay(strained.max(1))).await;
        }
    }
}

impl<S: Sink> Lane<S> {
    /// One request, measured: its outcome, time and size go to the metrics, and whether the
    /// stream answered to the health state.
    async fn attempt(&self, request: &[&Record]) -> Result<Vec<EntryFailure>, RequestError> {
        self.health.attempt_started(self.id);
        let started = Instant::now();
        let entries: Vec<Entry<'_>> = request.iter().map(|r| r.entry()).collect();
        let outcome = self.sink.put(&entries).await;
        self.health.attempt_ended(self.id);
        let m = &self.metrics;
        m.put_duration.observe(started.elapsed().as_secs_f64());
        m.batch_records.observe(request.len() as f64);
        m.batch_bytes
            .observe(request.iter().map(|r| r.size()).sum::<usize>() as f64);
        let (kind, answered) = match &outcome {
            Ok(failed) if failed.is_empty() => (PutOutcome::Ok, true),
            Ok(_) => (PutOutcome::Partial, true),
            Err(RequestError::Throttled(_)) => (PutOutcome::Throttled, true),
            // No answer in time: to the send rate like throttling, to readiness like an outage.
            Err(RequestError::Overloaded(_)) => (PutOutcome::Timeout, false),
            Err(_) => (PutOutcome::Error, false),
        };
        m.request(kind);
        if answered {
            self.health.destination_answered(self.route);
        } else {
            self.health.destination_failed(self.route);
        }
        outcome
    }
}

/// Which entries of `request` to send again after the entries at `failed` were rejected.
///
/// With [`Ordering::PerKey`] a failed entry is resent together with every later entry of the same
/// partition key in the request, even those that were accepted: the copies written last are then
/// in Kafka order. With [`Ordering::None`] and [`Ordering::Strict`] only the failed entries are
/// resent (a strict request has no later entry of a failed key). Positions are
/// returned in request order.
pub fn retry_set(request: &[&Record], failed: &[usize], ordering: Ordering) -> Vec<usize> {
    let mut failed_sorted = failed.to_vec();
    failed_sorted.sort_unstable();
    failed_sorted.dedup();
    // Strict batches hold one entry per key: nothing later of a failed key is in the request.
    if ordering != Ordering::PerKey {
        return failed_sorted;
    }
    let mut failed_iter = failed_sorted.into_iter().peekable();
    let mut broken_keys: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for (pos, record) in request.iter().enumerate() {
        let this_failed = failed_iter.next_if_eq(&pos).is_some();
        if this_failed {
            broken_keys.insert(&record.partition_key);
            out.push(pos);
        } else if broken_keys.contains(record.partition_key.as_str()) {
            out.push(pos);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// Health for up to 64 lanes that never calls anything wedged in a test.
    fn test_health() -> Arc<crate::telemetry::health::Health> {
        Arc::new(crate::telemetry::health::Health::new(
            64,
            vec!["s".into()],
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ))
    }

    use super::*;
    use crate::pipeline::batch::{BatchLimits, PerKey};
    use crate::pipeline::offsets::PartitionProgress;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering as AtomicOrdering;

    /// Batches of up to `max_records` (1 MiB), sent 1 ms after the first record.
    fn quick_batches(max_records: usize) -> BatchLimits {
        BatchLimits {
            max_records,
            max_bytes: 1 << 20,
            linger: Duration::from_millis(1),
            per_key: PerKey::Unlimited,
        }
    }

    /// A lane on `sink` reading `rx`: per-key order, quick backoff without a give-up, no pace
    /// limit, metrics of its own. Tests change what they are about with `..test_lane(…)`.
    fn test_lane<S: Sink>(
        rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Record>>,
        limits: BatchLimits,
        sink: Arc<S>,
        budget: Arc<Share>,
    ) -> Lane<S> {
        Lane {
            id: 0,
            batcher: Batcher::new(rx, limits),
            sink,
            backoff: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
                max_attempts: 0,
            },
            ordering: Ordering::PerKey,
            budget,
            route: 0,
            pace: Arc::new(crate::pipeline::pace::Pace::new(true, 1e6)),
            halt: Arc::new(Halt::default()),
            metrics: crate::telemetry::metrics::Metrics::new().destination("default", "test"),
            health: test_health(),
        }
    }

    fn rec(key: &str, offset: i64) -> Record {
        Record {
            partition_key: key.into(),
            data: vec![].into(),
            explicit_hash_key: None,
            progress: PartitionProgress::new("t".into(), 0),
            offset,
        }
    }

    #[test]
    fn per_key_resends_later_entries_of_a_failed_key() {
        let records = [
            rec("a", 0),
            rec("b", 1),
            rec("a", 2),
            rec("c", 3),
            rec("b", 4),
            rec("a", 5),
        ];
        let refs: Vec<&Record> = records.iter().collect();
        // "a"@0 failed: "a"@2 and "a"@5 go again, "b" and "c" do not.
        assert_eq!(retry_set(&refs, &[0], Ordering::PerKey), vec![0, 2, 5]);
        // "a"@2 failed: only later "a" entries follow it.
        assert_eq!(retry_set(&refs, &[2], Ordering::PerKey), vec![2, 5]);
        // Two keys failed.
        assert_eq!(retry_set(&refs, &[4, 1], Ordering::PerKey), vec![1, 4]);
        assert_eq!(
            retry_set(&refs, &[3, 0], Ordering::PerKey),
            vec![0, 2, 3, 5]
        );
    }

    #[test]
    fn ordering_none_resends_only_failed_entries() {
        let records = [rec("a", 0), rec("a", 1), rec("a", 2)];
        let refs: Vec<&Record> = records.iter().collect();
        assert_eq!(retry_set(&refs, &[1, 0], Ordering::None), vec![0, 1]);
    }

    /// A scripted destination: rejects entries by a fixed pseudo-random pattern (and now and then
    /// a whole request, sometimes after writing it, like a timeout) and keeps what it accepted in
    /// arrival order, like one shard.
    struct ScriptedSink {
        state: std::sync::Mutex<(u64, Vec<(String, i64)>)>,
        entry_failure_percent: u64,
    }

    impl ScriptedSink {
        fn next(state: &mut (u64, Vec<(String, i64)>)) -> u64 {
            // xorshift64: deterministic, no dependency on an RNG's API.
            state.0 ^= state.0 << 13;
            state.0 ^= state.0 >> 7;
            state.0 ^= state.0 << 17;
            state.0 % 100
        }
    }

    fn offset_in(entry: &Entry<'_>) -> i64 {
        i64::from_be_bytes(entry.data[..8].try_into().expect("8 bytes of offset"))
    }

    impl Sink for ScriptedSink {
        async fn put(
            &self,
            records: &[Entry<'_>],
        ) -> Result<Vec<crate::sink::EntryFailure>, RequestError> {
            let mut state = self.state.lock().unwrap();
            match Self::next(&mut state) {
                0..5 => return Err(RequestError::Transient("refused".into())),
                5..8 => {
                    // Written, but the answer is lost: the caller must assume nothing was.
                    for r in records {
                        state.1.push((r.partition_key.to_owned(), offset_in(r)));
                    }
                    return Err(RequestError::Overloaded("timed out".into()));
                }
                _ => {}
            }
            let mut failed = Vec::new();
            for (index, r) in records.iter().enumerate() {
                if Self::next(&mut state) < self.entry_failure_percent {
                    failed.push(crate::sink::EntryFailure {
                        index,
                        code: "ProvisionedThroughputExceededException".into(),
                        throttled: true,
                    });
                } else {
                    state.1.push((r.partition_key.to_owned(), offset_in(r)));
                }
            }
            Ok(failed)
        }
    }

    async fn run_lane(
        ordering: Ordering,
        seed: u64,
    ) -> (Vec<(String, i64)>, Arc<PartitionProgress>) {
        let progress = PartitionProgress::new("t".into(), 0);
        let budget = Arc::new(Share::whole(Arc::new(crate::pipeline::Budget::new(
            10_000,
            1 << 30,
        ))));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for offset in 0..300 {
            progress.register(offset);
            let r = Record {
                partition_key: format!("k{}", offset % 4),
                // The scripted sink reads the offset back from the data.
                data: offset.to_be_bytes().to_vec().into(),
                explicit_hash_key: None,
                progress: progress.clone(),
                offset,
            };
            budget.take(1, r.size() as u64);
            tx.send(vec![r]).unwrap();
        }
        drop(tx);
        let sink = Arc::new(ScriptedSink {
            state: std::sync::Mutex::new((seed, Vec::new())),
            entry_failure_percent: 30,
        });
        let lane = Lane {
            ordering,
            ..test_lane(rx, quick_batches(40), sink.clone(), budget.clone())
        };
        lane.run().await;
        assert_eq!(
            budget.usage().records,
            0,
            "every record's room was given back"
        );
        let written = sink.state.lock().unwrap().1.clone();
        (written, progress)
    }

    #[tokio::test(start_paused = true)]
    async fn per_key_last_copies_are_in_kafka_order_under_failures() {
        for seed in [1, 7, 42, 99, 12345] {
            let (written, progress) = run_lane(Ordering::PerKey, seed).await;
            assert_eq!(
                progress.committable(),
                Some(300),
                "all delivered and acknowledged"
            );
            let mut last_position = std::collections::HashMap::new();
            for (pos, (_, offset)) in written.iter().enumerate() {
                last_position.insert(*offset, pos);
            }
            assert_eq!(
                last_position.len(),
                300,
                "every record written at least once"
            );
            for key in 0..4 {
                let lasts: Vec<usize> = (0..300)
                    .filter(|o| o % 4 == key)
                    .map(|o| last_position[&o])
                    .collect();
                assert!(
                    lasts.windows(2).all(|w| w[0] < w[1]),
                    "seed {seed} key {key}: {lasts:?}"
                );
            }
            assert!(
                written.len() > 300,
                "failures were injected, so copies exist"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ordering_none_delivers_everything_but_may_reorder() {
        let mut reordered = false;
        for seed in [1, 7, 42] {
            let (written, progress) = run_lane(Ordering::None, seed).await;
            assert_eq!(progress.committable(), Some(300));
            let mut last_position = std::collections::HashMap::new();
            for (pos, (_, offset)) in written.iter().enumerate() {
                last_position.insert(*offset, pos);
            }
            assert_eq!(last_position.len(), 300);
            reordered |= (0..296).any(|o| last_position[&o] > last_position[&(o + 4)]);
        }
        assert!(
            reordered,
            "the scripted failures should show why per_key exists"
        );
    }

    /// Throttles the first request as a whole (e.g. KMSThrottlingException), then takes all.
    struct ThrottledOnceSink {
        calls: AtomicU64,
    }

    impl Sink for ThrottledOnceSink {
        async fn put(
            &self,
            _records: &[Entry<'_>],
        ) -> Result<Vec<crate::sink::EntryFailure>, RequestError> {
            if self.calls.fetch_add(1, AtomicOrdering::Relaxed) == 0 {
                return Err(RequestError::Throttled("KMSThrottlingException".into()));
            }
            Ok(Vec::new())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_throttled_as_a_whole_counts_each_entry_as_throttled() {
        let progress = PartitionProgress::new("t".into(), 0);
        let budget = Arc::new(Share::whole(Arc::new(crate::pipeline::Budget::new(
            100,
            1 << 20,
        ))));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let batch: Vec<Record> = (0..7)
            .map(|offset| {
                progress.register(offset);
                let r = Record {
                    progress: progress.clone(),
                    ..rec("k", offset)
                };
                budget.take(1, r.size() as u64);
                r
            })
            .collect();
        tx.send(batch).unwrap();
        drop(tx);
        let metrics = crate::telemetry::metrics::Metrics::new().destination("default", "test");
        let (throttled, retried, delivered) = (
            metrics.throttled.clone(),
            metrics.retried.clone(),
            metrics.delivered.clone(),
        );
        let lane = Lane {
            metrics,
            ..test_lane(
                rx,
                quick_batches(500),
                Arc::new(ThrottledOnceSink {
                    calls: AtomicU64::new(0),
                }),
                budget,
            )
        };
        lane.run().await;
        assert_eq!(progress.committable(), Some(7));
        assert_eq!(throttled.get(), 7, "every entry of the throttled request");
        assert_eq!(retried.get(), 7);
        assert_eq!(delivered.get(), 7);
    }

    /// Like a shard: takes `capacity` entries per (virtual) second and throttles the rest.
    struct CapacitySink {
        capacity: f64,
        state: std::sync::Mutex<(f64, tokio::time::Instant)>,
        sent: AtomicU64,
        throttled: AtomicU64,
    }

    impl Sink for CapacitySink {
        async fn put(
            &self,
            records: &[Entry<'_>],
        ) -> Result<Vec<crate::sink::EntryFailure>, RequestError> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let granted = {
                let mut state = self.state.lock().unwrap();
                let now = tokio::time::Instant::now();
                state.0 =
                    (state.0 + (now - state.1).as_secs_f64() * self.capacity).min(self.capacity);
                state.1 = now;
                let granted = (state.0.floor() as usize).min(records.len());
                state.0 -= granted as f64;
                granted
            };
            self.sent
                .fetch_add(records.len() as u64, AtomicOrdering::Relaxed);
            self.throttled
                .fetch_add((records.len() - granted) as u64, AtomicOrdering::Relaxed);
            Ok((granted..records.len())
                .map(|index| crate::sink::EntryFailure {
                    index,
                    code: "ProvisionedThroughputExceededException".into(),
                    throttled: true,
                })
                .collect())
        }
    }

    /// 8 lanes deliver 30,000 records to a 1,000 entries/s destination; returns (entries sent,
    /// entries throttled, virtual seconds).
    async fn run_lanes_against_capacity(adaptive: bool) -> (u64, u64, f64) {
        const RECORDS: i64 = 30_000;
        const LANES: usize = 8;
        let started = tokio::time::Instant::now();
        let progress = PartitionProgress::new("t".into(), 0);
        let budget = Arc::new(Share::whole(Arc::new(crate::pipeline::Budget::new(
            100_000,
            1 << 30,
        ))));
        let sink = Arc::new(CapacitySink {
            capacity: 1000.0,
            state: std::sync::Mutex::new((1000.0, started)),
            sent: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        });
        let pace = Arc::new(crate::pipeline::pace::Pace::new(adaptive, 50.0));
        let mut senders = Vec::new();
        let mut lanes = Vec::new();
        for id in 0..LANES {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            let limits = BatchLimits {
                max_records: 500,
                max_bytes: 5 << 20,
                linger: Duration::from_millis(20),
                per_key: PerKey::Unlimited,
            };
            let lane = Lane {
                id,
                backoff: Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(10),
                    max_attempts: 0,
                },
                pace: pace.clone(),
                ..test_lane(rx, limits, sink.clone(), budget.clone())
            };
            lanes.push(tokio::spawn(lane.run()));
        }
        for offset in 0..RECORDS {
            progress.register(offset);
            let key = format!("k{}", offset % 1000);
            let r = Record {
                data: vec![0; 100].into(),
                explicit_hash_key: None,
                progress: progress.clone(),
                offset,
                partition_key: key,
            };
            budget.take(1, r.size() as u64);
            senders[crate::pipeline::lane_of(&r.partition_key, LANES)]
                .send(vec![r])
                .unwrap();
        }
        drop(senders);
        for lane in lanes {
            lane.await.unwrap();
        }
        assert_eq!(progress.committable(), Some(RECORDS));
        (
            sink.sent.load(AtomicOrdering::Relaxed),
            sink.throttled.load(AtomicOrdering::Relaxed),
            started.elapsed().as_secs_f64(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_adaptive_rate_stops_hammering_a_stream_at_capacity() {
        let (fixed_sent, fixed_throttled, fixed_secs) = run_lanes_against_capacity(false).await;
        let (sent, throttled, secs) = run_lanes_against_capacity(true).await;
        println!(
            "fixed: sent {fixed_sent} throttled {fixed_throttled} in {fixed_secs:.1}s; \
             adaptive: sent {sent} throttled {throttled} in {secs:.1}s"
        );
        // Lanes back off when most of a request is throttled, so even without the shared pace
        // nothing spins; with it, the stream is sent half as much for the same records.
        assert!(
            throttled * 2 <= fixed_throttled,
            "adaptive {throttled} vs fixed {fixed_throttled} throttled entries"
        );
        // Not at the price of throughput: within a fifth of the 30 s the capacity allows.
        assert!(secs <= 36.0, "{secs:.1}s (hammering: {fixed_secs:.1}s)");
        assert!(
            throttled * 2 <= 3 * 30_000,
            "{throttled} entries throttled for 30,000 records"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 0,
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(10) && d1 <= Duration::from_millis(100));
            let d4 = b.delay(4);
            assert!(d4 >= Duration::from_millis(80) && d4 <= Duration::from_millis(800));
            let d40 = b.delay(40);
            assert!(d40 >= Duration::from_millis(200) && d40 <= Duration::from_secs(2));
        }
    }

    /// A destination with a bug: it panics.
    struct PanickingSink;

    impl Sink for PanickingSink {
        async fn put(
            &self,
            _records: &[Entry<'_>],
        ) -> Result<Vec<crate::sink::EntryFailure>, RequestError> {
            panic!("bug in the sink")
        }
    }

    #[tokio::test]
    async fn a_lane_that_dies_halts_the_pipeline_with_the_reason() {
        let progress = PartitionProgress::new("t".into(), 0);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        progress.register(0);
        tx.send(vec![Record {
            partition_key: "k".into(),
            data: vec![1].into(),
            explicit_hash_key: None,
            progress: progress.clone(),
            offset: 0,
        }])
        .unwrap();
        let halt = Arc::new(Halt::default());
        let lane = Lane {
            id: 3,
            pace: Arc::new(crate::pipeline::pace::Pace::new(false, 1.0)),
            halt: halt.clone(),
            ..test_lane(
                rx,
                quick_batches(10),
                Arc::new(PanickingSink),
                Arc::new(Share::whole(Arc::new(crate::pipeline::Budget::new(
                    10,
                    1 << 20,
                )))),
            )
        };
        lane.run_watched().await;
        let reason = halt.reason().expect("halted");
        assert!(
            reason.contains("lane 3 failed (bug in the sink)"),
            "{reason}"
        );
        assert_eq!(progress.committable(), Some(0), "nothing past the record");
        drop(tx);
    }
}
