//! Property tests of the envelope (docs/ENVELOPE.md): whatever the record, the envelope is one
//! line of valid JSON with the documented fields in order, and every key, value and header value
//! reads back as its bytes by the encoding the envelope states.

use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::{Side, encode, encode_with};
use crate::json_text::MAX_JSON_DEPTH;
use crate::json_text::proptests::{
    any_json, compact, embeddable, json_like_text, nested, render, string_of_escapes,
};
use crate::pipeline::{Fetched, Header, Timestamp};

/// A fetched record with any content. Header keys are bytes, read as the source reads them
/// (invalid UTF-8 replaced).
#[derive(Debug, Clone)]
struct Rec {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Fetched for Rec {
    fn topic(&self) -> &str {
        &self.topic
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
                key: String::from_utf8_lossy(key),
                value: value.as_deref(),
            })
            .collect()
    }
}

/// Bytes of every kind the encodings tell apart, and those near their borders.
fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        any::<String>().prop_map(String::into_bytes),
        // Text with one byte that makes it invalid UTF-8.
        (any::<String>(), any::<prop::sample::Index>(), 0x80..=0xFFu8).prop_map(
            |(text, at, byte)| {
                let mut bytes = text.into_bytes();
                bytes.insert(at.index(bytes.len() + 1), byte);
                bytes
            }
        ),
        (any_json(), any::<u64>()).prop_map(|(json, seed)| render(&json, seed).into_bytes()),
        // Nearly JSON: a JSON text cut short, or behind a byte-order mark.
        (
            any_json(),
            any::<u64>(),
            any::<prop::sample::Index>(),
            any::<bool>()
        )
            .prop_map(|(json, seed, at, bom)| {
                let text = render(&json, seed);
                if bom {
                    format!("\u{FEFF}{text}").into_bytes()
                } else {
                    text.as_bytes()[..at.index(text.len() + 1)].to_vec()
                }
            }),
        json_like_text().prop_map(String::into_bytes),
        string_of_escapes().prop_map(String::into_bytes),
        (
            (MAX_JSON_DEPTH - 2)..(MAX_JSON_DEPTH + 3),
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(depth, objects, seed)| nested(depth, objects, seed).into_bytes()),
    ]
}

fn any_timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(Timestamp::None),
        any::<i64>().prop_map(Timestamp::CreateTime),
        any::<i64>().prop_map(Timestamp::LogAppendTime),
    ]
}

fn any_record() -> impl Strategy<Value = Rec> {
    (
        any::<String>(),
        any::<i32>(),
        any::<i64>(),
        any_timestamp(),
        prop::option::weighted(0.9, any_bytes()),
        prop::option::weighted(0.9, any_bytes()),
        prop::collection::vec(
            (
                prop_oneof![
                    any::<String>().prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..10),
                ],
                prop::option::weighted(0.8, any_bytes()),
            ),
            0..4,
        ),
    )
        .prop_map(
            |(topic, partition, offset, timestamp, key, value, headers)| Rec {
                topic,
                partition,
                offset,
                timestamp,
                key,
                value,
                headers,
            },
        )
}

/// A side as a route gives it to `encode_with`.
#[derive(Debug, Clone)]
enum Given {
    Bytes(Option<Vec<u8>>),
    Decoded { json: Vec<u8>, schema: Vec<u8> },
    Undecoded(Option<Vec<u8>>),
}

impl Given {
    fn side(&self) -> Side<'_> {
        match self {
            Self::Bytes(b) => Side::Bytes(b.as_deref()),
            Self::Decoded { json, schema } => Side::Decoded { json, schema },
            Self::Undecoded(b) => Side::Undecoded(b.as_deref()),
        }
    }
}

fn any_given() -> impl Strategy<Value = Given> {
    let bytes = || prop::option::weighted(0.9, any_bytes());
    prop_oneof![
        bytes().prop_map(Given::Bytes),
        bytes().prop_map(Given::Undecoded),
        // Decoded: the decoder's compact JSON, and a schema identity object.
        (any_json(), any::<u64>(), any::<u32>(), any::<String>()).prop_map(
            |(json, seed, id, subject)| Given::Decoded {
                json: compact(&render(&json, seed)).into_bytes(),
                schema: serde_json::to_vec(&serde_json::json!(
                    {"registry": "confluent", "format": "avro", "id": id, "subject": subject}
                ))
                .unwrap(),
            }
        ),
    ]
}

