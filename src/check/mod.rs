//! `doka check`: walks the chain doka needs, hop by hop, and says for each what works or what
//! failed and what to change.
//!
//! Two chains, independent of each other: Kafka (brokers reachable → TLS → authentication →
//! topics → group coordinator and lag: `kafka`) and, per route, AWS (source identity →
//! AssumeRole: `aws`) then the destination's own hops (stream → optional test write, in the
//! destination's folder under `sink/`). A failure ends its own chain — later hops of it depend on it — but not the other,
//! so one run shows a broken IAM chain and a broken broker address alike.

mod aws;
mod kafka;

use serde::Serialize;

use crate::config::Config;
use crate::sink::CheckWalk;

pub use crate::sink::HopStatus as Status;

#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// A stable name, e.g. `kafka.auth` or `aws.assume_role`.
    pub hop: String,
    pub status: Status,
    pub detail: String,
    /// What to change, for a failure or a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub hops: Vec<Hop>,
}

/// Options of `doka check`.
pub struct CheckOptions {
    pub profile: Option<String>,
    /// Write one clearly marked record to the stream.
    pub write_test: bool,
    /// Called with each hop as soon as it is known (printing as the walk goes).
    pub on_hop: Box<dyn Fn(&Hop) + Send + Sync>,
}

struct Walk<'a> {
    options: &'a CheckOptions,
    report: Report,
}

impl Walk<'_> {
    fn push(&mut self, hop: &str, status: Status, detail: String, fix: Option<String>) -> bool {
        let hop = Hop {
            hop: hop.to_owned(),
            status,
            detail,
            fix,
        };
        (self.options.on_hop)(&hop);
        self.report.hops.push(hop);
        status != Status::Fail
    }
    fn ok(&mut self, hop: &str, detail: String) -> bool {
        self.push(hop, Status::Ok, detail, None)
    }
    fn warn(&mut self, hop: &str, detail: String, fix: impl Into<String>) -> bool {
        self.push(hop, Status::Warn, detail, Some(fix.into()))
    }
    fn fail(&mut self, hop: &str, detail: String, fix: impl Into<String>) -> bool {
        self.push(hop, Status::Fail, detail, Some(fix.into()))
    }
}

impl CheckWalk for Walk<'_> {
    fn hop(&mut self, hop: &str, status: Status, detail: String, fix: Option<String>) -> bool {
        self.push(hop, status, detail, fix)
    }
    fn write_test(&self) -> bool {
        self.options.write_test
    }
}

/// Runs every hop; `report.ok` is false when any failed.
pub async fn run(config: &Config, options: &CheckOptions) -> Report {
    let mut walk = Walk {
        options,
        report: Report::default(),
    };
    walk.ok(
        "config",
        format!(
            "config valid (profile {})",
            options.profile.as_deref().unwrap_or("none")
        ),
    );
    let base = crate::aws::base_config(&config.aws).await;
    kafka::chain(&mut walk, config, &base).await;
    for route in &config.routes {
        if config.routes.len() > 1 {
            walk.ok(
                "route",
                format!("route `{}` → {}", route.name, route.destination.name()),
            );
        }
        aws::chain(&mut walk, route, &base).await;
        registries(&mut walk, route, &base, options.profile.as_deref()).await;
    }
    walk.report.ok = walk.report.hops.iter().all(|h| h.status != Status::Fail);
    walk.report
}

/// Each schema registry a route decodes with: reachable, and taking doka's credentials.
async fn registries(
    walk: &mut Walk<'_>,
    route: &crate::config::Route,
    base: &aws_types::SdkConfig,
    profile: Option<&str>,
) {
    use crate::schema::Side;
    use crate::schema::registry::Registry;
    for (side, config) in [
        (Side::Value, &route.decode.value),
        (Side::Key, &route.decode.key),
    ] {
        let Some(config) = config else { continue };
        let hop = format!("schema.{}", side.name());
        let session = crate::aws::default_session_name(profile);
        let registry = match Registry::connect(config, side, &route.aws, base, session).await {
            Ok(registry) => registry,
            Err(e) => {
                walk.fail(
                    &hop,
                    format!("cannot set up the schema registry client: {e:#}"),
                    format!("Check decode.{} of route `{}`", side.name(), route.name),
                );
                continue;
            }
        };
        match registry.probe().await {
            Ok(detail) => walk.ok(&hop, detail),
            Err((detail, fix)) => walk.fail(&hop, detail, fix.replace("<side>", side.name())),
        };
    }
}

/// Text output: one line per hop.
pub fn format_hop(hop: &Hop) -> String {
    let mark = match hop.status {
        Status::Ok => "✓",
        Status::Warn => "!",
        Status::Fail => "✗",
    };
    match &hop.fix {
        Some(fix) => format!("{mark} {:<20} {}\n  → {fix}", hop.hop, hop.detail),
        None => format!("{mark} {:<20} {}", hop.hop, hop.detail),
    }
}
