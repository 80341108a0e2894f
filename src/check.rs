//! `doka check`: walks the chain doka needs, hop by hop, and says for each what works or what
//! failed and what to change.
//!
//! Two chains, independent of each other: Kafka (brokers reachable → TLS → authentication →
//! topics → group coordinator and lag) and AWS (source identity → AssumeRole → stream → optional
//! test write). A failure ends its own chain — later hops of it depend on it — but not the other,
//! so one run shows a broken IAM chain and a broken broker address alike.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use aws_credential_types::Credentials;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::aws;
use crate::config::{AuthMode, Config, Route, default_session_name};
use crate::kafka::{self, Connection, ConnectionContext};

/// How one hop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Works, but something deserves a look (e.g. no committed offsets yet).
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// A stable name, e.g. `kafka.auth` or `aws.assume_role`.
    pub hop: String,
    pub status: Status,
    pub detail: String,
    /// What to change, for a failure or a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub hops: Vec<Hop>,
}

/// Options of `doka check`.
pub struct CheckOptions {
    pub profile: Option<String>,
    /// Write one clearly marked record to the stream.
    pub write_test: bool,
    /// Called with each hop as soon as it is known (printing as the walk goes).
    pub on_hop: Box<dyn Fn(&Hop) + Send + Sync>,
}

struct Walk<'a> {
    options: &'a CheckOptions,
    report: Report,
}

impl Walk<'_> {
    fn push(&mut self, hop: &str, status: Status, detail: String, fix: Option<String>) -> bool {
        let hop = Hop {
            hop: hop.to_owned(),
            status,
            detail,
            fix,
        };
        (self.options.on_hop)(&hop);
        self.report.hops.push(hop);
        status != Status::Fail
    }
    fn ok(&mut self, hop: &str, detail: String) -> bool {
        self.push(hop, Status::Ok, detail, None)
    }
    fn warn(&mut self, hop: &str, detail: String, fix: impl Into<String>) -> bool {
        self.push(hop, Status::Warn, detail, Some(fix.into()))
    }
    fn fail(&mut self, hop: &str, detail: String, fix: impl Into<String>) -> bool {
        self.push(hop, Status::Fail, detail, Some(fix.into()))
    }
}

/// Runs every hop; `report.ok` is false when any failed.
pub async fn run(config: &Config, options: &CheckOptions) -> Report {
    let mut walk = Walk {
        options,
        report: Report::default(),
    };
    walk.ok(
        "config",
        format!(
            "config valid (profile {})",
            options.profile.as_deref().unwrap_or("none")
        ),
    );
    let base = aws::base_config(&config.aws).await;
    kafka_chain(&mut walk, config, &base).await;
    for route in &config.routes {
        if config.routes.len() > 1 {
            walk.ok(
                "route",
                format!("route `{}` → {}", route.name, route.destination_name()),
            );
        }
        aws_chain(&mut walk, route, &base).await;
    }
    walk.report.ok = walk.report.hops.iter().all(|h| h.status != Status::Fail);
    walk.report
}

// ---------------------------------------------------------------------------------------------
// Kafka

