//! The Firehose sink against moto: PutRecordBatch into a DirectPut delivery stream in account B
//! (assumed role), read back from the S3 bucket it delivers to. No fakes: moto's Firehose writes
//! each request into its S3 as one object.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use doka::sink::firehose::{FirehoseSink, MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
use doka::sink::{Entry, RequestError, Sink};

use support::firehose::*;
use support::*;

const PREFIX: &str = "doka/";

/// Newline-terminated records with an id up front, of varied lengths, with bytes that are not
/// UTF-8 (but never a newline inside).
fn records(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let mut data = format!("{i:06} ").into_bytes();
            data.extend((0..(i * 37) % 300).map(|j| [0x00, 0xff, b'x', 0x80][j % 4]));
            data.push(b'\n');
            Bytes::from(data)
        })
        .collect()
}

fn entries<'a>(keys: &'a [String], data: &'a [Bytes]) -> Vec<Entry<'a>> {
    keys.iter()
        .zip(data)
        .map(|(key, data)| Entry {
            partition_key: key,
            explicit_hash_key: None,
            data,
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key-{}", i % 17)).collect()
}

/// Every record is among the lines exactly once, with its exact bytes, and nothing else is.
fn assert_exactly_once(lines: &[Vec<u8>], sent: &[Bytes]) {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for line in lines {
        let id: usize = std::str::from_utf8(&line[..6])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a line that is no record: {line:?}"));
        assert!(id < sent.len(), "record {id} was never sent");
        assert_eq!(
            line.as_slice(),
            &sent[id][..sent[id].len() - 1],
            "record {id} arrived with other bytes"
        );
        *seen.entry(id).or_default() += 1;
    }
    let missing: Vec<usize> = (0..sent.len()).filter(|i| !seen.contains_key(i)).collect();
    let duplicated: Vec<usize> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| *i)
        .collect();
    assert!(missing.is_empty(), "records missing: {missing:?}");
    assert!(duplicated.is_empty(), "records duplicated: {duplicated:?}");
}

fn sink(
    client: aws_sdk_firehose::Client,
    name: &str,
    max_entries: usize,
    max_bytes: usize,
) -> FirehoseSink {
    FirehoseSink::new(
        client,
        name.to_owned(),
        format!("delivery stream `{name}` (region {REGION}, via role {ROLE_B})"),
        max_entries,
        max_bytes,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_bucket_exactly_once_across_requests() {
    const N: usize = 1200;
    let ep = endpoints();
    let (firehose, s3) = account_b_clients(&ep).await;
    let name = unique("doka-fh");
    let bucket = unique("doka-fh-bucket");
    create_delivery_stream(&firehose, &s3, &name, &bucket, PREFIX).await;

    let data = records(N);
    let keys = keys(N);
    let sink = sink(firehose.clone(), &name, MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
    let failures = sink
        .put(&entries(&keys, &data))
        .await
        .expect("PutRecordBatch");
    assert!(failures.is_empty(), "failed entries: {failures:?}");

    let lines = wait_for_lines(&s3, &bucket, PREFIX, N, Duration::from_secs(30)).await;
    assert_exactly_once(&lines, &data);
    // moto writes one object per request: 1,200 records at 500 per request make three.
    let objects = read_objects(&s3, &bucket, PREFIX).await;
    assert_eq!(objects.len(), 3, "one object per PutRecordBatch request");
    let mut per_object: Vec<usize> = objects.iter().map(|o| lines_in(o)).collect();
    per_object.sort_unstable();
    assert_eq!(per_object, vec![200, 500, 500]);

    delete_delivery_stream(&firehose, &s3, &name, &bucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stay_within_the_byte_bound() {
    const N: usize = 300;
    const MAX_BYTES: usize = 8_000;
    let ep = endpoints();
    let (firehose, s3) = account_b_clients(&ep).await;
    let name = unique("doka-fh");
    let bucket = unique("doka-fh-bucket");
    create_delivery_stream(&firehose, &s3, &name, &bucket, PREFIX).await;

    let data = records(N);
    let keys = keys(N);
    let total: usize = data.iter().map(Bytes::len).sum();
    let sink = sink(firehose.clone(), &name, MAX_BATCH_RECORDS, MAX_BYTES);
    let failures = sink
        .put(&entries(&keys, &data))
        .await
        .expect("PutRecordBatch");
    assert!(failures.is_empty(), "failed entries: {failures:?}");

    let lines = wait_for_lines(&s3, &bucket, PREFIX, N, Duration::from_secs(30)).await;
    assert_exactly_once(&lines, &data);
    let objects = read_objects(&s3, &bucket, PREFIX).await;
    assert!(
        objects.len() >= total.div_ceil(MAX_BYTES),
        "{} objects for {total} bytes at {MAX_BYTES} per request",
        objects.len()
    );
    for object in &objects {
        assert!(
            object.len() <= MAX_BYTES,
            "a request of {} bytes",
            object.len()
        );
    }

    delete_delivery_stream(&firehose, &s3, &name, &bucket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_delivery_stream_is_a_configuration_error_naming_it() {
    let ep = endpoints();
    let (firehose, _s3) = account_b_clients(&ep).await;
    let name = unique("doka-fh-missing");
    let data = records(700);
    let keys = keys(700);
    let sink = sink(firehose, &name, MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
    // Two requests, both failing as a whole: the batch fails as a whole.
    match sink.put(&entries(&keys, &data)).await {
        Err(RequestError::Configuration(msg)) => {
            assert!(
                msg.contains(&name),
                "the message must name the delivery stream: {msg}"
            );
            assert!(
                msg.contains("firehose.delivery_stream") && msg.contains("aws.role_arn"),
                "the message must say which settings to check: {msg}"
            );
            assert!(
                !msg.contains("000000 "),
                "record data in the message: {msg}"
            );
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_a_does_not_see_account_bs_delivery_stream_or_bucket() {
    let ep = endpoints();
    let (firehose_b, s3_b) = account_b_clients(&ep).await;
    let (firehose_a, s3_a) = account_a_clients(&ep);
    let name = unique("doka-fh");
    let bucket = unique("doka-fh-bucket");
    create_delivery_stream(&firehose_b, &s3_b, &name, &bucket, PREFIX).await;

    let listed_b = firehose_b
        .list_delivery_streams()
        .limit(10_000)
        .send()
        .await
        .expect("ListDeliveryStreams as B");
    assert!(listed_b.delivery_stream_names().contains(&name));
    let listed_a = firehose_a
        .list_delivery_streams()
        .limit(10_000)
        .send()
        .await
        .expect("ListDeliveryStreams as A");
    assert!(
        !listed_a.delivery_stream_names().contains(&name),
        "account A lists account B's delivery stream"
    );
    let described = firehose_a
        .describe_delivery_stream()
        .delivery_stream_name(&name)
        .send()
        .await;
    assert!(
        described.is_err(),
        "account A can describe account B's delivery stream"
    );
    let buckets_a = s3_a.list_buckets().send().await.expect("ListBuckets as A");
    assert!(
        !buckets_a
            .buckets()
            .iter()
            .any(|b| b.name() == Some(bucket.as_str())),
        "account A lists account B's bucket"
    );

    // Writing as A fails as a missing delivery stream, and nothing reaches B's bucket.
    let data = records(10);
    let keys = keys(10);
    let sink_a = sink(firehose_a, &name, MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
    match sink_a.put(&entries(&keys, &data)).await {
        Err(RequestError::Configuration(msg)) => assert!(msg.contains(&name), "{msg}"),
        other => panic!("account A wrote to account B's delivery stream: {other:?}"),
    }
    assert!(read_objects(&s3_b, &bucket, "").await.is_empty());
    // As B, the same records arrive.
    let sink_b = sink(
        firehose_b.clone(),
        &name,
        MAX_BATCH_RECORDS,
        MAX_BATCH_BYTES,
    );
    let failures = sink_b
        .put(&entries(&keys, &data))
        .await
        .expect("PutRecordBatch as B");
    assert!(failures.is_empty(), "failed entries: {failures:?}");
    let lines = wait_for_lines(&s3_b, &bucket, PREFIX, 10, Duration::from_secs(30)).await;
    assert_exactly_once(&lines, &data);

    delete_delivery_stream(&firehose_b, &s3_b, &name, &bucket).await;
}

fn lines_in(object: &[u8]) -> usize {
    object.iter().filter(|&&b| b == b'\n').count()
}
