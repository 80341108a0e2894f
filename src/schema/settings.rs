//! A route's `decode:` section: which registry decodes the value (and, separately, the key), how
//! doka reaches it, and what happens to a record that does not decode — with their checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::{Checked, Secret, bad, range};

/// `decode:` of a route. Without it records go out as their bytes are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// The Kafka value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SideConfig>,
    /// The Kafka key (shown decoded in the envelope; the partition key stays the key's bytes,
    /// so records of a key keep their order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SideConfig>,
}

/// How one side (value or key) of a route's records is decoded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideConfig {
    /// A Confluent Schema Registry (or one with its REST API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confluent: Option<ConfluentRegistry>,
    /// The AWS Glue Schema Registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glue: Option<GlueRegistry>,
    /// A record that can never decode: no registry framing, a schema the registry does not
    /// know, bytes that do not match their schema.
    #[serde(default)]
    pub on_undecodable: UndecodablePolicy,
    /// Schemas kept in memory (each id or version once); the least recently used goes first.
    #[serde(default = "default_max_cached_schemas")]
    pub max_cached_schemas: usize,
    /// How long a schema the registry says it does not know is asked for again before its
    /// records count as undecodable: a registry follower may not have a new schema yet.
    #[serde(default = "default_unknown_schema_retry_ms")]
    pub unknown_schema_retry_ms: u64,
}

fn default_unknown_schema_retry_ms() -> u64 {
    30_000
}

pub fn default_max_cached_schemas() -> usize {
    1000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UndecodablePolicy {
    /// Written to `dead_letter.topic` with the reason in its `doka.reason` header (default).
    #[default]
    DeadLetter,
    /// doka stops; nothing from the record on is committed.
    Stop,
    /// Sent as its bytes are (the envelope says `"value_schema":null`).
    PassThrough,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfluentRegistry {
    /// `https://registry.example:8081` (a path prefix is kept).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_auth: Option<BearerAuth>,
    /// A PEM file of the CA that signed the registry's certificate (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

/// HTTP basic authentication; the password from exactly one of three places.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding it (a mounted Secret; read again when the registry refuses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

/// A bearer token (`Authorization: Bearer …`) from exactly one of three places.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding it (read again when the registry refuses it: rotated tokens work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueRegistry {
    /// The registry's region (default: the SDK's lookup, as for the source identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Checked by `doka check` (records name their schema version by id, not by registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_name: Option<String>,
    /// A role to assume for Glue. Default: the source identity (the registry usually lives
    /// beside MSK, in the source account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Secret>,
    /// Endpoint override (a VPC endpoint, a local emulator). `AWS_ENDPOINT_URL_GLUE` works too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Where a secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
    Env(String),
}

impl SecretSource {
    /// Reads it now (a file or variable may change while doka runs).
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            Self::Inline(s) => Ok(s.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|t| Secret::from(t.strip_suffix('\n').unwrap_or(&t).to_owned()))
                .map_err(|e| format!("cannot read `{}`: {e}", path.display())),
            Self::Env(var) => std::env::var(var)
                .map(Secret::from)
                .map_err(|_| format!("the environment variable {var} is not set")),
        }
    }
}

impl BasicAuth {
    pub fn password_source(&self) -> Option<SecretSource> {
        one_source(&self.password, &self.password_file, &self.password_env)
    }
}

impl BearerAuth {
    pub fn token_source(&self) -> Option<SecretSource> {
        one_source(&self.token, &self.token_file, &self.token_env)
    }
}

fn one_source(
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Option<SecretSource> {
    inline
        .clone()
        .map(SecretSource::Inline)
        .or_else(|| file.clone().map(SecretSource::File))
        .or_else(|| env.clone().map(SecretSource::Env))
}

impl DecodeConfig {
    pub fn is_empty(&self) -> bool {
        self.value.is_none() && self.key.is_none()
    }

    /// Semantic checks; keys under `prefix` (a route's `routes[i].`, or nothing).
    pub fn validate(&self, prefix: &str) -> Checked {
        for (side, config) in [("value", &self.value), ("key", &self.key)] {
            if let Some(config) = config {
                config.validate(&format!("{prefix}decode.{side}."))?;
            }
        }
        Ok(())
    }

    /// A side whose undecodable records go to the dead-letter topic: its policy's key.
    pub fn wanting_dead_letters(&self) -> Option<&'static str> {
        [
            ("decode.value.on_undecodable", &self.value),
            ("decode.key.on_undecodable", &self.key),
        ]
        .into_iter()
        .find(|(_, side)| {
            side.as_ref()
                .is_some_and(|s| s.on_undecodable == UndecodablePolicy::DeadLetter)
        })
        .map(|(key, _)| key)
    }
}

