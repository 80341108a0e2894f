//! The partition gauges: committed and fetched offsets, and lag.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::debug;

use crate::pipeline::freshness::OldestUndelivered;

use super::SourceContext;

/// How often the offset and lag gauges are brought up to date.
pub(super) const PARTITION_GAUGES_EVERY: Duration = Duration::from_secs(1);

/// How often the end of a paused partition is asked of its broker (nothing fetches it then).
const PAUSED_END_EVERY: Duration = Duration::from_secs(5);

/// How long one round of those questions may hold the consumer loop, and one question.
const PAUSED_END_BUDGET: Duration = Duration::from_secs(1);
const PAUSED_END_TIMEOUT: Duration = Duration::from_millis(500);

/// The ends of paused partitions as their brokers last told them (`None`: the question failed),
/// and when they were asked.
#[derive(Default)]
pub(super) struct PausedEnds(HashMap<(Arc<str>, i32), (Option<i64>, Instant)>);

/// Offsets and lag of every assigned partition. The partition's end comes from librdkafka's
/// cache, kept fresh by fetches and asking the brokers nothing — except for a paused partition:
/// nothing fetches it, and a paused partition is exactly one falling behind, so its end is asked
/// of its broker every [`PAUSED_END_EVERY`] (within [`PAUSED_END_BUDGET`] per round: rebalance
/// callbacks wait meanwhile). Lag counts from doka's last commit, or from the fetch position
/// before the first one.
pub(super) fn partition_gauges(
    consumer: &BaseConsumer<SourceContext>,
    paused_ends: &mut PausedEnds,
) {
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
