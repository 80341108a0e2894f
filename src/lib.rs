//! doka: a Kafka → Amazon Kinesis connector that commits a Kafka offset only after every record
//! below it is at its destination.
//!
//! A record's way: [`source`] (Kafka only) → [`pipeline::intake`] (route, policies, schema
//! decoding, partition key, format, budget, lane) → [`pipeline::lane`] (batches, retries,
//! order) → [`sink`] (one attempt) → acknowledgement → commit.
//!
//! Imports point one way: `telemetry`, `settings` and `json_text` are leaves; `aws` uses only
//! them; `kafka`, `sink` and `schema` use them and `aws` (MSK IAM tokens; each destination's
//! client and identity; the Glue registry's identity); `pipeline` uses `sink`'s entry types and
//! `schema`'s decoders; `source` and `dead_letter` use `kafka` and `pipeline`; `config`
//! assembles every part's settings; only the entry points (`main`, [`app`], [`check`]) read the
//! whole [`config`].
//!
//! - [`app`]: `doka run` as named steps (`exit` codes, `signals`, `routes` starting each route).
//! - [`check`]: `doka check`, hop by hop (`kafka`, `aws`; each destination's hops in its folder).
//! - [`config`]: the file, profiles and environment (`load`, `yaml`), routes resolved (`routes`).
//! - [`settings`]: what every settings section shares: secrets, checks, their errors.
//! - [`kafka`]: broker access (auth, MSK IAM tokens) and its settings.
//! - [`source`]: the consumer-group member (`context` for rebalances and commits, `fetch`,
//!   `pause`, `gauges`, `leave`).
//! - [`pipeline`]: `intake` (with `decoded`, and `waiting` for records held for their schema),
//!   `partition_key`, `json_field`, `envelope`, `lane`, `batch`, `pace`, `offsets`,
//!   `freshness`, and its `settings` (keys, formats, batches, retries, policies).
//! - [`sink`]: the `Sink` trait and the `Destination` enum; one folder per destination:
//!   `kinesis` (settings, client, put_records, aggregate, shards, check), `firehose` (settings,
//!   client, check), `stdout`.
//! - [`schema`]: schema-registry records to JSON: `wire` (Confluent and Glue framing), `cache`,
//!   `registry` and `glue` (fetching schemas), `avro`, `protobuf`, and its `settings` (`decode:`).
//! - [`json_text`]: embedding JSON text compactly (the envelope, JSON Schema payloads).
//! - [`aws`]: source credentials, AssumeRole into each route's account, MSK IAM signing, settings.
//! - [`dead_letter`]: the Kafka topic for records a destination would refuse.
//! - [`panics`]: a panic ends the process at once with its own exit code (nothing more committed).
//! - [`telemetry`]: logs, `metrics`, `health`, the `http` endpoint, `topic_labels`, settings.

pub mod app;
pub mod aws;
pub mod check;
pub mod config;
pub mod dead_letter;
pub mod json_text;
pub mod kafka;
pub mod panics;
pub mod pipeline;
pub mod schema;
pub mod settings;
pub mod sink;
pub mod source;
pub mod telemetry;
