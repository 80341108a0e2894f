//! The one registry of what doka counts: `/metrics`, the summary line at exit and the tests all
//! read these same counters.
//!
//! Names follow Prometheus conventions: `doka_` prefix, `_total` counters, base units (seconds,
//! bytes). Labels are bounded: topic (at most [`MAX_TOPIC_LABELS`] values, the rest under
//! [`OTHER_TOPICS`]), partition (what the group assigned, removed when revoked), route, stream,
//! and small fixed sets (outcome, kind, event) — never keys, offsets or error messages. The
//! standard `process_*` metrics (memory, CPU, file descriptors) are served alongside.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::schema_metrics::SchemaMetricVecs;
use super::topic_labels::TopicLabels;
pub use super::topic_labels::{MAX_TOPIC_LABELS, OTHER_TOPICS};

/// Buckets of `doka_record_age_seconds`: from a second (a stream keeping up) to a day (a backlog
/// read from the start), with a bound at each usual freshness objective: 1, 5, 15 and 30
/// minutes, 1, 2, 6 and 12 hours.
pub const RECORD_AGE_BUCKETS: [f64; 19] = [
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    14400.0, 21600.0, 43200.0, 86400.0,
];

/// What a PutRecords request came to, for `doka_put_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Every entry accepted.
    Ok,
    /// Some entries failed (throttled or otherwise) inside an accepted request.
    Partial,
    /// The whole request was throttled.
    Throttled,
    /// No answer within `kinesis.request_timeout_ms`.
    Timeout,
    /// The whole request failed otherwise (5xx, connection, access denied, missing stream).
    Error,
}

impl PutOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Throttled => "throttled",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Which credentials, for the expiry and renewal metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// The role assumed in the stream's account.
    AssumedRole,
    /// The MSK IAM token signed with the source identity.
    MskIamToken,
}

impl CredentialKind {
    fn label(self) -> &'static str {
        match self {
            Self::AssumedRole => "assumed_role",
            Self::MskIamToken => "msk_iam_token",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    consumed: IntCounterVec,
    dead_lettered: IntCounterVec,
    skipped: IntCounterVec,
    skipped_as_delivered: IntCounterVec,
    /// Re-fetched copies of records already on their way (after a rebalance or a seek).
    pub refetched: IntCounter,
    /// Records fetched for partitions already revoked, left to their new owner.
    pub not_ours: IntCounter,
    delivered: IntCounterVec,
    retried: IntCounterVec,
    throttled: IntCounterVec,
    failed: IntCounterVec,
    put_requests: IntCounterVec,
    put_duration: HistogramVec,
    batch_records: HistogramVec,
    batch_bytes: HistogramVec,
    send_rate: GaugeVec,
    pub in_flight_records: IntGauge,
    pub in_flight_bytes: IntGauge,
    pub fetch_paused: IntGauge,
    pub assigned_partitions: IntGauge,
    committed_offset: IntGaugeVec,
    fetched_offset: IntGaugeVec,
    lag: IntGaugeVec,
    credential_expiry: GaugeVec,
    credential_renewals: IntCounterVec,
    rebalances: IntCounterVec,
    record_age: HistogramVec,
    oldest_undelivered: GaugeVec,
    /// Schema-registry decoding (telemetry/schema_metrics.rs).
    pub schemas: SchemaMetricVecs,
    topics: TopicLabels,
}

/// The metrics of one destination stream, resolved once (no label lookup per record).
#[derive(Clone)]
pub struct DestinationMetrics {
    pub delivered: IntCounter,
    pub retried: IntCounter,
    pub throttled: IntCounter,
    pub failed: IntCounter,
    put_requests: [IntCounter; 5],
    pub put_duration: Histogram,
    pub batch_records: Histogram,
    pub batch_bytes: Histogram,
    pub send_rate: Gauge,
    /// Seconds from a record's Kafka timestamp to its acknowledgement (the route's).
    pub record_age: Histogram,
}

impl DestinationMetrics {
    pub fn request(&self, outcome: PutOutcome) {
        self.put_requests[outcome as usize].inc();
    }
}

/// Registers a new metric and hands back a handle to it (handles share the value).
fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

pub(super) fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

pub(super) fn int_gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    registered(registry, GaugeVec::new(Opts::new(name, help), labels))
}

