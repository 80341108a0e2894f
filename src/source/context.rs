//! What librdkafka calls back on the consumer thread: rebalances (drain a revoked partition's
//! records in flight, then commit them; register assigned ones), commits, tokens and errors —
//! and the state those callbacks share with the consumer loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::kafka::BrokerAccess;
use crate::pipeline::delivered::{self, DeliveredRanges, Unused};
use crate::pipeline::intake::TopicRoutes;
use crate::pipeline::offsets::{CommitPoint, PartitionProgress};
use crate::pipeline::{Budget, Halt};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// Each assigned partition's progress and the index of its topic's route.
type Progress = HashMap<Arc<str>, HashMap<i32, (Arc<PartitionProgress>, usize)>>;

/// Callbacks librdkafka runs on the consumer thread.
pub struct SourceContext {
    pub(super) partitions: Mutex<Progress>,
    pub(super) budget: Arc<Budget>,
    pub(super) drain_timeout: Duration,
    pub(super) routing: TopicRoutes,
    /// Per route: its partitions are paused (its share of the in-flight bound is full).
    pub(super) paused: Vec<AtomicBool>,
    /// Set once the consumer is closing: every partition is paused.
    pub(super) all_paused: AtomicBool,
    /// The whole in-flight bound is reached (dead letters count there, and shares may add up to
    /// a little more than it): every partition is paused.
    pub(super) budget_paused: AtomicBool,
    pub(super) halt: Arc<Halt>,
    /// Set during shutdown, when in-flight records were already waited for.
    pub(super) closing: AtomicBool,
    /// Set when a rebalance completed: the broker refused commits while it was under way, so
    /// commit at once rather than at the next interval (a member that dies now re-sends less).
    pub(super) commit_now: AtomicBool,
    /// Commit metadata: each route's destination fingerprint and the size limit (0: off).
    pub(super) metadata: CommitMetadata,
    pub(super) access: BrokerAccess,
    pub(super) metrics: Arc<Metrics>,
    /// Readiness: a member once the group has handed out an assignment (empty ones too).
    pub(super) health: Arc<Health>,
}

impl SourceContext {
    /// The progress of an assigned partition; `None` for one that is not (or no longer) ours.
    ///
    /// Never create tracking on the fly: a fresh watermark knows nothing of the records below its
    /// first offset and would commit past them.
    pub(super) fn progress(
        &self,
        topic: &str,
        partition: i32,
    ) -> Option<(Arc<PartitionProgress>, usize)> {
        let map = self.partitions.lock().unwrap();
        map.get(topic).and_then(|t| t.get(&partition)).cloned()
    }

    pub(super) fn all(&self) -> Vec<Arc<PartitionProgress>> {
        let map = self.partitions.lock().unwrap();
        map.values()
            .flat_map(|t| t.values().map(|(p, _)| p.clone()))
            .collect()
    }

