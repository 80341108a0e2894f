//! The send rate shared by the lanes of one destination, adapted to what it accepts.
//!
//! A Kinesis shard takes 1,000 records/s and throttles the rest. Per-lane backoff alone lets eight
//! lanes each resend a few hundred entries every few hundred milliseconds, most of them throttled
//! again. So the lanes of a stream share one pace, judged over windows of at least 100 ms and 50
//! entries:
//!
//! - more than half of the entries sent in a window throttled (or in requests that timed out):
//!   the stream is being hammered. The rate is cut to 1.1 × what the stream accepted, but never
//!   below a quarter of what was sent — one bad window cannot starve the stream;
//! - while limited, between a tenth and a half throttled: the rate is trimmed by 15% — as long as
//!   trimming helps, i.e. the share throttled fell since the last trim. When it did not, the
//!   throttling does not depend on the rate (one hot shard among many, a share of entries failing
//!   whatever doka does): cutting the whole stream would not help, those entries are left to
//!   their lane's backoff and the rate grows slowly (a tenth of an entry/s per accepted entry);
//! - under a tenth throttled: the rate grows by half an entry/s per accepted entry (about +50% per
//!   second while the limit is what holds doka back), by a tenth above 2%. It is lifted entirely
//!   once far above need.
//!
//! Offered twice what the shards take, this keeps about a fifth of the entries sent throttled
//! (docs/PERFORMANCE.md); the former rule (cut to 1.5 ×, no trimming) wasted four in ten.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

