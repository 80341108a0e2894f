//! Crash safety: doka is SIGKILLed at random moments while it delivers, restarted each time, and
//! at the end every record is in the stream. Records are counted by the unique id in each value.
//!
//! `make test` runs it with 100,000 records and 5 kills after the other tests (scripts/test.sh);
//! a bare `cargo nextest run` uses 6,000. `DOKA_CRASH_RECORDS` and `DOKA_CRASH_KILLS` set both.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

/// What one kill left: what was in flight, what the stream had accepted, the last commit.
struct Crash {
    /// Entries in requests sent and not answered at the kill (the floor: Kinesis has no
    /// idempotent producer, so these may be in the stream and are sent again).
    in_flight: u64,
    /// How many entries the stream had accepted before the kill (a prefix of the proxy's list).
    acked: usize,
    commit: LastCommit,
}

/// What a crash cost, in records.
struct Report {
    in_flight: u64,
    /// Accepted before the kill, above the committed offsets and named in the metadata.
    named: u64,
    /// Accepted before the kill and not named by the last commit (offset or metadata).
    since_commit: u64,
    /// Accepted before the kill and accepted again by the next run.
    resent: u64,
    /// Of those, ones the last commit named as delivered (must be none).
    resent_named: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in flight {}, delivered above the committed offset and named in the metadata {}, \
             delivered since the last commit {}, re-sent {} (of them named {})",
            self.in_flight, self.named, self.since_commit, self.resent, self.resent_named
        )
    }
}

impl Crash {
    /// `acked`: every accepted entry's id in order; the next run's are `acked[self.acked..next]`.
    fn report(&self, acked: &[usize], next: usize, placements: &[Placement]) -> Report {
        let before: std::collections::HashSet<usize> =
            acked[..self.acked].iter().copied().collect();
        let mut report = Report {
            in_flight: self.in_flight,
            named: 0,
            since_commit: 0,
            resent: 0,
            resent_named: 0,
        };
        for &id in &before {
            let p = &placements[id];
            if !covered(&self.commit, p) {
                report.since_commit += 1;
            } else if self
                .commit
                .get(&p.partition)
                .is_some_and(|(o, _)| p.offset >= *o)
            {
                report.named += 1;
            }
        }
        let again: std::collections::HashSet<usize> = acked[self.acked..next]
            .iter()
            .copied()
            .filter(|id| before.contains(id))
            .collect();
        report.resent = again.len() as u64;
        report.resent_named = again
            .iter()
            .filter(|&&id| covered(&self.commit, &placements[id]))
            .count() as u64;
        report
    }
}

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
    let bootstrap = world.kafka.bootstrap();
    let messages = keyed_messages(0..n, 1000);
    let placements = world.produce(&messages);

    let mut killed_at = Vec::new();
    let mut rss_kib = Vec::new();
    let mut crashes = Vec::new();
    for k in 0..kills {
        let doka = Doka::start(&yaml, &env);
        // Counted in entries the stream accepted: a kill finds some delivered, some in flight.
        let start = proxy.counters.acked() as u64;
        // Kill after a random share (10%–60%) of a fair slice of the remaining work.
        let slice = (n / (kills + 1)) as u64;
        let target = start + slice / 10 + (rand::random::<u64>() % (slice / 2).max(1));
        let what = format!("run {k} to reach entry {target}");
        let every = Duration::from_millis(20);
        eventually_async(&what, Duration::from_secs(180), every, async || {
            (proxy.counters.acked() as u64 >= target)
                .then_some(())
                .ok_or_else(|| doka.log_text())
        })
        .await;
        // Then a random moment more, so that the kill is not tied to an answer just received.
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 400)).await;
        rss_kib.push(peak_rss_kib(doka.pid()));
        let before = proxy.counters.open_entries.load(Ordering::SeqCst);
        doka.kill();
        // A request sent between the look and the kill is still open right after it.
        let in_flight = before.max(proxy.counters.open_entries.load(Ordering::SeqCst));
        let acked = proxy.counters.acked_ids.lock().unwrap().clone();
        crashes.push(Crash {
            in_flight,
            acked: acked.len(),
            commit: last_commit(&bootstrap, &world.group, &world.topic, world.partitions),
        });
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
    // Every record is in the stream, maybe from an earlier run: the final run is done when it
    // has committed every partition to its end (what it re-sends may still be on its way).
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(600))
        .await;
    doka.stop();
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    let acked = proxy.counters.acked_ids.lock().unwrap().clone();
    let mut allowed = 0;
    for (k, crash) in crashes.iter().enumerate() {
        let report = crash.report(
            &acked,
            crashes.get(k + 1).map_or(acked.len(), |c| c.acked),
            &placements,
        );
        println!("crash {k}: {report}");
        // The goal: a crash re-sends at most what was in flight at the kill and what was
        // delivered after the last commit; what the last commit's metadata names, never.
        assert_eq!(report.resent_named, 0, "crash {k}: {report}");
        assert!(
            report.resent <= report.in_flight + report.since_commit,
            "crash {k}: {report}"
        );
        allowed += report.in_flight + report.since_commit;
    }
    assert!(
        duplicates as u64 <= allowed,
        "{duplicates} copies in the stream, more than in flight and delivered since the commits ({allowed})"
    );
    println!(
        "crash: sent {n} received {} duplicated {duplicates} lost 0 after {kills} SIGKILLs at entries {killed_at:?}; peak RSS per run {rss_kib:?} KiB",
        records.len()
    );
    world.finish().await;
}
