//! A benchmark-only Amazon Kinesis Data Streams *write* endpoint.
//!
//! Benchmark and test use only: it keeps nothing, authenticates nothing, and answers just enough
//! of the Kinesis API for a producer such as doka. It exists because the real emulators absorb
//! 1–11k records/s, far below what doka produces; this one decodes and counts 300k+ records/s on
//! one core, so a benchmark measures doka and not the endpoint, and its counters prove delivery
//! as well as speed.
//!
//! Protocol: what the AWS SDK for Rust (aws-sdk-kinesis 1.x) sends by default — HTTP/1.1
//! `POST /`, `x-amz-target: Kinesis_20131202.<Operation>`, `content-type:
//! application/x-amz-json-1.1`, JSON bodies; errors are HTTP 400 with
//! `{"__type":"<Code>","message":"..."}`. SigV4 signatures are ignored. Only JSON is spoken: a
//! client that sends CBOR (`application/x-amz-cbor-1.1`: the AWS SDK for Java's default for
//! Kinesis, switched off by `AWS_CBOR_DISABLE=1`) gets a 400 telling it to use JSON. The Rust
//! SDK uses JSON unless its config is given another protocol, and boto3 only knows JSON here.
//!
//! Operations: `PutRecords`, `PutRecord`, `DescribeStreamSummary`, `DescribeStream` and
//! `ListShards`; anything else is `UnknownOperationException`. Plain-path extras:
//! `GET /stats` (JSON counters), `POST /reset` (zero counters and order state) and
//! `POST /reshard?shards=M` (replace the shard map with M new shards; answers like ListShards).
//!
//! Shards: like CreateStream's even split, shard i of N owns hash keys `[i*step, (i+1)*step-1]`
//! with `step = 2^128 / N` (the last one ends at `2^128-1`). An entry's hash key is its
//! `ExplicitHashKey` if given, else MD5(partition key) read as a big-endian u128. With
//! `--throttle` every shard has a token bucket for records and bytes (refilled continuously,
//! burst = one second of capacity); an entry that does not fit fails with
//! `ProvisionedThroughputExceededException`, as Kinesis would.
//!
//! Counting: every entry is base64-decoded and measured. An entry that is a KPL aggregate
//! (magic `F3 89 9A C2`, protobuf, MD5 trailer) is unpacked and each sub-record counted as a
//! user record; a sub-record whose own hash key belongs to another shard than the one the
//! aggregate landed on is counted as misplaced (a KCL consumer would drop it). An entry with
//! the magic that does not decode is counted as a corrupt aggregate and accepted as a plain
//! record, as Kinesis would. A user record whose data starts with `<decimal> ` is order-checked
//! per partition key: the bench producer numbers each Kafka key's records 0, 1, 2, ... so a
//! jump forward is an ordering gap and a number at or below the highest seen is a repeat.
//! `sum_highest_plus_one` (sum over keys of highest + 1) is the number of distinct (key,
//! sequence) pairs delivered as long as `order_gaps` is 0; `unique_user_records` repeats it
//! then, and is null once a gap makes it inexact. Only accepted entries are counted as
//! delivered; a call that fails validation is rejected whole, like Kinesis does.
//!
//! ```text
//! bench_kinesis --listen 127.0.0.1:0 --stream bench --shards 4 --delay-ms 0 \
//!     [--throttle --shard-records-per-sec 1000 --shard-bytes-per-sec 1048576] \
//!     [--max-record-bytes 1048576] [--max-request-bytes 10485760] [--workers 1]
//! ```
//!
//! It prints one line, `listening on ADDR`, once it accepts connections, and afterwards writes
//! only errors (to stderr).

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64_simd::STANDARD as BASE64;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const TARGET_PREFIX: &str = "Kinesis_20131202.";
const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// First bytes of a KPL aggregated record.
const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Kinesis bills PUTs in 25 KB payload units.
const PAYLOAD_UNIT: usize = 25 * 1024;
/// Kinesis limits per PutRecords call.
const MAX_ENTRIES: usize = 500;
const MAX_KEY_CHARS: usize = 256;

