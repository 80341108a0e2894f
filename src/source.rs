//! The Kafka side: a consumer-group member on its own thread.
//!
//! librdkafka calls the rebalance callback from `poll`, and doka must be able to *wait* there (for
//! a revoked partition's records to be delivered, then commit them) without stalling the async
//! sends. So the consumer lives on a plain thread and talks to the lanes through channels.

use std::collections::HashMap;

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::config::{KafkaConfig, StartFrom};
use crate::kafka::{self, ConnectFailure, Connection};
use crate::pipeline::freshness::OldestUndelivered;
use crate::pipeline::intake::{Intake, TopicRoutes};
use crate::pipeline::offsets::PartitionProgress;
use crate::pipeline::{Budget, Fetched, Halt, Header, Share, Timestamp};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// Each assigned partition's progress and the index of its topic's route.
type Progress = HashMap<Arc<str>, HashMap<i32, (Arc<PartitionProgress>, usize)>>;

/// Callbacks librdkafka runs on the consumer thread.
pub struct SourceContext {
    partitions: Mutex<Progress>,
    budget: Arc<Budget>,
    drain_timeout: Duration,
    routing: TopicRoutes,
    /// Per route: its partitions are paused (its share of the in-flight bound is full).
    paused: Vec<AtomicBool>,
    /// Set once the consumer is closing: every partition is paused.
    all_paused: AtomicBool,
    /// The whole in-flight bound is reached (dead letters count there, and shares may add up to
    /// a little more than it): every partition is paused.
    budget_paused: AtomicBool,
    halt: Arc<Halt>,
    /// Set during shutdown, when in-flight records were already waited for.
    closing: AtomicBool,
    /// Set when a rebalance completed: the broker refused commits while it was under way, so
    /// commit at once rather than at the next interval (a member that dies now re-sends less).
    commit_now: AtomicBool,
    connection: Connection,
    metrics: Arc<Metrics>,
    /// Readiness: a member once the group has handed out an assignment (empty ones too).
    health: Arc<Health>,
}

impl SourceContext {
    /// The progress of an assigned partition; `None` for one that is not (or no longer) ours.
    ///
    /// Never create tracking on the fly: a fresh watermark knows nothing of the records below its
    /// first offset and would commit past them.
    fn progress(&self, topic: &str, partition: i32) -> Option<(Arc<PartitionProgress>, usize)> {
        let map = self.partitions.lock().unwrap();
        map.get(topic).and_then(|t| t.get(&partition)).cloned()
    }

    fn all(&self) -> Vec<Arc<PartitionProgress>> {
        let map = self.partitions.lock().unwrap();
        map.values()
            .flat_map(|t| t.values().map(|(p, _)| p.clone()))
            .collect()
    }

    /// Every assigned partition, its route, and whether it is paused now.
    fn all_with_pause(&self) -> Vec<(Arc<PartitionProgress>, usize, bool)> {
        let everything = self.all_paused.load(AtomicOrdering::SeqCst)
            || self.budget_paused.load(AtomicOrdering::SeqCst);
        let map = self.partitions.lock().unwrap();
        map.values()
            .flat_map(|t| t.values())
            .map(|(p, route)| {
                let paused = everything || self.paused[*route].load(AtomicOrdering::SeqCst);
                (p.clone(), *route, paused)
            })
            .collect()
    }

    /// The assigned partitions of `route`.
    fn has_no_partitions(&self, route: usize) -> bool {
        let map = self.partitions.lock().unwrap();
        !map.values()
            .flat_map(|p| p.values())
            .any(|(_, r)| *r == route)
    }

    fn of_route(&self, route: usize) -> TopicPartitionList {
        let map = self.partitions.lock().unwrap();
        let mut tpl = TopicPartitionList::new();
        for (topic, partitions) in map.iter() {
            for (&partition, (_, r)) in partitions {
                if *r == route {
                    tpl.add_partition(topic, partition);
                }
            }
        }
        tpl
    }

