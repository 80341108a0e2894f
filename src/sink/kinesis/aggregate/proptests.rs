//! Property tests of KPL aggregation, read back by a protobuf reader written here from the KPL's
//! `messages.proto` (not doka's prost structs):
//!
//! ```proto
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! ```

use bytes::Bytes;
use md5::{Digest, Md5};
use proptest::prelude::*;
use proptest::string::string_regex;

use super::{MAGIC, encode, pack};
use crate::sink::Entry;

/// A user record as a KPL reader gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserRecord {
    partition_key: String,
    explicit_hash_key: Option<u128>,
    data: Vec<u8>,
}

impl UserRecord {
    fn of(entry: &Entry<'_>) -> Self {
        Self {
            partition_key: entry.partition_key.to_owned(),
            explicit_hash_key: entry.explicit_hash_key,
            data: entry.data.to_vec(),
        }
    }
}

/// One protobuf field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Reads protobuf fields one after another.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or("a varint cut short")?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err("a varint over 64 bits".into());
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint over 10 bytes".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("{len} bytes past the end"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The next field's number and value; `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err("field number 0".into());
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                Value::Bytes(self.take(len)?)
            }
            wire => return Err(format!("field {number}: wire type {wire}, never written")),
        };
        Ok(Some((number, value)))
    }
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

/// An explicit hash key as the KPL writes it: the decimal digits of a 128-bit number.
fn hash_key(text: &str) -> Result<u128, String> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(format!("hash key {text:?} is not a decimal number"));
    }
    text.parse().map_err(|e| format!("hash key {text}: {e}"))
}

