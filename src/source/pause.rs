//! Pausing and resuming fetching by the in-flight bound: per route by its share, and all of it by
//! the whole bound.

use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::TopicPartitionList;
use tracing::{info, warn};

use super::SourceContext;
use crate::pipeline::{Budget, Share};

/// Pauses the partitions of each route whose share of the in-flight bound is full, and resumes
/// them below 3/4 of it; other routes keep fetching. Above all, the whole bound: when it is full
/// every partition pauses, and below 3/4 of it the partitions of routes with room resume.
/// True when the consumer should wait for room before [`manage_pause`] pauses anything: the
/// whole bound is full, or a route's share is full and no other route with partitions could
/// take records meanwhile (waiting stops polling for every route; a route alone at its share is
/// paused at once and the others go on).
pub(super) fn should_hold(context: &SourceContext, budget: &Budget, shares: &[Arc<Share>]) -> bool {
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
pub(super) fn has_room_again(
    context: &SourceContext,
    budget: &Budget,
    shares: &[Arc<Share>],
) -> bool {
    (context.budget_paused.load(AtomicOrdering::SeqCst) || budget.has_room())
        && shares
            .iter()
            .zip(&context.paused)
            .all(|(share, paused)| paused.load(AtomicOrdering::SeqCst) || share.has_room())
}

pub(super) fn manage_pause(
    consumer: &BaseConsumer<SourceContext>,
    budget: &Budget,
    shares: &[Arc<Share>],
) {
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
