//! The AWS side: identities (account A's keys, role B through AssumeRole), Kinesis clients, and
//! streams created, read back and waited on.

use std::time::Duration;

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};

use super::{ACCOUNT_A_KEY, Endpoints, REGION, ROLE_B, eventually_async, message_id};

/// The source identity: account A's long-term keys, as doka gets them from its environment.
pub fn source_credentials() -> Credentials {
    Credentials::new(ACCOUNT_A_KEY, "source-secret", None, None, "test")
}

/// Credentials from AssumeRole into `role` at the STS emulator `sts`, asked for with the source
/// identity (account A's long-term keys). The assumed identity must be in the role's account.
pub async fn assume_role_credentials(sts: &str, role: &str) -> Credentials {
    let sts_conf = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(sts)
        .credentials_provider(source_credentials())
        .build();
    let out = aws_sdk_sts::Client::from_conf(sts_conf)
        .assume_role()
        .role_arn(role)
        .role_session_name("doka-test-reader")
        .send()
        .await
        .unwrap_or_else(|e| panic!("AssumeRole into {role} at {sts}: {e:?}"));
    let account = role.split(':').nth(4).expect("a role ARN");
    let assumed = out.assumed_role_user.expect("assumed role user").arn;
    assert!(
        assumed.contains(&format!("::{account}:")),
        "the STS emulator must keep accounts apart: assumed {assumed} for {role}"
    );
    let c = out.credentials.expect("credentials");
    Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        Some(c.session_token),
        None,
        "test",
    )
}

/// A Kinesis client for any endpoint (kinesis-mock, moto) with these credentials.
pub fn kinesis_client_at(endpoint: &str, creds: Credentials) -> aws_sdk_kinesis::Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

/// A Kinesis client acting as account A (the source account, where doka must *not* write).
pub fn account_a_kinesis(ep: &Endpoints) -> aws_sdk_kinesis::Client {
    account_a_kinesis_at(&ep.kinesis)
}

/// A Kinesis client acting as account A (the source identity) at any endpoint.
pub fn account_a_kinesis_at(endpoint: &str) -> aws_sdk_kinesis::Client {
    kinesis_client_at(endpoint, source_credentials())
}

/// A Kinesis client acting as account B, with credentials from AssumeRole at the STS emulator.
pub async fn account_b_kinesis(ep: &Endpoints) -> aws_sdk_kinesis::Client {
    kinesis_client_at(&ep.kinesis, assume_role_credentials(&ep.sts, ROLE_B).await)
}

pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
    wait_until_active(client, name).await;
}

/// Waits (up to 30 s) until the stream is ACTIVE: after creating it, or changing it.
pub async fn wait_until_active(client: &aws_sdk_kinesis::Client, name: &str) {
    let what = format!("stream {name} to become ACTIVE");
    let every = Duration::from_millis(50);
    eventually_async(&what, Duration::from_secs(30), every, async || {
        let d = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("DescribeStreamSummary");
        let status = d.stream_description_summary.unwrap().stream_status;
        (status == StreamStatus::Active)
            .then_some(())
            .ok_or(format!("{status:?}"))
    })
    .await
}

/// Deletes a stream, whatever the answer: kinesis-mock spends CPU on every stream it keeps.
pub async fn delete_stream(client: &aws_sdk_kinesis::Client, name: &str) {
    let _ = client.delete_stream().stream_name(name).send().await;
}

#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub shard: String,
    pub sequence: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Reads a stream incrementally: each poll continues where the last one stopped, so waiting for
/// records does not re-read (and load the emulator with) everything already seen.
pub struct StreamTail {
    client: aws_sdk_kinesis::Client,
    /// (shard id, where to continue)
    shards: Vec<(String, Option<String>)>,
    pub records: Vec<StreamRecord>,
}

impl StreamTail {
    pub async fn new(client: &aws_sdk_kinesis::Client, name: &str) -> Self {
        let listed = client
            .list_shards()
            .stream_name(name)
            .send()
            .await
            .expect("ListShards")
            .shards
            .unwrap_or_default();
        let mut shards = Vec::new();
        for shard in listed {
            let iterator = client
                .get_shard_iterator()
                .stream_name(name)
                .shard_id(&shard.shard_id)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("GetShardIterator")
                .shard_iterator;
            shards.push((shard.shard_id, iterator));
        }
        Self {
            client: client.clone(),
            shards,
            records: Vec::new(),
        }
    }

