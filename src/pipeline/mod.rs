//! From fetched Kafka record to acknowledged Kinesis entry: lanes, batches, retries, memory bound.
//!
//! The consumer thread turns each Kafka message into a [`Record`], registers its offset with the
//! partition's [`offsets::PartitionProgress`], reserves room in the [`Budget`] and hands it to one
//! of the lanes, chosen by partition key. Each lane batches its records and has at most one request
//! in flight, so records of a key leave in Kafka order; the lanes together pipeline requests. A
//! record is acknowledged to its partition only when Kinesis has accepted it.

pub mod batch;
pub mod decoded;
pub mod delivered;
pub mod envelope;
pub mod freshness;
pub mod intake;
pub mod json_field;
pub mod lane;
pub mod offsets;
pub mod pace;
pub mod partition_key;
pub mod settings;
pub mod waiting;

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use offsets::PartitionProgress;
use settings::{HeadersPolicy, OversizedPolicy, TombstonePolicy};

/// A fetched Kafka record as the intake sees it. The source's messages implement it, so the
/// pipeline knows Kafka records without knowing the Kafka client.
pub trait Fetched {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    /// `None`: no key (null).
    fn key(&self) -> Option<&[u8]>;
    /// `None`: a tombstone (null value).
    fn value(&self) -> Option<&[u8]>;
    fn timestamp(&self) -> Timestamp;
    /// Parsed on each call (librdkafka allocates for it): ask only when they are needed.
    fn headers(&self) -> Vec<Header<'_>>;
}

/// A Kafka record's timestamp and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    None,
    /// Set by the producer, milliseconds since the Unix epoch.
    CreateTime(i64),
    /// Set by the broker when it appended the record, milliseconds since the Unix epoch.
    LogAppendTime(i64),
}

impl Timestamp {
    /// Milliseconds since the Unix epoch, whichever kind; `None` without one (librdkafka says -1).
    pub fn millis(self) -> Option<i64> {
        match self {
            Self::CreateTime(t) | Self::LogAppendTime(t) if t >= 0 => Some(t),
            _ => None,
        }
    }
}

/// One Kafka header, in the record's order (keys may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Kafka header keys are text; a key that is not UTF-8 is read with U+FFFD in place of its
    /// invalid bytes rather than refused.
    pub key: std::borrow::Cow<'a, str>,
    /// `None`: a null header value.
    pub value: Option<&'a [u8]>,
}

/// One Kafka record on its way to Kinesis.
#[derive(Debug)]
pub struct Record {
    pub partition_key: String,
    /// Set to spread records evenly over the shards (`partition_key.explicit_hash_key: spread`);
    /// Kinesis then routes by it instead of the partition key's MD5.
    pub explicit_hash_key: Option<u128>,
    /// The Kafka value, byte for byte (empty for a tombstone). Shared, not copied, by retries and
    /// aggregates.
    pub data: Bytes,
    pub progress: Arc<PartitionProgress>,
    pub offset: i64,
}

impl Record {
    /// The size Kinesis counts against its record and request limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// What the sink sees of it.
    pub fn entry(&self) -> crate::sink::Entry<'_> {
        crate::sink::Entry {
            partition_key: &self.partition_key,
            explicit_hash_key: self.explicit_hash_key,
            data: &self.data,
        }
    }
}

/// What happens instead to a record a policy withholds from its destination (a tombstone, headers
/// a raw record cannot carry, a key or size the destination refuses). Never a silent drop: each
/// is counted in the summary and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Written to the dead-letter topic; its offset is committed once that write is confirmed.
    DeadLetter,
    /// doka halts; nothing from the record on is committed.
    Stop,
    /// Not sent anywhere (an explicit `skip` policy); its offset is committed.
    Skip,
}

// What each policy setting means for a record.
impl TombstonePolicy {
    /// `None`: send it.
    pub fn fallback(self) -> Option<Fallback> {
        match self {
            Self::SendEmpty => None,
            Self::Skip => Some(Fallback::Skip),
            Self::DeadLetter => Some(Fallback::DeadLetter),
            Self::Stop => Some(Fallback::Stop),
        }
    }
}

impl HeadersPolicy {
    /// `None`: send it without its headers.
    pub fn fallback(self) -> Option<Fallback> {
        match self {
            Self::Ignore => None,
            Self::DeadLetter => Some(Fallback::DeadLetter),
            Self::Stop => Some(Fallback::Stop),
        }
    }
}

impl OversizedPolicy {
    pub fn fallback(self) -> Fallback {
        match self {
            Self::DeadLetter => Fallback::DeadLetter,
            Self::Stop => Fallback::Stop,
        }
    }
}

/// The lane for a partition key: the same key always takes the same lane.
pub fn lane_of(partition_key: &str, lanes: usize) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(partition_key);
    (hash % lanes as u64) as usize
}

/// Records and bytes fetched but not yet delivered. Fetching pauses at the limits, so memory stays
/// bounded whatever Kinesis does.
///
/// The counts are atomics: the consumer thread checks them on every poll and the lanes release
/// after every request, and a lock there was a measured source of waiting. The mutex only pairs
/// with the condition variable that waiters sleep on.
#[derive(Debug)]
pub struct Budget {
    counts: Counts,
    lock: Mutex<()>,
    changed: Condvar,
}

/// Records and bytes held against two limits: the counting [`Budget`] and [`Share`] have in
/// common.
#[derive(Debug)]
struct Counts {
    records: AtomicU64,
    bytes: AtomicU64,
    max_records: u64,
    max_bytes: u64,
}

impl Counts {
    fn new(max_records: u64, max_bytes: u64) -> Self {
        Self {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_records,
            max_bytes,
        }
    }

