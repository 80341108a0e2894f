//! Wiring: config → credentials → lanes → consumer thread, and a clean exit on SIGTERM/SIGINT.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

use tokio::sync::mpsc::unbounded_channel;
use tracing::{error, info, warn};

use crate::aws::{self, msk_iam::MskTokenSigner};
use crate::config::{AuthMode, Config, ExplicitHashKey, Ordering, default_session_name};
use crate::dead_letter::DeadLetter;
use crate::kafka::Connection;
use crate::pipeline::batch::{BatchLimits, Batcher, PerKey};
use crate::pipeline::lane::{Backoff, Lane};
use crate::pipeline::pace::Pace;
use crate::pipeline::partition_key::{PartitionKeys, Spread};
use crate::pipeline::{Budget, Halt};
use crate::sink::kinesis::KinesisSink;
use crate::source::{self, SourceExit, SourceParts};
use crate::telemetry::health::Health;
use crate::telemetry::http;
use crate::telemetry::metrics::Metrics;

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
    let session_name = config
        .aws
        .session_name
        .clone()
        .unwrap_or_else(|| default_session_name(profile.as_deref()));
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(
        config.pipeline.lanes as usize,
        // The consumer thread may wait this long for records in flight (rebalance, shutdown).
        config
            .pipeline
            .rebalance_drain_timeout()
            .max(config.pipeline.shutdown_timeout())
            + Duration::from_secs(30),
        Duration::from_millis(config.kinesis.request_timeout_ms * 2) + Duration::from_secs(30),
    ));
    let budget = Arc::new(Budget::new(
        config.pipeline.max_in_flight_records,
        config.pipeline.max_in_flight_bytes,
    ));
    let pace = Arc::new(Pace::new(
        config.retry.adaptive_rate,
        config.retry.min_records_per_sec as f64,
    ));
    // The stream's name, not its ARN: the ARN names account B, which /metrics does not show.
    let stream_metrics = metrics.stream(config.stream_name());
    // Probes answer from the start: alive, not ready until the group and the stream are.
    let _endpoint = if config.http.enabled {
        let (budget, pace, metrics, stream_metrics) = (
            budget.clone(),
            pace.clone(),
            metrics.clone(),
            stream_metrics.clone(),
        );
        let gauges = metrics.clone();
        let before_scrape = Box::new(move || {
            let usage = budget.usage();
            gauges.in_flight_records.set(usage.records as i64);
            gauges.in_flight_bytes.set(usage.bytes as i64);
            stream_metrics.send_rate.set(pace.rate().unwrap_or(0.0));
        });
        match http::start(
            &config.http.listen,
            "http.listen",
            metrics,
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
    let observer = aws::CredentialObserver {
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let access = aws::kinesis_access(
        &base,
        &config.aws,
        &config.kinesis,
        session_name,
        Some(observer),
    )
    .await?;
    let target = describe_target(&config, &access.region);
    let signer = match msk_token_signer(&config, &base).await {
        Ok(signer) => signer,
        Err(problem) => {
            error!("{problem}");
            return Ok(exit::CONFIG);
        }
    };
    match aws::resolve(&access.credentials).await {
        Ok(credentials) => {
            info!(
                session = access.session_name.as_deref().unwrap_or("-"),
                "credentials for {target} obtained; they {}",
                aws::describe_expiry(&credentials)
            );
            if config.aws.role_arn.is_none() {
                // The chain renews its own; only an assumed role reports each renewal.
                health.credentials_obtained(None);
            }
            log_identities(&config, &base, credentials).await;
        }
        Err(e) => {
            error!(
                "cannot obtain credentials for {target}: {e}. Check the source identity \
                 (AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE or another provider of the default chain), \
                 aws.role_arn, aws.external_id, aws.sts_endpoint and the role's trust policy"
            );
            return Ok(exit::CREDENTIALS);
        }
    }
    let (stream_name, stream_arn) = config.stream_target();
    tokio::spawn(watch_stream(
        access.client.clone(),
        stream_name.map(str::to_owned),
        stream_arn.map(str::to_owned),
        health.clone(),
    ));
    let aggregation = &config.kinesis.aggregation;
    let aggregate_max_bytes = aggregation
        .enabled
        .then_some(aggregation.max_bytes as usize);
    let sink = Arc::new(KinesisSink::new(
        access.client,
        stream_name.map(str::to_owned),
        stream_arn.map(str::to_owned),
        target.clone(),
        config.batch.max_records as usize,
        config.batch.max_bytes as usize,
        aggregate_max_bytes,
    ));

    let halt = Arc::new(Halt::default());
    let limits = BatchLimits {
        // Aggregated, batch.max_records counts Kinesis entries (the sink's concern): a batch is
        // bounded by batch.max_bytes of records.
        max_records: match aggregate_max_bytes {
            None => config.batch.max_records as usize,
            Some(_) => usize::MAX,
        },
        max_bytes: config.batch.max_bytes as usize,
        linger: Duration::from_millis(config.batch.linger_ms),
        per_key: match (config.pipeline.ordering, aggregate_max_bytes) {
            (Ordering::Strict, None) => PerKey::OneRecord,
            (Ordering::Strict, Some(max)) => PerKey::Aggregate(max),
            _ => PerKey::Unlimited,
        },
    };
    let backoff = Backoff {
        initial: Duration::from_millis(config.retry.initial_backoff_ms),
        max: Duration::from_millis(config.retry.max_backoff_ms),
        max_attempts: config.retry.max_attempts,
    };
    let mut senders = Vec::new();
    let mut lanes = Vec::new();
    for id in 0..config.pipeline.lanes as usize {
        let (tx, rx) = unbounded_channel();
        senders.push(tx);
        let lane = Lane {
            id,
            batcher: Batcher::new(rx, limits),
            sink: sink.clone(),
            backoff,
            ordering: config.pipeline.ordering,
            budget: budget.clone(),
            pace: pace.clone(),
            halt: halt.clone(),
            metrics: stream_metrics.clone(),
            health: health.clone(),
        };
        lanes.push(tokio::spawn(lane.run_watched()));
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    tokio::spawn(watch_signals(shutdown.clone()));
    let runtime = tokio::runtime::Handle::current();

    let dead_letter = match &config.dead_letter.topic {
        Some(topic) => Some(DeadLetter::new(
            &config.kafka,
            // Its tokens are not in the metrics: one client's renewals (the consumer's) tell the
            // story without counting each token twice.
            Connection::new(&config.kafka.auth, signer.clone(), runtime.clone(), None),
            topic.clone(),
            runtime.clone(),
            budget.clone(),
            halt.clone(),
            metrics.clone(),
        )?),
        None => None,
    };
    let parts = SourceParts {
        lanes: senders,
        budget: budget.clone(),
        halt: halt.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        keys: PartitionKeys::new(
            config.partition_key.rule,
            config.partition_key.prefix.as_deref(),
            config.partition_key.on_long_key,
            config.partition_key.on_binary_key,
        ),
        spread: (config.partition_key.explicit_hash_key == ExplicitHashKey::Spread)
            .then(Spread::default),
        max_record_bytes: config.kinesis.max_record_bytes as usize,
        commit_interval: config.pipeline.commit_interval(),
        drain_timeout: config.pipeline.rebalance_drain_timeout(),
        shutdown_timeout: config.pipeline.shutdown_timeout(),
        shutdown,
        dead_letter,
        on_oversized: config.dead_letter.oversized_policy().refusal(),
        on_tombstone: config.records.on_tombstone,
        on_headers: config.records.on_headers,
        headers_noted: AtomicBool::new(false),
    };
    info!("delivering {:?} to {target}", config.kafka.topics);
    let kafka = config.kafka.clone();
    let connection = Connection::new(&config.kafka.auth, signer, runtime, Some(metrics.clone()));
    let source_exit =
        tokio::task::spawn_blocking(move || source::run(&kafka, connection, parts)).await??;

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
    config: &Config,
    base: &aws_types::SdkConfig,
    target: aws_credential_types::Credentials,
) {
    let source = match base.credentials_provider() {
        Some(chain) => aws::resolve(&chain).await,
        None => Err("no credential chain".into()),
    };
    match source {
        Ok(creds) => match aws::caller_identity(base, &config.aws, creds).await {
            Ok(id) => info!(account = %id.account, "source identity: {}", id.arn),
            Err(e) => warn!("cannot tell the source identity (GetCallerIdentity): {e}"),
        },
        Err(e) => warn!("cannot tell the source identity: {e}"),
    }
    if config.aws.role_arn.is_some() {
        match aws::caller_identity(base, &config.aws, target).await {
            Ok(id) => info!(account = %id.account, "target identity: {}", id.arn),
            Err(e) => warn!("cannot tell the target identity (GetCallerIdentity): {e}"),
        }
    }
}

fn describe_target(config: &Config, region: &str) -> String {
    let via = match &config.aws.role_arn {
        Some(role) => format!("via role {role}"),
        None => "with the source credentials".into(),
    };
    format!(
        "stream `{}` (region {region}, {via})",
        config.kinesis.stream
    )
}

/// How often the stream is described while doka runs.
const STREAM_CHECK_EVERY: Duration = Duration::from_secs(30);

/// DescribeStreamSummary every [`STREAM_CHECK_EVERY`]: the stream's reachability is known before
/// the first record and while none flow (readiness), and the assumed role is renewed on time
/// even when the pipeline is idle (the client renews credentials when it is used).
async fn watch_stream(
    client: aws_sdk_kinesis::Client,
    name: Option<String>,
    arn: Option<String>,
    health: Arc<Health>,
) {
    loop {
        let described = client
            .describe_stream_summary()
            .set_stream_name(name.clone())
            .set_stream_arn(arn.clone())
            .send()
            .await;
        match described {
            Ok(_) => health.stream_answered(),
            // Rate-limited: the stream answered.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_limit_exceeded_exception()) =>
            {
                health.stream_answered()
            }
            Err(e) => {
                health.stream_failed();
                tracing::debug!(
                    "DescribeStreamSummary failed: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                );
            }
        }
        tokio::time::sleep(STREAM_CHECK_EVERY).await;
    }
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
            std::process::exit(130);
        }
    }
}
