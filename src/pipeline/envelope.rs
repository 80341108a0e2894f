//! The `envelope` record format: one Kafka record as one self-describing JSON object.
//!
//! ```json
//! {"topic":"orders","partition":3,"offset":42,"timestamp":1733333333000,"timestamp_type":"create_time","key":"customer-1","key_encoding":"string","value":{"a":1},"value_encoding":"json","headers":[{"key":"trace","value":"abc","value_encoding":"string"}]}
//! ```
//!
//! Fields, always all of them and always in this order: `topic`, `partition`, `offset`,
//! `timestamp` (ms since the epoch, or null), `timestamp_type` (`create_time`, `log_append_time`
//! or null), `key`, `key_encoding`, `value`, `value_encoding`, `headers` (`[]` when none; each
//! `{"key","value","value_encoding"}`, in the record's order, keys may repeat).
//!
//! Each of key, value and header value is written the most readable way its bytes allow, and its
//! `*_encoding` says which:
//! - `null`: absent (null key, tombstone, null header value); the field is JSON null.
//! - `json`: valid UTF-8 that parses as a JSON value: embedded as JSON, re-emitted compactly
//!   (JSON whitespace outside strings dropped) but otherwise byte for byte, so big integers,
//!   decimals and key order stay exactly as the producer wrote them.
//! - `string`: other valid UTF-8 (including the empty value): a JSON string.
//! - `base64`: anything else: standard base64, with padding.
//!
//! Why: downstream readers (Athena, Spark, a Lambda) get one stable, self-describing shape for
//! every record, whatever its bytes, and need no out-of-band knowledge to decode it. Every envelope
//! carries the record's identity, (`topic`, `partition`, `offset`), so consumers can drop the
//! duplicates that at-least-once delivery produces. The object never contains a raw newline, so
//! with a newline delimiter the output is valid JSON Lines. The format is documented in
//! `docs/ENVELOPE.md` and `docs/envelope.schema.json`: fields are only ever added, never renamed
//! or removed.

use super::{Fetched, Timestamp};
use crate::json_text::push_compact_json;

/// Appends `record` as one compact envelope JSON object to `out`, without any delimiter (the
/// caller adds it).
pub fn encode(record: &impl Fetched, out: &mut Vec<u8>) {
    encode_with(
        record,
        Side::Bytes(record.key()),
        Side::Bytes(record.value()),
        out,
    );
}

/// One side (key or value) of a record as the envelope writes it.
#[derive(Debug, Clone, Copy)]
pub enum Side<'a> {
    /// The bytes, written the most readable way (the route does not decode this side).
    Bytes(Option<&'a [u8]>),
    /// Decoded with a registry schema: its JSON, and the schema's identity object (written as
    /// `…_schema` after `…_encoding`, which is `json`).
    Decoded { json: &'a [u8], schema: &'a [u8] },
    /// The route decodes this side, this record's was not (absent, or passed through undecoded):
    /// the bytes, and `"…_schema":null`.
    Undecoded(Option<&'a [u8]>),
}

/// [`encode`] with the key and value as decoding left them.
pub fn encode_with(record: &impl Fetched, key: Side<'_>, value: Side<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"topic\":");
    push_json_str(out, record.topic());
    out.extend_from_slice(b",\"partition\":");
    push_i64(out, i64::from(record.partition()));
    out.extend_from_slice(b",\"offset\":");
    push_i64(out, record.offset());
    match record.timestamp() {
        Timestamp::None => out.extend_from_slice(b",\"timestamp\":null,\"timestamp_type\":null"),
        Timestamp::CreateTime(ms) => {
            out.extend_from_slice(b",\"timestamp\":");
            push_i64(out, ms);
            out.extend_from_slice(b",\"timestamp_type\":\"create_time\"");
        }
        Timestamp::LogAppendTime(ms) => {
            out.extend_from_slice(b",\"timestamp\":");
            push_i64(out, ms);
            out.extend_from_slice(b",\"timestamp_type\":\"log_append_time\"");
        }
    }
    out.extend_from_slice(b",\"key\":");
    push_side(out, key, b",\"key_encoding\":", b",\"key_schema\":");
    out.extend_from_slice(b",\"value\":");
    push_side(out, value, b",\"value_encoding\":", b",\"value_schema\":");
    out.extend_from_slice(b",\"headers\":[");
    for (i, header) in record.headers().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        push_json_str(out, &header.key);
        out.extend_from_slice(b",\"value\":");
        push_bytes(out, header.value, b",\"value_encoding\":");
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

fn push_side(out: &mut Vec<u8>, side: Side<'_>, encoding_field: &[u8], schema_field: &[u8]) {
    match side {
        Side::Bytes(bytes) => push_bytes(out, bytes, encoding_field),
        Side::Decoded { json, schema } => {
            out.extend_from_slice(json);
            out.extend_from_slice(encoding_field);
            out.extend_from_slice(b"\"json\"");
            out.extend_from_slice(schema_field);
            out.extend_from_slice(schema);
        }
        Side::Undecoded(bytes) => {
            push_bytes(out, bytes, encoding_field);
            out.extend_from_slice(schema_field);
            out.extend_from_slice(b"null");
        }
    }
}

/// Writes `bytes` as the value of a field, then `encoding_field` (`,"…_encoding":`) and the
/// encoding used.
fn push_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>, encoding_field: &[u8]) {
    let encoding: &[u8] = match bytes {
        None => {
            out.extend_from_slice(b"null");
            b"null"
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) if push_compact_json(out, text) => b"\"json\"",
            Ok(text) => {
                push_json_str(out, text);
                b"\"string\""
            }
            Err(_) => {
                push_base64(out, bytes);
                b"\"base64\""
            }
        },
    };
    out.extend_from_slice(encoding_field);
    out.extend_from_slice(encoding);
}