#[derive(Parser, Debug)]
#[command(about = "Benchmark-only Kinesis write endpoint that counts what it receives")]
struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The one stream this endpoint serves.
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Open shards at start.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    shards: u32,
    /// Delay every PutRecords/PutRecord answer by this long (latency, not a throughput cap).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Enforce per-shard capacity (token buckets); without it nothing is throttled.
    #[arg(long)]
    throttle: bool,
    /// Per-shard record rate with --throttle.
    #[arg(long, default_value_t = 1000)]
    shard_records_per_sec: u64,
    /// Per-shard byte rate (data + partition key) with --throttle.
    #[arg(long, default_value_t = 1_048_576)]
    shard_bytes_per_sec: u64,
    /// Largest data + partition key of one entry.
    #[arg(long, default_value_t = 1_048_576)]
    max_record_bytes: usize,
    /// Largest sum of data + partition keys of one PutRecords call.
    #[arg(long, default_value_t = 10_485_760)]
    max_request_bytes: usize,
    /// Tokio worker threads (1 = a single-threaded runtime, leaving the other cores to doka).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
}

// ---------------------------------------------------------------------------------------------
// KPL aggregated record (proto2), decoded with prost.

#[derive(Clone, PartialEq, prost::Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<SubRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SubRecord {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

/// A well-formed aggregate and the hash key of each of its sub-records.
struct Aggregate {
    record: AggregatedRecord,
    sub_hashes: Vec<u128>,
}

/// `Some` when `data` is a valid KPL aggregate, `Err(())` when it carries the magic but is not
/// one (bad MD5, bad protobuf, index out of range), `Ok(None)` when it is a plain record.
fn decode_aggregate(data: &[u8]) -> Result<Option<Aggregate>, ()> {
    if !data.starts_with(&KPL_MAGIC) {
        return Ok(None);
    }
    if data.len() < KPL_MAGIC.len() + 16 {
        return Err(());
    }
    let (body, trailer) = data[KPL_MAGIC.len()..].split_at(data.len() - KPL_MAGIC.len() - 16);
    let digest: [u8; 16] = Md5::digest(body).into();
    if digest[..] != trailer[..] {
        return Err(());
    }
    let record = <AggregatedRecord as prost::Message>::decode(body).map_err(|_| ())?;
    // Hash each table entry once: aggregates usually repeat few keys many times.
    let key_hashes: Vec<u128> = record
        .partition_key_table
        .iter()
        .map(|k| md5_hash_key(k.as_bytes()))
        .collect();
    let explicit: Vec<u128> = record
        .explicit_hash_key_table
        .iter()
        .map(|k| parse_hash_key(k).ok_or(()))
        .collect::<Result<_, _>>()?;
    let sub_hashes = record
        .records
        .iter()
        .map(|r| match r.explicit_hash_key_index {
            Some(i) => explicit.get(usize::try_from(i).ok()?).copied(),
            None => key_hashes
                .get(usize::try_from(r.partition_key_index).ok()?)
                .copied(),
        })
        .collect::<Option<Vec<u128>>>()
        .ok_or(())?;
    // The partition key index must be valid even when an explicit hash key decides the shard:
    // the order check (and a KCL consumer) needs the key.
    if record
        .records
        .iter()
        .any(|r| r.partition_key_index >= record.partition_key_table.len() as u64)
    {
        return Err(());
    }
    Ok(Some(Aggregate { record, sub_hashes }))
}

// ---------------------------------------------------------------------------------------------
// Hash keys, shards, throttling.

fn md5_hash_key(key: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(key).into())
}

