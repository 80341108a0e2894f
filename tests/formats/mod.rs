//! What the record-format tests share (`formats_envelopes.rs`, `formats_partition_keys.rs`):
//! Kafka records of every kind, produced to explicit partitions with explicit timestamps, and the
//! shared config without a route.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Kafka records of every kind

/// One Kafka record as produced: the partition and timestamp are set explicitly, so the envelope's
/// can be compared exactly.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    /// `None` value: a null header value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `n` records spread over `partitions`, cycling through values, keys and headers of every kind
/// the envelope must carry (the cycles have coprime lengths, so the combinations vary).
pub fn mixed_records(n: usize, partitions: i32) -> Vec<Rec> {
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
pub fn produce_recs(bootstrap: &str, topic: &str, records: &[Rec]) -> Vec<Placement> {
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

pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Configs

/// The shared test config (role B, endpoints, fast batching and commits) without its one
/// route's topic and stream, for `routes:` or another destination to follow.
pub fn base_yaml(bootstrap: &str, group: &str, ep: &Endpoints) -> String {
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
