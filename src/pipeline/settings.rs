//! The pipeline's settings: how partition keys are made (`partition_key`), what a destination
//! record holds and what a policy does with records that cannot go as they are (`records`,
//! oversized records), batching (`batch`), lanes and ordering (`pipeline`) and retries
//! (`retry`) — with their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Checked, bad, range};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionKeyConfig {
    #[serde(default)]
    pub rule: KeyRule,
    /// Required for `prefix_random`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// For `json_field`: a dotted path into a JSON value, e.g. `customer.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `template`: text with `{topic}`, `{partition}` and `{key}`, e.g. `{topic}-{partition}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A key over Kinesis' 256 characters (any rule that uses the Kafka key or builds one).
    #[serde(default)]
    pub on_long_key: LongKeyPolicy,
    /// A Kafka key that is not UTF-8 text (rules `kafka_key`, `json_field`'s fallback, `template`).
    #[serde(default)]
    pub on_binary_key: BinaryKeyPolicy,
    /// Route by an ExplicitHashKey instead of the partition key's MD5.
    #[serde(default)]
    pub explicit_hash_key: ExplicitHashKey,
}

/// How records are routed to shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplicitHashKey {
    /// By the partition key's MD5, as Kinesis does by default: a key always lands on one shard.
    #[default]
    None,
    /// Evenly over the whole hash-key space, record after record, whatever the keys: for keyless
    /// or skewed data. Records of one key then land on different shards (no per-key order).
    Spread,
}

/// Kinesis' limit on a partition key, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyRule {
    /// The Kafka message key (default). Same key, same shard, Kafka order kept.
    #[default]
    KafkaKey,
    /// A random key per record: even spread over shards, no order between records.
    Random,
    /// A fixed prefix followed by a random suffix.
    PrefixRandom,
    /// A field of the JSON value (`partition_key.field`); when the value is not JSON or the field
    /// is missing, null, an object or an array, the `kafka_key` rule decides instead.
    JsonField,
    /// `partition_key.template` with `{topic}`, `{partition}` and `{key}` filled in.
    Template,
}

/// What to do with a Kafka key over [`MAX_PARTITION_KEY_CHARS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LongKeyPolicy {
    /// Use the 32 hex digits of its MD5: equal keys stay together (default).
    #[default]
    Hash,
    /// Use its first 256 characters: keys sharing them share a shard.
    Truncate,
    /// Write the record to `dead_letter.topic` instead of Kinesis.
    DeadLetter,
    /// Stop doka; nothing from the record on is committed.
    Stop,
}

/// What to do with a Kafka key that is not UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BinaryKeyPolicy {
    /// Use the 32 hex digits of its MD5 (default).
    #[default]
    Hash,
    DeadLetter,
    Stop,
}

