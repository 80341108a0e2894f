//! Schema-registry records as real producers write them: tests/support/schema_producer.py runs
//! confluent-kafka-python's serializers against rivven-schema (the Confluent REST API) and
//! aws-glue-schema-registry's against moto's Glue, and prints each record's bytes with the JSON
//! doka must turn it into. Comparing what arrived with that JSON, field by field.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

use super::{Placement, StreamRecord, produce_built};

/// One record as the producer serialised it.
#[derive(Debug, Clone)]
pub struct Produced {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The JSON doka must send for the value (null for a record that must not decode).
    pub expected: Value,
    /// The schema's identity as the registry gave it to the producer.
    pub schema: Value,
}

/// The Confluent-compatible registry the stack runs.
pub fn registry_url() -> String {
    std::env::var("DOKA_TEST_SCHEMA_REGISTRY").unwrap_or("http://127.0.0.1:4631".into())
}

/// moto's Glue (the same server as STS).
pub fn glue_endpoint() -> String {
    std::env::var("DOKA_TEST_GLUE_ENDPOINT").unwrap_or("http://127.0.0.1:4599".into())
}

/// Runs the producer script with `args`; every line it prints is one record.
pub fn schema_records(args: &[&str]) -> Vec<Produced> {
    let python = std::env::var("DOKA_TEST_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/doka-stack/venv/bin/python")
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/schema_producer.py"
    );
    let out = Command::new(&python)
        .arg(script)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", super::ACCOUNT_A_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", super::REGION)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (install the stack: scripts/stack.sh up): {e}")
        });
    assert!(
        out.status.success(),
        "schema_producer.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 lines")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            Produced {
                key: v["key"].as_str().map(|k| k.as_bytes().to_vec()),
                value: base64_simd::STANDARD
                    .decode_to_vec(v["value_b64"].as_str().expect("value_b64"))
                    .expect("base64"),
                expected: v["expected"].clone(),
                schema: v["schema"].clone(),
            }
        })
        .collect()
}

/// Produces the records in order (keyed when they have a key); where each landed.
pub fn produce_schema_records(
    bootstrap: &str,
    topic: &str,
    records: &[Produced],
) -> Vec<Placement> {
    produce_built(bootstrap, &[], topic, records.len(), |i, record| {
        let r = &records[i];
        let record = record.payload(&r.value);
        match &r.key {
            Some(key) => record.key(key),
            None => record,
        }
    })
}

/// Envelopes read back, by (partition, offset); panics on a line that is not one, or on two
/// envelopes for one record.
pub fn envelopes_by_position(records: &[StreamRecord]) -> HashMap<(i32, i64), Value> {
    let mut by_position = HashMap::new();
    for record in records {
        let text = std::str::from_utf8(&record.data).expect("an envelope is UTF-8");
        let envelope: Value =
            serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text}"));
        let position = (
            envelope["partition"].as_i64().expect("partition") as i32,
            envelope["offset"].as_i64().expect("offset"),
        );
        assert!(
            by_position.insert(position, envelope).is_none(),
            "two envelopes for {position:?}"
        );
    }
    by_position
}

/// `got` equals `expected` as JSON: objects by their keys (order aside), arrays in order,
/// integers exactly, other numbers within a relative 1e-6 (Avro `float` is written as its shortest
/// 32-bit text, the producer holds it as a 64-bit float); panics naming the first difference.
pub fn assert_json_eq(got: &Value, expected: &Value, path: &str) {
    match (got, expected) {
        (Value::Object(g), Value::Object(e)) => {
            let mut got_keys: Vec<&String> = g.keys().collect();
            let mut expected_keys: Vec<&String> = e.keys().collect();
            got_keys.sort();
            expected_keys.sort();
            assert_eq!(got_keys, expected_keys, "{path}: the fields differ");
            for (k, v) in e {
                assert_json_eq(&g[k], v, &format!("{path}.{k}"));
            }
        }
        (Value::Array(g), Value::Array(e)) => {
            assert_eq!(
                g.len(),
                e.len(),
                "{path}: array lengths: {got} vs {expected}"
            );
            for (i, (g, e)) in g.iter().zip(e).enumerate() {
                assert_json_eq(g, e, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(g), Value::Number(e)) => {
            if let (Some(g), Some(e)) = (g.as_i64(), e.as_i64()) {
                assert_eq!(g, e, "{path}");
            } else if let (Some(g), Some(e)) = (g.as_u64(), e.as_u64()) {
                assert_eq!(g, e, "{path}");
            } else {
                let (g, e) = (g.as_f64().unwrap(), e.as_f64().unwrap());
                assert!(
                    (g - e).abs() <= 1e-6 * g.abs().max(e.abs()).max(1.0),
                    "{path}: {g} vs {e}"
                );
            }
        }
        _ => assert_eq!(got, expected, "{path}"),
    }
}
