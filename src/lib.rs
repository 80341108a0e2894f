//! doka: a Kafka → Amazon Kinesis connector that commits a Kafka offset only after every record
//! below it is in the stream.
//!
//! A record's way: [`source`] (Kafka only) → [`pipeline::intake`] (route, policies, partition
//! key, format, budget, lane) → [`pipeline::lane`] (batches, retries, order) → [`sink`] (one
//! attempt) → acknowledgement → commit.
//!
//! - [`config`]: YAML + profiles + environment, resolved into routes, validated with errors a user
//!   can act on.
//! - [`source`]: the Kafka consumer-group member and its offset commits.
//! - [`pipeline`]: intake, partition keys, envelopes, lanes, batching, retries, in-flight bound,
//!   offset watermarks.
//! - [`sink`]: destinations (Kinesis PutRecords, Firehose PutRecordBatch).
//! - [`aws`]: source credentials and AssumeRole into each route's account.
//! - [`dead_letter`]: the Kafka topic for records Kinesis would refuse.

pub mod app;
pub mod aws;
pub mod check;
pub mod config;
pub mod dead_letter;
pub mod kafka;
pub mod pipeline;
pub mod settings;
pub mod sink;
pub mod source;
pub mod telemetry;
