//! Starting one route: its AWS identity (when its destination needs one), its destination and
//! lanes, and what the intake needs to feed them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Outcome, Wiring};
use crate::aws::{self, RouteIdentity, default_session_name};
use crate::config::{Config, Route};
use crate::pipeline::batch::{BatchLimits, Batcher, PerKey};
use crate::pipeline::decoded::RouteDecoding;
use crate::pipeline::intake::RouteIntake;
use crate::pipeline::lane::{Backoff, Lane};
use crate::pipeline::pace::Pace;
use crate::pipeline::partition_key::{PartitionKeys, Spread};
use crate::pipeline::settings::{ExplicitHashKey, Ordering};
use crate::pipeline::{Halt, Record, Share};
use crate::schema::registry::Registry;
use crate::schema::{Decoder, Side};
use crate::sink::{Opening, Sink, StartLanes};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::DestinationMetrics;

/// What the routes started so far hand to the intake and the shutdown.
#[derive(Default)]
pub(super) struct Started {
    pub intakes: Vec<RouteIntake>,
    pub shares: Vec<Arc<Share>>,
    /// Each route's destination in the commit metadata.
    pub fingerprints: Vec<Arc<str>>,
    pub lanes: Vec<JoinHandle<()>>,
    /// The next lane's id (ids are unique across routes, for the health state).
    next_lane: usize,
}

pub(super) struct RouteContext<'a> {
    pub config: &'a Config,
    pub index: usize,
    pub base: &'a aws_types::SdkConfig,
    pub profile: Option<&'a str>,
    pub wiring: &'a Wiring,
}

/// Starts `route`. `Ok(Err(outcome))`: it cannot start for a reason already logged.
pub(super) async fn start(
    route: &Route,
    context: RouteContext<'_>,
    started: &mut Started,
) -> anyhow::Result<Result<(), Outcome>> {
    let RouteContext {
        config,
        index,
        wiring,
        ..
    } = context;
    let identity = if route.destination.needs_aws() {
        match identity(route, &context).await? {
            Ok(identity) => Some(identity),
            Err(outcome) => return Ok(Err(outcome)),
        }
    } else {
        None
    };
    let target = route.destination.describe(&route.aws, identity.as_ref());
    let (pace, route_metrics) = wiring.paces[index].clone();
    let (max_records, max_bytes) = config.in_flight_share(index);
    let share = Arc::new(Share::new(max_records, max_bytes, wiring.budget.clone()));
    let lanes = lanes(
        route,
        index,
        started.next_lane,
        wiring,
        share.clone(),
        pace,
        route_metrics,
    );
    started.next_lane += route.lanes as usize;
    let opening = Opening {
        identity: identity.as_ref(),
        aws: &route.aws,
        max_entries: route.batch.max_records as usize,
        max_request_bytes: route.max_request_bytes() as usize,
        target: target.clone(),
        health: wiring.health.clone(),
        route: index,
        route_name: &route.name,
        finished: wiring.finished.clone(),
    };
    let decoding = decoding(route, &context).await?;
    let (senders, handles) = route.destination.start(opening, lanes).await?;
    started.lanes.extend(handles);
    info!(route = %route.name, "delivering {} to {target}", describe_topics(route));
    started.intakes.push(RouteIntake {
        name: route.name.as_str().into(),
        keys: PartitionKeys::from_config(&route.partition_key),
        spread: (route.partition_key.explicit_hash_key == ExplicitHashKey::Spread)
            .then(Spread::default),
        format: route.records.format,
        delimiter: route.delimiter(),
        max_record_bytes: route.destination.max_record_bytes() as usize,
        key_counts: route.destination.has_shards(),
        record_limit: route.destination.record_limit(),
        on_tombstone: route.records.on_tombstone,
        on_headers: route.records.on_headers,
        lanes: senders,
        share: share.clone(),
        headers_noted: AtomicBool::new(false),
        decoding,
    });
    started.shares.push(share);
    let destination = route
        .destination
        .commit_identity(&route.aws, identity.as_ref());
    started
        .fingerprints
        .push(crate::pipeline::delivered::fingerprint(&destination).into());
    Ok(Ok(()))
}

