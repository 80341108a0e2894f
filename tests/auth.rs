//! doka against authenticated brokers, as on Amazon MSK: TLS with hostname verification, mutual
//! TLS, SASL/SCRAM and MSK IAM (SASL/OAUTHBEARER), and the pod's IRSA identity chain.
//!
//! The brokers are librdkafka mock clusters behind the stack's real TLS terminator (stunnel) and
//! SASL proxy (`examples/auth_broker.rs`), started by `scripts/stack.sh up`: every TLS handshake,
//! SCRAM exchange and OAUTHBEARER token here is the real protocol. Each mode moves records end to
//! end, counted by id, and each wrong credential is refused with an error naming `kafka.auth`:
//! within seconds although the connect timeout is 30 s, that error first, and no error or warning
//! (librdkafka's own lines among them) said twice.

mod support;

use std::time::{Duration, SystemTime};

use support::auth::{AuthWorld, Listener, first_error, refused_at_once};
use support::checked::check;
use support::msk_token::{self, TokenFacts, signature_matches};
use support::prometheus::sample_sum;
use support::*;

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_hostname_verification_moves_every_record() {
    let world = AuthWorld::new(Listener::tls()).await;
    world.deliver(600, &[]).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_that_did_not_sign_the_brokers_is_refused() {
    let world = AuthWorld::new(Listener::tls_trusting_another_ca()).await;
    let log = world.refused(7, &[]).await;
    assert_mentions(
        &first_error(&log),
        &[
            &format!(
                "the Kafka brokers {} refused doka",
                world.listener.bootstrap
            ),
            "TLS handshake failed",
            "certificate verify failed",
            "kafka.auth.tls.ca_file",
            "kafka.auth.mode tls",
        ],
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_for_another_host_name_is_refused() {
    // The same cluster behind a certificate issued by the right CA, but for wrong-name.example:
    // only host name verification can tell.
    let mut listener = Listener::tls();
    listener.bootstrap = stack_var("DOKA_TEST_KAFKA_TLS_WRONG_NAME");
    let world = AuthWorld::new(listener).await;
    let log = refused_at_once(&world.yaml(), 7, &[]);
    assert_mentions(
        &first_error(&log),
        &[
            &format!(
                "the Kafka brokers {} refused doka",
                world.listener.bootstrap
            ),
            "TLS handshake failed",
            "certificate verify failed",
            "kafka.brokers uses the names",
        ],
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_client_certificate_moves_every_record() {
    let world = AuthWorld::new(Listener::mutual_tls(Some(("client.pem", "client-key.pem")))).await;
    world.deliver(400, &[]).await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_a_client_certificate_is_refused() {
    let world = AuthWorld::new(Listener::mutual_tls(None)).await;
    let log = world.refused(7, &[]).await;
    assert_mentions(
        &first_error(&log),
        &[
            "refused doka (kafka.auth.mode tls)",
            "alert certificate required",
            "kafka.auth.tls.cert_file",
        ],
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_its_certificate_is_a_config_error() {
    let world = AuthWorld::new(Listener::mutual_tls(Some(("client.pem", "other-key.pem")))).await;
    let log = world.refused(2, &[]).await;
    assert_mentions(
        &log,
        &[
            "kafka.auth.tls.key_file",
            "other-key.pem",
            "is not the private key of kafka.auth.tls.cert_file",
        ],
    );
    world.finish().await;
}

// ---------------------------------------------------------------------------------------------
// SASL/SCRAM

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_moves_every_record() {
    let world = AuthWorld::new(Listener::scram("SCRAM-SHA-512")).await;
    let password = stack_var("DOKA_TEST_SCRAM_PASSWORD");
    let log = world
        .deliver(500, &[("TEST_KAFKA_PASSWORD", &password)])
        .await;
    assert!(!log.contains(&password), "the password leaked into the log");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_moves_every_record() {
    let world = AuthWorld::new(Listener::scram("SCRAM-SHA-256")).await;
    let password = stack_var("DOKA_TEST_SCRAM_PASSWORD");
    world
        .deliver(200, &[("TEST_KAFKA_PASSWORD", &password)])
        .await;
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_reads_its_password_from_a_mounted_file() {
    // As a Kubernetes Secret mounts it: the password and a trailing newline.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    let password = stack_var("DOKA_TEST_SCRAM_PASSWORD");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let mut listener = Listener::scram("SCRAM-SHA-512");
    listener.auth_yaml = listener.auth_yaml.replace(
        "password_env: TEST_KAFKA_PASSWORD",
        &format!("password_file: {}", file.display()),
    );
    assert!(listener.auth_yaml.contains("password_file"));
    let world = AuthWorld::new(listener).await;
    let log = world.deliver(200, &[]).await;
    assert!(!log.contains(&password), "the password leaked into the log");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_is_refused_naming_kafka_auth() {
    let world = AuthWorld::new(Listener::scram("SCRAM-SHA-512")).await;
    let log = world
        .refused(7, &[("TEST_KAFKA_PASSWORD", "not-the-password")])
        .await;
    assert_mentions(
        &first_error(&log),
        &[
            &format!(
                "the Kafka brokers {} refused doka",
                world.listener.bootstrap
            ),
            "SASL/SCRAM authentication failed",
            "kafka.auth.scram.username",
            "password_file",
        ],
    );
    assert!(!log.contains("not-the-password"), "the password leaked");
    world.finish().await;
}

// ---------------------------------------------------------------------------------------------
// MSK IAM

/// Decodes a token and checks it is a presigned `kafka-cluster:Connect` for `region`, valid
/// 900 s.
fn read_token(token: &str, region: &str) -> TokenFacts {
    let facts =
        msk_token::read_token(token).unwrap_or_else(|e| panic!("not an MSK IAM token: {e}"));
    assert_eq!(facts.region, region);
    assert_eq!(facts.expires_in, Duration::from_secs(900));
    facts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_tokens_are_signed_by_the_source_identity_for_the_cluster_region() {
    // The cluster's region differs from the stream's (us-east-1) on purpose.
    let world = AuthWorld::new(Listener::iam(Some("eu-central-1"))).await;
    let started = SystemTime::now();
    world.deliver(500, &[]).await;
    let tokens = recorded_tokens(&world.client_id);
    assert!(!tokens.is_empty(), "doka's token never reached the broker");
    for (token, accepted) in &tokens {
        assert!(accepted, "the proxy verified and accepted it");
        let facts = read_token(token, "eu-central-1");
        assert_eq!(
            facts.access_key, ACCOUNT_A_KEY,
            "signed by account A's source key, not an assumed-role (ASIA…) key"
        );
        assert!(
            signature_matches(&facts, "source-secret"),
            "the SigV4 signature does not verify with the source secret"
        );
        assert!(
            !facts.params.contains_key("X-Amz-Security-Token"),
            "static source keys carry no session token"
        );
        let age = facts
            .signed_at
            .duration_since(started - Duration::from_secs(5))
            .expect("signed during this test");
        assert!(age < Duration::from_secs(300), "signed {age:?} after start");
    }
    // A token signed with another secret must not verify: the check itself can fail.
    assert!(!signature_matches(
        &read_token(&tokens[0].0, "eu-central-1"),
        "another-secret"
    ));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iam_token_signed_with_the_wrong_secret_is_refused_naming_kafka_auth() {
    // The proxy knows account A's key and its secret, as MSK knows the cluster account's
    // identities: a token signed with another secret fails its signature check.
    let world = AuthWorld::new(Listener::iam(Some(REGION))).await;
    let log = world
        .refused(7, &[("AWS_SECRET_ACCESS_KEY", "not-the-source-secret")])
        .await;
    assert_mentions(
        &first_error(&log),
        &[
            "refused doka (kafka.auth.mode iam)",
            "MSK IAM authentication failed",
            "signature",
            "kafka-cluster:Connect",
            "kafka.auth.iam.region",
        ],
    );
    assert!(!log.contains("not-the-source-secret"), "a secret leaked");
    let tokens = recorded_tokens(&world.client_id);
    assert!(!tokens.is_empty() && tokens.iter().all(|(_, accepted)| !accepted));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_tokens_are_renewed_at_80_percent_of_their_lifetime() {
    let mut listener = Listener::iam(Some("us-east-1"));
    listener.auth_yaml += "      token_lifetime_secs: 10\n";
    let world = AuthWorld::new(listener).await;
    world.produce(&keyed_messages(0..50, 5));
    let mut doka = Doka::start(&world.yaml(), &[]);
    let port = doka.endpoint_port();
    wait_for_all(&world.b, &world.stream, 50, Duration::from_secs(60)).await;
    doka.wait_for_log("MSK IAM token signed", 3, Duration::from_secs(60));
    // The metrics see the tokens: renewals counted, the current token's expiry ahead of now.
    let (_, metrics) = support::prometheus::http_get(port, "/metrics").expect("metrics");
    let sample = |name: &str| sample_sum(&metrics, name, &["kind=\"msk_iam_token\""]);
    assert!(sample("doka_credential_renewals_total") >= 3.0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let expiry = sample("doka_credentials_expiry_timestamp_seconds");
    assert!(
        expiry > now && expiry <= now + 10.0,
        "the token expires within its 10 s lifetime: {expiry} vs now {now}"
    );
    let log = doka.stop();
    let times: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("MSK IAM token signed"))
        .map(log_seconds)
        .collect();
    assert!(times.len() >= 2, "{log}");
    for pair in times.windows(2) {
        let gap = (pair[1] - pair[0]).rem_euclid(86_400.0);
        // librdkafka asks at 80% of the 10 s lifetime (its timer ticks each second): before the
        // token expires, never right after the last one.
        assert!((6.0..10.0).contains(&gap), "renewed after {gap} s:\n{log}");
    }
    world.finish().await;
}

/// Seconds of the day of a text log line's timestamp (`2026-11-27T23:01:02.123456Z ...`).
fn log_seconds(line: &str) -> f64 {
    let time = line.split('T').nth(1).expect("a timestamp");
    let h: f64 = time[0..2].parse().unwrap();
    let m: f64 = time[3..5].parse().unwrap();
    let s: f64 = time[6..].split('Z').next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_without_a_region_it_can_tell_is_a_config_error() {
    let world = AuthWorld::new(Listener::iam(None)).await;
    let doka = Doka::start(&world.yaml(), &[]);
    let (status, log) = doka.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "{log}");
    assert_mentions(&log, &["kafka.auth.iam.region", "AWS_REGION"]);
    world.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The pod's identity chain

const ROLE_A: &str = "arn:aws:iam::123456789012:role/doka-pod";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_irsa_chain_runs_as_in_a_pod_and_signs_msk_tokens_with_role_a() {
    // As EKS sets it up: a projected token file, the role to exchange it for, the region; no keys.
    let world = AuthWorld::new(Listener::iam(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let token = irsa_token(&dir);
    let env = irsa_env(&token, "doka-pod-session");
    let log = world.deliver(300, &env).await;

    // Source: role A through AssumeRoleWithWebIdentity, session AWS_ROLE_SESSION_NAME; target:
    // role B through AssumeRole, with the documented session name doka-<profile>-<suffix> (no
    // profile here: "default").
    let source = log
        .lines()
        .find(|l| l.contains("source identity:"))
        .unwrap_or_else(|| panic!("no source identity in:\n{log}"));
    assert!(
        source.contains("arn:aws:sts::123456789012:assumed-role/doka-pod/doka-pod-session"),
        "{source}"
    );
    let target = log
        .lines()
        .find(|l| l.contains("target identity:"))
        .unwrap_or_else(|| panic!("no target identity in:\n{log}"));
    assert!(
        target.contains("arn:aws:sts::222222222222:assumed-role/doka-writer/doka-default-"),
        "{target}"
    );

    // The MSK token: signed with role A's temporary key, which is neither the static test key
    // nor B's (moto says whose key it is).
    let tokens = recorded_tokens(&world.client_id);
    assert!(!tokens.is_empty(), "doka's token never reached the broker");
    let facts = read_token(&tokens[0].0, REGION);
    assert_ne!(facts.access_key, ACCOUNT_A_KEY, "not the static test key");
    assert!(
        facts.params.contains_key("X-Amz-Security-Token"),
        "temporary credentials carry a session token"
    );
    let owner = owner_of_key(&world.ep, &facts.access_key).await;
    assert!(
        owner.contains(":assumed-role/doka-pod/"),
        "the token's key belongs to {owner}, expected role A"
    );
    world.finish().await;
}

/// A projected IRSA token written into `dir`, as EKS mounts it; returns its path.
fn irsa_token(dir: &tempfile::TempDir) -> String {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.irsa-test-token.sig").unwrap();
    token_file.display().to_string()
}

/// A pod's environment for role A as IRSA sets it: the token file, the role, the region; no keys.
fn irsa_env<'a>(token_path: &'a str, session: &'a str) -> [(&'static str, &'a str); 6] {
    [
        ("AWS_ACCESS_KEY_ID", UNSET),
        ("AWS_SECRET_ACCESS_KEY", UNSET),
        ("AWS_ROLE_ARN", ROLE_A),
        ("AWS_ROLE_SESSION_NAME", session),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path),
        ("AWS_REGION", REGION),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_msk_token_that_cannot_be_signed_is_retried_until_it_can() {
    // Role A's credentials last a minute, so every token needs a fresh AssumeRoleWithWebIdentity;
    // tokens last 10 s, so one is signed every 8 s.
    let sts = proxy::FaultProxy::start(
        &endpoints().sts,
        proxy::Faults {
            web_identity_expires_in: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .await;
    let mut listener = Listener::iam(None);
    listener.auth_yaml += "    iam:\n      token_lifetime_secs: 10\n";
    let world = AuthWorld::new(listener).await;
    let yaml = world.yaml().replace(&world.ep.sts, &sts.url);
    assert!(yaml.contains(&sts.url));
    let dir = tempfile::tempdir().unwrap();
    let token = irsa_token(&dir);
    let env = irsa_env(&token, "doka-pod-retry");

    world.produce(&keyed_messages(0..50, 5));
    let mut doka = Doka::start(&yaml, &env);
    wait_for_all(&world.b, &world.stream, 50, Duration::from_secs(60)).await;
    doka.wait_for_log("MSK IAM token signed", 1, Duration::from_secs(30));

    // STS unreachable: signing fails, is logged with its reason, and is tried again.
    sts.refuse_connections();
    // (wait_for_log fails the test if doka exits meanwhile.)
    doka.wait_for_log("cannot sign an MSK IAM token", 2, Duration::from_secs(60));
    let signed_before = doka.log_text().matches("MSK IAM token signed").count();

    // STS back: the next attempt signs, and records keep moving.
    sts.accept_connections();
    doka.wait_for_log(
        "MSK IAM token signed",
        signed_before + 1,
        Duration::from_secs(60),
    );
    world.produce(&keyed_messages(50..100, 5));
    let records = wait_for_all(&world.b, &world.stream, 100, Duration::from_secs(60)).await;
    assert_every_record(100, &records, Copies::AtLeastOnce);
    let log = doka.stop();
    let failure = log
        .lines()
        .find(|l| l.contains("cannot sign an MSK IAM token"))
        .unwrap();
    assert_mentions(failure, &["retried", "no source AWS credentials"]);
    world.finish().await;
}

// ---------------------------------------------------------------------------------------------
// `doka check` over authenticated listeners

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doka_check_walks_mutual_tls_scram_and_iam_listeners() {
    let password = stack_var("DOKA_TEST_SCRAM_PASSWORD");
    let cases = [
        (
            Listener::mutual_tls(Some(("client.pem", "client-key.pem"))),
            "client certificate accepted (mutual TLS)",
            None,
        ),
        (
            Listener::scram("SCRAM-SHA-256"),
            "",
            Some("SCRAM-SHA-256 as user doka-test"),
        ),
        (Listener::iam(Some(REGION)), "", Some("MSK IAM")),
    ];
    for (listener, tls_detail, auth_detail) in cases {
        let world = AuthWorld::new(listener).await;
        world.produce(&keyed_messages(0..10, 2));
        let checked = check(&world.yaml(), &[], &[("TEST_KAFKA_PASSWORD", &password)]);
        assert_eq!(checked.code, Some(0), "{}", checked.stdout);
        assert_eq!(checked.status_of("kafka.tls"), ["ok"], "{}", checked.stdout);
        assert_mentions(
            &checked.detail("kafka.tls"),
            &["certificate and host name verification", tls_detail],
        );
        match auth_detail {
            Some(how) => {
                assert_eq!(checked.status_of("kafka.auth"), ["ok"]);
                assert_mentions(&checked.detail("kafka.auth"), &["authenticated", how]);
            }
            None => assert!(checked.hops("kafka.auth").is_empty()),
        }
        assert_mentions(
            &checked.detail("kafka.topic"),
            &[&world.topic, "4 partitions"],
        );
        assert_mentions(
            &checked.detail("kafka.group"),
            &["coordinator reachable", "lag 10"],
        );
        assert!(!checked.stdout.contains(&password), "a secret leaked");
        world.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doka_check_names_a_failed_tls_handshake() {
    let world = AuthWorld::new(Listener::tls_trusting_another_ca()).await;
    let checked = check(&world.yaml(), &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "kafka.tls");
    assert_mentions(&detail, &["TLS handshake failed"]);
    assert_mentions(&fix, &["kafka.auth.tls.ca_file"]);
    assert_eq!(
        checked.status_of("aws.assume_role"),
        ["ok"],
        "the AWS side is still walked"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doka_check_names_a_refused_iam_token() {
    let world = AuthWorld::new(Listener::iam(Some(REGION))).await;
    let checked = check(
        &world.yaml(),
        &[],
        &[("AWS_SECRET_ACCESS_KEY", "not-the-source-secret")],
    );
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "kafka.auth");
    assert_mentions(&detail, &["MSK IAM authentication failed"]);
    assert_mentions(&fix, &["kafka-cluster:Connect"]);
    assert!(
        !checked.stdout.contains("not-the-source-secret"),
        "a secret leaked"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doka_check_shows_the_pods_identity_chain() {
    let world = AuthWorld::new(Listener::iam(None)).await;
    world.produce(&keyed_messages(0..5, 1));
    let dir = tempfile::tempdir().unwrap();
    let token = irsa_token(&dir);
    let env = irsa_env(&token, "doka-pod-check");
    let checked = check(&world.yaml(), &[], &env);
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_mentions(
        &checked.detail("aws.source_identity"),
        &[
            "arn:aws:sts::123456789012:assumed-role/doka-pod/doka-pod-check",
            "account 123456789012",
        ],
    );
    assert_mentions(
        &checked.detail("aws.assume_role"),
        &[
            ROLE_B,
            "assumed-role/doka-writer/doka-default-",
            "account 222222222222",
        ],
    );
    assert_eq!(checked.status_of("kafka.auth"), ["ok"]);
    world.finish().await;
}
