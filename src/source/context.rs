//! What librdkafka calls back on the consumer thread: rebalances (drain a revoked partition's
//! records in flight, then commit them; register assigned ones), commits, tokens and errors —
//! and the state those callbacks share with the consumer loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::kafka::BrokerAccess;
use crate::pipeline::intake::TopicRoutes;
use crate::pipeline::offsets::PartitionProgress;
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

    pub(super) fn commit(
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

pub(super) fn describe(partitions: &[Arc<PartitionProgress>]) -> String {
    partitions
        .iter()
        .map(|p| format!("{}[{}]", p.topic, p.partition))
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
