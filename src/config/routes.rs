//! Routes: the one-route shorthand, or each `routes` entry merged over the top-level sections;
//! and the checks that span a route's sections.

use figment::Figment;
use serde::{Deserialize, Serialize};

use super::Config;
use super::load::{ConfigError, Source, describe_figment_error_at, describe_invalid, env_var_for};
use crate::aws::AwsConfig;
use crate::pipeline::settings::{
    BatchConfig, BinaryKeyPolicy, Delimiter, ExplicitHashKey, HeadersPolicy, LongKeyPolicy,
    Ordering, PartitionKeyConfig, RecordFormat, RecordsConfig, RetryConfig, TombstonePolicy,
};
use crate::schema::DecodeConfig;
use crate::settings::{Checked, Invalid, bad, null_as_default, range, string_list};
use crate::sink::Destination;
use crate::sink::firehose::FirehoseConfig;
use crate::sink::kinesis::{KinesisConfig, MAX_PUT_RECORDS_BYTES};
use crate::sink::stdout::StdoutConfig;

/// One way from Kafka topics to one destination, with everything that may differ per route.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub name: String,
    /// Topic names; with `topic_pattern`, topics matching either are the route's.
    pub topics: Vec<String>,
    /// A regular expression a whole topic name must match (new topics are picked up while doka
    /// runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    pub aws: AwsConfig,
    /// Printed as its own section (`kinesis:`, `firehose:` or `stdout:`).
    #[serde(flatten)]
    pub destination: Destination,
    pub partition_key: PartitionKeyConfig,
    pub batch: BatchConfig,
    pub records: RecordsConfig,
    #[serde(skip_serializing_if = "DecodeConfig::is_empty")]
    pub decode: DecodeConfig,
    pub retry: RetryConfig,
    pub lanes: u32,
    pub ordering: Ordering,
    /// The route's weight in the in-flight bound (see [`Config::in_flight_share`]).
    pub in_flight_share: u32,
}

/// A `routes` entry as written; missing sections come from the top level.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "string_list")]
    topics: Vec<String>,
    #[serde(default)]
    topic_pattern: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    aws: AwsConfig,
    #[serde(default)]
    kinesis: Option<KinesisConfig>,
    #[serde(default)]
    firehose: Option<FirehoseConfig>,
    #[serde(default)]
    stdout: Option<StdoutConfig>,
    #[serde(default, deserialize_with = "null_as_default")]
    partition_key: PartitionKeyConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    batch: BatchConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    records: RecordsConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    decode: DecodeConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    retry: RetryConfig,
    #[serde(default)]
    lanes: Option<u32>,
    #[serde(default)]
    ordering: Option<Ordering>,
    #[serde(default = "default_in_flight_share")]
    in_flight_share: u32,
}

fn default_in_flight_share() -> u32 {
    1
}

/// The destination sections of a route (or of the shorthand) as written. Exactly one of them,
/// naming its destination, makes the route's [`Destination`].
struct DestinationSections {
    kinesis: Option<KinesisConfig>,
    firehose: Option<FirehoseConfig>,
    stdout: Option<StdoutConfig>,
}

/// The keys of [`DestinationSections`], as a route's own sections are looked up.
const DESTINATION_SECTIONS: [&str; 3] = ["kinesis", "firehose", "stdout"];

impl DestinationSections {
    /// Every section written, complete or not.
    fn present(&self) -> Vec<&'static str> {
        let written = [
            self.kinesis.is_some(),
            self.firehose.is_some(),
            self.stdout.is_some(),
        ];
        DESTINATION_SECTIONS
            .into_iter()
            .zip(written)
            .filter_map(|(section, written)| written.then_some(section))
            .collect()
    }

    /// Every section that names a destination (a `kinesis` section without `stream` only holds
    /// defaults).
    fn named(self) -> Vec<Destination> {
        let mut named = Vec::new();
        if let Some(k) = self.kinesis.filter(|k| k.stream.is_some()) {
            named.push(Destination::Kinesis(k));
        }
        if let Some(f) = self.firehose.filter(|f| f.delivery_stream.is_some()) {
            named.push(Destination::Firehose(f));
        }
        if let Some(s) = self.stdout {
            named.push(Destination::Stdout(s));
        }
        named
    }
}

