//! Liveness and readiness, as Kubernetes' probes ask for them.
//!
//! - **Alive** (`/healthz`): the consumer loop and the lanes are making progress or idle. The
//!   consumer loop beats at every turn (at least every 100 ms, longer only while it waits for a
//!   revoked partition's records, bounded by `pipeline.rebalance_drain_timeout_ms`); a lane is
//!   wedged when one request attempt has run far past `kinesis.request_timeout_ms`. A restart
//!   helps only then.
//! - **Ready** (`/readyz`): a member of the consumer group — the group handed it an assignment,
//!   with partitions or (more members than partitions) none; rebalances keep it a member, a lost
//!   assignment (session expired) does not until the next one — credentials for each destination
//!   obtained, and each destination reachable: it answered once since start (a request, or the
//!   DescribeStreamSummary or DescribeDeliveryStream doka sends every 30 s), and not ready once
//!   whole requests have failed for [`UNREACHABLE_AFTER`] without one accepted in between (an
//!   outage, a missing stream, denied access), ready again at the first accepted request.
//!   Throttling is not unreachability. Nothing routes traffic to doka, so readiness is a signal: a
//!   rollout whose new pods cannot reach their destination stops instead of replacing working ones,
//!   and dashboards see it. At shutdown doka is not ready from the first signal on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Whole requests failing this long without an accepted one make doka not ready.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);

pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` of the consumer loop's last turn; 0: not started.
    consumer_beat: AtomicU64,
    consumer_stall: Duration,
    /// Per lane: milliseconds since `epoch` at which its running attempt started; 0: idle.
    lanes: Vec<AtomicU64>,
    lane_stall: Duration,
    member: AtomicBool,
    /// One per route: its destination and the credentials for it.
    destinations: Vec<Destination>,
    /// Shutdown began: the consumer loop now waits for the drain, the group and the close.
    stopping: AtomicBool,
}

struct Destination {
    name: String,
    /// Unix seconds until which the credentials are valid; 0: none yet.
    credentials_until: AtomicU64,
    /// Milliseconds since `epoch` of the first whole-request failure since the last accepted
    /// request; 0: none.
    failing_since: AtomicU64,
    /// The destination answered at least once since start.
    seen: AtomicBool,
}

impl Health {
    /// `consumer_stall`: how long the consumer loop may not turn; `lane_stall`: how long one
    /// request attempt may run.
    /// `destinations`: each route's destination, named in the probe's answer.
    pub fn new(
        lanes: usize,
        destinations: Vec<String>,
        consumer_stall: Duration,
        lane_stall: Duration,
    ) -> Self {
        Self {
            epoch: Instant::now(),
            consumer_beat: AtomicU64::new(0),
            consumer_stall,
            lanes: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            lane_stall,
            member: AtomicBool::new(false),
            destinations: destinations
                .into_iter()
                .map(|name| Destination {
                    name,
                    credentials_until: AtomicU64::new(0),
                    failing_since: AtomicU64::new(0),
                    seen: AtomicBool::new(false),
                })
                .collect(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Never 0, which means "not set".
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn age(&self, stamp: u64) -> Duration {
        Duration::from_millis(self.now().saturating_sub(stamp))
    }

    pub fn consumer_turned(&self) {
        self.consumer_beat.store(self.now(), Ordering::Relaxed);
    }

    pub fn attempt_started(&self, lane: usize) {
        self.lanes[lane].store(self.now(), Ordering::Relaxed);
    }

    pub fn attempt_ended(&self, lane: usize) {
        self.lanes[lane].store(0, Ordering::Relaxed);
    }

    /// In the group: it handed out an assignment (an empty one too). Not after shutdown began.
    pub fn joined(&self) {
        if !self.stopping.load(Ordering::SeqCst) {
            self.member.store(true, Ordering::SeqCst);
        }
    }

    /// Out of the group: the assignment was lost (the session expired, e.g. brokers unreachable
    /// for longer than `session.timeout.ms`) until the group assigns partitions again.
    pub fn left(&self) {
        self.member.store(false, Ordering::SeqCst);
    }

    /// Shutdown began: not ready from now on, and the consumer loop's long waits for the drain
    /// and for leaving the group (each bounded) are not a wedge.
    pub fn stopping(&self) {
        self.member.store(false, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Credentials for the destination were obtained, valid until `expiry` (`None`: they do not
    /// expire). A failed renewal changes nothing: the old ones are good until they expire.
    pub fn credentials_obtained(&self, destination: usize, expiry: Option<SystemTime>) {
        let until = expiry.map_or(u64::MAX, |e| {
            e.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs().max(1))
        });
        self.destinations[destination]
            .credentials_until
            .store(until, Ordering::SeqCst);
    }

    /// The destination accepted a request (throttled entries included: it answered).
    pub fn destination_answered(&self, destination: usize) {
        let d = &self.destinations[destination];
        d.failing_since.store(0, Ordering::Relaxed);
        d.seen.store(true, Ordering::Relaxed);
    }

    /// A whole request failed (connection, timeout, server error, missing stream or delivery stream, denied).
    pub fn destination_failed(&self, destination: usize) {
        let now = self.now();
        let _ = self.destinations[destination]
            .failing_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// `Err` names what is wrong (no config values, no secrets).
    pub fn alive(&self) -> Result<(), String> {
        let beat = self.consumer_beat.load(Ordering::Relaxed);
        if beat != 0
            && !self.stopping.load(Ordering::SeqCst)
            && self.age(beat) > self.consumer_stall
        {
            return Err(format!(
                "the consumer loop has not turned for {} s",
                self.age(beat).as_secs()
            ));
        }
        for (lane, started) in self.lanes.iter().enumerate() {
            let started = started.load(Ordering::Relaxed);
            if started != 0 && self.age(started) > self.lane_stall {
                return Err(format!(
                    "lane {lane}: one request attempt has run for {} s",
                    self.age(started).as_secs()
                ));
            }
        }
        Ok(())
    }

    pub fn ready(&self) -> Result<(), String> {
        self.alive()?;
        if !self.member.load(Ordering::SeqCst) {
            return Err(
                "not in the consumer group: joining (no assignment yet), its assignment was lost, or stopping"
                    .into(),
            );
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // With several routes the answer names the destination; with one it reads as before.
        let named = self.destinations.len() > 1;
        for d in &self.destinations {
            let which = if named {
                format!("`{}`", d.name)
            } else {
                "the destination".to_owned()
            };
            if d.credentials_until.load(Ordering::SeqCst) <= now {
                return Err(format!(
                    "no valid credentials for {which} (expired without renewal)"
                ));
            }
            if !d.seen.load(Ordering::Relaxed) {
                return Err(format!("{which} has not answered yet"));
            }
            let since = d.failing_since.load(Ordering::Relaxed);
            if since != 0 && self.age(since) >= UNREACHABLE_AFTER {
                return Err(format!(
                    "{which} has not accepted a request for {} s",
                    self.age(since).as_secs()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_membership_and_credentials_and_alive_needs_progress() {
        let health = Health::new(
            2,
            vec!["s".into()],
            Duration::from_millis(300),
            Duration::from_millis(300),
        );
        assert!(health.alive().is_ok(), "nothing started yet");
        assert!(health.ready().is_err());
        health.joined();
        assert!(health.ready().is_err(), "no credentials yet");
        health.credentials_obtained(0, Some(SystemTime::now() + Duration::from_secs(60)));
        health.consumer_turned();
        assert!(health.ready().unwrap_err().contains("not answered yet"));
        health.destination_answered(0);
        assert!(health.ready().is_ok());

        // Time passing is what is tested here (thresholds 300 ms, waits 400 ms).
        health.attempt_started(1);
        std::thread::sleep(Duration::from_millis(400));
        assert!(health.alive().unwrap_err().contains("consumer loop"));
        health.consumer_turned();
        assert!(health.alive().unwrap_err().contains("lane 1"));
        health.attempt_ended(1);
        std::thread::sleep(Duration::from_millis(400));
        assert!(health.alive().unwrap_err().contains("consumer loop"));
        health.consumer_turned();
        assert!(health.alive().is_ok());

        health.destination_failed(0);
        assert!(
            health.ready().is_ok(),
            "a short outage is not unreachability"
        );
        health.destination_answered(0);
        health.credentials_obtained(0, None);
        assert!(health.ready().is_ok());
        health.credentials_obtained(0, Some(SystemTime::now() + Duration::from_secs(60)));
        health.credentials_obtained(0, Some(SystemTime::now() - Duration::from_secs(1)));
        assert!(health.ready().unwrap_err().contains("credentials"));
        health.credentials_obtained(0, None);
        assert!(health.ready().is_ok(), "credentials that do not expire");

        // A lost assignment: out of the group until the next one.
        health.left();
        assert!(health.ready().unwrap_err().contains("consumer group"));
        health.joined();
        assert!(health.ready().is_ok());

        // Shutdown: not ready (an assignment during the close changes nothing), and the long
        // waits of the drain are not a wedge.
        health.stopping();
        health.joined();
        assert!(health.ready().unwrap_err().contains("consumer group"));
        std::thread::sleep(Duration::from_millis(400));
        assert!(health.alive().is_ok());
    }
}
