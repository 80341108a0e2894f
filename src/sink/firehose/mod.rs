//! Amazon Data Firehose through PutRecordBatch.
//!
//! Firehose has no partition key and no shards: each entry's data is sent as it is, and the
//! delivery stream buffers it towards its destination (S3, Redshift, OpenSearch, ...). Order
//! across requests is kept only as far as requests are sent one after another; Firehose makes no
//! promise beyond that, and neither does this sink.

use std::ops::Range;

use aws_sdk_firehose::Client;
use aws_sdk_firehose::error::{DisplayErrorContext, SdkError};
use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchError;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;

pub mod check;
pub mod client;
#[cfg(test)]
mod proptests;
mod settings;

pub use settings::{FirehoseConfig, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES};

use super::{Entry, EntryFailure, RequestError, Sink};

/// The per-entry and whole-request code Firehose answers when it throttles (or is overloaded):
/// it has no separate throttling exception for PutRecordBatch.
const THROTTLED_CODE: &str = "ServiceUnavailableException";

/// Writes to one delivery stream, addressed by name.
#[derive(Debug)]
pub struct FirehoseSink {
    client: Client,
    delivery_stream: String,
    /// "delivery stream `x` (region r, via role y)": told in every configuration error.
    target: String,
    /// Records per PutRecordBatch request (`batch.max_records`, at most 500).
    max_entries: usize,
    /// Bytes of data per request (`batch.max_bytes`, at most 4 MiB): only the data counts, as
    /// Firehose has no partition keys.
    max_request_bytes: usize,
}

impl FirehoseSink {
    pub fn new(
        client: Client,
        delivery_stream: String,
        target: String,
        max_entries: usize,
        max_request_bytes: usize,
    ) -> Self {
        Self {
            client,
            delivery_stream,
            target,
            max_entries: max_entries.clamp(1, MAX_BATCH_RECORDS),
            max_request_bytes: max_request_bytes.clamp(1, MAX_BATCH_BYTES),
        }
    }

    fn classify(&self, err: SdkError<PutRecordBatchError>) -> RequestError {
        match &err {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let meta = ctx.err().meta();
                let detail = super::error_detail(meta.code(), meta.message(), status);
                match ctx.err() {
                    // Firehose's way of saying "slow down": the stream's throughput limit.
                    PutRecordBatchError::ServiceUnavailableException(_) => {
                        RequestError::Throttled(detail)
                    }
                    PutRecordBatchError::ResourceNotFoundException(_) => {
                        RequestError::Configuration(format!(
                            "{} does not exist (ResourceNotFoundException). Check firehose.delivery_stream, \
                             aws.region and that aws.role_arn belongs to the account that owns the delivery \
                             stream; retrying until it appears",
                            self.target
                        ))
                    }
                    PutRecordBatchError::InvalidKmsResourceException(_) => {
                        RequestError::Configuration(format!(
                            "the KMS key of {} cannot be used: {detail}. The delivery stream's role needs \
                             the key enabled and usable; retrying",
                            self.target
                        ))
                    }
                    PutRecordBatchError::InvalidSourceException(_) => {
                        RequestError::Configuration(format!(
                            "{} refuses direct writes: {detail}. Turn off CloudWatch Logs decompression \
                             on the delivery stream, or use one that takes DirectPut; retrying",
                            self.target
                        ))
                    }
                    PutRecordBatchError::InvalidArgumentException(_) => {
                        RequestError::Configuration(format!(
                            "{} rejected the request as invalid: {detail}. Check that it is a DirectPut \
                             delivery stream (not one reading from a Kinesis stream) and that \
                             batch.max_bytes stays within Firehose's limits; retrying",
                            self.target
                        ))
                    }
                    other => match other.meta().code() {
                        Some("AccessDeniedException" | "AccessDenied") => {
                            RequestError::Configuration(format!(
                                "access to {} was denied ({detail}). The assumed role needs \
                                 firehose:PutRecordBatch on the delivery stream; retrying",
                                self.target
                            ))
                        }
                        code => super::by_code(code, status, detail),
                    },
                }
            }
            SdkError::TimeoutError(_) => RequestError::Overloaded(
                "PutRecordBatch timed out (firehose.request_timeout_ms)".into(),
            ),
            SdkError::DispatchFailure(f) if f.is_user() || f.is_other() => {
                // Identity resolution failures land here: the credential chain or AssumeRole failed.
                RequestError::Credentials(DisplayErrorContext(&err).to_string())
            }
            _ => RequestError::Transient(DisplayErrorContext(&err).to_string()),
        }
    }

    /// One PutRecordBatch call: for each record, in request order, `None` if Firehose took it or
    /// its failure.
    async fn put_record_batch(
        &self,
        records: Vec<Record>,
    ) -> Result<Vec<Option<(String, bool)>>, RequestError> {
        let count = records.len();
        let output = self
            .client
            .put_record_batch()
            .delivery_stream_name(&self.delivery_stream)
            .set_records(Some(records))
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        let responses = output.request_responses();
        if responses.len() != count {
            // A response that does not line up with the request proves nothing: resend it all.
            return Err(RequestError::Transient(format!(
                "PutRecordBatch answered {} results for {count} records",
                responses.len(),
            )));
        }
        let outcomes: Vec<Option<(String, bool)>> = responses
            .iter()
            .map(|r| {
                r.error_code()
                    .map(|code| (code.to_owned(), code == THROTTLED_CODE))
            })
            .collect();
        let failed = outcomes.iter().filter(|o| o.is_some()).count();
        if failed as i64 != i64::from(output.failed_put_count()) {
            return Err(RequestError::Transient(format!(
                "PutRecordBatch reported {} failed records but marked {failed}",
                output.failed_put_count(),
            )));
        }
        Ok(outcomes)
    }
}