    /// Reads what arrived since the last poll; returns every record seen so far.
    pub async fn poll(&mut self) -> &[StreamRecord] {
        for (shard, iterator) in &mut self.shards {
            while let Some(it) = iterator.clone() {
                let page = self
                    .client
                    .get_records()
                    .shard_iterator(it)
                    .limit(10_000)
                    .send()
                    .await
                    .expect("GetRecords");
                let empty = page.records.is_empty();
                for r in page.records {
                    self.records.push(StreamRecord {
                        shard: shard.clone(),
                        sequence: r.sequence_number,
                        partition_key: r.partition_key.unwrap_or_default(),
                        data: r.data.into_inner(),
                    });
                }
                if page.next_shard_iterator.is_some() {
                    *iterator = page.next_shard_iterator;
                }
                if empty || page.millis_behind_latest == Some(0) {
                    break;
                }
            }
        }
        &self.records
    }
}

/// Every record in the stream, each shard in sequence order.
pub async fn read_stream(client: &aws_sdk_kinesis::Client, name: &str) -> Vec<StreamRecord> {
    let mut tail = StreamTail::new(client, name).await;
    tail.poll().await;
    tail.records
}

/// Reads the stream until it holds at least `n` records (or panics after `timeout`).
pub async fn wait_for_records(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    n: usize,
    timeout: Duration,
) -> Vec<StreamRecord> {
    let mut tail = StreamTail::new(client, name).await;
    let what = format!("stream {name} to hold at least {n} records");
    eventually_async(&what, timeout, Duration::from_millis(200), async || {
        let seen = tail.poll().await.len();
        (seen >= n).then_some(()).ok_or(format!("{seen} records"))
    })
    .await;
    tail.records
}

/// Reads `stream` until every id below `n` is in it (copies allowed), or panics after `timeout`.
/// Polls every 500 ms: the long runs that wait here keep kinesis-mock busy enough.
pub async fn wait_for_all(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    n: usize,
    timeout: Duration,
) -> Vec<StreamRecord> {
    wait_for_id_range(client, stream, 0..n, timeout, Duration::from_millis(500)).await
}

/// Orders sequence numbers (decimal strings of up to 128 bits).
pub fn sequence_key(s: &str) -> (usize, &str) {
    (s.len(), s)
}

/// Every stream name the client's account lists (all pages).
pub async fn stream_names(client: &aws_sdk_kinesis::Client) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let page = client
            .list_streams()
            .set_exclusive_start_stream_name(names.last().cloned())
            .send()
            .await
            .expect("ListStreams");
        let more = page.has_more_streams;
        let before = names.len();
        names.extend(page.stream_names);
        if !more || names.len() == before {
            return names;
        }
    }
}

/// Reads `stream` until every id in `ids` is in it (copies allowed), or panics after `timeout`
/// naming how many are missing. Ids outside `ids` are ignored here (check them afterwards).
pub async fn wait_for_ids(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    ids: std::ops::Range<usize>,
    timeout: Duration,
) -> Vec<StreamRecord> {
    wait_for_id_range(client, stream, ids, timeout, Duration::from_millis(200)).await
}

/// [`wait_for_ids`], reading what arrived every `every`.
async fn wait_for_id_range(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    ids: std::ops::Range<usize>,
    timeout: Duration,
    every: Duration,
) -> Vec<StreamRecord> {
    let mut tail = StreamTail::new(client, stream).await;
    let mut present = vec![false; ids.len()];
    let mut missing = ids.len();
    let what = format!("stream {stream} to hold every record with ids {ids:?}");
    eventually_async(&what, timeout, every, async || {
        let seen = tail.records.len();
        for r in &tail.poll().await[seen..] {
            let id = message_id(&r.data);
            if ids.contains(&id) && !present[id - ids.start] {
                present[id - ids.start] = true;
                missing -= 1;
            }
        }
        (missing == 0)
            .then_some(())
            .ok_or(format!("{missing} of the {} still missing", ids.len()))
    })
    .await;
    tail.records
}