pub(super) fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    registered(registry, HistogramVec::new(opts, labels))
}

fn single(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(name, help))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let build = int_gauge(
            &r,
            "doka_build_info",
            "doka's version (always 1).",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let refetched = registered(
            &r,
            IntCounter::new(
                "doka_records_refetched_total",
                "Records fetched again while already on their way (not sent twice).",
            ),
        );
        let not_ours = registered(
            &r,
            IntCounter::new(
                "doka_records_left_to_new_owner_total",
                "Records fetched for partitions revoked meanwhile, left to their new owner.",
            ),
        );
        // The standard process metrics, read from /proc at each scrape.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
        Self {
            consumed: counter(
                &r,
                "doka_records_consumed_total",
                "Kafka records taken on (each counted once, re-fetched copies not).",
                &["topic"],
            ),
            dead_lettered: counter(
                &r,
                "doka_records_dead_lettered_total",
                "Records written to the dead-letter topic instead of the stream.",
                &["topic"],
            ),
            skipped: counter(
                &r,
                "doka_records_skipped_total",
                "Records an explicit skip policy kept from the stream (offsets committed).",
                &["topic"],
            ),
            skipped_as_delivered: counter(
                &r,
                "doka_records_skipped_as_delivered_total",
                "Records not sent again after a crash: the last commit's metadata says they were \
                 delivered (or dead-lettered) already.",
                &["topic"],
            ),
            refetched,
            not_ours,
            delivered: counter(
                &r,
                "doka_records_delivered_total",
                "Records the stream accepted.",
                &["route", "stream"],
            ),
            retried: counter(
                &r,
                "doka_records_retried_total",
                "Entries sent again after a failed attempt.",
                &["route", "stream"],
            ),
            throttled: counter(
                &r,
                "doka_records_throttled_total",
                "Entries throttled: refused with ProvisionedThroughputExceededException, or in a request throttled as a whole (e.g. KMSThrottlingException).",
                &["route", "stream"],
            ),
            failed: counter(
                &r,
                "doka_records_failed_total",
                "Entries refused for another reason (retried).",
                &["route", "stream"],
            ),
            put_requests: counter(
                &r,
                "doka_put_requests_total",
                "PutRecords requests by outcome: ok, partial (some entries failed), throttled, timeout, error.",
                &["route", "stream", "outcome"],
            ),
            put_duration: histogram(
                &r,
                "doka_put_request_duration_seconds",
                "Time of one PutRecords request, including a timeout.",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
                &["route", "stream"],
            ),
            batch_records: histogram(
                &r,
                "doka_batch_records",
                "Entries per PutRecords request.",
                vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0],
                &["route", "stream"],
            ),
            batch_bytes: histogram(
                &r,
                "doka_batch_bytes",
                "Bytes (data and partition keys) per PutRecords request.",
                prometheus::exponential_buckets(1024.0, 4.0, 8).expect("valid buckets"),
                &["route", "stream"],
            ),
            send_rate: gauge(
                &r,
                "doka_send_rate_limit_records_per_second",
                "The adaptive send rate limit; 0 while not limiting.",
                &["route", "stream"],
            ),
            in_flight_records: single(
                &r,
                "doka_in_flight_records",
                "Records fetched and not yet delivered.",
            ),
            in_flight_bytes: single(
                &r,
                "doka_in_flight_bytes",
                "Bytes fetched and not yet delivered.",
            ),
            fetch_paused: single(
                &r,
                "doka_fetch_paused",
                "1 while fetching is paused at the in-flight bound.",
            ),
            assigned_partitions: single(
                &r,
                "doka_assigned_partitions",
                "Partitions the consumer group assigned to this member.",
            ),
            committed_offset: int_gauge(
                &r,
                "doka_partition_committed_offset",
                "The offset doka last committed (the next record to read).",
                &["topic", "partition"],
            ),
            fetched_offset: int_gauge(
                &r,
                "doka_partition_fetched_offset",
                "The offset of the last record fetched.",
                &["topic", "partition"],
            ),
            lag: int_gauge(
                &r,
                "doka_consumer_lag_records",
                "Records between the partition's end and doka's committed offset.",
                &["topic", "partition"],
            ),
            credential_expiry: gauge(
                &r,
                "doka_credentials_expiry_timestamp_seconds",
                "When the current credentials expire (Unix time).",
                &["kind", "route"],
            ),
            credential_renewals: counter(
                &r,
                "doka_credential_renewals_total",
                "Credentials obtained: the assumed role, MSK IAM tokens.",
                &["kind", "route"],
            ),
            rebalances: counter(
                &r,
                "doka_rebalances_total",
                "Partition assignment changes: assigned, revoked, lost.",
                &["event"],
            ),
            record_age: histogram(
                &r,
                "doka_record_age_seconds",
                "Seconds from a record's Kafka timestamp (CreateTime or LogAppendTime) to the destination's acknowledgement; records without a timestamp are not observed.",
                RECORD_AGE_BUCKETS.to_vec(),
                &["route"],
            ),
            oldest_undelivered: gauge(
                &r,
                "doka_oldest_undelivered_record_age_seconds",
                "Age (from its Kafka timestamp) of the oldest record taken from Kafka and not yet acknowledged by the route's destination; 0 when none.",
                &["route"],
            ),
            schemas: SchemaMetricVecs::new(&r),
            topics: TopicLabels::default(),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }

    /// The metrics of a route's destination: labelled by route and by the stream's (or
    /// delivery stream's) name, never its ARN (which names account B).
    pub fn destination(&self, route: &str, stream: &str) -> DestinationMetrics {
        let request = |outcome: PutOutcome| {
            self.put_requests
                .with_label_values(&[route, stream, outcome.label()])
        };
        DestinationMetrics {
            delivered: self.delivered.with_label_values(&[route, stream]),
            retried: self.retried.with_label_values(&[route, stream]),
            throttled: self.throttled.with_label_values(&[route, stream]),
            failed: self.failed.with_label_values(&[route, stream]),
            put_requests: [
                request(PutOutcome::Ok),
                request(PutOutcome::Partial),
                request(PutOutcome::Throttled),
                request(PutOutcome::Timeout),
                request(PutOutcome::Error),
            ],
            put_duration: self.put_duration.with_label_values(&[route, stream]),
            batch_records: self.batch_records.with_label_values(&[route, stream]),
            batch_bytes: self.batch_bytes.with_label_values(&[route, stream]),
            send_rate: self.send_rate.with_label_values(&[route, stream]),
            record_age: self.record_age.with_label_values(&[route]),
        }
    }

    /// The age gauge of a route's oldest record on its way (set by the consumer thread).
    pub fn oldest_undelivered(&self, route: &str) -> Gauge {
        self.oldest_undelivered.with_label_values(&[route])
    }

    pub fn consumed(&self, topic: &str) -> IntCounter {
        self.consumed.with_label_values(&[self.topics.label(topic)])
    }

    pub fn dead_lettered(&self, topic: &str) -> IntCounter {
        self.dead_lettered
            .with_label_values(&[self.topics.label(topic)])
    }

    pub fn skipped(&self, topic: &str) -> IntCounter {
        self.skipped.with_label_values(&[self.topics.label(topic)])
    }

    pub fn skipped_as_delivered(&self, topic: &str) -> IntCounter {
        self.skipped_as_delivered
            .with_label_values(&[self.topics.label(topic)])
    }

    /// Offsets and lag of an assigned partition; `None` values are not known (yet).
    pub fn partition(
        &self,
        topic: &str,
        partition: i32,
        committed: Option<i64>,
        fetched: Option<i64>,
        lag: Option<i64>,
    ) {
        let p = partition.to_string();
        let labels = [topic, p.as_str()];
        for (gauge, value) in [
            (&self.committed_offset, committed),
            (&self.fetched_offset, fetched),
            (&self.lag, lag),
        ] {
            if let Some(v) = value {
                gauge.with_label_values(&labels).set(v);
            }
        }
    }

    /// A partition is no longer ours: its series go (another member reports it now).
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let p = partition.to_string();
        for gauge in [&self.committed_offset, &self.fetched_offset, &self.lag] {
            let _ = gauge.remove_label_values(&[topic, p.as_str()]);
        }
    }

    pub fn rebalance(&self, event: &str) {
        self.rebalances.with_label_values(&[event]).inc();
    }

    /// New credentials of `kind`, valid until `expiry` (Unix seconds), when they expire.
    /// `route`: whose assumed role it is; empty for the MSK IAM token (the source identity's,
    /// shared by every route).
    pub fn credentials_renewed(&self, kind: CredentialKind, route: &str, expiry: Option<f64>) {
        self.credential_renewals
            .with_label_values(&[kind.label(), route])
            .inc();
        if let Some(expiry) = expiry {
            self.credential_expiry
                .with_label_values(&[kind.label(), route])
                .set(expiry);
        }
    }

    /// Sum over every label set of a counter family.
    fn total(vec: &IntCounterVec) -> u64 {
        use prometheus::core::Collector;
        vec.collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The one-line summary logged at exit (the tests read it too).
    pub fn summary(&self) -> String {
        let requests = Self::total(&self.put_requests);
        // Requests that failed as a whole: every outcome but ok and partial.
        let answered: u64 = [PutOutcome::Ok, PutOutcome::Partial]
            .iter()
            .map(|o| {
                let outcome = o.label();
                use prometheus::core::Collector;
                self.put_requests
                    .collect()
                    .iter()
                    .flat_map(|family| family.get_metric())
                    .filter(|m| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == "outcome" && l.value() == outcome)
                    })
                    .map(|m| m.get_counter().get_value() as u64)
                    .sum::<u64>()
            })
            .sum();
        let failed_requests = requests - answered;
        format!(
            "consumed={} delivered={} requests={requests} failed_requests={failed_requests} retried_entries={} throttled_entries={} refetched={} not_ours={} dead_lettered={} skipped={}",
            Self::total(&self.consumed),
            Self::total(&self.delivered),
            Self::total(&self.retried),
            Self::total(&self.throttled),
            self.refetched.get(),
            self.not_ours.get(),
            Self::total(&self.dead_lettered),
            Self::total(&self.skipped),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_the_exported_counters() {
        let metrics = Metrics::new();
        let stream = metrics.destination("default", "orders");
        metrics.consumed("a").inc_by(3);
        metrics.consumed("b").inc_by(2);
        stream.delivered.inc_by(4);
        stream.request(PutOutcome::Ok);
        stream.request(PutOutcome::Error);
        stream.request(PutOutcome::Throttled);
        metrics.skipped("a").inc();
        let summary = metrics.summary();
        assert!(
            summary.starts_with("consumed=5 delivered=4 requests=3 failed_requests=2 "),
            "{summary}"
        );
        assert!(summary.ends_with("skipped=1"), "{summary}");
        let text = metrics.encode();
        assert!(
            text.contains("doka_records_consumed_total{topic=\"a\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("doka_records_delivered_total{route=\"default\",stream=\"orders\"} 4"),
            "{text}"
        );
        assert!(
            text.contains(
                "doka_put_requests_total{outcome=\"error\",route=\"default\",stream=\"orders\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("doka_build_info{version="), "{text}");
    }

    #[test]
    fn a_revoked_partition_leaves_no_series_behind() {
        let metrics = Metrics::new();
        metrics.partition("t", 3, Some(10), Some(12), Some(0));
        assert!(
            metrics
                .encode()
                .contains("doka_consumer_lag_records{partition=\"3\",topic=\"t\"} 0")
        );
        metrics.forget_partition("t", 3);
        assert!(!metrics.encode().contains("partition=\"3\""));
    }
}
