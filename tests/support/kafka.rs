//! The Kafka side: librdkafka's mock cluster as the broker, producing with delivery reports, and
//! the group's committed offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};

use super::{eventually_async, unique};

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

    /// The next `n` OffsetCommit requests (from any client) are refused with
    /// REBALANCE_IN_PROGRESS, as a broker does while the group rebalances.
    pub fn refuse_next_commits(&self, n: usize) {
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        self.cluster.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; n],
        );
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
    committed_with_metadata_with(bootstrap, properties, group, topic, partitions)
        .into_iter()
        .map(|(partition, (offset, _))| (partition, offset))
        .collect()
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
    let what = format!("group {group} to commit topic {topic} to {ends:?}");
    eventually_async(&what, timeout, Duration::from_millis(200), async || {
        let now = committed(bootstrap, group, topic, partitions);
        (now == *ends).then_some(()).ok_or(format!("{now:?}"))
    })
    .await
}

/// Each partition's committed offset and the metadata committed with it.
pub fn committed_with_metadata(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> HashMap<i32, (i64, String)> {
    committed_with_metadata_with(bootstrap, &[], group, topic, partitions)
}

/// [`committed_with_metadata`] with extra client properties (TLS, SASL).
fn committed_with_metadata_with(
    bootstrap: &str,
    properties: &[(&str, String)],
    group: &str,
    topic: &str,
    partitions: i32,
) -> HashMap<i32, (i64, String)> {
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
            Offset::Offset(o) => Some((e.partition(), (o, e.metadata().to_owned()))),
            _ => None,
        })
        .collect()
}

/// Per partition: the committed offset and the delivered offsets its metadata names above it.
pub type LastCommit = HashMap<i32, (i64, doka::pipeline::delivered::DeliveredRanges)>;

/// The group's last commit of `topic`, its metadata decoded (any doka's: the destination
/// fingerprint is taken as written).
pub fn last_commit(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> LastCommit {
    committed_with_metadata(bootstrap, group, topic, partitions)
        .into_iter()
        .map(|(partition, (offset, metadata))| {
            let fingerprint = metadata.split(':').nth(1).unwrap_or_default().to_owned();
            let ranges =
                doka::pipeline::delivered::decode(metadata.as_bytes(), &fingerprint, offset)
                    .unwrap_or_default();
            (partition, (offset, ranges))
        })
        .collect()
}

/// The last commit says the record at `placement` was delivered: below the committed offset, or
/// named in the metadata.
pub fn covered(commit: &LastCommit, placement: &Placement) -> bool {
    commit
        .get(&placement.partition)
        .is_some_and(|(offset, ranges)| {
            placement.offset < *offset || ranges.contains(placement.offset)
        })
}
