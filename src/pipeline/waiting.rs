//! Records waiting for their schema: a partition whose record names a schema not fetched yet
//! holds that record and every later one, in order, until the schema is known. They are owned
//! copies (the fetched message is gone by then), counted in the route's in-flight share so the
//! route pauses when its share fills, and neither registered nor committed while they wait.

use std::collections::VecDeque;
use std::sync::Arc;

use super::offsets::PartitionProgress;
use super::{Fetched, Header, Timestamp};

/// A fetched record kept while its partition waits.
pub struct OwnedRecord {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Timestamp,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl OwnedRecord {
    pub fn of(msg: &impl Fetched, topic: Arc<str>) -> Self {
        Self {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.value().map(<[u8]>::to_vec),
            timestamp: msg.timestamp(),
            headers: msg
                .headers()
                .into_iter()
                .map(|h| (h.key.into_owned(), h.value.map(<[u8]>::to_vec)))
                .collect(),
        }
    }

    /// What it weighs in the in-flight share.
    pub fn size(&self) -> u64 {
        (self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)) as u64
    }
}

impl Fetched for OwnedRecord {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
    fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
    fn headers(&self) -> Vec<Header<'_>> {
        self.headers
            .iter()
            .map(|(key, value)| Header {
                key: key.as_str().into(),
                value: value.as_deref(),
            })
            .collect()
    }
}

/// One partition's waiting records, oldest first.
pub struct Waiting {
    pub route: usize,
    pub progress: Arc<PartitionProgress>,
    pub records: VecDeque<OwnedRecord>,
}