/// A decimal hash key as Kinesis accepts it: digits only, at most 2^128-1.
fn parse_hash_key(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The per-key sequence the bench producer writes at the start of a value: `"42 ..."`, or, for
/// Avro values decoded to JSON, `{"seq":42,...`.
fn sequence_prefix(data: &[u8]) -> Option<u64> {
    if let Some(json) = data.strip_prefix(b"{\"seq\":") {
        let digits = json.iter().take_while(|b| b.is_ascii_digit()).count();
        return std::str::from_utf8(&json[..digits]).ok()?.parse().ok();
    }
    let mut n: u64 = 0;
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'0'..=b'9' => n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?,
            b' ' if i > 0 => return Some(n),
            _ => return None,
        }
    }
    None
}

fn shard_id(number: u64) -> String {
    format!("shardId-{number:012}")
}

/// Sequence numbers are `(shard number + 1) * 10^25 + n`: increasing within a shard, distinct
/// across shards, and Kinesis-sized.
fn sequence_base(number: u64) -> u128 {
    (u128::from(number) + 1) * 10u128.pow(25)
}

struct Bucket {
    records: f64,
    bytes: f64,
    refilled: Instant,
}

struct Shard {
    number: u64,
    start: u128,
    end: u128,
    next_sequence: u128,
    accepted: u64,
    throttled: u64,
    bucket: Bucket,
}

struct ShardMap {
    shards: Vec<Shard>,
    /// `2^128 / N`; 0 for a single shard (whose step would not fit a u128).
    step: u128,
    /// Shards replaced by a reshard, kept for their counters.
    closed: Vec<Shard>,
}

impl ShardMap {
    fn new(count: u32, first_number: u64, capacity: &Capacity) -> Self {
        let n = u128::from(count);
        // 2^128 / n without overflowing: (MAX + 1) / n.
        let step = if n == 1 {
            0
        } else {
            u128::MAX / n + (u128::MAX % n + 1) / n
        };
        let now = Instant::now();
        let shards = (0..count)
            .map(|i| {
                let i = u128::from(i);
                let number = first_number + i as u64;
                Shard {
                    number,
                    start: i * step,
                    end: if i + 1 == n {
                        u128::MAX
                    } else {
                        (i + 1) * step - 1
                    },
                    next_sequence: sequence_base(number),
                    accepted: 0,
                    throttled: 0,
                    bucket: capacity.full_bucket(now),
                }
            })
            .collect();
        ShardMap {
            shards,
            step,
            closed: Vec::new(),
        }
    }

    fn index(&self, hash: u128) -> usize {
        if self.step == 0 {
            return 0;
        }
        // The last shard also owns the remainder of an uneven split.
        ((hash / self.step) as usize).min(self.shards.len() - 1)
    }

    fn next_number(&self) -> u64 {
        self.shards.last().map_or(0, |s| s.number + 1)
    }
}

struct Capacity {
    enabled: bool,
    records_per_sec: f64,
    bytes_per_sec: f64,
}

impl Capacity {
    fn full_bucket(&self, now: Instant) -> Bucket {
        Bucket {
            records: self.records_per_sec,
            bytes: self.bytes_per_sec,
            refilled: now,
        }
    }

