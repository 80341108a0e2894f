//! What schema-registry decoding counts: records decoded and failed by reason, schema fetches and
//! their latency, the schema caches and the records waiting for a schema.

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use super::metrics::{counter, histogram, int_gauge};

/// Why a record did not decode, for `doka_records_undecodable_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecodable {
    /// Not in the registry's framing (no magic byte, a short header).
    NotFramed,
    /// The registry does not know its schema id or version.
    UnknownSchema,
    /// The bytes do not match the schema (or the schema cannot be used).
    Malformed,
}

impl Undecodable {
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFramed => "not_framed",
            Self::UnknownSchema => "unknown_schema",
            Self::Malformed => "malformed",
        }
    }
}

/// How a schema fetch ended, for `doka_schema_fetches_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Ok,
    /// The registry does not know it (404, EntityNotFound).
    NotFound,
    /// The registry refused doka's credentials (retried).
    Refused,
    /// No answer, a timeout or a server error (retried).
    Unavailable,
}

impl FetchOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotFound => "not_found",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
        }
    }
}

pub struct SchemaMetricVecs {
    decoded: IntCounterVec,
    undecodable: IntCounterVec,
    fetches: IntCounterVec,
    fetch_duration: HistogramVec,
    cached: IntGaugeVec,
    cache_capacity: IntGaugeVec,
    waiting: IntGaugeVec,
}

/// The metrics of one route's side (value or key), resolved once.
#[derive(Clone)]
pub struct SchemaMetrics {
    pub decoded: IntCounter,
    undecodable: [IntCounter; 3],
    fetches: [IntCounter; 4],
    pub fetch_duration: Histogram,
    pub cached: IntGauge,
    /// Records held because their schema is being fetched (the route's).
    pub waiting: IntGauge,
}

impl SchemaMetrics {
    pub fn undecodable(&self, why: Undecodable) -> &IntCounter {
        &self.undecodable[why as usize]
    }

    pub fn fetched(&self, outcome: FetchOutcome) {
        self.fetches[outcome as usize].inc();
    }
}

impl SchemaMetricVecs {
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            decoded: counter(
                r,
                "doka_records_decoded_total",
                "Records (values or keys, by side) decoded with their registry schema.",
                &["route", "side"],
            ),
            undecodable: counter(
                r,
                "doka_records_undecodable_total",
                "Records that could not decode, by reason: not_framed, unknown_schema, malformed (each then follows decode.<side>.on_undecodable).",
                &["route", "side", "reason"],
            ),
            fetches: counter(
                r,
                "doka_schema_fetches_total",
                "Schema fetches from the registry by outcome: ok, not_found, refused (credentials), unavailable (retried).",
                &["route", "side", "outcome"],
            ),
            fetch_duration: histogram(
                r,
                "doka_schema_fetch_duration_seconds",
                "Time of one schema fetch from the registry (any outcome).",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
                &["route", "side"],
            ),
            cached: int_gauge(
                r,
                "doka_schema_cache_entries",
                "Schemas held in the route side's cache.",
                &["route", "side"],
            ),
            cache_capacity: int_gauge(
                r,
                "doka_schema_cache_capacity",
                "The bound of the route side's schema cache (decode.<side>.max_cached_schemas).",
                &["route", "side"],
            ),
            waiting: int_gauge(
                r,
                "doka_records_waiting_for_schema",
                "Records held (not sent, not committed) until their schema is fetched.",
                &["route"],
            ),
        }
    }

    pub fn resolve(&self, route: &str, side: &str, capacity: usize) -> SchemaMetrics {
        let labels = [route, side];
        self.cache_capacity
            .with_label_values(&labels)
            .set(capacity as i64);
        let undecodable = |why: Undecodable| {
            self.undecodable
                .with_label_values(&[route, side, why.label()])
        };
        let fetches = |outcome: FetchOutcome| {
            self.fetches
                .with_label_values(&[route, side, outcome.label()])
        };
        SchemaMetrics {
            decoded: self.decoded.with_label_values(&labels),
            undecodable: [
                undecodable(Undecodable::NotFramed),
                undecodable(Undecodable::UnknownSchema),
                undecodable(Undecodable::Malformed),
            ],
            fetches: [
                fetches(FetchOutcome::Ok),
                fetches(FetchOutcome::NotFound),
                fetches(FetchOutcome::Refused),
                fetches(FetchOutcome::Unavailable),
            ],
            fetch_duration: self.fetch_duration.with_label_values(&labels),
            cached: self.cached.with_label_values(&labels),
            waiting: self.waiting.with_label_values(&[route]),
        }
    }
}
