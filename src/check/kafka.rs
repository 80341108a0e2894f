//! The Kafka hops of `doka check`: brokers reachable (TCP), TLS, authentication, the route's
//! topics, the group coordinator and the group's lag.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::Walk;
use crate::config::{Config, Route};
use crate::kafka::{
    self, AuthMode, BrokerAccess, BrokerAccessContext, FirstContact, KafkaConfig, StartFrom,
};

/// Brokers reachable → TLS → authentication → topics → group coordinator and lag.
pub(super) async fn chain(walk: &mut Walk<'_>, config: &Config, base: &aws_types::SdkConfig) {
    let kafka = &config.kafka;
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    for broker in &kafka.brokers {
        let good = match reachable(broker, timeout.min(Duration::from_secs(10))).await {
            Ok(()) => walk.ok("kafka.broker", format!("broker {broker} reachable (TCP)")),
            Err(e) => walk.fail(
                "kafka.broker",
                format!("broker {broker} unreachable: {e}"),
                "Check kafka.brokers (host:port; MSK: 9094 TLS, 9096 SCRAM, 9098 IAM), DNS and the \
                 security groups between doka and the cluster",
            ),
        };
        if !good {
            return;
        }
    }

    let signer = match kafka::msk_token_signer(&config.kafka, base).await {
        Ok(signer) => signer,
        Err(problem) => {
            walk.fail(
                "kafka.auth",
                problem,
                "Set kafka.auth.iam.region to the cluster's region",
            );
            return;
        }
    };
    let connection =
        BrokerAccess::new(&kafka.auth, signer, tokio::runtime::Handle::current(), None);
    let kafka_config = kafka.clone();
    let routes = config.routes.clone();
    // librdkafka's calls block; the IAM token callback needs this runtime, so not on it.
    let probe =
        tokio::task::spawn_blocking(move || probe_kafka(&kafka_config, &routes, connection))
            .await
            .unwrap_or_else(|e| Err(ProbeError::Other(e.to_string())));
    let probe = match probe {
        Ok(probe) => probe,
        Err(ProbeError::Refused(failure)) => {
            let hop = if failure.step == "TLS handshake" {
                "kafka.tls"
            } else {
                "kafka.auth"
            };
            walk.fail(
                hop,
                format!("{} failed: {}", failure.step, failure.reason),
                failure.fix,
            );
            return;
        }
        Err(ProbeError::NoAnswer(e)) => {
            walk.fail(
                "kafka.metadata",
                format!(
                    "no metadata from {} within kafka.connect_timeout_ms ({} ms): {e}",
                    kafka.brokers.join(","),
                    kafka.connect_timeout_ms
                ),
                format!(
                    "Check kafka.auth.mode ({}) against the port (MSK: 9092 plaintext, 9094 TLS, \
                     9096 SCRAM, 9098 IAM) and that the advertised broker addresses resolve here",
                    kafka.auth.mode.name()
                ),
            );
            return;
        }
        Err(ProbeError::Other(e)) => {
            walk.fail("kafka.client", e, "Check kafka.properties and kafka.auth");
            return;
        }
    };
    if kafka.auth.mode != AuthMode::Plaintext {
        let mutual = kafka
            .auth
            .tls
            .as_ref()
            .is_some_and(|t| t.cert_file.is_some());
        if verifies_certificates(kafka) {
            walk.ok(
                "kafka.tls",
                format!(
                    "TLS handshake with certificate and host name verification{}",
                    if mutual {
                        ", client certificate accepted (mutual TLS)"
                    } else {
                        ""
                    }
                ),
            );
        } else {
            walk.warn(
                "kafka.tls",
                "TLS handshake WITHOUT full certificate verification".into(),
                "kafka.properties turns verification off (enable.ssl.certificate.verification or \
                 ssl.endpoint.identification.algorithm): anyone on the path can pose as the \
                 brokers; remove it and set kafka.auth.tls.ca_file instead",
            );
        }
    }
    let authenticated = match kafka.auth.mode {
        AuthMode::Scram => {
            let scram = kafka.auth.scram.clone().unwrap_or_default();
            Some(format!(
                "{} as user {}",
                scram.mechanism.name(),
                scram.username.unwrap_or_default()
            ))
        }
        AuthMode::Iam => Some("MSK IAM (OAUTHBEARER token signed by the source identity)".into()),
        AuthMode::Plaintext | AuthMode::Tls => None,
    };
    if let Some(how) = authenticated {
        walk.ok("kafka.auth", format!("authenticated: {how}"));
    }
    walk.ok(
        "kafka.metadata",
        format!("cluster answered: brokers {}", probe.brokers.join(", ")),
    );
    for broker in &probe.brokers {
        if !kafka.brokers.contains(broker)
            && let Err(e) = reachable(broker, Duration::from_secs(5)).await
        {
            walk.fail(
                "kafka.broker",
                format!("advertised broker {broker} unreachable: {e}"),
                "The cluster hands out this address: it must resolve and be reachable from doka",
            );
            return;
        }
    }
    let mut all_found = true;
    for (topic, partitions) in &probe.topics {
        all_found &= match partitions {
            Some(n) => walk.ok("kafka.topic", format!("topic {topic}: {n} partitions")),
            None => walk.fail(
                "kafka.topic",
                format!("topic {topic} does not exist"),
                "Check the route's topics (kafka.topics for one route; names are case-sensitive) or create the topic",
            ),
        };
    }
    if !all_found {
        return;
    }
    match probe.group {
        Err(e) => {
            walk.fail(
                "kafka.group",
                format!(
                    "group {}: coordinator not reachable or refused: {e}",
                    kafka.group_id
                ),
                "With IAM or ACLs the identity needs kafka-cluster:DescribeGroup/AlterGroup (or \
                 Describe/Read on the group); check kafka.group_id",
            );
        }
        Ok(lags) => {
            let committed = lags.iter().filter(|l| l.committed.is_some()).count();
            let lag: i64 = lags.iter().map(|l| l.lag).sum();
            let detail = format!(
                "group {}: coordinator reachable; committed offsets on {committed} of {} partitions; lag {lag}",
                kafka.group_id,
                lags.len()
            );
            // A partition without a commit matters only when it holds records: they are read
            // from kafka.start_from (with `latest`, skipped).
            if lags.iter().any(|l| l.committed.is_none() && l.held > 0) {
                walk.warn(
                    "kafka.group",
                    detail,
                    format!(
                        "Partitions without a committed offset start from the {} (kafka.start_from); lag counts them from there",
                        match kafka.start_from {
                            StartFrom::Earliest => "earliest record",
                            StartFrom::Latest => "latest record",
                        }
                    ),
                );
            } else {
                walk.ok("kafka.group", detail);
            }
        }
    }
}