    /// Takes one record of `size` bytes from the bucket, or says it does not fit.
    fn take(&self, bucket: &mut Bucket, size: usize, now: Instant) -> bool {
        if !self.enabled {
            return true;
        }
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.refilled = now;
        bucket.records =
            (bucket.records + elapsed * self.records_per_sec).min(self.records_per_sec);
        bucket.bytes = (bucket.bytes + elapsed * self.bytes_per_sec).min(self.bytes_per_sec);
        let size = size as f64;
        if bucket.records >= 1.0 && bucket.bytes >= size {
            bucket.records -= 1.0;
            bucket.bytes -= size;
            true
        } else {
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counters.

#[derive(Default)]
struct Stats {
    requests: u64,
    requests_rejected: u64,
    entries_received: u64,
    entries_accepted: u64,
    entries_throttled: u64,
    entries_rejected: u64,
    user_records: u64,
    aggregated_records: u64,
    misplaced_subrecords: u64,
    corrupt_aggregates: u64,
    bytes_accepted: u64,
    payload_units: u64,
    order_gaps: u64,
    repeats: u64,
    sum_highest_plus_one: u64,
    first_accept_us: Option<u64>,
    last_accept_us: Option<u64>,
    /// Per partition key: highest sequence seen + 1 (the next one expected in order).
    next_expected: HashMap<String, u64>,
}

impl Stats {
    fn check_order(&mut self, key: &str, seq: u64) {
        // A new key expects 0. Looked up by &str so a known key costs no allocation.
        let expected = self.next_expected.get(key).copied().unwrap_or(0);
        if seq < expected {
            self.repeats += 1;
            return;
        }
        if seq > expected {
            self.order_gaps += 1;
        }
        self.sum_highest_plus_one += seq + 1 - expected;
        match self.next_expected.get_mut(key) {
            Some(next) => *next = seq + 1,
            None => {
                self.next_expected.insert(key.to_owned(), seq + 1);
            }
        }
    }
}

struct State {
    map: ShardMap,
    stats: Stats,
}

struct App {
    args: Args,
    capacity: Capacity,
    started: Instant,
    created_epoch_secs: f64,
    arn: String,
    state: Mutex<State>,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop the counting.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn micros(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// The stream a request names (by name or ARN) must be ours.
    fn check_stream(&self, name: Option<&str>, arn: Option<&str>) -> Result<(), ApiError> {
        let named = match (name, arn) {
            (Some(n), _) => n,
            (None, Some(a)) => a.rsplit_once(":stream/").map_or(a, |(_, n)| n),
            (None, None) => {
                return Err(ApiError::validation(
                    "Either StreamName or StreamARN must be provided.",
                ));
            }
        };
        if named == self.args.stream {
            Ok(())
        } else {
            Err(ApiError::new(
                "ResourceNotFoundException",
                format!("Stream {named} under account {ACCOUNT} not found."),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

struct ApiError {
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }
    fn serialization(message: impl Into<String>) -> Self {
        Self::new("SerializationException", message)
    }
    fn response(&self) -> Response<Full<Bytes>> {
        let body = json!({ "__type": self.code, "message": self.message }).to_string();
        respond(StatusCode::BAD_REQUEST, JSON_CONTENT_TYPE, body)
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_ok(body: String) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, JSON_CONTENT_TYPE, body)
}

// ---------------------------------------------------------------------------------------------
// PutRecords / PutRecord.

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsInput<'a> {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(borrow)]
    records: Vec<EntryInput<'a>>,
}

/// One PutRecords entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryInput<'a> {
    // Borrowed unless the JSON escapes something (base64 never needs it; keys may).
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    // Digits only, so never escaped.
    explicit_hash_key: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordInput<'a> {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    explicit_hash_key: Option<&'a str>,
}

/// An entry decoded and validated outside the lock, waiting for its shard's verdict.
struct Prepared<'a> {
    key: &'a str,
    hash: u128,
    /// Data + partition key bytes.
    size: usize,
    kind: Kind,
}

enum Kind {
    /// A plain record, with its order-check sequence if it has one.
    Plain(Option<u64>),
    Aggregate(Aggregate),
    /// Carried the KPL magic but did not decode: counted, then treated as a plain record.
    Corrupt,
}

enum Outcome {
    Accepted { shard: u64, sequence: u128 },
    Throttled { shard: u64 },
}

/// Validates and decodes one entry like Kinesis (any invalid entry fails the whole call).
fn prepare<'a>(
    app: &App,
    entry: &'a EntryInput<'a>,
    buffer: &mut Vec<u8>,
) -> Result<Prepared<'a>, ApiError> {
    let key: &str = &entry.partition_key;
    let chars = key.chars().count();
    if !(1..=MAX_KEY_CHARS).contains(&chars) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'partitionKey' failed to satisfy constraint: \
             Member must have length between 1 and {MAX_KEY_CHARS} (was {chars})"
        )));
    }
    buffer.clear();
    BASE64
        .decode_append(entry.data.as_bytes(), buffer)
        .map_err(|e| ApiError::serialization(format!("Data is not valid base64: {e}")))?;
    let size = buffer.len() + key.len();
    if size > app.args.max_record_bytes {
        return Err(ApiError::validation(format!(
            "1 validation error detected: data + partition key of {size} bytes exceed the \
             record limit of {} bytes",
            app.args.max_record_bytes
        )));
    }
    let hash = match entry.explicit_hash_key {
        Some(h) => parse_hash_key(h).ok_or_else(|| {
            ApiError::new(
                "InvalidArgumentException",
                format!(
                    "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: \
                     [0, 2^128-1]. Specified value was {h}"
                ),
            )
        })?,
        None => md5_hash_key(key.as_bytes()),
    };
    let kind = match decode_aggregate(buffer) {
        Ok(Some(aggregate)) => Kind::Aggregate(aggregate),
        Ok(None) => Kind::Plain(sequence_prefix(buffer)),
        Err(()) => Kind::Corrupt,
    };
    Ok(Prepared {
        key,
        hash,
        size,
        kind,
    })
}

