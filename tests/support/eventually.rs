//! Waiting for something observable: one loop for every "look again until it holds, or fail
//! after a timeout" in the tests.

use std::time::{Duration, Instant};

/// What one look found: `Some`/`Ok` ends the wait with its value; `None` or `Err(seen)` means
/// not yet, `seen` saying what was there instead (shown when the wait fails).
pub trait Probe {
    type Value;
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Probe for Result<T, String> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// How often [`eventually`] looks: its probes read local things (a log file, a counter, a child
/// process, a loopback HTTP endpoint), cheap enough to ask ten times a second.
const EVERY: Duration = Duration::from_millis(100);

/// Calls `probe` until it settles and returns its value; panics with `what` (phrased to follow
/// "waited … for") and what was last seen when `timeout` passes first.
pub fn eventually<P: Probe>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> P,
) -> P::Value {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().settled() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => timed_out(what, timeout, seen),
            Err(_) => std::thread::sleep(EVERY),
        }
    }
}

/// [`eventually`] for probes that await (reading the emulators, mostly), looking every `every`:
/// how often a stream is read back is load on kinesis-mock, so each wait says it.
pub async fn eventually_async<P: Probe>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> P,
) -> P::Value {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await.settled() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => timed_out(what, timeout, seen),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

fn timed_out(what: &str, timeout: Duration, seen: Option<String>) -> ! {
    match seen {
        Some(seen) => panic!("waited {timeout:?} for {what}; last seen: {seen}"),
        None => panic!("waited {timeout:?} for {what}"),
    }
}
