//! The Kafka side: a consumer-group member on its own thread.
//!
//! librdkafka calls the rebalance callback from `poll`, and doka must be able to *wait* there (for
//! a revoked partition's records to be delivered, then commit them) without stalling the async
//! sends. So the consumer lives on a plain thread and talks to the lanes through channels.

mod context;
mod fetch;
mod gauges;
mod leave;
mod pause;

pub use context::{CommitMetadata, SourceContext};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use tracing::{error, info, warn};

use crate::kafka::{self, BrokerAccess, ConnectFailure, FirstContact, KafkaConfig};
use crate::pipeline::intake::{Intake, TopicRoutes};
use crate::pipeline::{Budget, Halt, Share};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;
use fetch::take;
use gauges::{PARTITION_GAUGES_EVERY, PausedEnds, partition_gauges};
use leave::{close, leave_group};
use pause::{has_room_again, manage_pause, should_hold};

/// What the consumer thread needs from the rest of the pipeline.
pub struct SourceParts {
    /// Where fetched records go: each route's policies, format and lanes.
    pub intake: Intake,
    /// Which route each topic belongs to.
    pub routing: TopicRoutes,
    /// Each route's part of the in-flight bound (the route pauses its partitions when full).
    pub shares: Vec<Arc<Share>>,
    /// The whole in-flight bound.
    pub budget: Arc<Budget>,
    pub halt: Arc<Halt>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub commit_interval: Duration,
    /// What commits say about the records delivered above the committed offset.
    pub commit_metadata: CommitMetadata,
    pub drain_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Cancelled when doka is asked to stop (a signal).
    pub stop: CancellationToken,
}

/// How the consumer thread ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceExit {
    /// Every fetched record was delivered and committed.
    Clean,
    /// Shutdown timed out with records undelivered (not committed: they will be sent again).
    Undelivered(u64),
    /// The pipeline halted (see [`Halt`]), for this reason.
    Halted(String),
    /// No broker answered at start-up within `kafka.connect_timeout_ms`.
    BrokersUnreachable,
    /// At start-up, the brokers answered but refused the TLS handshake or the authentication.
    AuthFailed,
    /// At start-up, an existing topic matches the topic patterns of two routes.
    RoutesOverlap,
}

/// How long a poll waits for the first record of a round.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Records taken in one round before they are handed to the lanes.
const ROUND: usize = 2048;
/// How long a full in-flight bound is waited out before fetching is paused. librdkafka's pause
/// drops every record it prefetched for the partition, and after the resume its broker thread
/// fetches again only at its next wake-up, up to a second later: pausing whenever the lanes are
/// a moment behind cost more than half the throughput. While the consumer waits here, librdkafka
/// keeps prefetching up to `queued.max.messages.kbytes`; a bound still full after this wait (an
/// outage, a throttled stream) pauses as before, so rebalances wait at most this long.
const HOLD_BEFORE_PAUSE: Duration = Duration::from_millis(500);

/// What the loop and the shutdown share, once the intake and the routing are taken out of
/// [`SourceParts`].
struct Controls {
    shares: Vec<Arc<Share>>,
    budget: Arc<Budget>,
    halt: Arc<Halt>,
    health: Arc<Health>,
    commit_interval: Duration,
    shutdown_timeout: Duration,
    stop: CancellationToken,
}

