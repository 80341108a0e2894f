//! Configuration: one YAML file with a base section and named profiles, plus environment variables.
//!
//! Layers, later ones win: built-in defaults → the file's top-level keys → `profiles.<name>` from the
//! same file → `DOKA_<SECTION>__<KEY>` environment variables (`__` separates levels, e.g.
//! `DOKA_KAFKA__GROUP_ID`, `DOKA_BATCH__LINGER_MS`). Every mistake stops start-up with an error that
//! names the file, the key and what is expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod yaml;
use yaml::Yaml;

/// Kinesis' PutRecords entry limit.
pub const MAX_PUT_RECORDS_ENTRIES: u32 = 500;
/// Kinesis' largest possible request (streams default to 5 MiB behaviour in many accounts).
pub const MAX_PUT_RECORDS_BYTES: u64 = 10 * 1024 * 1024;
/// The largest record size a stream can be configured for.
pub const MAX_STREAM_RECORD_BYTES: u64 = 10 * 1024 * 1024;

// Each destination's settings live next to its sink; the AWS settings they share are here.
pub use crate::sink::firehose::FirehoseConfig;
pub use crate::sink::kinesis::{AggregationConfig, KinesisConfig};

const ENV_PREFIX: &str = "DOKA_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    /// AWS settings of every route (a route's own `aws` keys override them).
    #[serde(default, deserialize_with = "null_as_default")]
    pub aws: AwsConfig,
    /// The one-route shorthand's stream (`kinesis.stream`), and defaults for Kinesis routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis: Option<KinesisConfig>,
    /// The one-route shorthand's delivery stream, and defaults for Firehose routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firehose: Option<FirehoseConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub partition_key: PartitionKeyConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub batch: BatchConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pipeline: PipelineConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub retry: RetryConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub log: LogConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub records: RecordsConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub dead_letter: DeadLetterConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub http: HttpConfig,
    /// Routes as written: each is merged over the shared sections into [`Self::routes`].
    #[serde(default, rename(deserialize = "routes"), skip_serializing)]
    pub route_specs: Vec<figment::value::Value>,
    /// Every route, resolved and validated: the shorthand's one, or one per `routes` entry.
    #[serde(skip_deserializing, rename(serialize = "routes"))]
    pub routes: Vec<Route>,
    /// Named overlays; read when the file is loaded, not part of the effective config.
    #[serde(default, skip_serializing)]
    pub profiles: BTreeMap<String, figment::value::Value>,
}

/// One way from Kafka topics to one destination, with everything that may differ per route.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub name: String,
    /// Topic names; with `topic_pattern`, topics matching either are the route's.
    pub topics: Vec<String>,
    /// A regular expression a whole topic name must match (new topics are picked up while doka
    /// runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    pub aws: AwsConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinesis: Option<KinesisConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firehose: Option<FirehoseConfig>,
    pub partition_key: PartitionKeyConfig,
    pub batch: BatchConfig,
    pub records: RecordsConfig,
    pub retry: RetryConfig,
    pub lanes: u32,
    pub ordering: Ordering,
    /// The route's weight in the in-flight bound (see [`Route::in_flight_share`]).
    pub in_flight_share: u32,
}

/// A `routes` entry as written; missing sections come from the top level.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "string_list")]
    topics: Vec<String>,
    #[serde(default)]
    topic_pattern: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    aws: AwsConfig,
    #[serde(default)]
    kinesis: Option<KinesisConfig>,
    #[serde(default)]
    firehose: Option<FirehoseConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    partition_key: PartitionKeyConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    batch: BatchConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    records: RecordsConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    retry: RetryConfig,
    #[serde(default)]
    lanes: Option<u32>,
    #[serde(default)]
    ordering: Option<Ordering>,
    #[serde(default = "defaults::in_flight_share")]
    in_flight_share: u32,
}

/// Where a route writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    Kinesis,
    Firehose,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers: a list, or one comma-separated string.
    #[serde(deserialize_with = "string_list")]
    pub brokers: Vec<String>,
    pub group_id: String,
    /// The one-route shorthand's topics (with `routes`, each route lists its own).
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub topics: Vec<String>,
    /// Where a group without committed offsets starts.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Extra librdkafka properties, e.g. `security.protocol: SSL`. Values whose name suggests a
    /// secret are redacted when the config is printed.
    #[serde(
        default,
        deserialize_with = "flat_properties",
        serialize_with = "yaml::single_quoted_values"
    )]
    pub properties: BTreeMap<String, String>,
    /// At start-up, how long doka waits for the brokers to answer before it exits (code 6). Once
    /// running, a broker outage is waited out instead.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How doka connects and authenticates: plaintext, TLS (optionally mutual), SASL/SCRAM or
    /// MSK IAM. Sets the librdkafka properties so nobody has to know their names.
    #[serde(default, deserialize_with = "null_as_default")]
    pub auth: KafkaAuth,
}

