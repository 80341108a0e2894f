//! Reading the configuration: the file, its profile and the environment, layered by figment;
//! problems told with the file or environment variable they come from.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format};

use super::yaml::{self, Yaml};

use super::Config;
use crate::settings::Invalid;

const ENV_PREFIX: &str = "DOKA_";

/// A configuration problem, told the way a user can fix it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub profile: Option<String>,
}

impl Source {
    pub(super) fn describe(&self) -> String {
        match &self.profile {
            Some(p) => format!("{} (profile `{p}`)", self.file.display()),
            None => self.file.display().to_string(),
        }
    }
}

/// Loads, merges and validates the configuration from `file`, its `profile` and the environment.
pub fn load(file: &Path, profile: Option<&str>) -> Result<Config, ConfigError> {
    load_with_env(file, profile, Env::prefixed(ENV_PREFIX))
}

fn load_with_env(file: &Path, profile: Option<&str>, env: Env) -> Result<Config, ConfigError> {
    let source = Source {
        file: file.to_path_buf(),
        profile: profile.map(str::to_owned),
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::new(format!(
            "cannot read config file {}: {e}. Pass an existing file with --config (or DOKA_CONFIG).",
            file.display()
        ))
    })?;
    // Parse once up front so that a YAML syntax error is reported with its line and column.
    let document: yaml::Node = yaml::parse(&text)
        .map_err(|e| ConfigError::new(format!("{} is not valid YAML: {e}", file.display())))?;
    if !matches!(document, yaml::Node::Mapping(_) | yaml::Node::Null) {
        return Err(ConfigError::new(format!(
            "{}: the top level must be a mapping of sections (kafka, aws, kinesis, ...)",
            file.display()
        )));
    }

    let file_layer = Figment::from(Yaml::file_exact(file));
    let mut figment = Figment::new().merge(file_layer.clone());
    if let Some(name) = profile {
        let available = document
            .get("profiles")
            .map(yaml::Node::keys)
            .unwrap_or_default();
        if !available.iter().any(|p| p == name) {
            return Err(ConfigError::new(format!(
                "profile `{name}` is not defined in {}: add it under `profiles:` (defined: {})",
                file.display(),
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                }
            )));
        }
        figment = figment.merge(file_layer.focus(&format!("profiles.{name}")));
    }
    let env = env.split("__").ignore(&["profile", "config"]);
    figment = figment.merge(env);

    let mut config: Config = figment
        .extract()
        .map_err(|e| ConfigError::new(describe_figment_error(e, &source)))?;
    config
        .validate()
        .map_err(|invalid| ConfigError::new(describe_invalid(&figment, &source, &invalid)))?;
    config.resolve_routes(&figment, &source)?;
    Ok(config)
}

pub(super) fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// Where the value of `key` was set, for error messages.
fn origin_of(figment: &Figment, source: &Source, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(meta) if meta.name.contains("environment") => {
            format!("environment variable {}", env_var_for(key))
        }
        _ => source.describe(),
    }
}

pub(super) fn describe_invalid(figment: &Figment, source: &Source, invalid: &Invalid) -> String {
    let Invalid { key, problem } = invalid;
    format!(
        "invalid config in {}: key `{key}`: {problem}",
        origin_of(figment, source, key)
    )
}

fn describe_figment_error(errors: figment::Error, source: &Source) -> String {
    describe_figment_error_at(errors, source, "")
}

/// Like [`describe_figment_error`] for a value found under `prefix` (e.g. `routes[0].`).
pub(super) fn describe_figment_error_at(
    errors: figment::Error,
    source: &Source,
    prefix: &str,
) -> String {
    use figment::error::Kind;
    let mut lines = Vec::new();
    for e in errors {
        let key = format!("{prefix}{}", e.path.join("."));
        let origin = match &e.metadata {
            Some(meta) if meta.name.contains("environment") => {
                format!("environment variable {}", env_var_for(&e.path.join(".")))
            }
            _ => source.describe(),
        };
        let line = match &e.kind {
            Kind::MissingField(field) => {
                let mut path = e.path.clone();
                path.push(field.to_string());
                let key = format!("{prefix}{}", path.join("."));
                format!(
                    "missing config key `{key}`: set it in {} or in the environment variable {}",
                    source.describe(),
                    env_var_for(&key)
                )
            }
            Kind::UnknownField(field, expected) => {
                let mut path = e.path.clone();
                if path.last().map(String::as_str) != Some(field.as_str()) {
                    path.push(field.clone());
                }
                let shown = format!("{prefix}{}", path.join("."));
                format!(
                    "unknown config key `{shown}` in {origin}: expected one of {}",
                    expected
                        .iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            Kind::UnknownVariant(value, expected) => format!(
                "invalid value `{value}` for config key `{key}` in {origin}: expected one of {}",
                expected
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::InvalidType(actual, expected) => format!(
                "wrong type for config key `{key}` in {origin}: found {actual}, expected {expected}",
            ),
            other => format!("invalid config key `{key}` in {origin}: {other}",),
        };
        lines.push(line);
    }
    lines.join("\n")
}