/// A JSON string, escaped by serde_json.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a str serializes into a Vec infallibly");
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut pos = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        pos -= 1;
        digits[pos] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[pos..]);
}

fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    base64_simd::STANDARD.encode_append(bytes, out);
    out.push(b'"');
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_text::MAX_JSON_DEPTH;
    use crate::pipeline::Header;
    use serde_json::{Value, json};

    struct Rec {
        topic: &'static str,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        timestamp: Timestamp,
        headers: Vec<(&'static str, Option<Vec<u8>>)>,
    }

    impl Fetched for Rec {
        fn topic(&self) -> &str {
            self.topic
        }
        fn partition(&self) -> i32 {
            self.partition
        }
        fn offset(&self) -> i64 {
            self.offset
        }
        fn key(&self) -> Option<&[u8]> {
            self.key.as_deref()
        }
        fn value(&self) -> Option<&[u8]> {
            self.value.as_deref()
        }
        fn timestamp(&self) -> Timestamp {
            self.timestamp
        }
        fn headers(&self) -> Vec<Header<'_>> {
            self.headers
                .iter()
                .map(|(key, value)| Header {
                    key: (*key).into(),
                    value: value.as_deref(),
                })
                .collect()
        }
    }

    fn rec(key: Option<&[u8]>, value: Option<&[u8]>) -> Rec {
        Rec {
            topic: "orders",
            partition: 3,
            offset: 42,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            timestamp: Timestamp::CreateTime(1_733_333_333_000),
            headers: Vec::new(),
        }
    }

    /// Encodes, checks the output is one line of JSON with the fields in order, and parses it.
    fn encoded(record: &Rec) -> (String, Value) {
        let mut out = b"prefix".to_vec();
        encode(record, &mut out);
        assert!(out.starts_with(b"prefix"), "appends");
        let text = String::from_utf8(out[6..].to_vec()).expect("UTF-8");
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        let parsed: Value = serde_json::from_str(&text).expect(&text);
        // Each field's first occurrence is the top-level one in these tests' records.
        let mut named: Vec<(usize, &str)> = parsed
            .as_object()
            .unwrap()
            .keys()
            .map(|f| (text.find(&format!("\"{f}\":")).unwrap(), f.as_str()))
            .collect();
        named.sort_unstable();
        let order: Vec<&str> = named.into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            order,
            [
                "topic",
                "partition",
                "offset",
                "timestamp",
                "timestamp_type",
                "key",
                "key_encoding",
                "value",
                "value_encoding",
                "headers"
            ]
        );
        (text, parsed)
    }

    fn b64(v: &Value) -> Vec<u8> {
        base64_simd::STANDARD
            .decode_to_vec(v.as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn the_documented_example() {
        let mut record = rec(Some(b"customer-1"), Some(br#"{"a": 1}"#));
        record.headers = vec![("trace", Some(b"abc".to_vec()))];
        let (text, _) = encoded(&record);
        assert_eq!(
            text,
            r#"{"topic":"orders","partition":3,"offset":42,"timestamp":1733333333000,"timestamp_type":"create_time","key":"customer-1","key_encoding":"string","value":{"a":1},"value_encoding":"json","headers":[{"key":"trace","value":"abc","value_encoding":"string"}]}"#
        );
    }

    #[test]
    fn binary_value_is_base64() {
        let bytes = [0u8, 0xff, 0xfe, b'\n', 0x80, 1, 2];
        let (_, v) = encoded(&rec(Some(b"k"), Some(&bytes)));
        assert_eq!(v["value_encoding"], "base64");
        assert_eq!(v["value"], "AP/+CoABAg==");
        assert_eq!(b64(&v["value"]), bytes);
    }

    #[test]
    fn text_value_is_a_string() {
        let text = "héllo \"world\"\n\ttab \u{1F600} \\ end";
        let (raw, v) = encoded(&rec(Some(b"k"), Some(text.as_bytes())));
        assert_eq!(v["value_encoding"], "string");
        assert_eq!(v["value"], text);
        assert!(!raw.contains('\t'));
    }

    #[test]
    fn json_values_of_every_kind_are_embedded() {
        for (input, expected) in [
            (
                &br#"{"a":1,"b":[true,null]}"#[..],
                json!({"a": 1, "b": [true, null]}),
            ),
            (b"[1,2,3]", json!([1, 2, 3])),
            (b"-12.5e3", json!(-12.5e3)),
            (b"7", json!(7)),
            (br#""quoted text""#, json!("quoted text")),
            (b"true", json!(true)),
            (b"null", Value::Null),
        ] {
            let (_, v) = encoded(&rec(Some(b"k"), Some(input)));
            assert_eq!(v["value_encoding"], "json", "{input:?}");
            assert_eq!(v["value"], expected, "{input:?}");
        }
    }

    #[test]
    fn pretty_json_is_compacted_keeping_strings_and_order() {
        let pretty =
            "\r\n  {\n\t\"z\" : \"a b\\\" \\\\\" ,\n  \"a\": [ 1 ,\r\n 2 ],\n \"m\": { }\n}\n  ";
        let (raw, v) = encoded(&rec(Some(b"k"), Some(pretty.as_bytes())));
        assert_eq!(v["value_encoding"], "json");
        assert!(
            raw.contains(r#""value":{"z":"a b\" \\","a":[1,2],"m":{}},"value_encoding""#),
            "{raw}"
        );
    }

    #[test]
    fn big_numbers_are_kept_exactly() {
        let input = br#"{"big": 123456789012345678901234567890, "dec": 0.10000000000000000000001, "e": 1E+2}"#;
        let (raw, v) = encoded(&rec(Some(b"k"), Some(input)));
        assert_eq!(v["value_encoding"], "json");
        assert!(
            raw.contains(r#""value":{"big":123456789012345678901234567890,"dec":0.10000000000000000000001,"e":1E+2}"#),
            "{raw}"
        );
    }

    #[test]
    fn not_quite_json_is_a_string() {
        for input in [
            &b"{\"a\":1"[..],
            b"{'a':1}",
            b"1 2",
            b"NaN",
            b"   ",
            b"\xef\xbb\xbf{}",
            br#""\ud800""#,
            br#"["\udc00"]"#,
            br#""\ud800\u0041""#,
        ] {
            let (_, v) = encoded(&rec(Some(b"k"), Some(input)));
            assert_eq!(v["value_encoding"], "string", "{input:?}");
            assert_eq!(v["value"].as_str().unwrap().as_bytes(), input);
        }
        // A proper surrogate pair is fine.
        let (_, v) = encoded(&rec(Some(b"k"), Some(br#""\ud83d\ude00""#)));
        assert_eq!(v["value_encoding"], "json");
        assert_eq!(v["value"], "\u{1F600}");
    }

    #[test]
    fn deep_nesting_falls_back_to_a_string() {
        let nested = |depth: usize| {
            let inner = format!("{}1{}", "[ ".repeat(depth - 1), " ]".repeat(depth - 1));
            format!("{{\"a\": {inner}}}").into_bytes()
        };
        let mut record = rec(Some(b"k"), Some(&nested(MAX_JSON_DEPTH)));
        record.headers = vec![("h", Some(nested(MAX_JSON_DEPTH)))];
        let (_, v) = encoded(&record);
        assert_eq!(v["value_encoding"], "json");
        assert_eq!(v["headers"][0]["value_encoding"], "json");

        let mut record = rec(Some(b"k"), Some(&nested(MAX_JSON_DEPTH + 1)));
        record.headers = vec![("h", Some(nested(MAX_JSON_DEPTH + 1)))];
        let (_, v) = encoded(&record);
        assert_eq!(v["value_encoding"], "string");
        assert_eq!(
            v["value"].as_str().unwrap().as_bytes(),
            nested(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(v["headers"][0]["value_encoding"], "string");
    }

    #[test]
    fn tombstone_and_empty_value() {
        let (raw, v) = encoded(&rec(Some(b"k"), None));
        assert!(
            raw.contains(r#""value":null,"value_encoding":null"#),
            "{raw}"
        );
        assert_eq!(v["value"], Value::Null);
        assert_eq!(v["value_encoding"], Value::Null);

        let (_, v) = encoded(&rec(Some(b"k"), Some(b"")));
        assert_eq!(v["value"], "");
        assert_eq!(v["value_encoding"], "string");
    }

    #[test]
    fn keys_null_binary_json_text() {
        let (raw, v) = encoded(&rec(None, Some(b"x")));
        assert!(raw.contains(r#""key":null,"key_encoding":null"#), "{raw}");
        assert_eq!(v["key"], Value::Null);

        let (_, v) = encoded(&rec(Some(&[0xc3, 0x28, 0]), Some(b"x")));
        assert_eq!(v["key_encoding"], "base64");
        assert_eq!(b64(&v["key"]), [0xc3, 0x28, 0]);

        let (_, v) = encoded(&rec(Some(br#"{"id": 7}"#), Some(b"x")));
        assert_eq!(v["key_encoding"], "json");
        assert_eq!(v["key"], json!({"id": 7}));

        let (_, v) = encoded(&rec(Some(b"12"), Some(b"x")));
        assert_eq!(v["key_encoding"], "json");
        assert_eq!(v["key"], 12);

        let (_, v) = encoded(&rec(Some(b"customer-1"), Some(b"x")));
        assert_eq!(v["key_encoding"], "string");
        assert_eq!(v["key"], "customer-1");
    }

    #[test]
    fn headers_in_order_with_every_encoding() {
        let mut record = rec(Some(b"k"), Some(b"x"));
        assert_eq!(encoded(&record).1["headers"], json!([]));
        record.headers = vec![
            ("trace", Some(b"abc".to_vec())),
            ("nothing", None),
            ("bin", Some(vec![0xff, 0x00])),
            ("trace", Some(b"{\n\"n\": 1}".to_vec())),
            ("quote\"d\n", Some(Vec::new())),
        ];
        let (_, v) = encoded(&record);
        let h = v["headers"].as_array().unwrap();
        assert_eq!(h.len(), 5);
        assert_eq!(
            h[0],
            json!({"key": "trace", "value": "abc", "value_encoding": "string"})
        );
        assert_eq!(
            h[1],
            json!({"key": "nothing", "value": null, "value_encoding": null})
        );
        assert_eq!(h[2]["key"], "bin");
        assert_eq!(h[2]["value_encoding"], "base64");
        assert_eq!(b64(&h[2]["value"]), [0xff, 0x00]);
        assert_eq!(
            h[3],
            json!({"key": "trace", "value": {"n": 1}, "value_encoding": "json"})
        );
        assert_eq!(
            h[4],
            json!({"key": "quote\"d\n", "value": "", "value_encoding": "string"})
        );
        for header in h {
            let keys: Vec<&String> = header.as_object().unwrap().keys().collect();
            assert_eq!(keys.len(), 3);
        }
    }

    #[test]
    fn timestamps_and_identity() {
        let mut record = rec(Some(b"k"), Some(b"x"));
        record.topic = "weird \"topic\"";
        record.partition = i32::MAX;
        record.offset = i64::MAX;
        record.timestamp = Timestamp::LogAppendTime(-1);
        let (_, v) = encoded(&record);
        assert_eq!(v["topic"], "weird \"topic\"");
        assert_eq!(v["partition"], i32::MAX);
        assert_eq!(v["offset"], i64::MAX);
        assert_eq!(v["timestamp"], -1);
        assert_eq!(v["timestamp_type"], "log_append_time");

        record.partition = 0;
        record.offset = 0;
        record.timestamp = Timestamp::None;
        let (raw, v) = encoded(&record);
        assert!(
            raw.contains(r#""timestamp":null,"timestamp_type":null"#),
            "{raw}"
        );
        assert_eq!(v["partition"], 0);
        assert_eq!(v["offset"], 0);

        record.timestamp = Timestamp::CreateTime(i64::MIN);
        let (_, v) = encoded(&record);
        assert_eq!(v["timestamp"], i64::MIN);
        assert_eq!(v["timestamp_type"], "create_time");
    }

    #[test]
    fn push_i64_matches_display() {
        for n in [0, 1, -1, 9, 10, -10, 1_733_333_333_000, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }

    /// docs/ENVELOPE.md shows what the encoder writes, byte for byte.
    #[test]
    fn the_documented_examples_are_what_encode_writes() {
        let doc = include_str!("../../docs/ENVELOPE.md");
        let mut order = rec(
            Some(b"customer-1"),
            Some(br#"{"order_id": 1001, "amount": 19.90, "items": ["A-1", "B-7"]}"#),
        );
        order.headers = vec![("trace", Some(b"abc".to_vec()))];
        let mut log = rec(None, Some(b"GET /health 200"));
        (log.topic, log.partition, log.offset) = ("logs", 0, 7);
        log.timestamp = Timestamp::LogAppendTime(1_733_333_333_123);
        let mut sensor = rec(Some(&[0, 1, 2, 0xff]), Some(&[0xde, 0xad, 0xbe, 0xef]));
        (sensor.topic, sensor.partition, sensor.offset) = ("sensors", 1, 12345);
        sensor.headers = vec![
            ("checksum", Some(vec![0xc0, 0xff, 0xee])),
            ("origin", None),
            ("origin", Some(b"eu-west-1".to_vec())),
            ("attempt", Some(b"2".to_vec())),
        ];
        let mut tombstone = rec(Some(br#"{"id":17}"#), None);
        (tombstone.topic, tombstone.partition, tombstone.offset) = ("customers", 5, 900);
        tombstone.timestamp = Timestamp::None;
        for record in [order, log, sensor, tombstone] {
            let (line, _) = encoded(&record);
            assert!(
                doc.contains(&format!("```json\n{line}\n```")),
                "docs/ENVELOPE.md lacks {line}"
            );
        }
    }

    /// Prints sample envelopes, one per line, for checking against the schema:
    /// `cargo nextest run --lib envelope::tests::print_samples --no-capture`.
    #[test]
    fn print_samples() {
        let mut samples = vec![
            rec(Some(b"customer-1"), Some(br#"{"a": 1}"#)),
            rec(Some(&[0xff, 0]), Some(&[0x80, 0x81])),
            rec(None, None),
            rec(Some(b"7"), Some(b"")),
            rec(Some(br#"{"id":1}"#), Some(b"[1, 2]")),
        ];
        samples[0].headers = vec![
            ("trace", Some(b"abc".to_vec())),
            ("n", None),
            ("b", Some(vec![0xfe])),
            ("j", Some(b"1".to_vec())),
        ];
        samples[2].timestamp = Timestamp::None;
        samples[3].timestamp = Timestamp::LogAppendTime(5);
        let mut out = Vec::new();
        for sample in &samples {
            encode(sample, &mut out);
            out.push(b'\n');
        }
        print!("{}", String::from_utf8(out).unwrap());
    }
}
