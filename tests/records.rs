//! Records Kinesis cannot take as they are — tombstones, over-long and binary keys, binary
//! values — each handled by its configured policy, never silently dropped.

mod support;

use std::time::{Duration, Instant};

use support::*;

const N: usize = 300;
const TOMBSTONE: usize = 100;
const LONG_KEY: usize = 150;
const BINARY_KEY: usize = 200;
const BINARY_VALUE: usize = 250;

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
    let placements = world.produce(&messages);

    let doka = Doka::start(
        &world.yaml(None),
        &[
            ("DOKA_DEAD_LETTER__TOPIC", &dead_letters),
            ("DOKA_RECORDS__ON_TOMBSTONE", "skip"),
            ("DOKA_PARTITION_KEY__ON_LONG_KEY", "dead_letter"),
            ("DOKA_PARTITION_KEY__ON_BINARY_KEY", "hash"),
        ],
    );
    // Everything but the tombstone and the long-keyed record reaches the stream.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tail = StreamTail::new(&world.b, &world.stream).await;
    loop {
        let records = tail.poll().await;
        let missing = tally(N, records).0;
        if missing == vec![TOMBSTONE, LONG_KEY] {
            break;
        }
        assert!(Instant::now() < deadline, "missing {missing:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, log) = doka.terminate();
    assert_eq!(status.code(), Some(0), "{log}");
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
        log.contains("skipped=1") && log.contains("dead_lettered=1"),
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

    // The long-keyed record is in the dead-letter topic, key and all, saying why.
    let dead = world.kafka.read_all(&dead_letters);
    assert_eq!(dead.len(), 1);
    let (key, value, headers) = &dead[0];
    assert_eq!(key.as_deref(), Some(messages[LONG_KEY].0.as_slice()));
    assert_eq!(value, &messages[LONG_KEY].1);
    let reason = headers
        .iter()
        .find(|(k, _)| k == "doka.reason")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap();
    assert!(
        reason.contains("a key of 300 characters, over Kinesis' 256"),
        "{reason}"
    );
    assert!(
        !reason.contains("kkkkk"),
        "the reason never quotes the key: {reason}"
    );
    println!(
        "sent {N}: {} in the stream, 1 skipped (tombstone), 1 dead-lettered (long key), lost 0",
        records.len()
    );
    world.finish().await;
}