    /// Every assigned partition, its route, and whether it is paused now.
    pub(super) fn all_with_pause(&self) -> Vec<(Arc<PartitionProgress>, usize, bool)> {
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
    pub(super) fn has_no_partitions(&self, route: usize) -> bool {
        let map = self.partitions.lock().unwrap();
        !map.values()
            .flat_map(|p| p.values())
            .any(|(_, r)| *r == route)
    }

    pub(super) fn of_route(&self, route: usize) -> TopicPartitionList {
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

    pub(super) fn remove(&self, tpl: &TopicPartitionList) -> Vec<Arc<PartitionProgress>> {
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

    /// Commits what is due of `partitions`, each with the records delivered above its offset in
    /// the commit's metadata. Err: the broker refused it (logged here unless a rebalance is the
    /// reason: the caller decides then).
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[Arc<PartitionProgress>],
        mode: CommitMode,
    ) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        let mut points = Vec::new();
        let max_runs = self.metadata.max_runs();
        for p in partitions {
            let Some(point) = p.commit_point_due(max_runs) else {
                continue;
            };
            let mut entry = tpl.add_partition(&p.topic, p.partition);
            // Cannot fail for a valid offset.
            let _ = entry.set_offset(Offset::Offset(point.offset));
            if let Some(metadata) = self.metadata.encode(p, &point) {
                entry.set_metadata(metadata);
            }
            points.push((p, point));
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let result = consumer.commit(&tpl, mode);
        if result.is_ok() {
            for (p, point) in &points {
                p.commit_point_sent(point);
            }
        }
        match result {
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
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetMetadataTooLarge) => {
                // Again without metadata (turned off now): once, as nothing else can be too large.
                if self.metadata.refused(&e) {
                    return self.commit(consumer, partitions, mode);
                }
                return Err(e);
            }
            Err(e) if refused_for_rebalance(&e) => return Err(e),
            Err(e) => {
                warn!("committing offsets failed (they will be committed later): {e}");
                return Err(e);
            }
        }
        Ok(())
    }

    /// The committed offsets of newly assigned partitions and the delivered records their
    /// metadata names (empty when there is none, or it cannot be used).
    fn inherited(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> HashMap<(String, i32), (i64, Vec<u8>)> {
        if !self.metadata.enabled() || tpl.count() == 0 {
            return HashMap::new();
        }
        match consumer.committed_offsets(tpl.clone(), COMMITTED_TIMEOUT) {
            Ok(committed) => committed_metadata(&committed),
            Err(e) => {
                warn!(
                    "cannot read the committed offsets' metadata of the assigned partitions ({e}): \
                     records delivered above the committed offsets are sent again"
                );
                HashMap::new()
            }
        }
    }
}

/// How long reading the committed offsets at assignment may take (inside the rebalance).
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// A commit refused because the group is rebalancing (or this member's generation ended).
pub(super) fn refused_for_rebalance(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId
        )
    )
}

/// The commit metadata settings: which records above a commit were delivered (src/pipeline/
/// delivered.rs).
pub struct CommitMetadata {
    /// Each route's destination fingerprint, by route index.
    pub fingerprints: Vec<Arc<str>>,
    /// The longest metadata to write; 0 turns it off. Set to 0 when the broker refuses it.
    pub max_bytes: AtomicUsize,
}

impl CommitMetadata {
    pub fn enabled(&self) -> bool {
        self.max_bytes.load(AtomicOrdering::Relaxed) > 0
    }

    /// The most runs a commit's metadata can hold (each takes two bytes at least, compressed up
    /// to `MAX_RATIO`); 0 when it is off.
    fn max_runs(&self) -> usize {
        self.max_bytes.load(AtomicOrdering::Relaxed) * delivered::MAX_RATIO / 2
    }

    fn encode(&self, p: &PartitionProgress, point: &CommitPoint) -> Option<String> {
        let max_bytes = self.max_bytes.load(AtomicOrdering::Relaxed);
        if max_bytes == 0 || point.delivered.is_empty() {
            return None;
        }
        delivered::encode(
            &p.fingerprint,
            point.offset,
            point.delivered.ranges().iter().copied(),
            max_bytes,
        )
    }

    /// The broker keeps less than `pipeline.commit_metadata_max_bytes`: committed without
    /// metadata from now on.
    /// True when it was on until now.
    fn refused(&self, e: &KafkaError) -> bool {
        let was_on = self.max_bytes.swap(0, AtomicOrdering::Relaxed) > 0;
        if was_on {
            warn!(
                "the broker refused the commit metadata as too large ({e}): committing without \
                 it from now on (a crash then re-sends every record above a committed offset). \
                 Set pipeline.commit_metadata_max_bytes to the brokers' offset.metadata.max.bytes"
            );
        }
        was_on
    }
}

/// Each partition's committed offset and metadata bytes, read through librdkafka directly:
/// rdkafka's accessor panics on metadata that is not UTF-8, which any other client may write.
fn committed_metadata(tpl: &TopicPartitionList) -> HashMap<(String, i32), (i64, Vec<u8>)> {
    let mut out = HashMap::new();
    // SAFETY: the list is alive for this call and librdkafka owns its elements; each element's
    // topic is a C string and its metadata `metadata_size` bytes (or null).
    unsafe {
        let list = &*tpl.ptr();
        if list.elems.is_null() {
            return out;
        }
        for e in std::slice::from_raw_parts(list.elems, list.cnt.max(0) as usize) {
            if e.err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || e.offset < 0
                || e.topic.is_null()
            {
                continue;
            }
            let topic = std::ffi::CStr::from_ptr(e.topic)
                .to_string_lossy()
                .into_owned();
            let metadata = if e.metadata.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(e.metadata.cast::<u8>(), e.metadata_size).to_vec()
            };
            out.insert((topic, e.partition), (e.offset, metadata));
        }
    }
    out
}

