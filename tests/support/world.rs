//! One test's world (its own topic, group and stream in account B), the records it sends, and
//! how what arrived is counted against them.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// One test's own topic, group and stream in account B.
pub struct World {
    pub ep: Endpoints,
    pub kafka: Kafka,
    pub topic: String,
    pub group: String,
    pub stream: String,
    pub b: aws_sdk_kinesis::Client,
    /// The topic's partitions.
    pub partitions: i32,
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
            partitions,
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

    /// The run delivered everything sent ([`assert_delivered`]), the group's offsets read now.
    pub fn assert_delivered(
        &self,
        records: &[StreamRecord],
        placements: &[Placement],
        copies: Copies,
    ) -> usize {
        let committed = self.committed(self.partitions);
        assert_delivered(records, placements, copies, committed)
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

/// How many copies of each record a run may deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copies {
    /// Nothing failed and nothing was retried: each record once.
    ExactlyOnce,
    /// At-least-once delivery: a record may arrive again after a retry, a kill or a rebalance.
    AtLeastOnce,
}

/// Every id below `sent` is in `records`, as often as `copies` allows; returns the copies beyond
/// the first.
pub fn assert_every_record(sent: usize, records: &[StreamRecord], copies: Copies) -> usize {
    let (missing, duplicates) = tally(sent, records);
    assert!(
        missing.is_empty(),
        "{} of {sent} records lost: {missing:?}",
        missing.len()
    );
    if copies == Copies::ExactlyOnce {
        assert_eq!(
            duplicates, 0,
            "{duplicates} copies where each record must arrive once"
        );
    }
    duplicates
}

/// A run delivered exactly what was sent: every produced record (ids `0..placements.len()`) is in
/// `records` as often as `copies` allows, and `committed` (the group's offsets) are the ends of
/// the partitions written to. Returns the copies beyond the first.
pub fn assert_delivered(
    records: &[StreamRecord],
    placements: &[Placement],
    copies: Copies,
    committed: HashMap<i32, i64>,
) -> usize {
    let duplicates = assert_every_record(placements.len(), records, copies);
    assert_eq!(
        committed,
        end_offsets(placements),
        "every partition committed to its end"
    );
    duplicates
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
