//! The Kafka side's settings (`kafka:`): brokers, group, where to start, librdkafka properties
//! and how to connect and authenticate (`kafka.auth`), with their checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::settings::{Checked, Invalid, Secret, bad, null_as_default, range, string_list};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers: a list, or one comma-separated string.
    #[serde(deserialize_with = "string_list")]
    pub brokers: Vec<String>,
    pub group_id: String,
    /// The one-route shorthand's topics (with `routes`, each route lists its own).
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub topics: Vec<String>,
    /// Where a group without committed offsets starts.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Extra librdkafka properties, e.g. `security.protocol: SSL`. Values whose name suggests a
    /// secret are redacted when the config is printed.
    #[serde(
        default,
        deserialize_with = "flat_properties",
        serialize_with = "crate::settings::single_quoted_values"
    )]
    pub properties: BTreeMap<String, String>,
    /// At start-up, how long doka waits for the brokers to answer before it exits (code 6). Once
    /// running, a broker outage is waited out instead.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How doka connects and authenticates: plaintext, TLS (optionally mutual), SASL/SCRAM or
    /// MSK IAM. Sets the librdkafka properties so nobody has to know their names.
    #[serde(default, deserialize_with = "null_as_default")]
    pub auth: KafkaAuth,
}

/// Connection security towards the brokers. Amazon MSK offers these four (ports 9092, 9094, 9096
/// and 9098); `scram` and `iam` always run over TLS, as on MSK.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaAuth {
    #[serde(default)]
    pub mode: AuthMode,
    /// Trust and (for mode `tls`) client certificate. Optional: the system CAs are used without it.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    #[serde(default)]
    pub scram: Option<ScramSettings>,
    #[serde(default)]
    pub iam: Option<IamSettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No encryption, no authentication (or whatever `kafka.properties` sets).
    #[default]
    Plaintext,
    /// TLS; mutual TLS when `tls.cert_file` and `tls.key_file` are set.
    Tls,
    /// SASL/SCRAM over TLS.
    Scram,
    /// MSK IAM: SASL/OAUTHBEARER over TLS with tokens signed by the source AWS identity.
    Iam,
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Tls => "tls",
            Self::Scram => "scram",
            Self::Iam => "iam",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the CA(s) that signed the brokers' certificates (MSK: public CAs, so usually
    /// not needed; a private CA needs it).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScramSettings {
    #[serde(default)]
    pub mechanism: ScramMechanism,
    #[serde(default)]
    pub username: Option<String>,
    /// The password itself; prefer `password_file` (a mounted Secret) or `password_env`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (one trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScramMechanism {
    /// The only SCRAM mechanism Amazon MSK offers.
    #[default]
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    Sha512,
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    Sha256,
}

impl ScramMechanism {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha512 => "SCRAM-SHA-512",
            Self::Sha256 => "SCRAM-SHA-256",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamSettings {
    /// The MSK cluster's region. Default: taken from MSK broker names
    /// (`b-1.<cluster>.<id>.c2.kafka.<region>.amazonaws.com`), else the AWS SDK's region
    /// (`AWS_REGION`). It may differ from `aws.region`, the stream's.
    #[serde(default)]
    pub region: Option<String>,
    /// Lifetime librdkafka is told the token has (it asks for a new one at 80%). MSK tokens are
    /// valid for 900 s; a shorter value only renews them sooner.
    #[serde(default = "default_iam_token_lifetime_secs")]
    pub token_lifetime_secs: u64,
}

impl Default for IamSettings {
    fn default() -> Self {
        Self {
            region: None,
            token_lifetime_secs: default_iam_token_lifetime_secs(),
        }
    }
}

impl ScramSettings {
    /// The password from whichever source is set. Validation made sure exactly one is, and that
    /// it can be read.
    pub fn password(&self) -> Result<String, String> {
        if let Some(p) = &self.password {
            return Ok(p.expose().to_owned());
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
            return Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned());
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map_err(|_| format!("the environment variable {var} is not set"));
        }
        Err("no password source set".into())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

impl KafkaConfig {
    /// Semantic checks serde cannot express; keys are reported as `kafka.…`.
    pub fn validate(&self) -> Checked {
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return bad("kafka.brokers", "expected at least one broker as host:port");
        }
        for b in &self.brokers {
            if !b.contains(':') {
                return bad(
                    "kafka.brokers",
                    format!("`{b}` has no port: expected host:port"),
                );
            }
        }
        if self.group_id.trim().is_empty() {
            return bad("kafka.group_id", "expected a non-empty consumer group id");
        }
        for reserved in [
            "group.id",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "bootstrap.servers",
        ] {
            if self.properties.contains_key(reserved) {
                return bad(
                    &format!("kafka.properties.{reserved}"),
                    "doka sets this property itself (it decides when offsets are committed); remove it",
                );
            }
        }
        range(
            "kafka.connect_timeout_ms",
            self.connect_timeout_ms,
            100,
            600_000,
        )?;
        self.auth.validate(&self.properties)
    }