    fn remove(&self, tpl: &TopicPartitionList) -> Vec<Arc<PartitionProgress>> {
        let mut map = self.partitions.lock().unwrap();
        let removed: Vec<Arc<PartitionProgress>> = tpl
            .elements()
            .iter()
            .filter_map(|e| map.get_mut(e.topic())?.remove(&e.partition()))
            .map(|(p, _)| p)
            .collect();
        for p in &removed {
            p.revoke();
        }
        removed
    }

    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[Arc<PartitionProgress>],
        mode: CommitMode,
    ) {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            if let Some(offset) = p.commit_due() {
                // Cannot fail for a valid offset.
                let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(offset));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) if matches!(mode, CommitMode::Sync) => mark_committed(partitions, &tpl),
            Ok(()) => {
                // librdkafka reports asynchronous commits to nobody without a commit callback
                // queue, which rdkafka does not offer: remember what was sent, for the metrics.
                for p in partitions {
                    if let Some(e) = tpl.find_partition(&p.topic, p.partition)
                        && let Offset::Offset(o) = e.offset()
                    {
                        p.commit_sent(o);
                    }
                }
            }
            Err(e) => warn!("committing offsets failed (they will be committed later): {e}"),
        }
    }
}

fn mark_committed(partitions: &[Arc<PartitionProgress>], tpl: &TopicPartitionList) {
    for e in tpl.elements() {
        if let Offset::Offset(o) = e.offset()
            && let Some(p) = partitions
                .iter()
                .find(|p| p.partition == e.partition() && &*p.topic == e.topic())
        {
            p.mark_committed(o);
            debug!(
                topic = e.topic(),
                partition = e.partition(),
                offset = o,
                "committed"
            );
        }
    }
}

impl ClientContext for SourceContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.connection.oauth_token()
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.connection.on_error(error, reason);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = self.remove(tpl);
        if revoked.is_empty() {
            return;
        }
        for p in &revoked {
            self.metrics.forget_partition(&p.topic, p.partition);
        }
        self.metrics.assigned_partitions.sub(revoked.len() as i64);
        if consumer.assignment_lost() {
            // Out of the group until it hands out an assignment again.
            self.health.left();
            self.metrics.rebalance("lost");
            warn!(
                partitions = revoked.len(),
                "partitions lost (session expired): not committing them; the new owner re-reads from the last commit"
            );
            return;
        }
        if !self.closing.load(AtomicOrdering::SeqCst) {
            let drained = self.budget.wait_until(self.drain_timeout, |_| {
                revoked.iter().all(|p| p.is_drained())
            });
            if !drained {
                let undelivered: usize = revoked.iter().map(|p| p.undelivered()).sum();
                warn!(
                    undelivered,
                    "revoked partitions still had records in flight after pipeline.rebalance_drain_timeout_ms; \
                     committing what was delivered (the new owner will send the rest again)"
                );
            }
        }
        self.commit(consumer, &revoked, CommitMode::Sync);
        self.metrics.rebalance("revoked");
        info!(partitions = %describe(&revoked), "partitions revoked and committed");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // In the group now, with partitions or (more members than partitions) without.
                self.health.joined();
                let mut map = self.partitions.lock().unwrap();
                let mut to_pause = TopicPartitionList::new();
                for e in tpl.elements() {
                    let route = match self.routing.route_of(e.topic()) {
                        Ok(route) => route,
                        Err(problem) => {
                            // Left untracked: its records count as not ours, nothing commits.
                            self.halt.halt(problem);
                            continue;
                        }
                    };
                    let topic: Arc<str> = e.topic().into();
                    if !map.contains_key(&topic) {
                        self.routing.announce(e.topic(), route);
                    }
                    if self.all_paused.load(AtomicOrdering::SeqCst)
                        || self.budget_paused.load(AtomicOrdering::SeqCst)
                        || self.paused[route].load(AtomicOrdering::SeqCst)
                    {
                        to_pause.add_partition(e.topic(), e.partition());
                    }
                    map.entry(topic.clone()).or_default().insert(
                        e.partition(),
                        (PartitionProgress::new(topic, e.partition()), route),
                    );
                }
                drop(map);
                self.commit_now.store(true, AtomicOrdering::SeqCst);
                if tpl.count() == 0 {
                    return;
                }
                self.metrics.rebalance("assigned");
                self.metrics.assigned_partitions.add(tpl.count() as i64);
                if to_pause.count() > 0
                    && let Err(e) = consumer.pause(&to_pause)
                {
                    warn!("pausing newly assigned partitions failed: {e}");
                }
                info!(
                    partitions = tpl.count(),
                    "partitions assigned: {}",
                    describe_tpl(tpl)
                );
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => mark_committed(&self.all(), offsets),
            Err(e) => {
                warn!("asynchronous offset commit failed (retried at the next interval): {e}")
            }
        }
    }
}

