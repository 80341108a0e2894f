//! The send rate shared by the lanes of one destination, adapted to what it accepts.
//!
//! A Kinesis shard takes 1,000 records/s and throttles the rest. Per-lane backoff alone lets eight
//! lanes each resend a few hundred entries every few hundred milliseconds, most of them throttled
//! again. So the lanes of a stream share one pace, judged over short windows:
//!
//! - more than half of the entries sent in a window throttled: the stream is being hammered. The
//!   rate is cut to 1.5 × what the stream accepted in that window (less than ¾ of what was sent),
//!   which leaves about a third of the entries throttled at a hard capacity limit;
//! - under a fifth throttled: the rate grows by half an entry/s per accepted entry (about +50% per
//!   second while the limit is what holds doka back), and is lifted entirely once far above need;
//! - in between: unchanged.
//!
//! Throttling that does not depend on the rate (one hot shard among many, a share of entries
//! failing whatever doka does) stays under the "half" line and leaves the pace alone: cutting the
//! whole stream's rate would not help and, repeated, would starve it. Those entries are retried by
//! their lane's own backoff. Per-shard pacing is the full answer and needs the shard map.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

/// How long a window is at least; a decision is made at its end.
const WINDOW: Duration = Duration::from_millis(100);
/// Above this share of throttled entries the rate is cut.
const HAMMERING: f64 = 0.5;
/// Below this share the rate grows.
const CLEAN: f64 = 0.2;
/// After a cut, the rate is this many times what the stream accepted.
const CUT_TO_ACCEPTED: f64 = 1.5;
/// Entries/s added to the rate per entry accepted in a clean window.
const INCREASE_PER_ENTRY: f64 = 0.5;
/// Above this the pace no longer limits anything.
const UNLIMITED_ABOVE: f64 = 10_000_000.0;

#[derive(Debug)]
pub struct Pace {
    enabled: bool,
    min_rate: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Entries per second; `None` = not limited.
    rate: Option<f64>,
    /// When the next request may leave.
    next_free: Instant,
    window_start: Instant,
    window_accepted: u64,
    window_throttled: u64,
}

impl Pace {
    /// `min_rate` (entries/s) is the floor the rate never goes below.
    pub fn new(enabled: bool, min_rate: f64) -> Self {
        let now = Instant::now();
        Self {
            enabled,
            min_rate: min_rate.max(1.0),
            state: Mutex::new(State {
                rate: None,
                next_free: now,
                window_start: now,
                window_accepted: 0,
                window_throttled: 0,
            }),
        }
    }

    /// The current limit in entries/s, if any.
    pub fn rate(&self) -> Option<f64> {
        self.state.lock().unwrap().rate
    }

    /// Waits for the slot of a request of `entries` entries.
    pub async fn admit(&self, entries: usize) {
        let wait = self.reserve(entries, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Books the next slot and says how long to wait for it.
    fn reserve(&self, entries: usize, now: Instant) -> Duration {
        let mut s = self.state.lock().unwrap();
        let Some(rate) = s.rate else {
            return Duration::ZERO;
        };
        let start = s.next_free.max(now);
        s.next_free = start + Duration::from_secs_f64(entries as f64 / rate);
        start - now
    }

    /// Reports how a request went: `accepted` entries written, `throttled` refused for throughput
    /// (a whole request throttled or timed out counts all its entries).
    pub fn record(&self, accepted: usize, throttled: usize) {
        self.record_at(accepted, throttled, Instant::now());
    }

    fn record_at(&self, accepted: usize, throttled: usize, now: Instant) {
        if !self.enabled {
            return;
        }
        let mut s = self.state.lock().unwrap();
        s.window_accepted += accepted as u64;
        s.window_throttled += throttled as u64;
        let window = now.saturating_duration_since(s.window_start);
        let sent = s.window_accepted + s.window_throttled;
        if window < WINDOW || sent == 0 {
            return;
        }
        let share = s.window_throttled as f64 / sent as f64;
        if share > HAMMERING {
            let accepted_rate = s.window_accepted as f64 / window.as_secs_f64();
            let cut = (accepted_rate * CUT_TO_ACCEPTED).max(self.min_rate);
            let rate = s.rate.map_or(cut, |r| r.min(cut));
            if s.rate.is_none() {
                info!(
                    "the stream throttles {:.0}% of what doka sends: sending at most {rate:.0} records/s, adapting",
                    share * 100.0
                );
            }
            s.rate = Some(rate);
        } else if share < CLEAN
            && let Some(rate) = s.rate
        {
            let grown = rate + s.window_accepted as f64 * INCREASE_PER_ENTRY;
            s.rate = (grown < UNLIMITED_ABOVE).then_some(grown);
            if s.rate.is_none() {
                info!("no throttling for a while: send rate no longer limited");
            }
        }
        s.window_start = now;
        s.window_accepted = 0;
        s.window_throttled = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_until_most_of_a_window_is_throttled() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        // 30% throttled: not hammering, nothing changes.
        pace.record_at(700, 300, t0 + WINDOW);
        assert_eq!(pace.rate(), None);
        // 80% throttled over a second: cut to 1.5 × the 200/s accepted.
        pace.record_at(200, 800, t0 + WINDOW + Duration::from_secs(1));
        let rate = pace.rate().expect("limited after hammering");
        assert!((rate - 300.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn decisions_wait_for_the_end_of_a_window() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        pace.record_at(0, 500, t0 + WINDOW / 2);
        assert_eq!(pace.rate(), None);
        pace.record_at(0, 500, t0 + WINDOW);
        assert_eq!(pace.rate(), Some(10.0), "nothing accepted: the floor");
    }

    #[test]
    fn requests_are_spaced_at_the_rate() {
        let pace = Pace::new(true, 100.0);
        let now = Instant::now();
        pace.record_at(0, 10, now + WINDOW); // floor: 100 entries/s
        assert_eq!(pace.rate(), Some(100.0));
        assert_eq!(pace.reserve(50, now), Duration::ZERO);
        assert_eq!(pace.reserve(50, now), Duration::from_millis(500));
        assert_eq!(pace.reserve(10, now), Duration::from_millis(1000));
    }

    #[test]
    fn grows_in_clean_windows_and_is_lifted_when_large() {
        let pace = Pace::new(true, 50.0);
        let t0 = Instant::now();
        pace.record_at(0, 100, t0 + WINDOW);
        assert_eq!(pace.rate(), Some(50.0));
        // 40% throttled: in between, unchanged.
        pace.record_at(60, 40, t0 + WINDOW * 2);
        assert_eq!(pace.rate(), Some(50.0));
        pace.record_at(100, 0, t0 + WINDOW * 3);
        assert_eq!(pace.rate(), Some(100.0));
        pace.record_at(usize::MAX / 4, 0, t0 + WINDOW * 4);
        assert_eq!(pace.rate(), None);
    }

    #[test]
    fn disabled_never_limits() {
        let pace = Pace::new(false, 50.0);
        pace.record_at(0, 500, Instant::now() + WINDOW);
        assert_eq!(pace.rate(), None);
    }
}
