//! `doka check` for a Kinesis route: the stream exists, is active and takes records as large as
//! `kinesis.max_record_bytes`; with `--write-test`, one marked record.

use super::KinesisConfig;
use crate::aws::AwsConfig;
use crate::sink::{CheckWalk, HopStatus};

/// A stream's maximum record size unless raised (what a stream that does not report one has).
const KINESIS_DEFAULT_RECORD_BYTES: u64 = 1024 * 1024;

/// The stream's hops, with the route's client.
pub async fn stream(
    walk: &mut dyn CheckWalk,
    kinesis: &KinesisConfig,
    aws: &AwsConfig,
    client: &aws_sdk_kinesis::Client,
    region: &str,
) {
    let (name, arn) = kinesis.target();
    let described = client
        .describe_stream_summary()
        .set_stream_name(name.map(str::to_owned))
        .set_stream_arn(arn.map(str::to_owned))
        .send()
        .await;
    let summary = match described {
        Ok(out) => match out.stream_description_summary {
            Some(s) => s,
            None => {
                walk.hop_fail(
                    "kinesis.stream",
                    "DescribeStreamSummary returned no description".into(),
                    "Check kinesis.stream",
                );
                return;
            }
        },
        Err(e) => {
            let (detail, fix) = describe_stream_error(kinesis, aws, region, &e);
            walk.hop_fail("kinesis.stream", detail, &fix);
            return;
        }
    };
    let status = summary.stream_status().as_str().to_owned();
    let encryption = match (summary.encryption_type(), summary.key_id()) {
        (Some(t), Some(key)) if t.as_str() == "KMS" => format!("encrypted with KMS key {key}"),
        _ => "not encrypted".to_owned(),
    };
    let max_bytes = summary
        .max_record_size_in_kib()
        .map(|kib| kib as u64 * 1024);
    let detail = format!(
        "stream {} in {}: {status}, {} open shards, {encryption}, maximum record size {}",
        summary.stream_name(),
        region,
        summary.open_shard_count(),
        max_bytes.map_or("not reported (1 MiB assumed)".to_owned(), |b| format!(
            "{b} bytes"
        ))
    );
    let ok = if status != "ACTIVE" {
        walk.hop_fail(
            "kinesis.stream",
            detail,
            "Wait until the stream is ACTIVE (CREATING/UPDATING finish by themselves; DELETING does not)",
        )
    } else {
        match record_size_verdict(max_bytes, kinesis.max_record_bytes) {
            (HopStatus::Ok, _) => walk.hop_ok("kinesis.stream", detail),
            (status, fix) => walk.hop("kinesis.stream", status, detail, fix),
        }
    };
    if !ok || !walk.write_test() {
        return;
    }
    let written = client
        .put_record()
        .set_stream_name(name.map(str::to_owned))
        .set_stream_arn(arn.map(str::to_owned))
        .partition_key("doka-check")
        .data(aws_smithy_types::Blob::new(
            format!(
                "doka check --write-test: a test record, not Kafka data ({})",
                crate::sink::unix_time_now()
            )
            .into_bytes(),
        ))
        .send()
        .await;
    match written {
        Ok(out) => walk.hop_ok(
            "kinesis.write_test",
            format!(
                "TEST RECORD WRITTEN (partition key doka-check) to shard {}, sequence number {}: consumers of the stream will see it",
                out.shard_id(),
                out.sequence_number()
            ),
        ),
        Err(e) => walk.hop_fail(
            "kinesis.write_test",
            format!(
                "PutRecord failed: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            ),
            "Role B needs kinesis:PutRecord and kinesis:PutRecords on the stream (and \
             kms:GenerateDataKey on its key when it is encrypted with a customer key)",
        ),
    };
}

/// The stream's maximum record size (`None`: not reported) against `kinesis.max_record_bytes`:
/// above the stream's limit fails (Kinesis refuses those records, and doka would retry them
/// without end); above Kinesis' default when the stream does not say its own deserves a look;
/// below the stream's limit is a choice worth stating.
fn record_size_verdict(reported: Option<u64>, configured: u64) -> (HopStatus, Option<String>) {
    match reported {
        Some(limit) if limit < configured => (
            HopStatus::Fail,
            Some(format!(
                "kinesis.max_record_bytes ({configured}) is above the stream's limit: lower it to {limit} or raise the stream's (UpdateMaxRecordSize)"
            )),
        ),
        None if configured > KINESIS_DEFAULT_RECORD_BYTES => (
            HopStatus::Warn,
            Some(format!(
                "kinesis.max_record_bytes ({configured}) is above Kinesis' default of \
                 {KINESIS_DEFAULT_RECORD_BYTES} bytes and the stream does not say its own: unless it was \
                 raised (UpdateMaxRecordSize), larger records are refused by the stream and retried \
                 without end. Lower kinesis.max_record_bytes to {KINESIS_DEFAULT_RECORD_BYTES} or \
                 confirm the stream's MaxRecordSizeInKiB"
            )),
        ),
        Some(limit) if limit > configured => (
            HopStatus::Warn,
            Some(format!(
                "The stream takes records up to {limit} bytes; kinesis.max_record_bytes ({configured}) refuses larger ones before sending"
            )),
        ),
        _ => (HopStatus::Ok, None),
    }
}

fn describe_stream_error<E: std::error::Error + 'static>(
    kinesis: &KinesisConfig,
    aws: &AwsConfig,
    region: &str,
    error: &E,
) -> (String, String) {
    let text = aws_smithy_types::error::display::DisplayErrorContext(error).to_string();
    let account = aws
        .role_arn
        .as_deref()
        .and_then(|r| r.split(':').nth(4))
        .unwrap_or("of the source identity");
    if text.contains("ResourceNotFound") {
        (
            format!(
                "stream {} does not exist in region {region}, account {account}",
                kinesis.stream_name()
            ),
            "Check kinesis.stream, aws.region (the stream's region) and aws.role_arn (the stream's account)"
                .to_owned(),
        )
    } else if text.contains("AccessDenied") {
        (
            format!("DescribeStreamSummary refused: {text}"),
            "Role B needs kinesis:DescribeStreamSummary and kinesis:ListShards on the stream"
                .to_owned(),
        )
    } else {
        (
            format!("DescribeStreamSummary failed: {text}"),
            "Check aws.kinesis_endpoint (or AWS_ENDPOINT_URL_KINESIS) and the network path to Kinesis"
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_are_compared_with_the_streams_limit_or_kinesis_default() {
        const MIB: u64 = 1024 * 1024;
        let (status, fix) = record_size_verdict(Some(MIB), 2 * MIB);
        assert_eq!(status, HopStatus::Fail);
        assert!(fix.unwrap().contains("lower it to 1048576"));
        let (status, fix) = record_size_verdict(None, 2 * MIB);
        assert_eq!(status, HopStatus::Warn);
        assert!(fix.unwrap().contains("Kinesis' default of 1048576"));
        let (status, fix) = record_size_verdict(Some(4 * MIB), MIB);
        assert_eq!(status, HopStatus::Warn);
        assert!(fix.unwrap().contains("up to 4194304 bytes"));
        assert_eq!(record_size_verdict(Some(MIB), MIB), (HopStatus::Ok, None));
        assert_eq!(record_size_verdict(None, MIB), (HopStatus::Ok, None));
    }
}
