//! `doka run`: the wiring, as a short list of steps — telemetry, the source identity, each route
//! (its identity, its destination and lanes), the dead-letter topic, then the consumer until it
//! stops — and the exit code, decided in `exit_code` alone.
//!
//! One way to stop: the first SIGTERM/SIGINT cancels the `stop` token, which the consumer loop
//! watches; once the consumer is done (drained, or its shutdown timed out) the `finished` token
//! ends the lanes and the destinations' probes.

pub mod exit;
mod routes;
mod signals;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::aws;
use crate::config::{Config, Route};
use crate::dead_letter::DeadLetterProducer;
use crate::kafka::{self, BrokerAccess, KafkaConfig};
use crate::pipeline::intake::{DeadLetterWriter, Intake, TopicRoute, TopicRoutes};
use crate::pipeline::pace::Pace;
use crate::pipeline::{Budget, Halt};
use crate::source::{self, CommitMetadata, SourceExit, SourceParts};
use crate::telemetry::health::Health;
use crate::telemetry::http;
use crate::telemetry::metrics::{DestinationMetrics, Metrics};

/// How a run ended, before it is told as an exit code.
enum Outcome {
    /// The consumer stopped (see [`SourceExit`]).
    Stopped(SourceExit),
    /// A setting turned out wrong only at start-up (logged).
    InvalidConfig,
    /// No AWS credentials for a destination at start-up (logged).
    NoCredentials,
    /// A second signal: exited without waiting.
    SignalledTwice,
    /// Could not start, or an internal error.
    Failed(anyhow::Error),
}

/// Runs doka until a signal or a halt. Returns the process exit code.
pub async fn run(config: Config, profile: Option<String>) -> u8 {
    let stop = CancellationToken::new();
    let outcome = tokio::select! {
        outcome = run_until_stopped(&config, profile, stop.clone()) => outcome,
        () = signals::watch(stop) => Outcome::SignalledTwice,
    };
    exit_code(outcome)
}

/// The one place an outcome becomes an exit code (README: exit codes).
fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Stopped(SourceExit::Clean) => exit::CLEAN,
        Outcome::Stopped(SourceExit::BrokersUnreachable) => exit::KAFKA_UNREACHABLE,
        Outcome::Stopped(SourceExit::AuthFailed) => exit::KAFKA_REFUSED,
        Outcome::Stopped(SourceExit::RoutesOverlap) | Outcome::InvalidConfig => exit::CONFIG,
        Outcome::Stopped(SourceExit::Undelivered(_)) => exit::UNDELIVERED,
        Outcome::Stopped(SourceExit::Halted(reason)) => {
            error!("halted: {reason}");
            exit::HALTED
        }
        Outcome::NoCredentials => exit::CREDENTIALS,
        Outcome::SignalledTwice => exit::SIGNALLED_TWICE,
        Outcome::Failed(e) => {
            error!("{e:#}");
            if e.downcast_ref::<kafka::ClientSetupError>().is_some() {
                exit::CONFIG
            } else {
                exit::FAILURE
            }
        }
    }
}

/// What every step shares.
struct Wiring {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    budget: Arc<Budget>,
    halt: Arc<Halt>,
    /// Each route's adaptive rate and metrics (also read at scrape time).
    paces: Vec<(Arc<Pace>, DestinationMetrics)>,
    /// Cancelled once the consumer is done: lanes and probes end.
    finished: CancellationToken,
}

async fn run_until_stopped(
    config: &Config,
    profile: Option<String>,
    stop: CancellationToken,
) -> Outcome {
    match run_steps(config, profile, stop).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Failed(e),
    }
}