impl SideConfig {
    fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        match (&self.confluent, &self.glue) {
            (None, None) => {
                return bad(
                    &key("confluent"),
                    "name the schema registry: a confluent section (url) or a glue section",
                );
            }
            (Some(_), Some(_)) => {
                return bad(
                    &key("glue"),
                    "a side is decoded by one registry: keep confluent or glue",
                );
            }
            (Some(c), None) => c.validate(&key("confluent."))?,
            (None, Some(g)) => g.validate(&key("glue."))?,
        }
        range(
            &key("max_cached_schemas"),
            self.max_cached_schemas,
            1,
            1_000_000,
        )?;
        range(
            &key("unknown_schema_retry_ms"),
            self.unknown_schema_retry_ms,
            0,
            3_600_000,
        )
    }
}

impl ConfluentRegistry {
    fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        match self.url.as_deref().map(str::trim) {
            None | Some("") => {
                return bad(
                    &key("url"),
                    "the registry's URL is needed, e.g. https://schema-registry.example:8081",
                );
            }
            Some(url) => match url.parse::<http::Uri>() {
                Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
                    // Not quoted: the part before `@` is a secret.
                    return bad(
                        &key("url"),
                        "the URL carries credentials (user:password@): they would be logged with \
                         it; move them to basic_auth (username, password_file)",
                    );
                }
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) => {}
                _ => {
                    return bad(
                        &key("url"),
                        format!("`{url}` is not an http:// or https:// URL"),
                    );
                }
            },
        }
        if self.basic_auth.is_some() && self.bearer_auth.is_some() {
            return bad(
                &key("bearer_auth"),
                "set basic_auth or bearer_auth, not both",
            );
        }
        if let Some(basic) = &self.basic_auth {
            if basic.username.as_deref().is_none_or(|u| u.is_empty()) {
                return bad(&key("basic_auth.username"), "basic auth needs a user name");
            }
            check_source(
                &key("basic_auth.password"),
                [
                    basic.password.is_some(),
                    basic.password_file.is_some(),
                    basic.password_env.is_some(),
                ],
                basic.password_source(),
            )?;
        }
        if let Some(bearer) = &self.bearer_auth {
            check_source(
                &key("bearer_auth.token"),
                [
                    bearer.token.is_some(),
                    bearer.token_file.is_some(),
                    bearer.token_env.is_some(),
                ],
                bearer.token_source(),
            )?;
        }
        if let Some(ca) = &self.ca_file
            && let Err(e) = std::fs::read(ca)
        {
            return bad(
                &key("ca_file"),
                format!(
                    "cannot read `{}`: {e}. Point it at the PEM file of the CA that signed the \
                     registry's certificate",
                    ca.display()
                ),
            );
        }
        range(
            &key("request_timeout_ms"),
            self.request_timeout_ms,
            100,
            300_000,
        )
    }
}

/// Exactly one of a secret's three sources, and it can be read now.
fn check_source(key: &str, written: [bool; 3], source: Option<SecretSource>) -> Checked {
    match written.iter().filter(|w| **w).count() {
        0 => {
            return bad(
                key,
                format!("set one of {key}_file (a mounted Secret), {key}_env or {key}"),
            );
        }
        1 => {}
        _ => {
            return bad(
                key,
                format!("set only one of {key}, {key}_file and {key}_env"),
            );
        }
    }
    match source.map(|s| (s.read(), s)) {
        Some((Ok(secret), _)) if secret.expose().is_empty() => bad(key, "it is empty"),
        Some((Err(problem), SecretSource::File(_))) => bad(&format!("{key}_file"), problem),
        Some((Err(problem), _)) => bad(&format!("{key}_env"), problem),
        _ => Ok(()),
    }
}

impl GlueRegistry {
    fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        if let Some(role) = &self.role_arn
            && !(role.starts_with("arn:") && role.contains(":role/"))
        {
            return bad(
                &key("role_arn"),
                format!("`{role}` is not a role ARN (arn:aws:iam::<account>:role/<name>)"),
            );
        }
        if self.external_id.is_some() && self.role_arn.is_none() {
            return bad(
                &key("external_id"),
                "an external id goes with role_arn: set the role to assume, or remove it",
            );
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return bad(
                &key("endpoint"),
                format!("`{endpoint}` is not an http:// or https:// URL"),
            );
        }
        Ok(())
    }
}
