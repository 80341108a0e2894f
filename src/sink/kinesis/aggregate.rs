//! KPL aggregation: many user records in one Kinesis record, in the format the Kinesis Producer
//! Library writes and the KCL, Firehose and the kinesis-aggregation libraries read.
//!
//! An aggregated record is the magic `F3 89 9A C2`, a protobuf `AggregatedRecord` (partition-key
//! table, explicit-hash-key table, sub-records pointing into them) and the MD5 of that protobuf.
//! Kinesis bills PUT payload units per 25 KB of each record, so packing two hundred 200-byte
//! records into one ~50 KB aggregate costs 2 units instead of 200.
//!
//! Only records bound for the same shard share an aggregate ([`pack`]): the aggregate is routed
//! by one key, and a reader drops sub-records whose own key belongs to another shard.

use std::collections::HashMap;

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use crate::sink::Entry;

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<SubRecord>,
}

#[derive(Clone, PartialEq, Message)]
struct SubRecord {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    data: Bytes,
}

/// Encodes `items` (at least two) as one aggregated record's data.
pub fn encode(items: &[Entry<'_>]) -> Vec<u8> {
    let mut keys: HashMap<&str, u64> = HashMap::new();
    let mut hash_keys: HashMap<u128, u64> = HashMap::new();
    let mut message = AggregatedRecord::default();
    for item in items {
        let partition_key_index = *keys.entry(item.partition_key).or_insert_with(|| {
            message
                .partition_key_table
                .push(item.partition_key.to_owned());
            message.partition_key_table.len() as u64 - 1
        });
        let explicit_hash_key_index = item.explicit_hash_key.map(|h| {
            *hash_keys.entry(h).or_insert_with(|| {
                message.explicit_hash_key_table.push(h.to_string());
                message.explicit_hash_key_table.len() as u64 - 1
            })
        });
        message.records.push(SubRecord {
            partition_key_index,
            explicit_hash_key_index,
            data: item.data.clone(),
        });
    }
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + 16);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

/// What one sub-record adds to an aggregate at most: its data, protobuf framing (tags and
/// lengths) and its explicit hash key's table entry (up to 39 digits, counted as if new); a new
/// partition key's table entry is counted by [`pack`].
fn sub_record_cost(item: &Entry<'_>) -> usize {
    item.data.len()
        + 20
        + if item.explicit_hash_key.is_some() {
            48
        } else {
            0
        }
}

/// Groups the items of one shard into aggregates of at most `max_bytes` (data, framing and the
/// aggregate's own partition key, which Kinesis counts against the record size). Returns index
/// lists into `items`.
///
/// A key's records stay together, in their order, in as few aggregates as possible: all in one
/// whenever they fit in one, so a key is never split over two entries of a request that could
/// fail separately (what strict ordering relies on). An item too large to share an aggregate
/// gets one of its own.
pub fn pack(items: &[Entry<'_>], max_bytes: usize) -> Vec<Vec<usize>> {
    // Keys in order of first appearance, each with its items in order.
    let mut order: Vec<&str> = Vec::new();
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        by_key
            .entry(item.partition_key)
            .or_insert_with(|| {
                order.push(item.partition_key);
                Vec::new()
            })
            .push(i);
    }
    let overhead = MAGIC.len() + 16;
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0usize;
    for key in order {
        let members = &by_key[key];
        let key_cost = key.len() + 8;
        let together: usize = key_cost
            + members
                .iter()
                .map(|&i| sub_record_cost(&items[i]))
                .sum::<usize>();
        let first_key_len = |current: &Vec<usize>| {
            current
                .first()
                .map_or(key.len(), |&i| items[i].partition_key.len())
        };
        if !current.is_empty() && size + together + first_key_len(&current) > max_bytes {
            out.push(std::mem::take(&mut current));
            size = overhead;
        }
        if current.is_empty() {
            size = overhead;
        }
        let mut key_counted = false;
        for &i in members {
            let cost = sub_record_cost(&items[i]) + if key_counted { 0 } else { key_cost };
            if !current.is_empty() && size + cost + first_key_len(&current) > max_bytes {
                out.push(std::mem::take(&mut current));
                size = overhead;
                key_counted = false;
            }
            let cost = sub_record_cost(&items[i]) + if key_counted { 0 } else { key_cost };
            key_counted = true;
            size += cost;
            current.push(i);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn items<'a>(keys: &[&'a str], data: &'a [Bytes]) -> Vec<Entry<'a>> {
        keys.iter()
            .zip(data)
            .map(|(k, d)| Entry {
                partition_key: k,
                explicit_hash_key: None,
                data: d,
            })
            .collect()
    }

    #[test]
    fn encodes_magic_protobuf_and_md5_trailer() {
        let data = [
            Bytes::from_static(b"one"),
            Bytes::from_static(b"two"),
            Bytes::from_static(b"three"),
        ];
        let mut list = items(&["a", "b", "a"], &data);
        list[1].explicit_hash_key = Some(42);
        let blob = encode(&list);
        assert_eq!(blob[..4], MAGIC);
        let (body, digest) = blob[4..].split_at(blob.len() - 20);
        assert_eq!(digest, Md5::digest(body).as_slice());
        let decoded = AggregatedRecord::decode(body).unwrap();
        assert_eq!(decoded.partition_key_table, vec!["a", "b"]);
        assert_eq!(decoded.explicit_hash_key_table, vec!["42"]);
        let subs: Vec<(u64, Option<u64>, &[u8])> = decoded
            .records
            .iter()
            .map(|r| {
                (
                    r.partition_key_index,
                    r.explicit_hash_key_index,
                    &r.data[..],
                )
            })
            .collect();
        assert_eq!(
            subs,
            vec![
                (0, None, &b"one"[..]),
                (1, Some(0), &b"two"[..]),
                (0, None, &b"three"[..])
            ]
        );
    }

    #[test]
    fn packing_respects_the_size_and_keeps_keys_together_in_order() {
        let data: Vec<Bytes> = (0..10).map(|i| Bytes::from(vec![b'x'; 90 + i])).collect();
        let keys = ["a", "b", "a", "c", "b", "a", "c", "d", "d", "a"];
        let list = items(&keys, &data);
        let packed = pack(&list, 500);
        let mut seen: Vec<usize> = packed.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>(), "every item exactly once");
        for aggregate in &packed {
            let blob = encode(&aggregate.iter().map(|&i| list[i]).collect::<Vec<_>>());
            let key_len = list[aggregate[0]].partition_key.len();
            assert!(
                blob.len() + key_len <= 500,
                "{} bytes",
                blob.len() + key_len
            );
            // Items of a key keep their order.
            for w in aggregate.windows(2) {
                if list[w[0]].partition_key == list[w[1]].partition_key {
                    assert!(w[0] < w[1]);
                }
            }
        }
        // Each key whose records fit in one aggregate is in exactly one.
        for key in ["a", "b", "c", "d"] {
            let holding = packed
                .iter()
                .filter(|a| a.iter().any(|&i| list[i].partition_key == key))
                .count();
            assert_eq!(holding, 1, "key {key}");
        }
    }

    #[test]
    fn explicit_hash_keys_count_against_the_size() {
        let data: Vec<Bytes> = (0..200).map(|_| Bytes::from(vec![b'x'; 100])).collect();
        let mut list = items(&["k"; 200], &data);
        for (i, item) in list.iter_mut().enumerate() {
            item.explicit_hash_key = Some(u128::MAX - i as u128);
        }
        for aggregate in pack(&list, 4096) {
            let blob = encode(&aggregate.iter().map(|&i| list[i]).collect::<Vec<_>>());
            assert!(blob.len() < 4096, "{} bytes", blob.len() + 1);
        }
    }

    #[test]
    fn an_item_too_large_to_share_gets_its_own_aggregate() {
        let data = [
            Bytes::from(vec![0; 10]),
            Bytes::from(vec![0; 1000]),
            Bytes::from(vec![0; 10]),
        ];
        let list = items(&["a", "b", "c"], &data);
        assert_eq!(pack(&list, 200), vec![vec![0], vec![1], vec![2]]);
    }
}