fn describe(partitions: &[Arc<PartitionProgress>]) -> String {
    partitions
        .iter()
        .map(|p| format!("{}[{}]", p.topic, p.partition))
        .collect::<Vec<_>>()
        .join(",")
}

fn describe_tpl(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

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
    pub drain_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub shutdown: Arc<AtomicBool>,
}

/// How the consumer thread ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceExit {
    /// Every fetched record was delivered and committed.
    Clean,
    /// Shutdown timed out with records undelivered (not committed: they will be sent again).
    Undelivered(u64),
    /// The pipeline halted (see [`Halt`]).
    Halted,
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

/// A fetched message as the pipeline sees it.
struct Fetch<'a, 'm>(&'a BorrowedMessage<'m>);

impl Fetched for Fetch<'_, '_> {
    fn topic(&self) -> &str {
        self.0.topic()
    }
    fn partition(&self) -> i32 {
        self.0.partition()
    }
    fn offset(&self) -> i64 {
        self.0.offset()
    }
    fn key(&self) -> Option<&[u8]> {
        self.0.key()
    }
    fn value(&self) -> Option<&[u8]> {
        self.0.payload()
    }
    fn timestamp(&self) -> Timestamp {
        match self.0.timestamp() {
            rdkafka::Timestamp::NotAvailable => Timestamp::None,
            rdkafka::Timestamp::CreateTime(t) => Timestamp::CreateTime(t),
            rdkafka::Timestamp::LogAppendTime(t) => Timestamp::LogAppendTime(t),
        }
    }
    /// Read through librdkafka directly: rdkafka's header accessors panic on a key that is not
    /// UTF-8, and one such record must not stop doka.
    fn headers(&self) -> Vec<Header<'_>> {
        use rdkafka::bindings as rd;
        let mut headers = std::ptr::null_mut();
        // SAFETY: the message outlives `self` and librdkafka owns the headers it hands out; the
        // returned slices borrow from the message, as the lifetimes say.
        unsafe {
            let err = rd::rd_kafka_message_headers(self.0.ptr(), &mut headers);
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
                return Vec::new();
            }
            let mut out = Vec::new();
            for index in 0.. {
                let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
                let err =
                    rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size);
                if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                    break;
                }
                out.push(Header {
                    key: String::from_utf8_lossy(std::ffi::CStr::from_ptr(name).to_bytes()),
                    value: (!value.is_null())
                        .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size)),
                });
            }
            out
        }
    }
}

/// Hands one fetched record to the intake. False when doka must stop.
fn take(msg: &BorrowedMessage<'_>, context: &SourceContext, intake: &mut Intake) -> bool {
    let Some((progress, route)) = context.progress(msg.topic(), msg.partition()) else {
        // Fetched before its partition was revoked: it belongs to the new owner, who reads it
        // from the committed offset (which never passed it).
        context.metrics.not_ours.inc();
        return true;
    };
    intake.take(&Fetch(msg), progress, route)
}

