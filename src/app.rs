//! Wiring: config → credentials → lanes → consumer thread, and a clean exit on SIGTERM/SIGINT.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing::{error, info, warn};

use crate::aws::{self, DestinationClient, msk_iam::MskTokenSigner};
use crate::config::{
    AuthMode, Config, DestinationKind, ExplicitHashKey, KafkaConfig, Ordering, Route,
    default_session_name,
};
use crate::dead_letter::DeadLetter;
use crate::kafka::Connection;
use crate::pipeline::batch::{BatchLimits, Batcher, PerKey};
use crate::pipeline::intake::{DeadLetters, Intake, RouteIntake, TopicRoutes};
use crate::pipeline::lane::{Backoff, Lane};
use crate::pipeline::pace::Pace;
use crate::pipeline::partition_key::{PartitionKeys, Spread};
use crate::pipeline::{Budget, Halt, Share};
use crate::sink::Sink;
use crate::sink::firehose::FirehoseSink;
use crate::sink::kinesis::KinesisSink;
use crate::source::{self, SourceExit, SourceParts};
use crate::telemetry::health::Health;
use crate::telemetry::http;
use crate::telemetry::metrics::{Metrics, StreamMetrics};

/// Exit codes, documented in the README.
pub mod exit {
    /// Stopped on request; everything fetched was delivered and committed.
    pub const CLEAN: u8 = 0;
    /// Could not start (Kafka client, AWS set-up) or an internal error.
    pub const FAILURE: u8 = 1;
    /// The configuration is invalid (also used for command-line mistakes).
    pub const CONFIG: u8 = 2;
    /// Shutdown timed out with records undelivered; they were not committed and will be re-sent.
    pub const UNDELIVERED: u8 = 3;
    /// The pipeline halted (gave up retrying, or a record it must not drop could not be sent);
    /// nothing from that record on was committed.
    pub const HALTED: u8 = 4;
    /// At start-up, no AWS credentials could be obtained for the stream (source identity, or
    /// AssumeRole into the target role). Later failures to renew them are retried instead.
    pub const CREDENTIALS: u8 = 5;
    /// At start-up, no Kafka broker answered within `kafka.connect_timeout_ms`.
    pub const KAFKA_UNREACHABLE: u8 = 6;
    /// At start-up, the brokers refused the TLS handshake or the authentication (`kafka.auth`).
    pub const KAFKA_REFUSED: u8 = 7;
    /// A second SIGTERM/SIGINT: exited at once; uncommitted records are sent again after restart.
    pub const SIGNALLED_TWICE: u8 = 130;
}

/// Runs doka until a signal or a halt. Returns the process exit code.
pub async fn run(config: Config, profile: Option<String>) -> u8 {
    match run_inner(config, profile).await {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            if e.downcast_ref::<crate::kafka::ClientSetupError>().is_some() {
                exit::CONFIG
            } else {
                exit::FAILURE
            }
        }
    }
}

