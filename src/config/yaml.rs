//! YAML for the config file through serde-saphyr (pure Rust; serde_yaml is deprecated), set to
//! read and print it as serde_yaml 0.9 did: figment reads the file untyped, so how plain scalars
//! are typed decides what a key holds.

use std::fmt;

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::{MergeKeyPolicy, NonFiniteFloatPolicy};

/// YAML 1.2 core scalars as serde_yaml typed them: only `true`/`false` (any case style YAML
/// allows) are booleans, `0755` and `1_000` stay strings, `.inf`/`.nan` are floats, `<<` is an
/// ordinary key; duplicate keys are errors. Errors are one line ending in `at line L, column C`.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        non_finite_float_policy: NonFiniteFloatPolicy::PassThrough,
        merge_keys: MergeKeyPolicy::AsOrdinary,
        with_snippet: false,
    }
}

fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// `text` read as a `T`, or what is wrong with it and where, worded for users.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    from_str(text).map_err(|e| e.render_with_formatter(&serde_saphyr::UserMessageFormatter))
}

/// Block style, long lines kept on one line (shared with the sections that print themselves).
pub use crate::settings::to_yaml as to_string;

/// figment's YAML format on serde-saphyr (figment's own `yaml` feature is serde_yaml).
pub struct Yaml;

impl figment::providers::Format for Yaml {
    type Error = serde_saphyr::Error;
    const NAME: &'static str = "YAML";

    fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        from_str(text)
    }
}

/// A YAML value as loading looks at it before figment reads the file: mappings keep their keys
/// in file order (figment's and serde_json's maps are sorted), everything else is opaque.
pub enum Node {
    Null,
    Mapping(Vec<(String, Node)>),
    Other,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Mapping(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The keys of a mapping, in file order; none for anything else.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Node::Mapping(entries) => entries.iter().map(|(k, _)| k.clone()).collect(),
            _ => Vec::new(),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Mapping(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Node::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Other)
    }
}
