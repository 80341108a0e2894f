//! Amazon Data Firehose at moto: delivery streams with an S3 destination in moto's S3, so a record
//! sent to Firehose can be read back from the bucket.
//!
//! moto serves STS, Firehose and S3 on one endpoint and keeps accounts apart: long-term keys act
//! as account A (123456789012), credentials from AssumeRole into [`super::ROLE_B`] as account B.
//! A DirectPut delivery stream with an S3 (or extended S3) destination writes each PutRecord(Batch)
//! straight into the bucket as one object, the records' data concatenated as sent, under
//! `<prefix>/YYYY/MM/DD/HH/<stream>-1-YYYY-MM-DD-HH-MM-SS-<uuid>`: no buffering, no delay. Keys
//! made in the same second sort by their random suffix, not by when they were written.

use std::time::Duration;

use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::types::{
    BufferingHints, CompressionFormat, DeliveryStreamStatus, DeliveryStreamType,
    ExtendedS3DestinationConfiguration,
};

use super::{
    ACCOUNT_B, Endpoints, REGION, ROLE_B, assume_role_credentials, eventually_async,
    source_credentials,
};

/// Where moto serves Firehose and S3: the STS endpoint, unless `DOKA_TEST_FIREHOSE_ENDPOINT` says
/// otherwise.
pub fn endpoint(ep: &Endpoints) -> String {
    std::env::var("DOKA_TEST_FIREHOSE_ENDPOINT").unwrap_or_else(|_| ep.sts.clone())
}

fn clients(ep: &Endpoints, creds: Credentials) -> (aws_sdk_firehose::Client, aws_sdk_s3::Client) {
    let url = endpoint(ep);
    let firehose = aws_sdk_firehose::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(&url)
        .credentials_provider(creds.clone())
        .build();
    // Path-style: moto's endpoint is an IP and port, with no bucket subdomains.
    let s3 = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(&url)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    (
        aws_sdk_firehose::Client::from_conf(firehose),
        aws_sdk_s3::Client::from_conf(s3),
    )
}

/// Firehose and S3 clients acting as account A (the source account, where doka must *not* write).
pub fn account_a_clients(ep: &Endpoints) -> (aws_sdk_firehose::Client, aws_sdk_s3::Client) {
    clients(ep, source_credentials())
}

/// Firehose and S3 clients acting as account B, with credentials from AssumeRole at moto.
pub async fn account_b_clients(ep: &Endpoints) -> (aws_sdk_firehose::Client, aws_sdk_s3::Client) {
    clients(ep, assume_role_credentials(&ep.sts, ROLE_B).await)
}

/// Account A's clients see neither account B's delivery stream `name` nor its `bucket`: they do
/// not list them, and describing the delivery stream fails.
pub async fn assert_hidden_from_a(
    firehose_a: &aws_sdk_firehose::Client,
    s3_a: &aws_sdk_s3::Client,
    name: &str,
    bucket: &str,
) {
    let listed_a = firehose_a
        .list_delivery_streams()
        .limit(10_000)
        .send()
        .await
        .expect("ListDeliveryStreams as A");
    assert!(
        !listed_a.delivery_stream_names().iter().any(|n| n == name),
        "account A lists account B's delivery stream"
    );
    assert!(
        firehose_a
            .describe_delivery_stream()
            .delivery_stream_name(name)
            .send()
            .await
            .is_err(),
        "account A can describe account B's delivery stream"
    );
    let buckets_a = s3_a.list_buckets().send().await.expect("ListBuckets as A");
    assert!(
        !buckets_a.buckets().iter().any(|b| b.name() == Some(bucket)),
        "account A lists account B's bucket"
    );
}

