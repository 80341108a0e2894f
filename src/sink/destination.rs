//! A route's destination: one arm per destination, and everything the rest of doka asks of one.
//! Adding a destination is a folder under `sink/` and an arm here.

use std::sync::Arc;

use serde::Serialize;

use super::firehose::{self, FirehoseConfig, FirehoseSink};
use super::kinesis::{self, KinesisConfig, KinesisSink};
use super::stdout::{StdoutConfig, StdoutSink};
use super::{CheckWalk, Sink};
use crate::aws::{AwsConfig, RouteIdentity};
use crate::settings::Checked;
use crate::telemetry::health::Health;

/// Where a route writes. Serialised as the section it was written as (`kinesis: {…}`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Kinesis(KinesisConfig),
    Firehose(FirehoseConfig),
    Stdout(StdoutConfig),
}

/// What a destination is started with, besides its own settings.
pub struct Opening<'a> {
    /// The route's AWS identity; `None` for a destination that needs none ([`Destination::needs_aws`]).
    pub identity: Option<&'a RouteIdentity>,
    /// The route's `aws` section (endpoints, the role's account for error messages).
    pub aws: &'a AwsConfig,
    /// Entries per request (`batch.max_records`).
    pub max_entries: usize,
    /// Bytes per request ([`Destination::max_request_bytes`]).
    pub max_request_bytes: usize,
    /// "stream `x` (region r, via role y)": told in every configuration error.
    pub target: String,
    /// Readiness follows the destination's health probe.
    pub health: Arc<Health>,
    /// The route's index (its place in the health state).
    pub route: usize,
    /// The route's name.
    pub route_name: &'a str,
    /// Cancelled once the consumer is done: the health probe ends.
    pub finished: tokio_util::sync::CancellationToken,
}

/// Starts a route's lanes on its sink: the pipeline's side of [`Destination::start`], generic
/// over the sink so that each destination's requests are built without dynamic dispatch.
pub trait StartLanes {
    type Started;
    fn start<S: Sink>(self, sink: Arc<S>) -> Self::Started;
}