/// The sections a route inherits from the top level, key by key.
const SHARED_SECTIONS: [&str; 6] = [
    "aws",
    "partition_key",
    "batch",
    "records",
    "decode",
    "retry",
];

impl Config {
    /// The one-route shorthand: `kafka.topics` to the one destination section.
    fn shorthand_route(&self, destination: Destination) -> Route {
        Route {
            name: "default".into(),
            topics: self.kafka.topics.clone(),
            topic_pattern: None,
            aws: self.aws.clone(),
            destination,
            partition_key: self.partition_key.clone(),
            batch: self.batch.clone(),
            records: self.records.clone(),
            decode: self.decode.clone(),
            retry: self.retry.clone(),
            lanes: self.pipeline.lanes,
            ordering: self.pipeline.ordering,
            in_flight_share: 1,
        }
    }

    /// Builds [`Self::routes`]: each `routes` entry merged over the top-level sections (key by
    /// key), or the shorthand's one route. Errors name the key as `routes[i].<key>`.
    pub(super) fn resolve_routes(
        &mut self,
        figment: &Figment,
        source: &Source,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| {
            ConfigError::new(describe_invalid(
                figment,
                source,
                &Invalid::new(key, problem),
            ))
        };
        if self.route_specs.is_empty() {
            if self.kafka.topics.is_empty() || self.kafka.topics.iter().any(|t| t.trim().is_empty())
            {
                return Err(invalid(
                    "kafka.topics",
                    "expected at least one topic name (or a `routes` list)",
                ));
            }
            let mut named = DestinationSections {
                kinesis: self.kinesis.clone(),
                firehose: self.firehose.clone(),
                stdout: self.stdout.clone(),
            }
            .named();
            let destination = match named.len() {
                0 => {
                    return Err(ConfigError::new(format!(
                        "missing config key `kinesis.stream`: set it in {} or in the environment \
                         variable {} (or firehose.delivery_stream to write to Firehose, stdout: {{}} \
                         to print records, or a `routes` list)",
                        source.describe(),
                        env_var_for("kinesis.stream")
                    )));
                }
                1 => named.remove(0),
                _ => {
                    let second = named[1].section();
                    return Err(invalid(
                        &format!(
                            "{second}{}",
                            if second == "firehose" {
                                ".delivery_stream"
                            } else {
                                ""
                            }
                        ),
                        "set either kinesis.stream or firehose.delivery_stream (or stdout), not \
                         several (or use `routes` for several destinations)",
                    ));
                }
            };
            let route = self.shorthand_route(destination);
            route
                .validate("", self)
                .map_err(|problem| invalid(&problem.key, &problem.problem))?;
            self.routes = vec![route];
            return Ok(());
        }

        for (key, set) in [
            ("kafka.topics", !self.kafka.topics.is_empty()),
            (
                "kinesis.stream",
                self.kinesis.as_ref().is_some_and(|k| k.stream.is_some()),
            ),
            (
                "firehose.delivery_stream",
                self.firehose
                    .as_ref()
                    .is_some_and(|f| f.delivery_stream.is_some()),
            ),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "with `routes`, each route names its topics and destination: move this into a \
                     route (the shorthand without `routes` is one route)",
                ));
            }
        }
        let mut routes = Vec::new();
        for (i, spec) in self.route_specs.iter().enumerate() {
            let prefix = format!("routes[{i}].");
            let Some(own) = spec.as_dict() else {
                return Err(invalid(
                    &format!("routes[{i}]"),
                    "expected a mapping with topics and a destination (kinesis, firehose or stdout)",
                ));
            };
            let mut merged = Figment::new();
            let mut sections: Vec<&str> = SHARED_SECTIONS.to_vec();
            sections.extend(
                DESTINATION_SECTIONS
                    .into_iter()
                    .filter(|d| own.contains_key(*d)),
            );
            for section in sections {
                if let Ok(mut shared) = figment.find_value(section) {
                    // Settings that belong to a value the route replaces are not inherited: an
                    // external id goes with its role, a field or template with its rule.
                    let replaced: &[&str] = match section {
                        "aws" => &["external_id", "session_name"],
                        "partition_key" => &["field", "template", "prefix"],
                        _ => &[],
                    };
                    let owner = if section == "aws" { "role_arn" } else { "rule" };
                    let route_sets_owner = own
                        .get(section)
                        .and_then(|v| v.as_dict())
                        .is_some_and(|d| d.contains_key(owner));
                    if route_sets_owner && let figment::value::Value::Dict(_, dict) = &mut shared {
                        for key in replaced {
                            dict.remove(*key);
                        }
                    }
                    if section == "decode" {
                        drop_replaced_registries(own.get("decode"), &mut shared);
                    }
                    merged = merged.merge(figment::providers::Serialized::default(section, shared));
                }
            }
            merged = merged.merge(figment::providers::Serialized::defaults(spec));
            let spec: RouteSpec = merged
                .extract()
                .map_err(|e| ConfigError::new(describe_figment_error_at(e, source, &prefix)))?;
            let sections = DestinationSections {
                kinesis: spec.kinesis,
                firehose: spec.firehose,
                stdout: spec.stdout,
            };
            // A route's own destination sections (the top-level ones are inherited only by a
            // route that writes the same section): two of them are a mistake even when one is
            // incomplete, or the other's settings would be ignored without a word.
            if let [_, second, ..] = sections.present()[..] {
                return Err(invalid(
                    &format!("{prefix}{second}"),
                    "a route writes to one destination: keep kinesis or firehose (or stdout)",
                ));
            }
            let mut named = sections.named();
            let destination = match named.len() {
                0 => {
                    return Err(invalid(
                        &format!("{prefix}kinesis.stream"),
                        "each route needs a destination: kinesis.stream or firehose.delivery_stream \
                         (or stdout: {} to print records)",
                    ));
                }
                1 => named.remove(0),
                _ => {
                    return Err(invalid(
                        &format!("{prefix}{}", named[1].section()),
                        "a route writes to one destination: keep kinesis or firehose (or stdout)",
                    ));
                }
            };
            let route = Route {
                name: spec.name.unwrap_or_else(|| destination.name().to_owned()),
                topics: spec.topics,
                topic_pattern: spec.topic_pattern,
                aws: spec.aws,
                destination,
                partition_key: spec.partition_key,
                batch: spec.batch,
                records: spec.records,
                decode: spec.decode,
                retry: spec.retry,
                lanes: spec.lanes.unwrap_or(self.pipeline.lanes),
                ordering: spec.ordering.unwrap_or(self.pipeline.ordering),
                in_flight_share: spec.in_flight_share,
            };
            route
                .validate(&prefix, self)
                .map_err(|problem| invalid(&problem.key, &problem.problem))?;
            routes.push(route);
        }
        check_route_overlaps(&routes, self.dead_letter.topic.as_deref())
            .map_err(|problem| invalid(&problem.key, &problem.problem))?;
        self.routes = routes;
        // The raw entries may hold secrets in clear (an external id): only the resolved routes,
        // whose secrets print redacted, are kept.
        self.route_specs.clear();
        Ok(())
    }
}

