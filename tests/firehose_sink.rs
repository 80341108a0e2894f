//! The Firehose sink against moto: PutRecordBatch into a DirectPut delivery stream in account B
//! (assumed role), read back from the S3 bucket it delivers to. No fakes: moto's Firehose writes
//! each request into its S3 as one object.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use doka::sink::firehose::{FirehoseSink, MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
use doka::sink::{Entry, EntryFailure, RequestError, Sink};

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

/// Sends `data` through `sink` in one call, each record with a key of 17.
async fn put(sink: &FirehoseSink, data: &[Bytes]) -> Result<Vec<EntryFailure>, RequestError> {
    let keys: Vec<String> = (0..data.len()).map(|i| format!("key-{}", i % 17)).collect();
    let entries: Vec<Entry<'_>> = keys
        .iter()
        .zip(data)
        .map(|(key, data)| Entry {
            partition_key: key,
            explicit_hash_key: None,
            data,
        })
        .collect();
    sink.put(&entries).await
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

/// A delivery stream in account B and the bucket it writes into under [`PREFIX`].
struct Delivery {
    firehose: aws_sdk_firehose::Client,
    s3: aws_sdk_s3::Client,
    name: String,
    bucket: String,
}

impl Delivery {
    async fn create(ep: &Endpoints) -> Self {
        let (firehose, s3) = account_b_clients(ep).await;
        let name = unique("doka-fh");
        let bucket = unique("doka-fh-bucket");
        create_delivery_stream(&firehose, &s3, &name, &bucket, PREFIX).await;
        Self {
            firehose,
            s3,
            name,
            bucket,
        }
    }

    /// A sink into this delivery stream, as account B.
    fn sink(&self, max_entries: usize, max_bytes: usize) -> FirehoseSink {
        sink(self.firehose.clone(), &self.name, max_entries, max_bytes)
    }

    /// Sends `data` through `sink` in one call: no entry may fail, and every record must reach
    /// the bucket exactly once.
    async fn put_exactly_once(&self, sink: &FirehoseSink, data: &[Bytes]) {
        let failures = put(sink, data).await.expect("PutRecordBatch");
        assert!(failures.is_empty(), "failed entries: {failures:?}");
        let lines = wait_for_lines(
            &self.s3,
            &self.bucket,
            PREFIX,
            data.len(),
            Duration::from_secs(30),
        )
        .await;
        assert_exactly_once(&lines, data);
    }

    async fn objects(&self) -> Vec<Vec<u8>> {
        read_objects(&self.s3, &self.bucket, PREFIX).await
    }

    async fn delete(self) {
        delete_delivery_stream(&self.firehose, &self.s3, &self.name, &self.bucket).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_bucket_exactly_once_across_requests() {
    const N: usize = 1200;
    let delivery = Delivery::create(&endpoints()).await;
    let data = records(N);
    let sink = delivery.sink(MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
    delivery.put_exactly_once(&sink, &data).await;
    // moto writes one object per request: 1,200 records at 500 per request make three.
    let objects = delivery.objects().await;
    assert_eq!(objects.len(), 3, "one object per PutRecordBatch request");
    let mut per_object: Vec<usize> = objects.iter().map(|o| lines_in(o)).collect();
    per_object.sort_unstable();
    assert_eq!(per_object, vec![200, 500, 500]);

    delivery.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stay_within_the_byte_bound() {
    const N: usize = 300;
    const MAX_BYTES: usize = 8_000;
    let delivery = Delivery::create(&endpoints()).await;
    let data = records(N);
    let total: usize = data.iter().map(Bytes::len).sum();
    let sink = delivery.sink(MAX_BATCH_RECORDS, MAX_BYTES);
    delivery.put_exactly_once(&sink, &data).await;
    let objects = delivery.objects().await;
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

    delivery.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_delivery_stream_is_a_configuration_error_naming_it() {
    let ep = endpoints();
    let (firehose, _s3) = account_b_clients(&ep).await;
    let name = unique("doka-fh-missing");
    let sink = sink(firehose, &name, MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
    // Two requests, both failing as a whole: the batch fails as a whole.
    match put(&sink, &records(700)).await {
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
    let delivery = Delivery::create(&ep).await;
    let (firehose_a, s3_a) = account_a_clients(&ep);
    let name = &delivery.name;

    let listed_b = delivery
        .firehose
        .list_delivery_streams()
        .limit(10_000)
        .send()
        .await
        .expect("ListDeliveryStreams as B");
    assert!(listed_b.delivery_stream_names().contains(name));
    assert_hidden_from_a(&firehose_a, &s3_a, name, &delivery.bucket).await;

    // Writing as A fails as a missing delivery stream, and nothing reaches B's bucket.
    let data = records(10);
    let sink_a = sink(firehose_a, name, MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
    match put(&sink_a, &data).await {
        Err(RequestError::Configuration(msg)) => assert!(msg.contains(name), "{msg}"),
        other => panic!("account A wrote to account B's delivery stream: {other:?}"),
    }
    assert!(
        read_objects(&delivery.s3, &delivery.bucket, "")
            .await
            .is_empty()
    );
    // As B, the same records arrive.
    let sink_b = delivery.sink(MAX_BATCH_RECORDS, MAX_BATCH_BYTES);
    delivery.put_exactly_once(&sink_b, &data).await;

    delivery.delete().await;
}

fn lines_in(object: &[u8]) -> usize {
    object.iter().filter(|&&b| b == b'\n').count()
}