impl Sink for FirehoseSink {
    /// Sends the entries in requests of at most `max_entries` records and `max_request_bytes` of
    /// data, one after another, and says which entries failed. `Err` only when every request
    /// failed as a whole; the entries of a request that failed while others succeeded are
    /// reported one by one with that request's error.
    async fn put(&self, entries: &[Entry<'_>]) -> Result<Vec<EntryFailure>, RequestError> {
        let mut failures = Vec::new();
        // Indexes of the entries that may be sent; an oversized one would make Firehose reject
        // its whole request, so it fails alone here (the source keeps them out; this is a guard).
        let mut sendable = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            if entry.data.len() > MAX_RECORD_BYTES {
                failures.push(EntryFailure {
                    index,
                    code: format!(
                        "RecordTooLarge: {} bytes, over Firehose's limit of {MAX_RECORD_BYTES}",
                        entry.data.len()
                    ),
                    throttled: false,
                });
            } else {
                sendable.push(index);
            }
        }
        let requests = split(
            sendable.iter().map(|&i| entries[i].data.len()),
            self.max_entries,
            self.max_request_bytes,
        );
        // One after another: requests in flight at once could be applied in either order,
        // putting a key's later records before its earlier ones at the destination. How many
        // batches are in flight is the pipeline's choice.
        let mut outcomes = Vec::with_capacity(requests.len());
        for range in &requests {
            // The SDK takes owned data: each attempt copies the records into its Blobs once.
            let records = sendable[range.clone()]
                .iter()
                .map(|&i| {
                    Record::builder()
                        .data(Blob::new(entries[i].data.to_vec()))
                        .build()
                        .expect("data is set")
                })
                .collect();
            outcomes.push(self.put_record_batch(records).await);
        }
        if !outcomes.is_empty() && outcomes.iter().all(Result::is_err) {
            return Err(outcomes
                .into_iter()
                .find_map(Result::err)
                .expect("at least one request"));
        }
        for (range, outcome) in requests.into_iter().zip(outcomes) {
            let members = &sendable[range];
            match outcome {
                Ok(results) => {
                    for (&index, result) in members.iter().zip(results) {
                        if let Some((code, throttled)) = result {
                            failures.push(EntryFailure {
                                index,
                                code,
                                throttled,
                            });
                        }
                    }
                }
                Err(e) => {
                    let throttled = matches!(e, RequestError::Throttled(_));
                    let code = e.to_string();
                    failures.extend(members.iter().map(|&index| EntryFailure {
                        index,
                        code: code.clone(),
                        throttled,
                    }));
                }
            }
        }
        failures.sort_by_key(|f| f.index);
        Ok(failures)
    }
}

/// Splits records of these sizes, in order, into requests of at most `max_entries` records and
/// `max_bytes` bytes; a record larger than `max_bytes` goes alone. Returns each request's range.
fn split(
    sizes: impl IntoIterator<Item = usize>,
    max_entries: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let mut requests: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, size) in sizes.into_iter().enumerate() {
        let room = requests
            .last()
            .is_some_and(|r| r.len() < max_entries && bytes + size <= max_bytes);
        if room {
            requests.last_mut().expect("checked above").end = i + 1;
            bytes += size;
        } else {
            requests.push(i..i + 1);
            bytes = size;
        }
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_send_makes_no_request() {
        assert!(split([], 500, MAX_BATCH_BYTES).is_empty());
    }

    #[test]
    fn splits_by_record_count() {
        let requests = split(vec![10; 1200], MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
        assert_eq!(requests, vec![0..500, 500..1000, 1000..1200]);
    }

    #[test]
    fn splits_by_bytes_and_a_request_may_be_exactly_full() {
        // 4 records of 1 MiB fill a 4 MiB request exactly; the fifth starts the next one.
        let requests = split(vec![1024 * 1024; 9], MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
        assert_eq!(requests, vec![0..4, 4..8, 8..9]);
        assert_eq!(split([3, 3, 4, 1, 9], 500, 10), vec![0..3, 3..5]);
        assert_eq!(split([3, 3, 5, 1], 500, 10), vec![0..2, 2..4]);
    }

    #[test]
    fn a_record_over_the_request_bytes_goes_alone() {
        let requests = split([1, 50, 1, 1], 500, 10);
        assert_eq!(requests, vec![0..1, 1..2, 2..4]);
    }

    #[test]
    fn count_and_bytes_together_and_order_kept() {
        let sizes: Vec<usize> = (0..1000).map(|i| 1 + i % 7 * 1000).collect();
        let requests = split(sizes.iter().copied(), 100, 200_000);
        // Contiguous, in order, covering everything, each within both limits.
        assert_eq!(requests.first().unwrap().start, 0);
        assert_eq!(requests.last().unwrap().end, sizes.len());
        for pair in requests.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for r in &requests {
            assert!(r.len() <= 100);
            assert!(sizes[r.clone()].iter().sum::<usize>() <= 200_000);
        }
    }

    #[test]
    fn the_limits_are_firehoses() {
        assert_eq!(MAX_BATCH_RECORDS, 500);
        assert_eq!(MAX_BATCH_BYTES, 4_194_304);
        assert_eq!(MAX_RECORD_BYTES, 1000 * 1024);
    }
}
