//! Record envelopes end to end: the real doka binary between the mock Kafka cluster and account
//! B's destinations (moto's Firehose → S3, kinesis-mock), every record counted and compared field
//! by field with what was produced.
//!
//! - `records.format: envelope` to Firehose: every S3 object is JSON Lines, every line valid
//!   against docs/envelope.schema.json, and each line decodes to exactly the Kafka record it
//!   names by (topic, partition, offset).
//! - The same envelopes on Kinesis, one per Kinesis record, with and without a newline.

mod formats;
mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64_simd::STANDARD as BASE64;
use serde_json::Value;

use formats::*;
use support::*;

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
