//! The `firehose:` section and Firehose's limits.

use serde::{Deserialize, Serialize};

use crate::settings::{Checked, bad, range};
use crate::sink::kinesis::is_stream_name;

/// Records per PutRecordBatch request (Firehose's limit).
pub const MAX_BATCH_RECORDS: usize = 500;
/// Bytes of data per PutRecordBatch request (Firehose's limit, 4 MiB).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of data per record (Firehose's limit, 1,000 KiB). Larger records are refused before
/// they reach a sink (dead letter or a clear error); the sink never sends one, since Firehose
/// would reject the whole request it is in.
pub const MAX_RECORD_BYTES: usize = 1_024_000;

/// An Amazon Data Firehose delivery stream (Direct PUT), e.g. one that writes to S3.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirehoseConfig {
    /// Delivery stream name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_stream: Option<String>,
    /// Time limit of one PutRecordBatch call, including connecting.
    #[serde(default = "crate::sink::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl FirehoseConfig {
    /// Semantic checks; keys are reported under `prefix` (a route's `routes[i].`, or nothing).
    pub fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        let name = self.delivery_stream.as_deref().unwrap_or_default();
        if !is_stream_name(name) || name.len() > 64 {
            return bad(
                &key("firehose.delivery_stream"),
                format!("`{name}` is not a delivery stream name (1-64 of a-z A-Z 0-9 _ . -)"),
            );
        }
        range(
            &key("firehose.request_timeout_ms"),
            self.request_timeout_ms,
            100,
            600_000,
        )
    }
}
