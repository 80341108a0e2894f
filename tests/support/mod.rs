//! Test harness: the local stack (moto for STS, kinesis-mock for Kinesis, librdkafka's mock cluster
//! as the Kafka broker), doka run as a real child process, and readers that count every record.
#![allow(dead_code)]

pub mod checked;
pub mod firehose;
pub mod kpl;
pub mod msk_token;
pub mod pod_identity;
pub mod prometheus;
pub mod proxy;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};

/// The source identity: kinesis-mock files a 12-digit access key id under that account (A).
pub const ACCOUNT_A_KEY: &str = "123456789012";
pub const ACCOUNT_B: &str = "222222222222";
pub const ROLE_B: &str = "arn:aws:iam::222222222222:role/doka-writer";
pub const REGION: &str = "us-east-1";

pub struct Endpoints {
    pub sts: String,
    pub kinesis: String,
}

/// Endpoints of the local AWS stand-ins started by `scripts/stack.sh up`.
pub fn endpoints() -> Endpoints {
    let sts = std::env::var("DOKA_TEST_STS_ENDPOINT").unwrap_or("http://127.0.0.1:4599".into());
    let kinesis =
        std::env::var("DOKA_TEST_KINESIS_ENDPOINT").unwrap_or("http://127.0.0.1:4568".into());
    for url in [&sts, &kinesis] {
        let addr = url.trim_start_matches("http://");
        assert!(
            TcpStream::connect(addr).is_ok(),
            "nothing answers at {url}: start the local AWS stack with `scripts/stack.sh up` (or run `make test`)"
        );
    }
    Endpoints { sts, kinesis }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

// ---------------------------------------------------------------------------------------------
// AWS side

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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("DescribeStreamSummary");
        if d.stream_description_summary.unwrap().stream_status == StreamStatus::Active {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} did not become ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let deadline = Instant::now() + timeout;
    let mut tail = StreamTail::new(client, name).await;
    loop {
        let seen = tail.poll().await.len();
        if seen >= n {
            return tail.records;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} holds {seen} records after {timeout:?}, expected at least {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

// ---------------------------------------------------------------------------------------------
// Kafka side

/// librdkafka's mock cluster: a real Kafka-protocol broker on a TCP port, hosted by the test.
pub struct Kafka {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Kafka {
    pub fn new(topic: &str, partitions: i32) -> Self {
        Self::with_topics(&[(topic, partitions)])
    }

    /// A cluster holding these (topic, partitions).
    pub fn with_topics(topics: &[(&str, i32)]) -> Self {
        let kafka = Self {
            cluster: MockCluster::new(1).expect("mock cluster"),
        };
        for &(topic, partitions) in topics {
            kafka.create_topic(topic, partitions);
        }
        kafka
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Takes the (only) broker down: connections are closed and refused until [`Self::broker_up`].
    pub fn broker_down(&self) {
        self.cluster.broker_down(1).expect("broker down");
    }

    pub fn broker_up(&self) {
        self.cluster.broker_up(1).expect("broker up");
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.cluster
            .create_topic(topic, partitions, 1)
            .expect("create topic");
    }

    /// Every message of a one-partition topic.
    pub fn read_all(&self, topic: &str) -> Vec<KafkaMessage> {
        use rdkafka::message::Headers;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", unique("reader"))
            .set("fetch.wait.max.ms", "5")
            .create()
            .expect("consumer");
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (out.len() as i64) < high - low {
            assert!(Instant::now() < deadline, "could not read {topic}");
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                    headers,
                ));
            }
        }
        out
    }
}

/// (key, value, headers) of a message read back from Kafka.
pub type KafkaMessage = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

struct Deliveries;
impl ClientContext for Deliveries {}
impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;
    fn delivery(&self, result: &DeliveryResult<'_>, index: Self::DeliveryOpaque) {
        let (partition, offset) = match result {
            Ok(m) => (m.partition(), m.offset()),
            Err((e, _)) => panic!("produce failed: {e}"),
        };
        DELIVERED.with(|d| d.borrow_mut().push((*index, partition, offset)));
    }
}

thread_local! {
    static DELIVERED: std::cell::RefCell<Vec<(usize, i32, i64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where a produced message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placement {
    pub partition: i32,
    pub offset: i64,
}

/// Produces keyed messages in order; returns where each landed (from the delivery reports).
pub fn produce(bootstrap: &str, topic: &str, messages: &[(Vec<u8>, Vec<u8>)]) -> Vec<Placement> {
    produce_with(bootstrap, &[], topic, messages)
}

/// [`produce`] with extra client properties (TLS, SASL).
pub fn produce_with(
    bootstrap: &str,
    properties: &[(&str, String)],
    topic: &str,
    messages: &[(Vec<u8>, Vec<u8>)],
) -> Vec<Placement> {
    let records: Vec<(Option<&[u8]>, &[u8])> = messages
        .iter()
        .map(|(k, v)| (Some(k.as_slice()), v.as_slice()))
        .collect();
    produce_records(bootstrap, properties, topic, &records)
}

/// Produces messages without a key (a null key, not an empty one), in order.
pub fn produce_keyless(bootstrap: &str, topic: &str, values: &[Vec<u8>]) -> Vec<Placement> {
    let records: Vec<(Option<&[u8]>, &[u8])> =
        values.iter().map(|v| (None, v.as_slice())).collect();
    produce_records(bootstrap, &[], topic, &records)
}

/// Produces (key, value) records in order; returns where each landed (from the delivery reports).
fn produce_records(
    bootstrap: &str,
    properties: &[(&str, String)],
    topic: &str,
    messages: &[(Option<&[u8]>, &[u8])],
) -> Vec<Placement> {
    produce_built(bootstrap, properties, topic, messages.len(), |i, record| {
        let (key, value) = messages[i];
        let record = record.payload(value);
        match key {
            Some(key) => record.key(key),
            None => record,
        }
    })
}

/// A record to produce with [`produce_built`]: its index in the batch is its delivery opaque.
pub type Outgoing<'a> = BaseRecord<'a, [u8], [u8], Box<usize>>;

/// Produces `count` records to `topic` in order, record `i` made by `build(i, bare record)` (which
/// adds the key, payload, partition, timestamp, headers, …); returns where each landed, from the
/// delivery reports. A failed delivery panics.
pub fn produce_built<'a>(
    bootstrap: &str,
    properties: &[(&str, String)],
    topic: &'a str,
    count: usize,
    build: impl Fn(usize, Outgoing<'a>) -> Outgoing<'a>,
) -> Vec<Placement> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(*k, v);
    }
    let producer: BaseProducer<Deliveries> = config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries)
        .expect("producer");
    DELIVERED.with(|d| d.borrow_mut().clear());
    for i in 0..count {
        let mut record = build(i, BaseRecord::with_opaque_to(topic, Box::new(i)));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce: {e}"
                    );
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let mut placements = vec![None; count];
    DELIVERED.with(|d| {
        for &(i, partition, offset) in d.borrow().iter() {
            placements[i] = Some(Placement { partition, offset });
        }
    });
    placements
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.unwrap_or_else(|| panic!("no delivery report for record {i}")))
        .collect()
}