async fn run_inner(config: Config, profile: Option<String>) -> anyhow::Result<u8> {
    let metrics = Arc::new(Metrics::new());
    let lanes_total: usize = config.routes.iter().map(|r| r.lanes as usize).sum();
    let longest_request = config
        .routes
        .iter()
        .map(Route::request_timeout_ms)
        .max()
        .unwrap_or_default();
    let health = Arc::new(Health::new(
        lanes_total,
        config.routes.iter().map(|r| r.name.clone()).collect(),
        // The consumer thread may wait this long for records in flight (rebalance, shutdown).
        config
            .pipeline
            .rebalance_drain_timeout()
            .max(config.pipeline.shutdown_timeout())
            + Duration::from_secs(30),
        Duration::from_millis(longest_request * 2) + Duration::from_secs(30),
    ));
    let budget = Arc::new(Budget::new(
        config.pipeline.max_in_flight_records,
        config.pipeline.max_in_flight_bytes,
    ));
    // Each route's adaptive rate and metrics, for the scrape-time gauges.
    let paces: Vec<(Arc<Pace>, StreamMetrics)> = config
        .routes
        .iter()
        .map(|route| {
            let pace = Arc::new(Pace::new(
                route.retry.adaptive_rate,
                route.retry.min_records_per_sec as f64,
            ));
            // The destination's name, not its ARN: the ARN names account B, which /metrics
            // does not show.
            (
                pace,
                metrics.destination(&route.name, route.destination_name()),
            )
        })
        .collect();
    // Probes answer from the start: alive, not ready until the group and the destinations are.
    let _endpoint = if config.http.enabled {
        let (budget, paces, gauges) = (budget.clone(), paces.clone(), metrics.clone());
        let before_scrape = Box::new(move || {
            let usage = budget.usage();
            gauges.in_flight_records.set(usage.records as i64);
            gauges.in_flight_bytes.set(usage.bytes as i64);
            for (pace, route_metrics) in &paces {
                route_metrics.send_rate.set(pace.rate().unwrap_or(0.0));
            }
        });
        match http::start(
            &config.http.listen,
            "http.listen",
            metrics.clone(),
            health.clone(),
            before_scrape,
        ) {
            Ok(endpoint) => {
                info!(
                    "serving /metrics, /healthz and /readyz on {}",
                    endpoint.address
                );
                Some(endpoint)
            }
            Err(problem) => {
                error!("invalid config: {problem}");
                return Ok(exit::CONFIG);
            }
        }
    } else {
        None
    };
    let base = aws::base_config(&config.aws).await;
    let signer = match msk_token_signer(&config, &base).await {
        Ok(signer) => signer,
        Err(problem) => {
            error!("{problem}");
            return Ok(exit::CONFIG);
        }
    };

    let halt = Arc::new(Halt::default());
    let mut route_intakes = Vec::new();
    let mut shares = Vec::new();
    let mut lanes = Vec::new();
    let mut first_lane = 0;
    for (index, route) in config.routes.iter().enumerate() {
        let session_name = route
            .aws
            .session_name
            .clone()
            .unwrap_or_else(|| default_session_name(profile.as_deref()));
        let observer = aws::CredentialObserver {
            metrics: metrics.clone(),
            health: health.clone(),
            destination: index,
            route: route.name.clone(),
        };
        let access = aws::destination_access(&base, route, session_name, Some(observer)).await?;
        let target = describe_target(route, &access.region);
        match aws::resolve(&access.credentials).await {
            Ok(credentials) => {
                info!(
                    route = %route.name,
                    session = access.session_name.as_deref().unwrap_or("-"),
                    "credentials for {target} obtained; they {}",
                    aws::describe_expiry(&credentials)
                );
                if route.aws.role_arn.is_none() {
                    // The chain renews its own; only an assumed role reports each renewal.
                    health.credentials_obtained(index, None);
                }
                log_identities(route, &base, credentials).await;
            }
            Err(e) => {
                let at = if config.routes.len() > 1 {
                    format!("routes[{index}].")
                } else {
                    String::new()
                };
                error!(
                    "cannot obtain credentials for {target}: {e}. Check the source identity \
                     (IRSA: AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE; EKS Pod Identity: the pod \
                     identity association; or another provider of the default chain), \
                     {at}aws.role_arn, {at}aws.external_id, {at}aws.sts_endpoint and the \
                     role's trust policy"
                );
                return Ok(exit::CREDENTIALS);
            }
        }
        let (pace, route_metrics) = paces[index].clone();
        let (max_records, max_bytes) = config.in_flight_share(index);
        let share = Arc::new(Share::new(max_records, max_bytes, budget.clone()));
        let aggregate_max_bytes = route.aggregate_max_bytes();
        let wiring = LaneWiring {
            route: index,
            first_lane,
            count: route.lanes as usize,
            limits: BatchLimits {
                // Aggregated, batch.max_records counts Kinesis entries (the sink's concern): a
                // batch is bounded by batch.max_bytes of records.
                max_records: match aggregate_max_bytes {
                    None => route.batch.max_records as usize,
                    Some(_) => usize::MAX,
                },
                max_bytes: route.max_request_bytes() as usize,
                linger: Duration::from_millis(route.batch.linger_ms),
                per_key: match (route.ordering, aggregate_max_bytes) {
                    (Ordering::Strict, None) => PerKey::OneRecord,
                    (Ordering::Strict, Some(max)) => PerKey::Aggregate(max),
                    _ => PerKey::Unlimited,
                },
            },
            backoff: Backoff {
                initial: Duration::from_millis(route.retry.initial_backoff_ms),
                max: Duration::from_millis(route.retry.max_backoff_ms),
                max_attempts: route.retry.max_attempts,
            },
            ordering: route.ordering,
            share: share.clone(),
            pace,
            halt: halt.clone(),
            metrics: route_metrics,
            health: health.clone(),
        };
        first_lane += route.lanes as usize;
        let senders = match access.client {
            DestinationClient::Firehose(client) => {
                let name = route.destination_name().to_owned();
                tokio::spawn(watch_delivery_stream(
                    client.clone(),
                    name.clone(),
                    health.clone(),
                    index,
                ));
                let sink = FirehoseSink::new(
                    client,
                    name,
                    target.clone(),
                    route.batch.max_records as usize,
                    route.max_request_bytes() as usize,
                );
                wiring.spawn(Arc::new(sink), &mut lanes)
            }
            DestinationClient::Kinesis(client, writer) => {
                let (stream_name, stream_arn) = route.stream_target();
                tokio::spawn(watch_stream(
                    client.clone(),
                    stream_name.map(str::to_owned),
                    stream_arn.map(str::to_owned),
                    health.clone(),
                    index,
                ));
                let sink = KinesisSink::new(
                    client,
                    *writer,
                    stream_name.map(str::to_owned),
                    stream_arn.map(str::to_owned),
                    target.clone(),
                    route.batch.max_records as usize,
                    route.batch.max_bytes as usize,
                    aggregate_max_bytes,
                );
                wiring.spawn(Arc::new(sink), &mut lanes)
            }
        };
        info!(route = %route.name, "delivering {} to {target}", describe_topics(route));
        route_intakes.push(RouteIntake {
            name: route.name.as_str().into(),
            keys: PartitionKeys::from_config(&route.partition_key),
            spread: (route.partition_key.explicit_hash_key == ExplicitHashKey::Spread)
                .then(Spread::default),
            format: route.records.format,
            delimiter: route.delimiter(),
            max_record_bytes: route.max_record_bytes() as usize,
            key_counts: route.kind() == DestinationKind::Kinesis,
            on_tombstone: route.records.on_tombstone,
            on_headers: route.records.on_headers,
            lanes: senders,
            share: share.clone(),
            headers_noted: AtomicBool::new(false),
        });
        shares.push(share);
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    tokio::spawn(watch_signals(shutdown.clone()));
    let runtime = tokio::runtime::Handle::current();

    let dead_letters: Option<Box<dyn DeadLetters>> = match &config.dead_letter.topic {
        Some(topic) => Some(Box::new(DeadLetter::new(
            &config.kafka,
            // Its tokens are not in the metrics: one client's renewals (the consumer's) tell the
            // story without counting each token twice.
            Connection::new(&config.kafka.auth, signer.clone(), runtime.clone(), None),
            topic.clone(),
            runtime.clone(),
            budget.clone(),
            halt.clone(),
            metrics.clone(),
        )?)),
        None => None,
    };
    let intake = Intake::new(
        route_intakes,
        budget.clone(),
        halt.clone(),
        metrics.clone(),
        dead_letters,
        config.dead_letter.oversized_policy().refusal(),
    );
    let parts = SourceParts {
        intake,
        routing: TopicRoutes::new(&config.routes),
        shares,
        budget: budget.clone(),
        halt: halt.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        commit_interval: config.pipeline.commit_interval(),
        drain_timeout: config.pipeline.rebalance_drain_timeout(),
        shutdown_timeout: config.pipeline.shutdown_timeout(),
        shutdown,
    };
    let kafka = consumer_kafka_config(&config);
    let subscription = config.subscription();
    let connection = Connection::new(&config.kafka.auth, signer, runtime, Some(metrics.clone()));
    let source_exit =
        tokio::task::spawn_blocking(move || source::run(&kafka, &subscription, connection, parts))
            .await??;

    // The consumer has dropped the lane senders: lanes end once their queues are delivered. If
    // shutdown timed out they may still be retrying; their records are uncommitted, so stop them.
    for lane in &lanes {
        lane.abort();
    }
    info!("summary: {}", metrics.summary());
    Ok(match source_exit {
        SourceExit::Clean => exit::CLEAN,
        SourceExit::BrokersUnreachable => exit::KAFKA_UNREACHABLE,
        SourceExit::AuthFailed => exit::KAFKA_REFUSED,
        SourceExit::RoutesOverlap => exit::CONFIG,
        SourceExit::Undelivered(_) => exit::UNDELIVERED,
        SourceExit::Halted => {
            error!(
                "halted: {}",
                halt.reason().unwrap_or_else(|| "unknown reason".into())
            );
            exit::HALTED
        }
    })
}

/// The consumer's Kafka settings: new topics — a `topic_pattern`'s, or a named topic that did
/// not exist at start-up — are found at each metadata refresh, so the refresh is brought down
/// from librdkafka's 5 minutes to 30 s unless set (one small metadata request each time).
fn consumer_kafka_config(config: &Config) -> KafkaConfig {
    let mut kafka = config.kafka.clone();
    kafka
        .properties
        .entry("topic.metadata.refresh.interval.ms".into())
        .or_insert_with(|| "30000".into());
    kafka
}

fn describe_topics(route: &Route) -> String {
    let mut parts: Vec<String> = route.topics.iter().map(|t| format!("`{t}`")).collect();
    if let Some(pattern) = &route.topic_pattern {
        parts.push(format!("topics matching `{pattern}`"));
    }
    parts.join(", ")
}

/// What one route's lanes share.
struct LaneWiring {
    route: usize,
    /// The first lane's id (ids are unique across routes, for the health state).
    first_lane: usize,
    count: usize,
    limits: BatchLimits,
    backoff: Backoff,
    ordering: Ordering,
    share: Arc<Share>,
    pace: Arc<Pace>,
    halt: Arc<Halt>,
    metrics: StreamMetrics,
    health: Arc<Health>,
}

impl LaneWiring {
    /// Starts the route's lanes on `sink`; returns their inboxes.
    fn spawn<S: Sink>(
        self,
        sink: Arc<S>,
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Vec<UnboundedSender<Vec<crate::pipeline::Record>>> {
        let mut senders = Vec::new();
        for id in self.first_lane..self.first_lane + self.count {
            let (tx, rx) = unbounded_channel();
            senders.push(tx);
            let lane = Lane {
                id,
                batcher: Batcher::new(rx, self.limits),
                sink: sink.clone(),
                backoff: self.backoff,
                ordering: self.ordering,
                budget: self.share.clone(),
                route: self.route,
                pace: self.pace.clone(),
                halt: self.halt.clone(),
                metrics: self.metrics.clone(),
                health: self.health.clone(),
            };
            tasks.push(tokio::spawn(lane.run_watched()));
        }
        senders
    }
}

/// For mode `iam`: the signer of MSK tokens, with the source identity (never the assumed role)
/// and the cluster's region. Err: the region cannot be told (a config problem).
pub async fn msk_token_signer(
    config: &Config,
    base: &aws_types::SdkConfig,
) -> Result<Option<MskTokenSigner>, String> {
    if config.kafka.auth.mode != AuthMode::Iam {
        return Ok(None);
    }
    let region = match config.kafka.auth.iam_region(&config.kafka.brokers) {
        Some(region) => region,
        None => aws::environment_region().await.ok_or_else(|| {
            "invalid config: key `kafka.auth.iam.region`: the MSK cluster's region cannot be told: \
             the broker names are not MSK names (…kafka.<region>.amazonaws.com) and AWS_REGION is not \
             set. Set kafka.auth.iam.region, e.g. eu-west-1"
                .to_owned()
        })?,
    };
    let source = base
        .credentials_provider()
        .ok_or("no AWS credential chain to sign MSK IAM tokens with")?;
    Ok(Some(MskTokenSigner::new(source, region)))
}

/// Says in the log who doka is on each side (ARNs carry the session names); not fatal.
async fn log_identities(
    route: &Route,
    base: &aws_types::SdkConfig,
    target: aws_credential_types::Credentials,
) {
    let source = match base.credentials_provider() {
        Some(chain) => aws::resolve(&chain).await,
        None => Err("no credential chain".into()),
    };
    match source {
        Ok(creds) => match aws::caller_identity(base, &route.aws, creds).await {
            Ok(id) => info!(account = %id.account, "source identity: {}", id.arn),
            Err(e) => warn!("cannot tell the source identity (GetCallerIdentity): {e}"),
        },
        Err(e) => warn!("cannot tell the source identity: {e}"),
    }
    if route.aws.role_arn.is_some() {
        match aws::caller_identity(base, &route.aws, target).await {
            Ok(id) => {
                info!(route = %route.name, account = %id.account, "target identity: {}", id.arn)
            }
            Err(e) => warn!("cannot tell the target identity (GetCallerIdentity): {e}"),
        }
    }
}

fn describe_target(route: &Route, region: &str) -> String {
    let via = match &route.aws.role_arn {
        Some(role) => format!("via role {role}"),
        None => "with the source credentials".into(),
    };
    match route.kind() {
        DestinationKind::Kinesis => format!(
            "stream `{}` (region {region}, {via})",
            route
                .kinesis
                .as_ref()
                .and_then(|k| k.stream.as_deref())
                .unwrap_or_default()
        ),
        DestinationKind::Firehose => format!(
            "delivery stream `{}` (region {region}, {via})",
            route.destination_name()
        ),
    }
}

/// How often each destination is described while doka runs.
const STREAM_CHECK_EVERY: Duration = Duration::from_secs(30);

/// Describes the destination every [`STREAM_CHECK_EVERY`]: its reachability is known before the
/// first record and while none flow (readiness), and the assumed role is renewed on time even
/// when the pipeline is idle (a client renews credentials when it is used). `describe` answers
/// `Err` with the reason when the destination did not answer.
async fn watch_destination<F, Fut>(health: Arc<Health>, destination: usize, describe: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    loop {
        match describe().await {
            Ok(()) => health.stream_answered(destination),
            Err(reason) => {
                health.stream_failed(destination);
                tracing::debug!("{reason}");
            }
        }
        tokio::time::sleep(STREAM_CHECK_EVERY).await;
    }
}

/// [`watch_destination`] for a Kinesis stream (DescribeStreamSummary).
async fn watch_stream(
    client: aws_sdk_kinesis::Client,
    name: Option<String>,
    arn: Option<String>,
    health: Arc<Health>,
    destination: usize,
) {
    watch_destination(health, destination, || async {
        match client
            .describe_stream_summary()
            .set_stream_name(name.clone())
            .set_stream_arn(arn.clone())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Rate-limited: the stream answered.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_limit_exceeded_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(format!(
                "DescribeStreamSummary failed: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )),
        }
    })
    .await
}

/// [`watch_destination`] for a Firehose delivery stream (DescribeDeliveryStream).
async fn watch_delivery_stream(
    client: aws_sdk_firehose::Client,
    name: String,
    health: Arc<Health>,
    destination: usize,
) {
    watch_destination(health, destination, || async {
        client
            .describe_delivery_stream()
            .delivery_stream_name(&name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "DescribeDeliveryStream failed: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                )
            })
    })
    .await
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once (nothing uncommitted is lost,
/// records in flight are sent again after restart).
async fn watch_signals(shutdown: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return;
    };
    for n in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            info!("signal received: stopping (send it again to exit at once)");
            shutdown.store(true, AtomicOrdering::SeqCst);
        } else {
            warn!("second signal: exiting without waiting; uncommitted records will be sent again");
            std::process::exit(exit::SIGNALLED_TWICE.into());
        }
    }
}
