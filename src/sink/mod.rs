//! Destinations. A sink makes one delivery attempt for a batch and says, entry by entry, what
//! failed; retrying, ordering and acknowledging belong to the pipeline, so every sink gets the same
//! at-least-once rules.

pub mod aggregate;
pub mod firehose;
pub mod kinesis;
pub mod shards;

use std::future::Future;

use bytes::Bytes;

/// Time limit of one request, including connecting, unless `request_timeout_ms` says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

/// How a service error that has no variant of its own is classified, by its code and status:
/// expired or refused credentials, throttling, or something worth retrying.
fn by_code(code: Option<&str>, status: u16, detail: String) -> RequestError {
    match code {
        Some(
            "ExpiredTokenException"
            | "ExpiredToken"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "MissingAuthenticationToken",
        ) => RequestError::Credentials(detail),
        Some("ThrottlingException" | "LimitExceededException") => RequestError::Throttled(detail),
        _ if status == 429 => RequestError::Throttled(detail),
        _ => RequestError::Transient(detail),
    }
}

/// A service error as a log line: code, message and status say it all (the full error repeats
/// the raw response).
fn error_detail(code: Option<&str>, message: Option<&str>, status: u16) -> String {
    format!(
        "{}: {} (HTTP {status})",
        code.unwrap_or("unknown error"),
        message.unwrap_or("no message")
    )
}

/// What a sink is given of a record: only what the destination needs. The pipeline keeps the
/// rest (offsets, acknowledgement), so sinks know nothing of Kafka.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Picks the Kinesis shard; not sent to Firehose.
    pub partition_key: &'a str,
    /// Routes the record instead of the partition key's MD5 (Kinesis only).
    pub explicit_hash_key: Option<u128>,
    /// Shared with the pipeline: an attempt does not copy it.
    pub data: &'a Bytes,
}

/// One entry of a request that the destination did not accept.
#[derive(Debug, Clone)]
pub struct EntryFailure {
    /// Index into the entries passed to [`Sink::put`].
    pub index: usize,
    pub code: String,
    pub throttled: bool,
}

/// Why a whole request failed; decides the log level and the backoff.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// The destination asks us to slow down.
    #[error("throttled: {0}")]
    Throttled(String),
    /// Network problem or server error: the request may or may not have been applied.
    #[error("transient failure: {0}")]
    Transient(String),
    /// No answer in time: the endpoint may be overloaded. Retried, and it counts like throttling
    /// for the send rate, since sending more would only make it worse.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Credentials could not be obtained or were refused.
    #[error("credentials problem: {0}")]
    Credentials(String),
    /// The destination is missing or access is denied: only a human can fix it.
    #[error("{0}")]
    Configuration(String),
}

pub trait Sink: Send + Sync + 'static {
    /// Sends `entries` in one request. `Ok` lists the entries that failed (empty: all delivered).
    fn put(
        &self,
        entries: &[Entry<'_>],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, RequestError>> + Send;
}