/// Kafka headers in this order; a `None` value is a null header value.
pub fn owned_headers<'h>(
    headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
) -> OwnedHeaders {
    headers
        .into_iter()
        .fold(OwnedHeaders::new(), |owned, (key, value)| {
            owned.insert(Header { key, value })
        })
}

/// Produces one message with headers; returns where it landed.
pub async fn produce_with_headers(
    bootstrap: &str,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> Placement {
    produce_built(bootstrap, &[], topic, 1, |_, record| {
        record
            .key(key)
            .payload(value)
            .headers(owned_headers(headers.iter().map(|&(k, v)| (k, Some(v)))))
    })[0]
}

/// One past the last produced offset of each partition.
pub fn end_offsets(placements: &[Placement]) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for p in placements {
        let e = ends.entry(p.partition).or_insert(0);
        *e = (*e).max(p.offset + 1);
    }
    ends
}

/// The group's committed offset per partition (absent: none committed).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    committed_with(bootstrap, &[], group, topic, partitions)
}

/// [`committed`] with extra client properties (TLS, SASL).
pub fn committed_with(
    bootstrap: &str,
    properties: &[(&str, String)],
    group: &str,
    topic: &str,
    partitions: i32,
) -> HashMap<i32, i64> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(*k, v);
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// doka as a child process

pub struct Doka {
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a test run of doka needs to know.
pub struct DokaSetup<'a> {
    pub bootstrap: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub stream: &'a str,
    pub sts: &'a str,
    pub kinesis: &'a str,
}

