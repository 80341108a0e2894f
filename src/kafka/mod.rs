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
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, info, warn};

use crate::aws::msk_iam::MskTokenSigner;
mod repeats;
mod settings;

use repeats::Repeats;

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
    /// Set while [`BrokerAccess::first_contact`] waits: a failure no retry mends ends it and is
    /// reported by its caller, first, with the broker names.
    starting: AtomicBool,
    /// librdkafka's own error and warning lines already logged.
    repeats: Mutex<Repeats>,
    runtime: tokio::runtime::Handle,
    metrics: Option<Arc<Metrics>>,
}

/// How often the same kind of connection failure is explained in the log.
const EXPLAIN_EVERY: Duration = Duration::from_secs(30);

/// How long the first request to the brokers waits for one it can use before the events
/// librdkafka queued meanwhile are served: a refusal no retry mends ends start-up after about
/// this long instead of `kafka.connect_timeout_ms`.
const FIRST_CONTACT_STEP: Duration = Duration::from_millis(500);

/// How librdkafka words its error event for a token doka could not sign (`oauth_token`).
const TOKEN_NOT_ACQUIRED: &str = "Failed to acquire SASL OAUTHBEARER token";

/// What came of the first request to the brokers.
pub enum FirstContact<T> {
    Answered(T),
    /// The brokers refused doka, or no MSK IAM token could be signed.
    Refused(ConnectFailure),
    /// No broker answered in time.
    NoAnswer(KafkaError),
}

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
    /// No retry mends it: the brokers refused the SASL credentials, or a certificate failed
    /// verification (the broker's in doka's eyes, or doka's in the broker's). Start-up ends at
    /// once rather than after `kafka.connect_timeout_ms`.
    pub lasting: bool,
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
            starting: AtomicBool::new(false),
            repeats: Mutex::default(),
            runtime,
            metrics,
        }
    }

    /// The last failure to connect or authenticate librdkafka reported, if any.
    pub fn failure(&self) -> Option<ConnectFailure> {
        self.failure.lock().unwrap().clone()
    }

    /// The first request to the brokers at start-up: `request(wait)` (a metadata request) within
    /// `timeout` (`kafka.connect_timeout_ms`). `poll` is the client's own poll, which serves
    /// librdkafka's events (consumers deliver no messages before they subscribe).
    ///
    /// librdkafka's request waits its whole `wait` for a broker it can use while it retries
    /// handshakes that fail, and only a poll hears why they fail. So the wait goes in steps with
    /// polls between them, and ends as soon as the brokers refused doka in a way no retry mends
    /// ([`ConnectFailure::lasting`]). Once a broker took the request, it gets the time left.
    pub fn first_contact<T>(
        &self,
        timeout: Duration,
        mut request: impl FnMut(Duration) -> KafkaResult<T>,
        mut poll: impl FnMut(Duration),
    ) -> FirstContact<T> {
        self.starting.store(true, AtomicOrdering::SeqCst);
        self.await_first_token(&mut poll);
        let deadline = Instant::now() + timeout;
        let mut step = FIRST_CONTACT_STEP;
        let contact = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match request(left.min(step)) {
                Ok(answer) => break FirstContact::Answered(answer),
                Err(e) if left <= step => {
                    break match self.explain_failure(&mut poll) {
                        Some(failure) => FirstContact::Refused(failure),
                        None => FirstContact::NoAnswer(e),
                    };
                }
                // Timed out waiting for the answer, not for a usable broker (that fails as a
                // transport failure): a broker took the request, the next one waits it out.
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut) => {
                    step = timeout;
                }
                Err(_) => {}
            }
            if let Some(failure) = self.serve_events(Duration::from_millis(100), &mut poll) {
                break FirstContact::Refused(failure);
            }
        };
        self.starting.store(false, AtomicOrdering::SeqCst);
        contact
    }

    /// Serves librdkafka's events for `wait` (a poll returns early at each error event), or
    /// until a failure no retry mends is known.
    fn serve_events(
        &self,
        wait: Duration,
        poll: &mut impl FnMut(Duration),
    ) -> Option<ConnectFailure> {
        let until = Instant::now() + wait;
        loop {
            if let Some(failure) = self.failure().filter(|f| f.lasting) {
                return Some(failure);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            poll(left);
        }
    }

    /// With OAUTHBEARER nothing connects until a poll has served the first token request, so a
    /// metadata request made before that times out as if the brokers were down. Returns at once
    /// for other modes.
    fn await_first_token(&self, poll: &mut impl FnMut(Duration)) {
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
                    // Credentials may come (a token file mounted late): librdkafka asks again.
                    lasting: false,
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
    /// settings to check and kept for start-up; the rest is logged once while it lasts.
    pub fn on_error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let failure = match code {
            // librdkafka's echo of a token doka could not sign: `oauth_token` told and kept that
            // failure, and librdkafka asks again. Not a refusal by the brokers.
            Some(RDKafkaErrorCode::Authentication) if reason.starts_with(TOKEN_NOT_ACQUIRED) => {
                debug!("librdkafka: {error}: {reason}");
                return;
            }
            Some(RDKafkaErrorCode::Authentication) => Some(ConnectFailure {
                step: match self.mode {
                    AuthMode::Scram => "SASL/SCRAM authentication",
                    AuthMode::Iam => "MSK IAM authentication",
                    _ => "authentication",
                },
                reason: reason.to_owned(),
                fix: self.auth_fix(),
                // The brokers checked the credentials: the same ones are refused again.
                lasting: true,
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
                // While the first contact waits, its caller reports a lasting failure at once
                // (with the broker names): that is its explanation.
                let reported_at_start =
                    failure.lasting && self.starting.load(AtomicOrdering::SeqCst);
                let mut explained_at = self.explained_at.lock().unwrap();
                let repeated = self.failure().is_some_and(|last| last.step == failure.step)
                    && explained_at.is_some_and(|t| t.elapsed() < EXPLAIN_EVERY);
                if !repeated {
                    if !reported_at_start {
                        error!("Kafka {failure}");
                    }
                    *explained_at = Some(Instant::now());
                }
                self.note(failure);
            }
            None => {
                let line = format!("{error}: {reason}");
                if !self.first_time(&line) {
                    debug!("librdkafka: {line}");
                } else if code == Some(RDKafkaErrorCode::AllBrokersDown) {
                    warn!("librdkafka: {line}");
                } else {
                    error!("librdkafka: {line}");
                }
            }
        }
    }

    /// librdkafka's own log lines, served by polls like its error events. Errors and warnings
    /// are logged once while they keep coming. A broker's failure ("FAIL" at error level) comes
    /// again word for word as an error event, which [`BrokerAccess::on_error`] explains or logs:
    /// it goes to debug here, so that doka's explanation comes first.
    pub fn on_log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::{Alert, Critical, Debug, Emerg, Error, Info, Notice, Warning};
        let line = format!("{facility} {message}");
        match level {
            Emerg | Alert | Critical | Error if facility != "FAIL" && self.first_time(&line) => {
                error!(target: "librdkafka", "librdkafka: {line}")
            }
            Warning if self.first_time(&line) => warn!(target: "librdkafka", "librdkafka: {line}"),
            Notice | Info => info!(target: "librdkafka", "librdkafka: {line}"),
            Emerg | Alert | Critical | Error | Warning | Debug => {
                debug!(target: "librdkafka", "librdkafka: {line}")
            }
        }
    }

    /// Whether one of librdkafka's lines is said for the first time while the trouble lasts.
    fn first_time(&self, line: &str) -> bool {
        self.repeats
            .lock()
            .unwrap()
            .first_time(line, Instant::now())
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
            // A certificate that failed verification (OpenSSL's "certificate verify failed", a
            // broker's alert "certificate required" or "unknown ca") fails again on a retry;
            // other TLS failures (a reset mid-handshake) may pass.
            lasting: reason.contains("certificate") || reason.contains("unknown ca"),
        }
    }

    /// After a failed request: serves the error events librdkafka queued meanwhile (they
    /// explain the failure) and returns the failure they told, if any.
    fn explain_failure(&self, poll: &mut impl FnMut(Duration)) -> Option<ConnectFailure> {
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

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.on_log(level, facility, message);
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
        // librdkafka's echo of it is no refusal by the brokers: start-up keeps waiting for a
        // token, and tells the signing failure.
        connection.on_error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "Failed to acquire SASL OAUTHBEARER token: cannot sign an MSK IAM token; see doka's log",
        );
        let failure = connection.failure().unwrap();
        assert_eq!(failure.step, TOKEN_SIGNING);
        assert!(!failure.lasting);
    }

    fn access(mode: AuthMode, runtime: &tokio::runtime::Runtime) -> BrokerAccess {
        let auth = KafkaAuth {
            mode,
            ..Default::default()
        };
        BrokerAccess::new(&auth, None, runtime.handle().clone(), None)
    }

    const CA_REFUSED: &str = "ssl://b-1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL \
        routines::certificate verify failed: broker certificate could not be verified, verify that \
        ssl.ca.location is correctly configured (after 2ms in state SSL_HANDSHAKE)";

    #[test]
    fn refusals_no_retry_mends_are_told_apart_from_those_that_may_pass() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cases = [
            (AuthMode::Tls, RDKafkaErrorCode::SSL, CA_REFUSED, true),
            (
                AuthMode::Tls,
                RDKafkaErrorCode::BrokerTransportFailure,
                "ssl://b-1:9094/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 \
                 alert certificate required: SSL alert number 116",
                true,
            ),
            (
                AuthMode::Scram,
                RDKafkaErrorCode::Authentication,
                "sasl_ssl://b-1:9096/bootstrap: SASL authentication error: Authentication \
                 failed: bad proof for user doka",
                true,
            ),
            (
                AuthMode::Tls,
                RDKafkaErrorCode::SSL,
                "ssl://b-1:9094/bootstrap: SSL handshake failed: error:0A00010B:SSL \
                 routines::wrong version number",
                false,
            ),
        ];
        for (mode, code, reason, lasting) in cases {
            let access = access(mode, &runtime);
            access.on_error(KafkaError::Global(code), reason);
            let failure = access.failure().expect("kept for start-up");
            assert_eq!(failure.lasting, lasting, "{reason}");
        }
        let access = access(AuthMode::Tls, &runtime);
        let down =
            "ssl://b-1:9094/bootstrap: Connect to ipv4#10.0.0.1:9094 failed: Connection refused";
        access.on_error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            down,
        );
        assert_eq!(access.failure(), None, "an outage, not a refusal");
    }

    /// librdkafka's metadata request as start-up sees it: no broker usable within `wait`.
    fn no_usable_broker(wait: Duration) -> KafkaResult<()> {
        std::thread::sleep(wait);
        Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::BrokerTransportFailure,
        ))
    }

    #[test]
    fn a_certificate_that_fails_verification_ends_the_first_contact_at_once() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let access = access(AuthMode::Tls, &runtime);
        let started = Instant::now();
        // The refusal comes with the first poll, as librdkafka's error event.
        let contact = access.first_contact(Duration::from_secs(30), no_usable_broker, |_| {
            access.on_error(KafkaError::Global(RDKafkaErrorCode::SSL), CA_REFUSED)
        });
        assert!(matches!(contact, FirstContact::Refused(f) if f.lasting));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(!access.starting.load(AtomicOrdering::SeqCst));
    }

    #[test]
    fn unreachable_brokers_are_waited_for_the_whole_timeout() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let access = access(AuthMode::Tls, &runtime);
        let started = Instant::now();
        let contact = access.first_contact(Duration::from_millis(1500), no_usable_broker, |_| {});
        assert!(matches!(contact, FirstContact::NoAnswer(_)));
        assert!(started.elapsed() >= Duration::from_millis(1500));
    }

    #[test]
    fn a_broker_that_took_the_request_gets_the_time_left() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let access = access(AuthMode::Plaintext, &runtime);
        let waits = Mutex::new(Vec::new());
        let contact = access.first_contact(
            Duration::from_secs(30),
            |wait| {
                waits.lock().unwrap().push(wait);
                match waits.lock().unwrap().len() {
                    1 => Err(KafkaError::MetadataFetch(
                        RDKafkaErrorCode::OperationTimedOut,
                    )),
                    _ => Ok("metadata"),
                }
            },
            |_| {},
        );
        assert!(matches!(contact, FirstContact::Answered("metadata")));
        let waits = waits.into_inner().unwrap();
        assert_eq!(waits[0], FIRST_CONTACT_STEP);
        assert!(waits[1] > Duration::from_secs(29), "{waits:?}");
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