/// A route side naming its registry (`confluent` or `glue`) replaces the inherited one: it does
/// not inherit the other's section.
fn drop_replaced_registries(
    own: Option<&figment::value::Value>,
    shared: &mut figment::value::Value,
) {
    let (Some(own), figment::value::Value::Dict(_, shared)) =
        (own.and_then(|v| v.as_dict()), shared)
    else {
        return;
    };
    for side in ["value", "key"] {
        let names_registry = own
            .get(side)
            .and_then(|v| v.as_dict())
            .is_some_and(|d| d.contains_key("confluent") || d.contains_key("glue"));
        if names_registry
            && let Some(figment::value::Value::Dict(_, inherited)) = shared.get_mut(side)
        {
            inherited.remove("confluent");
            inherited.remove("glue");
        }
    }
}

/// A topic named by two routes, a named topic matched by another route's pattern, or the
/// dead-letter topic read by a route. (Two patterns can only be compared against real topics:
/// that is checked when a topic is assigned.)
fn check_route_overlaps(routes: &[Route], dead_letter: Option<&str>) -> Checked {
    let patterns: Vec<Option<regex::Regex>> = routes.iter().map(|r| r.topic_regex()).collect();
    for (i, a) in routes.iter().enumerate() {
        for (j, b) in routes.iter().enumerate().skip(i + 1) {
            if a.name == b.name {
                return bad(
                    &format!("routes[{j}].name"),
                    format!(
                        "`{}` is also the name of routes[{i}]: give each route its own name",
                        b.name
                    ),
                );
            }
        }
        for topic in &a.topics {
            for (j, b) in routes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let named = j > i && b.topics.contains(topic);
                let matched = patterns[j].as_ref().is_some_and(|p| p.is_match(topic));
                if named || matched {
                    return bad(
                        &format!("routes[{i}].topics"),
                        format!(
                            "topic `{topic}` is read by route `{}` and by route `{}`{}: a topic \
                             belongs to one route",
                            a.name,
                            b.name,
                            if matched { " (its topic_pattern)" } else { "" }
                        ),
                    );
                }
            }
        }
        if let Some(topic) = dead_letter {
            let reads = a.topics.iter().any(|t| t == topic)
                || patterns[i].as_ref().is_some_and(|p| p.is_match(topic));
            if reads {
                return bad(
                    "dead_letter.topic",
                    format!(
                        "`{topic}` is read by route `{}`: dead letters would be read back",
                        a.name
                    ),
                );
            }
        }
    }
    Ok(())
}