/// Connection security towards the brokers. Amazon MSK offers these four (ports 9092, 9094, 9096
/// and 9098); `scram` and `iam` always run over TLS, as on MSK.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaAuth {
    #[serde(default)]
    pub mode: AuthMode,
    /// Trust and (for mode `tls`) client certificate. Optional: the system CAs are used without it.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    #[serde(default)]
    pub scram: Option<ScramSettings>,
    #[serde(default)]
    pub iam: Option<IamSettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No encryption, no authentication (or whatever `kafka.properties` sets).
    #[default]
    Plaintext,
    /// TLS; mutual TLS when `tls.cert_file` and `tls.key_file` are set.
    Tls,
    /// SASL/SCRAM over TLS.
    Scram,
    /// MSK IAM: SASL/OAUTHBEARER over TLS with tokens signed by the source AWS identity.
    Iam,
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Tls => "tls",
            Self::Scram => "scram",
            Self::Iam => "iam",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the CA(s) that signed the brokers' certificates (MSK: public CAs, so usually
    /// not needed; a private CA needs it).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScramSettings {
    #[serde(default)]
    pub mechanism: ScramMechanism,
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself; prefer `password_file` (a mounted Secret) or `password_env`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (one trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScramMechanism {
    /// The only SCRAM mechanism Amazon MSK offers.
    #[default]
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    Sha512,
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    Sha256,
}

impl ScramMechanism {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha512 => "SCRAM-SHA-512",
            Self::Sha256 => "SCRAM-SHA-256",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamSettings {
    /// The MSK cluster's region. Default: taken from MSK broker names
    /// (`b-1.<cluster>.<id>.c2.kafka.<region>.amazonaws.com`), else the AWS SDK's region
    /// (`AWS_REGION`). It may differ from `aws.region`, the stream's.
    #[serde(default)]
    pub region: Option<String>,
    /// Lifetime librdkafka is told the token has (it asks for a new one at 80%). MSK tokens are
    /// valid for 900 s; a shorter value only renews them sooner.
    #[serde(default = "defaults::iam_token_lifetime_secs")]
    pub token_lifetime_secs: u64,
}

impl Default for IamSettings {
    fn default() -> Self {
        Self {
            region: None,
            token_lifetime_secs: defaults::iam_token_lifetime_secs(),
        }
    }
}

impl ScramSettings {
    /// The password from whichever source is set. Validation made sure exactly one is, and that
    /// it can be read.
    pub fn password(&self) -> Result<String, String> {
        if let Some(p) = &self.password {
            return Ok(p.expose().to_owned());
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            return Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned());
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map_err(|_| format!("the environment variable {var} is not set"));
        }
        Err("no password source set".into())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region of the target stream; falls back to the AWS SDK's own lookup (AWS_REGION, profile).
    #[serde(default)]
    pub region: Option<String>,
    /// STS endpoint override (local emulator, VPC endpoint). `AWS_ENDPOINT_URL_STS` works too.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// Kinesis endpoint override. `AWS_ENDPOINT_URL_KINESIS` works too.
    #[serde(default)]
    pub kinesis_endpoint: Option<String>,
    /// Firehose endpoint override. `AWS_ENDPOINT_URL_FIREHOSE` works too.
    #[serde(default)]
    pub firehose_endpoint: Option<String>,
    /// Role in the target account to assume. Without it the source credentials write directly.
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<Secret>,
    /// Defaults to `doka-<profile>-<random suffix>`.
    #[serde(default)]
    pub session_name: Option<String>,
    #[serde(default = "defaults::session_duration_secs")]
    pub session_duration_secs: u64,
    /// Assumed-role credentials are renewed this long before they expire.
    #[serde(default = "defaults::credential_refresh_margin_secs")]
    pub credential_refresh_margin_secs: u64,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: None,
            sts_endpoint: None,
            kinesis_endpoint: None,
            firehose_endpoint: None,
            role_arn: None,
            external_id: None,
            session_name: None,
            session_duration_secs: defaults::session_duration_secs(),
            credential_refresh_margin_secs: defaults::credential_refresh_margin_secs(),
        }
    }
}

/// Firehose's limits, as the sink knows them: records per PutRecordBatch, bytes per request,
/// bytes per record (data only).
pub const FIREHOSE_MAX_BATCH_RECORDS: u32 = crate::sink::firehose::MAX_BATCH_RECORDS as u32;
pub const FIREHOSE_MAX_BATCH_BYTES: u64 = crate::sink::firehose::MAX_BATCH_BYTES as u64;
pub const FIREHOSE_MAX_RECORD_BYTES: u64 = crate::sink::firehose::MAX_RECORD_BYTES as u64;

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

/// Records Kinesis would refuse, and where they go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// A Kafka topic on the same cluster for records that cannot be sent to Kinesis.
    #[serde(default)]
    pub topic: Option<String>,
    /// What to do with a record over `kinesis.max_record_bytes`. Default: `dead_letter` when a
    /// topic is set, otherwise `stop`.
    #[serde(default)]
    pub on_oversized: Option<OversizedPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OversizedPolicy {
    /// Write it to `dead_letter.topic` (original bytes and headers, plus why and where from).
    DeadLetter,
    /// Stop doka with a clear error; the record and everything after it stay uncommitted.
    Stop,
}

impl DeadLetterConfig {
    pub fn oversized_policy(&self) -> OversizedPolicy {
        self.on_oversized.unwrap_or(if self.topic.is_some() {
            OversizedPolicy::DeadLetter
        } else {
            OversizedPolicy::Stop
        })
    }
}

/// The HTTP endpoint: `/metrics` (Prometheus), `/healthz` and `/readyz` (Kubernetes probes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "defaults::http_enabled")]
    pub enabled: bool,
    /// host:port to listen on.
    #[serde(default = "defaults::http_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: defaults::http_enabled(),
            listen: defaults::http_listen(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `doka=debug,rdkafka=warn`. `RUST_LOG` wins when set.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

mod defaults {
    pub fn in_flight_share() -> u32 {
        1
    }
    pub fn connect_timeout_ms() -> u64 {
        30_000
    }
    pub fn iam_token_lifetime_secs() -> u64 {
        900
    }
    pub fn session_duration_secs() -> u64 {
        3600
    }
    pub fn credential_refresh_margin_secs() -> u64 {
        300
    }
    pub fn request_timeout_ms() -> u64 {
        crate::sink::DEFAULT_REQUEST_TIMEOUT_MS
    }
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
    pub fn commit_interval_ms() -> u64 {
        1000
    }
    pub fn rebalance_drain_timeout_ms() -> u64 {
        10_000
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
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn http_enabled() -> bool {
        true
    }
    pub fn http_listen() -> String {
        "0.0.0.0:9464".into()
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

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: defaults::log_level(),
        }
    }
}

impl PipelineConfig {
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

/// A value that must never be printed: `Debug`, `Display` and serialisation show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Only strings: a password such as `0123` or `true` would reach doka as a number or a boolean
/// (YAML, and figment parses environment values), changed — and serde's usual type error would
/// quote it. This error quotes nothing.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_text())
            }
        }
        fn not_text<E: serde::de::Error>() -> E {
            E::custom(
                "this secret reads as a number or a boolean and would not be kept exactly (its \
                 value is not shown): quote it in YAML, or give it through a file or an \
                 environment variable of its own (e.g. kafka.auth.scram.password_file or \
                 password_env)",
            )
        }
        d.deserialize_any(Text)
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A configuration problem, told the way a user can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub profile: Option<String>,
}

impl Source {
    fn describe(&self) -> String {
        match &self.profile {
            Some(p) => format!("{} (profile `{p}`)", self.file.display()),
            None => self.file.display().to_string(),
        }
    }
}

/// Loads, merges and validates the configuration from `file`, its `profile` and the environment.
pub fn load(file: &Path, profile: Option<&str>) -> Result<Config, ConfigError> {
    load_with_env(file, profile, Env::prefixed(ENV_PREFIX))
}

