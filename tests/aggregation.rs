//! KPL aggregation, strict ordering and spread hash keys, read back as a consumer would: shard by
//! shard, with each aggregate de-aggregated by AWS's own library (PyPI aws-kinesis-agg), every
//! sub-record checked against the hash-key range of the shard it was read from.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::kpl::{self, Shard, UserRecord};
use support::*;

/// The default `kinesis.aggregation.max_bytes`.
const DEFAULT_AGGREGATE_BYTES: usize = 51_200;

/// Every user record's hash key (explicit, else the MD5 of its partition key) lies in the range
/// of the shard it was read from: a KCL reader drops sub-records that do not.
fn assert_on_their_shards(shards: &[Shard], users: &[UserRecord]) {
    for u in users {
        let shard = &shards[u.shard];
        assert!(
            shard.holds(u.hash_key()),
            "record with key {:?} (explicit hash key {:?}, hash key {}) read from {} [{}, {}] \
             (sequence {}, sub-record {:?}): outside the shard's range",
            u.partition_key,
            u.explicit_hash_key,
            u.hash_key(),
            shard.id,
            shard.start,
            shard.end,
            u.sequence,
            u.sub
        );
    }
}

/// Each Kinesis record (data and partition key, as Kinesis counts it) is at most `max` bytes.
fn assert_records_within(shards: &[Shard], max: usize) {
    for shard in shards {
        for r in &shard.records {
            let size = r.data.len() + r.partition_key.len();
            assert!(
                size <= max,
                "{} sequence {} is {size} bytes (aggregate: {}), over kinesis.aggregation.max_bytes {max}",
                shard.id,
                r.sequence,
                r.data.starts_with(&kpl::MAGIC)
            );
        }
    }
}

/// The Kinesis records that are aggregates (start with the magic bytes).
fn aggregates(shards: &[Shard]) -> usize {
    shards
        .iter()
        .flat_map(|s| &s.records)
        .filter(|r| r.data.starts_with(&kpl::MAGIC))
        .count()
}

fn kinesis_records(shards: &[Shard]) -> usize {
    shards.iter().map(|s| s.records.len()).sum()
}

