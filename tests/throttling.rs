//! Throttling, failing and hanging requests: everything is delivered, retries back off, and the
//! send rate adapts to what the stream accepts instead of hammering it.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

/// What one run against a stream of limited capacity cost.
#[derive(Debug)]
struct Run {
    requests: u64,
    entries_sent: u64,
    entries_throttled: u64,
    requests_failed: u64,
    requests_timed_out: u64,
    duplicates: usize,
    seconds: f64,
}

/// `records` records through a proxy that takes `capacity` entries/s (like a shard), fails every
/// 10th request with 500/503 and lets every 15th hang past doka's request timeout (4 s: kinesis-mock itself
/// can take over a second for a large request on this machine).
async fn run_against_capacity(records: usize, capacity: f64, adaptive: bool) -> Run {
    let world = World::new(4, 2).await;
    let proxy = proxy::FaultProxy::start(
        &world.ep.kinesis,
        proxy::Faults {
            capacity_per_sec: Some(capacity),
            error_every: Some(10),
            timeout_every: Some(15),
            hang: Duration::from_secs(8),
            ..Default::default()
        },
    )
    .await;
    let messages = keyed_messages(0..records, 500);
    let placements = world.produce(&messages);
    let started = Instant::now();
    let mut doka = Doka::start(
        &world.yaml(Some(&proxy.url)),
        &[
            (
                "DOKA_RETRY__ADAPTIVE_RATE",
                if adaptive { "true" } else { "false" },
            ),
            ("DOKA_KINESIS__REQUEST_TIMEOUT_MS", "4000"),
            // kinesis-mock slows down badly under several 500-entry requests at once.
            ("DOKA_BATCH__MAX_RECORDS", "100"),
            ("DOKA_PIPELINE__LANES", "4"),
        ],
    );
    let stream = world.wait_for_all(records, Duration::from_secs(240)).await;
    let seconds = started.elapsed().as_secs_f64();
    if adaptive {
        doka.wait_for_log("the stream throttles", 1, Duration::from_secs(5));
    }
    let log = doka.stop();
    let duplicates = world.assert_delivered(&stream, &placements, Copies::AtLeastOnce);
    let c = &proxy.counters;
    let run = Run {
        requests: c.put_records_requests.load(Ordering::Relaxed),
        entries_sent: c.entries_seen.load(Ordering::Relaxed),
        entries_throttled: c.entries_rejected.load(Ordering::Relaxed),
        requests_failed: c.requests_failed.load(Ordering::Relaxed),
        requests_timed_out: c.requests_timed_out.load(Ordering::Relaxed),
        duplicates,
        seconds,
    };
    assert!(
        run.requests_failed > 0 && run.requests_timed_out > 0 && run.entries_throttled > 0,
        "faults were injected: {run:?}"
    );
    assert_eq!(
        summary_count(&log, "requests"),
        run.requests,
        "doka's summary reports every request it sent"
    );
    // Its throttled and retried counters (the metrics' registry) saw the throttling: every
    // entry it counts was refused by the proxy (a refused entry in a request doka gave up
    // waiting for is not counted), and each was sent again.
    let throttled = summary_count(&log, "throttled_entries");
    assert!(
        throttled > 0 && throttled <= run.entries_throttled,
        "doka counted {throttled} throttled entries, the proxy refused {}",
        run.entries_throttled
    );
    assert!(summary_count(&log, "retried_entries") >= throttled);
    world.finish().await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_capacity_is_fed_at_the_rate_it_accepts() {
    const N: usize = 3000;
    // Well below kinesis-mock's own pace on a busy machine, so the limit is the proxy's.
    const CAPACITY: f64 = 300.0;
    let run = run_against_capacity(N, CAPACITY, true).await;
    println!(
        "sent {N} delivered {} lost 0 duplicated {}: {run:?}",
        N + run.duplicates,
        run.duplicates
    );
    assert!(run.entries_sent >= N as u64);

    // The run cannot be faster than the stream allows, so the stream did limit it...
    assert!(run.seconds >= N as f64 / CAPACITY * 0.8);
    // ...and doka followed: at most one throttled entry per record, where a sender that does
    // not adapt re-sends each record several times over (compared in `pipeline::lane`'s
    // simulation test against the same kind of capacity).
    assert!(
        run.entries_throttled <= N as u64,
        "too many entries sent into throttling: {run:?}"
    );
    // No hot loop: requests stay within a small multiple of what the records need.
    let needed = N.div_ceil(100) as u64;
    assert!(run.requests <= needed * 20, "too many requests: {run:?}");
}
