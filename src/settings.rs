//! What every settings section is written with: secrets that never print, the problem a check
//! reports (the key and what to change), range checks, and the lenient YAML forms users write.
//!
//! A leaf: each part of doka defines and validates its own section with these, and `config`
//! assembles the sections; nothing here knows any section.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A setting that is wrong: its key (as the user wrote it, e.g. `routes[1].batch.max_bytes`) and
/// what is expected instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub problem: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The same problem under `prefix` (a route's `routes[i].`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.key = format!("{prefix}{}", self.key);
        self
    }
}

/// What a section's check returns.
pub type Checked = Result<(), Invalid>;

/// `Err` with `key` and `problem`.
pub fn bad(key: &str, problem: impl Into<String>) -> Checked {
    Err(Invalid::new(key, problem))
}

/// `value` must lie within `min..=max`.
pub fn range<T: PartialOrd + fmt::Display>(key: &str, value: T, min: T, max: T) -> Checked {
    if value < min || value > max {
        return bad(
            key,
            format!("{value} is out of range: expected {min} to {max}"),
        );
    }
    Ok(())
}

/// A value that must never be printed: `Debug`, `Display` and serialisation show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Only strings: a password such as `0123` or `true` would reach doka as a number or a boolean
/// (YAML, and figment parses environment values), changed — and serde's usual type error would
/// quote it. This error quotes nothing.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_text())
            }
        }
        fn not_text<E: serde::de::Error>() -> E {
            E::custom(
                "this secret reads as a number or a boolean and would not be kept exactly (its \
                 value is not shown): quote it in YAML, or give it through a file or an \
                 environment variable of its own (e.g. kafka.auth.scram.password_file or \
                 password_env)",
            )
        }
        d.deserialize_any(Text)
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// An optional section left empty in YAML (`batch:` with every line commented out) is null:
/// take it as "all defaults".
pub fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Accepts `[a, b]` or `"a,b"` (the natural form in an environment variable).
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// The config as YAML: block style, long lines kept on one line, text with line breaks as
/// literal blocks.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    serde_saphyr::to_string_with_options(value, options)
}

/// A map of strings whose values print single-quoted where YAML needs quotes (`'50'`), as
/// serde_yaml printed them (serde-saphyr's own choice is double quotes).
pub fn single_quoted_values<S: Serializer>(
    map: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, v)| (k, QuotedIfNeeded(v))))
}

struct QuotedIfNeeded<'a>(&'a str);

impl Serialize for QuotedIfNeeded<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let needs_quotes =
            crate::settings::to_yaml(&self.0).map_or(true, |plain| plain.starts_with('"'));
        // Control characters (line breaks among them) have no single-quoted form.
        if needs_quotes && !self.0.chars().any(char::is_control) {
            serde_saphyr::SingleQuoted(self.0).serialize(s)
        } else {
            self.0.serialize(s)
        }
    }
}