    fn take(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::SeqCst);
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    fn release(&self, records: u64, bytes: u64) {
        self.records.fetch_sub(records, Ordering::SeqCst);
        self.bytes.fetch_sub(bytes, Ordering::SeqCst);
    }

    fn usage(&self) -> Usage {
        Usage {
            records: self.records.load(Ordering::SeqCst),
            bytes: self.bytes.load(Ordering::SeqCst),
        }
    }

    fn room(&self) -> Usage {
        let used = self.usage();
        Usage {
            records: self.max_records.saturating_sub(used.records),
            bytes: self.max_bytes.saturating_sub(used.bytes),
        }
    }

    fn full(&self) -> bool {
        let used = self.usage();
        used.records >= self.max_records || used.bytes >= self.max_bytes
    }

    /// Below 3/4 of both limits (the gap avoids pausing and resuming on every record).
    fn has_room(&self) -> bool {
        let used = self.usage();
        used.records * 4 < self.max_records * 3 && used.bytes * 4 < self.max_bytes * 3
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub records: u64,
    pub bytes: u64,
}

impl Budget {
    pub fn new(max_records: u64, max_bytes: u64) -> Self {
        Self {
            counts: Counts::new(max_records, max_bytes),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }
    }

    /// Reserves room for records. Never blocks: the caller pauses fetching when [`Self::full`].
    pub fn take(&self, records: u64, bytes: u64) {
        self.counts.take(records, bytes);
    }

    pub fn release(&self, records: u64, bytes: u64) {
        if records == 0 && bytes == 0 {
            return;
        }
        self.counts.release(records, bytes);
        // Taking the lock orders this release before a waiter's next check: no lost wake-up.
        drop(self.lock.lock().unwrap());
        self.changed.notify_all();
    }

    pub fn usage(&self) -> Usage {
        self.counts.usage()
    }

    /// What can still be taken before the limits are reached.
    pub fn room(&self) -> Usage {
        self.counts.room()
    }

    pub fn full(&self) -> bool {
        self.counts.full()
    }

    /// Below 3/4 of both limits: fetching resumes.
    pub fn has_room(&self) -> bool {
        self.counts.has_room()
    }

    /// Waits until `done` holds (checked after every release) or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(Usage) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap();
        loop {
            if done(self.usage()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self.changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }
}

/// A route's part of the in-flight bound. Each route pauses its own partitions when its share is
/// full, so a route whose destination is down holds at most its share and the others keep
/// fetching; every take and release also counts in the whole [`Budget`], which shutdown and
/// rebalances wait on.
#[derive(Debug)]
pub struct Share {
    counts: Counts,
    total: Arc<Budget>,
}

impl Share {
    pub fn new(max_records: u64, max_bytes: u64, total: Arc<Budget>) -> Self {
        Self {
            counts: Counts::new(max_records, max_bytes),
            total,
        }
    }

    /// The whole budget as one share (one route, or a test).
    pub fn whole(total: Arc<Budget>) -> Self {
        let (records, bytes) = (total.counts.max_records, total.counts.max_bytes);
        Self::new(records, bytes, total)
    }

    pub fn take(&self, records: u64, bytes: u64) {
        self.counts.take(records, bytes);
        self.total.take(records, bytes);
    }

    pub fn release(&self, records: u64, bytes: u64) {
        self.counts.release(records, bytes);
        self.total.release(records, bytes);
    }

    pub fn usage(&self) -> Usage {
        self.counts.usage()
    }

    pub fn full(&self) -> bool {
        self.counts.full()
    }

    /// Below 3/4 of both limits: the route's partitions resume.
    pub fn has_room(&self) -> bool {
        self.counts.has_room()
    }

    /// What can still be taken before the share's limits are reached.
    pub fn room(&self) -> Usage {
        self.counts.room()
    }
}

/// A reason the pipeline must stop without committing past the affected records.
#[derive(Debug, Default)]
pub struct Halt {
    halted: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Halt {
    pub fn halt(&self, reason: String) {
        let mut r = self.reason.lock().unwrap();
        if r.is_none() {
            *r = Some(reason);
        }
        self.halted.store(true, Ordering::SeqCst);
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_lane() {
        for lanes in [1, 2, 7, 64] {
            let a = lane_of("customer-1", lanes);
            assert_eq!(a, lane_of("customer-1", lanes));
            assert!(a < lanes);
        }
        // Keys spread over lanes.
        let used: std::collections::HashSet<usize> =
            (0..1000).map(|i| lane_of(&format!("k{i}"), 8)).collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn budget_pauses_at_the_limit_and_resumes_below_three_quarters() {
        let b = Budget::new(4, 1000);
        for _ in 0..3 {
            b.take(1, 10);
        }
        assert!(!b.full());
        b.take(1, 10);
        assert!(b.full());
        assert!(!b.has_room());
        b.release(1, 10);
        assert!(!b.full());
        assert!(!b.has_room()); // 3 of 4 is not below 3/4
        b.release(1, 10);
        assert!(b.has_room());
        let big = Budget::new(100, 100);
        big.take(1, 100);
        assert!(big.full());
    }

    #[test]
    fn budget_wait_wakes_on_release() {
        let b = Arc::new(Budget::new(10, 1000));
        b.take(1, 5);
        let releaser = {
            let b = b.clone();
            std::thread::spawn(move || b.release(1, 5))
        };
        assert!(b.wait_until(Duration::from_secs(10), |u| u.records == 0));
        releaser.join().unwrap();
        assert!(!b.wait_until(Duration::from_millis(1), |u| u.records == 1));
    }
}
