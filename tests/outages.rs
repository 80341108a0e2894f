//! Kinesis unreachable or refusing doka: doka holds within its memory bound, commits nothing
//! undelivered, says what is wrong, and resumes by itself.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_refusing_connections_for_30s_holds_doka_within_its_bound() {
    const N: usize = 4000;
    const BOUND: u64 = 500;
    const OUTAGE: Duration = Duration::from_secs(30);
    let world = World::new(4, 2).await;
    let proxy = proxy::FaultProxy::start(&world.ep.kinesis, proxy::Faults::default()).await;
    let messages = keyed_messages(0..N, 200);
    let placements = world.produce(&messages);
    let bound = BOUND.to_string();
    let mut doka = Doka::start(
        &world.yaml(Some(&proxy.url)),
        &[
            ("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", bound.as_str()),
            ("DOKA_BATCH__MAX_RECORDS", "50"),
            ("DOKA_PIPELINE__LANES", "4"),
            ("DOKA_RETRY__MAX_BACKOFF_MS", "5000"),
        ],
    );
    wait_for_records(&world.b, &world.stream, 300, Duration::from_secs(60)).await;

    proxy.refuse_connections();
    let outage_started = Instant::now();
    doka.wait_for_log("in-flight bound reached: fetching paused", 1, OUTAGE);
    // Throughout the outage: nothing undelivered is committed.
    let mut checks = 0;
    while outage_started.elapsed() < OUTAGE {
        assert_committed_were_delivered(&world, 4, &placements).await;
        checks += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let in_stream_during = read_stream(&world.b, &world.stream).await.len();
    let rss_during_kib = peak_rss_kib(doka.pid());
    proxy.accept_connections();

    let resumed = Instant::now();
    let records = world.wait_for_all(N, Duration::from_secs(180)).await;
    let caught_up = resumed.elapsed();
    let peak_kib = peak_rss_kib(doka.pid());
    let log = doka.stop();
    assert!(
        log.contains("Connection refused") || log.contains("connection refused"),
        "the log says what went wrong:\n{log}"
    );
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    assert!(
        in_stream_during < N,
        "the outage must happen mid-run ({in_stream_during} of {N} arrived before it ended)"
    );
    // No hot loop while refused: each lane backs off up to retry.max_backoff_ms (5 s here, a
    // random pause of 0.5-5 s at the cap): about 20 attempts per lane in 30 s.
    let failed_requests = summary_count(&log, "failed_requests");
    assert!(
        failed_requests <= 4 * 40,
        "{failed_requests} failed requests in a 30 s outage with 4 lanes"
    );
    println!(
        "refused {OUTAGE:?}: {checks} commit checks, {in_stream_during} in the stream when it ended, \
         {failed_requests} failed requests, peak RSS {rss_during_kib} KiB during / {peak_kib} KiB overall, \
         caught up {caught_up:?} after; sent {N} received {} duplicated {duplicates} lost 0",
        records.len()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_reported_retried_and_nothing_committed_until_it_is_granted() {
    const N: usize = 500;
    let world = World::new(2, 1).await;
    let proxy = proxy::FaultProxy::start(
        &world.ep.kinesis,
        proxy::Faults {
            deny_with: Some("AccessDeniedException"),
            ..Default::default()
        },
    )
    .await;
    let placements = world.produce(&keyed_messages(0..N, 20));
    let mut doka = Doka::start(&world.yaml(Some(&proxy.url)), &[]);
    // Reported, and retried rather than given up on.
    doka.wait_for_log("was denied", 3, Duration::from_secs(60));
    let denied = proxy
        .counters
        .requests_denied
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(world.committed(2).values().all(|&o| o <= 0));
    assert!(read_stream(&world.b, &world.stream).await.is_empty());

    // The permission is granted: everything flows without a restart.
    proxy.set_faults(proxy::Faults::default());
    let records = world.wait_for_all(N, Duration::from_secs(120)).await;
    let log = doka.stop();
    let line = log
        .lines()
        .find(|l| l.contains("was denied"))
        .expect("the denial is logged");
    for what in [
        "AccessDeniedException",
        "kinesis:PutRecords",
        world.stream.as_str(),
        "222222222222",
        "us-east-1",
    ] {
        assert!(line.contains(what), "`{what}` missing from: {line}");
    }
    assert!(line.contains("ERROR"), "an error, not a warning: {line}");
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    println!(
        "access denied for {denied} requests, then granted: sent {N} received {} duplicated {duplicates} lost 0",
        records.len()
    );
    world.finish().await;
}
