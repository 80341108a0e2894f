//! librdkafka's own error and warning lines, each logged once while the trouble lasts.
//!
//! A broker that keeps refusing makes librdkafka say the same thing again at every reconnect
//! (several times a second at first). Its own suppression of identical errors does not help: a
//! failed TLS handshake yields two different lines per attempt, and every line ends in a varying
//! "(after 2ms in state SSL_HANDSHAKE)".

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A trouble is over once librdkafka has said nothing for this long: it reconnects at least every
/// 10 s (`reconnect.backoff.max.ms`) and repeats an identical error at least every 30 s while
/// the trouble lasts. Lines are told again after that.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// At most this many distinct lines are remembered (then all are forgotten, and told again).
const REMEMBER_AT_MOST: usize = 256;

/// The lines already logged.
#[derive(Default)]
pub(super) struct Repeats {
    seen: HashSet<String>,
    last: Option<Instant>,
}

impl Repeats {
    /// Whether `line` is new (to be logged) rather than said before while the trouble lasts.
    pub(super) fn first_time(&mut self, line: &str, now: Instant) -> bool {
        let quiet = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= FORGET_AFTER);
        if quiet || self.seen.len() >= REMEMBER_AT_MOST {
            self.seen.clear();
        }
        self.last = Some(now);
        self.seen.insert(without_timing(line).to_owned())
    }
}

/// `line` without the tail librdkafka appends to a broker's failure, "(after 2ms in state
/// CONNECT)" or "(after 0ms in state CONNECT, 1 identical error(s) suppressed)", which differs
/// from one attempt to the next.
fn without_timing(line: &str) -> &str {
    match line.rfind(" (after ") {
        Some(at) if line[at..].contains("ms in state ") && line.ends_with(')') => &line[..at],
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDSHAKE: &str = "ssl://127.0.0.1:4611/bootstrap: SSL handshake failed: \
        error:0A000086:SSL routines::certificate verify failed";

    #[test]
    fn a_line_differing_only_in_its_timing_is_said_once() {
        let mut repeats = Repeats::default();
        let now = Instant::now();
        assert!(repeats.first_time(
            &format!("{HANDSHAKE} (after 2ms in state SSL_HANDSHAKE)"),
            now
        ));
        assert!(!repeats.first_time(
            &format!(
                "{HANDSHAKE} (after 5ms in state SSL_HANDSHAKE, 1 identical error(s) suppressed)"
            ),
            now + Duration::from_secs(1)
        ));
        // Another line is told, once.
        let other = "ssl://127.0.0.1:4611/bootstrap: error:0A000086:SSL routines::certificate \
                     verify failed (after 2ms in state SSL_HANDSHAKE)";
        assert!(repeats.first_time(other, now + Duration::from_secs(2)));
        assert!(!repeats.first_time(other, now + Duration::from_secs(3)));
    }

    #[test]
    fn lines_are_told_again_once_librdkafka_was_quiet_for_a_while() {
        let mut repeats = Repeats::default();
        let now = Instant::now();
        assert!(repeats.first_time(HANDSHAKE, now));
        // Still coming every 10 s: still the same trouble.
        for i in 1..=10 {
            assert!(!repeats.first_time(HANDSHAKE, now + Duration::from_secs(10 * i)));
        }
        let later = now + Duration::from_secs(100) + FORGET_AFTER;
        assert!(repeats.first_time(HANDSHAKE, later));
    }

    #[test]
    fn only_librdkafkas_timing_tail_is_dropped() {
        assert_eq!(
            without_timing("1/1 brokers are down (after a while)"),
            "1/1 brokers are down (after a while)"
        );
        assert_eq!(
            without_timing("b: Connect failed (after 0ms in state CONNECT)"),
            "b: Connect failed"
        );
    }
}