/// Assigns shards, throttles and counts a validated batch: the one locked section of a call.
fn commit(app: &App, entries: &[Prepared<'_>]) -> Vec<Outcome> {
    let now = Instant::now();
    let now_us = app.micros();
    let mut state = app.lock();
    let State { map, stats } = &mut *state;
    stats.requests += 1;
    stats.entries_received += entries.len() as u64;
    let mut outcomes = Vec::with_capacity(entries.len());
    for entry in entries {
        let index = map.index(entry.hash);
        let shard = &mut map.shards[index];
        if !app.capacity.take(&mut shard.bucket, entry.size, now) {
            shard.throttled += 1;
            stats.entries_throttled += 1;
            outcomes.push(Outcome::Throttled {
                shard: shard.number,
            });
            continue;
        }
        shard.accepted += 1;
        shard.next_sequence += 1;
        outcomes.push(Outcome::Accepted {
            shard: shard.number,
            sequence: shard.next_sequence,
        });
        stats.entries_accepted += 1;
        stats.bytes_accepted += entry.size as u64;
        stats.payload_units += entry.size.div_ceil(PAYLOAD_UNIT) as u64;
        stats.first_accept_us.get_or_insert(now_us);
        stats.last_accept_us = Some(now_us);
        match &entry.kind {
            Kind::Plain(seq) => {
                stats.user_records += 1;
                if let Some(seq) = *seq {
                    stats.check_order(entry.key, seq);
                }
            }
            Kind::Corrupt => {
                stats.user_records += 1;
                stats.corrupt_aggregates += 1;
            }
            Kind::Aggregate(aggregate) => {
                stats.aggregated_records += 1;
                let record = &aggregate.record;
                stats.user_records += record.records.len() as u64;
                for (sub, &hash) in record.records.iter().zip(&aggregate.sub_hashes) {
                    if map.index(hash) != index {
                        stats.misplaced_subrecords += 1;
                    }
                    if let Some(seq) = sequence_prefix(&sub.data) {
                        // decode_aggregate checked the index.
                        let key = &record.partition_key_table[sub.partition_key_index as usize];
                        stats.check_order(key, seq);
                    }
                }
            }
        }
    }
    outcomes
}

fn throttle_message(app: &App, shard: u64) -> String {
    format!(
        "Rate exceeded for shard {} in stream {} under account {ACCOUNT}.",
        shard_id(shard),
        app.args.stream
    )
}

/// Counts a call that failed validation.
fn reject(app: &App, entries: usize) {
    let mut state = app.lock();
    state.stats.requests += 1;
    state.stats.requests_rejected += 1;
    state.stats.entries_received += entries as u64;
    state.stats.entries_rejected += entries as u64;
}

fn put_records(app: &App, body: &[u8]) -> Result<String, ApiError> {
    let input: PutRecordsInput<'_> = serde_json::from_slice(body).map_err(|e| {
        reject(app, 0);
        ApiError::serialization(format!("Malformed PutRecords request: {e}"))
    })?;
    let count = input.records.len();
    let prepared = validate_batch(app, &input).inspect_err(|_| reject(app, count))?;
    let outcomes = commit(app, &prepared);

    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Throttled { .. }))
        .count();
    let mut out = String::with_capacity(64 + outcomes.len() * 96);
    let _ = write!(out, "{{\"FailedRecordCount\":{failed},\"Records\":[");
    for (i, outcome) in outcomes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = match outcome {
            Outcome::Accepted { shard, sequence } => write!(
                out,
                "{{\"SequenceNumber\":\"{sequence}\",\"ShardId\":\"shardId-{shard:012}\"}}"
            ),
            Outcome::Throttled { shard } => write!(
                out,
                "{{\"ErrorCode\":\"ProvisionedThroughputExceededException\",\"ErrorMessage\":\"{}\"}}",
                throttle_message(app, *shard)
            ),
        };
    }
    out.push_str("],\"EncryptionType\":\"NONE\"}");
    Ok(out)
}