fn load_with_env(file: &Path, profile: Option<&str>, env: Env) -> Result<Config, ConfigError> {
    let source = Source {
        file: file.to_path_buf(),
        profile: profile.map(str::to_owned),
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::new(format!(
            "cannot read config file {}: {e}. Pass an existing file with --config (or DOKA_CONFIG).",
            file.display()
        ))
    })?;
    // Parse once up front so that a YAML syntax error is reported with its line and column.
    let document: yaml::Node = yaml::parse(&text)
        .map_err(|e| ConfigError::new(format!("{} is not valid YAML: {e}", file.display())))?;
    if !matches!(document, yaml::Node::Mapping(_) | yaml::Node::Null) {
        return Err(ConfigError::new(format!(
            "{}: the top level must be a mapping of sections (kafka, aws, kinesis, ...)",
            file.display()
        )));
    }

    let file_layer = Figment::from(Yaml::file_exact(file));
    let mut figment = Figment::new().merge(file_layer.clone());
    if let Some(name) = profile {
        let available = document
            .get("profiles")
            .map(yaml::Node::keys)
            .unwrap_or_default();
        if !available.iter().any(|p| p == name) {
            return Err(ConfigError::new(format!(
                "profile `{name}` is not defined in {}: add it under `profiles:` (defined: {})",
                file.display(),
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                }
            )));
        }
        figment = figment.merge(file_layer.focus(&format!("profiles.{name}")));
    }
    let env = env.split("__").ignore(&["profile", "config"]);
    figment = figment.merge(env);

    let mut config: Config = figment
        .extract()
        .map_err(|e| ConfigError::new(describe_figment_error(e, &source)))?;
    config.validate().map_err(|(key, problem)| {
        ConfigError::new(describe_invalid(&figment, &source, &key, &problem))
    })?;
    config.resolve_routes(&figment, &source)?;
    Ok(config)
}

fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// Where the value of `key` was set, for error messages.
fn origin_of(figment: &Figment, source: &Source, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(meta) if meta.name.contains("environment") => {
            format!("environment variable {}", env_var_for(key))
        }
        _ => source.describe(),
    }
}

fn describe_invalid(figment: &Figment, source: &Source, key: &str, problem: &str) -> String {
    format!(
        "invalid config in {}: key `{key}`: {problem}",
        origin_of(figment, source, key)
    )
}

fn describe_figment_error(errors: figment::Error, source: &Source) -> String {
    describe_figment_error_at(errors, source, "")
}

