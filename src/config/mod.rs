//! Configuration: one YAML file with a base section and named profiles, plus environment variables.
//!
//! Layers, later ones win: built-in defaults → the file's top-level keys → `profiles.<name>` from the
//! same file → `DOKA_<SECTION>__<KEY>` environment variables (`__` separates levels, e.g.
//! `DOKA_KAFKA__GROUP_ID`, `DOKA_BATCH__LINGER_MS`). Every mistake stops start-up with an error that
//! names the file, the key and what is expected.
//!
//! Each section's type and checks belong to the part of doka it configures (`kafka`, `aws`,
//! `pipeline`, each destination under `sink`, `dead_letter`, `telemetry`); this module only loads
//! them ([`load`]), assembles them into [`Route`]s and checks what spans sections. Only the entry
//! points (`main`, `app`, `check`) read it.

mod load;
mod routes;
mod yaml;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aws::AwsConfig;
use crate::dead_letter::DeadLetterConfig;
use crate::kafka::KafkaConfig;
use crate::pipeline::settings::{
    BatchConfig, PartitionKeyConfig, PipelineConfig, RecordsConfig, RetryConfig,
};
use crate::schema::DecodeConfig;
use crate::settings::{Checked, null_as_default};
use crate::sink::firehose::FirehoseConfig;
use crate::sink::kinesis::KinesisConfig;
use crate::sink::stdout::StdoutConfig;
use crate::telemetry::settings::{HttpConfig, LogConfig};

pub use load::{ConfigError, Source, load};
pub use routes::Route;

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
    /// The one-route shorthand to standard output (`stdout: {}`), and defaults for such routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutConfig>,
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
    /// Schema-registry decoding (per route; this is what routes inherit).
    #[serde(default, deserialize_with = "null_as_default", skip_serializing)]
    pub decode: DecodeConfig,
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

impl Config {
    /// The checks of the process-wide sections; routes are checked as they are resolved.
    fn validate(&self) -> Checked {
        self.kafka.validate()?;
        self.pipeline.validate()?;
        self.dead_letter.validate()?;
        self.http.validate()?;
        self.log.validate()
    }

    /// The effective configuration as YAML, with every secret replaced by `<redacted>`.
    pub fn to_redacted_yaml(&self) -> String {
        let mut shown = self.clone();
        shown.kafka.redact_properties();
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
            .max(self.routes[route].destination.max_record_bytes());
        (records, bytes)
    }
}