/// Creates `bucket` and a DirectPut delivery stream `name` that writes into it under `prefix`,
/// and waits until the stream is ACTIVE.
pub async fn create_delivery_stream(
    firehose: &aws_sdk_firehose::Client,
    s3: &aws_sdk_s3::Client,
    name: &str,
    bucket: &str,
    prefix: &str,
) {
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateBucket {bucket}: {e:?}"));
    // Extended S3 is the configuration AWS documents (plain S3 is deprecated); moto handles both
    // alike. It checks neither the role nor the bucket's existence here: a missing bucket shows
    // up only as a failed PutRecordBatch. moto describes the destination by echoing what it was
    // given, and the SDK refuses a description without a compression format: set it.
    let destination = ExtendedS3DestinationConfiguration::builder()
        .role_arn(format!("arn:aws:iam::{ACCOUNT_B}:role/firehose-delivery"))
        .bucket_arn(format!("arn:aws:s3:::{bucket}"))
        .prefix(prefix)
        .compression_format(CompressionFormat::Uncompressed)
        .buffering_hints(
            BufferingHints::builder()
                .size_in_mbs(1)
                .interval_in_seconds(60)
                .build(),
        )
        .build()
        .expect("role and bucket are set");
    firehose
        .create_delivery_stream()
        .delivery_stream_name(name)
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(destination)
        .send()
        .await
        .unwrap_or_else(|e| {
            use aws_sdk_firehose::error::ProvideErrorMetadata;
            if e.code() == Some("LimitExceededException") {
                panic!(
                    "CreateDeliveryStream {name}: moto holds its limit of 50 delivery streams in \
                     account B (left behind by failed tests?): restart it with \
                     `scripts/stack.sh down && scripts/stack.sh up`"
                );
            }
            panic!("CreateDeliveryStream {name}: {e:?}")
        });
    let what = format!("delivery stream {name} to become ACTIVE");
    let every = Duration::from_millis(50);
    eventually_async(&what, Duration::from_secs(30), every, async || {
        let d = firehose
            .describe_delivery_stream()
            .delivery_stream_name(name)
            .send()
            .await
            .expect("DescribeDeliveryStream");
        let status = d
            .delivery_stream_description()
            .expect("a description")
            .delivery_stream_status();
        (*status == DeliveryStreamStatus::Active)
            .then_some(())
            .ok_or(format!("{status:?}"))
    })
    .await
}

/// Keys of every object in `bucket` under `prefix`, sorted.
pub async fn list_keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListObjectsV2 {bucket}/{prefix}: {e:?}"));
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => break,
        }
    }
    keys.sort();
    keys
}

/// The bodies of every object in `bucket` under `prefix`, sorted by key.
pub async fn read_objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for key in list_keys(s3, bucket, prefix).await {
        let object = s3
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetObject {bucket}/{key}: {e:?}"));
        let body = object
            .body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("reading {bucket}/{key}: {e}"));
        bodies.push(body.into_bytes().to_vec());
    }
    bodies
}

/// Splits objects into lines (without the "\n"), and counts the newline-terminated ones. An
/// object's unterminated tail is returned as a line too (so a test sees it) but not counted.
pub fn lines(objects: &[Vec<u8>]) -> (Vec<Vec<u8>>, usize) {
    let mut lines = Vec::new();
    let mut terminated = 0;
    for object in objects {
        let mut rest = object.as_slice();
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            lines.push(rest[..end].to_vec());
            terminated += 1;
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            lines.push(rest.to_vec());
        }
    }
    (lines, terminated)
}

/// Reads the objects under `prefix` until they hold at least `n` newline-terminated lines in all
/// (or panics after `timeout`); returns every line, objects in key order.
pub async fn wait_for_lines(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    let what = format!("{bucket}/{prefix} to hold at least {n} lines");
    eventually_async(&what, timeout, Duration::from_millis(200), async || {
        let (lines, terminated) = lines(&read_objects(s3, bucket, prefix).await);
        if terminated >= n {
            Ok(lines)
        } else {
            Err(format!("{terminated} lines"))
        }
    })
    .await
}

/// Deletes the delivery stream, then empties and deletes its bucket.
pub async fn delete_delivery_stream(
    firehose: &aws_sdk_firehose::Client,
    s3: &aws_sdk_s3::Client,
    name: &str,
    bucket: &str,
) {
    firehose
        .delete_delivery_stream()
        .delivery_stream_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DeleteDeliveryStream {name}: {e:?}"));
    for key in list_keys(s3, bucket, "").await {
        s3.delete_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DeleteObject {bucket}/{key}: {e:?}"));
    }
    s3.delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DeleteBucket {bucket}: {e:?}"));
}