/// Walks JSON text as written, member by member, giving each value's own text.
struct Walk<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Walk<'a> {
    fn expect(&mut self, byte: u8) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            self.text.get(self.pos).copied(),
            Some(byte),
            "at {} of {}",
            self.pos,
            String::from_utf8_lossy(self.text)
        );
        self.pos += 1;
        Ok(())
    }

    fn next_is(&mut self, byte: u8) -> bool {
        let is = self.text.get(self.pos) == Some(&byte);
        if is {
            self.pos += 1;
        }
        is
    }

    /// The next value's text.
    fn value(&mut self) -> Result<&'a [u8], TestCaseError> {
        let rest = &self.text[self.pos..];
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<IgnoredAny>();
        match values.next() {
            Some(Ok(_)) => {}
            other => prop_assert!(false, "no value at {}: {:?}", self.pos, other),
        }
        let end = values.byte_offset();
        self.pos += end;
        Ok(&rest[..end])
    }

    /// The members of the object that comes next, in order.
    fn object(&mut self) -> Result<Vec<(String, &'a [u8])>, TestCaseError> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        if self.next_is(b'}') {
            return Ok(members);
        }
        loop {
            let name = serde_json::from_slice(self.value()?)
                .map_err(|e| TestCaseError::fail(format!("a member name: {e}")))?;
            self.expect(b':')?;
            members.push((name, self.value()?));
            if self.next_is(b'}') {
                return Ok(members);
            }
            self.expect(b',')?;
        }
    }

    /// The elements of the array that comes next.
    fn array(&mut self) -> Result<Vec<&'a [u8]>, TestCaseError> {
        self.expect(b'[')?;
        let mut elements = Vec::new();
        if self.next_is(b']') {
            return Ok(elements);
        }
        loop {
            elements.push(self.value()?);
            if self.next_is(b']') {
                return Ok(elements);
            }
            self.expect(b',')?;
        }
    }
}

fn names<'m>(members: &'m [(String, &[u8])]) -> Vec<&'m str> {
    members.iter().map(|(n, _)| n.as_str()).collect()
}

fn string(raw: &[u8]) -> Result<String, TestCaseError> {
    serde_json::from_slice(raw).map_err(|e| {
        TestCaseError::fail(format!(
            "{e}: {:?} is no string",
            String::from_utf8_lossy(raw)
        ))
    })
}

/// `raw` with `encoding` reads back as `bytes`, by the documented rules of which encoding applies.
/// Returns whether serde_json's `Value` can read it (not a number beyond an f64, which the
/// envelope documents).
fn reads_back(bytes: Option<&[u8]>, raw: &[u8], encoding: &[u8]) -> Result<bool, TestCaseError> {
    let Some(bytes) = bytes else {
        prop_assert_eq!(raw, b"null");
        prop_assert_eq!(encoding, b"null");
        return Ok(true);
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        prop_assert_eq!(encoding, b"\"base64\"");
        let encoded = string(raw)?;
        let decoded = base64_simd::STANDARD
            .decode_to_vec(&encoded)
            .map_err(|e| TestCaseError::fail(format!("{e}: {encoded}")))?;
        prop_assert_eq!(decoded, bytes);
        return Ok(true);
    };
    let embeddable = embeddable(text);
    if embeddable == Some(false) {
        prop_assert_eq!(encoding, b"\"string\"", "{:?}", text);
        prop_assert_eq!(string(raw)?, text);
    } else {
        prop_assert_eq!(encoding, b"\"json\"", "{:?}", text);
        let compacted = compact(text);
        prop_assert_eq!(raw, compacted.as_bytes());
    }
    Ok(embeddable.is_some())
}