/// Runs the consumer until shutdown or halt. Blocks the calling thread.
pub fn run(
    kafka: &KafkaConfig,
    subscription: &[String],
    access: BrokerAccess,
    parts: SourceParts,
) -> anyhow::Result<SourceExit> {
    let context = SourceContext {
        partitions: Mutex::new(HashMap::new()),
        budget: parts.budget.clone(),
        drain_timeout: parts.drain_timeout,
        paused: parts
            .shares
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect(),
        all_paused: AtomicBool::new(false),
        budget_paused: AtomicBool::new(false),
        routing: parts.routing,
        halt: parts.halt.clone(),
        closing: AtomicBool::new(false),
        commit_now: AtomicBool::new(false),
        metadata: parts.commit_metadata,
        access,
        metrics: parts.metrics,
        health: parts.health.clone(),
    };
    let controls = Controls {
        shares: parts.shares,
        budget: parts.budget,
        halt: parts.halt,
        health: parts.health,
        commit_interval: parts.commit_interval,
        shutdown_timeout: parts.shutdown_timeout,
        stop: parts.stop,
    };
    let mut intake = parts.intake;
    let consumer: BaseConsumer<SourceContext> = kafka::consumer_config(kafka)?
        .create_with_context(context)
        .map_err(|e| {
            anyhow::Error::new(kafka::describe_create_error(&kafka.auth, &e))
                .context("cannot create the Kafka consumer")
        })?;
    let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
    if let Some(exit) = first_look(&consumer, kafka, &topics) {
        return Ok(exit);
    }
    if controls.stop.is_cancelled() {
        // Stopped while starting: nothing fetched, no group joined.
        close(consumer);
        return Ok(SourceExit::Clean);
    }
    consumer
        .subscribe(&topics)
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {topics:?}: {e}"))?;
    info!(brokers = %kafka.brokers.join(","), group = %kafka.group_id, topics = ?subscription, "joining consumer group");

    consume(&consumer, &mut intake, &controls);
    Ok(shut_down(consumer, intake, &controls))
}

/// Fails fast at start-up: a broker list that reaches nothing, brokers that refuse doka, or two
/// routes' patterns matching one existing topic are set-up problems, best shown by exiting
/// (Kubernetes shows the crash loop). Outages later on are waited out.
fn first_look(
    consumer: &BaseConsumer<SourceContext>,
    kafka: &KafkaConfig,
    topics: &[&str],
) -> Option<SourceExit> {
    let connect_timeout = Duration::from_millis(kafka.connect_timeout_ms);
    let contact = consumer.context().access.first_contact(
        connect_timeout,
        |wait| consumer.fetch_metadata(None, wait),
        // Nothing is subscribed yet: a poll serves events, it returns no records.
        |wait| {
            let _ = consumer.poll(wait);
        },
    );
    match contact {
        FirstContact::Answered(metadata) => {
            // Patterns (`^…`) match whatever exists; named topics are looked up.
            for topic in topics.iter().filter(|t| !t.starts_with('^')) {
                let found = metadata
                    .topics()
                    .iter()
                    .any(|t| t.name() == *topic && t.error().is_none());
                if !found {
                    warn!(
                        "topic `{topic}` does not exist on {}; doka waits for it (check the topics of its route)",
                        kafka.brokers.join(",")
                    );
                }
            }
            // Two topic patterns matching one existing topic: a config problem, told now rather
            // than when the topic is assigned.
            let routing = &consumer.context().routing;
            if let Some(problem) = metadata
                .topics()
                .iter()
                .find_map(|t| routing.overlap(t.name()))
            {
                error!("invalid config: {problem}");
                return Some(SourceExit::RoutesOverlap);
            }
            None
        }
        FirstContact::Refused(failure) => {
            report_refused(kafka, &failure);
            Some(SourceExit::AuthFailed)
        }
        FirstContact::NoAnswer(e) => {
            error!(
                "cannot reach the Kafka brokers {} within kafka.connect_timeout_ms ({} ms): {e}. Check \
                 kafka.brokers, the network path (DNS, security groups) and kafka.auth.mode ({}; \
                 MSK listens for TLS on 9094, SCRAM on 9096, IAM on 9098)",
                kafka.brokers.join(","),
                kafka.connect_timeout_ms,
                kafka.auth.mode.name()
            );
            Some(SourceExit::BrokersUnreachable)
        }
    }
}

