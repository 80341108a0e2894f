//! Confluent Schema Registry records end to end: rivven-schema (the Confluent REST API) holds the
//! schemas, confluent-kafka-python's serializers (Avro, JSON Schema) and the documented Protobuf
//! framing write the records, the real doka binary decodes them on their way from the mock Kafka
//! cluster to kinesis-mock, and every envelope that arrives is compared field by field with the
//! value the producer serialised — with the schema's identity and the committed offsets.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::prometheus::{http_get, sample_sum};
use support::schemas::*;
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// The config every test here starts from: envelopes, values decoded through the stack's
/// registry, undecodable ones to a dead-letter topic.
fn decoding_yaml(world: &World, dead_letter: &str, registry: &str, extra: &str) -> String {
    world.kafka.create_topic(dead_letter, 1);
    format!(
        "{}records:\n  format: envelope\ndead_letter:\n  topic: {dead_letter}\ndecode:\n  value:\n    confluent:\n      url: {registry}\n{extra}",
        world.yaml(None)
    )
}

/// Every produced record arrived once, decoded to the JSON the producer serialised, with its
/// schema's id; the group committed to the end.
async fn assert_decoded(world: &World, produced: &[Produced], placements: &[Placement]) {
    let records = wait_for_records(&world.b, &world.stream, produced.len(), WAIT).await;
    world
        .wait_for_committed(&end_offsets(placements), WAIT)
        .await;
    let envelopes = envelopes_by_position(&records);
    assert_eq!(envelopes.len(), produced.len(), "one envelope per record");
    for (record, at) in produced.iter().zip(placements) {
        let envelope = envelopes
            .get(&(at.partition, at.offset))
            .unwrap_or_else(|| panic!("no envelope for {at:?}"));
        let path = format!("[{}@{}].value", at.partition, at.offset);
        assert_eq!(envelope["value_encoding"], "json", "{path}: {envelope}");
        assert_json_eq(&envelope["value"], &record.expected, &path);
        let schema = &envelope["value_schema"];
        assert_eq!(schema["registry"], "confluent", "{path}: {envelope}");
        assert_eq!(schema["id"], record.schema["id"], "{path}: {envelope}");
        // Where the registry lists the id (an identical schema under another subject shares it).
        assert!(
            schema["subject"]
                .as_str()
                .is_some_and(|s| s.ends_with("-value")),
            "{path}: {envelope}"
        );
    }
}

