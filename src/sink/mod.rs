//! Destinations. Each has its own folder with everything about it — its settings and limits, its
//! client, its sink, its health probe and its `doka check` hops — and one arm in [`Destination`].
//!
//! A sink makes one delivery attempt for a batch and says, entry by entry, what failed; retrying,
//! ordering and acknowledging belong to the pipeline, so every sink gets the same at-least-once
//! rules.

mod destination;
pub mod firehose;
pub mod kinesis;
#[cfg(test)]
mod proptests;
pub mod stdout;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::telemetry::health::Health;

pub use destination::{Destination, Opening, StartLanes};

/// Time limit of one request, including connecting, unless `request_timeout_ms` says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

/// How often each destination is described while doka runs.
const DESCRIBE_DESTINATION_EVERY: Duration = Duration::from_secs(30);

/// Describes a destination every [`DESCRIBE_DESTINATION_EVERY`]: its reachability is known before
/// the first record and while none flow (readiness), and an assumed role is renewed on time even
/// when the pipeline is idle (a client renews credentials when it is used). `describe` answers
/// `Err` with the reason when the destination did not answer.
async fn watch<F, Fut>(health: Arc<Health>, destination: usize, describe: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    loop {
        match describe().await {
            Ok(()) => health.destination_answered(destination),
            Err(reason) => {
                health.destination_failed(destination);
                tracing::debug!("{reason}");
            }
        }
        tokio::time::sleep(DESCRIBE_DESTINATION_EVERY).await;
    }
}

/// Runs `task` until `finished` is cancelled.
async fn until(finished: tokio_util::sync::CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        () = finished.cancelled() => {}
    }
}

/// How one `doka check` hop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HopStatus {
    Ok,
    /// Works, but something deserves a look (e.g. no committed offsets yet).
    Warn,
    Fail,
}

/// Where a destination tells its `doka check` hops (the check's walk).
pub trait CheckWalk {
    /// Records one hop; false when it failed (the hops after it depend on it).
    fn hop(&mut self, hop: &str, status: HopStatus, detail: String, fix: Option<String>) -> bool;
    /// Whether `--write-test` asked for one marked record.
    fn write_test(&self) -> bool;

    fn hop_ok(&mut self, hop: &str, detail: String) -> bool {
        self.hop(hop, HopStatus::Ok, detail, None)
    }
    fn hop_fail(&mut self, hop: &str, detail: String, fix: &str) -> bool {
        self.hop(hop, HopStatus::Fail, detail, Some(fix.to_owned()))
    }
}

/// Seconds since the epoch, to tell `--write-test` records apart.
fn unix_time_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("unix time {secs}")
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