/// Like [`describe_figment_error`] for a value found under `prefix` (e.g. `routes[0].`).
fn describe_figment_error_at(errors: figment::Error, source: &Source, prefix: &str) -> String {
    use figment::error::Kind;
    let mut lines = Vec::new();
    for e in errors {
        let key = format!("{prefix}{}", e.path.join("."));
        let origin = match &e.metadata {
            Some(meta) if meta.name.contains("environment") => {
                format!("environment variable {}", env_var_for(&e.path.join(".")))
            }
            _ => source.describe(),
        };
        let line = match &e.kind {
            Kind::MissingField(field) => {
                let mut path = e.path.clone();
                path.push(field.to_string());
                let key = format!("{prefix}{}", path.join("."));
                format!(
                    "missing config key `{key}`: set it in {} or in the environment variable {}",
                    source.describe(),
                    env_var_for(&key)
                )
            }
            Kind::UnknownField(field, expected) => {
                let mut path = e.path.clone();
                if path.last().map(String::as_str) != Some(field.as_str()) {
                    path.push(field.clone());
                }
                let shown = format!("{prefix}{}", path.join("."));
                format!(
                    "unknown config key `{shown}` in {origin}: expected one of {}",
                    expected
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            Kind::UnknownVariant(value, expected) => format!(
                "invalid value `{value}` for config key `{key}` in {origin}: expected one of {}",
                expected
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::InvalidType(actual, expected) => format!(
                "wrong type for config key `{key}` in {origin}: found {actual}, expected {expected}",
            ),
            other => format!("invalid config key `{key}` in {origin}: {other}",),
        };
        lines.push(line);
    }
    lines.join("\n")
}

fn bad(key: &str, problem: impl Into<String>) -> Result<(), (String, String)> {
    Err((key.to_owned(), problem.into()))
}

fn range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), (String, String)> {
    if value < min || value > max {
        return bad(
            key,
            format!("{value} is out of range: expected {min} to {max}"),
        );
    }
    Ok(())
}

/// The sections a route inherits from the top level, key by key.
const SHARED_SECTIONS: [&str; 5] = ["aws", "partition_key", "batch", "records", "retry"];

impl Config {
    /// Semantic checks of the process-wide settings serde cannot express. Returns the offending
    /// key and what is expected. Routes are checked by [`Route::validate`].
    fn validate(&self) -> Result<(), (String, String)> {
        if self.kafka.brokers.is_empty() || self.kafka.brokers.iter().any(|b| b.trim().is_empty()) {
            return bad("kafka.brokers", "expected at least one broker as host:port");
        }
        for b in &self.kafka.brokers {
            if !b.contains(':') {
                return bad(
                    "kafka.brokers",
                    format!("`{b}` has no port: expected host:port"),
                );
            }
        }
        if self.kafka.group_id.trim().is_empty() {
            return bad("kafka.group_id", "expected a non-empty consumer group id");
        }
        for reserved in [
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "bootstrap.servers",
        ] {
            if self.kafka.properties.contains_key(reserved) {
                return bad(
                    &format!("kafka.properties.{reserved}"),
                    "doka sets this property itself (it decides when offsets are committed); remove it",
                );
            }
        }
        range(
            "kafka.connect_timeout_ms",
            self.kafka.connect_timeout_ms,
            100,
            600_000,
        )?;
        self.kafka.auth.validate(&self.kafka.properties)?;

        range("pipeline.lanes", self.pipeline.lanes, 1, 1024)?;
        range(
            "pipeline.max_in_flight_records",
            self.pipeline.max_in_flight_records,
            1,
            10_000_000,
        )?;
        range(
            "pipeline.max_in_flight_bytes",
            self.pipeline.max_in_flight_bytes,
            1024,
            16 * 1024 * 1024 * 1024,
        )?;
        range(
            "pipeline.commit_interval_ms",
            self.pipeline.commit_interval_ms,
            10,
            600_000,
        )?;
        range(
            "pipeline.rebalance_drain_timeout_ms",
            self.pipeline.rebalance_drain_timeout_ms,
            0,
            600_000,
        )?;
        range(
            "pipeline.shutdown_timeout_ms",
            self.pipeline.shutdown_timeout_ms,
            0,
            3_600_000,
        )?;

        if let Some(topic) = &self.dead_letter.topic
            && topic.trim().is_empty()
        {
            return bad("dead_letter.topic", "expected a Kafka topic name");
        }
        if self.dead_letter.topic.is_none()
            && self.dead_letter.on_oversized == Some(OversizedPolicy::DeadLetter)
        {
            return bad(
                "dead_letter.on_oversized",
                "dead_letter needs dead_letter.topic: set a topic or choose another policy",
            );
        }

        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!(
                    "`{}` is not an address to listen on: expected ip:port, e.g. 0.0.0.0:9464",
                    self.http.listen
                ),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad(
                "log.level",
                format!(
                    "`{}` is not a log filter ({e}): try info or doka=debug",
                    self.log.level
                ),
            );
        }
        Ok(())
    }

    /// The one-route shorthand: `kafka.topics` to `kinesis.stream` or `firehose.delivery_stream`.
    fn shorthand_route(&self) -> Route {
        let kinesis = self
            .kinesis
            .clone()
            .filter(|k| k.stream.is_some() || self.firehose.is_none());
        let firehose = self.firehose.clone().filter(|_| kinesis.is_none());
        Route {
            name: "default".into(),
            topics: self.kafka.topics.clone(),
            topic_pattern: None,
            aws: self.aws.clone(),
            kinesis,
            firehose,
            partition_key: self.partition_key.clone(),
            batch: self.batch.clone(),
            records: self.records.clone(),
            retry: self.retry.clone(),
            lanes: self.pipeline.lanes,
            ordering: self.pipeline.ordering,
            in_flight_share: 1,
        }
    }

    /// Builds [`Self::routes`]: each `routes` entry merged over the top-level sections (key by
    /// key), or the shorthand's one route. Errors name the key as `routes[i].<key>`.
    fn resolve_routes(&mut self, figment: &Figment, source: &Source) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| {
            ConfigError::new(describe_invalid(figment, source, key, problem))
        };
        if self.route_specs.is_empty() {
            if self.kafka.topics.is_empty() || self.kafka.topics.iter().any(|t| t.trim().is_empty())
            {
                return Err(invalid(
                    "kafka.topics",
                    "expected at least one topic name (or a `routes` list)",
                ));
            }
            let has_stream = self.kinesis.as_ref().is_some_and(|k| k.stream.is_some());
            let has_delivery_stream = self
                .firehose
                .as_ref()
                .is_some_and(|f| f.delivery_stream.is_some());
            match (has_stream, has_delivery_stream) {
                (false, false) => {
                    return Err(ConfigError::new(format!(
                        "missing config key `kinesis.stream`: set it in {} or in the environment \
                         variable {} (or firehose.delivery_stream to write to Firehose, or a \
                         `routes` list)",
                        source.describe(),
                        env_var_for("kinesis.stream")
                    )));
                }
                (true, true) => {
                    return Err(invalid(
                        "firehose.delivery_stream",
                        "set either kinesis.stream or firehose.delivery_stream, not both (or use \
                         `routes` for several destinations)",
                    ));
                }
                _ => {}
            }
            let route = self.shorthand_route();
            route
                .validate("", self)
                .map_err(|(key, problem)| invalid(&key, &problem))?;
            self.routes = vec![route];
            return Ok(());
        }

        for (key, set) in [
            ("kafka.topics", !self.kafka.topics.is_empty()),
            (
                "kinesis.stream",
                self.kinesis.as_ref().is_some_and(|k| k.stream.is_some()),
            ),
            (
                "firehose.delivery_stream",
                self.firehose
                    .as_ref()
                    .is_some_and(|f| f.delivery_stream.is_some()),
            ),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "with `routes`, each route names its topics and destination: move this into a \
                     route (the shorthand without `routes` is one route)",
                ));
            }
        }
        let mut routes = Vec::new();
        for (i, spec) in self.route_specs.iter().enumerate() {
            let prefix = format!("routes[{i}].");
            let Some(own) = spec.as_dict() else {
                return Err(invalid(
                    &format!("routes[{i}]"),
                    "expected a mapping with topics and a destination (kinesis or firehose)",
                ));
            };
            let mut merged = Figment::new();
            let mut sections: Vec<&str> = SHARED_SECTIONS.to_vec();
            sections.extend(
                ["kinesis", "firehose"]
                    .into_iter()
                    .filter(|d| own.contains_key(*d)),
            );
            for section in sections {
                if let Ok(mut shared) = figment.find_value(section) {
                    // Settings that belong to a value the route replaces are not inherited: an
                    // external id goes with its role, a field or template with its rule.
                    let replaced: &[&str] = match section {
                        "aws" => &["external_id", "session_name"],
                        "partition_key" => &["field", "template", "prefix"],
                        _ => &[],
                    };
                    let owner = if section == "aws" { "role_arn" } else { "rule" };
                    let route_sets_owner = own
                        .get(section)
                        .and_then(|v| v.as_dict())
                        .is_some_and(|d| d.contains_key(owner));
                    if route_sets_owner && let figment::value::Value::Dict(_, dict) = &mut shared {
                        for key in replaced {
                            dict.remove(*key);
                        }
                    }
                    merged = merged.merge(figment::providers::Serialized::default(section, shared));
                }
            }
            merged = merged.merge(figment::providers::Serialized::defaults(spec));
            let spec: RouteSpec = merged
                .extract()
                .map_err(|e| ConfigError::new(describe_figment_error_at(e, source, &prefix)))?;
            let route = Route {
                name: spec.name.clone().unwrap_or_default(),
                topics: spec.topics,
                topic_pattern: spec.topic_pattern,
                aws: spec.aws,
                kinesis: spec.kinesis,
                firehose: spec.firehose,
                partition_key: spec.partition_key,
                batch: spec.batch,
                records: spec.records,
                retry: spec.retry,
                lanes: spec.lanes.unwrap_or(self.pipeline.lanes),
                ordering: spec.ordering.unwrap_or(self.pipeline.ordering),
                in_flight_share: spec.in_flight_share,
            };
            let named = spec.name.is_some();
            let mut route = route;
            match (&route.kinesis, &route.firehose) {
                (Some(k), None) if k.stream.is_some() => {}
                (None, Some(f)) if f.delivery_stream.is_some() => {}
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &format!("{prefix}firehose"),
                        "a route writes to one destination: keep kinesis or firehose",
                    ));
                }
                _ => {
                    return Err(invalid(
                        &format!("{prefix}kinesis.stream"),
                        "each route needs a destination: kinesis.stream or firehose.delivery_stream",
                    ));
                }
            }
            if !named {
                route.name = route.destination_name().to_owned();
            }
            route
                .validate(&prefix, self)
                .map_err(|(key, problem)| invalid(&key, &problem))?;
            routes.push(route);
        }
        check_route_overlaps(&routes, self.dead_letter.topic.as_deref())
            .map_err(|(key, problem)| invalid(&key, &problem))?;
        self.routes = routes;
        // The raw entries may hold secrets in clear (an external id): only the resolved routes,
        // whose secrets print redacted, are kept.
        self.route_specs.clear();
        Ok(())
    }

    /// The effective configuration as YAML, with every secret replaced by `<redacted>`.
    pub fn to_redacted_yaml(&self) -> String {
        let mut shown = self.clone();
        for (name, value) in shown.kafka.properties.iter_mut() {
            if is_secret_property(name) {
                *value = "<redacted>".into();
            }
        }
        yaml::to_string(&shown).expect("config serialises")
    }

    /// Every topic name and pattern the consumer subscribes to, patterns as librdkafka regexes.
    pub fn subscription(&self) -> Vec<String> {
        let mut topics = Vec::new();
        for route in &self.routes {
            topics.extend(route.topics.iter().cloned());
            if let Some(pattern) = &route.topic_pattern {
                topics.push(format!("^({pattern})$"));
            }
        }
        topics
    }

    /// The in-flight bound a route may use: `pipeline.max_in_flight_*` split by the routes'
    /// `in_flight_share` weights, so a stuck route can fill its share but never another's.
    pub fn in_flight_share(&self, route: usize) -> (u64, u64) {
        let total: u64 = self
            .routes
            .iter()
            .map(|r| u64::from(r.in_flight_share))
            .sum();
        let weight = u64::from(self.routes[route].in_flight_share);
        let records = (self.pipeline.max_in_flight_records * weight / total).max(1);
        // At least one maximum-size record fits, whatever the split.
        let bytes = (self.pipeline.max_in_flight_bytes * weight / total)
            .max(self.routes[route].max_record_bytes());
        (records, bytes)
    }
}