impl Route {
    /// The largest request: `batch.max_bytes`, within the destination's own limit.
    pub fn max_request_bytes(&self) -> u64 {
        self.destination.max_request_bytes(self.batch.max_bytes)
    }

    /// What ends each record: `records.delimiter`, or the destination's default.
    pub fn delimiter(&self) -> Delimiter {
        self.records
            .delimiter
            .unwrap_or(if self.destination.newline_by_default() {
                Delimiter::Newline
            } else {
                Delimiter::None
            })
    }

    /// The whole-name regex of `topic_pattern` (validated at load).
    pub fn topic_regex(&self) -> Option<regex::Regex> {
        let pattern = self.topic_pattern.as_ref()?;
        regex::Regex::new(&format!("^(?:{pattern})$")).ok()
    }

    /// Semantic checks of one route; keys are reported under `prefix` (empty for the shorthand,
    /// whose keys are the top-level ones).
    fn validate(&self, prefix: &str, config: &Config) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        if self.name.trim().is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return bad(
                &key("name"),
                format!(
                    "`{}`: expected 1 or more of a-z A-Z 0-9 _ . - (it labels metrics and logs)",
                    self.name
                ),
            );
        }
        if !prefix.is_empty() {
            if self.topics.iter().any(|t| t.trim().is_empty()) {
                return bad(&key("topics"), "expected topic names");
            }
            if self.topics.is_empty() && self.topic_pattern.is_none() {
                return bad(
                    &key("topics"),
                    "each route needs topics or a topic_pattern (or both)",
                );
            }
        }
        if let Some(pattern) = &self.topic_pattern
            && let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$"))
        {
            return bad(
                &key("topic_pattern"),
                format!("`{pattern}` is not a regular expression: {e}"),
            );
        }
        if let Some(topic) = &config.dead_letter.topic
            && self.topics.contains(topic)
        {
            let topics = if prefix.is_empty() {
                "kafka.topics".to_owned()
            } else {
                key("topics")
            };
            return bad(
                "dead_letter.topic",
                format!("`{topic}` is also in {topics}: dead letters would be read back"),
            );
        }

        self.aws.validate(prefix)?;
        self.destination.validate(prefix)?;
        if self.partition_key.explicit_hash_key != ExplicitHashKey::None
            && !self.destination.has_shards()
        {
            return bad(
                &key("partition_key.explicit_hash_key"),
                "Firehose has no shards to spread over: remove it (the partition key only \
                 chooses the lane)",
            );
        }
        let pk = &self.partition_key;
        pk.validate(prefix)?;
        let max_entries = self.destination.max_entries();
        range(
            &key("batch.max_records"),
            self.batch.max_records,
            1,
            max_entries,
        )?;
        range(
            &key("batch.max_bytes"),
            self.batch.max_bytes,
            1024,
            MAX_PUT_RECORDS_BYTES,
        )?;
        if self.max_request_bytes() < self.destination.max_record_bytes() {
            return bad(
                &key("batch.max_bytes"),
                format!(
                    "{} is smaller than the largest record the destination takes ({}): a \
                     maximum-size record could never be sent",
                    self.batch.max_bytes,
                    self.destination.max_record_bytes()
                ),
            );
        }
        range(&key("batch.linger_ms"), self.batch.linger_ms, 0, 60_000)?;
        if pk.explicit_hash_key == ExplicitHashKey::Spread && self.ordering == Ordering::Strict {
            return bad(
                &key("partition_key.explicit_hash_key"),
                "spread sends a key's records to different shards, which strict ordering cannot \
                 allow: use none, or pipeline.ordering per_key or none",
            );
        }
        range(&key("lanes"), self.lanes, 1, 1024)?;
        range(&key("in_flight_share"), self.in_flight_share, 1, 1000)?;
        if self.destination.max_record_bytes() > config.pipeline.max_in_flight_bytes {
            return bad(
                "pipeline.max_in_flight_bytes",
                format!(
                    "{} is smaller than route `{}`'s largest record ({} bytes)",
                    config.pipeline.max_in_flight_bytes,
                    self.name,
                    self.destination.max_record_bytes()
                ),
            );
        }

        self.retry.validate(prefix)?;
        self.decode.validate(prefix)?;
        if config.dead_letter.topic.is_none() {
            if let Some(setting) = self.decode.wanting_dead_letters() {
                return bad(
                    &key(setting),
                    "dead_letter (the default) needs dead_letter.topic: set a topic, or choose \
                     stop or pass_through",
                );
            }
            let headers_matter = self.records.format == RecordFormat::Raw;
            let wanting_a_topic = [
                (
                    "partition_key.on_long_key",
                    pk.on_long_key == LongKeyPolicy::DeadLetter,
                ),
                (
                    "partition_key.on_binary_key",
                    pk.on_binary_key == BinaryKeyPolicy::DeadLetter,
                ),
                (
                    "records.on_tombstone",
                    self.records.on_tombstone == TombstonePolicy::DeadLetter,
                ),
                (
                    "records.on_headers",
                    headers_matter && self.records.on_headers == HeadersPolicy::DeadLetter,
                ),
            ];
            if let Some((name, _)) = wanting_a_topic.iter().find(|(_, wants)| *wants) {
                return bad(
                    &key(name),
                    "dead_letter needs dead_letter.topic: set a topic or choose another policy",
                );
            }
        }
        Ok(())
    }
}
