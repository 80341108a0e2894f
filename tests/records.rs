//! Records Kinesis cannot take as they are — tombstones, over-long and binary keys, binary
//! values — each handled by its configured policy, never silently dropped.

mod support;

use std::time::Duration;

use support::*;

const N: usize = 300;
const TOMBSTONE: usize = 100;
const LONG_KEY: usize = 150;
const BINARY_KEY: usize = 200;
const BINARY_VALUE: usize = 250;
/// Produced last, with headers.
const WITH_HEADERS: usize = N;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_long_and_binary_keys_follow_their_policies() {
    let world = World::new(2, 1).await;
    let dead_letters = unique("doka-dead-letters");
    world.kafka.create_topic(&dead_letters, 1);
    let mut messages = keyed_messages(0..N, 20);
    messages[TOMBSTONE].1.clear();
    messages[LONG_KEY].0 = "k".repeat(300).into_bytes();
    messages[BINARY_KEY].0 = vec![0xff, 0x00, 0xfe, 0x80];
    let mut binary_value = format!("id={BINARY_VALUE};").into_bytes();
    binary_value.extend((0..=255u8).rev());
    messages[BINARY_VALUE].1 = binary_value.clone();
    let mut placements = world.produce(&messages);
    let headers_key = b"customer-7".to_vec();
    let headers_value = format!("id={WITH_HEADERS};with headers").into_bytes();
    placements.push(
        produce_with_headers(
            &world.kafka.bootstrap(),
            &world.topic,
            &headers_key,
            &headers_value,
            &[("trace-id", b"abc123"), ("binary", &[0xff, 0x00])],
        )
        .await,
    );

    let doka = Doka::start(
        &world.yaml(None),
        &[
            ("DOKA_DEAD_LETTER__TOPIC", &dead_letters),
            ("DOKA_RECORDS__ON_TOMBSTONE", "skip"),
            ("DOKA_PARTITION_KEY__ON_LONG_KEY", "dead_letter"),
            ("DOKA_PARTITION_KEY__ON_BINARY_KEY", "hash"),
            ("DOKA_RECORDS__ON_HEADERS", "dead_letter"),
        ],
    );
    // Everything but the tombstone, the long-keyed record and the one with headers reaches the
    // stream.
    let mut tail = StreamTail::new(&world.b, &world.stream).await;
    let what = "every record but the tombstone, the long key and the headers in the stream";
    let every = Duration::from_millis(300);
    eventually_async(what, Duration::from_secs(120), every, async || {
        let missing = tally(N + 1, tail.poll().await).0;
        if missing == vec![TOMBSTONE, LONG_KEY, WITH_HEADERS] {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await;
    let log = doka.stop();
    let records = tail.records;
    assert!(
        records.iter().all(|r| !r.data.is_empty()),
        "no empty record sent"
    );
    assert_eq!(
        world.committed(2),
        end_offsets(&placements),
        "skipped and dead-lettered offsets are committed too"
    );

    // Counted and logged, each with where it came from.
    assert!(
        log.contains("skipped=1") && log.contains("dead_lettered=2"),
        "{log}"
    );
    let tombstone = placements[TOMBSTONE];
    assert!(
        log.contains(&format!(
            "record {}[{}] offset {} is a tombstone (no value): not sent (records.on_tombstone is skip)",
            world.topic, tombstone.partition, tombstone.offset
        )),
        "{log}"
    );

    // The binary key became its MD5; the binary value arrived byte for byte.
    let by_id = |id: usize| records.iter().find(|r| message_id(&r.data) == id).unwrap();
    let hashed = &by_id(BINARY_KEY).partition_key;
    assert_eq!(hashed.len(), 32);
    assert!(hashed.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(by_id(BINARY_VALUE).data, binary_value);

    // The long-keyed record and the one with headers are in the dead-letter topic, key, value
    // and headers as they were, saying why.
    let dead = world.kafka.read_all(&dead_letters);
    assert_eq!(dead.len(), 2);
    let header = |headers: &[(String, Vec<u8>)], name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("header {name} missing: {headers:?}"))
    };
    let with_headers = dead
        .iter()
        .find(|(_, value, _)| value == &headers_value)
        .expect("the record with headers is dead-lettered");
    assert_eq!(with_headers.0.as_deref(), Some(headers_key.as_slice()));
    assert_eq!(header(&with_headers.2, "trace-id"), b"abc123");
    assert_eq!(header(&with_headers.2, "binary"), [0xff, 0x00]);
    let headers_reason =
        String::from_utf8_lossy(&header(&with_headers.2, "doka.reason")).into_owned();
    assert!(
        headers_reason.contains("has headers, which a raw record cannot carry"),
        "{headers_reason}"
    );
    let (key, _, headers) = dead
        .iter()
        .find(|(_, value, _)| value == &messages[LONG_KEY].1)
        .expect("the long-keyed record is dead-lettered");
    assert_eq!(key.as_deref(), Some(messages[LONG_KEY].0.as_slice()));
    let reason = String::from_utf8_lossy(&header(headers, "doka.reason")).into_owned();
    assert!(
        reason.contains("a key of 300 characters, over Kinesis' 256"),
        "{reason}"
    );
    assert!(
        !reason.contains("kkkkk"),
        "the reason never quotes the key: {reason}"
    );
    println!(
        "sent {}: {} in the stream, 1 skipped (tombstone), 2 dead-lettered (long key, headers), lost 0",
        N + 1,
        records.len()
    );
    world.finish().await;
}