async fn run_steps(
    config: &Config,
    profile: Option<String>,
    stop: CancellationToken,
) -> anyhow::Result<Outcome> {
    let wiring = wiring(config);
    // Probes answer from the start: alive, not ready until the group and the destinations are.
    let Some(_endpoint) = serve_telemetry(config, &wiring) else {
        return Ok(Outcome::InvalidConfig);
    };
    // A stop during start-up ends it: nothing has been fetched, so nothing waits to be committed.
    let Some(base) = stop
        .run_until_cancelled(aws::base_config(&config.aws))
        .await
    else {
        return Ok(stopped_while_starting());
    };
    let signer = match stop
        .run_until_cancelled(kafka::msk_token_signer(&config.kafka, &base))
        .await
    {
        None => return Ok(stopped_while_starting()),
        Some(Ok(signer)) => signer,
        Some(Err(problem)) => {
            error!("{problem}");
            return Ok(Outcome::InvalidConfig);
        }
    };
    let mut started = routes::Started::default();
    for (index, route) in config.routes.iter().enumerate() {
        let context = routes::RouteContext {
            config,
            index,
            base: &base,
            profile: profile.as_deref(),
            wiring: &wiring,
        };
        let Some(route_started) = stop
            .run_until_cancelled(routes::start(route, context, &mut started))
            .await
        else {
            return Ok(stopped_while_starting());
        };
        if let Err(outcome) = route_started? {
            return Ok(outcome);
        }
    }
    let runtime = tokio::runtime::Handle::current();
    let dead_letters = dead_letter_writer(config, &wiring, &signer, &runtime)?;
    let intake = Intake::new(
        started.intakes,
        wiring.budget.clone(),
        wiring.halt.clone(),
        wiring.metrics.clone(),
        dead_letters,
        config.dead_letter.oversized_policy().fallback(),
    );
    let parts = SourceParts {
        intake,
        routing: topic_routes(&config.routes),
        shares: started.shares,
        budget: wiring.budget.clone(),
        halt: wiring.halt.clone(),
        metrics: wiring.metrics.clone(),
        health: wiring.health.clone(),
        commit_interval: config.pipeline.commit_interval(),
        commit_metadata: CommitMetadata {
            fingerprints: started.fingerprints,
            max_bytes: (config.pipeline.commit_metadata_max_bytes as usize).into(),
        },
        drain_timeout: config.pipeline.rebalance_drain_timeout(),
        shutdown_timeout: config.pipeline.shutdown_timeout(),
        stop,
    };
    let kafka = consumer_kafka_config(config);
    let subscription = config.subscription();
    let access = BrokerAccess::new(
        &config.kafka.auth,
        signer,
        runtime,
        Some(wiring.metrics.clone()),
    );
    let source_exit =
        tokio::task::spawn_blocking(move || source::run(&kafka, &subscription, access, parts))
            .await??;

    // The consumer has dropped the lane senders: lanes end once their queues are delivered. If
    // shutdown timed out they may still be retrying; their records are uncommitted, so stop them.
    wiring.finished.cancel();
    for lane in started.lanes {
        let _ = lane.await;
    }
    info!("summary: {}", wiring.metrics.summary());
    Ok(Outcome::Stopped(source_exit))
}

/// A stop requested before the consumer joined the group: a clean exit.
fn stopped_while_starting() -> Outcome {
    info!("stopped during start-up: nothing was fetched");
    Outcome::Stopped(SourceExit::Clean)
}

/// The metrics, health state, in-flight bound and halt every part shares.
fn wiring(config: &Config) -> Wiring {
    let metrics = Arc::new(Metrics::new());
    let lanes_total: usize = config.routes.iter().map(|r| r.lanes as usize).sum();
    let longest_request = config
        .routes
        .iter()
        .map(|r| r.destination.request_timeout_ms())
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
    let paces = config
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
                metrics.destination(&route.name, route.destination.name()),
            )
        })
        .collect();
    Wiring {
        metrics,
        health,
        budget,
        halt: Arc::new(Halt::default()),
        paces,
        finished: CancellationToken::new(),
    }
}

/// `/metrics`, `/healthz` and `/readyz` when `http.enabled`. `None`: the address cannot be
/// listened on (logged as the config problem it is).
fn serve_telemetry(config: &Config, wiring: &Wiring) -> Option<Option<http::Endpoint>> {
    if !config.http.enabled {
        return Some(None);
    }
    let (budget, paces, gauges) = (
        wiring.budget.clone(),
        wiring.paces.clone(),
        wiring.metrics.clone(),
    );
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
        wiring.metrics.clone(),
        wiring.health.clone(),
        before_scrape,
    ) {
        Ok(endpoint) => {
            info!(
                "serving /metrics, /healthz and /readyz on {}",
                endpoint.address
            );
            Some(Some(endpoint))
        }
        Err(problem) => {
            error!("invalid config: {problem}");
            None
        }
    }
}

/// The dead-letter topic's producer, when `dead_letter.topic` is set.
fn dead_letter_writer(
    config: &Config,
    wiring: &Wiring,
    signer: &Option<crate::aws::msk_iam::MskTokenSigner>,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Option<Box<dyn DeadLetterWriter>>> {
    let Some(topic) = &config.dead_letter.topic else {
        return Ok(None);
    };
    Ok(Some(Box::new(DeadLetterProducer::new(
        &config.kafka,
        // Its tokens are not in the metrics: one client's renewals (the consumer's) tell the
        // story without counting each token twice.
        BrokerAccess::new(&config.kafka.auth, signer.clone(), runtime.clone(), None),
        topic.clone(),
        runtime.clone(),
        wiring.budget.clone(),
        wiring.halt.clone(),
        wiring.metrics.clone(),
    )?)))
}

/// Which route reads which topics, in the routes' order.
fn topic_routes(routes: &[Route]) -> TopicRoutes {
    TopicRoutes::new(
        routes
            .iter()
            .map(|r| TopicRoute {
                name: r.name.clone(),
                topics: r.topics.clone(),
                pattern: r.topic_pattern.clone().zip(r.topic_regex()),
                destination: r.destination.name().to_owned(),
            })
            .collect(),
    )
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