impl DokaSetup<'_> {
    pub fn yaml(&self) -> String {
        format!(
            r#"kafka:
  brokers: "{bootstrap}"
  group_id: {group}
  topics: [{topic}]
  properties:
    fetch.wait.max.ms: 5
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
aws:
  region: {REGION}
  sts_endpoint: {sts}
  kinesis_endpoint: {kinesis}
  role_arn: {ROLE_B}
  external_id: test-external-id
  session_duration_secs: 900
  credential_refresh_margin_secs: 60
kinesis:
  stream: {stream}
batch:
  linger_ms: 5
pipeline:
  commit_interval_ms: 100
retry:
  initial_backoff_ms: 20
  max_backoff_ms: 500
http:
  listen: 127.0.0.1:0
"#,
            bootstrap = self.bootstrap,
            group = self.group,
            topic = self.topic,
            sts = self.sts,
            kinesis = self.kinesis,
            stream = self.stream,
        )
    }
}

/// The doka binary: Cargo's for integration tests, `DOKA_BIN` (or target/debug/doka) for the demo.
pub fn doka_binary() -> String {
    match option_env!("CARGO_BIN_EXE_doka") {
        Some(path) => path.to_owned(),
        None => std::env::var("DOKA_BIN").unwrap_or_else(|_| "target/debug/doka".into()),
    }
}

/// An `env` value for [`doka_command`] that removes the variable instead of setting it.
pub const UNSET: &str = "<unset>";

