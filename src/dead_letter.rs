//! The dead-letter topic: where a record goes that its destination would refuse (one over its
//! maximum record size) or that a policy withholds (a key it cannot use), so that it is neither
//! dropped nor allowed to stop the flow.
//!
//! The record keeps its key, value and headers byte for byte; doka adds headers saying why and
//! where it came from. Its offset is acknowledged only once the dead-letter write is confirmed.

use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tracing::warn;

use serde::{Deserialize, Serialize};

use crate::kafka::{self, BrokerAccess, BrokerAccessContext, KafkaConfig};
use crate::pipeline::intake::{DeadLetterRecord, DeadLetterWriter};
use crate::pipeline::offsets::PartitionProgress;
use crate::pipeline::settings::OversizedPolicy;
use crate::pipeline::{Budget, Halt};
use crate::settings::{Checked, bad};
use crate::telemetry::metrics::Metrics;

/// Records a destination would refuse or a policy withholds, and where they go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// A Kafka topic on the same cluster for records that cannot be sent to their destination.
    #[serde(default)]
    pub topic: Option<String>,
    /// What to do with a record over `kinesis.max_record_bytes`. Default: `dead_letter` when a
    /// topic is set, otherwise `stop`.
    #[serde(default)]
    pub on_oversized: Option<OversizedPolicy>,
}

impl DeadLetterConfig {
    pub fn oversized_policy(&self) -> OversizedPolicy {
        self.on_oversized.unwrap_or(if self.topic.is_some() {
            OversizedPolicy::DeadLetter
        } else {
            OversizedPolicy::Stop
        })
    }

    /// Semantic checks; keys are reported as `dead_letter.…`.
    pub fn validate(&self) -> Checked {
        if let Some(topic) = &self.topic
            && topic.trim().is_empty()
        {
            return bad("dead_letter.topic", "expected a Kafka topic name");
        }
        if self.topic.is_none() && self.on_oversized == Some(OversizedPolicy::DeadLetter) {
            return bad(
                "dead_letter.on_oversized",
                "dead_letter needs dead_letter.topic: set a topic or choose another policy",
            );
        }
        Ok(())
    }
}

/// Header names doka adds to a dead-lettered record.
pub const HEADER_REASON: &str = "doka.reason";
pub const HEADER_TOPIC: &str = "doka.source.topic";
pub const HEADER_PARTITION: &str = "doka.source.partition";
pub const HEADER_OFFSET: &str = "doka.source.offset";

/// Writes withheld records to the dead-letter topic, on a producer of its own.
pub struct DeadLetterProducer {
    producer: FutureProducer<BrokerAccessContext>,
    topic: String,
    runtime: tokio::runtime::Handle,
    budget: Arc<Budget>,
    halt: Arc<Halt>,
    metrics: Arc<Metrics>,
}

/// Producer settings: the brokers and the connection/security properties of `kafka.properties`
/// (consumer-only properties would only make librdkafka warn).
pub fn producer_config(kafka: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    let mut cc = kafka::client_config(kafka)?;
    cc.set("client.id", "doka-dead-letter")
        .set("enable.idempotence", "true");
    for (k, v) in &kafka.properties {
        if [
            "security.",
            "ssl.",
            "sasl.",
            "socket.",
            "broker.",
            "api.version",
        ]
        .iter()
        .any(|p| k.starts_with(p))
        {
            cc.set(k, v);
        }
    }
    Ok(cc)
}

impl DeadLetterProducer {
    pub fn new(
        kafka: &KafkaConfig,
        access: BrokerAccess,
        topic: String,
        runtime: tokio::runtime::Handle,
        budget: Arc<Budget>,
        halt: Arc<Halt>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let producer = producer_config(kafka)?
            .create_with_context(BrokerAccessContext(access))
            .map_err(|e| {
                anyhow::Error::new(kafka::describe_create_error(&kafka.auth, &e))
                    .context("cannot create the dead-letter producer")
            })?;
        Ok(Self {
            producer,
            topic,
            runtime,
            budget,
            halt,
            metrics,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl DeadLetterWriter for DeadLetterProducer {
    /// Writes the record to the dead-letter topic in the background. The caller has registered
    /// its offset and taken `size` from the budget; both are settled when the write is confirmed.
    fn send(&self, record: DeadLetterRecord, progress: Arc<PartitionProgress>, size: usize) {
        let DeadLetterRecord {
            topic,
            partition,
            offset,
            key,
            value,
            headers: original,
            reason,
        } = record;
        let mut headers = OwnedHeaders::new();
        for (key, value) in &original {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let partition_text = partition.to_string();
        let offset_text = offset.to_string();
        headers = headers
            .insert(Header {
                key: HEADER_REASON,
                value: Some(reason.as_bytes()),
            })
            .insert(Header {
                key: HEADER_TOPIC,
                value: Some(topic.as_bytes()),
            })
            .insert(Header {
                key: HEADER_PARTITION,
                value: Some(partition_text.as_bytes()),
            })
            .insert(Header {
                key: HEADER_OFFSET,
                value: Some(offset_text.as_bytes()),
            });
        warn!(
            topic = %topic, partition, offset, dead_letter_topic = %self.topic,
            "{reason}: sending the record to the dead-letter topic"
        );

        let producer = self.producer.clone();
        let dead_letter_topic = self.topic.clone();
        let (budget, halt) = (self.budget.clone(), self.halt.clone());
        let dead_lettered = self.metrics.dead_lettered(&topic);
        self.runtime.spawn(async move {
            let mut record = FutureRecord::to(&dead_letter_topic).payload(&value).headers(headers);
            if let Some(key) = &key {
                record = record.key(key);
            }
            match producer.send(record, Timeout::Never).await {
                Ok(_) => {
                    progress.ack(offset);
                    dead_lettered.inc();
                }
                Err((e, _)) => halt.halt(format!(
                    "record {topic}[{partition}] offset {offset} could not be written to the dead-letter topic \
                     {dead_letter_topic}: {e}; nothing from this offset on is committed"
                )),
            }
            budget.release(1, size as u64);
        });
    }
}
