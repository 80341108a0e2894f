//! End to end: Kafka (mock cluster broker) → doka (child process) → AssumeRole at moto →
//! kinesis-mock, account B. Every record is counted.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

/// The source secret key and the external id must never reach a log line.
fn assert_no_secrets(log: &str) {
    for secret in ["source-secret", "test-external-id"] {
        assert!(
            !log.contains(secret),
            "secret {secret:?} in the log:\n{log}"
        );
    }
}

/// Each key's records, in the order the stream holds them (per shard, by sequence number).
fn ids_per_key(records: &[StreamRecord]) -> HashMap<String, Vec<usize>> {
    let mut sorted: Vec<&StreamRecord> = records.iter().collect();
    sorted.sort_by(|a, b| {
        (a.shard.as_str(), sequence_key(&a.sequence))
            .cmp(&(b.shard.as_str(), sequence_key(&b.sequence)))
    });
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for r in sorted {
        per_key
            .entry(r.partition_key.clone())
            .or_default()
            .push(message_id(&r.data));
    }
    per_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_account_b_in_key_order_and_offsets_reach_the_end() {
    const N: usize = 3000;
    let world = World::new(4, 2).await;
    // A same-named stream in account A must stay empty: only the assumed role may write.
    let a = account_a_kinesis(&world.ep);
    create_stream(&a, &world.stream, 1).await;

    let messages = keyed_messages(0..N, 40);
    let placements = world.produce(&messages);
    assert!(
        end_offsets(&placements).len() > 1,
        "messages spread over several partitions"
    );

    let doka = Doka::start(&world.yaml(None), &[]);
    wait_for_records(&world.b, &world.stream, N, Duration::from_secs(120)).await;
    let log = doka.stop();
    assert!(
        log.contains("summary: consumed=3000 delivered=3000"),
        "{log}"
    );

    let records = read_stream(&world.b, &world.stream).await;
    // No failures were injected, so no copies expected.
    world.assert_delivered(&records, &placements, Copies::ExactlyOnce);
    for r in &records {
        let (key, value) = &messages[message_id(&r.data)];
        assert_eq!(&r.data, value, "data is the Kafka value byte for byte");
        assert_eq!(
            r.partition_key.as_bytes(),
            key.as_slice(),
            "partition key is the Kafka key"
        );
    }
    for (key, ids) in ids_per_key(&records) {
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of Kafka order: {ids:?}"
        );
    }
    assert!(
        read_stream(&a, &world.stream).await.is_empty(),
        "account A's stream was written to"
    );

    assert_no_secrets(&log);

    // A restart of the same group re-sends nothing: only the new messages arrive, once.
    // (This run logs JSON, one object per line.)
    let mut doka = Doka::start(&world.yaml(None), &[("DOKA_LOG__FORMAT", "json")]);
    doka.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    let more = keyed_messages(N..N + 100, 40);
    let more_placements = world.produce(&more);
    wait_for_records(&world.b, &world.stream, N + 100, Duration::from_secs(60)).await;
    let log = doka.stop();
    assert_no_secrets(&log);
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        log.contains("\"message\":\"summary: consumed=100 delivered=100"),
        "{log}"
    );
    let records = read_stream(&world.b, &world.stream).await;
    assert_eq!(
        records.len(),
        N + 100,
        "a restart must not deliver anything twice"
    );
    let all: Vec<Placement> = placements.iter().chain(&more_placements).copied().collect();
    world.assert_delivered(&records, &all, Copies::ExactlyOnce);
    println!(
        "sent {} received {} duplicated 0 lost 0",
        N + 100,
        records.len()
    );
    let _ = a.delete_stream().stream_name(&world.stream).send().await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_restarted_delivers_every_record() {
    const N: usize = 6000;
    let world = World::new(3, 2).await;
    let messages = keyed_messages(0..N, 100);
    let placements = world.produce(&messages);
    // Small batches and two lanes make the first run slow enough to be killed half-way.
    let slow = [
        ("DOKA_BATCH__MAX_RECORDS", "10"),
        ("DOKA_PIPELINE__LANES", "1"),
    ];

    let doka = Doka::start(&world.yaml(None), &slow);
    let before_kill =
        wait_for_records(&world.b, &world.stream, 300, Duration::from_secs(120)).await;
    doka.kill();
    assert!(before_kill.len() < N, "the kill must come mid-way");

    let doka = Doka::start(&world.yaml(None), &[]);
    let records = world.wait_for_all(N, Duration::from_secs(180)).await;
    doka.stop();
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    println!(
        "sent {N} received {} duplicated {duplicates} lost 0 (killed after {} had arrived)",
        records.len(),
        before_kill.len()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_are_retried_and_nothing_is_committed_early() {
    const N: usize = 3000;
    let world = World::new(4, 2).await;
    let proxy = proxy::FaultProxy::start(
        &world.ep.kinesis,
        proxy::Faults {
            entry_failure_rate: 0.25,
            request_error_rate: 0.1,
            ..Default::default()
        },
    )
    .await;
    let messages = keyed_messages(0..N, 200);
    let placements = world.produce(&messages);
    let doka = Doka::start(
        &world.yaml(Some(&proxy.url)),
        &[("DOKA_BATCH__MAX_RECORDS", "100")],
    );

    // While doka works, every committed offset must be backed by records already in the stream.
    let mut checks = 0;
    let mut tail = StreamTail::new(&world.b, &world.stream).await;
    let mut present = vec![false; N];
    let ends = end_offsets(&placements);
    let what = format!("every record delivered and committed to {ends:?}");
    eventually_async(
        &what,
        Duration::from_secs(180),
        Duration::from_millis(500),
        async || {
            // Offsets first: the stream only grows, so what they cover must be found after.
            let committed = world.committed(4);
            let seen = tail.records.len();
            for r in &tail.poll().await[seen..] {
                present[message_id(&r.data)] = true;
            }
            for (id, p) in placements.iter().enumerate() {
                if committed.get(&p.partition).is_some_and(|&c| p.offset < c) {
                    assert!(
                        present[id],
                        "offset {} of partition {} committed before delivery",
                        p.offset, p.partition
                    );
                }
            }
            checks += 1;
            if present.iter().all(|p| *p) && committed == ends {
                return Ok(());
            }
            let delivered = present.iter().filter(|p| **p).count();
            Err(format!(
                "{delivered} of {N} present, committed {committed:?}"
            ))
        },
    )
    .await;
    doka.stop();
    let rejected = proxy
        .counters
        .entries_rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    let failed_requests = proxy
        .counters
        .requests_failed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        rejected > 100 && failed_requests > 0,
        "faults were injected"
    );

    // The documented ordering statement (docs/ORDERING.md): for each key, the last copy of every
    // record is in Kafka order.
    let records = read_stream(&world.b, &world.stream).await;
    let duplicates = assert_every_record(N, &records, Copies::AtLeastOnce);
    for (key, ids) in ids_per_key(&records) {
        let mut last_position = HashMap::new();
        for (pos, id) in ids.iter().enumerate() {
            last_position.insert(*id, pos);
        }
        let mut by_id: Vec<(usize, usize)> = last_position.into_iter().collect();
        by_id.sort();
        assert!(
            by_id.windows(2).all(|w| w[0].1 < w[1].1),
            "key {key}: last copies out of Kafka order: {ids:?}"
        );
    }
    println!(
        "sent {N} received {} duplicated {duplicates} lost 0; proxy rejected {rejected} entries and failed {failed_requests} requests; {checks} commit checks",
        records.len()
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_endpoint_variables_work_without_endpoints_in_the_config() {
    const N: usize = 500;
    let world = World::new(2, 1).await;
    let yaml: String = world
        .yaml(None)
        .lines()
        .filter(|l| !l.contains("_endpoint:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!yaml.contains("endpoint"));
    let messages = keyed_messages(0..N, 10);
    let placements = world.produce(&messages);
    let doka = Doka::start(
        &yaml,
        &[
            ("AWS_ENDPOINT_URL_STS", &world.ep.sts),
            ("AWS_ENDPOINT_URL_KINESIS", &world.ep.kinesis),
        ],
    );
    let records = wait_for_records(&world.b, &world.stream, N, Duration::from_secs(120)).await;
    doka.stop();
    world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    world.finish().await;
}
