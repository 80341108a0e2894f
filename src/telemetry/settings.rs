//! Telemetry's settings: logs (`log:`) and the HTTP endpoint for metrics and probes (`http:`).

use serde::{Deserialize, Serialize};

use crate::settings::{Checked, bad};

/// The HTTP endpoint: `/metrics` (Prometheus), `/healthz` and `/readyz` (Kubernetes probes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_enabled")]
    pub enabled: bool,
    /// host:port to listen on.
    #[serde(default = "default_http_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: default_http_enabled(),
            listen: default_http_listen(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `doka=debug,rdkafka=warn`. `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

impl HttpConfig {
    /// Semantic checks; keys are reported as `http.…`.
    pub fn validate(&self) -> Checked {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!(
                    "`{}` is not an address to listen on: expected ip:port, e.g. 0.0.0.0:9464",
                    self.listen
                ),
            );
        }
        Ok(())
    }
}

impl LogConfig {
    /// Semantic checks; keys are reported as `log.…`.
    pub fn validate(&self) -> Checked {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            return bad(
                "log.level",
                format!(
                    "`{}` is not a log filter ({e}): try info or doka=debug",
                    self.level
                ),
            );
        }
        Ok(())
    }
}

fn default_http_enabled() -> bool {
    true
}

fn default_http_listen() -> String {
    "0.0.0.0:9464".into()
}

fn default_log_level() -> String {
    "info".into()
}
