//! Kinesis Data Streams through PutRecords.

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use super::{EntryFailure, RequestError, Sink};
use crate::pipeline::Record;

/// Writes to one stream, addressed by name or by ARN.
#[derive(Clone, Debug)]
pub struct KinesisSink {
    client: Client,
    stream_name: Option<String>,
    stream_arn: Option<String>,
    /// "stream `x` (region r, via role y)": told in every configuration error.
    target: String,
}

impl KinesisSink {
    pub fn new(
        client: Client,
        stream_name: Option<String>,
        stream_arn: Option<String>,
        target: String,
    ) -> Self {
        Self {
            client,
            stream_name,
            stream_arn,
            target,
        }
    }

    fn classify(&self, err: SdkError<PutRecordsError>) -> RequestError {
        match &err {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                // Code, message and status say it all; the full error repeats the raw response.
                let detail = format!(
                    "{}: {} (HTTP {status})",
                    ctx.err().meta().code().unwrap_or("unknown error"),
                    ctx.err().meta().message().unwrap_or("no message")
                );
                match ctx.err() {
                    PutRecordsError::ProvisionedThroughputExceededException(_)
                    | PutRecordsError::KmsThrottlingException(_) => RequestError::Throttled(detail),
                    PutRecordsError::ResourceNotFoundException(_) => {
                        RequestError::Configuration(format!(
                            "{} does not exist (ResourceNotFoundException). Check kinesis.stream, aws.region \
                         and that aws.role_arn belongs to the account that owns the stream; retrying until it appears",
                            self.target
                        ))
                    }
                    PutRecordsError::AccessDeniedException(_) => {
                        RequestError::Configuration(format!(
                            "access to {} was denied ({detail}). The assumed role needs \
                         kinesis:PutRecords on the stream (and kms:GenerateDataKey for a customer-managed key); retrying",
                            self.target
                        ))
                    }
                    PutRecordsError::KmsAccessDeniedException(_)
                    | PutRecordsError::KmsDisabledException(_)
                    | PutRecordsError::KmsInvalidStateException(_)
                    | PutRecordsError::KmsNotFoundException(_)
                    | PutRecordsError::KmsOptInRequired(_) => RequestError::Configuration(format!(
                        "the KMS key of {} cannot be used: {detail}; retrying",
                        self.target
                    )),
                    PutRecordsError::InvalidArgumentException(_) => {
                        RequestError::Configuration(format!(
                            "{} rejected the request as invalid: {detail}; retrying",
                            self.target
                        ))
                    }
                    other => match other.meta().code() {
                        Some(
                            "ExpiredTokenException"
                            | "UnrecognizedClientException"
                            | "InvalidSignatureException"
                            | "IncompleteSignature"
                            | "MissingAuthenticationToken",
                        ) => RequestError::Credentials(detail),
                        Some("ThrottlingException" | "LimitExceededException") => {
                            RequestError::Throttled(detail)
                        }
                        _ if status == 429 => RequestError::Throttled(detail),
                        _ => RequestError::Transient(detail),
                    },
                }
            }
            SdkError::TimeoutError(_) => {
                RequestError::Overloaded("request timed out (kinesis.request_timeout_ms)".into())
            }
            SdkError::DispatchFailure(f) if f.is_user() || f.is_other() => {
                // Identity resolution failures land here: the credential chain or AssumeRole failed.
                RequestError::Credentials(DisplayErrorContext(&err).to_string())
            }
            _ => RequestError::Transient(DisplayErrorContext(&err).to_string()),
        }
    }
}

impl Sink for KinesisSink {
    async fn put(&self, records: &[&Record]) -> Result<Vec<EntryFailure>, RequestError> {
        let entries: Vec<PutRecordsRequestEntry> = records
            .iter()
            .map(|r| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(r.data.clone()))
                    .partition_key(r.partition_key.clone())
                    .build()
                    .expect("data and partition key are set")
            })
            .collect();
        let output = self
            .client
            .put_records()
            .set_stream_name(self.stream_name.clone())
            .set_stream_arn(self.stream_arn.clone())
            .set_records(Some(entries))
            .send()
            .await
            .map_err(|e| self.classify(e))?;

        if output.failed_record_count().unwrap_or(0) == 0 && output.records().len() == records.len()
        {
            return Ok(Vec::new());
        }
        if output.records().len() != records.len() {
            // A response that does not line up with the request proves nothing: resend it all.
            return Err(RequestError::Transient(format!(
                "PutRecords answered {} results for {} entries",
                output.records().len(),
                records.len()
            )));
        }
        let failures: Vec<EntryFailure> = output
            .records()
            .iter()
            .enumerate()
            .filter_map(|(index, result)| {
                let code = result.error_code()?;
                Some(EntryFailure {
                    index,
                    code: code.to_owned(),
                    throttled: code == "ProvisionedThroughputExceededException"
                        || code == "KMSThrottlingException",
                })
            })
            .collect();
        if failures.len() as i64 != i64::from(output.failed_record_count().unwrap_or(0)) {
            return Err(RequestError::Transient(format!(
                "PutRecords reported {} failed entries but marked {}",
                output.failed_record_count().unwrap_or(0),
                failures.len()
            )));
        }
        Ok(failures)
    }
}