async fn decodes_end_to_end(format: &str) {
    let world = World::new(2, 2).await;
    let url = registry_url();
    let count = "60";
    let args = |version: &str| {
        vec![
            "--registry",
            "confluent",
            "--url",
            &url,
            "--format",
            format,
            "--topic",
            &world.topic,
            "--count",
            count,
            "--schema-version",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([version.to_owned()])
        .collect::<Vec<_>>()
    };
    // Two versions of the schema in one topic: each record decodes with its own.
    let mut produced = Vec::new();
    for version in ["1", "2"] {
        let a = args(version);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        produced.extend(schema_records(&a));
    }
    let ids: std::collections::HashSet<String> = produced
        .iter()
        .map(|p| p.schema["id"].to_string())
        .collect();
    assert!(ids.len() >= 2, "two schema versions, two ids: {ids:?}");
    let placements = produce_schema_records(&world.kafka.bootstrap(), &world.topic, &produced);
    let dead_letter = unique("dlq");
    let yaml = decoding_yaml(&world, &dead_letter, &url, "");
    let doka = Doka::start(&yaml, &[]);
    assert_decoded(&world, &produced, &placements).await;
    let (status, log) = doka.terminate();
    assert!(status.success(), "{log}");
    let metrics_line = log
        .lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or_default();
    assert!(!metrics_line.contains("dead_lettered=1"), "{metrics_line}");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn avro_records_of_two_schema_versions_arrive_as_json_field_by_field() {
    decodes_end_to_end("avro").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_schema_records_arrive_as_their_json() {
    decodes_end_to_end("json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_records_with_nested_types_arrive_as_canonical_json() {
    decodes_end_to_end("protobuf").await;
}

/// Good records around three kinds that never decode: each bad one goes to the dead-letter
/// topic with its reason, the good ones arrive decoded, and the offsets reach the end.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_records_go_to_the_dead_letter_topic_with_their_reason() {
    let world = World::new(1, 1).await;
    let url = registry_url();
    let base = [
        "--registry",
        "confluent",
        "--url",
        url.as_str(),
        "--format",
        "avro",
        "--topic",
        world.topic.as_str(),
    ];
    let good = |count: &str| schema_records(&[&base[..], &["--count", count]].concat());
    let bad = |mode: &str| schema_records(&[&base[..], &["--count", "1", "--bad", mode]].concat());
    let mut produced = good("5");
    let mut bad_at = Vec::new();
    for mode in ["unknown-id", "no-magic", "corrupt"] {
        bad_at.push(produced.len());
        produced.extend(bad(mode));
        produced.extend(good("3"));
    }
    let placements = produce_schema_records(&world.kafka.bootstrap(), &world.topic, &produced);
    let dead_letter = unique("dlq");
    // The unknown id is asked for again for a second (a registry follower may lag) before it
    // counts as gone.
    let retry = "    unknown_schema_retry_ms: 1000\n";
    let doka = Doka::start(&decoding_yaml(&world, &dead_letter, &url, retry), &[]);

    let good_ones: Vec<(Produced, Placement)> = produced
        .iter()
        .cloned()
        .zip(placements.iter().cloned())
        .enumerate()
        .filter(|(i, _)| !bad_at.contains(i))
        .map(|(_, p)| p)
        .collect();
    let (good_records, good_placements): (Vec<_>, Vec<_>) = good_ones.into_iter().unzip();
    let records = wait_for_records(&world.b, &world.stream, good_records.len(), WAIT).await;
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    let envelopes = envelopes_by_position(&records);
    assert_eq!(
        envelopes.len(),
        good_records.len(),
        "only the good records reach the stream"
    );
    for (record, at) in good_records.iter().zip(&good_placements) {
        let envelope = &envelopes[&(at.partition, at.offset)];
        assert_json_eq(&envelope["value"], &record.expected, "value");
    }

    let dead = eventually("three dead letters", WAIT, || {
        let read = world.kafka.read_all(&dead_letter);
        (read.len() >= 3).then_some(read)
    });
    assert_eq!(dead.len(), 3, "exactly the three undecodable records");
    let header = |m: &KafkaMessage, name: &str| {
        m.2.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            .unwrap_or_else(|| panic!("dead letter without {name}: {m:?}"))
    };
    let by_offset: HashMap<i64, &KafkaMessage> = dead
        .iter()
        .map(|m| (header(m, "doka.source.offset").parse().unwrap(), m))
        .collect();
    for (i, expected) in bad_at
        .iter()
        .zip(["does not know", "first byte", "does not match"])
    {
        let at = &placements[*i];
        let message = by_offset[&at.offset];
        let reason = header(message, "doka.reason");
        assert!(reason.contains(expected), "offset {}: {reason}", at.offset);
        assert_eq!(message.1, produced[*i].value, "the bytes as they were");
    }
    let (status, log) = doka.terminate();
    assert!(status.success(), "{log}");
    world.finish().await;
}

/// `on_undecodable: stop`: doka stops at the record with a clear error, and nothing from it on
/// is committed. `pass_through`: it arrives as its bytes, `value_schema` null.
#[tokio::test(flavor = "multi_thread")]
async fn stop_halts_at_the_record_and_pass_through_sends_its_bytes() {
    let world = World::new(1, 1).await;
    let url = registry_url();
    let base = [
        "--registry",
        "confluent",
        "--url",
        url.as_str(),
        "--format",
        "json",
        "--topic",
        world.topic.as_str(),
    ];
    let mut produced = schema_records(&[&base[..], &["--count", "4"]].concat());
    produced.extend(schema_records(
        &[&base[..], &["--count", "1", "--bad", "no-magic"]].concat(),
    ));
    produced.extend(schema_records(&[&base[..], &["--count", "2"]].concat()));
    let placements = produce_schema_records(&world.kafka.bootstrap(), &world.topic, &produced);

    let stop = "    on_undecodable: stop\n";
    let doka = Doka::start(&decoding_yaml(&world, &unique("dlq"), &url, stop), &[]);
    let (status, log) = doka.wait_exit(WAIT);
    assert!(!status.success(), "{log}");
    assert_mentions(
        &log,
        &[
            "decode.value.on_undecodable is stop",
            "offset 4",
            "pass_through",
        ],
    );
    let committed = world.committed(1);
    assert_eq!(
        committed.get(&0),
        Some(&4),
        "committed up to the record, not past it: {committed:?}"
    );

    let pass = "    on_undecodable: pass_through\n";
    let doka = Doka::start(&decoding_yaml(&world, &unique("dlq"), &url, pass), &[]);
    let records = wait_for_records(&world.b, &world.stream, produced.len(), WAIT).await;
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    let envelopes = envelopes_by_position(&records);
    let odd = &envelopes[&(0, 4)];
    assert!(odd["value_schema"].is_null(), "{odd}");
    assert_eq!(
        odd["value"],
        Value::String(String::from_utf8(produced[4].value.clone()).unwrap())
    );
    for (record, at) in produced
        .iter()
        .zip(&placements)
        .filter(|(_, at)| at.offset != 4)
    {
        assert_json_eq(
            &envelopes[&(at.partition, at.offset)]["value"],
            &record.expected,
            "value",
        );
    }
    let (status, log) = doka.terminate();
    assert!(status.success(), "{log}");
    world.finish().await;
}

/// The registry unreachable for 30 s while records flow: they wait (the partition's records
/// in order, nothing committed past them), and once it answers every one arrives, decoded.
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_outage_loses_nothing_and_commits_nothing_early() {
    let world = World::new(2, 1).await;
    let proxy = proxy::FaultProxy::start(&registry_url(), proxy::Faults::default()).await;
    let base = |count: &str, version: &str| {
        schema_records(&[
            "--registry",
            "confluent",
            "--url",
            &registry_url(),
            "--format",
            "avro",
            "--topic",
            &world.topic,
            "--count",
            count,
            "--schema-version",
            version,
        ])
    };
    // The first version's schema is fetched before the outage; the second's only after it.
    let first = base("20", "1");
    let mut placements = produce_schema_records(&world.kafka.bootstrap(), &world.topic, &first);
    let mut doka = Doka::start(&decoding_yaml(&world, &unique("dlq"), &proxy.url, ""), &[]);
    let port = doka.endpoint_port();
    wait_for_records(&world.b, &world.stream, first.len(), WAIT).await;
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;

    proxy.refuse_connections();
    let second = base("40", "2");
    placements.extend(produce_schema_records(
        &world.kafka.bootstrap(),
        &world.topic,
        &second,
    ));
    let before = world.committed(2);
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let records = read_stream(&world.b, &world.stream).await;
        assert_eq!(
            records.len(),
            first.len(),
            "nothing new arrives while the schema cannot be had"
        );
        assert_eq!(
            world.committed(2),
            before,
            "nothing is committed past a waiting record"
        );
    }
    let metrics = http_get(port, "/metrics").expect("doka serves /metrics").1;
    let waiting = sample_sum(&metrics, "doka_records_waiting_for_schema", &[]);
    assert!(waiting > 0.0, "records wait for their schema:\n{metrics}");
    proxy.accept_connections();

    let produced: Vec<Produced> = first.into_iter().chain(second).collect();
    assert_decoded(&world, &produced, &placements).await;
    let (status, log) = doka.terminate();
    assert!(status.success(), "{log}");
    assert_mentions(&log, &["cannot fetch schema id", "wait"]);
    world.finish().await;
}

/// Keys decoded too, with their own schema: the envelope carries the decoded key and its
/// `key_schema`, while the partition key keeps using the key's bytes (same key, same shard).
#[tokio::test(flavor = "multi_thread")]
async fn keys_and_values_decode_each_with_its_own_schema() {
    let world = World::new(2, 1).await;
    let url = registry_url();
    let records = |format: &str, topic: &str| {
        schema_records(&[
            "--registry",
            "confluent",
            "--url",
            &url,
            "--format",
            format,
            "--topic",
            topic,
            "--count",
            "24",
        ])
    };
    let values = records("avro", &world.topic);
    // JSON Schema records under another subject serve as keys; each key is used twice.
    let keys = records("json", &format!("{}-keys", world.topic));
    let produced: Vec<Produced> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Produced {
            key: Some(keys[i / 2].value.clone()),
            ..v.clone()
        })
        .collect();
    let placements = produce_schema_records(&world.kafka.bootstrap(), &world.topic, &produced);
    let key_section = format!("  key:\n    confluent:\n      url: {url}\n");
    let doka = Doka::start(
        &decoding_yaml(&world, &unique("dlq"), &url, &key_section),
        &[],
    );
    let arrived = wait_for_records(&world.b, &world.stream, produced.len(), WAIT).await;
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    let envelopes = envelopes_by_position(&arrived);
    let mut partition_keys: HashMap<Vec<u8>, String> = HashMap::new();
    for (i, at) in placements.iter().enumerate() {
        let envelope = &envelopes[&(at.partition, at.offset)];
        assert_json_eq(&envelope["value"], &values[i].expected, "value");
        assert_eq!(envelope["key_encoding"], "json", "{envelope}");
        assert_json_eq(&envelope["key"], &keys[i / 2].expected, "key");
        assert_eq!(
            envelope["key_schema"]["id"],
            keys[i / 2].schema["id"],
            "{envelope}"
        );
        assert_eq!(
            envelope["value_schema"]["id"], values[i].schema["id"],
            "{envelope}"
        );
    }
    for record in &arrived {
        let envelope: Value = serde_json::from_slice(&record.data).unwrap();
        let at = (
            envelope["partition"].as_i64().unwrap() as i32,
            envelope["offset"].as_i64().unwrap(),
        );
        let index = placements
            .iter()
            .position(|p| (p.partition, p.offset) == at)
            .unwrap();
        let key_bytes = produced[index].key.clone().unwrap();
        let previous = partition_keys.insert(key_bytes, record.partition_key.clone());
        assert!(
            previous.is_none_or(|p| p == record.partition_key),
            "one key's records share a partition key"
        );
    }
    assert_eq!(partition_keys.len(), 12, "twelve keys");
    doka.stop();
    world.finish().await;
}
