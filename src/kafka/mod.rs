//! Connecting to the brokers: librdkafka properties from `kafka.auth`, MSK IAM tokens for
//! SASL/OAUTHBEARER, and connection failures told in terms of doka's settings.
//!
//! Every Kafka client doka creates (the consumer, the dead-letter producer, `doka check`) goes
//! through [`client_config`] and carries a [`BrokerAccess`] in its context, so all of them connect
//! the same way.

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{error, info, warn};

use crate::aws::msk_iam::MskTokenSigner;
mod settings;

use crate::telemetry::metrics::{CredentialKind, Metrics};
pub use settings::{
    AuthMode, IamSettings, KafkaAuth, KafkaConfig, ScramMechanism, ScramSettings, StartFrom,
    TlsSettings, is_secret_property,
};

/// How long signing one MSK IAM token may take (it may renew the source credentials first).
/// librdkafka calls back synchronously and retries 10 s after a failure.
const TOKEN_SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// The brokers and the security properties `kafka.auth` stands for, then `kafka.properties`.
/// Errors name the setting (a password file that became unreadable since start-up, say).
pub fn client_config(kafka: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", kafka.brokers.join(","));
    for (name, value) in auth_properties(&kafka.auth)? {
        cc.set(name, value);
    }
    Ok(cc)
}

/// A consumer-group member's properties: doka commits offsets itself, fetches cooperatively
/// and bounds librdkafka's prefetch; `kafka.properties` last.
pub fn consumer_config(kafka: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    let mut cc = client_config(kafka)?;
    cc.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match kafka.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Bound librdkafka's own prefetch buffer; doka's budget bounds the rest.
        .set("queued.max.messages.kbytes", "2048")
        // With the prefetch buffer full, librdkafka looks again after this long (default 1 s:
        // a second without records each time doka drained the buffer faster than it refilled).
        .set("fetch.queue.backoff.ms", "10")
        .set("client.id", "doka");
    for (k, v) in &kafka.properties {
        cc.set(k, v);
    }
    Ok(cc)
}

/// The librdkafka properties of one auth mode (values may be secrets: never log them).
fn auth_properties(auth: &KafkaAuth) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut props = Vec::new();
    let protocol = match auth.mode {
        AuthMode::Plaintext => return Ok(props),
        AuthMode::Tls => "SSL",
        AuthMode::Scram | AuthMode::Iam => "SASL_SSL",
    };
    props.push(("security.protocol", protocol.to_owned()));
    if let Some(tls) = &auth.tls {
        for (name, path) in [
            ("ssl.ca.location", &tls.ca_file),
            ("ssl.certificate.location", &tls.cert_file),
            ("ssl.key.location", &tls.key_file),
        ] {
            if let Some(path) = path {
                props.push((name, path.display().to_string()));
            }
        }
    }
    match auth.mode {
        AuthMode::Scram => {
            let scram = auth.scram.clone().unwrap_or_default();
            let password = scram
                .password()
                .map_err(|e| anyhow::anyhow!("kafka.auth.scram: the password: {e}"))?;
            props.push(("sasl.mechanism", scram.mechanism.name().to_owned()));
            props.push(("sasl.username", scram.username.unwrap_or_default()));
            props.push(("sasl.password", password));
        }
        AuthMode::Iam => props.push(("sasl.mechanism", "OAUTHBEARER".to_owned())),
        AuthMode::Plaintext | AuthMode::Tls => {}
    }
    Ok(props)
}

/// For mode `iam`: the signer of MSK tokens, with the source identity (never an assumed role)
/// and the cluster's region. Err: the region cannot be told (a config problem).
pub async fn msk_token_signer(
    kafka: &KafkaConfig,
    base: &aws_types::SdkConfig,
) -> Result<Option<MskTokenSigner>, String> {
    if kafka.auth.mode != AuthMode::Iam {
        return Ok(None);
    }
    let region = match kafka.auth.iam_region(&kafka.brokers) {
        Some(region) => region,
        None => crate::aws::environment_region().await.ok_or_else(|| {
            "invalid config: key `kafka.auth.iam.region`: the MSK cluster's region cannot be told: \
             the broker names are not MSK names (…kafka.<region>.amazonaws.com) and AWS_REGION is not \
             set. Set kafka.auth.iam.region, e.g. eu-west-1"
                .to_owned()
        })?,
    };
    let source = base
        .credentials_provider()
        .ok_or("no AWS credential chain to sign MSK IAM tokens with")?;
    Ok(Some(MskTokenSigner::new(source, region)))
}