/// How long a window is at least; a decision is made at its end.
const WINDOW: Duration = Duration::from_millis(100);
/// Above this share of throttled entries the rate is cut.
const HAMMERING: f64 = 0.5;
/// Above this share (and up to [`HAMMERING`]) a limited rate is trimmed while that helps.
const TARGET: f64 = 0.1;
/// Below this share the rate grows fast, above it (up to [`TARGET`]) slowly.
const CLEAN: f64 = 0.02;
/// A trim multiplies the rate by this.
const TRIM: f64 = 0.85;
/// A window decides nothing before this many entries were sent in it.
const MIN_SAMPLE: u64 = 50;
/// A window with at least this many entries, most of them throttled, ends early...
const FAST_SAMPLE: u64 = 1000;
/// ...once it is this long.
const FAST_WINDOW: Duration = Duration::from_millis(10);
/// A window this old with fewer than MIN_SAMPLE entries starts afresh.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// The most time one request books.
const MAX_BOOKING: Duration = Duration::from_secs(1);
/// After a cut, the rate is this many times what the stream accepted...
const CUT_TO_ACCEPTED: f64 = 1.1;
/// ...but at least this share of what was sent.
const CUT_AT_MOST_TO: f64 = 0.25;
/// Entries/s added to the rate per entry accepted in a clean window, and in a middling one.
const INCREASE_PER_ENTRY: f64 = 0.5;
const SLOW_INCREASE_PER_ENTRY: f64 = 0.1;
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
    /// The share throttled in the window that last trimmed the rate: a trim is repeated only
    /// while the share keeps falling.
    trimmed_at: Option<f64>,
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
                trimmed_at: None,
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
        // One request books at most MAX_BOOKING: an aggregated batch of 30,000 records at a low
        // rate would otherwise push every later request back by minutes, fixed before the rate
        // can recover.
        s.next_free = start + Duration::from_secs_f64(entries as f64 / rate).min(MAX_BOOKING);
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
        // After an idle spell, a window holding a handful of old entries would spread a new burst
        // over the whole spell: start the window afresh.
        if now.saturating_duration_since(s.window_start) > IDLE_WINDOW
            && s.window_accepted + s.window_throttled < MIN_SAMPLE
        {
            s.window_start = now;
            s.window_accepted = 0;
            s.window_throttled = 0;
        }
        s.window_accepted += accepted as u64;
        s.window_throttled += throttled as u64;
        let window = now.saturating_duration_since(s.window_start);
        let sent = s.window_accepted + s.window_throttled;
        let share = s.window_throttled as f64 / sent.max(1) as f64;
        // A large, mostly throttled sample is judged at once: at full speed a whole window can
        // send tens of thousands of entries into throttling before it ends.
        let hammered_now = sent >= FAST_SAMPLE && window >= FAST_WINDOW && share > HAMMERING;
        if !hammered_now && (window < WINDOW || sent < MIN_SAMPLE) {
            return;
        }
        if share > HAMMERING {
            let accepted_rate = s.window_accepted as f64 / window.as_secs_f64();
            let sent_rate = sent as f64 / window.as_secs_f64();
            let cut = (accepted_rate * CUT_TO_ACCEPTED)
                .max(sent_rate * CUT_AT_MOST_TO)
                .max(self.min_rate);
            let rate = s.rate.map_or(cut, |r| r.min(cut));
            if s.rate.is_none() {
                info!(
                    "the stream throttles {:.0}% of what doka sends: sending at most {rate:.0} records/s, adapting",
                    share * 100.0
                );
            }
            s.rate = Some(rate);
            s.trimmed_at = None;
        } else if let Some(rate) = s.rate {
            let trim = share > TARGET && s.trimmed_at.is_none_or(|before| share < before);
            let grown = if trim {
                s.trimmed_at = Some(share);
                (rate * TRIM).max(self.min_rate)
            } else {
                if share <= TARGET {
                    s.trimmed_at = None;
                }
                let per_entry = if share < CLEAN {
                    INCREASE_PER_ENTRY
                } else {
                    SLOW_INCREASE_PER_ENTRY
                };
                rate + s.window_accepted as f64 * per_entry
            };
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

    const SECOND: Duration = Duration::from_secs(1);

    /// Windows are measured from when the pace was made, a hair before the test's `t0`.
    #[track_caller]
    fn assert_rate(pace: &Pace, expected: f64) {
        let rate = pace.rate().expect("limited");
        assert!(
            (rate - expected).abs() <= expected * 1e-3,
            "{rate} != {expected}"
        );
    }

    #[test]
    fn unlimited_until_most_of_a_window_is_throttled() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        assert_eq!(pace.reserve(500, t0), Duration::ZERO);
        // 30% throttled: not hammering, nothing changes.
        pace.record_at(700, 300, t0 + SECOND);
        assert_eq!(pace.rate(), None);
        // 71% of 1,400/s throttled: cut to 1.1 × the 400/s accepted.
        pace.record_at(400, 1000, t0 + SECOND * 2);
        assert_rate(&pace, 440.0);
        // Nothing accepted out of 2,000/s: cut to a quarter of what was sent, not to nothing.
        pace.record_at(0, 2000, t0 + SECOND * 3);
        assert_rate(&pace, 440.0);
        pace.record_at(0, 600, t0 + SECOND * 4);
        assert_rate(&pace, 150.0);
    }

    #[test]
    fn a_large_mostly_throttled_sample_is_cut_at_once() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        pace.record_at(100, 1900, t0 + Duration::from_millis(20));
        // 1.1 × 5,000/s accepted, or a quarter of 100,000/s sent.
        assert_rate(&pace, 25_000.0);
    }

    #[test]
    fn decisions_wait_for_a_full_window() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        pace.record_at(0, 500, t0 + WINDOW / 2);
        assert_eq!(pace.rate(), None, "too short");
        pace.record_at(0, 20, t0 + SECOND);
        assert_rate(&pace, 130.0); // a quarter of the 520/s sent
        pace.record_at(0, 20, t0 + SECOND * 2);
        assert_rate(&pace, 130.0); // 20 entries are too few to judge
        pace.record_at(0, 40, t0 + SECOND * 3);
        assert_rate(&pace, 10.0); // 60 entries in 2 s: a quarter is under the floor
    }

    #[test]
    fn nothing_accepted_quarters_the_rate_down_to_the_floor() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        let mut sent = 1000.0;
        for i in 1..=12 {
            // Sending follows the rate; each window lasts a second.
            pace.record_at(0, sent as usize, t0 + SECOND * i);
            sent = pace.rate().unwrap().max(MIN_SAMPLE as f64);
        }
        assert_rate(&pace, 12.5); // a quarter of the 50 entries a window needs
    }

    #[test]
    fn a_burst_after_an_idle_spell_is_judged_on_its_own() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        pace.record_at(5, 0, t0 + SECOND); // too few to judge
        // Ten minutes later: 2,000 entries in 50 ms, most throttled.
        pace.record_at(600, 1400, t0 + SECOND * 600);
        pace.record_at(0, 0, t0 + SECOND * 600 + Duration::from_millis(50));
        // Judged over 50 ms, not ten minutes: 1.1 × the 12,000/s accepted, not the floor.
        assert_rate(&pace, 13_200.0);
    }

    #[test]
    fn one_request_books_at_most_a_second() {
        let pace = Pace::new(true, 10.0);
        let now = Instant::now();
        pace.record_at(0, 60, now + SECOND);
        assert_rate(&pace, 15.0);
        assert_eq!(pace.reserve(30_000, now), Duration::ZERO);
        assert_eq!(pace.reserve(30_000, now), SECOND);
    }

    #[test]
    fn requests_are_spaced_at_the_rate() {
        let pace = Pace::new(true, 100.0);
        let now = Instant::now();
        pace.record_at(0, 50, now + SECOND); // a quarter of 50/s is under the floor
        assert_rate(&pace, 100.0);
        assert_eq!(pace.reserve(50, now), Duration::ZERO);
        assert_eq!(pace.reserve(50, now), Duration::from_millis(500));
        assert_eq!(pace.reserve(10, now), Duration::from_millis(1000));
    }

    #[test]
    fn trims_while_it_helps_grows_when_clean_and_is_lifted_when_large() {
        let pace = Pace::new(true, 10.0);
        let t0 = Instant::now();
        pace.record_at(0, 400, t0 + SECOND);
        assert_rate(&pace, 100.0); // a quarter of the 400/s sent
        pace.record_at(60, 40, t0 + SECOND * 2);
        assert_rate(&pace, 85.0); // 40% throttled while limited: trimmed
        pace.record_at(60, 40, t0 + SECOND * 3);
        assert_rate(&pace, 91.0); // the trim did not lower the share: grow slowly instead
        pace.record_at(95, 5, t0 + SECOND * 4);
        assert_rate(&pace, 100.5); // 5%: under the target, slowly
        pace.record_at(100, 0, t0 + SECOND * 5);
        assert_rate(&pace, 150.5); // clean: +0.5 per accepted entry
        pace.record_at(100, 50, t0 + SECOND * 6);
        assert_rate(&pace, 150.5 * 0.85); // a third throttled after a clean spell: trimmed again
        pace.record_at(usize::MAX / 4, 0, t0 + SECOND * 7);
        assert_eq!(pace.rate(), None);
    }

    #[test]
    fn disabled_never_limits() {
        let pace = Pace::new(false, 50.0);
        pace.record_at(0, 500, Instant::now() + SECOND);
        assert_eq!(pace.rate(), None);
    }
}
