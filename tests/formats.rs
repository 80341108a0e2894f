//! Record formats and partition-key rules end to end: the real doka binary between the mock Kafka
//! cluster and account B's destinations (moto's Firehose → S3, kinesis-mock), every record
//! counted and compared field by field with what was produced.
//!
//! - `records.format: envelope` to Firehose: every S3 object is JSON Lines, every line valid
//!   against docs/envelope.schema.json, and each line decodes to exactly the Kafka record it
//!   names by (topic, partition, offset).
//! - The same envelopes on Kinesis, one per Kinesis record, with and without a newline.
//! - The `json_field` and `template` partition-key rules, including their fallbacks and the long
//!   and binary key policies.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64_simd::STANDARD as BASE64;
use serde_json::Value;

use support::*;

// ---------------------------------------------------------------------------------------------
// Kafka records of every kind

/// One Kafka record as produced: the partition and timestamp are set explicitly, so the envelope's
/// can be compared exactly.
#[derive(Debug, Clone)]
struct Rec {
    partition: i32,
    key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    value: Option<Vec<u8>>,
    /// `None` value: a null header value.
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `n` records spread over `partitions`, cycling through values, keys and headers of every kind
/// the envelope must carry (the cycles have coprime lengths, so the combinations vary).
fn mixed_records(n: usize, partitions: i32) -> Vec<Rec> {
    let base = now_ms() - 60_000;
    (0..n)
        .map(|i| {
            let value: Option<Vec<u8>> = match i % 12 {
                // JSON object, compact.
                0 => Some(format!(r#"{{"id":{i},"name":"order-{i}","ok":true}}"#).into()),
                // JSON array, with whitespace to drop.
                1 => Some(format!(r#"[ {i}, "a b", true, null, {{ "x": [ ] }} ]"#).into()),
                // JSON numbers whose text must stay as written.
                2 if i % 24 == 2 => Some(format!("{i}.50").into()),
                2 => Some(format!("-{i}E+2").into()),
                // Nested JSON, pretty-printed over several lines, with tabs, escapes in strings
                // (including an escaped newline and spaces that must stay) and a big integer.
                3 => Some(
                    format!(
                        "{{\n  \"order\": {{\n    \"id\": {i},\n    \"items\": [\n      \
                         {{ \"sku\": \"A-1\", \"qty\": 2 }},\n      {{ \"sku\": \"B  7\", \
                         \"note\": \"tab\\there, newline\\nthere \\\"q\\\" \\u00e9\" }}\n    \
                         ],\n\t\"amount\": 19.90,\n    \"big\": 123456789012345678901234567890,\n    \
                         \"e\": 1E+2\n  }}\n}}\n"
                    )
                    .into(),
                ),
                // UTF-8 text that is not JSON, with a raw newline, a tab, quotes and a backslash.
                4 => Some(
                    format!("héllo wörld ✓ {i}\nsecond line\t\"quoted\" \\ back\u{1F600}").into(),
                ),
                // Binary: not UTF-8, with a newline byte inside.
                5 => Some(vec![0xff, 0xfe, 0x00, 0x80, i as u8, b'\n', 0xc3, 0x28]),
                // A tombstone.
                6 => None,
                // An empty value.
                7 => Some(Vec::new()),
                // A JSON string.
                8 => Some(format!("\"quoted text {i}\"").into()),
                // Text that starts like JSON but is not.
                9 => Some(format!("{{\"id\": {i},").into()),
                // The four bytes `null`: JSON null, not a tombstone.
                10 => Some(b"null".to_vec()),
                // JSON `true` with whitespace around it.
                _ => Some(b" \ttrue\n".to_vec()),
            };
            let key: Option<Vec<u8>> = match i % 7 {
                0 => None,
                1 => Some(vec![0x00, 0xff, i as u8, 0x80]),
                2 => Some(format!("customer-{}", i % 13).into()),
                3 => Some(format!(r#"{{"id": {i}}}"#).into()),
                4 => Some(format!("{i}").into()),
                5 => Some(format!("ключ-{i}").into()),
                _ => Some(Vec::new()),
            };
            let headers: Vec<(String, Option<Vec<u8>>)> = match i % 5 {
                0 => Vec::new(),
                1 => vec![("trace".into(), Some(format!("abc-{i}").into()))],
                2 => vec![
                    ("binary".into(), Some(vec![0xff, 0x00, 0xc3])),
                    ("nothing".into(), None),
                ],
                3 => vec![
                    ("origin".into(), None),
                    ("origin".into(), Some(b"eu-west-1".to_vec())),
                    ("attempt".into(), Some(b"2".to_vec())),
                    ("json".into(), Some(br#"{"a": [1, 2], "b": "c d"}"#.to_vec())),
                    ("origin".into(), Some(b"us-east-1".to_vec())),
                ],
                _ => vec![
                    ("ä-ключ".into(), Some("wert ✓".as_bytes().to_vec())),
                    ("empty".into(), Some(Vec::new())),
                ],
            };
            Rec {
                partition: (i % partitions as usize) as i32,
                key,
                value,
                headers,
                timestamp: base + i as i64,
            }
        })
        .collect()
}

/// Produces `records` in order to their partitions; returns where each landed, from the delivery
/// reports.
fn produce_recs(bootstrap: &str, topic: &str, records: &[Rec]) -> Vec<Placement> {
    let placements = produce_built(bootstrap, &[], topic, records.len(), |i, record| {
        let r = &records[i];
        let mut record = record.partition(r.partition).timestamp(r.timestamp);
        if let Some(key) = &r.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &r.value {
            record = record.payload(value.as_slice());
        }
        if !r.headers.is_empty() {
            record = record.headers(owned_headers(
                r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            ));
        }
        record
    });
    for (i, (p, r)) in placements.iter().zip(records).enumerate() {
        assert_eq!(p.partition, r.partition, "record {i}'s partition");
    }
    placements
}

// ---------------------------------------------------------------------------------------------
// Checking envelopes

const FIELDS: [&str; 10] = [
    "topic",
    "partition",
    "offset",
    "timestamp",
    "timestamp_type",
    "key",
    "key_encoding",
    "value",
    "value_encoding",
    "headers",
];

/// (topic, partition, offset): an envelope's identity.
type Identity = (String, i32, i64);

/// The encoding docs/ENVELOPE.md prescribes for these bytes (none of the test's values hits the
/// depth or surrogate exceptions).
fn expected_encoding(bytes: Option<&[u8]>) -> Option<&'static str> {
    let bytes = bytes?;
    Some(match std::str::from_utf8(bytes) {
        Ok(text) if serde_json::from_str::<Value>(text).is_ok() => "json",
        Ok(_) => "string",
        Err(_) => "base64",
    })
}

/// JSON text without the whitespace outside its strings.
fn compact(text: &[u8]) -> String {
    let mut out = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push(b);
            in_string = b == b'"';
        }
    }
    String::from_utf8(out).unwrap()
}

/// The keys of the top-level object in the order they are written.
fn top_level_keys(line: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
                i += 1;
            }
            b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                expect_key = depth == 1;
                i += 1;
            }
            b'"' => {
                let mut end = i + 1;
                while end < line.len() && line[end] != b'"' {
                    end += if line[end] == b'\\' { 2 } else { 1 };
                }
                end += 1;
                if depth == 1 && expect_key {
                    keys.push(serde_json::from_slice(&line[i..end.min(line.len())]).unwrap());
                    expect_key = false;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    keys
}

/// Checks one encoded field (`value_field`, `encoding_field`) of `object` against the bytes it
/// must carry; `line` is the whole envelope, for the exact-text check of embedded JSON.
fn check_encoded(
    object: &Value,
    value_field: &str,
    encoding_field: &str,
    expected: Option<&[u8]>,
    line: &str,
    what: &str,
) {
    let encoding = expected_encoding(expected);
    let got = &object[value_field];
    assert_eq!(
        object[encoding_field].as_str(),
        encoding,
        "{what}: {encoding_field} of {expected:?} in {line}"
    );
    match (encoding, expected) {
        (None, _) => assert!(got.is_null(), "{what}: {value_field} must be null: {line}"),
        (Some("json"), Some(bytes)) => {
            let parsed: Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(got, &parsed, "{what}: {value_field} in {line}");
            // Compacted, but otherwise as produced: numbers keep their text.
            let exact = format!(
                "\"{value_field}\":{},\"{encoding_field}\":\"json\"",
                compact(bytes)
            );
            assert!(
                line.contains(&exact),
                "{what}: `{exact}` (the JSON compacted, numbers as written) missing from {line}"
            );
        }
        (Some("string"), Some(bytes)) => assert_eq!(
            got.as_str(),
            Some(std::str::from_utf8(bytes).unwrap()),
            "{what}: {value_field} in {line}"
        ),
        (Some("base64"), Some(bytes)) => {
            let text = got
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {value_field} is no string: {line}"));
            assert_eq!(
                BASE64.decode_to_vec(text).ok().as_deref(),
                Some(bytes),
                "{what}: {value_field} in {line}"
            );
        }
        _ => unreachable!(),
    }
}

/// Checks that `line` is one compact envelope of a produced record: its identity names one, and
/// every field carries exactly what was produced. Returns the identity.
fn check_envelope(line: &[u8], produced: &HashMap<Identity, &Rec>) -> Identity {
    let text = std::str::from_utf8(line)
        .unwrap_or_else(|e| panic!("an envelope that is not UTF-8 ({e}): {line:?}"));
    assert!(
        !text.contains('\n') && !text.contains('\r'),
        "a raw line break inside an envelope: {text:?}"
    );
    let envelope: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("an envelope that is not JSON ({e}): {text}"));
    assert!(envelope.is_object(), "not a JSON object: {text}");
    assert_eq!(
        top_level_keys(line),
        FIELDS,
        "the envelope's fields, in the documented order: {text}"
    );
    let identity: Identity = (
        envelope["topic"].as_str().expect("topic").to_owned(),
        envelope["partition"].as_i64().expect("partition") as i32,
        envelope["offset"].as_i64().expect("offset"),
    );
    let rec = produced
        .get(&identity)
        .unwrap_or_else(|| panic!("an envelope of no produced record {identity:?}: {text}"));
    let what = format!("{}[{}]@{}", identity.0, identity.1, identity.2);
    assert_eq!(
        envelope["timestamp"].as_i64(),
        Some(rec.timestamp),
        "{what}: timestamp in {text}"
    );
    assert_eq!(
        envelope["timestamp_type"].as_str(),
        Some("create_time"),
        "{what}: timestamp_type in {text}"
    );
    check_encoded(
        &envelope,
        "key",
        "key_encoding",
        rec.key.as_deref(),
        text,
        &what,
    );
    check_encoded(
        &envelope,
        "value",
        "value_encoding",
        rec.value.as_deref(),
        text,
        &what,
    );
    let headers = envelope["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: headers is no array: {text}"));
    assert_eq!(
        headers.len(),
        rec.headers.len(),
        "{what}: headers {:?} in {text}",
        rec.headers
    );
    for (i, (header, (key, value))) in headers.iter().zip(&rec.headers).enumerate() {
        assert_eq!(
            top_level_keys(header.to_string().as_bytes()).len(),
            3,
            "{what}: header {i} has key, value and value_encoding only: {text}"
        );
        assert_eq!(
            header["key"].as_str(),
            Some(key.as_str()),
            "{what}: header {i}'s key in {text}"
        );
        check_encoded(
            header,
            "value",
            "value_encoding",
            value.as_deref(),
            text,
            &format!("{what} header {i} ({key})"),
        );
    }
    identity
}

/// The envelopes of every record in `placements`, by identity.
fn by_identity<'a>(
    topic: &str,
    records: &'a [Rec],
    placements: &[Placement],
) -> HashMap<Identity, &'a Rec> {
    records
        .iter()
        .zip(placements)
        .map(|(r, p)| ((topic.to_owned(), p.partition, p.offset), r))
        .collect()
}

/// Checks every envelope, and that each produced record is among them; copies of a record must be
/// identical. Returns the number of copies beyond the first.
fn check_all_envelopes(lines: &[&[u8]], produced: &HashMap<Identity, &Rec>) -> usize {
    let mut seen: HashMap<Identity, &[u8]> = HashMap::new();
    let mut copies = 0;
    for line in lines {
        let identity = check_envelope(line, produced);
        if let Some(first) = seen.get(&identity) {
            assert_eq!(first, line, "copies of {identity:?} differ");
            copies += 1;
        } else {
            seen.insert(identity, line);
        }
    }
    let mut missing: Vec<&Identity> = produced.keys().filter(|i| !seen.contains_key(*i)).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} produced records have no envelope: {missing:?}",
        missing.len(),
        produced.len()
    );
    copies
}

