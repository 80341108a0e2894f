//! Crash safety: doka is SIGKILLed at random moments while it delivers, restarted each time, and
//! at the end every record is in the stream. Records are counted by the unique id in each value.
//!
//! `make test` runs it with 100,000 records and 5 kills after the other tests (scripts/test.sh);
//! a bare `cargo nextest run` uses 6,000. `DOKA_CRASH_RECORDS` and `DOKA_CRASH_KILLS` set both.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let n = env_usize("DOKA_CRASH_RECORDS", 6_000);
    let kills = env_usize("DOKA_CRASH_KILLS", 5);
    // kinesis-mock's PutRecords slows down as a shard fills (measured: 14 s per 500 entries at
    // 20,000 records in one shard); 64 shards keep 100,000 records within minutes.
    let world = World::new(4, 64).await;
    // A pass-through proxy: its counter of accepted entries tells how far a run got, cheaply.
    let proxy = proxy::FaultProxy::start(&world.ep.kinesis, proxy::Faults::default()).await;
    let yaml = world.yaml(Some(&proxy.url));
    // kinesis-mock answers one request at a time; eight 500-entry requests queued behind each
    // other can pass doka's request timeout on a busy machine, so keep its queue short.
    let env = [
        ("DOKA_PIPELINE__LANES", "4"),
        ("DOKA_BATCH__MAX_RECORDS", "250"),
    ];
    let messages = keyed_messages(0..n, 1000);
    let placements = world.produce(&messages);

    let mut killed_at = Vec::new();
    let mut rss_kib = Vec::new();
    for k in 0..kills {
        let doka = Doka::start(&yaml, &env);
        let start = proxy.counters.entries_seen.load(Ordering::Relaxed);
        // Kill after a random share (10%–60%) of a fair slice of the remaining work.
        let slice = (n / (kills + 1)) as u64;
        let target = start + slice / 10 + (rand::random::<u64>() % (slice / 2).max(1));
        let what = format!("run {k} to reach entry {target}");
        let every = Duration::from_millis(20);
        eventually_async(&what, Duration::from_secs(180), every, async || {
            let seen = proxy.counters.entries_seen.load(Ordering::Relaxed);
            (seen >= target)
                .then_some(())
                .ok_or_else(|| doka.log_text())
        })
        .await;
        rss_kib.push(peak_rss_kib(doka.pid()));
        doka.kill();
        killed_at.push(proxy.counters.entries_seen.load(Ordering::Relaxed));
    }

    let doka = Doka::start(&yaml, &env);
    // Reading 100,000 records back is slow: wait until the proxy has seen every record at least
    // once before reading the stream.
    let what = "the final run to send every record";
    let every = Duration::from_millis(200);
    eventually_async(what, Duration::from_secs(600), every, async || {
        let seen = proxy.counters.entries_seen.load(Ordering::Relaxed);
        (seen >= n as u64)
            .then_some(())
            .ok_or_else(|| doka.log_text())
    })
    .await;
    let records = world.wait_for_all(n, Duration::from_secs(600)).await;
    doka.stop();
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    println!(
        "crash: sent {n} received {} duplicated {duplicates} lost 0 after {kills} SIGKILLs at entries {killed_at:?}; peak RSS per run {rss_kib:?} KiB",
        records.len()
    );
    world.finish().await;
}