/// A command for the doka binary with a clean environment: only the source identity (account A
/// keys) and the given variables, so nothing from the machine leaks in.
pub fn doka_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(doka_binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", ACCOUNT_A_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "source-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("RUST_LOG", "info,doka=debug");
    for (k, v) in env {
        if *v == UNSET {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd
}

impl Doka {
    /// Starts `doka run` with `yaml` written to a temporary config file.
    pub fn start(yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("doka.yaml");
        std::fs::write(&config, yaml).unwrap();
        Self::spawn(&["run", "--config", config.to_str().unwrap()], env, dir)
    }

    /// Starts doka with these arguments; its log goes to a file in `dir`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], dir: tempfile::TempDir) -> Self {
        let log = dir.path().join("doka.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = doka_command(args, env)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start doka");
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The port doka's HTTP endpoint took (the harness' config lets the system choose one),
    /// from its start-up line.
    pub fn endpoint_port(&mut self) -> u16 {
        let line = self.wait_for_line(&["serving /metrics"], Duration::from_secs(30));
        line.rsplit(':')
            .next()
            .and_then(|p| {
                p.trim()
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no port in {line}"))
    }

    /// Waits until the log contains `needle` `times` times (e.g. "partitions assigned").
    pub fn wait_for_log(&mut self, needle: &str, times: usize, timeout: Duration) {
        self.wait_for(&format!("{needle:?}"), timeout, |log| {
            (log.matches(needle).count() >= times).then_some(())
        });
    }

    /// Waits until one log line contains every one of `parts`; returns that line.
    pub fn wait_for_line(&mut self, parts: &[&str], timeout: Duration) -> String {
        self.wait_for(&format!("a line with {parts:?}"), timeout, |log| {
            log.lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        })
    }

    /// Reads the log until `found` finds something in it (`what`, for the failure), or panics
    /// when doka exits first or after `timeout`.
    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = found(&self.log_text()) {
                return t;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "doka exited ({status}) before logging {what}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "doka did not log {what} within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal_stop();
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(60));
        let log = self.log_text();
        (status, log)
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_stop(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM and a clean exit (code 0) expected; returns the log. On any other exit the
    /// failure names the status first and shows the end of the log, where the reason is.
    pub fn stop(self) -> String {
        let (status, log) = self.terminate();
        if status.code() != Some(0) {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            panic!(
                "doka exited with {status} after SIGTERM, expected 0; the last {} of {} log lines:\n{tail}",
                lines.len().min(60),
                lines.len()
            );
        }
        log
    }

    /// SIGKILL: no chance to commit or leave the group.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }

    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_with_timeout(&mut self.child, timeout);
        let log = self.log_text();
        (status, log)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// The peak resident memory of a running process, from /proc (0 when unknown).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("doka did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Doka {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- doka log (last 40 non-debug lines) ---\n{tail}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // For a post-mortem of a run that passed but looked odd: keep every log.
        if let Some(dir) = std::env::var_os("DOKA_TEST_LOG_DIR") {
            let name = format!("doka-{}.log", self.child.id());
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name));
        }
    }
}

/// One test's own topic, group and stream in account B.
pub struct World {
    pub ep: Endpoints,
    pub kafka: Kafka,
    pub topic: String,
    pub group: String,
    pub stream: String,
    pub b: aws_sdk_kinesis::Client,
}

impl World {
    pub async fn new(partitions: i32, shards: i32) -> Self {
        let world = Self::without_stream(partitions).await;
        create_stream(&world.b, &world.stream, shards).await;
        world
    }

    /// A topic and a stream name, but no stream yet.
    pub async fn without_stream(partitions: i32) -> Self {
        let ep = endpoints();
        let topic = unique("orders");
        let kafka = Kafka::new(&topic, partitions);
        let stream = unique("doka-e2e");
        let b = account_b_kinesis(&ep).await;
        Self {
            ep,
            kafka,
            group: unique("doka-group"),
            topic,
            stream,
            b,
        }
    }

    /// Reads the stream until every id below `n` is in it (copies allowed), or panics after
    /// `timeout`.
    pub async fn wait_for_all(&self, n: usize, timeout: Duration) -> Vec<StreamRecord> {
        wait_for_all(&self.b, &self.stream, n, timeout).await
    }

    /// Deletes the stream: kinesis-mock spends CPU on every stream it keeps.
    pub async fn finish(self) {
        delete_stream(&self.b, &self.stream).await;
    }

    pub fn yaml(&self, kinesis_endpoint: Option<&str>) -> String {
        let bootstrap = self.kafka.bootstrap();
        DokaSetup {
            bootstrap: &bootstrap,
            group: &self.group,
            topic: &self.topic,
            stream: &self.stream,
            sts: &self.ep.sts,
            kinesis: kinesis_endpoint.unwrap_or(&self.ep.kinesis),
        }
        .yaml()
    }

    pub fn produce(&self, messages: &[(Vec<u8>, Vec<u8>)]) -> Vec<Placement> {
        produce(&self.kafka.bootstrap(), &self.topic, messages)
    }

    /// Waits until the group's committed offsets are `ends` (doka commits only what Kinesis
    /// acknowledged, so then everything below them is in the stream), or panics after `timeout`.
    pub async fn wait_for_committed(&self, ends: &HashMap<i32, i64>, timeout: Duration) {
        wait_for_topic_committed(
            &self.kafka.bootstrap(),
            &self.group,
            &self.topic,
            ends,
            timeout,
        )
        .await;
    }

    pub fn committed(&self, partitions: i32) -> HashMap<i32, i64> {
        committed(
            &self.kafka.bootstrap(),
            &self.group,
            &self.topic,
            partitions,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Test data

/// Messages with ids in `ids`, keyed over `keys` keys. Each value carries its unique id and binary
/// bytes, so a byte-exact comparison catches any change: `id=<i>;key=<k>;` then 32 binary bytes.
pub fn keyed_messages(ids: std::ops::Range<usize>, keys: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    ids.map(|i| {
        let k = (i * 7919) % keys;
        let key = format!("key-{k}").into_bytes();
        let mut value = format!("id={i};key={k};").into_bytes();
        value.extend((0..32u8).map(|b| b.wrapping_mul(31).wrapping_add(i as u8)));
        (key, value)
    })
    .collect()
}

/// Like [`keyed_messages`], with each key's records numbered in produce order (0, 1, 2, …):
/// `id=<i>;key=<k>;seq=<s>;` then 32 binary bytes. All records of a key go to one Kafka
/// partition, so `seq` is also their Kafka order.
pub fn sequenced_messages(n: usize, keys: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut next = vec![0usize; keys];
    (0..n)
        .map(|i| {
            let k = (i * 7919) % keys;
            let key = format!("key-{k}").into_bytes();
            let mut value = format!("id={i};key={k};seq={};", next[k]).into_bytes();
            next[k] += 1;
            value.extend((0..32u8).map(|b| b.wrapping_mul(31).wrapping_add(i as u8)));
            (key, value)
        })
        .collect()
}

/// The per-key sequence number written into a value by [`sequenced_messages`].
pub fn message_seq(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let start = text.find(";seq=").expect("seq field") + ";seq=".len();
    text[start..]
        .split(';')
        .next()
        .unwrap()
        .parse()
        .expect("a number")
}

/// The message id written into a value by [`keyed_messages`].
pub fn message_id(data: &[u8]) -> usize {
    let text = &data[..data.iter().position(|&b| b == b';').expect("id field")];
    std::str::from_utf8(text)
        .unwrap()
        .strip_prefix("id=")
        .unwrap()
        .parse()
        .unwrap()
}

/// Counts every produced message in the stream: (missing ids, duplicate copies).
pub fn tally(messages: usize, records: &[StreamRecord]) -> (Vec<usize>, usize) {
    let mut copies = vec![0usize; messages];
    for r in records {
        copies[message_id(&r.data)] += 1;
    }
    let missing = copies
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == 0)
        .map(|(i, _)| i)
        .collect();
    let duplicates = copies.iter().map(|c| c.saturating_sub(1)).sum();
    (missing, duplicates)
}

/// Every committed offset must be backed by records in the stream. The offsets are read first:
/// the stream only grows, so anything committed before must be found after.
pub async fn assert_committed_were_delivered(
    world: &World,
    partitions: i32,
    placements: &[Placement],
) {
    let committed = world.committed(partitions);
    let records = read_stream(&world.b, &world.stream).await;
    let mut present = vec![false; placements.len()];
    for r in &records {
        if let Some(p) = present.get_mut(message_id(&r.data)) {
            *p = true;
        }
    }
    for (id, p) in placements.iter().enumerate() {
        if committed.get(&p.partition).is_some_and(|&c| p.offset < c) {
            assert!(
                present[id],
                "partition {} committed to {:?} past undelivered offset {}",
                p.partition,
                committed.get(&p.partition),
                p.offset
            );
        }
    }
}

/// Every part must be in `text` (a log, an error, a report line).
pub fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
}

pub fn summary_count(log: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("summary:"))
        .expect("summary line");
    let start = line.find(&format!("{field}=")).expect("field") + field.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Routes: several destinations, accounts and endpoints in one run

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
    let deadline = Instant::now() + timeout;
    let mut tail = StreamTail::new(client, stream).await;
    let mut present = vec![false; ids.len()];
    let mut missing = ids.len();
    loop {
        let seen = tail.records.len();
        for r in &tail.poll().await[seen..] {
            let id = message_id(&r.data);
            if ids.contains(&id) && !present[id - ids.start] {
                present[id - ids.start] = true;
                missing -= 1;
            }
        }
        if missing == 0 {
            return tail.records;
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream}: {missing} of the {} records with ids {ids:?} still missing after {timeout:?}",
            ids.len()
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until `group`'s committed offsets of `topic` are `ends`, or panics after `timeout`.
pub async fn wait_for_topic_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
    timeout: Duration,
) {
    let partitions = ends.keys().max().map_or(0, |p| p + 1);
    let deadline = Instant::now() + timeout;
    loop {
        let now = committed(bootstrap, group, topic, partitions);
        if now == *ends {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic}: committed {now:?} after {timeout:?}, expected {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The stack's own facts

/// A variable `scripts/stack.sh up` (or `scripts/image.sh`) prints; `make test` exports them.
pub fn stack_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack with `scripts/stack.sh up` (and build the image with `scripts/image.sh`), exporting the lines they print, or run `make test`")
    })
}

/// The SASL proxy's record of OAUTHBEARER tokens presented by `client_id`, oldest first, each
/// with whether the proxy accepted it.
pub fn recorded_tokens(client_id: &str) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(stack_var("DOKA_TEST_OAUTH_TOKENS")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["client_id"] == client_id)
        .map(|v| {
            (
                v["token"].as_str().unwrap().to_owned(),
                v["accepted"] == true,
            )
        })
        .collect()
}

/// Who STS says an access key belongs to (moto identifies callers by key id).
pub async fn owner_of_key(ep: &Endpoints, access_key: &str) -> String {
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(REGION))
        .endpoint_url(&ep.sts)
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            access_key, "unused", None, None, "test",
        ))
        .build();
    aws_sdk_sts::Client::from_conf(conf)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity")
        .arn
        .unwrap_or_default()
}
