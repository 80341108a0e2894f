//! EKS Pod Identity as the pod's source identity: the SDK's container-credentials provider
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`) asks a local
//! agent speaking the Pod Identity agent's protocol (tests/support/pod_identity.rs) for role A's
//! credentials, which it gets from the STS emulator; doka then assumes role B in the stream's
//! account, and with MSK IAM signs its Kafka tokens as role A. No static keys, no web identity.

mod support;

use std::time::Duration;

use support::auth::{AuthWorld, Listener};
use support::checked::check;
use support::msk_token::{self, TokenFacts};
use support::pod_identity::PodIdentityAgent;
use support::*;

/// Role A's sessions as the agent hands them out, in the log and in `doka check`.
const SESSION: &str = "eks-doka-test-doka-pod";
const ROLE_A_SESSION: &str =
    "arn:aws:sts::123456789012:assumed-role/doka-pod/eks-doka-test-doka-pod";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_alone_delivers_every_record_through_role_b() {
    let world = World::new(4, 2).await;
    let agent = PodIdentityAgent::start(&world.ep.sts, SESSION);
    let messages = keyed_messages(0..400, 40);
    let placements = world.produce(&messages);

    let doka = Doka::start(&world.yaml(None), &agent.pod_env());
    let records = world.wait_for_all(400, Duration::from_secs(120)).await;
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(30))
        .await;
    let log = doka.stop();
    world.assert_delivered(&records, &placements, Copies::AtLeastOnce);

    // Source: role A as the agent handed it out; target: role B, assumed with A's credentials.
    assert_mentions(
        &line_with(&log, "source credentials from"),
        &["EKS Pod Identity", &agent.url],
    );
    assert_mentions(&line_with(&log, "source identity:"), &[ROLE_A_SESSION]);
    assert_mentions(
        &line_with(&log, "target identity:"),
        &["arn:aws:sts::222222222222:assumed-role/doka-writer/doka-default-"],
    );
    // The agent was asked, with the pod's token, and answered with credentials.
    let requests = agent.requests();
    assert!(!requests.is_empty(), "doka never asked the agent");
    for r in &requests {
        assert_eq!(r.path, "/v1/credentials");
        assert_eq!(r.presented.as_deref(), Some(agent.token.as_str()));
        assert_eq!(r.status, 200);
    }
    assert!(
        !log.contains(&agent.token),
        "the pod's token leaked into the log"
    );
    for secret in requests.iter().filter_map(|r| r.issued_secret.as_ref()) {
        assert!(
            !log.contains(secret),
            "role A's secret key leaked into the log"
        );
    }
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_signs_msk_iam_tokens_with_role_a() {
    let world = AuthWorld::new(Listener::iam(None)).await;
    let agent = PodIdentityAgent::start(&world.ep.sts, SESSION);
    world.deliver(300, &agent.pod_env()).await;

    let tokens = recorded_tokens(&world.client_id);
    assert!(!tokens.is_empty(), "doka's token never reached the broker");
    let issued = agent.issued_keys();
    for (token, accepted) in &tokens {
        assert!(accepted, "the broker accepted it");
        let facts = read_token(token);
        assert!(
            issued.contains(&facts.access_key),
            "signed with {}, not a key the agent handed out ({issued:?})",
            facts.access_key
        );
        assert!(
            facts.params.contains_key("X-Amz-Security-Token"),
            "temporary credentials carry a session token"
        );
    }
    // Whose key it is, as STS tells it: role A's session, not the static test key nor role B.
    let facts = read_token(&tokens[0].0);
    assert_ne!(facts.access_key, ACCOUNT_A_KEY, "not the static test key");
    assert_eq!(
        owner_of_key(&world.ep, &facts.access_key).await,
        ROLE_A_SESSION
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_credentials_are_fetched_again_for_each_msk_token_near_their_expiry() {
    // Role A's credentials last 40 s here, MSK tokens 10 s: too close to expiry to reuse, so each
    // token is signed with credentials fetched anew from the agent.
    let mut listener = Listener::iam(None);
    listener.auth_yaml += "    iam:\n      token_lifetime_secs: 10\n";
    let world = AuthWorld::new(listener).await;
    let agent = PodIdentityAgent::start_with_lifetime(
        &world.ep.sts,
        SESSION,
        Some(Duration::from_secs(40)),
    );
    world.produce(&keyed_messages(0..50, 5));
    let mut doka = Doka::start(&world.yaml(), &agent.pod_env());
    wait_for_all(&world.b, &world.stream, 50, Duration::from_secs(60)).await;
    doka.wait_for_log("MSK IAM token signed", 1, Duration::from_secs(30));
    let asked_before = agent.requests().len();
    doka.wait_for_log("MSK IAM token signed", 3, Duration::from_secs(60));
    let asked_after = agent.requests().len();
    world.produce(&keyed_messages(50..100, 5));
    let records = wait_for_all(&world.b, &world.stream, 100, Duration::from_secs(60)).await;
    doka.stop();
    assert_every_record(100, &records, Copies::AtLeastOnce);

    assert!(
        asked_after >= asked_before + 2,
        "two renewals, two requests to the agent: {asked_before} then {asked_after}"
    );
    let issued = agent.issued_keys();
    assert_eq!(
        issued.len(),
        agent.requests().len(),
        "every request answered"
    );
    let distinct: std::collections::HashSet<&String> = issued.iter().collect();
    assert_eq!(distinct.len(), issued.len(), "fresh credentials each time");
    // The broker took a token signed with credentials from the agent.
    let tokens = recorded_tokens(&world.client_id);
    assert!(!tokens.is_empty() && tokens.iter().all(|(_, accepted)| *accepted));
    assert!(issued.contains(&read_token(&tokens[0].0).access_key));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_identity_token_the_agent_refuses_stops_doka_at_start_up() {
    let world = World::new(4, 1).await;
    let agent = PodIdentityAgent::start(&world.ep.sts, SESSION);
    // A token of another pod (or a stale projection): well-formed, not the one the agent takes.
    agent.replace_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.not-this-pods-token");
    world.produce(&keyed_messages(0..20, 4));

    let doka = Doka::start(&world.yaml(None), &agent.pod_env());
    let (status, log) = doka.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{log}");
    // It names the source, the agent and token file asked, what the agent said, and what to
    // check.
    assert_mentions(
        &line_with(&log, "cannot obtain credentials"),
        &[
            "no source credentials from EKS Pod Identity",
            &format!("AWS_CONTAINER_CREDENTIALS_FULL_URI {}", agent.url),
            &format!(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {}",
                agent.token_file.display()
            ),
            "Non-success status from HTTP credential provider: StatusCode(400)",
            "pod identity association",
            "eks-pod-identity-agent",
        ],
    );
    assert!(!log.contains("not-this-pods-token"), "the token leaked");
    // The agent saw the wrong token and refused it; nothing moved.
    let requests = agent.requests();
    assert!(!requests.is_empty(), "doka never asked the agent");
    assert!(
        requests
            .iter()
            .all(|r| r.status == 400 && r.issued_key.is_none())
    );
    assert!(read_stream(&world.b, &world.stream).await.is_empty());
    assert!(world.committed(4).is_empty(), "nothing may be committed");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doka_check_shows_pod_identity_as_the_source() {
    let world = World::new(2, 1).await;
    world.produce(&keyed_messages(0..5, 1));
    let agent = PodIdentityAgent::start(&world.ep.sts, SESSION);
    let checked = check(&world.yaml(None), &[], &agent.pod_env());
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_mentions(
        &checked.detail("aws.source_identity"),
        &[ROLE_A_SESSION, "account 123456789012"],
    );
    assert_mentions(
        &checked.detail("aws.assume_role"),
        &[
            ROLE_B,
            "assumed-role/doka-writer/doka-default-",
            "account 222222222222",
        ],
    );
    assert!(
        !agent.requests().is_empty(),
        "doka check never asked the agent"
    );

    // The same pod with a token the agent refuses: the source identity is the hop that fails.
    agent.replace_token("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.not-this-pods-token");
    let checked = check(&world.yaml(None), &[], &agent.pod_env());
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "aws.source_identity");
    assert_mentions(
        &detail,
        &[
            "no source credentials from EKS Pod Identity",
            "StatusCode(400)",
            "pod identity association",
        ],
    );
    assert!(!fix.is_empty());
    world.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The first log line containing `needle`.
fn line_with(log: &str, needle: &str) -> String {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with `{needle}` in:\n{log}"))
        .to_owned()
}
/// Decodes an MSK IAM token signed for the region the pod's AWS_REGION names.
fn read_token(token: &str) -> TokenFacts {
    let facts =
        msk_token::read_token(token).unwrap_or_else(|e| panic!("not an MSK IAM token: {e}"));
    assert_eq!(facts.region, REGION);
    facts
}