/// The loop: rounds of polling handed to the lanes, pausing by the in-flight bound, periodic
/// commits and gauges, until a stop is requested or the pipeline halts.
fn consume(consumer: &BaseConsumer<SourceContext>, intake: &mut Intake, controls: &Controls) {
    let Controls {
        shares,
        budget,
        halt,
        health,
        commit_interval,
        stop,
        ..
    } = controls;
    let mut last_commit = Instant::now();
    let mut last_gauges = Instant::now();
    let mut paused_ends = PausedEnds::default();
    let mut last_poll_error: Option<Instant> = None;
    'rounds: while !stop.is_cancelled() && !halt.is_halted() {
        health.consumer_turned();
        if should_hold(consumer.context(), budget, shares) {
            budget.wait_until(HOLD_BEFORE_PAUSE, |_| {
                has_room_again(consumer.context(), budget, shares) || stop.is_cancelled()
            });
        }
        manage_pause(consumer, budget, shares);
        // One round: what librdkafka has ready, waiting only for the first record, up to ROUND
        // records and never past the in-flight bound (one record at least: a poll must run).
        let room = budget.room();
        let round = (room.records as usize).clamp(1, ROUND);
        let mut wait = POLL_WAIT;
        intake.start_round();
        if !intake.retry_waiting() {
            break 'rounds;
        }
        for polls in 0..round {
            // Checked once something was taken: the first poll always runs (it also serves
            // rebalances and token refreshes while fetching is paused), even after records that
            // waited for their schema were taken.
            if polls > 0
                && intake.round_bytes() > 0
                && (intake.round_bytes() >= room.bytes || intake.share_reached())
            {
                break;
            }
            let Some(polled) = consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            match polled {
                Ok(msg) => {
                    crate::panics::test_panic("consumer");
                    if !take(&msg, consumer.context(), intake) {
                        break 'rounds;
                    }
                }
                // Broker and network errors: librdkafka reconnects by itself; say so now and then.
                Err(e) => {
                    if last_poll_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        warn!("Kafka consumer error (librdkafka retries): {e}");
                        last_poll_error = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        intake.hand_over();
        let context = consumer.context();
        if last_commit.elapsed() >= *commit_interval
            || context.commit_now.swap(false, AtomicOrdering::SeqCst)
        {
            // A failure is logged there and retried at the next interval.
            let _ = context.commit(consumer, &context.all(), CommitMode::Async);
            last_commit = Instant::now();
        }
        if last_gauges.elapsed() >= PARTITION_GAUGES_EVERY {
            partition_gauges(consumer, &mut paused_ends);
            last_gauges = Instant::now();
        }
    }
}

/// Stops fetching, lets the lanes finish within the shutdown timeout, commits what was
/// delivered and leaves the group. Records prepared before a halt or a stop request go out like
/// the rest: what is delivered in time is committed, the rest is read again after a restart.
fn shut_down(
    consumer: BaseConsumer<SourceContext>,
    mut intake: Intake,
    controls: &Controls,
) -> SourceExit {
    intake.hand_over();
    // Records waiting for a schema were never registered: they are read again after a restart.
    intake.forget_waiting();
    controls.health.stopping();
    if let Ok(assignment) = consumer.assignment() {
        let _ = consumer.pause(&assignment);
    }
    intake.close_lanes();
    let halted = controls.halt.is_halted();
    info!(
        in_flight = controls.budget.usage().records,
        "stopping: waiting for records in flight (up to {:?})", controls.shutdown_timeout
    );
    let drained = controls
        .budget
        .wait_until(controls.shutdown_timeout, |u| u.records == 0);
    let context = consumer.context();
    context.closing.store(true, AtomicOrdering::SeqCst);
    context.all_paused.store(true, AtomicOrdering::SeqCst);
    if let Err(e) = context.commit(&consumer, &context.all(), CommitMode::Sync) {
        // Other failures are logged there.
        if context::refused_for_rebalance(&e) {
            warn!(
                "the last commit was refused while the group rebalances ({e}): the partitions' \
                 next owners send again what was delivered above their last commit"
            );
        }
    }
    let undelivered = controls.budget.usage().records;
    leave_group(&consumer);
    close(consumer);
    if halted {
        SourceExit::Halted(
            controls
                .halt
                .reason()
                .unwrap_or_else(|| "unknown reason".into()),
        )
    } else if drained {
        SourceExit::Clean
    } else {
        error!(
            undelivered,
            "shutdown timed out with records undelivered; they were not committed and will be sent again"
        );
        SourceExit::Undelivered(undelivered)
    }
}

fn report_refused(kafka: &KafkaConfig, failure: &ConnectFailure) {
    let brokers = kafka.brokers.join(",");
    let mode = kafka.auth.mode.name();
    if failure.step == kafka::TOKEN_SIGNING {
        error!(
            "doka cannot authenticate to the Kafka brokers {brokers} (kafka.auth.mode {mode}): {failure}"
        );
    } else {
        error!("the Kafka brokers {brokers} refused doka (kafka.auth.mode {mode}): {failure}");
    }
}