/// A topic named by two routes, a named topic matched by another route's pattern, or the
/// dead-letter topic read by a route. (Two patterns can only be compared against real topics:
/// that is checked when a topic is assigned.)
fn check_route_overlaps(
    routes: &[Route],
    dead_letter: Option<&str>,
) -> Result<(), (String, String)> {
    let patterns: Vec<Option<regex::Regex>> = routes.iter().map(|r| r.topic_regex()).collect();
    for (i, a) in routes.iter().enumerate() {
        for (j, b) in routes.iter().enumerate().skip(i + 1) {
            if a.name == b.name {
                return bad(
                    &format!("routes[{j}].name"),
                    format!(
                        "`{}` is also the name of routes[{i}]: give each route its own name",
                        b.name
                    ),
                );
            }
        }
        for topic in &a.topics {
            for (j, b) in routes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let named = j > i && b.topics.contains(topic);
                let matched = patterns[j].as_ref().is_some_and(|p| p.is_match(topic));
                if named || matched {
                    return bad(
                        &format!("routes[{i}].topics"),
                        format!(
                            "topic `{topic}` is read by route `{}` and by route `{}`{}: a topic \
                             belongs to one route",
                            a.name,
                            b.name,
                            if matched { " (its topic_pattern)" } else { "" }
                        ),
                    );
                }
            }
        }
        if let Some(topic) = dead_letter {
            let reads = a.topics.iter().any(|t| t == topic)
                || patterns[i].as_ref().is_some_and(|p| p.is_match(topic));
            if reads {
                return bad(
                    "dead_letter.topic",
                    format!(
                        "`{topic}` is read by route `{}`: dead letters would be read back",
                        a.name
                    ),
                );
            }
        }
    }
    Ok(())
}

impl Route {
    pub fn kind(&self) -> DestinationKind {
        if self.firehose.is_some() {
            DestinationKind::Firehose
        } else {
            DestinationKind::Kinesis
        }
    }

    /// The stream's or delivery stream's name (also when `kinesis.stream` is an ARN): what logs
    /// and metrics call the destination.
    pub fn destination_name(&self) -> &str {
        match (&self.kinesis, &self.firehose) {
            (Some(k), _) => {
                let stream = k.stream.as_deref().unwrap_or_default();
                stream
                    .rsplit_once("stream/")
                    .map_or(stream, |(_, name)| name)
            }
            (None, Some(f)) => f.delivery_stream.as_deref().unwrap_or_default(),
            (None, None) => "",
        }
    }

    /// The Kinesis stream as (name, arn): exactly one is set. `(None, None)` for Firehose.
    pub fn stream_target(&self) -> (Option<&str>, Option<&str>) {
        match self.kinesis.as_ref().and_then(|k| k.stream.as_deref()) {
            Some(stream) if is_stream_arn(stream) => (None, Some(stream)),
            Some(stream) => (Some(stream), None),
            None => (None, None),
        }
    }

    /// The largest record the destination takes (Kinesis counts the partition key too).
    pub fn max_record_bytes(&self) -> u64 {
        match &self.kinesis {
            Some(k) => k.max_record_bytes,
            None => FIREHOSE_MAX_RECORD_BYTES,
        }
    }

    /// The largest request: `batch.max_bytes`, within Firehose's 4 MiB for Firehose.
    pub fn max_request_bytes(&self) -> u64 {
        match self.kind() {
            DestinationKind::Kinesis => self.batch.max_bytes,
            DestinationKind::Firehose => self.batch.max_bytes.min(FIREHOSE_MAX_BATCH_BYTES),
        }
    }

    pub fn request_timeout_ms(&self) -> u64 {
        match (&self.kinesis, &self.firehose) {
            (Some(k), _) => k.request_timeout_ms,
            (None, Some(f)) => f.request_timeout_ms,
            (None, None) => defaults::request_timeout_ms(),
        }
    }

    /// What ends each record: `records.delimiter`, or newline for Firehose (JSON Lines in S3).
    pub fn delimiter(&self) -> Delimiter {
        self.records.delimiter.unwrap_or(match self.kind() {
            DestinationKind::Firehose => Delimiter::Newline,
            DestinationKind::Kinesis => Delimiter::None,
        })
    }

