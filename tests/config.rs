//! The config as a user meets it: the real binary, real files, real environment variables.
//! Every broken config must stop with exit code 2 and a message naming the file, the key and the
//! expectation.

mod support;

use std::path::PathBuf;

use support::doka_command;

const VALID: &str = r#"
kafka:
  brokers: "b-1.msk.example:9092,b-2.msk.example:9092"
  group_id: doka
  topics: [orders]
  properties:
    sasl.password: hunter2-kafka
    fetch.wait.max.ms: 50
aws:
  region: eu-west-1
  role_arn: arn:aws:iam::222222222222:role/doka-writer
  external_id: very-secret-external-id
kinesis:
  stream: orders-stream
profiles:
  dev:
    kafka:
      group_id: doka-dev
    batch:
      linger_ms: 5
  prod:
    kinesis:
      stream: arn:aws:kinesis:eu-west-1:222222222222:stream/orders-prod
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

fn run_with(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doka.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut all = vec!["config", "--config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = doka_command(&all, env).output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        file,
        _dir: dir,
    }
}

fn broken(yaml: &str, env: &[(&str, &str)]) -> Run {
    let run = run_with(yaml, &[], env);
    assert_eq!(
        run.code,
        Some(2),
        "expected a config error, got:\n{}{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.is_empty());
    run
}

fn assert_mentions(run: &Run, parts: &[&str]) {
    for p in parts {
        assert!(
            run.stderr.contains(p),
            "error should mention {p:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn the_valid_config_prints_with_secrets_redacted() {
    let run = run_with(VALID, &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("group_id: doka\n"));
    assert!(
        run.stdout.contains("max_records: 500"),
        "defaults are shown"
    );
    for secret in ["hunter2-kafka", "very-secret-external-id"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "secret leaked:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("sasl.password: <redacted>"));
    assert!(run.stdout.contains("external_id: <redacted>"));
    assert!(run.stdout.contains("fetch.wait.max.ms: '50'"));
}

#[test]
fn a_profile_overrides_the_base_and_the_environment_overrides_both() {
    let dev = run_with(VALID, &["--profile", "dev"], &[]);
    assert_eq!(dev.code, Some(0), "{}", dev.stderr);
    assert!(dev.stdout.contains("group_id: doka-dev\n"));
    assert!(dev.stdout.contains("linger_ms: 5\n"));
    assert!(
        dev.stdout.contains("stream: orders-stream\n"),
        "base keys stay"
    );

    let prod = run_with(
        VALID,
        &[],
        &[
            ("DOKA_PROFILE", "prod"),
            ("DOKA_KAFKA__GROUP_ID", "from-env"),
            ("DOKA_BATCH__MAX_RECORDS", "100"),
        ],
    );
    assert_eq!(prod.code, Some(0), "{}", prod.stderr);
    assert!(
        prod.stdout
            .contains("stream: arn:aws:kinesis:eu-west-1:222222222222:stream/orders-prod")
    );
    assert!(prod.stdout.contains("group_id: from-env\n"));
    assert!(prod.stdout.contains("max_records: 100\n"));
}

#[test]
fn lists_can_come_from_one_environment_variable() {
    let run = run_with(
        VALID,
        &[],
        &[
            ("DOKA_KAFKA__TOPICS", "a,b"),
            ("DOKA_KAFKA__BROKERS", "x:1,y:2"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("topics:\n  - a\n  - b\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("brokers:\n  - x:1\n  - y:2\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_unknown_key_is_named_with_its_file() {
    let run = broken(
        &VALID.replace("  group_id: doka\n", "  group_id: doka\n  grup_id: typo\n"),
        &[],
    );
    assert_mentions(
        &run,
        &[
            "unknown config key `kafka.grup_id`",
            run.file.to_str().unwrap(),
            "`group_id`",
        ],
    );
}

#[test]
fn an_unknown_key_in_a_profile_names_the_profile() {
    let yaml = VALID.replace("      linger_ms: 5", "      linger: 5");
    let run = broken(&yaml, &[("DOKA_PROFILE", "dev")]);
    assert_mentions(
        &run,
        &[
            "unknown config key `batch.linger`",
            "(profile `dev`)",
            "`linger_ms`",
        ],
    );
}

#[test]
fn a_wrong_type_is_named() {
    let run = broken(&format!("{VALID}batch:\n  max_records: lots\n"), &[]);
    assert_mentions(
        &run,
        &[
            "wrong type for config key `batch.max_records`",
            "lots",
            "expected",
        ],
    );
}

#[test]
fn a_missing_value_says_where_to_set_it() {
    let yaml = VALID.replace("kinesis:\n  stream: orders-stream\n", "");
    let run = broken(&yaml, &[]);
    assert_mentions(
        &run,
        &[
            "missing config key `kinesis.stream`",
            "DOKA_KINESIS__STREAM",
            "routes",
        ],
    );
    let yaml = VALID.replace("  group_id: doka\n", "");
    let run = broken(&yaml, &[]);
    assert_mentions(
        &run,
        &[
            "missing config key `kafka.group_id`",
            "DOKA_KAFKA__GROUP_ID",
            run.file.to_str().unwrap(),
        ],
    );
}

#[test]
fn a_malformed_arn_is_explained() {
    let run = broken(
        &VALID.replace(
            "arn:aws:iam::222222222222:role/doka-writer",
            "arn:aws:iam::2222:role/doka-writer",
        ),
        &[],
    );
    assert_mentions(
        &run,
        &[
            "key `aws.role_arn`",
            "is not an IAM role ARN",
            "12-digit account",
        ],
    );
    let run = broken(
        &VALID.replace(
            "stream: orders-stream",
            "stream: \"arn:aws:kinesis:eu-west-1:222:stream/x\"",
        ),
        &[],
    );
    assert_mentions(&run, &["key `kinesis.stream`", "stream ARN"]);
}

#[test]
fn out_of_range_limits_are_refused() {
    for (yaml_tail, key) in [
        ("batch:\n  max_records: 501\n", "batch.max_records"),
        ("batch:\n  max_bytes: 20000000\n", "batch.max_bytes"),
        ("pipeline:\n  lanes: 0\n", "pipeline.lanes"),
        ("kinesis_extra: {}\n", "kinesis_extra"),
    ] {
        let run = broken(&format!("{VALID}{yaml_tail}"), &[]);
        assert_mentions(&run, &[key]);
    }
    let run = broken(&format!("{VALID}batch:\n  max_records: 501\n"), &[]);
    assert_mentions(&run, &["501 is out of range: expected 1 to 500"]);
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let run = broken(VALID, &[("DOKA_BATCH__MAX_RECORDS", "0")]);
    assert_mentions(
        &run,
        &[
            "environment variable DOKA_BATCH__MAX_RECORDS",
            "out of range",
        ],
    );
    let run = broken(VALID, &[("DOKA_PIPELINE__ORDERING", "strictest")]);
    assert_mentions(&run, &["`strictest`", "pipeline.ordering", "`per_key`"]);
}

#[test]
fn prefix_random_needs_a_prefix() {
    let run = broken(
        &format!("{VALID}partition_key:\n  rule: prefix_random\n"),
        &[],
    );
    assert_mentions(&run, &["partition_key.prefix", "needs a prefix"]);
}

#[test]
fn reserved_kafka_properties_are_refused() {
    let yaml = VALID.replace("    fetch.wait.max.ms: 50", "    enable.auto.commit: true");
    let run = broken(&yaml, &[]);
    assert_mentions(
        &run,
        &[
            "kafka.properties.enable.auto.commit",
            "doka sets this property itself",
        ],
    );
}

#[test]
fn an_unknown_profile_lists_the_defined_ones() {
    let run = broken(VALID, &[("DOKA_PROFILE", "qa")]);
    assert_mentions(&run, &["profile `qa` is not defined", "dev, prod"]);
}

#[test]
fn unreadable_and_malformed_files_are_reported() {
    let out = doka_command(&["config", "--config", "/nonexistent/doka.yaml"], &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/doka.yaml"),
        "{err}"
    );

    let run = broken("kafka: [unclosed\n", &[]);
    assert_mentions(&run, &["is not valid YAML", "line"]);
}

#[test]
fn the_shipped_example_config_is_valid_in_every_profile() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/doka.example.yaml");
    for profile in [None, Some("dev"), Some("qa"), Some("prod")] {
        let mut args = vec!["config", "--config", example];
        if let Some(p) = profile {
            args.extend(["--profile", p]);
        }
        let out = doka_command(&args, &[]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{profile:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_dead_letter_policy_needs_a_topic_that_is_not_consumed() {
    let run = broken(
        &format!("{VALID}dead_letter:\n  on_oversized: dead_letter\n"),
        &[],
    );
    assert_mentions(
        &run,
        &["dead_letter.on_oversized", "needs dead_letter.topic"],
    );
    for (section, key) in [
        ("records", "on_tombstone"),
        ("records", "on_headers"),
        ("partition_key", "on_long_key"),
        ("partition_key", "on_binary_key"),
    ] {
        let run = broken(&format!("{VALID}{section}:\n  {key}: dead_letter\n"), &[]);
        assert_mentions(
            &run,
            &[&format!("{section}.{key}"), "needs dead_letter.topic"],
        );
    }
    let run = broken(&format!("{VALID}records:\n  on_tombstone: drop\n"), &[]);
    assert_mentions(&run, &["records.on_tombstone", "drop"]);
    let run = broken(&format!("{VALID}dead_letter:\n  topic: orders\n"), &[]);
    assert_mentions(&run, &["dead_letter.topic", "also in kafka.topics"]);
    let ok = run_with(
        &format!("{VALID}dead_letter:\n  topic: doka-dead\n"),
        &[],
        &[],
    );
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}

// ---------------------------------------------------------------------------------------------
// kafka.auth

/// VALID with `section` under `kafka:` (and without its raw sasl.password property).
fn with_auth(section: &str) -> String {
    VALID
        .replace("    sasl.password: hunter2-kafka\n", "")
        .replacen("kafka:\n", &format!("kafka:\n{section}"), 1)
}

#[test]
fn scram_reads_its_password_from_a_file_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-from-file\n").unwrap();
    let yaml = with_auth(&format!(
        "  auth:\n    mode: scram\n    scram:\n      username: doka\n      password_file: {}\n",
        password.display()
    ));
    let run = run_with(&yaml, &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("mode: scram"), "{}", run.stdout);
    assert!(
        run.stdout.contains("mechanism: SCRAM-SHA-512"),
        "the default"
    );
    assert!(!run.stdout.contains("s3cret-from-file"));

    let inline = with_auth(
        "  auth:\n    mode: scram\n    scram:\n      username: doka\n      password: inline-s3cret\n",
    );
    let run = run_with(&inline, &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("password: <redacted>"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("inline-s3cret"));
}

#[test]
fn a_missing_tls_file_names_the_key_and_the_path() {
    let run = broken(
        &with_auth("  auth:\n    mode: tls\n    tls:\n      ca_file: /nowhere/msk-ca.pem\n"),
        &[],
    );
    assert_mentions(
        &run,
        &[
            "kafka.auth.tls.ca_file",
            "/nowhere/msk-ca.pem",
            "cannot read",
        ],
    );
}

#[test]
fn missing_client_certificate_and_key_files_are_named_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("present.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
    for (key, missing) in [
        ("cert_file", "/nowhere/client.pem"),
        ("key_file", "/nowhere/client.key"),
    ] {
        let (cert, private) = if key == "cert_file" {
            (missing.to_owned(), pem.display().to_string())
        } else {
            (pem.display().to_string(), missing.to_owned())
        };
        let run = broken(
            &with_auth(&format!(
                "  auth:\n    mode: tls\n    tls:\n      cert_file: {cert}\n      key_file: {private}\n"
            )),
            &[],
        );
        assert_mentions(
            &run,
            &[&format!("kafka.auth.tls.{key}"), missing, "cannot read"],
        );
    }
}

#[test]
fn an_unreadable_password_file_is_named_with_its_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&password).is_ok() {
        // Running as root: permissions do not stop reading; a directory in its place does.
        std::fs::remove_file(&password).unwrap();
        std::fs::create_dir(&password).unwrap();
    }
    let path = password.display().to_string();
    let run = broken(
        &with_auth(&format!(
            "  auth:\n    mode: scram\n    scram:\n      username: doka\n      password_file: {path}\n"
        )),
        &[],
    );
    assert_mentions(&run, &["kafka.auth.scram.password_file", &path]);
    assert!(!run.stderr.contains("s3cret"));
}

#[test]
fn an_http_listen_address_that_does_not_parse_names_the_key() {
    for listen in ["9464", "localhost:9464", "0.0.0.0:http"] {
        let run = broken(&format!("{VALID}http:\n  listen: \"{listen}\"\n"), &[]);
        assert_mentions(&run, &["http.listen", listen, "ip:port"]);
    }
}

#[test]
fn a_file_that_is_not_pem_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let der = dir.path().join("client.der");
    std::fs::write(&der, [0x30u8, 0x82, 0x01, 0x0a]).unwrap();
    let key = dir.path().join("client.key");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let run = broken(
        &with_auth(&format!(
            "  auth:\n    mode: tls\n    tls:\n      cert_file: {}\n      key_file: {}\n",
            der.display(),
            key.display()
        )),
        &[],
    );
    assert_mentions(
        &run,
        &["kafka.auth.tls.cert_file", "is not a PEM file", "openssl"],
    );
}

#[test]
fn a_client_certificate_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let run = broken(
        &with_auth(&format!(
            "  auth:\n    mode: tls\n    tls:\n      cert_file: {}\n",
            cert.display()
        )),
        &[],
    );
    assert_mentions(&run, &["kafka.auth.tls.key_file", "private key"]);
}

#[test]
fn scram_without_a_user_or_a_password_is_refused() {
    let run = broken(
        &with_auth("  auth:\n    mode: scram\n    scram:\n      password: x\n"),
        &[],
    );
    assert_mentions(&run, &["kafka.auth.scram.username", "user name"]);

    let run = broken(
        &with_auth("  auth:\n    mode: scram\n    scram:\n      username: doka\n"),
        &[],
    );
    assert_mentions(&run, &["kafka.auth.scram.password", "password_file"]);

    let run = broken(
        &with_auth(
            "  auth:\n    mode: scram\n    scram:\n      username: doka\n      password_file: /nowhere/pw\n",
        ),
        &[],
    );
    assert_mentions(&run, &["kafka.auth.scram.password_file", "/nowhere/pw"]);

    let run = broken(
        &with_auth(
            "  auth:\n    mode: scram\n    scram:\n      username: doka\n      password_env: DOKA_TEST_UNSET_PASSWORD\n",
        ),
        &[],
    );
    assert_mentions(
        &run,
        &[
            "kafka.auth.scram.password_env",
            "DOKA_TEST_UNSET_PASSWORD",
            "not set",
        ],
    );
}

#[test]
fn an_auth_section_for_another_mode_is_refused() {
    let run = broken(
        &with_auth("  auth:\n    mode: tls\n    scram:\n      username: doka\n"),
        &[],
    );
    assert_mentions(
        &run,
        &["kafka.auth.scram", "only used with kafka.auth.mode scram"],
    );
}

#[test]
fn raw_security_properties_conflicting_with_kafka_auth_are_refused() {
    let yaml = with_auth("  auth:\n    mode: iam\n").replace(
        "    fetch.wait.max.ms: 50\n",
        "    fetch.wait.max.ms: 50\n    security.protocol: SASL_SSL\n",
    );
    let run = broken(&yaml, &[]);
    assert_mentions(
        &run,
        &["kafka.properties.security.protocol", "kafka.auth.mode iam"],
    );
}

#[test]
fn the_auth_mode_can_come_from_the_environment() {
    let run = run_with(
        &with_auth(""),
        &[],
        &[
            ("DOKA_KAFKA__AUTH__MODE", "iam"),
            ("DOKA_KAFKA__AUTH__IAM__REGION", "eu-central-1"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("mode: iam"), "{}", run.stdout);
    assert!(
        run.stdout.contains("region: eu-central-1"),
        "{}",
        run.stdout
    );

    let run = broken(&with_auth(""), &[("DOKA_KAFKA__AUTH__MODE", "kerberos")]);
    assert_mentions(
        &run,
        &[
            "DOKA_KAFKA__AUTH__MODE",
            "`plaintext`, `tls`, `scram`, `iam`",
        ],
    );
}

#[test]
fn a_secret_that_reads_as_a_number_is_refused_without_showing_it() {
    let yaml = with_auth("  auth:\n    mode: scram\n    scram:\n      username: doka\n");
    let run = broken(&yaml, &[("DOKA_KAFKA__AUTH__SCRAM__PASSWORD", "8675309")]);
    assert_mentions(
        &run,
        &["kafka.auth.scram.password", "password_file", "not shown"],
    );
    assert!(
        !run.stderr.contains("8675309"),
        "the secret leaked:\n{}",
        run.stderr
    );
}

/// Routes: the shared sections are merged key by key into each route, an external id or a
/// rule's settings do not travel to a route that replaces the role or the rule, and the routes
/// are printed resolved.
const ROUTES: &str = r#"
kafka:
  brokers: "b-1.msk.example:9092"
  group_id: doka
aws:
  region: eu-west-1
  role_arn: arn:aws:iam::222222222222:role/doka-writer
  external_id: very-secret-external-id
partition_key:
  rule: json_field
  field: customer.id
batch:
  linger_ms: 7
routes:
  - name: orders
    topics: [orders]
    kinesis: { stream: orders }
  - topic_pattern: "audit-.*"
    firehose: { delivery_stream: audit-to-s3 }
    aws: { role_arn: "arn:aws:iam::333333333333:role/doka-audit" }
    partition_key: { rule: template, template: "{topic}-{partition}" }
    records: { format: envelope }
    lanes: 2
"#;

#[test]
fn routes_inherit_key_by_key_and_print_resolved() {
    let run = run_with(ROUTES, &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let shown: serde_json::Value = serde_saphyr::from_str(&run.stdout).unwrap();
    let routes = shown["routes"].as_array().expect("routes printed");
    assert_eq!(routes.len(), 2);
    let (orders, audit) = (&routes[0], &routes[1]);
    assert_eq!(orders["name"], "orders");
    assert_eq!(orders["aws"]["region"], "eu-west-1");
    assert_eq!(orders["aws"]["external_id"], "<redacted>");
    assert_eq!(orders["partition_key"]["field"], "customer.id");
    assert_eq!(orders["batch"]["linger_ms"], 7);
    assert_eq!(orders["records"]["format"], "raw");
    // The unnamed route is named after its destination; it keeps the shared region and linger
    // but not the external id of another account's role, nor the json_field rule's field.
    assert_eq!(audit["name"], "audit-to-s3");
    assert_eq!(audit["topic_pattern"], "audit-.*");
    assert_eq!(
        audit["aws"]["role_arn"],
        "arn:aws:iam::333333333333:role/doka-audit"
    );
    assert_eq!(audit["aws"]["region"], "eu-west-1");
    assert!(audit["aws"]["external_id"].is_null(), "{}", run.stdout);
    assert_eq!(audit["partition_key"]["rule"], "template");
    assert!(
        audit["partition_key"].get("field").is_none(),
        "{}",
        run.stdout
    );
    assert_eq!(audit["batch"]["linger_ms"], 7);
    assert_eq!(audit["lanes"], 2);
    assert!(
        !run.stdout.contains("very-secret-external-id"),
        "a secret leaked"
    );
}

#[test]
fn route_mistakes_name_the_route_key() {
    let run = broken(
        &ROUTES.replace("topic_pattern: \"audit-.*\"", "topic_pattern: \"ord.*\""),
        &[],
    );
    assert_mentions(
        &run,
        &[
            "routes[0].topics",
            "`orders`",
            "route `orders`",
            "route `audit-to-s3`",
            "topic_pattern",
        ],
    );
    let run = broken(
        &ROUTES.replace(
            "kinesis: { stream: orders }",
            "kinesis: { stream: orders, bogus: 1 }",
        ),
        &[],
    );
    assert_mentions(&run, &["unknown config key `routes[0].kinesis.bogus`"]);
    let run = broken(
        &ROUTES.replace("{topic}-{partition}", "{topic}}-{partition}"),
        &[],
    );
    assert_mentions(&run, &["routes[1].partition_key.template", "without its"]);
    let run = broken(
        &ROUTES.replace(
            "  - name: orders\n",
            "  - name: orders\n    firehose: { delivery_stream: x }\n",
        ),
        &[],
    );
    assert_mentions(&run, &["routes[0].firehose", "one destination"]);
    let run = broken(&format!("{ROUTES}  - topics: [more]\n"), &[]);
    assert_mentions(&run, &["routes[2].kinesis.stream", "destination"]);
    let run = broken(
        &ROUTES.replace(
            "  group_id: doka\n",
            "  group_id: doka\n  topics: [orders]\n",
        ),
        &[],
    );
    assert_mentions(&run, &["kafka.topics", "with `routes`"]);
}

#[test]
fn a_stdout_destination_needs_no_aws_and_checks_its_own_keys() {
    // The shorthand, without any aws section: valid, and printed as written.
    let local =
        "kafka: { brokers: \"localhost:9092\", group_id: doka, topics: [orders] }\nstdout: {}\n";
    let run = run_with(local, &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let shown: serde_json::Value = serde_saphyr::from_str(&run.stdout).unwrap();
    assert_eq!(shown["routes"][0]["stdout"]["max_record_bytes"], 1048576);
    assert!(
        shown["routes"][0].get("kinesis").is_none(),
        "{}",
        run.stdout
    );

    let with_stdout = format!("{ROUTES}  - name: local\n    topics: [local]\n    stdout: {{}}\n");
    let run = run_with(&with_stdout, &[], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = broken(
        &with_stdout.replace("stdout: {}", "stdout: { max_record_bytes: 10 }"),
        &[],
    );
    assert_mentions(&run, &["routes[2].stdout.max_record_bytes", "10"]);
    let run = broken(
        &with_stdout.replace("stdout: {}", "stdout: { stream: x }"),
        &[],
    );
    assert_mentions(&run, &["unknown config key `routes[2].stdout.stream`"]);
    let run = broken(
        &with_stdout.replace("stdout: {}", "stdout: {}\n    kinesis: { stream: local }"),
        &[],
    );
    assert_mentions(&run, &["routes[2]", "one destination"]);
    // An incomplete second section is refused too: its settings would be ignored.
    let run = broken(
        &with_stdout.replace(
            "stdout: {}",
            "stdout: {}\n    kinesis: { request_timeout_ms: 1000 }",
        ),
        &[],
    );
    assert_mentions(&run, &["routes[2].stdout", "one destination"]);
    let run = broken(
        &ROUTES.replace(
            "kinesis: { stream: orders }",
            "kinesis: { stream: orders }\n    firehose: {}",
        ),
        &[],
    );
    assert_mentions(&run, &["routes[0].firehose", "one destination"]);
}