    /// `kafka.properties` as printed: values whose name suggests a secret are redacted.
    pub fn redact_properties(&mut self) {
        for (name, value) in self.properties.iter_mut() {
            if is_secret_property(name) {
                *value = "<redacted>".into();
            }
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    30_000
}

fn default_iam_token_lifetime_secs() -> u64 {
    900
}

impl KafkaAuth {
    fn validate(&self, properties: &BTreeMap<String, String>) -> Checked {
        let bad = |key: &str, problem: String| Err(Invalid::new(key, problem));
        let mode = self.mode;
        let unused = |section: &str, wanted: &str| {
            bad(
                &format!("kafka.auth.{section}"),
                format!(
                    "is only used with kafka.auth.mode {wanted}, and the mode is {}: remove it or change the mode",
                    mode.name()
                ),
            )
        };
        if self.tls.is_some() && mode == AuthMode::Plaintext {
            return unused("tls", "tls, scram or iam");
        }
        if self.scram.is_some() && mode != AuthMode::Scram {
            return unused("scram", "scram");
        }
        if self.iam.is_some() && mode != AuthMode::Iam {
            return unused("iam", "iam");
        }
        if mode != AuthMode::Plaintext {
            for name in properties.keys() {
                if is_auth_property(name) {
                    return bad(
                        &format!("kafka.properties.{name}"),
                        format!(
                            "kafka.auth.mode {} sets the connection's security properties itself: remove {name} from kafka.properties",
                            mode.name()
                        ),
                    );
                }
            }
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ] {
                if let Some(path) = path {
                    check_pem_file(&format!("kafka.auth.tls.{key}"), path)?;
                }
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return bad(
                        "kafka.auth.tls.key_file",
                        "mutual TLS needs the client certificate's private key: set key_file next to cert_file".into(),
                    );
                }
                (None, Some(_)) => {
                    return bad(
                        "kafka.auth.tls.cert_file",
                        "mutual TLS needs the client certificate: set cert_file next to key_file"
                            .into(),
                    );
                }
                (Some(_), Some(_)) if mode != AuthMode::Tls => {
                    return bad(
                        "kafka.auth.tls.cert_file",
                        format!(
                            "a client certificate is only used with kafka.auth.mode tls (mutual TLS); with {} it authenticates by SASL: remove cert_file and key_file",
                            mode.name()
                        ),
                    );
                }
                _ => {}
            }
        }
        if mode == AuthMode::Scram {
            let scram = self.scram.clone().unwrap_or_default();
            if scram
                .username
                .as_deref()
                .is_none_or(|u| u.trim().is_empty())
            {
                return bad(
                    "kafka.auth.scram.username",
                    "SCRAM needs a user name: set kafka.auth.scram.username (on MSK: the user of the Secrets Manager secret)".into(),
                );
            }
            let sources = [
                scram.password.is_some(),
                scram.password_file.is_some(),
                scram.password_env.is_some(),
            ];
            match sources.iter().filter(|s| **s).count() {
                0 => {
                    return bad(
                        "kafka.auth.scram.password",
                        "SCRAM needs a password: set one of kafka.auth.scram.password_file (a mounted Secret), password_env (a variable name) or password".into(),
                    );
                }
                1 => {}
                _ => {
                    return bad(
                        "kafka.auth.scram.password",
                        "set only one of password, password_file and password_env".into(),
                    );
                }
            }
            if let Some(path) = &scram.password_file {
                match std::fs::read_to_string(path) {
                    Ok(text) if text.trim().is_empty() => {
                        return bad(
                            "kafka.auth.scram.password_file",
                            format!("`{}` is empty: it must hold the password", path.display()),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return bad(
                            "kafka.auth.scram.password_file",
                            format!(
                                "cannot read `{}`: {e}. Point it at the file holding the password (e.g. a mounted Secret)",
                                path.display()
                            ),
                        );
                    }
                }
            }
            if let Some(var) = &scram.password_env
                && std::env::var(var).map_or(true, |v| v.is_empty())
            {
                return bad(
                    "kafka.auth.scram.password_env",
                    format!(
                        "the environment variable {var} is not set or empty: set it to the password, or name another variable"
                    ),
                );
            }
        }
        if let Some(iam) = &self.iam {
            if let Some(region) = &iam.region
                && !crate::aws::settings::is_region_name(region)
            {
                return bad(
                    "kafka.auth.iam.region",
                    format!("`{region}` is not a region name like eu-west-1"),
                );
            }
            if !(10..=900).contains(&iam.token_lifetime_secs) {
                return bad(
                    "kafka.auth.iam.token_lifetime_secs",
                    format!(
                        "{} is out of range: expected 10 to 900 (MSK tokens are valid for 900 s)",
                        iam.token_lifetime_secs
                    ),
                );
            }
        }
        Ok(())
    }

    /// The MSK region for IAM tokens when it can be told without the AWS SDK: the configured one,
    /// else the one in MSK broker host names.
    pub fn iam_region(&self, brokers: &[String]) -> Option<String> {
        if let Some(region) = self.iam.as_ref().and_then(|i| i.region.clone()) {
            return Some(region);
        }
        brokers.iter().find_map(|b| region_of_msk_broker(b))
    }
}

/// `b-1.cluster.abc123.c2.kafka.eu-west-1.amazonaws.com:9098` → `eu-west-1` (provisioned), and
/// `boot-abc.c2.kafka-serverless.eu-west-1.amazonaws.com:9098` (serverless).
fn region_of_msk_broker(broker: &str) -> Option<String> {
    let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels
        .iter()
        .position(|l| *l == "kafka" || *l == "kafka-serverless")?;
    let region = labels.get(at + 1)?;
    (labels.get(at + 2) == Some(&"amazonaws") && crate::aws::settings::is_region_name(region))
        .then(|| (*region).to_owned())
}

/// A file that must exist, be readable and hold PEM data.
fn check_pem_file(key: &str, path: &Path) -> Checked {
    let text = std::fs::read(path).map_err(|e| {
        Invalid::new(
            key,
            format!(
                "cannot read `{}`: {e}. Point it at the PEM file (in Kubernetes, mounted from a Secret)",
                path.display()
            ),
        )
    })?;
    if !text.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Invalid::new(
            key,
            format!(
                "`{}` is not a PEM file (no -----BEGIN line): convert it with openssl (e.g. `openssl x509 -inform der -in cert.der -out cert.pem`)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// librdkafka properties `kafka.auth` sets; with a mode other than plaintext they may not also be
/// in `kafka.properties`. (`ssl.key.password`, for an encrypted client key, stays there.)
fn is_auth_property(name: &str) -> bool {
    name == "security.protocol"
        || name.starts_with("sasl.")
        || name.starts_with("ssl.ca.")
        || name.starts_with("ssl.certificate.")
        || (name.starts_with("ssl.key.") && name != "ssl.key.password")
        || name == "enable.sasl.oauthbearer.unsecure.jwt"
}

/// librdkafka properties whose values are credentials.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "ssl.key.pem",
        "oauthbearer.config",
        "token",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// librdkafka property names contain dots; the environment layer turns dots into nesting, so
/// nested maps are flattened back into `a.b.c` names. Scalars become strings.
fn flat_properties<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    fn flatten<E: Error>(
        prefix: &str,
        value: serde_json::Value,
        out: &mut BTreeMap<String, String>,
    ) -> Result<(), E> {
        use serde_json::Value;
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let name = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&name, v, out)?;
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_owned(), s);
            }
            Value::Number(n) => {
                out.insert(prefix.to_owned(), n.to_string());
            }
            Value::Bool(b) => {
                out.insert(prefix.to_owned(), b.to_string());
            }
            Value::Null | Value::Array(_) => {
                return Err(E::custom(format!(
                    "property `{prefix}` must be a string, number or boolean"
                )));
            }
        }
        Ok(())
    }
    let value = serde_json::Value::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten::<D::Error>("", value, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_msk_region_is_read_from_msk_broker_names_only() {
        let auth = KafkaAuth {
            mode: AuthMode::Iam,
            ..Default::default()
        };
        let msk = |b: &str| auth.iam_region(&[b.to_owned()]);
        assert_eq!(
            msk("b-1.dev-msk.abc123.c2.kafka.eu-west-1.amazonaws.com:9098").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            msk("boot-abc.c2.kafka-serverless.us-east-2.amazonaws.com:9098").as_deref(),
            Some("us-east-2")
        );
        assert_eq!(msk("127.0.0.1:9098"), None);
        assert_eq!(msk("kafka.internal:9098"), None);
        let set = KafkaAuth {
            mode: AuthMode::Iam,
            iam: Some(IamSettings {
                region: Some("ap-south-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            set.iam_region(&["b-1.x.y.c2.kafka.eu-west-1.amazonaws.com:9098".into()])
                .as_deref(),
            Some("ap-south-1"),
            "the setting wins"
        );
    }
}
