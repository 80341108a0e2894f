//! Rebalances, a Kinesis outage with the in-flight bound and shutdown timeout, and a record doka
//! must not send. Real broker, real emulators, every record counted.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_partitions_and_survive_rebalances() {
    const N: usize = 3000;
    let world = World::new(6, 2).await;
    let messages = keyed_messages(0..N, 100);
    let placements = world.produce(&messages);
    // Slow, throttled members with a small in-flight bound: the rebalances happen mid-run, with
    // retries under way, and revoked partitions drain quickly.
    let proxy = proxy::FaultProxy::start(
        &world.ep.kinesis,
        proxy::Faults {
            entry_failure_rate: 0.3,
            ..Default::default()
        },
    )
    .await;
    let yaml = world.yaml(Some(&proxy.url));
    let slow = [
        ("DOKA_BATCH__MAX_RECORDS", "10"),
        ("DOKA_PIPELINE__LANES", "1"),
        ("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", "100"),
    ];

    let mut first = Doka::start(&yaml, &slow);
    first.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    wait_for_records(&world.b, &world.stream, 100, Duration::from_secs(60)).await;

    // A second member joins: the first gives up some partitions, committing what it delivered.
    let mut second = Doka::start(&yaml, &slow);
    second.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    first.wait_for_log(
        "partitions revoked and committed",
        1,
        Duration::from_secs(60),
    );
    let midway = read_stream(&world.b, &world.stream).await;
    assert!(
        !tally(N, &midway).0.is_empty(),
        "the rebalance must happen mid-run"
    );
    assert_committed_were_delivered(&world, 6, &placements).await;

    // The first member leaves: the second takes everything over.
    let first_log = first.stop();
    second.wait_for_log("partitions assigned", 2, Duration::from_secs(60));

    let records = world.wait_for_all(N, Duration::from_secs(240)).await;
    let second_log = second.stop();
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    let consumed = summary_count(&first_log, "consumed") + summary_count(&second_log, "consumed");
    assert_eq!(
        consumed as usize,
        N + duplicates,
        "every copy in the stream was consumed by one of the members"
    );
    println!(
        "sent {N} received {} duplicated {duplicates} lost 0 across two members and three rebalances",
        records.len()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_fetching_at_the_bound_and_commits_nothing_undelivered() {
    const N: usize = 3000;
    const BOUND: u64 = 200;
    let world = World::new(4, 1).await;
    let proxy = proxy::FaultProxy::start(
        &world.ep.kinesis,
        proxy::Faults {
            entry_failure_rate: 1.0,
            ..Default::default()
        },
    )
    .await;
    let messages = keyed_messages(0..N, 50);
    let placements = world.produce(&messages);
    let bound = BOUND.to_string();
    let env = [
        ("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", bound.as_str()),
        ("DOKA_PIPELINE__SHUTDOWN_TIMEOUT_MS", "1000"),
        ("DOKA_BATCH__MAX_RECORDS", "50"),
    ];
    let mut doka = Doka::start(&world.yaml(Some(&proxy.url)), &env);
    doka.wait_for_log(
        "in-flight bound reached: fetching paused",
        1,
        Duration::from_secs(60),
    );
    // Let it retry for a while: at least 40 more (fully throttled) requests.
    let after_pause = proxy.counters.put_records_requests.load(Ordering::Relaxed);
    eventually(
        "doka to retry 40 times in the outage",
        Duration::from_secs(60),
        || {
            let requests = proxy.counters.put_records_requests.load(Ordering::Relaxed);
            (requests >= after_pause + 40).then_some(())
        },
    );
    let peak_rss_kib = peak_rss_kib(doka.pid());
    let (status, log) = doka.terminate();
    assert_eq!(
        status.code(),
        Some(3),
        "undelivered records at shutdown must give exit code 3:\n{log}"
    );
    let consumed = summary_count(&log, "consumed");
    // librdkafka may hand over a few already fetched records after the pause; nothing more.
    assert!(
        consumed <= BOUND + 50,
        "fetched {consumed} records with a bound of {BOUND}"
    );
    assert_eq!(summary_count(&log, "delivered"), 0);
    assert!(read_stream(&world.b, &world.stream).await.is_empty());
    assert_committed_were_delivered(&world, 4, &placements).await;

    // Kinesis is back: a new run delivers everything.
    proxy.set_faults(proxy::Faults::default());
    let doka = Doka::start(&world.yaml(Some(&proxy.url)), &[]);
    let records = world.wait_for_all(N, Duration::from_secs(120)).await;
    doka.stop();
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    println!(
        "outage: fetched {consumed} of {N} with a bound of {BOUND}, peak RSS {peak_rss_kib} KiB, exit 3, nothing committed; \
         after recovery sent {N} received {} duplicated {duplicates} lost 0",
        records.len()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_halts_doka_without_committing_it() {
    let world = World::new(2, 1).await;
    let mut messages = keyed_messages(0..400, 20);
    // id 200: a 2,000-byte value, over the 1,024-byte record limit configured below.
    let mut big = b"id=200;".to_vec();
    big.resize(2000, b'x');
    messages[200].1 = big;
    let placements = world.produce(&messages);
    let oversized = placements[200];

    let doka = Doka::start(
        &world.yaml(None),
        &[
            ("DOKA_KINESIS__MAX_RECORD_BYTES", "1024"),
            ("DOKA_BATCH__MAX_BYTES", "65536"),
        ],
    );
    let (status, log) = doka.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(4), "{log}");
    assert!(
        log.contains(&format!("offset {} is 20", oversized.offset)),
        "{log}"
    );
    assert!(log.contains("kinesis.max_record_bytes"), "{log}");

    let records = read_stream(&world.b, &world.stream).await;
    assert!(
        records.iter().all(|r| message_id(&r.data) != 200),
        "the oversized record was sent"
    );
    let committed = world.committed(2);
    assert!(
        committed
            .get(&oversized.partition)
            .is_none_or(|&c| c <= oversized.offset),
        "committed {committed:?} past the oversized record at {oversized:?}"
    );
    assert_committed_were_delivered(&world, 2, &placements).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_reported_and_everything_arrives_once_it_exists() {
    const N: usize = 500;
    let world = World::without_stream(2).await;
    let messages = keyed_messages(0..N, 10);
    let placements = world.produce(&messages);
    let mut doka = Doka::start(&world.yaml(None), &[]);
    // doka names the stream, the region and the role, and keeps trying without committing.
    doka.wait_for_log(
        "does not exist (ResourceNotFoundException)",
        2,
        Duration::from_secs(60),
    );
    let log = doka.log_text();
    assert!(
        log.contains(&format!("stream `{}`", world.stream))
            && log.contains("role arn:aws:iam::222222222222:role/doka-writer"),
        "{log}"
    );
    assert!(
        world.committed(2).values().all(|&c| c == 0),
        "nothing may be committed while the stream is missing"
    );

    create_stream(&world.b, &world.stream, 1).await;
    let records = world.wait_for_all(N, Duration::from_secs(120)).await;
    doka.stop();
    world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    const N: usize = 400;
    let world = World::new(2, 1).await;
    let dead_letters = unique("doka-dead-letters");
    world.kafka.create_topic(&dead_letters, 1);
    let mut messages = keyed_messages(0..N, 20);
    let mut big = b"id=200;".to_vec();
    big.extend((0..2000u32).map(|i| (i % 251) as u8));
    messages[200].1 = big.clone();
    let placements = world.produce(&messages);

    let doka = Doka::start(
        &world.yaml(None),
        &[
            ("DOKA_KINESIS__MAX_RECORD_BYTES", "1024"),
            ("DOKA_BATCH__MAX_BYTES", "65536"),
            ("DOKA_DEAD_LETTER__TOPIC", &dead_letters),
        ],
    );
    // Everything but the oversized record reaches the stream.
    let what = "every record but the oversized one in the stream";
    let every = Duration::from_millis(300);
    let records = eventually_async(what, Duration::from_secs(120), every, async || {
        let records = read_stream(&world.b, &world.stream).await;
        let missing = tally(N, &records).0;
        if missing == vec![200] {
            Ok(records)
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    let log = doka.stop();
    assert!(log.contains("dead_lettered=1"), "{log}");
    assert!(records.iter().all(|r| message_id(&r.data) != 200));
    assert_eq!(
        world.committed(2),
        end_offsets(&placements),
        "the dead-lettered offset is committed too"
    );

    let dead = world.kafka.read_all(&dead_letters);
    assert_eq!(
        dead.len(),
        1,
        "exactly the oversized record is dead-lettered"
    );
    let (key, value, headers) = &dead[0];
    assert_eq!(key.as_deref(), Some(messages[200].0.as_slice()));
    assert_eq!(value, &big, "original bytes");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        header("doka.source.topic").as_deref(),
        Some(world.topic.as_str())
    );
    assert_eq!(
        header("doka.source.partition"),
        Some(placements[200].partition.to_string())
    );
    assert_eq!(
        header("doka.source.offset"),
        Some(placements[200].offset.to_string())
    );
    assert!(
        header("doka.reason")
            .unwrap()
            .contains("over the stream's maximum record size")
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assumed_role_credentials_are_renewed_while_records_flow() {
    let world = World::new(2, 1).await;
    // Credentials of 900 s, renewed 890 s early: a new AssumeRole about every 10 s.
    let mut doka = Doka::start(
        &world.yaml(None),
        &[("DOKA_AWS__CREDENTIAL_REFRESH_MARGIN_SECS", "890")],
    );
    doka.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    let mut sent = 0;
    let mut placements = Vec::new();
    // Keep records flowing in rounds until the role was assumed three more times after start-up.
    let what = "the credentials to be renewed three times";
    eventually_async(what, Duration::from_secs(120), Duration::ZERO, async || {
        let log = doka.log_text();
        if log.matches("assumed role: new credentials").count() >= 4 {
            return Ok(());
        }
        placements.extend(world.produce(&keyed_messages(sent..sent + 100, 10)));
        sent += 100;
        wait_for_records(&world.b, &world.stream, sent, Duration::from_secs(60)).await;
        Err(format!("the log:\n{log}"))
    })
    .await;
    let log = doka.stop();
    let records = read_stream(&world.b, &world.stream).await;
    assert_eq!(placements.len(), sent);
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    assert!(
        !log.contains("credentials problem"),
        "no request may fail for lack of credentials:\n{log}"
    );
    println!(
        "credential renewal: sent {sent} received {} duplicated {duplicates} lost 0",
        records.len()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_mid_run_loses_nothing() {
    const N: usize = 3000;
    let world = World::new(4, 2).await;
    let messages = keyed_messages(0..N, 50);
    let placements = world.produce(&messages);
    let slow = [
        ("DOKA_BATCH__MAX_RECORDS", "10"),
        ("DOKA_PIPELINE__LANES", "1"),
        ("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", "100"),
    ];
    // A small prefetch: otherwise librdkafka holds the whole topic before the outage begins and
    // doka keeps delivering from it, never reading from Kafka mid-outage.
    // And a stream that takes 300 records/s: the run lasts about 10 s whatever the machine.
    let proxy = proxy::FaultProxy::slowed(&world.ep.kinesis, 300.0).await;
    let yaml = world.yaml(Some(&proxy.url)).replace(
        "    heartbeat.interval.ms: 500\n",
        "    heartbeat.interval.ms: 500\n    queued.min.messages: 20\n    max.partition.fetch.bytes: 1000\n",
    );
    let mut doka = Doka::start(&yaml, &slow);
    wait_for_records(&world.b, &world.stream, 200, Duration::from_secs(60)).await;

    world.kafka.broker_down();
    // The outage itself: longer than the 6 s session timeout, so the group has to be rebuilt.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = read_stream(&world.b, &world.stream).await.len();
    world.kafka.broker_up();

    let records = world.wait_for_all(N, Duration::from_secs(180)).await;
    // doka keeps delivering what it had fetched while the broker is away, but the session
    // expired: those records are committed only after the group took it back (the records are
    // read again from the last commit and sent again).
    doka.wait_for_log("partitions assigned", 2, Duration::from_secs(60));
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(60))
        .await;
    doka.stop();
    assert!(during < N, "the outage must come mid-run");
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    println!(
        "kafka outage: sent {N} received {} duplicated {duplicates} lost 0",
        records.len()
    );
    world.finish().await;
}
