//! Standard output: each record as it would be sent, one JSON object per line, acknowledged at
//! once. For trying a config — its routes, key rules and envelopes — locally, without AWS.
//!
//! A line holds the route, the partition key, the explicit hash key when one is set (decimal,
//! as Kinesis takes it) and the record's bytes: `data` as text when they are UTF-8, otherwise
//! `data_base64`. The bytes are exactly what the destination would get (format and delimiter
//! applied), so nothing is re-encoded on the way.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{Entry, EntryFailure, RequestError, Sink};
use crate::settings::{Checked, range};

/// A route that writes to standard output (`stdout: {}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// The largest record (data and partition key), as a Kinesis stream would count it: larger
    /// ones take the oversized-record policy, as they would on the way to a stream.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u64,
}

impl Default for StdoutConfig {
    fn default() -> Self {
        Self {
            max_record_bytes: default_max_record_bytes(),
        }
    }
}

fn default_max_record_bytes() -> u64 {
    1024 * 1024
}

impl StdoutConfig {
    /// Semantic checks; keys are reported under `prefix`.
    pub fn validate(&self, prefix: &str) -> Checked {
        range(
            &format!("{prefix}stdout.max_record_bytes"),
            self.max_record_bytes,
            1024,
            super::kinesis::MAX_PUT_RECORDS_BYTES,
        )
    }
}

/// One line of output.
#[derive(Serialize)]
struct Line<'a> {
    route: &'a str,
    partition_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    explicit_hash_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// Writes each batch to standard output under its lock, so lines of concurrent lanes never
/// interleave.
#[derive(Debug)]
pub struct StdoutSink {
    route: String,
}

impl StdoutSink {
    pub fn new(route: String) -> Self {
        Self { route }
    }

    fn lines(&self, entries: &[Entry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in entries {
            let text = std::str::from_utf8(entry.data).ok();
            let line = Line {
                route: &self.route,
                partition_key: entry.partition_key,
                explicit_hash_key: entry.explicit_hash_key.map(|h| h.to_string()),
                data: text,
                data_base64: text
                    .is_none()
                    .then(|| base64_simd::STANDARD.encode_to_string(entry.data)),
            };
            serde_json::to_writer(&mut out, &line).expect("a line serialises");
            out.push(b'\n');
        }
        out
    }
}

impl Sink for StdoutSink {
    async fn put(&self, entries: &[Entry<'_>]) -> Result<Vec<EntryFailure>, RequestError> {
        let lines = self.lines(entries);
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&lines)
            .and_then(|()| stdout.flush())
            .map_err(|e| {
                RequestError::Configuration(format!(
                    "cannot write to standard output: {e}; retrying (records stay uncommitted)"
                ))
            })?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_line_holds_key_hash_key_and_the_bytes_as_text_or_base64() {
        let sink = StdoutSink::new("orders".into());
        let text = Bytes::from_static(b"{\"id\":1}\n");
        let binary = Bytes::from_static(&[0xff, 0x00, 0x01]);
        let lines = sink.lines(&[
            Entry {
                partition_key: "k1",
                explicit_hash_key: None,
                data: &text,
            },
            Entry {
                partition_key: "k2",
                explicit_hash_key: Some(u128::MAX),
                data: &binary,
            },
        ]);
        let lines: Vec<serde_json::Value> = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"route": "orders", "partition_key": "k1", "data": "{\"id\":1}\n"})
        );
        assert_eq!(
            lines[1],
            serde_json::json!({
                "route": "orders",
                "partition_key": "k2",
                "explicit_hash_key": u128::MAX.to_string(),
                "data_base64": "/wAB",
            })
        );
    }
}