/// A TCP connection to `broker` (host:port), off the async threads (name resolution blocks).
async fn reachable(broker: &str, timeout: Duration) -> Result<(), String> {
    let broker = broker.to_owned();
    tokio::task::spawn_blocking(move || tcp_reachable(&broker, timeout))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// False when raw properties switch off certificate or host name verification.
fn verifies_certificates(kafka: &KafkaConfig) -> bool {
    let off = |name: &str, value: &str| {
        kafka
            .properties
            .get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    };
    !off("enable.ssl.certificate.verification", "false")
        && !off("ssl.endpoint.identification.algorithm", "none")
}

fn tcp_reachable(broker: &str, timeout: Duration) -> Result<(), String> {
    let addrs: Vec<_> = broker
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last = "no address".to_owned();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

struct Probe {
    brokers: Vec<String>,
    /// Each configured topic and its partition count (`None`: it does not exist).
    topics: Vec<(String, Option<usize>)>,
    group: Result<Vec<PartitionLag>, String>,
}

struct PartitionLag {
    committed: Option<i64>,
    lag: i64,
    /// Records the partition holds (end − start).
    held: i64,
}

enum ProbeError {
    Refused(kafka::ConnectFailure),
    NoAnswer(String),
    Other(String),
}

fn probe_kafka(
    kafka: &KafkaConfig,
    routes: &[Route],
    access: BrokerAccess,
) -> Result<Probe, ProbeError> {
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    // The consumer doka runs, under a client id of its own (kafka.properties may still set one).
    let mut cc = kafka::consumer_config(kafka).map_err(|e| ProbeError::Other(format!("{e:#}")))?;
    if !kafka.properties.contains_key("client.id") {
        cc.set("client.id", "doka-check");
    }
    let consumer: BaseConsumer<BrokerAccessContext> = cc
        .create_with_context(BrokerAccessContext(access))
        .map_err(|e| ProbeError::Other(kafka::describe_create_error(&kafka.auth, &e).0))?;
    let contact = consumer.context().0.first_contact(
        timeout,
        |wait| consumer.fetch_metadata(None, wait),
        |wait| {
            let _ = consumer.poll(wait);
        },
    );
    let metadata = match contact {
        FirstContact::Answered(m) => m,
        FirstContact::Refused(failure) => return Err(ProbeError::Refused(failure)),
        FirstContact::NoAnswer(e) => return Err(ProbeError::NoAnswer(e.to_string())),
    };
    let brokers = metadata
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect();
    // Every route's named topics (missing ones are reported), and the existing topics its
    // topic_pattern matches.
    let mut topics: Vec<(String, Option<usize>)> = routes
        .iter()
        .flat_map(|r| r.topics.iter())
        .map(|name| {
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().len());
            (name.clone(), found)
        })
        .collect();
    let patterns: Vec<regex::Regex> = routes.iter().filter_map(Route::topic_regex).collect();
    for t in metadata.topics() {
        if t.error().is_none()
            && patterns.iter().any(|p| p.is_match(t.name()))
            && !topics.iter().any(|(name, _)| name == t.name())
        {
            topics.push((t.name().to_owned(), Some(t.partitions().len())));
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions) in &topics {
        for p in 0..partitions.unwrap_or(0) {
            tpl.add_partition(topic, p as i32);
        }
    }
    let group = if tpl.count() == 0 {
        Ok(Vec::new())
    } else {
        consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| e.to_string())
            .and_then(|committed| {
                committed
                    .elements()
                    .iter()
                    .map(|e| {
                        let (low, high) = consumer
                            .fetch_watermarks(e.topic(), e.partition(), timeout)
                            .map_err(|err| {
                                format!("watermarks of {}[{}]: {err}", e.topic(), e.partition())
                            })?;
                        let committed = match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        };
                        let from = match (committed, kafka.start_from) {
                            (Some(c), _) => c,
                            (None, StartFrom::Earliest) => low,
                            (None, StartFrom::Latest) => high,
                        };
                        Ok(PartitionLag {
                            committed,
                            lag: (high - from).max(0),
                            held: (high - low).max(0),
                        })
                    })
                    .collect()
            })
    };
    Ok(Probe {
        brokers,
        topics,
        group,
    })
}