fn validate_batch<'a>(
    app: &App,
    input: &'a PutRecordsInput<'a>,
) -> Result<Vec<Prepared<'a>>, ApiError> {
    app.check_stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let count = input.records.len();
    if !(1..=MAX_ENTRIES).contains(&count) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'records' failed to satisfy constraint: \
             Member must have length between 1 and {MAX_ENTRIES} (was {count})"
        )));
    }
    let mut buffer = Vec::new();
    let mut total = 0usize;
    let mut prepared = Vec::with_capacity(count);
    for entry in &input.records {
        let p = prepare(app, entry, &mut buffer)?;
        total += p.size;
        prepared.push(p);
    }
    if total > app.args.max_request_bytes {
        return Err(ApiError::new(
            "InvalidArgumentException",
            format!(
                "Records size exceeds {} MB limit ({total} bytes)",
                app.args.max_request_bytes / (1024 * 1024)
            ),
        ));
    }
    Ok(prepared)
}

fn put_record(app: &App, body: &[u8]) -> Result<String, ApiError> {
    let input: PutRecordInput<'_> = serde_json::from_slice(body).map_err(|e| {
        reject(app, 0);
        ApiError::serialization(format!("Malformed PutRecord request: {e}"))
    })?;
    let entry = EntryInput {
        data: input.data,
        partition_key: input.partition_key,
        explicit_hash_key: input.explicit_hash_key,
    };
    let prepared = app
        .check_stream(input.stream_name.as_deref(), input.stream_arn.as_deref())
        .and_then(|()| prepare(app, &entry, &mut Vec::new()))
        .inspect_err(|_| reject(app, 1))?;
    match commit(app, std::slice::from_ref(&prepared)).first() {
        Some(Outcome::Accepted { shard, sequence }) => Ok(format!(
            "{{\"SequenceNumber\":\"{sequence}\",\"ShardId\":\"{}\",\"EncryptionType\":\"NONE\"}}",
            shard_id(*shard)
        )),
        Some(Outcome::Throttled { shard }) => Err(ApiError::new(
            "ProvisionedThroughputExceededException",
            throttle_message(app, *shard),
        )),
        None => Err(ApiError::new("InternalFailure", "no outcome")),
    }
}

// ---------------------------------------------------------------------------------------------
// Describe / list.

/// The stream fields of the describe/list calls.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct StreamInput {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    next_token: Option<String>,
}

fn stream_input(body: &[u8]) -> Result<StreamInput, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StreamInput::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::serialization(format!("Malformed request: {e}")))
}