impl Destination {
    /// The section it is written in, and what names it in a route: `kinesis`, `firehose`, `stdout`.
    pub fn section(&self) -> &'static str {
        match self {
            Self::Kinesis(_) => "kinesis",
            Self::Firehose(_) => "firehose",
            Self::Stdout(_) => "stdout",
        }
    }

    /// What logs and metrics call it: the stream's or delivery stream's name (also when
    /// `kinesis.stream` is an ARN, which names account B), or `stdout`.
    pub fn name(&self) -> &str {
        match self {
            Self::Kinesis(k) => k.stream_name(),
            Self::Firehose(f) => f.delivery_stream.as_deref().unwrap_or_default(),
            Self::Stdout(_) => "stdout",
        }
    }

    /// Its own settings' checks; keys under `prefix`.
    pub fn validate(&self, prefix: &str) -> Checked {
        match self {
            Self::Kinesis(k) => k.validate(prefix),
            Self::Firehose(f) => f.validate(prefix),
            Self::Stdout(s) => s.validate(prefix),
        }
    }

    /// The largest record it takes (Kinesis counts the partition key too).
    pub fn max_record_bytes(&self) -> u64 {
        match self {
            Self::Kinesis(k) => k.max_record_bytes,
            Self::Firehose(_) => firehose::MAX_RECORD_BYTES as u64,
            Self::Stdout(s) => s.max_record_bytes,
        }
    }

    /// The most entries one request may carry.
    pub fn max_entries(&self) -> u32 {
        match self {
            Self::Kinesis(_) | Self::Stdout(_) => kinesis::MAX_PUT_RECORDS_ENTRIES,
            Self::Firehose(_) => firehose::MAX_BATCH_RECORDS as u32,
        }
    }

    /// For an oversized record: what the limit is (completing "value + partition key), …") and
    /// how to raise it.
    pub fn record_limit(&self) -> (&'static str, &'static str) {
        match self {
            Self::Kinesis(_) => (
                "value + partition key), over the stream's maximum record size",
                "Raise the stream's limit and kinesis.max_record_bytes, or set dead_letter.topic",
            ),
            Self::Firehose(_) => (
                "value), over Firehose's maximum record size",
                "Set dead_letter.topic to keep such records (Firehose's limit is fixed)",
            ),
            Self::Stdout(_) => (
                "value + partition key), over stdout.max_record_bytes",
                "Raise stdout.max_record_bytes, or set dead_letter.topic",
            ),
        }
    }

    /// The largest request: `batch.max_bytes`, within Firehose's 4 MiB for Firehose.
    pub fn max_request_bytes(&self, batch_max_bytes: u64) -> u64 {
        match self {
            Self::Kinesis(_) | Self::Stdout(_) => batch_max_bytes,
            Self::Firehose(_) => batch_max_bytes.min(firehose::MAX_BATCH_BYTES as u64),
        }
    }

    /// The time limit of one request (readiness allows a lane twice that per attempt).
    pub fn request_timeout_ms(&self) -> u64 {
        match self {
            Self::Kinesis(k) => k.request_timeout_ms,
            Self::Firehose(f) => f.request_timeout_ms,
            Self::Stdout(_) => 0,
        }
    }

    /// Whether records end with a newline unless `records.delimiter` says otherwise: Firehose
    /// concatenates records, so its S3 objects are JSON Lines.
    pub fn newline_by_default(&self) -> bool {
        matches!(self, Self::Firehose(_))
    }

    /// Whether records carry a partition key that counts against the record limit, and shards
    /// that an explicit hash key can choose (Kinesis, and stdout, which shows what Kinesis would
    /// be sent). Firehose has neither.
    pub fn has_shards(&self) -> bool {
        !matches!(self, Self::Firehose(_))
    }

    /// KPL aggregation's largest aggregate, when enabled (Kinesis only).
    pub fn aggregate_max_bytes(&self) -> Option<usize> {
        match self {
            Self::Kinesis(k) => k.aggregate_max_bytes(),
            Self::Firehose(_) | Self::Stdout(_) => None,
        }
    }

    /// Whether it is reached with AWS credentials (source identity, AssumeRole).
    pub fn needs_aws(&self) -> bool {
        !matches!(self, Self::Stdout(_))
    }

    /// For logs and errors: "stream `x` (region r, via role y)".
    pub fn describe(&self, aws: &AwsConfig, identity: Option<&RouteIdentity>) -> String {
        let via = match &aws.role_arn {
            Some(role) => format!("via role {role}"),
            None => "with the source credentials".into(),
        };
        let region = identity.map_or("", |i| i.region.as_str());
        match self {
            Self::Kinesis(k) => format!(
                "stream `{}` (region {region}, {via})",
                k.stream.as_deref().unwrap_or_default()
            ),
            Self::Firehose(_) => {
                format!("delivery stream `{}` (region {region}, {via})", self.name())
            }
            Self::Stdout(_) => "standard output".into(),
        }
    }

    /// What the commit metadata's fingerprint names (src/pipeline/delivered.rs): the
    /// destination itself — kind, stream or ARN, region, account. Records delivered to it are
    /// not sent to it again after a crash; a changed destination gets them all.
    pub fn commit_identity(&self, aws: &AwsConfig, identity: Option<&RouteIdentity>) -> String {
        let region = identity.map_or("", |i| i.region.as_str());
        let account = aws
            .role_arn
            .as_deref()
            .and_then(|arn| arn.split(':').nth(4))
            .unwrap_or("source");
        match self {
            Self::Kinesis(k) => format!(
                "kinesis\n{}\n{region}\n{account}",
                k.stream.as_deref().unwrap_or_default()
            ),
            Self::Firehose(_) => format!("firehose\n{}\n{region}\n{account}", self.name()),
            Self::Stdout(_) => "stdout".into(),
        }
    }

    /// The `doka check` hop that stands for the destination itself.
    pub fn check_hop(&self) -> &'static str {
        match self {
            Self::Kinesis(_) => "kinesis.stream",
            Self::Firehose(_) => "firehose.delivery_stream",
            Self::Stdout(_) => "stdout",
        }
    }

    /// Builds its client and sink, starts its health probe, and starts the route's lanes on it.
    pub async fn start<L: StartLanes>(
        &self,
        opening: Opening<'_>,
        lanes: L,
    ) -> anyhow::Result<L::Started> {
        let identity = || {
            opening
                .identity
                .ok_or_else(|| anyhow::anyhow!("{} needs AWS credentials", self.section()))
        };
        Ok(match self {
            Self::Kinesis(k) => {
                let (client, writer) =
                    kinesis::client::connect(identity()?, opening.aws, k).await?;
                let probe = kinesis::client::watch_stream(
                    client.clone(),
                    k.clone(),
                    opening.health.clone(),
                    opening.route,
                );
                tokio::spawn(super::until(opening.finished.clone(), probe));
                let (name, arn) = k.target();
                lanes.start(Arc::new(KinesisSink::new(
                    client,
                    writer,
                    name.map(str::to_owned),
                    arn.map(str::to_owned),
                    opening.target,
                    opening.max_entries,
                    opening.max_request_bytes,
                    k.aggregate_max_bytes(),
                )))
            }
            Self::Firehose(f) => {
                let client = firehose::client::connect(identity()?, opening.aws, f);
                let name = self.name().to_owned();
                let probe = firehose::client::watch_delivery_stream(
                    client.clone(),
                    name.clone(),
                    opening.health.clone(),
                    opening.route,
                );
                tokio::spawn(super::until(opening.finished.clone(), probe));
                lanes.start(Arc::new(FirehoseSink::new(
                    client,
                    name,
                    opening.target,
                    opening.max_entries,
                    opening.max_request_bytes,
                )))
            }
            Self::Stdout(_) => {
                // Nothing to reach and no credentials: ready from the start.
                opening.health.credentials_obtained(opening.route, None);
                opening.health.destination_answered(opening.route);
                lanes.start(Arc::new(StdoutSink::new(opening.route_name.to_owned())))
            }
        })
    }

    /// Its `doka check` hops, after the AWS identity hops (which a destination that needs no AWS
    /// skips: `identity` is `None`).
    pub async fn check(
        &self,
        walk: &mut dyn CheckWalk,
        aws: &AwsConfig,
        identity: Option<&RouteIdentity>,
    ) {
        match (self, identity) {
            (Self::Kinesis(k), Some(identity)) => {
                match kinesis::client::connect(identity, aws, k).await {
                    Ok((client, _)) => {
                        kinesis::check::stream(walk, k, aws, &client, &identity.region).await
                    }
                    Err(e) => {
                        walk.hop_fail(self.check_hop(), format!("{e:#}"), "Set aws.region");
                    }
                }
            }
            (Self::Firehose(f), Some(identity)) => {
                let client = firehose::client::connect(identity, aws, f);
                firehose::check::delivery_stream(walk, f, &client, &identity.region).await;
            }
            (Self::Stdout(_), _) => {
                walk.hop_ok(
                    self.check_hop(),
                    "records are written to standard output as JSON Lines (no AWS)".into(),
                );
            }
            (_, None) => {
                walk.hop_fail(
                    self.check_hop(),
                    "no AWS identity for the destination".into(),
                    "Check the AWS hops above",
                );
            }
        }
    }
}
