//! `doka check` for a Firehose route: the delivery stream exists and is active; with
//! `--write-test`, one marked record.

use super::FirehoseConfig;
use crate::sink::CheckWalk;

/// The hops of a Firehose route: the delivery stream is there and active, and (with
/// `--write-test`) takes a record.
pub async fn delivery_stream(
    walk: &mut dyn CheckWalk,
    firehose: &FirehoseConfig,
    client: &aws_sdk_firehose::Client,
    region: &str,
) {
    let name = firehose.delivery_stream.as_deref().unwrap_or_default();
    let described = client
        .describe_delivery_stream()
        .delivery_stream_name(name)
        .send()
        .await;
    let status = match described {
        Ok(out) => out
            .delivery_stream_description
            .map(|d| d.delivery_stream_status.as_str().to_owned())
            .unwrap_or_default(),
        Err(e) => {
            let text = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
            let fix = if text.contains("ResourceNotFound") {
                "Check firehose.delivery_stream, aws.region (its region) and aws.role_arn (its account)"
            } else if text.contains("AccessDenied") {
                "The role needs firehose:DescribeDeliveryStream and firehose:PutRecordBatch on the delivery stream"
            } else {
                "Check aws.firehose_endpoint (or AWS_ENDPOINT_URL_FIREHOSE) and the network path to Firehose"
            };
            walk.hop_fail(
                "firehose.delivery_stream",
                format!("DescribeDeliveryStream for `{name}` in {region} failed: {text}"),
                fix,
            );
            return;
        }
    };
    let detail = format!("delivery stream {name} in {region}: {status}");
    let ok = if status == "ACTIVE" {
        walk.hop_ok("firehose.delivery_stream", detail)
    } else {
        walk.hop_fail(
            "firehose.delivery_stream",
            detail,
            "Wait until the delivery stream is ACTIVE",
        )
    };
    if !ok || !walk.write_test() {
        return;
    }
    let record = aws_sdk_firehose::types::Record::builder()
        .data(aws_smithy_types::Blob::new(
            format!(
                "{{\"doka_check\":\"--write-test: a test record, not Kafka data\",\"at\":\"{}\"}}\n",
                crate::sink::unix_time_now()
            )
            .into_bytes(),
        ))
        .build();
    let written = match record {
        Ok(record) => client
            .put_record()
            .delivery_stream_name(name)
            .record(record)
            .send()
            .await
            .map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()),
        Err(e) => Err(e.to_string()),
    };
    match written {
        Ok(_) => walk.hop_ok(
            "firehose.write_test",
            format!("TEST RECORD WRITTEN to delivery stream {name}: its destination will hold it"),
        ),
        Err(e) => walk.hop_fail(
            "firehose.write_test",
            format!("PutRecord failed: {e}"),
            "The role needs firehose:PutRecord and firehose:PutRecordBatch on the delivery stream",
        ),
    };
}