fn shards_json(map: &ShardMap) -> serde_json::Value {
    map.shards
        .iter()
        .map(|s| {
            json!({
                "ShardId": shard_id(s.number),
                "HashKeyRange": {
                    "StartingHashKey": s.start.to_string(),
                    "EndingHashKey": s.end.to_string(),
                },
                "SequenceNumberRange": {
                    "StartingSequenceNumber": sequence_base(s.number).to_string(),
                },
            })
        })
        .collect()
}

/// The fields DescribeStreamSummary and DescribeStream share. The SDK fills in defaults for
/// most required members it does not find, but not for `StreamStatus`; all are sent anyway.
fn stream_fields(app: &App) -> serde_json::Map<String, serde_json::Value> {
    let value = json!({
        "StreamName": app.args.stream,
        "StreamARN": app.arn,
        "StreamStatus": "ACTIVE",
        "StreamModeDetails": { "StreamMode": "PROVISIONED" },
        "RetentionPeriodHours": 24,
        "StreamCreationTimestamp": app.created_epoch_secs,
        "EnhancedMonitoring": [{ "ShardLevelMetrics": [] }],
        "EncryptionType": "NONE",
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

fn describe_stream_summary(app: &App, body: &[u8]) -> Result<String, ApiError> {
    let input = stream_input(body)?;
    app.check_stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let open = app.lock().map.shards.len();
    let mut summary = stream_fields(app);
    summary.insert("OpenShardCount".into(), open.into());
    summary.insert("ConsumerCount".into(), 0.into());
    summary.insert(
        "MaxRecordSizeInKiB".into(),
        app.args.max_record_bytes.div_ceil(1024).into(),
    );
    Ok(json!({ "StreamDescriptionSummary": summary }).to_string())
}

fn describe_stream(app: &App, body: &[u8]) -> Result<String, ApiError> {
    let input = stream_input(body)?;
    app.check_stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    let shards = shards_json(&app.lock().map);
    let mut description = stream_fields(app);
    description.insert("Shards".into(), shards);
    description.insert("HasMoreShards".into(), false.into());
    Ok(json!({ "StreamDescription": description }).to_string())
}

fn list_shards(app: &App, body: &[u8]) -> Result<String, ApiError> {
    let input = stream_input(body)?;
    // A NextToken call names no stream; every answer is a single page anyway.
    if input.next_token.is_none() {
        app.check_stream(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
    }
    Ok(json!({ "Shards": shards_json(&app.lock().map) }).to_string())
}

// ---------------------------------------------------------------------------------------------
// Plain-path extras: stats, reset, reshard.

fn stats_json(app: &App) -> String {
    let state = app.lock();
    let s = &state.stats;
    let shard = |sh: &Shard, open: bool| {
        json!({
            "id": shard_id(sh.number),
            "open": open,
            "accepted": sh.accepted,
            "throttled": sh.throttled,
        })
    };
    let shards: Vec<_> = state
        .map
        .closed
        .iter()
        .map(|sh| shard(sh, false))
        .chain(state.map.shards.iter().map(|sh| shard(sh, true)))
        .collect();
    json!({
        "requests": s.requests,
        "requests_rejected": s.requests_rejected,
        "entries_received": s.entries_received,
        "entries_accepted": s.entries_accepted,
        "entries_throttled": s.entries_throttled,
        "entries_rejected": s.entries_rejected,
        "user_records": s.user_records,
        "aggregated_records": s.aggregated_records,
        "misplaced_subrecords": s.misplaced_subrecords,
        "corrupt_aggregates": s.corrupt_aggregates,
        "bytes_accepted": s.bytes_accepted,
        "payload_units": s.payload_units,
        "order_gaps": s.order_gaps,
        "repeats": s.repeats,
        "distinct_keys": s.next_expected.len(),
        // Distinct (key, sequence) pairs delivered, exact while order_gaps is 0.
        "sum_highest_plus_one": s.sum_highest_plus_one,
        "unique_user_records": (s.order_gaps == 0).then_some(s.sum_highest_plus_one),
        "first_accept_us": s.first_accept_us,
        "last_accept_us": s.last_accept_us,
        "now_us": app.micros(),
        "shards": shards,
    })
    .to_string()
}

fn reset(app: &App) {
    let now = Instant::now();
    let mut state = app.lock();
    state.stats = Stats::default();
    state.map.closed.clear();
    for shard in &mut state.map.shards {
        shard.accepted = 0;
        shard.throttled = 0;
        shard.bucket = app.capacity.full_bucket(now);
    }
}

fn reshard(app: &App, query: Option<&str>) -> Result<String, ApiError> {
    let count = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("shards="))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| ApiError::validation("expected ?shards=M with 1 <= M <= 100000"))?;
    let mut state = app.lock();
    let mut map = ShardMap::new(count, state.map.next_number(), &app.capacity);
    let old = std::mem::replace(&mut state.map, ShardMap::new(1, 0, &app.capacity));
    map.closed = old.closed;
    map.closed.extend(old.shards);
    state.map = map;
    Ok(json!({ "Shards": shards_json(&state.map) }).to_string())
}

// ---------------------------------------------------------------------------------------------
// HTTP.

async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    // Room for base64 (4/3) and JSON around the largest allowed call.
    let limit = app
        .args
        .max_request_bytes
        .saturating_mul(2)
        .saturating_add(1 << 20);
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(ApiError::new(
                "InvalidArgumentException",
                format!("could not read the body: {e}"),
            )
            .response());
        }
    };
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    let Some(target) = target else {
        return Ok(extra(
            &app,
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
        ));
    };
    let cbor = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("cbor"));
    if cbor {
        return Ok(ApiError::serialization(
            "this benchmark endpoint speaks only application/x-amz-json-1.1; configure the \
             client for JSON (e.g. AWS_CBOR_DISABLE=1 for the Java SDK/KPL)",
        )
        .response());
    }
    let operation = target.strip_prefix(TARGET_PREFIX).unwrap_or(target);
    let (result, delayed) = match operation {
        "PutRecords" => (put_records(&app, &body), true),
        "PutRecord" => (put_record(&app, &body), true),
        "DescribeStreamSummary" => (describe_stream_summary(&app, &body), false),
        "DescribeStream" => (describe_stream(&app, &body), false),
        "ListShards" => (list_shards(&app, &body), false),
        other => (
            Err(ApiError::new(
                "UnknownOperationException",
                format!("operation {other} is not supported by this benchmark endpoint"),
            )),
            false,
        ),
    };
    if delayed && app.args.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(app.args.delay_ms)).await;
    }
    Ok(match result {
        Ok(body) => json_ok(body),
        Err(e) => e.response(),
    })
}

