//! The `stdout` destination end to end: the real doka binary between the mock Kafka cluster and
//! its own standard output, with no AWS at all (no credentials, no endpoints). Two routes — raw
//! records keyed by the Kafka key with spread hash keys, and envelopes keyed by a JSON field —
//! and every line read back: each record's bytes, key and hash key as the documented rules make
//! them, each record exactly once, per key in Kafka order, and the offsets committed to the end.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// No AWS for doka: the source identity's keys removed from its environment.
const NO_AWS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", UNSET),
    ("AWS_SECRET_ACCESS_KEY", UNSET),
];

/// One record as produced, and where it landed.
struct Sent {
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    at: Placement,
}

/// One line of doka's output.
#[derive(Debug)]
struct Line {
    route: String,
    partition_key: String,
    explicit_hash_key: Option<u128>,
    data: Vec<u8>,
}

fn parse_line(text: &str) -> Line {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    let data = match (field("data"), field("data_base64")) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64_simd::STANDARD
            .decode_to_vec(b64)
            .expect("data_base64 is base64"),
        other => panic!("a line has data or data_base64, exactly one: {other:?} in {text}"),
    };
    Line {
        route: field("route").expect("route"),
        partition_key: field("partition_key").expect("partition_key"),
        explicit_hash_key: field("explicit_hash_key").map(|h| h.parse().expect("a decimal u128")),
        data,
    }
}

