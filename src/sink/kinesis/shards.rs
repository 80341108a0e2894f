//! Which shard a record lands on: the stream's open shards and their hash-key ranges.
//!
//! Kinesis routes a record by its hash key — the ExplicitHashKey when given, else the MD5 of the
//! partition key read as a 128-bit big-endian number — to the open shard whose range holds it.
//! Aggregation needs the same answer before sending: the KCL drops sub-records of an aggregate
//! that belong to another shard than the one the aggregate landed on.

use md5::{Digest, Md5};

/// The hash key Kinesis derives from a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// One open shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    pub start: u128,
    pub end: u128,
}

/// The open shards, sorted by their hash-key ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<Shard>,
}

impl ShardMap {
    /// From ListShards' open shards (any order). `None` when the ranges do not cover the whole
    /// 128-bit space without gaps or overlaps (a map caught in the middle of resharding).
    pub fn new(mut shards: Vec<Shard>) -> Option<Self> {
        shards.sort_by_key(|s| s.start);
        let mut next = 0u128;
        for (i, s) in shards.iter().enumerate() {
            if s.start != next || s.end < s.start {
                return None;
            }
            if s.end == u128::MAX {
                return (i == shards.len() - 1).then_some(Self { shards });
            }
            next = s.end + 1;
        }
        None
    }

    /// The shard (index into [`Self::shards`]) holding `hash_key`.
    pub fn shard_of(&self, hash_key: u128) -> usize {
        self.shards.partition_point(|s| s.end < hash_key)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// The index of the shard with this id, if it is open in this map.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kinesis' even split of the hash-key space into `n` shards, as CreateStream makes it.
    fn even(n: u128) -> ShardMap {
        let step = u128::MAX / n + 1;
        ShardMap::new(
            (0..n)
                .map(|i| Shard {
                    id: format!("shardId-{i:012}"),
                    start: i * step,
                    end: if i == n - 1 {
                        u128::MAX
                    } else {
                        (i + 1) * step - 1
                    },
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn the_hash_key_is_the_md5_of_the_partition_key() {
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
    }

    #[test]
    fn hash_keys_map_to_the_shard_whose_range_holds_them() {
        let map = even(4);
        assert_eq!(map.shard_of(0), 0);
        assert_eq!(map.shard_of((1u128 << 126) - 1), 0);
        assert_eq!(map.shard_of(1u128 << 126), 1);
        assert_eq!(map.shard_of(u128::MAX), 3);
        assert_eq!(map.index_of("shardId-000000000002"), Some(2));
        assert_eq!(map.index_of("shardId-000000000009"), None);
    }

    #[test]
    fn maps_with_gaps_or_overlaps_are_refused() {
        let s = |start, end| Shard {
            id: format!("{start}"),
            start,
            end,
        };
        assert!(ShardMap::new(vec![s(0, 10), s(12, u128::MAX)]).is_none());
        assert!(ShardMap::new(vec![s(0, 10), s(5, u128::MAX)]).is_none());
        assert!(ShardMap::new(vec![s(0, 10)]).is_none());
        assert!(ShardMap::new(vec![s(11, u128::MAX), s(0, 10)]).is_some());
    }
}