    /// KPL aggregation's largest aggregate, when enabled (Kinesis only).
    pub fn aggregate_max_bytes(&self) -> Option<usize> {
        let aggregation = &self.kinesis.as_ref()?.aggregation;
        aggregation
            .enabled
            .then_some(aggregation.max_bytes as usize)
    }

    /// The whole-name regex of `topic_pattern` (validated at load).
    pub fn topic_regex(&self) -> Option<regex::Regex> {
        let pattern = self.topic_pattern.as_ref()?;
        regex::Regex::new(&format!("^(?:{pattern})$")).ok()
    }

    /// Whether `topic` is this route's.
    pub fn reads(&self, topic: &str, regex: Option<&regex::Regex>) -> bool {
        self.topics.iter().any(|t| t == topic) || regex.is_some_and(|r| r.is_match(topic))
    }

    /// Semantic checks of one route; keys are reported under `prefix` (empty for the shorthand,
    /// whose keys are the top-level ones).
    fn validate(&self, prefix: &str, config: &Config) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{prefix}{k}");
        if self.name.trim().is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return bad(
                &key("name"),
                format!(
                    "`{}`: expected 1 or more of a-z A-Z 0-9 _ . - (it labels metrics and logs)",
                    self.name
                ),
            );
        }
        if !prefix.is_empty() {
            if self.topics.iter().any(|t| t.trim().is_empty()) {
                return bad(&key("topics"), "expected topic names");
            }
            if self.topics.is_empty() && self.topic_pattern.is_none() {
                return bad(
                    &key("topics"),
                    "each route needs topics or a topic_pattern (or both)",
                );
            }
        }
        if let Some(pattern) = &self.topic_pattern
            && let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$"))
        {
            return bad(
                &key("topic_pattern"),
                format!("`{pattern}` is not a regular expression: {e}"),
            );
        }
        if let Some(topic) = &config.dead_letter.topic
            && self.topics.contains(topic)
        {
            let topics = if prefix.is_empty() {
                "kafka.topics".to_owned()
            } else {
                key("topics")
            };
            return bad(
                "dead_letter.topic",
                format!("`{topic}` is also in {topics}: dead letters would be read back"),
            );
        }

        let aws = &self.aws;
        if let Some(region) = &aws.region
            && !is_region_name(region)
        {
            return bad(
                &key("aws.region"),
                format!("`{region}` is not a region name like eu-west-1"),
            );
        }
        for (name, value) in [
            ("sts_endpoint", &aws.sts_endpoint),
            ("kinesis_endpoint", &aws.kinesis_endpoint),
            ("firehose_endpoint", &aws.firehose_endpoint),
        ] {
            if let Some(url) = value
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return bad(
                    &key(&format!("aws.{name}")),
                    format!("`{url}` is not a URL: expected http(s)://host[:port]"),
                );
            }
        }
        if let Some(arn) = &aws.role_arn
            && !is_role_arn(arn)
        {
            return bad(
                &key("aws.role_arn"),
                format!(
                    "`{arn}` is not an IAM role ARN: expected arn:aws:iam::<12-digit account>:role/<name>"
                ),
            );
        }
        if aws.external_id.is_some() && aws.role_arn.is_none() {
            return bad(
                &key("aws.external_id"),
                "is only used with aws.role_arn: set the role or remove the external id",
            );
        }
        if let Some(id) = &aws.external_id {
            range(&key("aws.external_id (length)"), id.expose().len(), 2, 1224)?;
        }
        if let Some(name) = &aws.session_name {
            let ok = (2..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
            if !ok {
                return bad(
                    &key("aws.session_name"),
                    format!("`{name}`: expected 2 to 64 characters of letters, digits and +=,.@_-"),
                );
            }
        }
        range(
            &key("aws.session_duration_secs"),
            aws.session_duration_secs,
            900,
            43_200,
        )?;
        if aws.credential_refresh_margin_secs >= aws.session_duration_secs {
            return bad(
                &key("aws.credential_refresh_margin_secs"),
                "must be shorter than aws.session_duration_secs",
            );
        }

        if let Some(kinesis) = &self.kinesis {
            let stream = kinesis.stream.as_deref().unwrap_or_default();
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
                kinesis.max_record_bytes,
                1024,
                MAX_STREAM_RECORD_BYTES,
            )?;
            range(
                &key("kinesis.request_timeout_ms"),
                kinesis.request_timeout_ms,
                100,
                600_000,
            )?;
            if kinesis.aggregation.enabled {
                range(
                    &key("kinesis.aggregation.max_bytes"),
                    kinesis.aggregation.max_bytes,
                    1024,
                    kinesis.max_record_bytes,
                )?;
            }
        }
        if let Some(firehose) = &self.firehose {
            let name = firehose.delivery_stream.as_deref().unwrap_or_default();
            if !is_stream_name(name) || name.len() > 64 {
                return bad(
                    &key("firehose.delivery_stream"),
                    format!("`{name}` is not a delivery stream name (1-64 of a-z A-Z 0-9 _ . -)"),
                );
            }
            range(
                &key("firehose.request_timeout_ms"),
                firehose.request_timeout_ms,
                100,
                600_000,
            )?;
            if self.partition_key.explicit_hash_key != ExplicitHashKey::None {
                return bad(
                    &key("partition_key.explicit_hash_key"),
                    "Firehose has no shards to spread over: remove it (the partition key only \
                     chooses the lane)",
                );
            }
        }

        let pk = &self.partition_key;
        match (pk.rule, &pk.prefix) {
            (KeyRule::PrefixRandom, None) => {
                return bad(
                    &key("partition_key.prefix"),
                    "rule prefix_random needs a prefix",
                );
            }
            (KeyRule::PrefixRandom, Some(p)) => {
                range(
                    &key("partition_key.prefix (characters)"),
                    p.chars().count(),
                    1,
                    MAX_PARTITION_KEY_CHARS - 32,
                )?;
            }
            (_, Some(_)) => {
                return bad(
                    &key("partition_key.prefix"),
                    "is only used with rule prefix_random: remove it or change the rule",
                );
            }
            _ => {}
        }
        match (pk.rule, &pk.field) {
            (KeyRule::JsonField, None) => {
                return bad(
                    &key("partition_key.field"),
                    "rule json_field needs a field, e.g. customer.id",
                );
            }
            (KeyRule::JsonField, Some(field)) => {
                if let Err(problem) = field_path(field) {
                    return bad(&key("partition_key.field"), problem);
                }
            }
            (_, Some(_)) => {
                return bad(
                    &key("partition_key.field"),
                    "is only used with rule json_field: remove it or change the rule",
                );
            }
            _ => {}
        }
        match (pk.rule, &pk.template) {
            (KeyRule::Template, None) => {
                return bad(
                    &key("partition_key.template"),
                    "rule template needs a template, e.g. `{topic}-{partition}`",
                );
            }
            (KeyRule::Template, Some(template)) => {
                if let Err(problem) = check_key_template(template) {
                    return bad(&key("partition_key.template"), problem);
                }
            }
            (_, Some(_)) => {
                return bad(
                    &key("partition_key.template"),
                    "is only used with rule template: remove it or change the rule",
                );
            }
            _ => {}
        }

        let max_entries = match self.kind() {
            DestinationKind::Kinesis => MAX_PUT_RECORDS_ENTRIES,
            DestinationKind::Firehose => FIREHOSE_MAX_BATCH_RECORDS,
        };
        range(
            &key("batch.max_records"),
            self.batch.max_records,
            1,
            max_entries,
        )?;
        range(
            &key("batch.max_bytes"),
            self.batch.max_bytes,
            1024,
            MAX_PUT_RECORDS_BYTES,
        )?;
        if self.max_request_bytes() < self.max_record_bytes() {
            return bad(
                &key("batch.max_bytes"),
                format!(
                    "{} is smaller than the largest record the destination takes ({}): a \
                     maximum-size record could never be sent",
                    self.batch.max_bytes,
                    self.max_record_bytes()
                ),
            );
        }
        range(&key("batch.linger_ms"), self.batch.linger_ms, 0, 60_000)?;
        if pk.explicit_hash_key == ExplicitHashKey::Spread && self.ordering == Ordering::Strict {
            return bad(
                &key("partition_key.explicit_hash_key"),
                "spread sends a key's records to different shards, which strict ordering cannot \
                 allow: use none, or pipeline.ordering per_key or none",
            );
        }
        range(&key("lanes"), self.lanes, 1, 1024)?;
        range(&key("in_flight_share"), self.in_flight_share, 1, 1000)?;
        if self.max_record_bytes() > config.pipeline.max_in_flight_bytes {
            return bad(
                "pipeline.max_in_flight_bytes",
                format!(
                    "{} is smaller than route `{}`'s largest record ({} bytes)",
                    config.pipeline.max_in_flight_bytes,
                    self.name,
                    self.max_record_bytes()
                ),
            );
        }

        range(
            &key("retry.initial_backoff_ms"),
            self.retry.initial_backoff_ms,
            1,
            60_000,
        )?;
        range(
            &key("retry.max_backoff_ms"),
            self.retry.max_backoff_ms,
            self.retry.initial_backoff_ms,
            600_000,
        )?;
        range(
            &key("retry.min_records_per_sec"),
            self.retry.min_records_per_sec,
            1,
            1_000_000,
        )?;

        if config.dead_letter.topic.is_none() {
            let headers_matter = self.records.format == RecordFormat::Raw;
            let wanting_a_topic = [
                (
                    "partition_key.on_long_key",
                    pk.on_long_key == LongKeyPolicy::DeadLetter,
                ),
                (
                    "partition_key.on_binary_key",
                    pk.on_binary_key == BinaryKeyPolicy::DeadLetter,
                ),
                (
                    "records.on_tombstone",
                    self.records.on_tombstone == TombstonePolicy::DeadLetter,
                ),
                (
                    "records.on_headers",
                    headers_matter && self.records.on_headers == HeadersPolicy::DeadLetter,
                ),
            ];
            if let Some((name, _)) = wanting_a_topic.iter().find(|(_, wants)| *wants) {
                return bad(
                    &key(name),
                    "dead_letter needs dead_letter.topic: set a topic or choose another policy",
                );
            }
        }
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

