//! Reading a stream shard by shard, as a KCL-style consumer does, and de-aggregating KPL
//! aggregates with AWS's own Python library (PyPI aws-kinesis-agg, run by
//! `tests/support/deaggregate.py` with the python that `DOKA_TEST_KINESIS_AGG_PYTHON` names,
//! printed by `scripts/stack.sh up` through `scripts/tools.sh`).

use std::io::Write;
use std::process::{Command, Stdio};

use base64_simd::STANDARD as BASE64;
use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::{StreamRecord, sequence_key};

/// The magic bytes an aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// One shard of a stream: its hash-key range (from ListShards) and everything in it, in sequence
/// order.
#[derive(Debug, Clone)]
pub struct Shard {
    pub id: String,
    pub start: u128,
    pub end: u128,
    pub records: Vec<StreamRecord>,
}

impl Shard {
    pub fn holds(&self, hash_key: u128) -> bool {
        (self.start..=self.end).contains(&hash_key)
    }
}

/// The hash key Kinesis derives from a partition key: its MD5 as a big-endian 128-bit number.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Every shard of `stream` with its range, each read from TRIM_HORIZON to its end.
pub async fn read_shards(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<Shard> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = match &next_token {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await.expect("ListShards");
        for s in page.shards.unwrap_or_default() {
            let range = s.hash_key_range.expect("a shard has a hash-key range");
            shards.push(Shard {
                start: range.starting_hash_key.parse().expect("starting hash key"),
                end: range.ending_hash_key.parse().expect("ending hash key"),
                id: s.shard_id,
                records: Vec::new(),
            });
        }
        next_token = page.next_token;
        if next_token.is_none() {
            break;
        }
    }
    // `read_stream` reads each shard from TRIM_HORIZON in sequence order; sort its records out.
    for record in super::read_stream(client, stream).await {
        if let Some(shard) = shards.iter_mut().find(|s| s.id == record.shard) {
            shard.records.push(record);
        }
    }
    for shard in &mut shards {
        shard
            .records
            .sort_by(|a, b| sequence_key(&a.sequence).cmp(&sequence_key(&b.sequence)));
    }
    shards
}

/// One user record as a de-aggregating consumer sees it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Index into the shards passed to [`deaggregate`].
    pub shard: usize,
    /// The Kinesis record it came from: its sequence number and its index in its shard.
    pub sequence: String,
    pub position: usize,
    /// Its place inside an aggregate (`None`: a plain record).
    pub sub: Option<u64>,
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
    pub data: Vec<u8>,
}

impl UserRecord {
    pub fn aggregated(&self) -> bool {
        self.sub.is_some()
    }

    /// What Kinesis routes it by: the explicit hash key, else the partition key's MD5.
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key
            .unwrap_or_else(|| hash_key(&self.partition_key))
    }
}

/// Every user record in `shards`, de-aggregated by AWS's library; per shard in stream order
/// (sequence number, then place inside the aggregate). Panics on anything a de-aggregating
/// reader would trip over (see `deaggregate.py`).
pub fn deaggregate(shards: &[Shard]) -> Vec<UserRecord> {
    let mut origin = Vec::new();
    let mut records = Vec::new();
    for (s, shard) in shards.iter().enumerate() {
        for (position, r) in shard.records.iter().enumerate() {
            origin.push((s, position));
            records.push(json!({
                "shard": shard.id,
                "start": shard.start.to_string(),
                "end": shard.end.to_string(),
                "sequence": r.sequence,
                "partition_key": r.partition_key,
                "data": BASE64.encode_to_string(&r.data),
            }));
        }
    }
    let python = super::prometheus::tool("DOKA_TEST_KINESIS_AGG_PYTHON");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/deaggregate.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    let input = json!({ "records": records }).to_string();
    let mut stdin = child.stdin.take().unwrap();
    // Written from a thread: the script answers while it reads, and both pipes are bounded.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child
        .wait_with_output()
        .expect("the de-aggregator's output");
    writer.join().unwrap().expect("feed the de-aggregator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{script} failed ({}); is aws-kinesis-agg installed (scripts/tools.sh install)?\n{stderr}",
        output.status
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("the de-aggregator's JSON");
    let problems = answer["problems"].as_array().unwrap();
    assert!(
        problems.is_empty(),
        "a de-aggregating reader trips over doka's records: {problems:#?}"
    );
    answer["user_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let (shard, position) = origin[u["source"].as_u64().unwrap() as usize];
            UserRecord {
                shard,
                sequence: shards[shard].records[position].sequence.clone(),
                position,
                sub: u["sub"].as_u64(),
                partition_key: u["partition_key"].as_str().unwrap().to_owned(),
                explicit_hash_key: u["explicit_hash_key"].as_str().map(|h| {
                    h.parse()
                        .unwrap_or_else(|e| panic!("explicit hash key {h:?}: {e}"))
                }),
                data: BASE64
                    .decode_to_vec(u["data"].as_str().unwrap())
                    .expect("base64 data"),
            }
        })
        .collect()
}
