//! The `kinesis:` section and Kinesis' limits.

use serde::{Deserialize, Serialize};

use crate::settings::{Checked, bad, range};

/// Kinesis' PutRecords entry limit.
pub const MAX_PUT_RECORDS_ENTRIES: u32 = 500;
/// Kinesis' largest possible request (streams default to 5 MiB behaviour in many accounts).
pub const MAX_PUT_RECORDS_BYTES: u64 = 10 * 1024 * 1024;
/// The largest record size a stream can be configured for.
pub const MAX_STREAM_RECORD_BYTES: u64 = 10 * 1024 * 1024;

/// A Kinesis route's destination (`kinesis:`): the shorthand's or a route's stream, with the
/// defaults every Kinesis route inherits from the top level.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    /// Stream name, or its ARN (the ARN pins the account and region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The stream's maximum record size (data + partition key); 1 MiB unless raised on the stream.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u64,
    /// Time limit of one PutRecords call, including connecting.
    #[serde(default = "crate::sink::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// KPL aggregation: many records in one Kinesis record (docs/PERFORMANCE.md).
    #[serde(default)]
    pub aggregation: AggregationConfig,
}

/// Packing records into KPL aggregated records, per shard. Off by default: only readers that
/// de-aggregate (KCL, Firehose with a stream source, Lambda with the aggregation library) see the
/// records; others see one opaque blob per aggregate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The largest aggregate (data and partition key, as Kinesis counts it). 51,200 bytes is two
    /// 25 KB PUT payload units and the KPL's default.
    #[serde(default = "default_aggregate_max_bytes")]
    pub max_bytes: u64,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_bytes: default_aggregate_max_bytes(),
        }
    }
}

fn default_max_record_bytes() -> u64 {
    1024 * 1024
}

fn default_aggregate_max_bytes() -> u64 {
    51_200
}

impl KinesisConfig {
    /// Semantic checks; keys are reported under `prefix` (a route's `routes[i].`, or nothing).
    pub fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        let stream = self.stream.as_deref().unwrap_or_default();
        if !is_stream_name(stream) && !is_stream_arn(stream) {
            return bad(
                &key("kinesis.stream"),
                format!(
                    "`{stream}` is neither a stream name (1-128 of a-z A-Z 0-9 _ . -) nor a stream ARN (arn:aws:kinesis:<region>:<account>:stream/<name>)",
                ),
            );
        }
        range(
            &key("kinesis.max_record_bytes"),
            self.max_record_bytes,
            1024,
            MAX_STREAM_RECORD_BYTES,
        )?;
        range(
            &key("kinesis.request_timeout_ms"),
            self.request_timeout_ms,
            100,
            600_000,
        )?;
        if self.aggregation.enabled {
            range(
                &key("kinesis.aggregation.max_bytes"),
                self.aggregation.max_bytes,
                1024,
                self.max_record_bytes,
            )?;
        }
        Ok(())
    }

    /// The stream's name (also when `stream` is an ARN): what logs and metrics call it.
    pub fn stream_name(&self) -> &str {
        let stream = self.stream.as_deref().unwrap_or_default();
        stream
            .rsplit_once("stream/")
            .map_or(stream, |(_, name)| name)
    }

    /// The stream as (name, arn), as the API takes it: exactly one is set.
    pub fn target(&self) -> (Option<&str>, Option<&str>) {
        match self.stream.as_deref() {
            Some(stream) if is_stream_arn(stream) => (None, Some(stream)),
            Some(stream) => (Some(stream), None),
            None => (None, None),
        }
    }

    /// KPL aggregation's largest aggregate, when enabled.
    pub fn aggregate_max_bytes(&self) -> Option<usize> {
        self.aggregation
            .enabled
            .then_some(self.aggregation.max_bytes as usize)
    }
}

/// A stream (or delivery stream) name: 1–128 of a-z A-Z 0-9 _ . -
pub fn is_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn is_stream_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "kinesis"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].strip_prefix("stream/").is_some_and(is_stream_name)
}
