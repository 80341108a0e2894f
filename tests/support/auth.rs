//! The stack's authenticated Kafka listeners (TLS, mutual TLS, SASL/SCRAM, MSK IAM: mock clusters
//! behind stunnel and the SASL proxy, started by `scripts/stack.sh up`), and a world on one of
//! them: its topic, group and client id, and a stream in account B.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

/// A file of the stack's test PKI (CAs, certificates, keys).
pub fn tls_file(name: &str) -> String {
    PathBuf::from(stack_var("DOKA_TEST_TLS_DIR"))
        .join(name)
        .display()
        .to_string()
}

/// One authenticated listener: where it is, how the test's own clients reach it, and the
/// `kafka.auth` section doka gets.
pub struct Listener {
    pub bootstrap: String,
    pub client: Vec<(&'static str, String)>,
    pub auth_yaml: String,
}

impl Listener {
    pub fn tls() -> Self {
        Self {
            bootstrap: stack_var("DOKA_TEST_KAFKA_TLS"),
            client: vec![
                ("security.protocol", "SSL".into()),
                ("ssl.ca.location", tls_file("ca.pem")),
            ],
            auth_yaml: format!(
                "  auth:\n    mode: tls\n    tls:\n      ca_file: {}\n",
                tls_file("ca.pem")
            ),
        }
    }

    /// TLS trusting a CA that did not sign the brokers' certificates.
    pub fn tls_trusting_another_ca() -> Self {
        let mut listener = Self::tls();
        listener.auth_yaml = listener
            .auth_yaml
            .replace(&tls_file("ca.pem"), &tls_file("other-ca.pem"));
        listener
    }

    /// Mutual TLS; doka presents `cert` (certificate file, key file) when given.
    pub fn mutual_tls(cert: Option<(&str, &str)>) -> Self {
        let mut auth_yaml = format!(
            "  auth:\n    mode: tls\n    tls:\n      ca_file: {}\n",
            tls_file("ca.pem")
        );
        if let Some((cert, key)) = cert {
            auth_yaml += &format!(
                "      cert_file: {}\n      key_file: {}\n",
                tls_file(cert),
                tls_file(key)
            );
        }
        Self {
            bootstrap: stack_var("DOKA_TEST_KAFKA_MTLS"),
            client: vec![
                ("security.protocol", "SSL".into()),
                ("ssl.ca.location", tls_file("ca.pem")),
                ("ssl.certificate.location", tls_file("client.pem")),
                ("ssl.key.location", tls_file("client-key.pem")),
            ],
            auth_yaml,
        }
    }

    /// SCRAM; doka reads the password from `TEST_KAFKA_PASSWORD` (`password_env`).
    pub fn scram(mechanism: &str) -> Self {
        let user = stack_var("DOKA_TEST_SCRAM_USER");
        Self {
            bootstrap: stack_var("DOKA_TEST_KAFKA_SCRAM"),
            client: vec![
                ("security.protocol", "SASL_SSL".into()),
                ("ssl.ca.location", tls_file("ca.pem")),
                ("sasl.mechanism", "SCRAM-SHA-512".into()),
                ("sasl.username", user.clone()),
                ("sasl.password", stack_var("DOKA_TEST_SCRAM_PASSWORD")),
            ],
            auth_yaml: format!(
                "  auth:\n    mode: scram\n    tls:\n      ca_file: {}\n    scram:\n      mechanism: {mechanism}\n      username: {user}\n      password_env: TEST_KAFKA_PASSWORD\n",
                tls_file("ca.pem")
            ),
        }
    }

    /// MSK IAM (TLS + SASL/OAUTHBEARER, tokens verified and recorded by the SASL proxy);
    /// `region: None` leaves the region to doka's defaults (AWS_REGION, as in a pod).
    pub fn iam(region: Option<&str>) -> Self {
        let mut auth_yaml = format!(
            "  auth:\n    mode: iam\n    tls:\n      ca_file: {}\n",
            tls_file("ca.pem")
        );
        if let Some(region) = region {
            auth_yaml += &format!("    iam:\n      region: {region}\n");
        }
        Self {
            bootstrap: stack_var("DOKA_TEST_KAFKA_IAM"),
            // The proxy verifies only the tokens of keys it knows; the test's own clients use
            // librdkafka's unsigned one.
            client: vec![
                ("security.protocol", "SASL_SSL".into()),
                ("ssl.ca.location", tls_file("ca.pem")),
                ("sasl.mechanism", "OAUTHBEARER".into()),
                ("enable.sasl.oauthbearer.unsecure.jwt", "true".into()),
                (
                    "sasl.oauthbearer.config",
                    "principal=doka-test-client".into(),
                ),
            ],
            auth_yaml,
        }
    }
}

/// A topic on one listener's cluster and a stream in account B.
pub struct AuthWorld {
    pub ep: Endpoints,
    pub listener: Listener,
    pub topic: String,
    pub group: String,
    pub stream: String,
    /// The `client.id` doka uses, to find its tokens in the proxy's record.
    pub client_id: String,
    pub b: aws_sdk_kinesis::Client,
}

impl AuthWorld {
    pub async fn new(listener: Listener) -> Self {
        let ep = endpoints();
        let b = account_b_kinesis(&ep).await;
        let stream = unique("doka-auth");
        create_stream(&b, &stream, 2).await;
        Self {
            ep,
            listener,
            topic: unique("orders"),
            group: unique("doka-group"),
            stream,
            client_id: unique("doka-auth-test"),
            b,
        }
    }

