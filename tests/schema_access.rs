//! Reaching a schema registry as deployments do: HTTPS with a private CA and basic
//! authentication (nginx in front of rivven-schema, in the stack). Refused credentials make
//! records wait — nothing sent, nothing committed — and a rotated secret file heals it without a
//! restart; `doka check` says which hop fails and what to change; no secret reaches a log.

mod support;

use std::time::Duration;

use support::prometheus::{http_get, sample_sum};
use support::schemas::*;
use support::*;

const WAIT: Duration = Duration::from_secs(90);

fn https_registry() -> String {
    std::env::var("DOKA_TEST_REGISTRY_HTTPS").unwrap_or("https://127.0.0.1:4632".into())
}

fn registry_user() -> String {
    std::env::var("DOKA_TEST_REGISTRY_USER").unwrap_or("doka-registry".into())
}

fn registry_password() -> String {
    std::env::var("DOKA_TEST_REGISTRY_PASSWORD").unwrap_or("doka-registry-secret".into())
}

/// The route decodes through the HTTPS door with basic auth, the password read from `file`.
fn yaml_with_password_file(world: &World, file: &std::path::Path) -> String {
    let dead_letter = unique("dlq");
    world.kafka.create_topic(&dead_letter, 1);
    format!(
        "{}records:\n  format: envelope\ndead_letter:\n  topic: {dead_letter}\ndecode:\n  value:\n    confluent:\n      url: {}\n      ca_file: {}/ca.pem\n      basic_auth:\n        username: {}\n        password_file: {}\n",
        world.yaml(None),
        https_registry(),
        stack_var("DOKA_TEST_TLS_DIR"),
        registry_user(),
        file.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_hold_records_until_the_rotated_secret_is_read() {
    let world = World::new(1, 1).await;
    let produced = schema_records(&[
        "--registry",
        "confluent",
        "--url",
        &registry_url(),
        "--format",
        "avro",
        "--topic",
        &world.topic,
        "--count",
        "30",
    ]);
    let placements = produce_schema_records(&world.kafka.bootstrap(), &world.topic, &produced);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("registry-password");
    let wrong = "not-the-registry-password";
    std::fs::write(&password_file, format!("{wrong}\n")).unwrap();

    let mut doka = Doka::start(&yaml_with_password_file(&world, &password_file), &[]);
    let port = doka.endpoint_port();
    doka.wait_for_line(&["refuses doka's credentials", "401", "basic_auth"], WAIT);
    let metrics = eventually("a refused fetch counted", WAIT, || {
        let text = http_get(port, "/metrics")?.1;
        (sample_sum(&text, "doka_schema_fetches_total", &["outcome=\"refused\""]) > 0.0)
            .then_some(text)
    });
    assert!(
        sample_sum(&metrics, "doka_records_waiting_for_schema", &[]) > 0.0,
        "{metrics}"
    );
    assert!(
        read_stream(&world.b, &world.stream).await.is_empty(),
        "nothing is sent while its schema cannot be had"
    );
    assert!(
        world.committed(1).values().all(|o| *o <= 0),
        "nothing is committed: {:?}",
        world.committed(1)
    );

    // The Secret is rotated: the file now holds the right password, and the next retry reads it.
    std::fs::write(&password_file, format!("{}\n", registry_password())).unwrap();
    let records = wait_for_records(&world.b, &world.stream, produced.len(), WAIT).await;
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    let envelopes = envelopes_by_position(&records);
    for (record, at) in produced.iter().zip(&placements) {
        assert_json_eq(
            &envelopes[&(at.partition, at.offset)]["value"],
            &record.expected,
            "value",
        );
    }
    let log = doka.stop();
    for secret in [wrong, &registry_password()] {
        assert!(!log.contains(secret), "a password in the log:\n{log}");
    }
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doka_check_reports_the_registry_hop() {
    let world = World::new(1, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("registry-password");
    std::fs::write(&password_file, registry_password()).unwrap();
    let yaml = yaml_with_password_file(&world, &password_file);

    let out = run_doka("check", &yaml, &[], &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let hop = text
        .lines()
        .find(|l| l.contains("schema.value"))
        .unwrap_or_else(|| panic!("no schema.value hop:\n{text}"));
    assert!(hop.starts_with('✓'), "{text}");
    assert_mentions(hop, &[&https_registry(), "credentials"]);

    std::fs::write(&password_file, "wrong").unwrap();
    let out = run_doka("check", &yaml, &[], &[]);
    assert!(!out.status.success(), "a refused registry fails the check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("schema.value"))
        .unwrap_or_else(|| panic!("{text}"));
    // The hop's line, then its fix.
    let failure = lines[at..(at + 2).min(lines.len())].join("\n");
    assert!(failure.starts_with('✗'), "{text}");
    assert_mentions(&failure, &["401", "decode.value.confluent.basic_auth"]);
    assert!(
        !text.contains(&registry_password()) && !text.contains("wrong\n"),
        "{text}"
    );

    // Without the CA file, the registry's certificate is not trusted: the hop says so.
    let untrusted = yaml.replace(
        &format!("      ca_file: {}/ca.pem\n", stack_var("DOKA_TEST_TLS_DIR")),
        "",
    );
    std::fs::write(&password_file, registry_password()).unwrap();
    let out = run_doka("check", &untrusted, &[], &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert_mentions(&text, &["schema.value", "ca_file"]);
    world.finish().await;
}