pub fn consumer_config(kafka: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    let mut cc = kafka::client_config(kafka)?;
    cc.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match kafka.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Bound librdkafka's own prefetch buffer; doka's budget bounds the rest.
        .set("queued.max.messages.kbytes", "2048")
        // With the prefetch buffer full, librdkafka looks again after this long (default 1 s:
        // a second without records each time doka drained the buffer faster than it refilled).
        .set("fetch.queue.backoff.ms", "10")
        .set("client.id", "doka");
    for (k, v) in &kafka.properties {
        cc.set(k, v);
    }
    Ok(cc)
}

/// Runs the consumer until shutdown or halt. Blocks the calling thread.
pub fn run(
    kafka: &KafkaConfig,
    subscription: &[String],
    connection: Connection,
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
        connection,
        metrics: parts.metrics.clone(),
        health: parts.health.clone(),
    };
    let consumer: BaseConsumer<SourceContext> = consumer_config(kafka)?
        .create_with_context(context)
        .map_err(|e| {
            anyhow::Error::new(kafka::describe_create_error(&kafka.auth, &e))
                .context("cannot create the Kafka consumer")
        })?;
    consumer.context().connection.await_first_token(|timeout| {
        // Nothing is subscribed yet: a poll serves events, it returns no records.
        let _ = consumer.poll(timeout);
    });
    let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
    // Fail fast at start-up: a broker list that reaches nothing is a set-up problem, best shown
    // by exiting (Kubernetes shows the crash loop). Outages later on are waited out.
    let connect_timeout = Duration::from_millis(kafka.connect_timeout_ms);
    match consumer.fetch_metadata(None, connect_timeout) {
        Ok(metadata) => {
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
                return Ok(SourceExit::RoutesOverlap);
            }
        }
        Err(e) => {
            let explained = consumer.context().connection.explain_failure(|timeout| {
                let _ = consumer.poll(timeout);
            });
            if let Some(failure) = explained {
                report_refused(kafka, &failure);
                return Ok(SourceExit::AuthFailed);
            }
            error!(
                "cannot reach the Kafka brokers {} within kafka.connect_timeout_ms ({} ms): {e}. Check \
                 kafka.brokers, the network path (DNS, security groups) and kafka.auth.mode ({}; \
                 MSK listens for TLS on 9094, SCRAM on 9096, IAM on 9098)",
                kafka.brokers.join(","),
                kafka.connect_timeout_ms,
                kafka.auth.mode.name()
            );
            return Ok(SourceExit::BrokersUnreachable);
        }
    }
    consumer
        .subscribe(&topics)
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {topics:?}: {e}"))?;
    info!(brokers = %kafka.brokers.join(","), group = %kafka.group_id, topics = ?subscription, "joining consumer group");

    let mut last_commit = Instant::now();
    let mut last_gauges = Instant::now();
    let mut paused_ends = PausedEnds::default();
    let mut last_poll_error: Option<Instant> = None;
    let mut intake = parts.intake;
    'rounds: while !parts.shutdown.load(AtomicOrdering::SeqCst) && !parts.halt.is_halted() {
        parts.health.consumer_turned();
        if should_hold(consumer.context(), &parts.budget, &parts.shares) {
            parts.budget.wait_until(HOLD_BEFORE_PAUSE, |_| {
                has_room_again(consumer.context(), &parts.budget, &parts.shares)
                    || parts.shutdown.load(AtomicOrdering::SeqCst)
            });
        }
        manage_pause(&consumer, &parts.budget, &parts.shares);
        // One round: what librdkafka has ready, waiting only for the first record, up to ROUND
        // records and never past the in-flight bound (one record at least: a poll must run).
        let room = parts.budget.room();
        let round = (room.records as usize).clamp(1, ROUND);
        let mut wait = POLL_WAIT;
        intake.start_round();
        for _ in 0..round {
            // Checked once something was taken: the first poll always runs (it also serves
            // rebalances and token refreshes while fetching is paused).
            if intake.round_bytes() > 0
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
                    if !take(&msg, consumer.context(), &mut intake) {
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
        if last_commit.elapsed() >= parts.commit_interval
            || context.commit_now.swap(false, AtomicOrdering::SeqCst)
        {
            context.commit(&consumer, &context.all(), CommitMode::Async);
            last_commit = Instant::now();
        }
        if last_gauges.elapsed() >= PARTITION_GAUGES_EVERY {
            partition_gauges(&consumer, &mut paused_ends);
            last_gauges = Instant::now();
        }
    }
    // Records prepared before a halt or a stop request go out like the rest: what is delivered
    // before the shutdown timeout is committed, the rest is read again after a restart.
    intake.hand_over();
    parts.health.stopping();

    // Stop fetching, let the lanes finish, commit what was delivered, leave the group.
    if let Ok(assignment) = consumer.assignment() {
        let _ = consumer.pause(&assignment);
    }
    intake.close_lanes();
    let halted = parts.halt.is_halted();
    info!(
        in_flight = parts.budget.usage().records,
        "stopping: waiting for records in flight (up to {:?})", parts.shutdown_timeout
    );
    let drained = parts
        .budget
        .wait_until(parts.shutdown_timeout, |u| u.records == 0);
    let context = consumer.context();
    context.closing.store(true, AtomicOrdering::SeqCst);
    context.all_paused.store(true, AtomicOrdering::SeqCst);
    context.commit(&consumer, &context.all(), CommitMode::Sync);
    let undelivered = parts.budget.usage().records;
    leave_group(&consumer);
    close(consumer);
    Ok(if halted {
        SourceExit::Halted
    } else if drained {
        SourceExit::Clean
    } else {
        error!(
            undelivered,
            "shutdown timed out with records undelivered; they were not committed and will be sent again"
        );
        SourceExit::Undelivered(undelivered)
    })
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

/// How often the offset and lag gauges are brought up to date.
const PARTITION_GAUGES_EVERY: Duration = Duration::from_secs(1);

/// How often the end of a paused partition is asked of its broker (nothing fetches it then).
const PAUSED_END_EVERY: Duration = Duration::from_secs(5);

/// How long one round of those questions may hold the consumer loop, and one question.
const PAUSED_END_BUDGET: Duration = Duration::from_secs(1);
const PAUSED_END_TIMEOUT: Duration = Duration::from_millis(500);

/// The ends of paused partitions as their brokers last told them (`None`: the question failed),
/// and when they were asked.
#[derive(Default)]
struct PausedEnds(HashMap<(Arc<str>, i32), (Option<i64>, Instant)>);

/// Offsets and lag of every assigned partition. The partition's end comes from librdkafka's
/// cache, kept fresh by fetches and asking the brokers nothing — except for a paused partition:
/// nothing fetches it, and a paused partition is exactly one falling behind, so its end is asked
/// of its broker every [`PAUSED_END_EVERY`] (within [`PAUSED_END_BUDGET`] per round: rebalance
/// callbacks wait meanwhile). Lag counts from doka's last commit, or from the fetch position
/// before the first one.
fn partition_gauges(consumer: &BaseConsumer<SourceContext>, paused_ends: &mut PausedEnds) {
    let context = consumer.context();
    let started = Instant::now();
    let partitions = context.all_with_pause();
    paused_ends.0.retain(|(topic, partition), _| {
        partitions
            .iter()
            .any(|(p, _, paused)| *paused && p.partition == *partition && p.topic == *topic)
    });
    let mut oldest = OldestUndelivered::new(context.paused.len());
    for (p, route, paused) in partitions {
        oldest.include(&p, route);
        let committed = p.last_commit();
        let fetched = p.fetched();
        let mut end = cached_end(consumer, &p.topic, p.partition);
        if paused {
            let key = (p.topic.clone(), p.partition);
            let known = paused_ends.0.get(&key).copied();
            let stale = known.is_none_or(|(_, at)| at.elapsed() >= PAUSED_END_EVERY);
            if stale && started.elapsed() + PAUSED_END_TIMEOUT <= PAUSED_END_BUDGET {
                // A failed question waits its turn too: brokers that do not answer must not
                // keep the consumer loop in these calls.
                let high =
                    match consumer.fetch_watermarks(&p.topic, p.partition, PAUSED_END_TIMEOUT) {
                        Ok((_, high)) => Some(high),
                        Err(e) => {
                            debug!(
                                topic = %p.topic,
                                partition = p.partition,
                                "the end of a paused partition is not known now: {e}"
                            );
                            known.and_then(|(high, _)| high)
                        }
                    };
                paused_ends.0.insert(key.clone(), (high, Instant::now()));
            }
            if let Some(&(Some(high), _)) = paused_ends.0.get(&key) {
                end = Some(end.map_or(high, |e| e.max(high)));
            }
        }
        let from = committed.or(fetched.map(|f| f + 1));
        let lag = end.zip(from).map(|(end, from)| (end - from).max(0));
        context
            .metrics
            .partition(&p.topic, p.partition, committed, fetched, lag);
    }
    oldest.publish(&context.metrics, |route| context.routing.name(route));
}

/// The partition's end (high watermark) as the last fetch response told it; `None` before one.
/// rdkafka has no safe wrapper for this cached, network-free lookup.
fn cached_end(consumer: &BaseConsumer<SourceContext>, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: a live client handle, a NUL-terminated topic name and two valid out-pointers;
    // librdkafka only reads its own cache here.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// How long shutdown waits for the group to take the partitions back.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Hands every partition back before the consumer is closed.
///
/// librdkafka 2.12 can hang in close, or abort, when a cooperative rebalance assigns partitions
/// while the consumer closes (confluentinc/librdkafka#4527 and #4792, seen here as a member that never
/// exited). Unsubscribing first and serving the resulting assignment changes on this thread
/// leaves close nothing to do but send LeaveGroup. Records fetched meanwhile are dropped
/// unregistered: they are not delivered, so no commit passes them.
fn leave_group(consumer: &BaseConsumer<SourceContext>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + LEAVE_TIMEOUT;
    while Instant::now() < deadline {
        let idle = consumer.poll(Duration::from_millis(100)).is_none();
        let unassigned = consumer.assignment().is_ok_and(|a| a.count() == 0);
        if idle && unassigned {
            return;
        }
    }
    warn!(
        "the group did not take the partitions back within {LEAVE_TIMEOUT:?}; closing the consumer anyway"
    );
}

/// How long closing the consumer may take once the group has the partitions back.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the consumer (LeaveGroup if still a member), giving up after [`CLOSE_TIMEOUT`].
///
/// Everything delivered is committed by now and the partitions were handed back, so a close that
/// hangs in librdkafka must not keep the process (and a Kubernetes rollout) waiting forever.
fn close(consumer: BaseConsumer<SourceContext>) {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = closed_tx.send(());
    });
    match closed_rx.recv_timeout(CLOSE_TIMEOUT) {
        Ok(()) => info!("left the consumer group"),
        Err(_) => warn!(
            "closing the Kafka consumer did not finish within {CLOSE_TIMEOUT:?}; exiting without \
             it (offsets are committed; the group drops this member after session.timeout.ms)"
        ),
    }
}