/// Checks one side of the envelope; returns as [`reads_back`].
fn side_reads_back(
    given: &Given,
    members: &[(String, &[u8])],
    at: usize,
) -> Result<bool, TestCaseError> {
    let (raw, encoding) = (members[at].1, members[at + 1].1);
    match given {
        Given::Bytes(bytes) => reads_back(bytes.as_deref(), raw, encoding),
        Given::Undecoded(bytes) => {
            prop_assert_eq!(members[at + 2].1, b"null");
            reads_back(bytes.as_deref(), raw, encoding)
        }
        Given::Decoded { json, schema } => {
            prop_assert_eq!(raw, &json[..]);
            prop_assert_eq!(encoding, b"\"json\"");
            prop_assert_eq!(members[at + 2].1, &schema[..]);
            Ok(true)
        }
    }
}

/// Encodes `record` (after `prefix`) and checks the envelope against it.
fn check(
    record: &Rec,
    key: &Given,
    value: &Given,
    prefix: &[u8],
    out: &[u8],
) -> Result<(), TestCaseError> {
    prop_assert!(out.starts_with(prefix), "appends");
    let envelope = &out[prefix.len()..];
    let text = std::str::from_utf8(envelope).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(!text.contains(['\n', '\r']), "one line: {}", text);
    prop_assert_eq!(compact(text), text, "compact");
    serde_json::from_str::<IgnoredAny>(text)
        .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;

    let mut walk = Walk {
        text: envelope,
        pos: 0,
    };
    let members = walk.object()?;
    prop_assert_eq!(walk.pos, envelope.len(), "one object, nothing after it");
    let mut expected = vec![
        "topic",
        "partition",
        "offset",
        "timestamp",
        "timestamp_type",
        "key",
        "key_encoding",
    ];
    if !matches!(key, Given::Bytes(_)) {
        expected.push("key_schema");
    }
    expected.extend(["value", "value_encoding"]);
    if !matches!(value, Given::Bytes(_)) {
        expected.push("value_schema");
    }
    expected.push("headers");
    prop_assert_eq!(names(&members), expected);

    let field = |name: &str| members.iter().find(|(n, _)| n == name).unwrap().1;
    prop_assert_eq!(string(field("topic"))?, record.topic.clone());
    prop_assert_eq!(
        field("partition"),
        record.partition.to_string().into_bytes()
    );
    prop_assert_eq!(field("offset"), record.offset.to_string().into_bytes());
    let (timestamp, kind) = match record.timestamp {
        Timestamp::None => ("null".to_owned(), "null"),
        Timestamp::CreateTime(ms) => (ms.to_string(), "\"create_time\""),
        Timestamp::LogAppendTime(ms) => (ms.to_string(), "\"log_append_time\""),
    };
    prop_assert_eq!(field("timestamp"), timestamp.as_bytes());
    prop_assert_eq!(field("timestamp_type"), kind.as_bytes());

    let mut readable = side_reads_back(key, &members, 5)?;
    let value_at = names(&members).iter().position(|n| *n == "value").unwrap();
    readable &= side_reads_back(value, &members, value_at)?;

    let headers = Walk {
        text: field("headers"),
        pos: 0,
    }
    .array()?;
    prop_assert_eq!(headers.len(), record.headers.len());
    for (raw, (key, value)) in headers.into_iter().zip(&record.headers) {
        let header = Walk { text: raw, pos: 0 }.object()?;
        prop_assert_eq!(names(&header), ["key", "value", "value_encoding"]);
        prop_assert_eq!(string(header[0].1)?, String::from_utf8_lossy(key));
        readable &= reads_back(value.as_deref(), header[1].1, header[2].1)?;
    }
    if readable {
        // The whole line, as a common reader takes it.
        let parsed = serde_json::from_str::<Value>(text);
        prop_assert!(parsed.is_ok(), "{:?}: {}", parsed.err(), text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_record_is_one_line_of_json_that_reads_back(
        record in any_record(),
        prefix in prop::collection::vec(any::<u8>(), 0..3),
    ) {
        let mut out = prefix.clone();
        encode(&record, &mut out);
        let key = Given::Bytes(record.key.clone());
        let value = Given::Bytes(record.value.clone());
        check(&record, &key, &value, &prefix, &out)?;
    }

    #[test]
    fn any_decoded_sides_are_embedded_as_given(
        record in any_record(),
        key in any_given(),
        value in any_given(),
    ) {
        let mut out = Vec::new();
        encode_with(&record, key.side(), value.side(), &mut out);
        check(&record, &key, &value, &[], &out)?;
    }
}
