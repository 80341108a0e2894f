//! doka: a Kafka → Amazon Kinesis connector that commits a Kafka offset only after every record
//! below it is in the stream.
//!
//! - [`config`]: YAML + profiles + environment, validated with errors a user can act on.
//! - [`source`]: the Kafka consumer-group member and its offset commits.
//! - [`pipeline`]: partition keys, lanes, batching, retries, in-flight bound, offset watermarks.
//! - [`sink`]: destinations (Kinesis PutRecords).
//! - [`aws`]: source credentials and AssumeRole into the target account.
//! - [`dead_letter`]: the Kafka topic for records Kinesis would refuse.

pub mod app;
pub mod aws;
pub mod check;
pub mod config;
pub mod dead_letter;
pub mod kafka;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod telemetry;