async fn kafka_chain(walk: &mut Walk<'_>, config: &Config, base: &aws_types::SdkConfig) {
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

    let signer = match crate::app::msk_token_signer(config, base).await {
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
    let connection = Connection::new(&kafka.auth, signer, tokio::runtime::Handle::current(), None);
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
                            crate::config::StartFrom::Earliest => "earliest record",
                            crate::config::StartFrom::Latest => "latest record",
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
fn verifies_certificates(kafka: &crate::config::KafkaConfig) -> bool {
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
    kafka: &crate::config::KafkaConfig,
    routes: &[Route],
    connection: Connection,
) -> Result<Probe, ProbeError> {
    let timeout = Duration::from_millis(kafka.connect_timeout_ms);
    // The consumer doka runs, under a client id of its own (kafka.properties may still set one).
    let mut cc =
        crate::source::consumer_config(kafka).map_err(|e| ProbeError::Other(format!("{e:#}")))?;
    if !kafka.properties.contains_key("client.id") {
        cc.set("client.id", "doka-check");
    }
    let consumer: BaseConsumer<ConnectionContext> = cc
        .create_with_context(ConnectionContext(connection))
        .map_err(|e| ProbeError::Other(kafka::describe_create_error(&kafka.auth, &e).0))?;
    consumer.context().0.await_first_token(|t| {
        let _ = consumer.poll(t);
    });
    let metadata = match consumer.fetch_metadata(None, timeout) {
        Ok(m) => m,
        Err(e) => {
            let explained = consumer.context().0.explain_failure(|t| {
                let _ = consumer.poll(t);
            });
            return Err(match explained {
                Some(failure) => ProbeError::Refused(failure),
                None => ProbeError::NoAnswer(e.to_string()),
            });
        }
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
                            (None, crate::config::StartFrom::Earliest) => low,
                            (None, crate::config::StartFrom::Latest) => high,
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

// ---------------------------------------------------------------------------------------------
// AWS

/// A stream's maximum record size unless raised (what a stream that does not report one has).
const KINESIS_DEFAULT_RECORD_BYTES: u64 = 1024 * 1024;

async fn aws_chain(walk: &mut Walk<'_>, route: &Route, base: &aws_types::SdkConfig) {
    let Some(chain) = base.credentials_provider() else {
        walk.fail(
            "aws.source_identity",
            "no AWS credential chain".into(),
            "Run doka with AWS credentials",
        );
        return;
    };
    let source = match aws::resolve(&chain).await {
        Ok(creds) => creds,
        Err(e) => {
            walk.fail(
                "aws.source_identity",
                format!("no source AWS credentials: {e}"),
                "On EKS with IRSA: the service account's eks.amazonaws.com/role-arn annotation \
                 (IRSA sets AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE) and the role's trust \
                 policy for the cluster's OIDC provider; with EKS Pod Identity: the pod identity \
                 association for the service account, the eks-pod-identity-agent add-on and the \
                 role's trust policy for pods.eks.amazonaws.com; elsewhere AWS_ACCESS_KEY_ID/AWS_PROFILE. aws.sts_endpoint \
                 (or AWS_ENDPOINT_URL_STS) must be reachable",
            );
            return;
        }
    };
    let source_id = match aws::caller_identity(base, &route.aws, source.clone()).await {
        Ok(id) => id,
        Err(e) => {
            walk.fail(
                "aws.source_identity",
                format!("GetCallerIdentity with the source credentials failed: {e}"),
                "Check aws.sts_endpoint (or AWS_ENDPOINT_URL_STS) and the network path to STS",
            );
            return;
        }
    };
    walk.ok(
        "aws.source_identity",
        format!(
            "source identity {} (account {})",
            source_id.arn, source_id.account
        ),
    );

    let session_name = route
        .aws
        .session_name
        .clone()
        .unwrap_or_else(|| default_session_name(walk.options.profile.as_deref()));
    if let Some(role) = &route.aws.role_arn
        && !assume_role(
            walk,
            route,
            base,
            source,
            &source_id.arn,
            role,
            &session_name,
        )
        .await
    {
        return;
    }

    let access = match aws::destination_access(base, route, session_name.clone(), None).await {
        Ok(access) => access,
        Err(e) => {
            walk.fail("kinesis.stream", format!("{e:#}"), "Set aws.region");
            return;
        }
    };
    let client = match &access.client {
        aws::DestinationClient::Kinesis(client, _) => client,
        aws::DestinationClient::Firehose(client) => {
            delivery_stream(walk, route, client, &access.region).await;
            return;
        }
    };
    let (name, arn) = route.stream_target();
    let described = client
        .describe_stream_summary()
        .set_stream_name(name.map(str::to_owned))
        .set_stream_arn(arn.map(str::to_owned))
        .send()
        .await;
    let summary = match described {
        Ok(out) => match out.stream_description_summary {
            Some(s) => s,
            None => {
                walk.fail(
                    "kinesis.stream",
                    "DescribeStreamSummary returned no description".into(),
                    "Check kinesis.stream",
                );
                return;
            }
        },
        Err(e) => {
            let (detail, fix) = describe_stream_error(route, &access.region, &e);
            walk.fail("kinesis.stream", detail, fix);
            return;
        }
    };
    let status = summary.stream_status().as_str().to_owned();
    let encryption = match (summary.encryption_type(), summary.key_id()) {
        (Some(t), Some(key)) if t.as_str() == "KMS" => format!("encrypted with KMS key {key}"),
        _ => "not encrypted".to_owned(),
    };
    let max_bytes = summary
        .max_record_size_in_kib()
        .map(|kib| kib as u64 * 1024);
    let detail = format!(
        "stream {} in {}: {status}, {} open shards, {encryption}, maximum record size {}",
        summary.stream_name(),
        access.region,
        summary.open_shard_count(),
        max_bytes.map_or("not reported (1 MiB assumed)".to_owned(), |b| format!(
            "{b} bytes"
        ))
    );
    let ok = if status != "ACTIVE" {
        walk.fail(
            "kinesis.stream",
            detail,
            "Wait until the stream is ACTIVE (CREATING/UPDATING finish by themselves; DELETING does not)",
        )
    } else {
        match record_size_verdict(max_bytes, route.max_record_bytes()) {
            (Status::Ok, _) => walk.ok("kinesis.stream", detail),
            (status, fix) => walk.push("kinesis.stream", status, detail, fix),
        }
    };
    if !ok || !walk.options.write_test {
        return;
    }
    let written = client
        .put_record()
        .set_stream_name(name.map(str::to_owned))
        .set_stream_arn(arn.map(str::to_owned))
        .partition_key("doka-check")
        .data(aws_smithy_types::Blob::new(
            format!(
                "doka check --write-test: a test record, not Kafka data ({})",
                chrono_like_now()
            )
            .into_bytes(),
        ))
        .send()
        .await;
    match written {
        Ok(out) => walk.ok(
            "kinesis.write_test",
            format!(
                "TEST RECORD WRITTEN (partition key doka-check) to shard {}, sequence number {}: consumers of the stream will see it",
                out.shard_id(),
                out.sequence_number()
            ),
        ),
        Err(e) => walk.fail(
            "kinesis.write_test",
            format!(
                "PutRecord failed: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            ),
            "Role B needs kinesis:PutRecord and kinesis:PutRecords on the stream (and \
             kms:GenerateDataKey on its key when it is encrypted with a customer key)",
        ),
    };
}

/// The stream's maximum record size (`None`: not reported) against `kinesis.max_record_bytes`:
/// above the stream's limit fails (Kinesis refuses those records, and doka would retry them
/// without end); above Kinesis' default when the stream does not say its own deserves a look;
/// below the stream's limit is a choice worth stating.
fn record_size_verdict(reported: Option<u64>, configured: u64) -> (Status, Option<String>) {
    match reported {
        Some(limit) if limit < configured => (
            Status::Fail,
            Some(format!(
                "kinesis.max_record_bytes ({configured}) is above the stream's limit: lower it to {limit} or raise the stream's (UpdateMaxRecordSize)"
            )),
        ),
        None if configured > KINESIS_DEFAULT_RECORD_BYTES => (
            Status::Warn,
            Some(format!(
                "kinesis.max_record_bytes ({configured}) is above Kinesis' default of \
                 {KINESIS_DEFAULT_RECORD_BYTES} bytes and the stream does not say its own: unless it was \
                 raised (UpdateMaxRecordSize), larger records are refused by the stream and retried \
                 without end. Lower kinesis.max_record_bytes to {KINESIS_DEFAULT_RECORD_BYTES} or \
                 confirm the stream's MaxRecordSizeInKiB"
            )),
        ),
        Some(limit) if limit > configured => (
            Status::Warn,
            Some(format!(
                "The stream takes records up to {limit} bytes; kinesis.max_record_bytes ({configured}) refuses larger ones before sending"
            )),
        ),
        _ => (Status::Ok, None),
    }
}

#[allow(clippy::too_many_arguments)]
async fn assume_role(
    walk: &mut Walk<'_>,
    route: &Route,
    base: &aws_types::SdkConfig,
    source: Credentials,
    source_arn: &str,
    role: &str,
    session_name: &str,
) -> bool {
    let mut sts = aws_sdk_sts::config::Builder::from(base).credentials_provider(source);
    if let Some(endpoint) = &route.aws.sts_endpoint {
        sts = sts.endpoint_url(endpoint);
    }
    let assumed = aws_sdk_sts::Client::from_conf(sts.build())
        .assume_role()
        .role_arn(role)
        .role_session_name(session_name)
        .duration_seconds(route.aws.session_duration_secs as i32)
        .set_external_id(
            route
                .aws
                .external_id
                .as_ref()
                .map(|id| id.expose().to_owned()),
        )
        .send()
        .await;
    match assumed {
        Ok(out) => {
            let arn = out.assumed_role_user.map(|u| u.arn).unwrap_or_default();
            let account = arn.split(':').nth(4).unwrap_or("?").to_owned();
            let expires = out
                .credentials
                .map(|c| c.expiration.to_string())
                .unwrap_or_else(|| "?".into());
            walk.ok(
                "aws.assume_role",
                format!(
                    "assumed {role} as {arn} (account {account}{}), session expires {expires}",
                    if route.aws.external_id.is_some() {
                        ", with external id"
                    } else {
                        ""
                    }
                ),
            )
        }
        Err(e) => {
            let text = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
            let fix = if text.contains("AccessDenied") {
                format!(
                    "Role {role}'s trust policy must allow sts:AssumeRole for {source_arn}{}; the \
                     source role needs sts:AssumeRole on {role}",
                    if route.aws.external_id.is_some() {
                        ", and its sts:ExternalId condition must equal aws.external_id"
                    } else {
                        " (if the trust policy requires sts:ExternalId, set aws.external_id)"
                    }
                )
            } else {
                "Check aws.role_arn, aws.sts_endpoint (or AWS_ENDPOINT_URL_STS) and the network path to STS"
                    .to_owned()
            };
            walk.fail(
                "aws.assume_role",
                format!("STS refused AssumeRole into {role}: {text}"),
                fix,
            )
        }
    }
}

fn describe_stream_error<E: std::error::Error + 'static>(
    route: &Route,
    region: &str,
    error: &E,
) -> (String, String) {
    let text = aws_smithy_types::error::display::DisplayErrorContext(error).to_string();
    let account = route
        .aws
        .role_arn
        .as_deref()
        .and_then(|r| r.split(':').nth(4))
        .unwrap_or("of the source identity");
    if text.contains("ResourceNotFound") {
        (
            format!(
                "stream {} does not exist in region {region}, account {account}",
                route.destination_name()
            ),
            "Check kinesis.stream, aws.region (the stream's region) and aws.role_arn (the stream's account)"
                .to_owned(),
        )
    } else if text.contains("AccessDenied") {
        (
            format!("DescribeStreamSummary refused: {text}"),
            "Role B needs kinesis:DescribeStreamSummary and kinesis:ListShards on the stream"
                .to_owned(),
        )
    } else {
        (
            format!("DescribeStreamSummary failed: {text}"),
            "Check aws.kinesis_endpoint (or AWS_ENDPOINT_URL_KINESIS) and the network path to Kinesis"
                .to_owned(),
        )
    }
}

/// The hops of a Firehose route: the delivery stream is there and active, and (with
/// `--write-test`) takes a record.
async fn delivery_stream(
    walk: &mut Walk<'_>,
    route: &Route,
    client: &aws_sdk_firehose::Client,
    region: &str,
) {
    let name = route.destination_name();
    let described = client
        .describe_delivery_stream()
        .delivery_stream_name(name)
        .send()
        .await;
    let status = match described {
        Ok(out) => out
            .delivery_stream_description
            .map(|d| d.delivery_stream_status.as_str().to_owned())
            .unwrap_or_default(),
        Err(e) => {
            let text = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
            let fix = if text.contains("ResourceNotFound") {
                "Check firehose.delivery_stream, aws.region (its region) and aws.role_arn (its account)"
            } else if text.contains("AccessDenied") {
                "The role needs firehose:DescribeDeliveryStream and firehose:PutRecordBatch on the delivery stream"
            } else {
                "Check aws.firehose_endpoint (or AWS_ENDPOINT_URL_FIREHOSE) and the network path to Firehose"
            };
            walk.fail(
                "firehose.delivery_stream",
                format!("DescribeDeliveryStream for `{name}` in {region} failed: {text}"),
                fix,
            );
            return;
        }
    };
    let detail = format!("delivery stream {name} in {region}: {status}");
    let ok = if status == "ACTIVE" {
        walk.ok("firehose.delivery_stream", detail)
    } else {
        walk.fail(
            "firehose.delivery_stream",
            detail,
            "Wait until the delivery stream is ACTIVE",
        )
    };
    if !ok || !walk.options.write_test {
        return;
    }
    let record = aws_sdk_firehose::types::Record::builder()
        .data(aws_smithy_types::Blob::new(
            format!(
                "{{\"doka_check\":\"--write-test: a test record, not Kafka data\",\"at\":\"{}\"}}\n",
                chrono_like_now()
            )
            .into_bytes(),
        ))
        .build();
    let written = match record {
        Ok(record) => client
            .put_record()
            .delivery_stream_name(name)
            .record(record)
            .send()
            .await
            .map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()),
        Err(e) => Err(e.to_string()),
    };
    match written {
        Ok(_) => walk.ok(
            "firehose.write_test",
            format!("TEST RECORD WRITTEN to delivery stream {name}: its destination will hold it"),
        ),
        Err(e) => walk.fail(
            "firehose.write_test",
            format!("PutRecord failed: {e}"),
            "The role needs firehose:PutRecord and firehose:PutRecordBatch on the delivery stream",
        ),
    };
}

/// Seconds since the epoch, to tell test records apart.
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("unix time {secs}")
}

/// Text output: one line per hop.
pub fn format_hop(hop: &Hop) -> String {
    let mark = match hop.status {
        Status::Ok => "✓",
        Status::Warn => "!",
        Status::Fail => "✗",
    };
    match &hop.fix {
        Some(fix) => format!("{mark} {:<20} {}\n  → {fix}", hop.hop, hop.detail),
        None => format!("{mark} {:<20} {}", hop.hop, hop.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_compared_with_the_streams_limit_or_kinesis_default() {
        const MIB: u64 = 1024 * 1024;
        let (status, fix) = record_size_verdict(Some(MIB), 2 * MIB);
        assert_eq!(status, Status::Fail);
        assert!(fix.unwrap().contains("lower it to 1048576"));
        let (status, fix) = record_size_verdict(None, 2 * MIB);
        assert_eq!(status, Status::Warn);
        assert!(fix.unwrap().contains("Kinesis' default of 1048576"));
        let (status, fix) = record_size_verdict(Some(4 * MIB), MIB);
        assert_eq!(status, Status::Warn);
        assert!(fix.unwrap().contains("up to 4194304 bytes"));
        assert_eq!(record_size_verdict(Some(MIB), MIB), (Status::Ok, None));
        assert_eq!(record_size_verdict(None, MIB), (Status::Ok, None));
    }
}