/// The [`ConnectFailure::step`] of a token doka could not sign (not a refusal by the brokers).
pub const TOKEN_SIGNING: &str = "MSK IAM token signing";

/// How a doka Kafka client gets into the brokers, shared by every client context: the MSK IAM
/// token source, and the last failure to connect or authenticate librdkafka reported (kept to
/// explain a failed start). Not a connection: librdkafka owns those.
pub struct BrokerAccess {
    mode: AuthMode,
    iam: Option<IamTokens>,
    failure: Mutex<Option<ConnectFailure>>,
    /// When a failure was last explained in the log: librdkafka reconnects (and fails) again
    /// and again, its own lines already say so each time.
    explained_at: Mutex<Option<Instant>>,
    runtime: tokio::runtime::Handle,
    metrics: Option<Arc<Metrics>>,
}

/// How often the same kind of connection failure is explained in the log.
const EXPLAIN_EVERY: Duration = Duration::from_secs(30);

/// Signs MSK IAM tokens on behalf of librdkafka's synchronous refresh callback.
struct IamTokens {
    signer: MskTokenSigner,
    /// What librdkafka is told the lifetime is; it asks again at 80% of it.
    lifetime: Duration,
    /// Set once a token was handed over (or refused), so start-up knows the callback ran.
    served: AtomicBool,
}

/// Why the brokers could not be used, in doka's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailure {
    /// What failed: "TLS handshake", "SASL/SCRAM authentication", "MSK IAM token signing", ...
    pub step: &'static str,
    /// librdkafka's or the signer's own words.
    pub reason: String,
    /// Which settings to check.
    pub fix: String,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}. {}", self.step, self.reason, self.fix)
    }
}

impl BrokerAccess {
    /// `signer` is required for mode `iam` and ignored otherwise.
    pub fn new(
        auth: &KafkaAuth,
        signer: Option<MskTokenSigner>,
        runtime: tokio::runtime::Handle,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let iam = (auth.mode == AuthMode::Iam).then(|| IamTokens {
            signer: signer.expect("mode iam has a token signer"),
            lifetime: Duration::from_secs(
                auth.iam.as_ref().map_or(900, |iam| iam.token_lifetime_secs),
            ),
            served: AtomicBool::new(false),
        });
        Self {
            mode: auth.mode,
            iam,
            failure: Mutex::new(None),
            explained_at: Mutex::new(None),
            runtime,
            metrics,
        }
    }

    /// The last failure to connect or authenticate librdkafka reported, if any.
    pub fn failure(&self) -> Option<ConnectFailure> {
        self.failure.lock().unwrap().clone()
    }

    /// With OAUTHBEARER nothing connects until a poll has served the first token request, so a
    /// metadata request made before that times out as if the brokers were down. `poll` is the
    /// client's own poll (consumers deliver no messages before they subscribe). Returns at once
    /// for other modes.
    pub fn await_first_token(&self, mut poll: impl FnMut(Duration)) {
        let Some(iam) = &self.iam else { return };
        let deadline = Instant::now() + TOKEN_SIGN_TIMEOUT + Duration::from_secs(1);
        while !iam.served.load(AtomicOrdering::SeqCst) && Instant::now() < deadline {
            poll(Duration::from_millis(100));
        }
    }