/// The route's decoders (`decode:`), each side with its registry client.
async fn decoding(
    route: &Route,
    context: &RouteContext<'_>,
) -> anyhow::Result<Option<RouteDecoding>> {
    if route.decode.is_empty() {
        return Ok(None);
    }
    let metrics = &context.wiring.metrics;
    let name: Arc<str> = route.name.as_str().into();
    let mut decoders = [None, None];
    for (slot, side, config) in [
        (0, Side::Value, &route.decode.value),
        (1, Side::Key, &route.decode.key),
    ] {
        let Some(config) = config else { continue };
        let registry = Registry::connect(
            config,
            side,
            &route.aws,
            context.base,
            default_session_name(context.profile),
        )
        .await?;
        info!(route = %route.name, side = side.name(), "decoding records with the {}", registry.describe());
        decoders[slot] = Some(Decoder::new(
            name.clone(),
            side,
            config,
            registry,
            tokio::runtime::Handle::current(),
            metrics
                .schemas
                .resolve(&route.name, side.name(), config.max_cached_schemas),
        ));
    }
    let [value, key] = decoders;
    let waiting = value
        .as_ref()
        .or(key.as_ref())
        .map(|d| d.metrics.waiting.clone())
        .expect("a side decodes");
    Ok(Some(RouteDecoding {
        value,
        key,
        waiting,
    }))
}

/// The route's identity, its credentials obtained once to report a broken chain now.
async fn identity(
    route: &Route,
    context: &RouteContext<'_>,
) -> anyhow::Result<Result<RouteIdentity, Outcome>> {
    let RouteContext {
        config,
        index,
        base,
        profile,
        wiring,
    } = *context;
    let session_name = route
        .aws
        .session_name
        .clone()
        .unwrap_or_else(|| default_session_name(profile));
    let observer = aws::CredentialObserver {
        metrics: wiring.metrics.clone(),
        health: wiring.health.clone(),
        destination: index,
        route: route.name.clone(),
    };
    let identity = aws::route_identity(base, &route.aws, session_name, Some(observer)).await?;
    let target = route.destination.describe(&route.aws, Some(&identity));
    match aws::resolve(&identity.credentials).await {
        Ok(credentials) => {
            info!(
                route = %route.name,
                session = identity.session_name.as_deref().unwrap_or("-"),
                "credentials for {target} obtained; they {}",
                aws::describe_expiry(&credentials)
            );
            if route.aws.role_arn.is_none() {
                // The chain renews its own; only an assumed role reports each renewal.
                wiring.health.credentials_obtained(index, None);
            }
            log_identities(route, base, credentials).await;
            Ok(Ok(identity))
        }
        Err(e) => {
            let at = if config.routes.len() > 1 {
                format!("routes[{index}].")
            } else {
                String::new()
            };
            error!(
                "cannot obtain credentials for {target}: {e}. Check the source identity \
                 (IRSA: AWS_ROLE_ARN/AWS_WEB_IDENTITY_TOKEN_FILE; EKS Pod Identity: the pod \
                 identity association; or another provider of the default chain), \
                 {at}aws.role_arn, {at}aws.external_id, {at}aws.sts_endpoint and the \
                 role's trust policy"
            );
            Ok(Err(Outcome::NoCredentials))
        }
    }
}