/// An aggregated record's user records, checked as a KPL reader would (magic, MD5 of the
/// protobuf, table indexes in range) and strictly beyond (required fields once, optional ones at
/// most once, no field the format does not have, every table entry used).
fn read_aggregate(blob: &[u8]) -> Result<Vec<UserRecord>, String> {
    if blob.len() < MAGIC.len() + 16 {
        return Err(format!("{} bytes: too short", blob.len()));
    }
    if blob[..4] != [0xF3, 0x89, 0x9A, 0xC2] {
        return Err(format!("magic {:02x?}", &blob[..4]));
    }
    let (body, digest) = blob[4..].split_at(blob.len() - 4 - 16);
    if Md5::digest(body).as_slice() != digest {
        return Err("the MD5 trailer does not match the protobuf".into());
    }
    let mut keys = Vec::new();
    let mut hash_keys = Vec::new();
    let mut records = Vec::new();
    let mut fields = Fields::new(body);
    while let Some((number, value)) = fields.next_field()? {
        match (number, value) {
            (1, Value::Bytes(b)) => keys.push(text(b)?),
            (2, Value::Bytes(b)) => hash_keys.push(hash_key(&text(b)?)?),
            (3, Value::Bytes(b)) => records.push(read_record(b)?),
            (n, _) => {
                return Err(format!(
                    "AggregatedRecord field {n} of the wrong type or unknown"
                ));
            }
        }
    }
    let mut key_used = vec![false; keys.len()];
    let mut hash_key_used = vec![false; hash_keys.len()];
    let out = records
        .into_iter()
        .map(|(key, hash, data)| {
            let partition_key = keys
                .get(key)
                .cloned()
                .ok_or(format!("partition key index {key} of {}", keys.len()))?;
            key_used[key] = true;
            let explicit_hash_key = match hash {
                Some(h) => {
                    let value = *hash_keys
                        .get(h)
                        .ok_or(format!("hash key index {h} of {}", hash_keys.len()))?;
                    hash_key_used[h] = true;
                    Some(value)
                }
                None => None,
            };
            Ok(UserRecord {
                partition_key,
                explicit_hash_key,
                data,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if key_used.contains(&false) || hash_key_used.contains(&false) {
        return Err("a table entry no record uses".into());
    }
    Ok(out)
}

/// One `Record`: its partition key index, explicit hash key index and data.
fn read_record(buf: &[u8]) -> Result<(usize, Option<usize>, Vec<u8>), String> {
    let (mut key, mut hash, mut data) = (None, None, None);
    let mut fields = Fields::new(buf);
    let index = |v: u64| usize::try_from(v).map_err(|e| e.to_string());
    while let Some((number, value)) = fields.next_field()? {
        let slot_was_empty = match (number, value) {
            (1, Value::Varint(v)) => key.replace(index(v)?).is_none(),
            (2, Value::Varint(v)) => hash.replace(index(v)?).is_none(),
            (3, Value::Bytes(b)) => data.replace(b.to_vec()).is_none(),
            (n, _) => return Err(format!("Record field {n} of the wrong type or unknown")),
        };
        if !slot_was_empty {
            return Err(format!("Record field {number} twice"));
        }
    }
    Ok((
        key.ok_or("a Record without its required partition_key_index")?,
        hash,
        data.ok_or("a Record without its required data")?,
    ))
}

/// Records as generated: indexes into a key pool, data, an explicit hash key or not.
#[derive(Debug, Clone)]
struct Input {
    keys: Vec<String>,
    items: Vec<(usize, Bytes, Option<u128>)>,
}

impl Input {
    fn entries(&self) -> Vec<Entry<'_>> {
        self.items
            .iter()
            .map(|(key, data, hash)| Entry {
                partition_key: &self.keys[*key],
                explicit_hash_key: *hash,
                data,
            })
            .collect()
    }
}

/// Data of every size class a varint length has (1, 2 and 3 bytes), mostly small. The bytes are
/// opaque here: drawn from a seed (byte by byte, proptest would spend seconds on the large ones).
fn data(max: usize) -> impl Strategy<Value = Bytes> {
    (
        prop_oneof![
            8 => 0..max.min(130),
            2 => 0..max,
            1 => 16_380..16_390usize,
        ],
        any::<u64>(),
    )
        .prop_map(|(len, seed)| {
            let mut state = seed | 1;
            (0..len)
                .map(|_| {
                    // xorshift64
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect::<Vec<u8>>()
                .into()
        })
}

fn explicit_hash_key() -> impl Strategy<Value = Option<u128>> {
    prop_oneof![
        2 => Just(None),
        1 => prop_oneof![Just(0), Just(u128::MAX), any::<u128>(), 0..1000u128].prop_map(Some),
    ]
}

/// Up to `max_items` records over a pool of up to `max_keys` keys (any text, up to `key_len`
/// bytes of it), with explicit hash keys (from a small pool, so that they repeat) or without any
/// (their generous allowance would hide a short count of anything else).
fn input(
    max_items: usize,
    max_keys: usize,
    key_len: usize,
    max_data: usize,
    hash_keys: bool,
) -> impl Strategy<Value = Input> {
    (
        prop::collection::vec(
            prop_oneof![
                string_regex(&format!("[a-z0-9]{{1,{key_len}}}")).unwrap(),
                string_regex(&format!(".{{1,{}}}", key_len / 4 + 1)).unwrap(),
            ],
            1..=max_keys,
        )
        .prop_map(|mut keys| {
            // Distinct: the properties speak of each key's records.
            let mut seen = std::collections::HashSet::new();
            keys.retain(|k| seen.insert(k.clone()));
            keys
        }),
        prop::collection::vec(explicit_hash_key(), 1..4),
    )
        .prop_flat_map(move |(keys, hashes)| {
            let n = keys.len();
            let item = (
                0..n,
                data(max_data),
                prop_oneof![prop::sample::select(hashes.clone()), explicit_hash_key()]
                    .prop_map(move |h| h.filter(|_| hash_keys)),
            );
            (Just(keys), prop::collection::vec(item, 0..=max_items))
                .prop_map(|(keys, items)| Input { keys, items })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn an_aggregate_holds_its_records_in_order(
        input in prop_oneof![
            4 => input(40, 6, 40, 300, true),
            1 => input(300, 300, 8, 4, true),
        ],
    ) {
        let entries = input.entries();
        let blob = encode(&entries);
        let read = read_aggregate(&blob).map_err(TestCaseError::fail)?;
        let expected: Vec<UserRecord> = entries.iter().map(UserRecord::of).collect();
        prop_assert_eq!(read, expected);
    }

    #[test]
    fn packing_keeps_every_record_once_keys_in_order_and_aggregates_within_the_limit(
        input in prop_oneof![
            3 => input(60, 8, 40, 400, true),
            3 => input(80, 3, 16, 130, false),
            1 => input(300, 300, 8, 4, true),
        ],
        max_bytes in prop_oneof![0..300usize, 300..4_000usize, 20_000..60_000usize],
    ) {
        let entries = input.entries();
        let packed = pack(&entries, max_bytes);
        // Every record exactly once.
        let mut seen = vec![0; entries.len()];
        for &i in packed.iter().flatten() {
            prop_assert!(i < entries.len(), "index {} of {}", i, entries.len());
            seen[i] += 1;
        }
        prop_assert!(seen.iter().all(|&n| n == 1), "times each record was packed: {:?}", seen);
        prop_assert!(packed.iter().all(|g| !g.is_empty()), "an empty aggregate");
        for (k, key) in input.keys.iter().enumerate() {
            // A key's records in their order, in consecutive aggregates.
            let order: Vec<usize> = packed
                .iter()
                .flatten()
                .copied()
                .filter(|&i| input.items[i].0 == k)
                .collect();
            prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "key {:?}: {:?}", key, order);
            let holding: Vec<usize> = packed
                .iter()
                .enumerate()
                .filter(|(_, g)| g.iter().any(|&i| input.items[i].0 == k))
                .map(|(a, _)| a)
                .collect();
            prop_assert!(holding.windows(2).all(|w| w[1] == w[0] + 1), "key {:?} in {:?}", key, holding);
            // All in one aggregate when they fit in one, as aggregate.rs counts: the magic and
            // MD5 (20), the key as the aggregate's and in the table (2 * len + 8), and per record
            // its data, 20 of framing and 48 for an explicit hash key.
            let together = 20 + 2 * key.len() + 8 + order
                .iter()
                .map(|&i| {
                    let (_, data, hash) = &input.items[i];
                    data.len() + 20 + if hash.is_some() { 48 } else { 0 }
                })
                .sum::<usize>();
            if together <= max_bytes {
                prop_assert!(holding.len() <= 1, "key {:?} ({} bytes) split: {:?}", key, together, holding);
            }
        }
        // An aggregate (two records or more) within the limit as Kinesis counts it (its data and
        // its partition key, the first record's), and read back whole; a record alone is sent
        // as it is.
        for group in packed.iter().filter(|g| g.len() > 1) {
            let members: Vec<Entry<'_>> = group.iter().map(|&i| entries[i]).collect();
            let blob = encode(&members);
            let size = blob.len() + members[0].partition_key.len();
            prop_assert!(size <= max_bytes, "{} bytes for {} records, limit {}", size, group.len(), max_bytes);
            let read = read_aggregate(&blob).map_err(TestCaseError::fail)?;
            let expected: Vec<UserRecord> = members.iter().map(UserRecord::of).collect();
            prop_assert_eq!(read, expected);
        }
    }

    #[test]
    fn damaged_aggregates_are_refused(
        input in input(10, 3, 10, 50, true),
        at in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let mut blob = encode(&input.entries());
        let at = at.index(blob.len());
        blob[at] ^= flip;
        prop_assert!(read_aggregate(&blob).is_err(), "byte {} changed", at);
    }
}