impl SourceContext {
    /// What a partition's last commit says was delivered above `committed`, logged.
    fn delivered_before(
        &self,
        topic: &str,
        partition: i32,
        fingerprint: &str,
        committed: i64,
        metadata: &[u8],
    ) -> DeliveredRanges {
        match delivered::decode(metadata, fingerprint, committed) {
            Ok(delivered) => {
                if let Some(&(_, end)) = delivered.ranges().last() {
                    info!(
                        topic,
                        partition,
                        committed,
                        records = delivered.count(),
                        "the last commit says {} records above offset {committed} (up to offset \
                         {}) were delivered already: they are skipped, not sent again",
                        delivered.count(),
                        end - 1
                    );
                }
                delivered
            }
            Err(Unused::Absent) => DeliveredRanges::default(),
            Err(unused) => {
                let why = format!(
                    "the last commit's record of delivered offsets is not used ({unused}): every \
                     record from offset {committed} on is sent"
                );
                // A changed destination is a choice; anything else is worth a look.
                if unused == Unused::OtherDestination {
                    info!(topic, partition, committed, "{why}");
                } else {
                    warn!(topic, partition, committed, "{why}");
                }
                DeliveredRanges::default()
            }
        }
    }
}

pub(super) fn mark_committed(partitions: &[Arc<PartitionProgress>], tpl: &TopicPartitionList) {
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
        self.access.oauth_token()
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.access.on_error(error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.access.on_log(level, facility, message);
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
        self.metrics.rebalance("revoked");
        match self.commit(consumer, &revoked, CommitMode::Sync) {
            Ok(()) => info!(partitions = %describe(&revoked), "partitions revoked and committed"),
            Err(e) if refused_for_rebalance(&e) => warn!(
                partitions = %describe_points(&revoked),
                "partitions revoked; the broker refused their commit while the group rebalances \
                 ({e}): not committed. Their new owners send again what was delivered above the \
                 last commit (a late commit could move a new owner's offset back)"
            ),
            Err(e) => warn!(
                partitions = %describe(&revoked),
                "partitions revoked, not committed ({e}): their new owners send again what was \
                 delivered after the last commit"
            ),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // In the group now, with partitions or (more members than partitions) without.
                self.health.joined();
                let inherited = self.inherited(consumer, tpl);
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
                    let fingerprint = self.metadata.fingerprints[route].clone();
                    let delivered = inherited
                        .get(&(e.topic().to_owned(), e.partition()))
                        .map(|(offset, metadata)| {
                            self.delivered_before(
                                e.topic(),
                                e.partition(),
                                &fingerprint,
                                *offset,
                                metadata,
                            )
                        })
                        .unwrap_or_default();
                    map.entry(topic.clone()).or_default().insert(
                        e.partition(),
                        (
                            PartitionProgress::inheriting(
                                topic,
                                e.partition(),
                                fingerprint,
                                delivered,
                            ),
                            route,
                        ),
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
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetMetadataTooLarge) {
                    self.metadata.refused(&e);
                }
                // Their metadata is sent again with the next commit, changed or not.
                let all = self.all();
                for entry in offsets.elements() {
                    if let Some(p) = all
                        .iter()
                        .find(|p| p.partition == entry.partition() && &*p.topic == entry.topic())
                    {
                        p.commit_failed();
                    }
                }
                warn!("asynchronous offset commit failed (retried at the next interval): {e}")
            }
        }
    }
}

pub(super) fn describe(partitions: &[Arc<PartitionProgress>]) -> String {
    partitions
        .iter()
        .map(|p| format!("{}[{}]", p.topic, p.partition))
        .collect::<Vec<_>>()
        .join(",")
}

/// Each partition with its last commit and what was delivered since: `t[0]@120..180`.
fn describe_points(partitions: &[Arc<PartitionProgress>]) -> String {
    partitions
        .iter()
        .map(|p| {
            let last = p.last_commit().map_or("-".into(), |o| o.to_string());
            let now = p.committable().map_or("-".into(), |o| o.to_string());
            format!("{}[{}]@{last}..{now}", p.topic, p.partition)
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn describe_tpl(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}[{}]", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}