    /// librdkafka's token request, answered synchronously on the polling thread, bounded in
    /// time. A failure is logged with its reason and librdkafka asks again 10 s later.
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        let Some(iam) = &self.iam else {
            return Err("OAUTHBEARER tokens are only made for kafka.auth.mode iam".into());
        };
        // On a thread of its own: librdkafka may call from a tokio worker (a producer dropped in
        // async code flushes and polls there), where blocking on the runtime would panic.
        let signed = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.runtime.block_on(async {
                        tokio::time::timeout(TOKEN_SIGN_TIMEOUT, iam.signer.sign())
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!(
                                    "signing took longer than {TOKEN_SIGN_TIMEOUT:?} (source credentials not available?)"
                                ))
                            })
                    })
                })
                .join()
                .unwrap_or_else(|_| Err("the signing thread panicked".into()))
        });
        iam.served.store(true, AtomicOrdering::SeqCst);
        let token = match signed {
            Ok(token) => token,
            Err(reason) => {
                error!(
                    region = iam.signer.region(),
                    "cannot sign an MSK IAM token (retried in 10 s): {reason}"
                );
                self.note(ConnectFailure {
                    step: TOKEN_SIGNING,
                    reason,
                    fix: "Check the source identity (the pod's IRSA role: AWS_ROLE_ARN and \
                          AWS_WEB_IDENTITY_TOKEN_FILE; its EKS Pod Identity association; or \
                          another provider of the default chain)"
                        .into(),
                });
                return Err("cannot sign an MSK IAM token; see doka's log".into());
            }
        };
        let expires_at = token
            .expires_at
            .min(SystemTime::now() + iam.lifetime)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if let Some(metrics) = &self.metrics {
            metrics.credentials_renewed(
                CredentialKind::MskIamToken,
                "",
                Some(expires_at.as_secs_f64()),
            );
        }
        info!(
            region = iam.signer.region(),
            lifetime_secs = iam.lifetime.as_secs(),
            "MSK IAM token signed with the source identity (librdkafka renews it at 80% of its lifetime)"
        );
        Ok(OAuthToken {
            token: token.token,
            principal_name: "kafka-cluster".into(),
            lifetime_ms: expires_at.as_millis() as i64,
        })
    }

    /// librdkafka's error events: authentication and TLS failures are explained with the
    /// settings to check and kept for start-up; the rest is logged as before.
    pub fn on_error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let failure = match code {
            Some(RDKafkaErrorCode::Authentication) => Some(ConnectFailure {
                step: match self.mode {
                    AuthMode::Scram => "SASL/SCRAM authentication",
                    AuthMode::Iam => "MSK IAM authentication",
                    _ => "authentication",
                },
                reason: reason.to_owned(),
                fix: self.auth_fix(),
            }),
            // A refused client certificate arrives as a TLS alert on the first read: a transport
            // error in librdkafka's eyes, a TLS failure in the user's.
            Some(RDKafkaErrorCode::SSL) => Some(self.tls_failure(reason)),
            Some(RDKafkaErrorCode::BrokerTransportFailure)
                if reason.contains("SSL routines") || reason.contains("alert") =>
            {
                Some(self.tls_failure(reason))
            }
            _ => None,
        };

        match failure {
            Some(failure) => {
                let mut explained_at = self.explained_at.lock().unwrap();
                let repeated = self.failure().is_some_and(|last| last.step == failure.step)
                    && explained_at.is_some_and(|t| t.elapsed() < EXPLAIN_EVERY);
                if !repeated {
                    error!("Kafka {failure}");
                    *explained_at = Some(Instant::now());
                }
                self.note(failure);
            }
            None if code == Some(RDKafkaErrorCode::AllBrokersDown) => {
                warn!("librdkafka: {error}: {reason}")
            }
            None => error!("librdkafka: {error}: {reason}"),
        }
    }

    fn tls_failure(&self, reason: &str) -> ConnectFailure {
        ConnectFailure {
            step: "TLS handshake",
            reason: reason.to_owned(),
            fix: "Check kafka.auth.tls.ca_file (the CA that signed the brokers' certificates; the \
                  system CAs without it), that kafka.brokers uses the names in those certificates, \
                  and for mutual TLS kafka.auth.tls.cert_file and key_file (a certificate the \
                  cluster's CA signed)"
                .into(),
        }
    }

    /// After a failed request: serves the error events librdkafka queued meanwhile (they
    /// explain the failure) and returns the failure they told, if any.
    pub fn explain_failure(&self, mut poll: impl FnMut(Duration)) -> Option<ConnectFailure> {
        for _ in 0..5 {
            if self.failure().is_some() {
                break;
            }
            poll(Duration::from_millis(100));
        }
        self.failure()
    }

    fn auth_fix(&self) -> String {
        match self.mode {
            AuthMode::Scram => "Check kafka.auth.scram.username, the password \
                (kafka.auth.scram.password_file, password_env or password) and \
                kafka.auth.scram.mechanism (MSK uses SCRAM-SHA-512)"
                .into(),
            AuthMode::Iam => format!(
                "Check that the source identity (role A) may kafka-cluster:Connect on the \
                 cluster, and kafka.auth.iam.region (signing for {})",
                self.iam.as_ref().map_or("?", |i| i.signer.region())
            ),
            _ => "Check kafka.auth.mode: the brokers ask for authentication".into(),
        }
    }

    fn note(&self, failure: ConnectFailure) {
        *self.failure.lock().unwrap() = Some(failure);
    }
}