impl KafkaAuth {
    fn validate(&self, properties: &BTreeMap<String, String>) -> Result<(), (String, String)> {
        let bad = |key: &str, problem: String| Err((key.to_owned(), problem));
        let mode = self.mode;
        let unused = |section: &str, wanted: &str| {
            bad(
                &format!("kafka.auth.{section}"),
                format!(
                    "is only used with kafka.auth.mode {wanted}, and the mode is {}: remove it or change the mode",
                    mode.name()
                ),
            )
        };
        if self.tls.is_some() && mode == AuthMode::Plaintext {
            return unused("tls", "tls, scram or iam");
        }
        if self.scram.is_some() && mode != AuthMode::Scram {
            return unused("scram", "scram");
        }
        if self.iam.is_some() && mode != AuthMode::Iam {
            return unused("iam", "iam");
        }
        if mode != AuthMode::Plaintext {
            for name in properties.keys() {
                if is_auth_property(name) {
                    return bad(
                        &format!("kafka.properties.{name}"),
                        format!(
                            "kafka.auth.mode {} sets the connection's security properties itself: remove {name} from kafka.properties",
                            mode.name()
                        ),
                    );
                }
            }
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ] {
                if let Some(path) = path {
                    check_pem_file(&format!("kafka.auth.tls.{key}"), path)?;
                }
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return bad(
                        "kafka.auth.tls.key_file",
                        "mutual TLS needs the client certificate's private key: set key_file next to cert_file".into(),
                    );
                }
                (None, Some(_)) => {
                    return bad(
                        "kafka.auth.tls.cert_file",
                        "mutual TLS needs the client certificate: set cert_file next to key_file"
                            .into(),
                    );
                }
                (Some(_), Some(_)) if mode != AuthMode::Tls => {
                    return bad(
                        "kafka.auth.tls.cert_file",
                        format!(
                            "a client certificate is only used with kafka.auth.mode tls (mutual TLS); with {} it authenticates by SASL: remove cert_file and key_file",
                            mode.name()
                        ),
                    );
                }
                _ => {}
            }
        }
        if mode == AuthMode::Scram {
            let scram = self.scram.clone().unwrap_or_default();
            if scram
                .username
                .as_deref()
                .is_none_or(|u| u.trim().is_empty())
            {
                return bad(
                    "kafka.auth.scram.username",
                    "SCRAM needs a user name: set kafka.auth.scram.username (on MSK: the user of the Secrets Manager secret)".into(),
                );
            }
            let sources = [
                scram.password.is_some(),
                scram.password_file.is_some(),
                scram.password_env.is_some(),
            ];
            match sources.iter().filter(|s| **s).count() {
                0 => {
                    return bad(
                        "kafka.auth.scram.password",
                        "SCRAM needs a password: set one of kafka.auth.scram.password_file (a mounted Secret), password_env (a variable name) or password".into(),
                    );
                }
                1 => {}
                _ => {
                    return bad(
                        "kafka.auth.scram.password",
                        "set only one of password, password_file and password_env".into(),
                    );
                }
            }
            if let Some(path) = &scram.password_file {
                match std::fs::read_to_string(path) {
                    Ok(text) if text.trim().is_empty() => {
                        return bad(
                            "kafka.auth.scram.password_file",
                            format!("`{}` is empty: it must hold the password", path.display()),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return bad(
                            "kafka.auth.scram.password_file",
                            format!(
                                "cannot read `{}`: {e}. Point it at the file holding the password (e.g. a mounted Secret)",
                                path.display()
                            ),
                        );
                    }
                }
            }
            if let Some(var) = &scram.password_env
                && std::env::var(var).map_or(true, |v| v.is_empty())
            {
                return bad(
                    "kafka.auth.scram.password_env",
                    format!(
                        "the environment variable {var} is not set or empty: set it to the password, or name another variable"
                    ),
                );
            }
        }
        if let Some(iam) = &self.iam {
            if let Some(region) = &iam.region
                && !is_region_name(region)
            {
                return bad(
                    "kafka.auth.iam.region",
                    format!("`{region}` is not a region name like eu-west-1"),
                );
            }
            if !(10..=900).contains(&iam.token_lifetime_secs) {
                return bad(
                    "kafka.auth.iam.token_lifetime_secs",
                    format!(
                        "{} is out of range: expected 10 to 900 (MSK tokens are valid for 900 s)",
                        iam.token_lifetime_secs
                    ),
                );
            }
        }
        Ok(())
    }

    /// The MSK region for IAM tokens when it can be told without the AWS SDK: the configured one,
    /// else the one in MSK broker host names.
    pub fn iam_region(&self, brokers: &[String]) -> Option<String> {
        if let Some(region) = self.iam.as_ref().and_then(|i| i.region.clone()) {
            return Some(region);
        }
        brokers.iter().find_map(|b| region_of_msk_broker(b))
    }
}