/// Says in the log who doka is on each side (ARNs carry the session names); not fatal.
async fn log_identities(
    route: &Route,
    base: &aws_types::SdkConfig,
    target: aws_credential_types::Credentials,
) {
    let source = match base.credentials_provider() {
        Some(chain) => aws::resolve(&chain).await,
        None => Err("no credential chain".into()),
    };
    match source {
        Ok(creds) => match aws::caller_identity(base, &route.aws, creds).await {
            Ok(id) => info!(account = %id.account, "source identity: {}", id.arn),
            Err(e) => warn!("cannot tell the source identity (GetCallerIdentity): {e}"),
        },
        Err(e) => warn!("cannot tell the source identity: {e}"),
    }
    if route.aws.role_arn.is_some() {
        match aws::caller_identity(base, &route.aws, target).await {
            Ok(id) => {
                info!(route = %route.name, account = %id.account, "target identity: {}", id.arn)
            }
            Err(e) => warn!("cannot tell the target identity (GetCallerIdentity): {e}"),
        }
    }
}

fn describe_topics(route: &Route) -> String {
    let mut parts: Vec<String> = route.topics.iter().map(|t| format!("`{t}`")).collect();
    if let Some(pattern) = &route.topic_pattern {
        parts.push(format!("topics matching `{pattern}`"));
    }
    parts.join(", ")
}

/// The route's lanes, ready to start on its sink.
fn lanes(
    route: &Route,
    index: usize,
    first_lane: usize,
    wiring: &Wiring,
    share: Arc<Share>,
    pace: Arc<Pace>,
    metrics: DestinationMetrics,
) -> RouteLanes {
    let aggregate_max_bytes = route.destination.aggregate_max_bytes();
    RouteLanes {
        route: index,
        first_lane,
        count: route.lanes as usize,
        limits: BatchLimits {
            // Aggregated, batch.max_records counts Kinesis entries (the sink's concern): a batch
            // is bounded by batch.max_bytes of records.
            max_records: match aggregate_max_bytes {
                None => route.batch.max_records as usize,
                Some(_) => usize::MAX,
            },
            max_bytes: route.max_request_bytes() as usize,
            linger: Duration::from_millis(route.batch.linger_ms),
            per_key: match (route.ordering, aggregate_max_bytes) {
                (Ordering::Strict, None) => PerKey::OneRecord,
                (Ordering::Strict, Some(max)) => PerKey::Aggregate(max),
                _ => PerKey::Unlimited,
            },
        },
        backoff: Backoff {
            initial: Duration::from_millis(route.retry.initial_backoff_ms),
            max: Duration::from_millis(route.retry.max_backoff_ms),
            max_attempts: route.retry.max_attempts,
        },
        ordering: route.ordering,
        share,
        pace,
        halt: wiring.halt.clone(),
        metrics,
        health: wiring.health.clone(),
        finished: wiring.finished.clone(),
    }
}

/// What one route's lanes share.
struct RouteLanes {
    route: usize,
    /// The first lane's id.
    first_lane: usize,
    count: usize,
    limits: BatchLimits,
    backoff: Backoff,
    ordering: Ordering,
    share: Arc<Share>,
    pace: Arc<Pace>,
    halt: Arc<Halt>,
    metrics: DestinationMetrics,
    health: Arc<Health>,
    finished: CancellationToken,
}

impl StartLanes for RouteLanes {
    /// The lanes' inboxes, and their tasks.
    type Started = (Vec<UnboundedSender<Vec<Record>>>, Vec<JoinHandle<()>>);

    fn start<S: Sink>(self, sink: Arc<S>) -> Self::Started {
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for id in self.first_lane..self.first_lane + self.count {
            let (tx, rx) = unbounded_channel();
            senders.push(tx);
            let lane = Lane {
                id,
                batcher: Batcher::new(rx, self.limits),
                sink: sink.clone(),
                backoff: self.backoff,
                ordering: self.ordering,
                budget: self.share.clone(),
                route: self.route,
                pace: self.pace.clone(),
                halt: self.halt.clone(),
                metrics: self.metrics.clone(),
                health: self.health.clone(),
            };
            tasks.push(tokio::spawn(lane.run_until(self.finished.clone())));
        }
        (senders, tasks)
    }
}
