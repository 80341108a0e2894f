//! Choosing the Kinesis partition key of a record.
//!
//! The partition key picks the shard (MD5 of the key), so it decides which records stay in order
//! relative to each other. Kinesis accepts 1 to 256 Unicode characters; every rule here always
//! produces a valid key, whatever bytes the Kafka key holds.

use std::fmt::Write as _;

use super::Fallback;
use super::json_field;
use super::settings::PartitionKeyConfig;
pub use super::settings::{BinaryKeyPolicy, KeyRule, LongKeyPolicy, MAX_PARTITION_KEY_CHARS};
use md5::{Digest, Md5};

/// A Kafka key that the policy says not to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWithheld {
    pub action: Fallback,
    /// What is wrong with the key (never the key itself: it may be sensitive).
    pub problem: String,
    /// The config key of the policy that withheld it.
    pub setting: &'static str,
}

/// Builds partition keys according to a [`KeyRule`].
#[derive(Debug, Clone)]
pub struct PartitionKeys {
    rule: KeyRule,
    prefix: String,
    /// `json_field`'s path, parsed once.
    path: Vec<String>,
    template: String,
    on_long_key: LongKeyPolicy,
    on_binary_key: BinaryKeyPolicy,
}

impl PartitionKeys {
    pub fn new(
        rule: KeyRule,
        prefix: Option<&str>,
        on_long_key: LongKeyPolicy,
        on_binary_key: BinaryKeyPolicy,
    ) -> Self {
        Self {
            rule,
            prefix: prefix.unwrap_or_default().to_owned(),
            path: Vec::new(),
            template: String::new(),
            on_long_key,
            on_binary_key,
        }
    }

    /// The rule of a route's `partition_key` section (validated at load).
    pub fn from_config(config: &PartitionKeyConfig) -> Self {
        let mut keys = Self::new(
            config.rule,
            config.prefix.as_deref(),
            config.on_long_key,
            config.on_binary_key,
        );
        if let Some(field) = &config.field {
            keys.path = super::settings::field_path(field).unwrap_or_default();
        }
        keys.template = config.template.clone().unwrap_or_default();
        keys
    }

    /// The partition key for a record with Kafka `key` and `value` from `topic`/`partition`.
    ///
    /// With [`KeyRule::KafkaKey`]:
    /// - a key that is valid UTF-8 of 1 to 256 characters is used as it is;
    /// - a record without a key (or with an empty one) gets `<topic>-<partition>`, so the records of
    ///   one Kafka partition stay together and in order;
    /// - a binary key or one longer than 256 characters is handled by `on_binary_key` /
    ///   `on_long_key`: by default replaced by the 32 hex digits of its MD5, which keeps equal keys
    ///   together.
    ///
    /// [`KeyRule::JsonField`] uses the field's text, and the `kafka_key` rule when the value is not
    /// JSON or the field is missing, null, empty, an object or an array. [`KeyRule::Template`]
    /// fills in topic, partition and key (a binary key by `on_binary_key`; no key: empty; an
    /// empty result: `<topic>-<partition>`). Every rule's result goes through `on_long_key`.
    pub fn key_for(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        topic: &str,
        partition: i32,
    ) -> Result<String, KeyWithheld> {
        Ok(match self.rule {
            KeyRule::KafkaKey => self.by_kafka_key(key, topic, partition)?,
            KeyRule::JsonField => match value.and_then(|v| json_field::field_text(v, &self.path)) {
                Some(text) if !text.is_empty() => self.bounded(text)?,
                _ => self.by_kafka_key(key, topic, partition)?,
            },
            KeyRule::Template => {
                let mut out = String::with_capacity(self.template.len() + 32);
                let mut rest = self.template.as_str();
                while let Some(open) = rest.find('{') {
                    out.push_str(&rest[..open]);
                    let close = open + rest[open..].find('}').unwrap_or(rest.len() - open);
                    match &rest[open + 1..close.min(rest.len())] {
                        "topic" => out.push_str(topic),
                        "partition" => {
                            let _ = write!(out, "{partition}");
                        }
                        "key" => match key {
                            None => {}
                            Some(bytes) => match std::str::from_utf8(bytes) {
                                Ok(text) => out.push_str(text),
                                Err(_) => out.push_str(&self.binary(bytes)?),
                            },
                        },
                        // Validated at load: nothing else is there.
                        _ => {}
                    }
                    rest = rest.get(close + 1..).unwrap_or_default();
                }
                out.push_str(rest);
                if out.is_empty() {
                    self.by_kafka_key(None, topic, partition)?
                } else {
                    self.bounded(out)?
                }
            }
            KeyRule::Random => random_hex(String::with_capacity(32)),
            KeyRule::PrefixRandom => {
                let mut key = String::with_capacity(self.prefix.len() + 32);
                key.push_str(&self.prefix);
                random_hex(key)
            }
        })
    }

