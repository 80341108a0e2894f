//! Leaving the group and closing the consumer at shutdown, without hanging in librdkafka.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{info, warn};

use super::SourceContext;

/// How long shutdown waits for the group to take the partitions back.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Hands every partition back before the consumer is closed.
///
/// librdkafka 2.12 can hang in close, or abort, when a cooperative rebalance assigns partitions
/// while the consumer closes (confluentinc/librdkafka#4527 and #4792, seen here as a member that never
/// exited). Unsubscribing first and serving the resulting assignment changes on this thread
/// leaves close nothing to do but send LeaveGroup. Records fetched meanwhile are dropped
/// unregistered: they are not delivered, so no commit passes them.
pub(super) fn leave_group(consumer: &BaseConsumer<SourceContext>) {
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
pub(super) fn close(consumer: BaseConsumer<SourceContext>) {
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