#[test]
fn stdout_routes_write_every_record_as_it_would_be_sent_and_commit() {
    let raw_topic = unique("stdout-raw");
    let json_topic = unique("stdout-json");
    let group = unique("doka-stdout");
    let kafka = Kafka::with_topics(&[(&raw_topic, 3), (&json_topic, 2)]);
    let bootstrap = kafka.bootstrap();

    // Keyed text, binary values (not UTF-8) and keyless records on the raw route.
    let mut sent: Vec<Sent> = Vec::new();
    let keyed: Vec<(Vec<u8>, Vec<u8>)> = (0..120)
        .map(|i| {
            let key = format!("customer-{}", i % 7).into_bytes();
            let value = if i % 10 == 3 {
                vec![0xff, 0xfe, i as u8, 0x00, 0x80]
            } else {
                format!("{{\"n\":{i}}}").into_bytes()
            };
            (key, value)
        })
        .collect();
    let placed = produce(&bootstrap, &raw_topic, &keyed);
    sent.extend(keyed.into_iter().zip(placed).map(|((k, v), at)| Sent {
        topic: raw_topic.clone(),
        key: Some(k),
        value: v,
        at,
    }));
    let keyless: Vec<Vec<u8>> = (0..30)
        .map(|i| format!("keyless {i}").into_bytes())
        .collect();
    let placed = produce_keyless(&bootstrap, &raw_topic, &keyless);
    sent.extend(keyless.into_iter().zip(placed).map(|(v, at)| Sent {
        topic: raw_topic.clone(),
        key: None,
        value: v,
        at,
    }));
    // JSON values keyed by a field on the envelope route; one without the field falls back to
    // the Kafka key.
    let orders: Vec<(Vec<u8>, Vec<u8>)> = (0..80)
        .map(|i| {
            let value = if i == 40 {
                br#"{"no_customer":true}"#.to_vec()
            } else {
                format!(r#"{{"order":{i},"customer":{{"id":"c{}"}}}}"#, i % 5).into_bytes()
            };
            (format!("order-{i}").into_bytes(), value)
        })
        .collect();
    let placed = produce(&bootstrap, &json_topic, &orders);
    sent.extend(orders.into_iter().zip(placed).map(|((k, v), at)| Sent {
        topic: json_topic.clone(),
        key: Some(k),
        value: v,
        at,
    }));

    let yaml = format!(
        r#"kafka:
  brokers: "{bootstrap}"
  group_id: {group}
  start_from: earliest
  properties:
    fetch.wait.max.ms: 5
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
batch:
  linger_ms: 5
pipeline:
  commit_interval_ms: 100
http:
  listen: 127.0.0.1:0
routes:
  - name: raw
    topics: [{raw_topic}]
    stdout: {{}}
    partition_key: {{ explicit_hash_key: spread }}
  - name: shaped
    topics: [{json_topic}]
    stdout: {{}}
    records: {{ format: envelope }}
    partition_key: {{ rule: json_field, field: customer.id }}
"#
    );

    // `doka check` walks the Kafka hops and says the destination needs no AWS.
    let check = run_doka("check", &yaml, &[], NO_AWS);
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "doka check failed:\n{report}");
    assert_mentions(&report, &["stdout", "no AWS"]);

    let doka = Doka::start_keeping_stdout(&yaml, NO_AWS);
    for topic in [&raw_topic, &json_topic] {
        let placements: Vec<Placement> = sent
            .iter()
            .filter(|s| &s.topic == topic)
            .map(|s| s.at)
            .collect();
        let ends = end_offsets(&placements);
        let partitions = ends.keys().max().map_or(0, |p| p + 1);
        eventually(
            &format!("group {group} to commit topic {topic} to {ends:?}"),
            Duration::from_secs(60),
            || {
                let now = committed(&bootstrap, &group, topic, partitions);
                (now == ends).then_some(()).ok_or(format!("{now:?}"))
            },
        );
    }
    let (_log, out) = doka.stop_keeping_stdout();

    let lines: Vec<Line> = out.lines().map(parse_line).collect();
    assert_eq!(
        lines.len(),
        sent.len(),
        "every record written once (a clean stop re-sends nothing)"
    );

    // Raw route: the bytes as they were, the Kafka key (or `<topic>-<partition>` without one),
    // a spread hash key on every record. Lines are matched to records by their bytes, which
    // are unique per record on this route.
    let mut raw_by_value: HashMap<&[u8], &Sent> = HashMap::new();
    for s in sent.iter().filter(|s| s.topic == raw_topic) {
        assert!(raw_by_value.insert(&s.value, s).is_none(), "unique values");
    }
    let mut seen_raw = 0;
    // Per partition key, the Kafka (partition, offset) order of its lines.
    let mut order: HashMap<(String, String), Vec<Placement>> = HashMap::new();
    for line in &lines {
        match line.route.as_str() {
            "raw" => {
                let s = raw_by_value
                    .remove(line.data.as_slice())
                    .unwrap_or_else(|| {
                        panic!("a raw line no record (or an earlier line) had: {line:?}")
                    });
                let expected = match &s.key {
                    Some(k) => String::from_utf8(k.clone()).unwrap(),
                    None => format!("{raw_topic}-{}", s.at.partition),
                };
                assert_eq!(line.partition_key, expected, "{line:?}");
                assert!(
                    line.explicit_hash_key.is_some(),
                    "spread sets a hash key: {line:?}"
                );
                order
                    .entry(("raw".into(), line.partition_key.clone()))
                    .or_default()
                    .push(s.at);
                seen_raw += 1;
            }
            "shaped" => {
                let envelope: Value = serde_json::from_slice(&line.data).expect("an envelope");
                assert_eq!(envelope["topic"], json_topic.as_str());
                let at = Placement {
                    partition: envelope["partition"].as_i64().unwrap() as i32,
                    offset: envelope["offset"].as_i64().unwrap(),
                };
                let s = sent
                    .iter()
                    .find(|s| s.topic == json_topic && s.at == at)
                    .unwrap_or_else(|| panic!("an envelope for no record: {envelope}"));
                let value: Value = serde_json::from_slice(&s.value).unwrap();
                assert_eq!(envelope["value"], value, "the value embedded as JSON");
                assert_eq!(envelope["value_encoding"], "json");
                let key = String::from_utf8(s.key.clone().unwrap()).unwrap();
                assert_eq!(envelope["key"], key.as_str());
                let expected = match value.pointer("/customer/id") {
                    Some(id) => id.as_str().unwrap().to_owned(),
                    None => key,
                };
                assert_eq!(line.partition_key, expected, "{envelope}");
                assert_eq!(line.explicit_hash_key, None, "no spread on this route");
                order
                    .entry(("shaped".into(), line.partition_key.clone()))
                    .or_default()
                    .push(at);
            }
            other => panic!("a line for route {other}, which the config does not have"),
        }
    }
    assert_eq!(seen_raw, 150, "every raw record once");
    assert!(raw_by_value.is_empty());
    // A partition key's records from one Kafka partition keep their Kafka order (the raw route
    // spreads its records over shards, which gives up that order, so only its count is checked).
    for ((route, key), placements) in order.iter().filter(|((route, _), _)| route == "shaped") {
        for partition in 0..2 {
            let offsets: Vec<i64> = placements
                .iter()
                .filter(|p| p.partition == partition)
                .map(|p| p.offset)
                .collect();
            assert!(
                offsets.is_sorted(),
                "route {route}, key {key}, partition {partition}: out of Kafka order: {offsets:?}"
            );
        }
    }
}