/// `b-1.cluster.abc123.c2.kafka.eu-west-1.amazonaws.com:9098` → `eu-west-1` (provisioned), and
/// `boot-abc.c2.kafka-serverless.eu-west-1.amazonaws.com:9098` (serverless).
fn region_of_msk_broker(broker: &str) -> Option<String> {
    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels
        .iter()
        .position(|l| *l == "kafka" || *l == "kafka-serverless")?;
    let region = labels.get(at + 1)?;
    (labels.get(at + 2) == Some(&"amazonaws") && is_region_name(region))
        .then(|| (*region).to_owned())
}

fn is_region_name(region: &str) -> bool {
    !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A file that must exist, be readable and hold PEM data.
fn check_pem_file(key: &str, path: &Path) -> Result<(), (String, String)> {
    let text = std::fs::read(path).map_err(|e| {
        (
            key.to_owned(),
            format!(
                "cannot read `{}`: {e}. Point it at the PEM file (in Kubernetes, mounted from a Secret)",
                path.display()
            ),
        )
    })?;
    if !text.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err((
            key.to_owned(),
            format!(
                "`{}` is not a PEM file (no -----BEGIN line): convert it with openssl (e.g. `openssl x509 -inform der -in cert.der -out cert.pem`)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// librdkafka properties `kafka.auth` sets; with a mode other than plaintext they may not also be
/// in `kafka.properties`. (`ssl.key.password`, for an encrypted client key, stays there.)
fn is_auth_property(name: &str) -> bool {
    name == "security.protocol"
        || name.starts_with("sasl.")
        || name.starts_with("ssl.ca.")
        || name.starts_with("ssl.certificate.")
        || (name.starts_with("ssl.key.") && name != "ssl.key.password")
        || name == "enable.sasl.oauthbearer.unsecure.jwt"
}

/// librdkafka properties whose values are credentials.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "ssl.key.pem",
        "oauthbearer.config",
        "token",
    ]
    .iter()
    .any(|s| n.contains(s))
}

fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
        })
}

fn is_stream_name(name: &str) -> bool {
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

/// An optional section left empty in YAML (`batch:` with every line commented out) is null:
/// take it as "all defaults".
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Accepts `[a, b]` or `"a,b"` (the natural form in an environment variable).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// librdkafka property names contain dots; the environment layer turns dots into nesting, so
/// nested maps are flattened back into `a.b.c` names. Scalars become strings.
fn flat_properties<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    fn flatten<E: Error>(
        prefix: &str,
        value: serde_json::Value,
        out: &mut BTreeMap<String, String>,
    ) -> Result<(), E> {
        use serde_json::Value;
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let name = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&name, v, out)?;
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_owned(), s);
            }
            Value::Number(n) => {
                out.insert(prefix.to_owned(), n.to_string());
            }
            Value::Bool(b) => {
                out.insert(prefix.to_owned(), b.to_string());
            }
            Value::Null | Value::Array(_) => {
                return Err(E::custom(format!(
                    "property `{prefix}` must be a string, number or boolean"
                )));
            }
        }
        Ok(())
    }
    let value = serde_json::Value::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten::<D::Error>("", value, &mut out)?;
    Ok(out)
}

/// A profile for logs and the default session name.
pub fn default_session_name(profile: Option<&str>) -> String {
    let suffix: u32 = rand::random();
    let profile: String = profile
        .unwrap_or("default")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(*c))
        .take(40)
        .collect();
    format!("doka-{profile}-{suffix:08x}")
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    #[test]
    fn the_msk_region_is_read_from_msk_broker_names_only() {
        let auth = KafkaAuth {
            mode: AuthMode::Iam,
            ..Default::default()
        };
        let msk = |b: &str| auth.iam_region(&[b.to_owned()]);
        assert_eq!(
            msk("b-1.dev-msk.abc123.c2.kafka.eu-west-1.amazonaws.com:9098").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            msk("boot-abc.c2.kafka-serverless.us-east-2.amazonaws.com:9098").as_deref(),
            Some("us-east-2")
        );
        assert_eq!(msk("127.0.0.1:9098"), None);
        assert_eq!(msk("kafka.internal:9098"), None);
        let set = KafkaAuth {
            mode: AuthMode::Iam,
            iam: Some(IamSettings {
                region: Some("ap-south-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            set.iam_region(&["b-1.x.y.c2.kafka.eu-west-1.amazonaws.com:9098".into()])
                .as_deref(),
            Some("ap-south-1"),
            "the setting wins"
        );
    }
}