/// Pauses the partitions of each route whose share of the in-flight bound is full, and resumes
/// them below 3/4 of it; other routes keep fetching. Above all, the whole bound: when it is full
/// every partition pauses, and below 3/4 of it the partitions of routes with room resume.
/// True when the consumer should wait for room before [`manage_pause`] pauses anything: the
/// whole bound is full, or a route's share is full and no other route with partitions could
/// take records meanwhile (waiting stops polling for every route; a route alone at its share is
/// paused at once and the others go on).
fn should_hold(context: &SourceContext, budget: &Budget, shares: &[Arc<Share>]) -> bool {
    if context.budget_paused.load(AtomicOrdering::SeqCst) {
        // Everything is paused already: resuming (or pausing a route) must not wait.
        return false;
    }
    if budget.full() {
        return true;
    }
    let paused = |route: usize| context.paused[route].load(AtomicOrdering::SeqCst);
    let full = |route: usize| shares[route].full();
    // A paused route with room again is resumed right after: it can take records.
    let idle =
        |r: usize| full(r) || (paused(r) && !shares[r].has_room()) || context.has_no_partitions(r);
    (0..shares.len()).any(|r| !paused(r) && full(r)) && (0..shares.len()).all(idle)
}

/// The end of a hold: the bound and every route's share not paused are below the level at which
/// fetching would resume (3/4).
fn has_room_again(context: &SourceContext, budget: &Budget, shares: &[Arc<Share>]) -> bool {
    (context.budget_paused.load(AtomicOrdering::SeqCst) || budget.has_room())
        && shares
            .iter()
            .zip(&context.paused)
            .all(|(share, paused)| paused.load(AtomicOrdering::SeqCst) || share.has_room())
}