/// An aggregate's partition key is its first sub-record's (so the aggregate is routed where
/// that sub-record belongs).
fn assert_aggregate_keys_are_their_first_records(shards: &[Shard], users: &[UserRecord]) {
    for u in users.iter().filter(|u| u.sub == Some(0)) {
        let outer = &shards[u.shard].records[u.position];
        assert_eq!(
            outer.partition_key, u.partition_key,
            "aggregate {} in {}: partition key is not its first sub-record's",
            outer.sequence, shards[u.shard].id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_read_back_by_aws_deaggregator_on_the_right_shards() {
    const N: usize = 3000;
    let world = World::new(4, 4).await;
    let mut messages = keyed_messages(0..N, 300);
    // Text that is valid UTF-8 but far from ASCII: control characters, quotes, multi-byte and
    // astral characters, a NUL.
    let mut utf8 = format!("id={N};").into_bytes();
    utf8.extend("naïve café – 日本語 😀 \u{0}\u{1}\t\r\n\"\\ \u{7f}\u{fffd}".as_bytes());
    messages.push(("ключ-ü-😀".into(), utf8));
    // The longest partition key Kinesis takes, with an all-bytes value.
    let mut all_bytes = format!("id={};", N + 1).into_bytes();
    all_bytes.extend(0..=255u8);
    messages.push(("k".repeat(256).into_bytes(), all_bytes));
    // A tombstone: sent as an empty record (records.on_tombstone defaults to send_empty).
    messages.push((b"tombstone-key".to_vec(), Vec::new()));
    // ~20 KB: shares an aggregate of at most 51,200 bytes with few others.
    let mut long = format!("id={};", N + 3).into_bytes();
    long.extend((0..20_000u32).map(|i| b'a' + (i % 26) as u8));
    messages.push((b"long-value-key".to_vec(), long));
    // A key that also has ordinary records before it.
    let mut binary = format!("id={};", N + 4).into_bytes();
    binary.extend((0..=255u8).rev());
    messages.push((b"key-7".to_vec(), binary));
    let total = messages.len();

    let placements = world.produce(&messages);
    let doka = Doka::start(
        &world.yaml(None),
        &[("DOKA_KINESIS__AGGREGATION__ENABLED", "true")],
    );
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(180))
        .await;
    let log = doka.stop();
    assert_eq!(summary_count(&log, "delivered") as usize, total, "{log}");
    assert_mentions(&log, &["4 open shards; aggregates are packed per shard"]);

    let shards = kpl::read_shards(&world.b, &world.stream).await;
    assert_eq!(shards.len(), 4);
    let users = kpl::deaggregate(&shards);

    // Every record exactly once (nothing failed), byte for byte, with its own partition key.
    let mut copies: HashMap<(&[u8], &[u8]), usize> = messages
        .iter()
        .map(|(k, v)| ((k.as_slice(), v.as_slice()), 0))
        .collect();
    for u in &users {
        let count = copies
            .get_mut(&(u.partition_key.as_bytes(), u.data.as_slice()))
            .unwrap_or_else(|| {
                panic!(
                    "a record that was never produced: key {:?}, {} bytes of data starting {:?}",
                    u.partition_key,
                    u.data.len(),
                    String::from_utf8_lossy(&u.data[..u.data.len().min(40)])
                )
            });
        *count += 1;
    }
    let missing: Vec<&(Vec<u8>, Vec<u8>)> = messages
        .iter()
        .filter(|(k, v)| copies[&(k.as_slice(), v.as_slice())] == 0)
        .collect();
    assert!(
        missing.is_empty(),
        "{} records missing, e.g. key {:?}",
        missing.len(),
        String::from_utf8_lossy(&missing[0].0)
    );
    assert_eq!(users.len(), total, "no failures were injected: no copies");

    assert_on_their_shards(&shards, &users);
    for shard in &shards {
        assert!(
            users.iter().any(|u| shards[u.shard].id == shard.id),
            "{} holds nothing: keys spread over every shard",
            shard.id
        );
    }

    // Aggregation happened: far fewer Kinesis records than user records.
    let outer = kinesis_records(&shards);
    let aggregated = aggregates(&shards);
    assert!(aggregated > 0, "no Kinesis record is an aggregate");
    assert!(
        outer * 10 <= total,
        "{outer} Kinesis records for {total} user records"
    );
    assert!(users.iter().filter(|u| u.aggregated()).count() > total / 2);
    assert_records_within(&shards, DEFAULT_AGGREGATE_BYTES);
    assert_aggregate_keys_are_their_first_records(&shards, &users);

    // A key's records in Kafka order (stream order: sequence number, then place in the
    // aggregate).
    let index: HashMap<(&[u8], &[u8]), usize> = messages
        .iter()
        .enumerate()
        .map(|(i, (k, v))| ((k.as_slice(), v.as_slice()), i))
        .collect();
    let mut per_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for u in &users {
        per_key
            .entry(&u.partition_key)
            .or_default()
            .push(index[&(u.partition_key.as_bytes(), u.data.as_slice())]);
    }
    for (key, order) in per_key {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of Kafka order: {order:?}"
        );
    }
    println!(
        "sent {total} user records; {outer} Kinesis records on 4 shards, {aggregated} of them aggregates; \
         all read back by aws-kinesis-agg, each on its shard"
    );
    world.finish().await;
}

/// For each partition key, walking its records in stream order: a record's sequence number (its
/// place among the key's records in Kafka) is never above the highest seen so far plus one. So
/// no reader sees a record before an earlier one of its key; copies of earlier ones are allowed.
fn strict_order_violations(users: &[UserRecord]) -> Vec<String> {
    let mut highest: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut violations = Vec::new();
    for u in users {
        let seq = message_seq(&u.data);
        let (next, shard) = highest.entry(&u.partition_key).or_insert((0, u.shard));
        if *shard != u.shard {
            violations.push(format!(
                "key {} on two shards ({} and {})",
                u.partition_key, shard, u.shard
            ));
        }
        if seq > *next {
            violations.push(format!(
                "key {}: seq {seq} at sequence number {} (sub-record {:?}) before seq {next}",
                u.partition_key, u.sequence, u.sub
            ));
        }
        *next = (*next).max(seq + 1);
    }
    violations
}

#[test]
fn the_strict_order_check_catches_a_record_before_an_earlier_one() {
    let record = |key: &str, seq: usize| UserRecord {
        shard: 0,
        sequence: "1".into(),
        position: 0,
        sub: None,
        partition_key: key.into(),
        explicit_hash_key: None,
        data: format!("id=0;key=0;seq={seq};").into_bytes(),
    };
    let fine = [
        record("a", 0),
        record("b", 0),
        record("a", 1),
        record("a", 0),
        record("a", 1),
        record("a", 2),
    ];
    assert!(strict_order_violations(&fine).is_empty());
    let skipped = [record("a", 0), record("a", 2), record("a", 1)];
    assert_eq!(strict_order_violations(&skipped).len(), 1);
    let first_missing = [record("b", 1), record("b", 0)];
    assert_eq!(strict_order_violations(&first_missing).len(), 1);
}

/// `pipeline.ordering: strict` through a proxy that throttles 30% of the entries, answers every
/// 7th request with a 500/503 and lets every 20th time out (half of those written anyway).
async fn strict_order_under_faults(aggregated: bool) {
    const N: usize = 1800;
    const KEYS: usize = 200;
    let world = World::new(4, 4).await;
    let proxy = proxy::FaultProxy::start(
        &world.ep.kinesis,
        proxy::Faults {
            entry_failure_rate: 0.3,
            error_every: Some(7),
            timeout_every: Some(20),
            hang: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    // ~330-byte records: an aggregate of 1,024 bytes holds only two of a key, so each key's nine
    // records travel in at least five batches (one per batch in the plain run).
    let mut messages = sequenced_messages(N, KEYS);
    for (_, value) in &mut messages {
        value.extend(std::iter::repeat_n(b'.', 250));
    }
    let placements = world.produce(&messages);
    let mut env = vec![
        ("DOKA_PIPELINE__ORDERING", "strict"),
        ("DOKA_KINESIS__REQUEST_TIMEOUT_MS", "1000"),
        ("DOKA_PIPELINE__LANES", "4"),
        // The send rate would adapt to the injected throttling and make the run's length vary
        // several-fold; order is what is tested here.
        ("DOKA_RETRY__ADAPTIVE_RATE", "false"),
    ];
    if aggregated {
        env.push(("DOKA_KINESIS__AGGREGATION__ENABLED", "true"));
        env.push(("DOKA_KINESIS__AGGREGATION__MAX_BYTES", "1024"));
        // Aggregated, batch.max_records counts the entries of one request: a batch's aggregates
        // go out in several requests at once, which fail independently.
        env.push(("DOKA_BATCH__MAX_RECORDS", "4"));
    } else {
        env.push(("DOKA_BATCH__MAX_RECORDS", "100"));
    }
    let started = Instant::now();
    let doka = Doka::start(&world.yaml(Some(&proxy.url)), &env);
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(240))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let log = doka.stop();
    assert_eq!(summary_count(&log, "delivered") as usize, N, "{log}");

    let c = &proxy.counters;
    let (requests, rejected, failed, timed_out) = (
        c.put_records_requests.load(Ordering::Relaxed),
        c.entries_rejected.load(Ordering::Relaxed),
        c.requests_failed.load(Ordering::Relaxed),
        c.requests_timed_out.load(Ordering::Relaxed),
    );
    assert!(
        rejected >= 50 && failed >= 3 && timed_out >= 2,
        "too few faults injected to test anything: {rejected} entries throttled, {failed} \
         requests failed, {timed_out} timed out of {requests}"
    );

    let shards = kpl::read_shards(&world.b, &world.stream).await;
    let users = kpl::deaggregate(&shards);
    if aggregated {
        assert!(aggregates(&shards) > 0, "no aggregate was written");
        assert_records_within(&shards, 1024);
        assert_aggregate_keys_are_their_first_records(&shards, &users);
    } else {
        assert!(
            users.iter().all(|u| !u.aggregated()),
            "aggregation is off, yet a record is an aggregate"
        );
    }
    assert_on_their_shards(&shards, &users);
    let mut present = vec![false; N];
    for u in &users {
        let (key, value) = &messages[message_id(&u.data)];
        assert_eq!(
            (u.partition_key.as_bytes(), u.data.as_slice()),
            (key.as_slice(), value.as_slice())
        );
        present[message_id(&u.data)] = true;
    }
    let missing: Vec<usize> = (0..N).filter(|&i| !present[i]).collect();
    assert!(missing.is_empty(), "lost {missing:?}");
    // Each key's records were spread over several Kinesis records (so over several requests):
    // the order between them is what strict mode has to keep.
    let mut holders: HashMap<&str, std::collections::HashSet<(usize, usize)>> = HashMap::new();
    for u in &users {
        holders
            .entry(&u.partition_key)
            .or_default()
            .insert((u.shard, u.position));
    }
    let fewest = holders.values().map(|h| h.len()).min().unwrap();
    assert!(
        fewest >= 5,
        "a key's records sit in only {fewest} Kinesis records"
    );
    let violations = strict_order_violations(&users);
    assert!(
        violations.is_empty(),
        "{} strict-order violations, e.g. {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    println!(
        "strict{}: sent {N} received {} (duplicates {}) in {} Kinesis records, {seconds:.1} s; \
         proxy: {requests} requests, {rejected} entries throttled, {failed} failed, {timed_out} timed out; \
         no key ever ahead of itself",
        if aggregated { ", aggregated" } else { "" },
        users.len(),
        users.len() - N,
        kinesis_records(&shards)
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_order_holds_under_throttling_errors_and_timeouts() {
    strict_order_under_faults(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_order_holds_for_aggregates_under_throttling_errors_and_timeouts() {
    strict_order_under_faults(true).await;
}

/// PutRecords takes at most 5 MiB (data and partition keys) per request. Aggregated, a batch is
/// bounded by `batch.max_bytes` (5 MiB) of records, and small records with short keys weigh more
/// in an aggregate than on their own (protobuf framing against a 2-byte key): the requests must
/// still fit. One lane and a backlog of 6 MB fill the batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_requests_stay_within_the_putrecords_limit() {
    const N: usize = 40_000;
    const LIMIT: u64 = 5 * 1024 * 1024;
    // Four partitions: the mock broker keeps only about 4 MB of each.
    let world = World::new(4, 2).await;
    let proxy = proxy::FaultProxy::start(&world.ep.kinesis, proxy::Faults::default()).await;
    let mut messages = keyed_messages(0..N, 50);
    for (i, (key, value)) in messages.iter_mut().enumerate() {
        *key = format!("k{}", i % 50).into_bytes();
        value.resize(150, b'.');
    }
    let placements = world.produce(&messages);
    let doka = Doka::start(
        &world.yaml(Some(&proxy.url)),
        &[
            ("DOKA_KINESIS__AGGREGATION__ENABLED", "true"),
            ("DOKA_PIPELINE__LANES", "1"),
            // The default bound (10,000 records) would end each batch at 1.5 MB.
            ("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", "100000"),
        ],
    );
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(120))
        .await;
    doka.stop();
    let c = &proxy.counters;
    let largest = c.largest_request_bytes.load(Ordering::Relaxed);
    let requests = c.put_records_requests.load(Ordering::Relaxed);
    println!("{N} records of 150 bytes in {requests} requests, the largest {largest} bytes");
    assert!(
        largest > LIMIT / 2,
        "the batches were not full enough to test the limit: largest request {largest} bytes"
    );
    assert!(
        largest <= LIMIT,
        "a PutRecords request of {largest} bytes (data and partition keys), over Kinesis' \
         {LIMIT}-byte limit: Kinesis refuses the whole request"
    );
    world.finish().await;
}

/// Keyless records from one Kafka partition (one partition key, `<topic>-0`) with
/// `partition_key.explicit_hash_key: spread` into four shards.
async fn spread_keyless_records(aggregated: Option<usize>) {
    const N: usize = 2000;
    let world = World::new(1, 4).await;
    let values: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let mut v = format!("id={i};keyless;").into_bytes();
            v.extend((0..32u8).map(|b| b.wrapping_mul(17).wrapping_add(i as u8)));
            v
        })
        .collect();
    let placements = produce_keyless(&world.kafka.bootstrap(), &world.topic, &values);
    let max_bytes = aggregated.map(|m| m.to_string());
    let mut env = vec![("DOKA_PARTITION_KEY__EXPLICIT_HASH_KEY", "spread")];
    if let Some(max) = &max_bytes {
        env.push(("DOKA_KINESIS__AGGREGATION__ENABLED", "true"));
        env.push(("DOKA_KINESIS__AGGREGATION__MAX_BYTES", max));
    }
    let doka = Doka::start(&world.yaml(None), &env);
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(120))
        .await;
    doka.stop();

    let shards = kpl::read_shards(&world.b, &world.stream).await;
    let users = kpl::deaggregate(&shards);
    let key = format!("{}-0", world.topic);
    let mut present = vec![false; N];
    let mut per_shard = vec![0usize; shards.len()];
    for u in &users {
        assert_eq!(u.partition_key, key, "a keyless record's partition key");
        assert_eq!(u.data, values[message_id(&u.data)]);
        present[message_id(&u.data)] = true;
        per_shard[u.shard] += 1;
    }
    let missing: Vec<usize> = (0..N).filter(|&i| !present[i]).collect();
    assert!(missing.is_empty(), "lost {missing:?}");
    for (shard, count) in shards.iter().zip(&per_shard) {
        assert!(
            *count * 100 >= N * 15,
            "{} received {count} of {N} records (per shard: {per_shard:?})",
            shard.id
        );
    }
    if aggregated.is_some() {
        assert!(aggregates(&shards) > 0, "no aggregate was written");
        assert!(
            users.iter().all(|u| u.explicit_hash_key.is_some()),
            "every sub-record carries its explicit hash key"
        );
        assert_on_their_shards(&shards, &users);
    }
    println!(
        "spread{}: {N} keyless records over 4 shards: {per_shard:?} ({} Kinesis records)",
        if aggregated.is_some() {
            ", aggregated"
        } else {
            ""
        },
        kinesis_records(&shards)
    );
    if let Some(max) = aggregated {
        assert_records_within(&shards, max);
    }

    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_hash_keys_share_keyless_records_fairly_over_the_shards() {
    spread_keyless_records(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_hash_keys_route_aggregated_sub_records_to_their_shards() {
    spread_keyless_records(Some(8192)).await;
}
