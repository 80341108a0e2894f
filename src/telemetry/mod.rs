//! What doka tells its operators: logs through `tracing` (readable text by default, JSON for log
//! pipelines), the metrics registry, health states, and the HTTP endpoint serving them.

pub mod health;
pub mod http;
pub mod metrics;
pub mod schema_metrics;
pub mod settings;
mod topic_labels;

use tracing_subscriber::EnvFilter;

use settings::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(log: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
