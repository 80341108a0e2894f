//! Kinesis Data Streams through PutRecords: the settings (`kinesis:`), the client, the sink with
//! its optional KPL aggregation by shard, the health probe and the `doka check` hops.

mod aggregate;
pub mod check;
pub mod client;
pub mod put_records;
mod settings;
mod shards;

pub use settings::{
    AggregationConfig, KinesisConfig, MAX_PUT_RECORDS_BYTES, MAX_PUT_RECORDS_ENTRIES,
    is_stream_name,
};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::DisplayErrorContext;
use bytes::Bytes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use tracing::{info, warn};

use super::{Entry, EntryFailure, RequestError, Sink};
use put_records::{EntryResult, PutError, PutRecordsClient, WireEntry};
use shards::{Shard, ShardMap};

/// Writes to one stream, addressed by name or by ARN.
#[derive(Debug)]
pub struct KinesisSink {
    /// For ListShards.
    client: Client,
    /// For PutRecords.
    writer: PutRecordsClient,
    stream_name: Option<String>,
    stream_arn: Option<String>,
    /// "stream `x` (region r, via role y)": told in every configuration error.
    target: String,
    /// Entries per PutRecords request (`batch.max_records`, at most 500).
    max_entries: usize,
    /// Bytes (data and partition keys) per request (`batch.max_bytes`): aggregates weigh more than
    /// the records in them, so a batch's aggregates can need two requests.
    max_request_bytes: usize,
    /// Set when records are aggregated (`kinesis.aggregation`): the largest aggregate.
    aggregate_max_bytes: Option<usize>,
    /// The shard map aggregation packs by; read on first use.
    shards: RwLock<Option<Arc<ShardMap>>>,
    /// Set when a write landed on an unexpected shard: read the map again before the next one.
    stale: AtomicBool,
    /// Serialises re-reading the map, and when it was last read.
    shard_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl KinesisSink {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        writer: PutRecordsClient,
        stream_name: Option<String>,
        stream_arn: Option<String>,
        target: String,
        max_entries: usize,
        max_request_bytes: usize,
        aggregate_max_bytes: Option<usize>,
    ) -> Self {
        Self {
            client,
            writer,
            stream_name,
            stream_arn,
            target,
            max_entries: max_entries.clamp(1, 500),
            max_request_bytes,
            aggregate_max_bytes,
            shards: RwLock::new(None),
            stale: AtomicBool::new(false),
            shard_refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// What a failed PutRecords call means for doka, with the fix where a human must act.
    fn classify(&self, err: PutError) -> RequestError {
        match err {
            PutError::Service {
                status,
                code,
                message,
            } => {
                let detail = super::error_detail(code.as_deref(), message.as_deref(), status);
                match code.as_deref() {
                    Some("ProvisionedThroughputExceededException" | "KMSThrottlingException") => {
                        RequestError::Throttled(detail)
                    }
                    Some("ResourceNotFoundException") => RequestError::Configuration(format!(
                        "{} does not exist (ResourceNotFoundException). Check kinesis.stream, aws.region \
                         and that aws.role_arn belongs to the account that owns the stream; retrying until it appears",
                        self.target
                    )),
                    Some("AccessDeniedException") => RequestError::Configuration(format!(
                        "access to {} was denied ({detail}). The assumed role needs \
                         kinesis:PutRecords on the stream (and kms:GenerateDataKey for a customer-managed key); retrying",
                        self.target
                    )),
                    Some(
                        "KMSAccessDeniedException"
                        | "KMSDisabledException"
                        | "KMSInvalidStateException"
                        | "KMSNotFoundException"
                        | "KMSOptInRequired",
                    ) => RequestError::Configuration(format!(
                        "the KMS key of {} cannot be used: {detail}; retrying",
                        self.target
                    )),
                    Some("InvalidArgumentException") => RequestError::Configuration(format!(
                        "{} rejected the request as invalid: {detail}; retrying",
                        self.target
                    )),
                    other => super::by_code(other, status, detail),
                }
            }
            PutError::Timeout => {
                RequestError::Overloaded("request timed out (kinesis.request_timeout_ms)".into())
            }
            PutError::Credentials(detail) => RequestError::Credentials(detail),
            PutError::Transport(detail) | PutError::Malformed(detail) => {
                RequestError::Transient(detail)
            }
        }
    }
}

impl Sink for KinesisSink {
    async fn put(&self, records: &[Entry<'_>]) -> Result<Vec<EntryFailure>, RequestError> {
        let entries = match self.aggregate_max_bytes {
            None => records
                .iter()
                .enumerate()
                .map(|(i, r)| Outgoing::plain(r, i))
                .collect(),
            Some(max_bytes) => self.aggregated_entries(records, max_bytes).await?,
        };
        self.send(entries).await
    }
}

/// One PutRecords entry and the records it carries.
struct Outgoing<'a> {
    /// A record's bytes (shared, not copied) or an aggregate's.
    data: Bytes,
    partition_key: &'a str,
    explicit_hash_key: Option<u128>,
    /// Indexes of the records in it (one unless aggregated).
    members: Vec<usize>,
    /// For an aggregate: the shard it must land on, as the shard map says, and its sub-records'
    /// hash keys.
    shard: Option<String>,
    hash_keys: Vec<u128>,
}

impl<'a> Outgoing<'a> {
    fn plain(record: &Entry<'a>, index: usize) -> Self {
        Self {
            data: record.data.clone(),
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            members: vec![index],
            shard: None,
            hash_keys: Vec::new(),
        }
    }
}

/// How one entry fared.
enum EntryOutcome {
    /// Written to this shard (`None` if the answer did not say).
    Written(Option<String>),
    Failed {
        code: String,
        throttled: bool,
    },
}

/// ListShards at most this often, however many writes land on unexpected shards.
const MIN_SHARD_REFRESH: Duration = Duration::from_secs(1);

impl KinesisSink {
    /// Packs records into aggregates per shard ([`aggregate::pack`]).
    async fn aggregated_entries<'a>(
        &self,
        records: &[Entry<'a>],
        max_bytes: usize,
    ) -> Result<Vec<Outgoing<'a>>, RequestError> {
        let map = self.shard_map().await?;
        // Records per shard, in order.
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<usize, usize> = HashMap::new();
        let hashes: Vec<u128> = records
            .iter()
            .map(|r| {
                r.explicit_hash_key
                    .unwrap_or_else(|| shards::hash_key(r.partition_key))
            })
            .collect();
        for (i, &hash) in hashes.iter().enumerate() {
            let shard = map.shard_of(hash);
            let g = *group_of.entry(shard).or_insert_with(|| {
                groups.push((shard, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let mut entries = Vec::new();
        for (shard, members) in groups {
            let items: Vec<Entry<'_>> = members.iter().map(|&i| records[i]).collect();
            for packed in aggregate::pack(&items, max_bytes) {
                if let [only] = packed[..] {
                    entries.push(Outgoing::plain(&records[members[only]], members[only]));
                    continue;
                }
                let first = &records[members[packed[0]]];
                let blob = aggregate::encode(&packed.iter().map(|&j| items[j]).collect::<Vec<_>>());
                entries.push(Outgoing {
                    data: Bytes::from(blob),
                    partition_key: first.partition_key,
                    explicit_hash_key: first.explicit_hash_key,
                    members: packed.iter().map(|&j| members[j]).collect(),
                    shard: Some(map.shards()[shard].id.clone()),
                    hash_keys: packed.iter().map(|&j| hashes[members[j]]).collect(),
                });
            }
        }
        Ok(entries)
    }

    /// Sends entries in requests of at most `max_entries` and `max_request_bytes`, one after
    /// another, and says which records failed. `Err` only when every request failed as a whole.
    async fn send(&self, entries: Vec<Outgoing<'_>>) -> Result<Vec<EntryFailure>, RequestError> {
        // Each request: the entries on the wire (borrowing the data) and the entries they came from.
        let mut requests: Vec<(Vec<WireEntry<'_>>, Vec<&Outgoing<'_>>)> = Vec::new();
        let mut bytes = 0;
        for entry in &entries {
            // Kinesis counts data and partition keys against the request limit.
            let size = entry.data.len() + entry.partition_key.len();
            let room = requests.last().is_some_and(|(wire, _)| {
                wire.len() < self.max_entries && bytes + size <= self.max_request_bytes
            });
            if !room {
                requests.push((Vec::new(), Vec::new()));
                bytes = 0;
            }
            bytes += size;
            let (wire, sources) = requests.last_mut().expect("pushed above");
            wire.push(WireEntry {
                data: &entry.data,
                partition_key: entry.partition_key,
                explicit_hash_key: entry.explicit_hash_key,
            });
            sources.push(entry);
        }
        let (wire_requests, requests): (Vec<_>, Vec<_>) = requests.into_iter().unzip();
        // One after another: two requests in flight at once could write a key's later aggregate
        // before its earlier one, without any failure to repair it.
        let mut outcomes = Vec::with_capacity(wire_requests.len());
        for request in &wire_requests {
            outcomes.push(self.put_records(request).await);
        }
        if outcomes.iter().all(Result::is_err) {
            return Err(outcomes
                .into_iter()
                .find_map(Result::err)
                .expect("at least one request"));
        }
        let mut failures = Vec::new();
        for (request, outcome) in requests.iter().zip(outcomes) {
            let results: Vec<EntryOutcome> = match outcome {
                Ok(results) => results,
                Err(e) => request
                    .iter()
                    .map(|_| EntryOutcome::Failed {
                        code: e.to_string(),
                        throttled: matches!(e, RequestError::Throttled(_)),
                    })
                    .collect(),
            };
            for (entry, result) in request.iter().zip(results) {
                let (code, throttled) = match result {
                    EntryOutcome::Written(Some(landed))
                        if entry
                            .shard
                            .as_ref()
                            .is_some_and(|expected| *expected != landed) =>
                    {
                        // The stream was resharded since the map was read. If the shard it landed
                        // on holds all its sub-records' keys (a merge), it is where they belong;
                        // otherwise a reader that checks ranges (the KCL) drops some of them:
                        // send them again under the new map.
                        if self.holds_all(&landed, &entry.hash_keys).await {
                            continue;
                        }
                        warn!(
                            "an aggregate meant for {} landed on {landed}: the stream was resharded; \
                             resending the {} records in it under the new shard map",
                            entry.shard.as_deref().unwrap_or_default(),
                            entry.members.len()
                        );
                        ("AggregateOnUnexpectedShard".to_owned(), false)
                    }
                    EntryOutcome::Written(_) => continue,
                    EntryOutcome::Failed { code, throttled } => (code, throttled),
                };
                failures.extend(entry.members.iter().map(|&index| EntryFailure {
                    index,
                    code: code.clone(),
                    throttled,
                }));
            }
        }
        Ok(failures)
    }

    /// Whether the open shard `id`, in the stream's shard map read again now, holds every one of
    /// these hash keys. False when the map cannot be read.
    async fn holds_all(&self, id: &str, hash_keys: &[u128]) -> bool {
        self.stale.store(true, AtomicOrdering::SeqCst);
        let Ok(map) = self.shard_map().await else {
            return false;
        };
        map.index_of(id).is_some_and(|i| {
            let shard = &map.shards()[i];
            hash_keys
                .iter()
                .all(|h| (shard.start..=shard.end).contains(h))
        })
    }

    /// One PutRecords call: the outcome of each entry, in request order.
    async fn put_records(
        &self,
        entries: &[WireEntry<'_>],
    ) -> Result<Vec<EntryOutcome>, RequestError> {
        let results = self
            .writer
            .put(entries)
            .await
            .map_err(|e| self.classify(e))?;
        Ok(results
            .into_iter()
            .map(|result| match result {
                EntryResult::Failed { code } => EntryOutcome::Failed {
                    throttled: code == "ProvisionedThroughputExceededException"
                        || code == "KMSThrottlingException",
                    code,
                },
                EntryResult::Written(shard) => EntryOutcome::Written(shard),
            })
            .collect())
    }

    /// The stream's open shards, read again when a write showed they changed.
    async fn shard_map(&self) -> Result<Arc<ShardMap>, RequestError> {
        let current = || {
            (!self.stale.load(AtomicOrdering::SeqCst))
                .then(|| self.shards.read().unwrap().clone())
                .flatten()
        };
        if let Some(map) = current() {
            return Ok(map);
        }
        let mut last_read = self.shard_refresh.lock().await;
        if let Some(map) = current() {
            return Ok(map);
        }
        if let Some(at) = *last_read {
            tokio::time::sleep_until((at + MIN_SHARD_REFRESH).into()).await;
        }
        *last_read = Some(Instant::now());
        let map = Arc::new(self.list_shards().await?);
        let previous = self.shards.write().unwrap().replace(map.clone());
        self.stale.store(false, AtomicOrdering::SeqCst);
        if previous.as_deref() != Some(&*map) {
            info!(
                shards = map.len(),
                "{}: {} open shards; aggregates are packed per shard",
                self.target,
                map.len()
            );
        }
        Ok(map)
    }

    /// ListShards, all pages, open shards only.
    async fn list_shards(&self) -> Result<ShardMap, RequestError> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let mut request = self.client.list_shards();
            request = match &next_token {
                // With a token, the stream must not be named again.
                Some(token) => request.next_token(token),
                None => request
                    .set_stream_name(self.stream_name.clone())
                    .set_stream_arn(self.stream_arn.clone()),
            };
            let page = request.send().await.map_err(|e| {
                let code = e.code().unwrap_or_default().to_owned();
                let detail = DisplayErrorContext(&e).to_string();
                match code.as_str() {
                    "ResourceNotFoundException" | "AccessDeniedException" => {
                        RequestError::Configuration(format!(
                            "cannot read the shards of {} for aggregation ({code}): the role needs \
                             kinesis:ListShards on the stream; retrying",
                            self.target
                        ))
                    }
                    "LimitExceededException" => RequestError::Throttled(detail),
                    _ => RequestError::Transient(detail),
                }
            })?;
            for shard in page.shards() {
                let open = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_none();
                let range = shard.hash_key_range();
                let parse = |s: Option<&str>| s.and_then(|s| s.parse::<u128>().ok());
                if let (true, Some(start), Some(end)) = (
                    open,
                    parse(range.map(|r| r.starting_hash_key())),
                    parse(range.map(|r| r.ending_hash_key())),
                ) {
                    shards.push(Shard {
                        id: shard.shard_id().to_owned(),
                        start,
                        end,
                    });
                }
            }
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        ShardMap::new(shards).ok_or_else(|| {
            RequestError::Transient(format!(
                "the open shards of {} do not cover the hash-key space (resharding under way?)",
                self.target
            ))
        })
    }
}
