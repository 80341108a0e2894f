//! Partition-key rules end to end: the real doka binary between the mock Kafka cluster and
//! kinesis-mock in account B, one route per rule. The `json_field` and `template` rules, including
//! their fallbacks and the long and binary key policies: every record read back with the
//! documented partition key.

mod formats;
mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use formats::*;
use support::*;

/// One record for the partition-key test: where it goes and the key it must get.
struct KeyCase {
    route: usize,
    partition: i32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    expected: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_key_rules_pick_the_documented_keys() {
    let started = Instant::now();
    let ep = endpoints();
    let b = account_b_kinesis(&ep).await;
    // (route name, topic, stream, partitions, partition_key section)
    let routes: Vec<(&str, String, String, i32, &str)> = vec![
        (
            "customer-hash",
            unique("pk-jf-hash"),
            unique("doka-pk-jf-hash"),
            2,
            "{ rule: json_field, field: customer.id, on_long_key: hash }",
        ),
        (
            "customer-truncate",
            unique("pk-jf-trunc"),
            unique("doka-pk-jf-trunc"),
            1,
            "{ rule: json_field, field: customer.id, on_long_key: truncate }",
        ),
        (
            "topic-partition",
            unique("pk-tpl-tp"),
            unique("doka-pk-tpl-tp"),
            2,
            r#"{ rule: template, template: "{topic}-{partition}" }"#,
        ),
        (
            "key-prefix",
            unique("pk-tpl-key"),
            unique("doka-pk-tpl-key"),
            1,
            r#"{ rule: template, template: "k:{key}" }"#,
        ),
        (
            "key-only",
            unique("pk-tpl-bare"),
            unique("doka-pk-tpl-bare"),
            1,
            r#"{ rule: template, template: "{key}" }"#,
        ),
    ];
    let topic = |r: usize| routes[r].1.clone();
    let long_id: String = (0..300)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let long_accented = "é".repeat(300);
    let binary_key = vec![0xff, 0x01, 0x02, 0x80];
    let case =
        |route: usize, partition: i32, key: Option<&[u8]>, value: &str, expected: String| KeyCase {
            route,
            partition,
            key: key.map(<[u8]>::to_vec),
            value: value.as_bytes().to_vec(),
            expected,
        };
    let mut cases = vec![
        // json_field, on_long_key: hash
        case(
            0,
            0,
            Some(b"k-1"),
            r#"{"customer":{"id":"c-17"},"rid":"jf-1"}"#,
            "c-17".into(),
        ),
        case(
            0,
            1,
            Some(b"k-2"),
            r#"{"customer": {"id": 4242}, "rid": "jf-2"}"#,
            "4242".into(),
        ),
        case(
            0,
            0,
            Some(b"k-3"),
            r#"{"customer":{"id":true},"rid":"jf-3"}"#,
            "true".into(),
        ),
        case(
            0,
            1,
            Some(b"k-4"),
            r#"{"customer":{"id":-7},"rid":"jf-4"}"#,
            "-7".into(),
        ),
        case(
            0,
            0,
            Some(b"k-5"),
            r#"{"customer":{"id":12345678901234567890},"rid":"jf-5"}"#,
            "12345678901234567890".into(),
        ),
        case(
            0,
            1,
            Some(b"k-6"),
            r#"{"rid":"jf-6","customer":{"id":"kunde-ø ✓"}}"#,
            "kunde-ø ✓".into(),
        ),
    ];
    // Missing field, null, object, array, empty, not an object, not JSON: the Kafka key. Odd
    // numbers go to partition 0, even ones to 1.
    let key_fallbacks = [
        r#"{"customer":{"name":"no id"},"rid":"jf-7"}"#,
        r#"{"customer":{"id":null},"rid":"jf-8"}"#,
        r#"{"customer":{"id":{"x":1}},"rid":"jf-9"}"#,
        r#"{"customer":{"id":[1,2]},"rid":"jf-10"}"#,
        r#"{"customer":{"id":""},"rid":"jf-11"}"#,
        r#"{"customer":"flat","rid":"jf-12"}"#,
        r#"[{"customer":{"id":"x"}},"jf-13"]"#,
        "rid=jf-14; not json {",
    ];
    for (n, value) in (7..).zip(key_fallbacks) {
        let key = format!("fallback-{n}");
        cases.push(case(
            0,
            (n + 1) % 2,
            Some(key.as_bytes()),
            value,
            key.clone(),
        ));
    }
    cases.extend([
        // No field and no key either: <topic>-<partition>.
        case(
            0,
            0,
            None,
            "rid=jf-15; not json, no key",
            format!("{}-0", topic(0)),
        ),
        case(
            0,
            1,
            None,
            "rid=jf-16; not json, no key",
            format!("{}-1", topic(0)),
        ),
        case(0, 1, None, r#"{"rid":"jf-17"}"#, format!("{}-1", topic(0))),
        // A binary Kafka key behind the fallback: its MD5.
        case(
            0,
            0,
            Some(&binary_key),
            r#"{"rid":"jf-18"}"#,
            md5_hex(&binary_key),
        ),
        // An id of 300 characters: its MD5.
        case(
            0,
            1,
            Some(b"k-19"),
            &format!(r#"{{"customer":{{"id":"{long_id}"}},"rid":"jf-19"}}"#),
            md5_hex(long_id.as_bytes()),
        ),
        // json_field, on_long_key: truncate: the first 256 characters.
        case(
            1,
            0,
            Some(b"k-1"),
            &format!(r#"{{"customer":{{"id":"{long_id}"}},"rid":"jt-1"}}"#),
            long_id[..256].to_owned(),
        ),
        case(
            1,
            0,
            Some(b"k-2"),
            &format!(r#"{{"customer":{{"id":"{long_accented}"}},"rid":"jt-2"}}"#),
            "é".repeat(256),
        ),
        case(
            1,
            0,
            Some("q".repeat(300).as_bytes()),
            r#"{"rid":"jt-3"}"#,
            "q".repeat(256),
        ),
        case(
            1,
            0,
            Some(b"k-4"),
            r#"{"customer":{"id":"short"},"rid":"jt-4"}"#,
            "short".into(),
        ),
        // template {topic}-{partition}: whatever the key.
        case(2, 0, Some(b"k-1"), "rid=tp-1", format!("{}-0", topic(2))),
        case(2, 1, Some(b"k-1"), "rid=tp-2", format!("{}-1", topic(2))),
        case(2, 0, None, "rid=tp-3", format!("{}-0", topic(2))),
        case(
            2,
            1,
            Some(&binary_key),
            "rid=tp-4",
            format!("{}-1", topic(2)),
        ),
        case(
            2,
            1,
            Some("z".repeat(300).as_bytes()),
            "rid=tp-5",
            format!("{}-1", topic(2)),
        ),
        // template k:{key}
        case(3, 0, Some(b"abc"), "rid=tk-1", "k:abc".into()),
        case(
            3,
            0,
            Some(&binary_key),
            "rid=tk-2",
            format!("k:{}", md5_hex(&binary_key)),
        ),
        case(3, 0, None, "rid=tk-3", "k:".into()),
        case(3, 0, Some(b""), "rid=tk-4", "k:".into()),
        case(3, 0, Some("ключ".as_bytes()), "rid=tk-5", "k:ключ".into()),
        case(
            3,
            0,
            Some("y".repeat(254).as_bytes()),
            "rid=tk-6",
            format!("k:{}", "y".repeat(254)),
        ),
        case(
            3,
            0,
            Some("x".repeat(255).as_bytes()),
            "rid=tk-7",
            md5_hex(format!("k:{}", "x".repeat(255)).as_bytes()),
        ),
        // template {key}: no key (or an empty one) makes an empty result: <topic>-<partition>.
        case(4, 0, None, "rid=tb-1", format!("{}-0", topic(4))),
        case(4, 0, Some(b""), "rid=tb-2", format!("{}-0", topic(4))),
        case(4, 0, Some(b"abc"), "rid=tb-3", "abc".into()),
        case(4, 0, Some(&binary_key), "rid=tb-4", md5_hex(&binary_key)),
    ]);
    let values: HashSet<&[u8]> = cases.iter().map(|c| c.value.as_slice()).collect();
    assert_eq!(values.len(), cases.len(), "values identify the records");

    let group = unique("doka-group");
    let topics: Vec<(&str, i32)> = routes.iter().map(|r| (r.1.as_str(), r.3)).collect();
    let kafka = Kafka::with_topics(&topics);
    let bootstrap = kafka.bootstrap();
    futures::future::join_all(routes.iter().map(|r| create_stream(&b, &r.2, 1))).await;

    let mut ends = Vec::new();
    for (r, (_, topic, _, _, _)) in routes.iter().enumerate() {
        let recs: Vec<Rec> = cases
            .iter()
            .filter(|c| c.route == r)
            .map(|c| Rec {
                partition: c.partition,
                key: c.key.clone(),
                value: Some(c.value.clone()),
                headers: Vec::new(),
                timestamp: now_ms(),
            })
            .collect();
        ends.push(end_offsets(&produce_recs(&bootstrap, topic, &recs)));
    }

    let mut yaml = base_yaml(&bootstrap, &group, &ep) + "routes:\n";
    for (name, topic, stream, _, partition_key) in &routes {
        yaml += &format!(
            "  - name: {name}\n    topics: [{topic}]\n    kinesis: {{ stream: {stream} }}\n    \
             partition_key: {partition_key}\n"
        );
    }
    let doka = Doka::start(&yaml, &[]);
    for (r, (_, topic, stream, _, _)) in routes.iter().enumerate() {
        let n = cases.iter().filter(|c| c.route == r).count();
        wait_for_records(&b, stream, n, Duration::from_secs(120)).await;
        wait_for_topic_committed(&bootstrap, &group, topic, &ends[r], Duration::from_secs(60))
            .await;
    }
    doka.stop();

    let mut wrong = Vec::new();
    let mut copies = 0;
    let mut checked = 0;
    for (r, (name, _, stream, _, _)) in routes.iter().enumerate() {
        let mine: HashMap<&[u8], &KeyCase> = cases
            .iter()
            .filter(|c| c.route == r)
            .map(|c| (c.value.as_slice(), c))
            .collect();
        let mut seen = HashSet::new();
        for record in read_stream(&b, stream).await {
            let c = mine.get(record.data.as_slice()).unwrap_or_else(|| {
                panic!(
                    "{stream} holds a record that route {name} was not given: {:?}",
                    String::from_utf8_lossy(&record.data)
                )
            });
            if record.partition_key != c.expected {
                wrong.push(format!(
                    "route {name}, value {:?}: partition key {:?}, expected {:?}",
                    String::from_utf8_lossy(&c.value),
                    record.partition_key,
                    c.expected
                ));
            }
            checked += 1;
            if !seen.insert(record.data.clone()) {
                copies += 1;
            }
        }
        let missing: Vec<String> = mine
            .keys()
            .filter(|v| !seen.contains(**v))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert!(
            missing.is_empty(),
            "route {name}: records missing: {missing:?}"
        );
    }
    assert!(
        wrong.is_empty(),
        "wrong partition keys:\n{}",
        wrong.join("\n")
    );
    println!(
        "{} records over {} routes, {checked} read back with the documented partition key, \
         {copies} copies; {:?}",
        cases.len(),
        routes.len(),
        started.elapsed()
    );
    for (_, _, stream, _, _) in &routes {
        delete_stream(&b, stream).await;
    }
}