    fn by_kafka_key(
        &self,
        key: Option<&[u8]>,
        topic: &str,
        partition: i32,
    ) -> Result<String, KeyWithheld> {
        match key {
            None | Some([]) => {
                let fallback = format!("{topic}-{partition}");
                Ok(if fallback.chars().count() <= MAX_PARTITION_KEY_CHARS {
                    fallback
                } else {
                    md5_hex(fallback.as_bytes())
                })
            }
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if text.chars().count() <= MAX_PARTITION_KEY_CHARS => Ok(text.to_owned()),
                Ok(text) => self.bounded(text.to_owned()),
                Err(_) => self.binary(bytes),
            },
        }
    }

    /// `text` as a partition key: as it is up to 256 characters, else by `on_long_key`.
    fn bounded(&self, text: String) -> Result<String, KeyWithheld> {
        let chars = text.chars().count();
        if chars <= MAX_PARTITION_KEY_CHARS {
            return Ok(text);
        }
        let withheld = |action| KeyWithheld {
            action,
            problem: format!(
                "a key of {chars} characters, over Kinesis' {MAX_PARTITION_KEY_CHARS}"
            ),
            setting: "partition_key.on_long_key",
        };
        match self.on_long_key {
            LongKeyPolicy::Hash => Ok(md5_hex(text.as_bytes())),
            LongKeyPolicy::Truncate => Ok(text.chars().take(MAX_PARTITION_KEY_CHARS).collect()),
            LongKeyPolicy::DeadLetter => Err(withheld(Fallback::DeadLetter)),
            LongKeyPolicy::Stop => Err(withheld(Fallback::Stop)),
        }
    }

    /// A key that is not UTF-8, by `on_binary_key`.
    fn binary(&self, bytes: &[u8]) -> Result<String, KeyWithheld> {
        let withheld = |action| KeyWithheld {
            action,
            problem: format!("a binary key ({} bytes, not UTF-8)", bytes.len()),
            setting: "partition_key.on_binary_key",
        };
        match self.on_binary_key {
            BinaryKeyPolicy::Hash => Ok(md5_hex(bytes)),
            BinaryKeyPolicy::DeadLetter => Err(withheld(Fallback::DeadLetter)),
            BinaryKeyPolicy::Stop => Err(withheld(Fallback::Stop)),
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

/// Hash keys spread evenly over the 128-bit space, for records without a useful key: each is the
/// previous plus 2^128 divided by the golden ratio, so any run of N keys falls into N nearly equal
/// gaps, whatever the number and ranges of the shards ("0, 1, 2…" would land on one shard).
#[derive(Debug, Default)]
pub struct Spread {
    next: std::sync::atomic::AtomicU64,
}

/// 2^128 / φ, rounded to odd.
const GOLDEN_STEP: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835;

impl Spread {
    pub fn next_hash_key(&self) -> u128 {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        GOLDEN_STEP.wrapping_mul(u128::from(n) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(keys: &PartitionKeys, k: Option<&[u8]>, topic: &str, partition: i32) -> String {
        keys.key_for(k, None, topic, partition).expect("a key")
    }

    fn valid(key: &str) -> bool {
        let n = key.chars().count();
        (1..=MAX_PARTITION_KEY_CHARS).contains(&n)
    }

    #[test]
    fn kafka_key_is_used_as_is() {
        let keys = PartitionKeys::new(
            KeyRule::KafkaKey,
            None,
            LongKeyPolicy::Hash,
            BinaryKeyPolicy::Hash,
        );
        assert_eq!(key(&keys, Some(b"customer-42"), "orders", 3), "customer-42");
        // Multi-byte characters count as characters, not bytes.
        let k = "é".repeat(256);
        assert_eq!(key(&keys, Some(k.as_bytes()), "orders", 3), k);
    }

    #[test]
    fn missing_or_empty_key_falls_back_to_topic_and_partition() {
        let keys = PartitionKeys::new(
            KeyRule::KafkaKey,
            None,
            LongKeyPolicy::Hash,
            BinaryKeyPolicy::Hash,
        );
        assert_eq!(key(&keys, None, "orders", 3), "orders-3");
        assert_eq!(key(&keys, Some(b""), "orders", 3), "orders-3");
        assert_ne!(key(&keys, None, "orders", 4), "orders-3");
    }

    #[test]
    fn binary_or_overlong_keys_are_hashed_stably() {
        let keys = PartitionKeys::new(
            KeyRule::KafkaKey,
            None,
            LongKeyPolicy::Hash,
            BinaryKeyPolicy::Hash,
        );
        let binary = [0xff, 0x00, 0xfe];
        let a = key(&keys, Some(&binary), "t", 0);
        assert_eq!(a, key(&keys, Some(&binary), "t", 1));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        let long = "k".repeat(257);
        let b = key(&keys, Some(long.as_bytes()), "t", 0);
        assert!(valid(&b));
        assert_ne!(a, b);
        // MD5("abc"), the RFC 1321 test vector.
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn long_topic_fallback_stays_valid() {
        let keys = PartitionKeys::new(
            KeyRule::KafkaKey,
            None,
            LongKeyPolicy::Hash,
            BinaryKeyPolicy::Hash,
        );
        let topic = "t".repeat(249);
        assert!(valid(&key(&keys, None, &topic, 123_456)));
    }

    #[test]
    fn random_keys_differ_and_are_valid() {
        let keys = PartitionKeys::new(
            KeyRule::Random,
            None,
            LongKeyPolicy::Hash,
            BinaryKeyPolicy::Hash,
        );
        let a = key(&keys, Some(b"same"), "t", 0);
        let b = key(&keys, Some(b"same"), "t", 0);
        assert_ne!(a, b);
        assert!(valid(&a) && valid(&b));
    }

    #[test]
    fn prefix_random_keeps_the_prefix() {
        let keys = PartitionKeys::new(
            KeyRule::PrefixRandom,
            Some("tenant-a/"),
            LongKeyPolicy::Hash,
            BinaryKeyPolicy::Hash,
        );
        let a = key(&keys, None, "t", 0);
        let b = key(&keys, None, "t", 0);
        assert!(a.starts_with("tenant-a/") && b.starts_with("tenant-a/"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "tenant-a/".len() + 32);
    }

    #[test]
    fn long_and_binary_key_policies() {
        let long = "é".repeat(300);
        let binary = [0xff, 0x00, 0xfe];
        let truncate = PartitionKeys::new(
            KeyRule::KafkaKey,
            None,
            LongKeyPolicy::Truncate,
            BinaryKeyPolicy::Hash,
        );
        assert_eq!(
            key(&truncate, Some(long.as_bytes()), "t", 0),
            "é".repeat(256)
        );
        let withholding = PartitionKeys::new(
            KeyRule::KafkaKey,
            None,
            LongKeyPolicy::DeadLetter,
            BinaryKeyPolicy::Stop,
        );
        let long_withheld = withholding
            .key_for(Some(long.as_bytes()), None, "t", 0)
            .unwrap_err();
        assert_eq!(long_withheld.action, Fallback::DeadLetter);
        assert_eq!(long_withheld.setting, "partition_key.on_long_key");
        assert!(
            long_withheld.problem.contains("300 characters"),
            "{long_withheld:?}"
        );
        let binary_withheld = withholding
            .key_for(Some(&binary), None, "t", 0)
            .unwrap_err();
        assert_eq!(binary_withheld.action, Fallback::Stop);
        assert_eq!(binary_withheld.setting, "partition_key.on_binary_key");
        // Keys within the rules are untouched by the policies.
        assert_eq!(key(&withholding, Some(b"fine"), "t", 0), "fine");
    }

    #[test]
    fn spread_keys_fill_every_shard_evenly() {
        for shards in [2u128, 3, 4, 7, 16] {
            let step = u128::MAX / shards + 1;
            let spread = Spread::default();
            let mut counts = vec![0u32; shards as usize];
            let n = 10_000;
            for _ in 0..n {
                counts[(spread.next_hash_key() / step) as usize] += 1;
            }
            let fair = n / shards as u32;
            for c in counts {
                assert!(
                    c.abs_diff(fair) <= fair / 50,
                    "{shards} shards: {c} vs {fair}"
                );
            }
        }
    }
}