/// The stack venv's python (it has `jsonschema`).
fn python() -> PathBuf {
    let path = std::env::var_os("DOKA_TEST_KINESIS_AGG_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/doka-stack/venv/bin/python")
        });
    assert!(
        path.is_file(),
        "{} does not exist: run `scripts/stack.sh up` (it installs the venv with jsonschema)",
        path.display()
    );
    path
}

/// Runs tests/support/validate_envelope.py over `jsonl` against docs/envelope.schema.json:
/// (exit code, what it printed).
fn validate_with_schema(jsonl: Vec<u8>) -> (Option<i32>, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/validate_envelope.py"
    );
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/envelope.schema.json");
    let mut child = Command::new(python())
        .args([script, schema])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run validate_envelope.py");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&jsonl));
    let output = child.wait_with_output().expect("the validator's output");
    writer.join().unwrap().expect("feed the validator");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Every line must be valid against the schema; and the validator must refuse an envelope
/// without its `offset` (so a validator that accepts anything fails the test).
fn assert_schema_valid(lines: &[&[u8]]) {
    let mut jsonl = Vec::new();
    for line in lines {
        jsonl.extend_from_slice(line);
        jsonl.push(b'\n');
    }
    let (code, out) = validate_with_schema(jsonl);
    assert_eq!(
        code,
        Some(0),
        "envelopes invalid against docs/envelope.schema.json: {out}"
    );
    let mut broken: Value = serde_json::from_slice(lines[0]).unwrap();
    broken.as_object_mut().unwrap().remove("offset");
    let (code, out) = validate_with_schema(format!("{broken}\n").into_bytes());
    assert_eq!(
        code,
        Some(1),
        "the validator accepted an envelope without offset: {out}"
    );
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The partition key of the default `kafka_key` rule (keys here are at most 256 characters).
fn kafka_key_rule(key: Option<&[u8]>, topic: &str, partition: i32) -> String {
    match key {
        None | Some([]) => format!("{topic}-{partition}"),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => md5_hex(bytes),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Configs

/// The shared test config (role B, endpoints, fast batching and commits) without its one
/// route's topic and stream, for `routes:` or another destination to follow.
fn base_yaml(bootstrap: &str, group: &str, ep: &Endpoints) -> String {
    let yaml = DokaSetup {
        bootstrap,
        group,
        topic: "placeholder-topic",
        stream: "placeholder-stream",
        sts: &ep.sts,
        kinesis: &ep.kinesis,
    }
    .yaml();
    let mut out = yaml.clone();
    for part in [
        "  topics: [placeholder-topic]\n",
        "kinesis:\n  stream: placeholder-stream\n",
    ] {
        assert!(yaml.contains(part), "{part:?} missing from {yaml}");
        out = out.replace(part, "");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_to_s3_holds_every_record_as_json_lines() {
    const N: usize = 330;
    const PARTITIONS: i32 = 4;
    const PREFIX: &str = "envelopes/";
    let started = Instant::now();
    let ep = endpoints();
    let (firehose_b, s3_b) = support::firehose::account_b_clients(&ep).await;
    let (firehose_a, s3_a) = support::firehose::account_a_clients(&ep);
    let name = unique("doka-fh-env");
    let bucket = unique("doka-fh-env-b");
    support::firehose::create_delivery_stream(&firehose_b, &s3_b, &name, &bucket, PREFIX).await;

    // Account A sees neither B's delivery stream nor its bucket.
    support::firehose::assert_hidden_from_a(&firehose_a, &s3_a, &name, &bucket).await;
    // A same-named delivery stream in A must stay empty: only the assumed role may write.
    let bucket_a = unique("doka-fh-env-a");
    support::firehose::create_delivery_stream(&firehose_a, &s3_a, &name, &bucket_a, PREFIX).await;

    let topic = unique("envelopes");
    let group = unique("doka-group");
    let kafka = Kafka::new(&topic, PARTITIONS);
    let bootstrap = kafka.bootstrap();
    let records = mixed_records(N, PARTITIONS);
    let placements = produce_recs(&bootstrap, &topic, &records);
    let produced = by_identity(&topic, &records, &placements);

    // The one-route shorthand: kafka.topics and firehose.delivery_stream at the top level.
    let yaml = base_yaml(&bootstrap, &group, &ep)
        .replacen(
            "aws:\n",
            &format!(
                "aws:\n  firehose_endpoint: {}\n",
                support::firehose::endpoint(&ep)
            ),
            1,
        )
        .replacen(
            "  group_id: ",
            &format!("  topics: [{topic}]\n  group_id: "),
            1,
        )
        + &format!("firehose:\n  delivery_stream: {name}\nrecords:\n  format: envelope\n");
    let doka = Doka::start(&yaml, &[]);
    // doka commits only what Firehose accepted, and moto writes each request into the bucket
    // before answering: once the offsets reach the ends, every record is in S3.
    wait_for_topic_committed(
        &bootstrap,
        &group,
        &topic,
        &end_offsets(&placements),
        Duration::from_secs(120),
    )
    .await;
    support::firehose::wait_for_lines(&s3_b, &bucket, PREFIX, N, Duration::from_secs(15)).await;
    let log = doka.stop();

    // Read after the commit: everything committed is in the bucket.
    let objects = support::firehose::read_objects(&s3_b, &bucket, PREFIX).await;
    for object in &objects {
        assert_eq!(
            object.last(),
            Some(&b'\n'),
            "an S3 object that does not end with a newline: not JSON Lines"
        );
    }
    let (lines, terminated) = support::firehose::lines(&objects);
    assert_eq!(lines.len(), terminated);
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let copies = check_all_envelopes(&lines, &produced);
    assert_schema_valid(&lines);
    assert!(
        log.contains(&format!("consumed={N}")),
        "the summary counts every record: {log}"
    );

    assert!(
        support::firehose::read_objects(&s3_a, &bucket_a, "")
            .await
            .is_empty(),
        "account A's same-named delivery stream was written to"
    );
    println!(
        "produced {N} records over {PARTITIONS} partitions; {} S3 objects, {} lines, every record \
         found, {copies} copies, all valid against the schema; account A's bucket empty; {:?}",
        objects.len(),
        lines.len(),
        started.elapsed()
    );
    support::firehose::delete_delivery_stream(&firehose_b, &s3_b, &name, &bucket).await;
    support::firehose::delete_delivery_stream(&firehose_a, &s3_a, &name, &bucket_a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_on_kinesis_round_trip() {
    const N: usize = 220;
    const PARTITIONS: i32 = 3;
    let started = Instant::now();
    let ep = endpoints();
    let b = account_b_kinesis(&ep).await;
    let bare = (unique("env-bare"), unique("doka-env-bare"));
    let lines = (unique("env-lines"), unique("doka-env-lines"));
    let group = unique("doka-group");
    let kafka = Kafka::with_topics(&[(&bare.0, PARTITIONS), (&lines.0, PARTITIONS)]);
    let bootstrap = kafka.bootstrap();
    futures::join!(
        create_stream(&b, &bare.1, 2),
        create_stream(&b, &lines.1, 2)
    );

    let records = mixed_records(N, PARTITIONS);
    let bare_placements = produce_recs(&bootstrap, &bare.0, &records);
    let lines_placements = produce_recs(&bootstrap, &lines.0, &records);
    let mut produced = by_identity(&bare.0, &records, &bare_placements);
    produced.extend(by_identity(&lines.0, &records, &lines_placements));

    let yaml = base_yaml(&bootstrap, &group, &ep)
        + &format!(
            "routes:
  - name: envelopes
    topics: [{}]
    kinesis: {{ stream: {} }}
    records: {{ format: envelope }}
  - name: envelope-lines
    topics: [{}]
    kinesis: {{ stream: {} }}
    records: {{ format: envelope, delimiter: newline }}
",
            bare.0, bare.1, lines.0, lines.1
        );
    let doka = Doka::start(&yaml, &[]);
    wait_for_records(&b, &bare.1, N, Duration::from_secs(120)).await;
    wait_for_records(&b, &lines.1, N, Duration::from_secs(120)).await;
    for (topic, placements) in [(&bare.0, &bare_placements), (&lines.0, &lines_placements)] {
        wait_for_topic_committed(
            &bootstrap,
            &group,
            topic,
            &end_offsets(placements),
            Duration::from_secs(60),
        )
        .await;
    }
    doka.stop();

    let mut all_lines: Vec<Vec<u8>> = Vec::new();
    let mut copies = 0;
    for (topic, stream, newline) in [(&bare.0, &bare.1, false), (&lines.0, &lines.1, true)] {
        let in_stream = read_stream(&b, stream).await;
        let mut envelopes: Vec<&[u8]> = Vec::new();
        for r in &in_stream {
            let data = r.data.as_slice();
            let envelope = if newline {
                assert_eq!(
                    data.last(),
                    Some(&b'\n'),
                    "{stream}: a record without its newline: {:?}",
                    String::from_utf8_lossy(data)
                );
                &data[..data.len() - 1]
            } else {
                data
            };
            assert!(
                envelope.first() == Some(&b'{') && envelope.last() == Some(&b'}'),
                "{stream}: a record that is not exactly one JSON object (newline {newline}): {:?}",
                String::from_utf8_lossy(data)
            );
            let identity = check_envelope(envelope, &produced);
            assert_eq!(&identity.0, topic, "{stream} holds another route's record");
            // The default partition-key rule (kafka_key) applies to envelopes too.
            let rec = produced[&identity];
            assert_eq!(
                r.partition_key,
                kafka_key_rule(rec.key.as_deref(), &identity.0, identity.1),
                "{stream}: partition key of {identity:?}"
            );
            envelopes.push(envelope);
        }
        let mine: HashMap<Identity, &Rec> = produced
            .iter()
            .filter(|(i, _)| &i.0 == topic)
            .map(|(i, r)| (i.clone(), *r))
            .collect();
        copies += check_all_envelopes(&envelopes, &mine);
        all_lines.extend(envelopes.iter().map(|e| e.to_vec()));
    }
    let all: Vec<&[u8]> = all_lines.iter().map(Vec::as_slice).collect();
    assert_schema_valid(&all);
    println!(
        "produced {N} records to each of 2 topics; {} envelopes read back from 2 streams, every \
         record found, {copies} copies, all valid against the schema; {:?}",
        all.len(),
        started.elapsed()
    );
    for stream in [&bare.1, &lines.1] {
        delete_stream(&b, stream).await;
    }
}

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

/// The envelope checks must refuse what docs/ENVELOPE.md rules out, or the tests above could not
/// fail: each change to a correct envelope (the documentation's own example) must be caught.
#[test]
fn the_envelope_checks_refuse_what_the_docs_rule_out() {
    let rec = Rec {
        partition: 1,
        key: Some(vec![0x00, 0x01, 0x02, 0xff]),
        value: Some(b"{\"order_id\": 1001,\n \"amount\": 19.90}".to_vec()),
        headers: vec![
            ("checksum".into(), Some(vec![0xc0, 0xff, 0xee])),
            ("origin".into(), None),
            ("origin".into(), Some(b"eu-west-1".to_vec())),
            ("attempt".into(), Some(b"2".to_vec())),
        ],
        timestamp: 1733333333000,
    };
    let produced: HashMap<Identity, &Rec> = [(("sensors".to_owned(), 1, 12345), &rec)].into();
    let good = r#"{"topic":"sensors","partition":1,"offset":12345,"timestamp":1733333333000,"timestamp_type":"create_time","key":"AAEC/w==","key_encoding":"base64","value":{"order_id":1001,"amount":19.90},"value_encoding":"json","headers":[{"key":"checksum","value":"wP/u","value_encoding":"base64"},{"key":"origin","value":null,"value_encoding":null},{"key":"origin","value":"eu-west-1","value_encoding":"string"},{"key":"attempt","value":2,"value_encoding":"json"}]}"#;
    assert_eq!(
        check_envelope(good.as_bytes(), &produced),
        ("sensors".to_owned(), 1, 12345)
    );
    let value_b64 = BASE64.encode_to_string(rec.value.as_ref().unwrap());
    let changes: Vec<(&str, String, String)> = vec![
        ("a number's text", "19.90}".into(), "19.9}".into()),
        (
            "JSON as base64",
            r#""value":{"order_id":1001,"amount":19.90},"value_encoding":"json""#.into(),
            format!(r#""value":"{value_b64}","value_encoding":"base64""#),
        ),
        (
            "the key's encoding",
            r#""key_encoding":"base64""#.into(),
            r#""key_encoding":"string""#.into(),
        ),
        (
            "the field order",
            r#""key":"AAEC/w==","key_encoding":"base64""#.into(),
            r#""key_encoding":"base64","key":"AAEC/w==""#.into(),
        ),
        (
            "the header order",
            r#"{"key":"origin","value":null,"value_encoding":null},{"key":"origin","value":"eu-west-1","value_encoding":"string"}"#.into(),
            r#"{"key":"origin","value":"eu-west-1","value_encoding":"string"},{"key":"origin","value":null,"value_encoding":null}"#.into(),
        ),
        (
            "a header missing",
            r#",{"key":"attempt","value":2,"value_encoding":"json"}"#.into(),
            String::new(),
        ),
        (
            "a null header value as empty text",
            r#""value":null,"value_encoding":null"#.into(),
            r#""value":"","value_encoding":"string""#.into(),
        ),
        ("the offset", "12345".into(), "12346".into()),
        ("the timestamp", "1733333333000".into(), "1733333333001".into()),
        ("the timestamp type", "create_time".into(), "log_append_time".into()),
        ("a raw newline", r#","value":{"#.into(), ",\n\"value\":{".into()),
    ];
    for (what, from, to) in changes {
        assert!(good.contains(&from), "{what}: {from} not in the example");
        let bad = good.replacen(&from, &to, 1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_envelope(bad.as_bytes(), &produced)
        }));
        assert!(caught.is_err(), "a change of {what} went unnoticed: {bad}");
    }
}