    /// The harness' config with the listener's `kafka.auth` section and doka's client id.
    pub fn yaml(&self) -> String {
        let yaml = DokaSetup {
            bootstrap: &self.listener.bootstrap,
            group: &self.group,
            topic: &self.topic,
            stream: &self.stream,
            sts: &self.ep.sts,
            kinesis: &self.ep.kinesis,
        }
        .yaml()
        .replacen(
            "kafka:\n",
            &format!("kafka:\n{}", self.listener.auth_yaml),
            1,
        )
        .replacen(
            "  properties:\n",
            &format!("  properties:\n    client.id: {}\n", self.client_id),
            1,
        );
        assert!(yaml.contains(&self.client_id) && yaml.contains(&self.listener.auth_yaml));
        yaml
    }

    /// Produces through the listener (the mock cluster creates the topic with 4 partitions).
    pub fn produce(&self, messages: &[(Vec<u8>, Vec<u8>)]) -> Vec<Placement> {
        produce_with(
            &self.listener.bootstrap,
            &self.listener.client,
            &self.topic,
            messages,
        )
    }

    pub fn committed(&self) -> HashMap<i32, i64> {
        committed_with(
            &self.listener.bootstrap,
            &self.listener.client,
            &self.group,
            &self.topic,
            4,
        )
    }

    /// Runs doka until every record is in the stream, stops it, and checks the count and the
    /// commits. Returns doka's log.
    pub async fn deliver(&self, n: usize, env: &[(&str, &str)]) -> String {
        let placements = self.produce(&keyed_messages(0..n, 40));
        let doka = Doka::start(&self.yaml(), env);
        let records = wait_for_all(&self.b, &self.stream, n, Duration::from_secs(120)).await;
        let log = doka.stop();
        assert_delivered(&records, &placements, Copies::AtLeastOnce, self.committed());
        log
    }

    /// Starts doka and expects it to give up at start-up with `code` at once
    /// ([`refused_at_once`]); returns the log.
    pub async fn refused(&self, code: i32, env: &[(&str, &str)]) -> String {
        self.produce(&keyed_messages(0..20, 4));
        let log = refused_at_once(&self.yaml(), code, env);
        assert!(
            read_stream(&self.b, &self.stream).await.is_empty(),
            "nothing may be delivered"
        );
        log
    }

    /// Deletes the stream: kinesis-mock spends CPU on every stream it keeps.
    pub async fn finish(self) {
        delete_stream(&self.b, &self.stream).await;
    }
}

/// How soon doka must give up on brokers that refuse it, with a connect timeout of 30 s that
/// librdkafka would spend retrying the handshake. Loose, for a loaded 2-core machine: doka takes
/// about a second.
pub const REFUSED_WITHIN: Duration = Duration::from_secs(10);

/// Runs doka with the default connect timeout (30 s, said explicitly) and expects exit `code`
/// within [`REFUSED_WITHIN`], measured. For a refusal (code 7), the clear line comes first among
/// the errors, naming the brokers, and no error or warning is said twice. Returns the log.
pub fn refused_at_once(yaml: &str, code: i32, env: &[(&str, &str)]) -> String {
    let mut env = env.to_vec();
    env.push(("DOKA_KAFKA__CONNECT_TIMEOUT_MS", "30000"));
    let started = Instant::now();
    let doka = Doka::start(yaml, &env);
    let (status, log) = doka.wait_exit(Duration::from_secs(60));
    let elapsed = started.elapsed();
    eprintln!("doka exited with {status} after {elapsed:?}");
    assert_eq!(status.code(), Some(code), "{log}");
    assert!(
        elapsed < REFUSED_WITHIN,
        "doka gave up after {elapsed:?}, not at once:\n{log}"
    );
    if code == 7 {
        let said = errors_and_warnings(&log);
        let first = said.iter().find(|(level, _)| level == "ERROR");
        assert!(
            first.is_some_and(|(_, line)| line.contains("refused doka (kafka.auth.mode")),
            "the first error is not doka's explanation:\n{log}"
        );
        let mut seen = std::collections::HashSet::new();
        for (_, line) in &said {
            assert!(seen.insert(line), "said twice: {line}\n{log}");
        }
    }
    log
}

/// The first error line of a log, without its colours and timestamp.
pub fn first_error(log: &str) -> String {
    errors_and_warnings(log)
        .into_iter()
        .find(|(level, _)| level == "ERROR")
        .unwrap_or_else(|| panic!("no error in:\n{log}"))
        .1
}

/// The log's ERROR and WARN lines as (level, text): colours and timestamps dropped, and the tail
/// librdkafka appends to a broker's failure, "(after 2ms in state CONNECT)", which differs from
/// one attempt to the next.
fn errors_and_warnings(log: &str) -> Vec<(String, String)> {
    let colours = regex::Regex::new("\x1b\\[[0-9;]*m").unwrap();
    let timing =
        regex::Regex::new(r" \(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)")
            .unwrap();
    log.lines()
        .filter_map(|line| {
            let plain = colours.replace_all(line, "");
            let (_, rest) = plain.split_once("Z ")?;
            let (level, text) = rest.trim_start().split_once(' ')?;
            let text = timing.replace_all(text, "").into_owned();
            (level == "ERROR" || level == "WARN").then(|| (level.to_owned(), text))
        })
        .collect()
}