/// Per-record rules for records Kinesis cannot take as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    /// What a destination record holds: the Kafka value, or a JSON envelope with its metadata.
    #[serde(default)]
    pub format: RecordFormat,
    /// What ends each record. Default: `newline` for Firehose (JSON Lines objects in S3), `none`
    /// for Kinesis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<Delimiter>,
    /// A record without a value (a tombstone) or with an empty one.
    #[serde(default)]
    pub on_tombstone: TombstonePolicy,
    /// A record with Kafka headers, which a raw record cannot carry (`envelope` carries them, so
    /// this is not used there).
    #[serde(default)]
    pub on_headers: HeadersPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// The Kafka value, byte for byte.
    #[default]
    Raw,
    /// One JSON object with value, key, headers, topic, partition, offset and timestamp
    /// (docs/ENVELOPE.md, docs/envelope.schema.json).
    Envelope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delimiter {
    None,
    /// A "\n" after each record: Firehose concatenates records, so S3 objects are JSON Lines.
    Newline,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadersPolicy {
    /// Send key and value; the headers are not sent (said once in the log).
    #[default]
    Ignore,
    /// Write records with headers to `dead_letter.topic`, headers and all.
    DeadLetter,
    /// Stop doka at the first record with headers.
    Stop,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TombstonePolicy {
    /// Write an empty record with the record's partition key.
    #[default]
    SendEmpty,
    /// Do not send it; counted (`skipped` in the summary), logged, and its offset committed.
    Skip,
    /// Write it to `dead_letter.topic`.
    DeadLetter,
    /// Stop doka; nothing from it on is committed.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    #[serde(default = "defaults::max_records")]
    pub max_records: u32,
    /// Request size limit (data + partition keys). 5 MiB is safe on every stream.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
    /// How long a partly filled batch waits for more records.
    #[serde(default = "defaults::linger_ms")]
    pub linger_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Independent send lanes = PutRecords requests in flight at once. A partition key always uses
    /// the same lane, so its records keep their order.
    #[serde(default = "defaults::lanes")]
    pub lanes: u32,
    /// When this many records are fetched but not yet delivered, fetching pauses.
    #[serde(default = "defaults::max_in_flight_records")]
    pub max_in_flight_records: u64,
    /// When this many bytes are fetched but not yet delivered, fetching pauses.
    #[serde(default = "defaults::max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
    #[serde(default)]
    pub ordering: Ordering,
    #[serde(default = "defaults::commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// The longest commit metadata (the records delivered above a committed offset, read by the
    /// next owner after a crash); 0 turns it off. Kafka's `offset.metadata.max.bytes`.
    #[serde(default = "defaults::commit_metadata_max_bytes")]
    pub commit_metadata_max_bytes: u64,
    /// How long a revoked partition's records in flight may take before the rebalance goes on.
    #[serde(default = "defaults::rebalance_drain_timeout_ms")]
    pub rebalance_drain_timeout_ms: u64,
    /// How long shutdown waits for records in flight before giving up (uncommitted, redelivered).
    #[serde(default = "defaults::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

/// What happens to the order of a key's records when some entries of a request fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Resend a failed entry together with every later entry of the same partition key in its
    /// request, so the last copy of each record is in Kafka order (see docs/ORDERING.md).
    #[default]
    PerKey,
    /// Resend only the failed entries: fewer duplicates, a retried record may land after later
    /// records of its key.
    None,
    /// A reader never sees a record of a key before an earlier one of the same key: a request
    /// carries at most one entry per key (one record, or one aggregate), and a lane retries its
    /// failures before it sends anything later.
    Strict,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Attempts per batch before doka stops (without committing it). 0 = never give up.
    #[serde(default)]
    pub max_attempts: u32,
    /// Slow every lane of the stream down when it throttles, and speed up again while it does
    /// not (see `pipeline::pace`). Off: each lane only backs off on its own.
    #[serde(default = "defaults::adaptive_rate")]
    pub adaptive_rate: bool,
    /// The adaptive rate never drops below this many records per second.
    #[serde(default = "defaults::min_records_per_sec")]
    pub min_records_per_sec: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OversizedPolicy {
    /// Write it to `dead_letter.topic` (original bytes and headers, plus why and where from).
    DeadLetter,
    /// Stop doka with a clear error; the record and everything after it stay uncommitted.
    Stop,
}

mod defaults {
    pub fn max_records() -> u32 {
        500
    }
    pub fn max_bytes() -> u64 {
        5 * 1024 * 1024
    }
    pub fn linger_ms() -> u64 {
        20
    }
    pub fn lanes() -> u32 {
        12
    }
    pub fn max_in_flight_records() -> u64 {
        10_000
    }
    pub fn max_in_flight_bytes() -> u64 {
        32 * 1024 * 1024
    }
    /// A crash re-sends what was delivered since the last commit: 250 ms halves that against
    /// 1 s at no measurable CPU cost (docs/PERFORMANCE.md, "Crash re-sends").
    pub fn commit_interval_ms() -> u64 {
        250
    }
    pub fn rebalance_drain_timeout_ms() -> u64 {
        10_000
    }
    pub fn commit_metadata_max_bytes() -> u64 {
        crate::pipeline::delivered::DEFAULT_MAX_BYTES as u64
    }
    pub fn shutdown_timeout_ms() -> u64 {
        30_000
    }
    pub fn initial_backoff_ms() -> u64 {
        100
    }
    pub fn max_backoff_ms() -> u64 {
        10_000
    }
    pub fn adaptive_rate() -> bool {
        true
    }
    pub fn min_records_per_sec() -> u64 {
        50
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: defaults::max_records(),
            max_bytes: defaults::max_bytes(),
            linger_ms: defaults::linger_ms(),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            lanes: defaults::lanes(),
            max_in_flight_records: defaults::max_in_flight_records(),
            max_in_flight_bytes: defaults::max_in_flight_bytes(),
            ordering: Ordering::default(),
            commit_interval_ms: defaults::commit_interval_ms(),
            commit_metadata_max_bytes: defaults::commit_metadata_max_bytes(),
            rebalance_drain_timeout_ms: defaults::rebalance_drain_timeout_ms(),
            shutdown_timeout_ms: defaults::shutdown_timeout_ms(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            max_attempts: 0,
            adaptive_rate: defaults::adaptive_rate(),
            min_records_per_sec: defaults::min_records_per_sec(),
        }
    }
}

impl PipelineConfig {
    /// Semantic checks; keys are reported as `pipeline.…`.
    pub fn validate(&self) -> Checked {
        range("pipeline.lanes", self.lanes, 1, 1024)?;
        range(
            "pipeline.max_in_flight_records",
            self.max_in_flight_records,
            1,
            10_000_000,
        )?;
        range(
            "pipeline.max_in_flight_bytes",
            self.max_in_flight_bytes,
            1024,
            16 * 1024 * 1024 * 1024,
        )?;
        range(
            "pipeline.commit_interval_ms",
            self.commit_interval_ms,
            10,
            600_000,
        )?;
        if self.commit_metadata_max_bytes != 0 {
            // Below 64 not even the metadata's header fits.
            range(
                "pipeline.commit_metadata_max_bytes",
                self.commit_metadata_max_bytes,
                64,
                1024 * 1024,
            )?;
        }
        range(
            "pipeline.rebalance_drain_timeout_ms",
            self.rebalance_drain_timeout_ms,
            0,
            600_000,
        )?;
        range(
            "pipeline.shutdown_timeout_ms",
            self.shutdown_timeout_ms,
            0,
            3_600_000,
        )
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }
    pub fn rebalance_drain_timeout(&self) -> Duration {
        Duration::from_millis(self.rebalance_drain_timeout_ms)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl PartitionKeyConfig {
    /// Semantic checks; keys are reported under `prefix`.
    pub fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        // Each option belongs to one rule: needed by it, refused with any other.
        let options = [
            (
                "prefix",
                &self.prefix,
                KeyRule::PrefixRandom,
                "prefix_random",
                "a prefix",
            ),
            (
                "field",
                &self.field,
                KeyRule::JsonField,
                "json_field",
                "a field, e.g. customer.id",
            ),
            (
                "template",
                &self.template,
                KeyRule::Template,
                "template",
                "a template, e.g. `{topic}-{partition}`",
            ),
        ];
        for (option, value, owner, rule, example) in options {
            let option_key = key(&format!("partition_key.{option}"));
            match (self.rule == owner, value) {
                (true, None) => return bad(&option_key, format!("rule {rule} needs {example}")),
                (false, Some(_)) => {
                    return bad(
                        &option_key,
                        format!("is only used with rule {rule}: remove it or change the rule"),
                    );
                }
                _ => {}
            }
        }
        if let Some(prefix) = &self.prefix {
            range(
                &key("partition_key.prefix (characters)"),
                prefix.chars().count(),
                1,
                MAX_PARTITION_KEY_CHARS - 32,
            )?;
        }
        if let Some(Err(problem)) = self.field.as_deref().map(field_path) {
            return bad(&key("partition_key.field"), problem);
        }
        if let Some(Err(problem)) = self.template.as_deref().map(check_key_template) {
            return bad(&key("partition_key.template"), problem);
        }
        Ok(())
    }
}

impl RetryConfig {
    /// Semantic checks; keys are reported under `prefix`.
    pub fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        range(
            &key("retry.initial_backoff_ms"),
            self.initial_backoff_ms,
            1,
            60_000,
        )?;
        range(
            &key("retry.max_backoff_ms"),
            self.max_backoff_ms,
            self.initial_backoff_ms,
            600_000,
        )?;
        range(
            &key("retry.min_records_per_sec"),
            self.min_records_per_sec,
            1,
            1_000_000,
        )?;

        Ok(())
    }
}

/// Splits a dotted path (`customer.id`) into its steps. Keys containing a dot cannot be named.
pub fn field_path(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Err("the JSON field path is empty; name a field, e.g. `customer.id`".to_string());
    }
    let steps: Vec<String> = path.split('.').map(str::to_string).collect();
    if let Some(i) = steps.iter().position(String::is_empty) {
        let problem = if path.starts_with('.') {
            "starts with a dot".to_string()
        } else if path.ends_with('.') {
            "ends with a dot".to_string()
        } else {
            format!(
                "has an empty segment (two dots in a row) after `{}`",
                steps[..i].join(".")
            )
        };
        return Err(format!(
            "the JSON field path `{path}` {problem}; write the field names separated by single dots, e.g. `customer.id`"
        ));
    }
    Ok(steps)
}

/// A partition key template: text with `{topic}`, `{partition}` and `{key}`.
pub fn check_key_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    let mut placeholders = 0;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err(format!("`{template}` has a `}}` without its `{{`"));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("`{template}` has a `{{` without its `}}`"));
        };
        let name = &rest[open + 1..open + close];
        if !matches!(name, "topic" | "partition" | "key") {
            return Err(format!(
                "`{template}` uses `{{{name}}}`: expected {{topic}}, {{partition}} or {{key}}"
            ));
        }
        placeholders += 1;
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') || placeholders == 0 {
        return Err(format!(
            "`{template}` needs at least one of {{topic}}, {{partition}}, {{key}} (and balanced braces)"
        ));
    }
    Ok(())
}