fn extra(app: &App, method: &Method, path: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/stats") => json_ok(stats_json(app)),
        (&Method::POST, "/reset") => {
            reset(app);
            json_ok("{}".into())
        }
        (&Method::POST, "/reshard") => match reshard(app, query) {
            Ok(body) => json_ok(body),
            Err(e) => e.response(),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "Kinesis calls need an x-amz-target header; extras: GET /stats, POST /reset, \
             POST /reshard?shards=M\n"
                .into(),
        ),
    }
}

async fn serve(app: Arc<App>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(app.args.listen).await?;
    let address = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {address}")?;
        stdout.flush()?;
    }
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(app.clone(), request));
            // Clients closing their connections is normal; nothing to report.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let capacity = Capacity {
        enabled: args.throttle,
        records_per_sec: args.shard_records_per_sec as f64,
        bytes_per_sec: args.shard_bytes_per_sec as f64,
    };
    let app = Arc::new(App {
        arn: format!("arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{}", args.stream),
        state: Mutex::new(State {
            map: ShardMap::new(args.shards, 0, &capacity),
            stats: Stats::default(),
        }),
        started: Instant::now(),
        created_epoch_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0),
        capacity,
        args,
    });
    // One worker: a current-thread runtime, so the endpoint takes exactly one core.
    let runtime = if app.args.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(app.args.workers))
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(app))
}
