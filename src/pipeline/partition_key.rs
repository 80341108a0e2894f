//! Choosing the Kinesis partition key of a record.
//!
//! The partition key picks the shard (MD5 of the key), so it decides which records stay in order
//! relative to each other. Kinesis accepts 1 to 256 Unicode characters; every rule here always
//! produces a valid key, whatever bytes the Kafka key holds.

use std::fmt::Write as _;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// Kinesis' limit on a partition key, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyRule {
    /// The Kafka message key (default). Same key, same shard, Kafka order kept.
    #[default]
    KafkaKey,
    /// A random key per record: even spread over shards, no order between records.
    Random,
    /// A fixed prefix followed by a random suffix.
    PrefixRandom,
}

/// Builds partition keys according to a [`KeyRule`].
#[derive(Debug, Clone)]
pub struct PartitionKeys {
    rule: KeyRule,
    prefix: String,
}

impl PartitionKeys {
    pub fn new(rule: KeyRule, prefix: Option<&str>) -> Self {
        Self {
            rule,
            prefix: prefix.unwrap_or_default().to_owned(),
        }
    }

    /// The partition key for a record with Kafka `key` from `topic`/`partition`.
    ///
    /// With [`KeyRule::KafkaKey`]:
    /// - a key that is valid UTF-8 of 1 to 256 characters is used as it is;
    /// - a record without a key (or with an empty one) gets `<topic>-<partition>`, so the records of
    ///   one Kafka partition stay together and in order;
    /// - any other key (binary, or longer than 256 characters) is replaced by the 32 hex digits of
    ///   its MD5, which keeps equal keys together.
    pub fn key_for(&self, key: Option<&[u8]>, topic: &str, partition: i32) -> String {
        match self.rule {
            KeyRule::KafkaKey => match key {
                None | Some([]) => {
                    let fallback = format!("{topic}-{partition}");
                    if fallback.chars().count() <= MAX_PARTITION_KEY_CHARS {
                        fallback
                    } else {
                        md5_hex(fallback.as_bytes())
                    }
                }
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(s) if s.chars().count() <= MAX_PARTITION_KEY_CHARS => s.to_owned(),
                    _ => md5_hex(bytes),
                },
            },
            KeyRule::Random => random_hex(String::with_capacity(32)),
            KeyRule::PrefixRandom => {
                let mut key = String::with_capacity(self.prefix.len() + 32);
                key.push_str(&self.prefix);
                random_hex(key)
            }
        }
    }
}

fn random_hex(mut into: String) -> String {
    let value: u128 = rand::random();
    let _ = write!(into, "{value:032x}");
    into
}

fn md5_hex(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    let mut out = String::with_capacity(32);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(key: &str) -> bool {
        let n = key.chars().count();
        (1..=MAX_PARTITION_KEY_CHARS).contains(&n)
    }

    #[test]
    fn kafka_key_is_used_as_is() {
        let keys = PartitionKeys::new(KeyRule::KafkaKey, None);
        assert_eq!(
            keys.key_for(Some(b"customer-42"), "orders", 3),
            "customer-42"
        );
        // Multi-byte characters count as characters, not bytes.
        let k = "é".repeat(256);
        assert_eq!(keys.key_for(Some(k.as_bytes()), "orders", 3), k);
    }

    #[test]
    fn missing_or_empty_key_falls_back_to_topic_and_partition() {
        let keys = PartitionKeys::new(KeyRule::KafkaKey, None);
        assert_eq!(keys.key_for(None, "orders", 3), "orders-3");
        assert_eq!(keys.key_for(Some(b""), "orders", 3), "orders-3");
        assert_ne!(keys.key_for(None, "orders", 4), "orders-3");
    }

    #[test]
    fn binary_or_overlong_keys_are_hashed_stably() {
        let keys = PartitionKeys::new(KeyRule::KafkaKey, None);
        let binary = [0xff, 0x00, 0xfe];
        let a = keys.key_for(Some(&binary), "t", 0);
        assert_eq!(a, keys.key_for(Some(&binary), "t", 1));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        let long = "k".repeat(257);
        let b = keys.key_for(Some(long.as_bytes()), "t", 0);
        assert!(valid(&b));
        assert_ne!(a, b);
        // MD5("abc"), the RFC 1321 test vector.
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn long_topic_fallback_stays_valid() {
        let keys = PartitionKeys::new(KeyRule::KafkaKey, None);
        let topic = "t".repeat(249);
        assert!(valid(&keys.key_for(None, &topic, 123_456)));
    }

    #[test]
    fn random_keys_differ_and_are_valid() {
        let keys = PartitionKeys::new(KeyRule::Random, None);
        let a = keys.key_for(Some(b"same"), "t", 0);
        let b = keys.key_for(Some(b"same"), "t", 0);
        assert_ne!(a, b);
        assert!(valid(&a) && valid(&b));
    }

    #[test]
    fn prefix_random_keeps_the_prefix() {
        let keys = PartitionKeys::new(KeyRule::PrefixRandom, Some("tenant-a/"));
        let a = keys.key_for(None, "t", 0);
        let b = keys.key_for(None, "t", 0);
        assert!(a.starts_with("tenant-a/") && b.starts_with("tenant-a/"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "tenant-a/".len() + 32);
    }
}
