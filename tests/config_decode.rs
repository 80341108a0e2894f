//! The `decode:` section as a user meets it: the real binary and real files. A broken section
//! stops with exit code 2 naming the key and what to write instead; a valid one prints with its
//! secrets redacted, inherited by routes key by key.

mod support;

use support::doka_command;

const BASE: &str = r#"
kafka:
  brokers: "b-1.msk.example:9092"
  group_id: doka
  topics: [orders]
aws:
  region: eu-west-1
kinesis:
  stream: orders-stream
dead_letter:
  topic: doka-dead-letters
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(yaml: &str, env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doka.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = doka_command(&["config", "--config", file.to_str().unwrap()], env)
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The config is refused (exit 2) with every one of `parts` in the message.
fn refused(yaml: &str, parts: &[&str]) {
    let run = run(yaml, &[]);
    assert_eq!(
        run.code,
        Some(2),
        "expected a config error:\n{}{}",
        run.stdout,
        run.stderr
    );
    for part in parts {
        assert!(
            run.stderr.contains(part),
            "the error should mention {part:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn a_decode_section_prints_with_its_secrets_redacted() {
    let yaml = format!(
        "{BASE}decode:\n  value:\n    confluent:\n      url: https://registry.example:8081\n      basic_auth:\n        username: doka\n        password: registry-hunter2\n  key:\n    glue:\n      region: eu-west-1\n      role_arn: arn:aws:iam::111111111111:role/glue-reader\n      external_id: glue-external-secret\n    on_undecodable: pass_through\n"
    );
    let run = run(&yaml, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for secret in ["registry-hunter2", "glue-external-secret"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{}",
            run.stdout
        );
    }
    for shown in [
        "url: https://registry.example:8081",
        "password: <redacted>",
        "external_id: <redacted>",
        "on_undecodable: dead_letter",
        "on_undecodable: pass_through",
        "max_cached_schemas: 1000",
    ] {
        assert!(
            run.stdout.contains(shown),
            "{shown:?} missing:\n{}",
            run.stdout
        );
    }
}

#[test]
fn a_route_inherits_decode_key_by_key_and_may_name_another_registry() {
    let yaml = r#"
kafka:
  brokers: "b-1.msk.example:9092"
  group_id: doka
aws:
  region: eu-west-1
dead_letter:
  topic: doka-dead-letters
decode:
  value:
    confluent:
      url: https://registry.example:8081
    max_cached_schemas: 50
routes:
  - topics: [orders]
    kinesis: { stream: orders }
    decode:
      value:
        on_undecodable: stop
  - topics: [payments]
    kinesis: { stream: payments }
    decode:
      value:
        glue: { region: eu-west-1 }
"#;
    let run = run(yaml, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // The first route keeps the shared registry with its own policy; the second names Glue and
    // does not inherit the Confluent section.
    let routes = run.stdout.split("routes:").nth(1).expect("routes printed");
    let (orders, payments) = routes.split_once("payments").expect("two routes");
    assert!(
        orders.contains("url: https://registry.example:8081")
            && orders.contains("on_undecodable: stop"),
        "{orders}"
    );
    assert!(orders.contains("max_cached_schemas: 50"), "{orders}");
    assert!(
        payments.contains("glue:") && !payments.contains("registry.example"),
        "{payments}"
    );
}

#[test]
fn broken_decode_sections_are_named_with_the_fix() {
    let with = |section: &str| format!("{BASE}decode:\n{section}");
    refused(
        &with("  value:\n    on_undecodable: stop\n"),
        &[
            "decode.value.confluent",
            "confluent section (url) or a glue section",
        ],
    );
    refused(
        &with("  value:\n    confluent: { url: http://a:8081 }\n    glue: { region: eu-west-1 }\n"),
        &["decode.value.glue", "keep confluent or glue"],
    );
    refused(
        &with("  key:\n    confluent: {}\n"),
        &[
            "decode.key.confluent.url",
            "https://schema-registry.example:8081",
        ],
    );
    refused(
        &with("  value:\n    confluent: { url: 'ftp://registry' }\n"),
        &[
            "decode.value.confluent.url",
            "not an http:// or https:// URL",
        ],
    );
    // The password is not repeated in the error (a URL is logged; a secret must not be).
    let url_with_secret =
        with("  value:\n    confluent: { url: 'https://doka:url-hunter2@a:8081' }\n");
    refused(
        &url_with_secret,
        &["decode.value.confluent.url", "basic_auth"],
    );
    let out = run(&url_with_secret, &[]);
    assert!(!format!("{}{}", out.stdout, out.stderr).contains("url-hunter2"));
    refused(
        &with("  value:\n    glue: {}\n    unknown_schema_retry_ms: 7200000\n"),
        &["decode.value.unknown_schema_retry_ms", "3600000"],
    );
    refused(
        &with(
            "  value:\n    confluent:\n      url: http://a:8081\n      basic_auth: { username: doka }\n",
        ),
        &[
            "decode.value.confluent.basic_auth.password",
            "password_file",
            "password_env",
        ],
    );
    refused(
        &with(
            "  value:\n    confluent:\n      url: http://a:8081\n      bearer_auth: { token_env: DOKA_TEST_NO_SUCH_TOKEN }\n",
        ),
        &[
            "decode.value.confluent.bearer_auth.token_env",
            "DOKA_TEST_NO_SUCH_TOKEN",
        ],
    );
    refused(
        &with(
            "  value:\n    confluent:\n      url: http://a:8081\n      ca_file: /nonexistent/ca.pem\n",
        ),
        &[
            "decode.value.confluent.ca_file",
            "/nonexistent/ca.pem",
            "PEM",
        ],
    );
    refused(
        &with("  value:\n    glue: { role_arn: not-an-arn }\n"),
        &["decode.value.glue.role_arn", "not a role ARN"],
    );
    refused(
        &with("  value:\n    glue: {}\n    on_undecodable: drop\n"),
        &["on_undecodable", "drop"],
    );
    // The default policy needs the dead-letter topic.
    let without_topic = BASE.replace("dead_letter:\n  topic: doka-dead-letters\n", "");
    refused(
        &format!("{without_topic}decode:\n  value:\n    glue: {{}}\n"),
        &[
            "decode.value.on_undecodable",
            "dead_letter.topic",
            "pass_through",
        ],
    );
}