/// A client context that only connects: for the dead-letter producer and `doka check`.
pub struct BrokerAccessContext(pub BrokerAccess);

impl ClientContext for BrokerAccessContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _config: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
        self.0.oauth_token()
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.on_error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for BrokerAccessContext {}

/// A Kafka client that cannot be created from the config: a property librdkafka refuses, TLS
/// files that do not belong together. A configuration problem (exit code 2), not an outage.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientSetupError(pub String);

/// A client creation error (librdkafka refuses a property, or the TLS files) told with the
/// setting behind it.
pub fn describe_create_error(auth: &KafkaAuth, error: &KafkaError) -> ClientSetupError {
    ClientSetupError(describe_create_error_text(auth, error))
}

fn describe_create_error_text(auth: &KafkaAuth, error: &KafkaError) -> String {
    let text = error.to_string();
    if auth.mode != AuthMode::Plaintext && (text.contains("ssl") || text.contains("SSL")) {
        let tls = auth.tls.clone().unwrap_or_default();
        let show = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or("-".to_owned(), |p| p.display().to_string())
        };
        if text.contains("key") && (text.contains("mismatch") || text.contains("check")) {
            return format!(
                "kafka.auth.tls.key_file ({}) is not the private key of kafka.auth.tls.cert_file ({}): \
                 point key_file at the key the certificate was issued for ({text})",
                show(&tls.key_file),
                show(&tls.cert_file)
            );
        }
        return format!(
            "cannot set up TLS from kafka.auth.tls (ca_file {}, cert_file {}, key_file {}): {text}. \
             Check that the files are PEM and belong together",
            show(&tls.ca_file),
            show(&tls.cert_file),
            show(&tls.key_file)
        );
    }
    format!("{text} (check kafka.properties and kafka.auth)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_config::web_identity_token::{
        StaticConfiguration, WebIdentityTokenCredentialsProvider,
    };
    use aws_credential_types::provider::SharedCredentialsProvider;
    use settings::IamSettings;

    /// The pod's identity chain with its token file gone: the SDK's own provider fails.
    fn broken_source() -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(
            WebIdentityTokenCredentialsProvider::builder()
                .static_configuration(StaticConfiguration {
                    web_identity_token_file: "/nonexistent/doka-test/token".into(),
                    role_arn: "arn:aws:iam::123456789012:role/doka-pod".into(),
                    session_name: "doka-test".into(),
                })
                .build(),
        )
    }

    #[test]
    fn a_token_that_cannot_be_signed_is_an_error_for_librdkafka_to_retry_not_a_crash() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let auth = KafkaAuth {
            mode: AuthMode::Iam,
            iam: Some(IamSettings::default()),
            ..Default::default()
        };
        let signer = MskTokenSigner::new(broken_source(), "eu-west-1".into());
        let connection = BrokerAccess::new(&auth, Some(signer), runtime.handle().clone(), None);

        // From a plain thread, as librdkafka's poll thread calls it.
        assert!(connection.oauth_token().is_err());
        let failure = connection
            .failure()
            .expect("the failure is kept for start-up");
        assert_eq!(failure.step, TOKEN_SIGNING);
        assert!(
            failure.reason.contains("no source AWS credentials"),
            "{}",
            failure.reason
        );
        // From inside the runtime, as a producer dropped in async code polls: no panic.
        let again = runtime.block_on(async { connection.oauth_token().is_err() });
        assert!(again);
    }

    #[test]
    fn a_token_expires_with_the_lifetime_doka_was_told() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let auth = KafkaAuth {
            mode: AuthMode::Iam,
            iam: Some(IamSettings {
                region: None,
                token_lifetime_secs: 60,
            }),
            ..Default::default()
        };
        let keys = aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "t");
        let signer = MskTokenSigner::new(SharedCredentialsProvider::new(keys), "eu-west-1".into());
        let connection = BrokerAccess::new(&auth, Some(signer), runtime.handle().clone(), None);
        let before = SystemTime::now();
        let token = connection.oauth_token().expect("signed");
        let lifetime = Duration::from_millis(token.lifetime_ms as u64)
            .saturating_sub(before.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        assert!(
            (Duration::from_secs(59)..=Duration::from_secs(61)).contains(&lifetime),
            "{lifetime:?}"
        );
        assert_eq!(token.principal_name, "kafka-cluster");
    }
}