fn manage_pause(consumer: &BaseConsumer<SourceContext>, budget: &Budget, shares: &[Arc<Share>]) {
    let context = consumer.context();
    let whole = context.budget_paused.load(AtomicOrdering::SeqCst);
    let whole_change = if !whole && budget.full() {
        Some(true)
    } else if whole && budget.has_room() {
        Some(false)
    } else {
        None
    };
    if let Some(pause) = whole_change {
        let usage = budget.usage();
        let result = if pause {
            consumer.assignment().and_then(|all| consumer.pause(&all))
        } else {
            // Routes still at their share stay paused.
            let mut open = TopicPartitionList::new();
            for (route, paused) in context.paused.iter().enumerate() {
                if !paused.load(AtomicOrdering::SeqCst) {
                    for e in context.of_route(route).elements() {
                        open.add_partition(e.topic(), e.partition());
                    }
                }
            }
            if open.count() == 0 {
                Ok(())
            } else {
                consumer.resume(&open)
            }
        };
        match result {
            Ok(()) => {
                context.budget_paused.store(pause, AtomicOrdering::SeqCst);
                info!(
                    records = usage.records,
                    bytes = usage.bytes,
                    "{}",
                    if pause {
                        "in-flight bound reached (all routes): fetching paused"
                    } else {
                        "in-flight bound (all routes) has room: fetching resumed"
                    }
                );
            }
            Err(e) => warn!(
                "could not {} partitions: {e}",
                if pause { "pause" } else { "resume" }
            ),
        }
    }
    let whole = context.budget_paused.load(AtomicOrdering::SeqCst);
    for (route, share) in shares.iter().enumerate() {
        let paused = context.paused[route].load(AtomicOrdering::SeqCst);
        let pause = if !paused && share.full() {
            true
        } else if paused && share.has_room() {
            false
        } else {
            continue;
        };
        let partitions = context.of_route(route);
        // While the whole bound holds every partition, a route with room again only notes it.
        let result = if partitions.count() == 0 || (whole && !pause) {
            Ok(())
        } else if pause {
            consumer.pause(&partitions)
        } else {
            consumer.resume(&partitions)
        };
        let name = context.routing.name(route);
        match result {
            Ok(()) => {
                context.paused[route].store(pause, AtomicOrdering::SeqCst);
                let usage = share.usage();
                if pause {
                    info!(
                        route = name,
                        records = usage.records,
                        bytes = usage.bytes,
                        "in-flight bound reached: fetching paused"
                    );
                } else {
                    info!(
                        route = name,
                        records = usage.records,
                        bytes = usage.bytes,
                        "fetching resumed"
                    );
                }
            }
            Err(e) => warn!(
                route = name,
                "could not {} partitions: {e}",
                if pause { "pause" } else { "resume" }
            ),
        }
    }
    let any = whole
        || context
            .paused
            .iter()
            .any(|p| p.load(AtomicOrdering::SeqCst));
    context.metrics.fetch_paused.set(i64::from(any));
}
