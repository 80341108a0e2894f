//! `doka check` against the local stack: a healthy chain passes every hop (and `--write-test`
//! really writes), and each broken hop is named with its fix — one test per failing hop.

mod support;

use std::time::Duration;

use support::checked::check;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_chain_passes_every_hop_and_the_write_test_lands_in_b() {
    let world = World::new(2, 1).await;
    world.produce(&keyed_messages(0..10, 3));
    let checked = check(&world.yaml(None), &["--write-test"], &[]);
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_eq!(checked.report["ok"], true);
    for hop in [
        "config",
        "kafka.broker",
        "kafka.metadata",
        "kafka.topic",
        "aws.source_identity",
        "aws.assume_role",
        "kinesis.stream",
        "kinesis.write_test",
    ] {
        assert_eq!(checked.status_of(hop), ["ok"], "{hop}: {}", checked.stdout);
    }
    assert_mentions(
        &checked.detail("kafka.topic"),
        &[&world.topic, "2 partitions"],
    );
    // Nothing committed yet: a warning, and the lag counts every record from the start.
    assert_eq!(checked.status_of("kafka.group"), ["warn"]);
    assert_mentions(
        &checked.detail("kafka.group"),
        &[
            "coordinator reachable",
            "committed offsets on 0 of 2",
            "lag 10",
        ],
    );
    assert_mentions(
        &checked.detail("aws.source_identity"),
        &["account 123456789012"],
    );
    assert_mentions(
        &checked.detail("aws.assume_role"),
        &[
            ROLE_B,
            "account 222222222222",
            "with external id",
            "expires",
        ],
    );
    assert_mentions(
        &checked.detail("kinesis.stream"),
        &[&world.stream, "ACTIVE", "1 open shards", "us-east-1"],
    );
    assert_mentions(
        &checked.detail("kinesis.write_test"),
        &["TEST RECORD WRITTEN"],
    );

    let records = read_stream(&world.b, &world.stream).await;
    assert_eq!(records.len(), 1, "exactly the test record");
    assert_eq!(records[0].partition_key, "doka-check");
    assert!(String::from_utf8_lossy(&records[0].data).contains("doka check --write-test"));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_committed_everything_shows_no_lag_and_the_profile_names_the_session() {
    let world = World::new(2, 1).await;
    let placements = world.produce(&keyed_messages(0..30, 3));
    let doka = Doka::start(&world.yaml(None), &[]);
    world.wait_for_all(30, Duration::from_secs(60)).await;
    doka.stop();
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(30))
        .await;

    // A profile that changes nothing but its name: the session name carries it.
    let yaml = format!(
        "{}profiles:\n  qa:\n    batch:\n      linger_ms: 5\n",
        world.yaml(None)
    );
    let checked = check(&yaml, &["--profile", "qa"], &[]);
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_eq!(
        checked.status_of("kafka.group"),
        ["ok"],
        "{}",
        checked.stdout
    );
    assert_mentions(
        &checked.detail("kafka.group"),
        &["committed offsets on", "of 2 partitions", "lag 0"],
    );
    assert_mentions(&checked.detail("config"), &["profile qa"]);
    assert_mentions(
        &checked.detail("aws.assume_role"),
        &["assumed-role/doka-writer/doka-qa-"],
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_hop_shows_encryption_and_compares_record_sizes() {
    let world = World::new(1, 1).await;
    world
        .b
        .start_stream_encryption()
        .stream_name(&world.stream)
        .encryption_type(aws_sdk_kinesis::types::EncryptionType::Kms)
        .key_id("alias/doka-test")
        .send()
        .await
        .expect("StartStreamEncryption");
    wait_until_active(&world.b, &world.stream).await;

    let checked = check(&world.yaml(None), &[], &[]);
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_eq!(checked.status_of("kinesis.stream"), ["ok"]);
    assert_mentions(
        &checked.detail("kinesis.stream"),
        &[
            "encrypted with KMS key alias/doka-test",
            "not reported (1 MiB assumed)",
        ],
    );

    // Records up to 2 MiB configured, a stream that does not say it takes them: a warning
    // naming the key and Kinesis' default, not a failure.
    let checked = check(
        &world.yaml(None),
        &[],
        &[("DOKA_KINESIS__MAX_RECORD_BYTES", "2097152")],
    );
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_eq!(checked.status_of("kinesis.stream"), ["warn"]);
    let fix = checked.hops("kinesis.stream")[0]["fix"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_mentions(
        &fix,
        &[
            "kinesis.max_record_bytes (2097152)",
            "1048576",
            "MaxRecordSizeInKiB",
        ],
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_is_one_line_per_hop_and_writes_nothing_by_default() {
    let world = World::new(1, 1).await;
    let out = run_doka("check", &world.yaml(None), &[], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "✓ config",
        "✓ kafka.topic",
        "✓ aws.assume_role",
        "✓ kinesis.stream",
    ] {
        assert!(stdout.contains(line), "`{line}` missing:\n{stdout}");
    }
    assert!(!stdout.contains("test-external-id"), "a secret leaked");
    assert!(read_stream(&world.b, &world.stream).await.is_empty());
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_named_and_the_aws_side_is_still_checked() {
    let world = World::new(1, 1).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    drop(listener);
    let yaml = world.yaml(None).replace(&world.kafka.bootstrap(), &closed);
    let checked = check(&yaml, &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "kafka.broker");
    assert_mentions(&detail, &[&closed, "unreachable"]);
    assert_mentions(&fix, &["kafka.brokers"]);
    assert_eq!(checked.status_of("aws.assume_role"), ["ok"]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named() {
    let world = World::new(1, 1).await;
    let yaml = world.yaml(None).replace(
        &format!("topics: [{}]", world.topic),
        "topics: [no-such-topic]",
    );
    let checked = check(&yaml, &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "kafka.topic");
    assert_mentions(&detail, &["no-such-topic", "does not exist"]);
    assert_mentions(&fix, &["kafka.topics"]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_scram_password_is_named_with_kafka_auth() {
    let world = World::new(1, 1).await;
    let scram = std::env::var("DOKA_TEST_KAFKA_SCRAM").expect("the stack's SCRAM listener");
    let ca = format!("{}/ca.pem", std::env::var("DOKA_TEST_TLS_DIR").unwrap());
    let yaml = world
        .yaml(None)
        .replace(&world.kafka.bootstrap(), &scram)
        .replacen(
            "kafka:\n",
            &format!(
                "kafka:\n  auth:\n    mode: scram\n    tls:\n      ca_file: {ca}\n    scram:\n      username: doka-test\n      password: wrong-password\n"
            ),
            1,
        );
    let checked = check(&yaml, &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "kafka.auth");
    assert_mentions(&detail, &["SASL/SCRAM authentication failed"]);
    assert_mentions(&fix, &["kafka.auth.scram.username", "password"]);
    assert!(
        !checked.stdout.contains("wrong-password"),
        "a secret leaked"
    );
    world.finish().await;
}

/// STS behind a proxy that plays the role's trust policy.
async fn sts_with_trust(world: &World, trust: proxy::Trust) -> proxy::FaultProxy {
    proxy::FaultProxy::start(
        &world.ep.sts,
        proxy::Faults {
            trust: Some(trust),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_refusing_the_role_is_named_with_the_trust_policy_to_fix() {
    let world = World::new(1, 1).await;
    let sts = sts_with_trust(
        &world,
        proxy::Trust {
            refused_role: Some(ROLE_B),
            external_id: None,
        },
    )
    .await;
    let yaml = world.yaml(None).replace(&world.ep.sts, &sts.url);
    let checked = check(&yaml, &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "aws.assume_role");
    assert_mentions(&detail, &["STS refused AssumeRole", ROLE_B, "AccessDenied"]);
    assert_mentions(&fix, &["trust policy", "arn:aws:sts::123456789012"]);
    // The Kafka side does not depend on it.
    assert_eq!(checked.status_of("kafka.topic"), ["ok"]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_external_id_is_named() {
    let world = World::new(1, 1).await;
    let sts = sts_with_trust(
        &world,
        proxy::Trust {
            refused_role: None,
            external_id: Some("the-external-id-b-expects"),
        },
    )
    .await;
    let yaml = world.yaml(None).replace(&world.ep.sts, &sts.url);
    let checked = check(&yaml, &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, _detail, fix) = checked.failure();
    assert_eq!(hop, "aws.assume_role");
    assert_mentions(&fix, &["sts:ExternalId", "aws.external_id"]);
    assert!(
        !checked.stdout.contains("test-external-id"),
        "a secret leaked"
    );

    // The right external id passes the same trust policy.
    let yaml = yaml.replace("test-external-id", "the-external-id-b-expects");
    let checked = check(&yaml, &[], &[]);
    assert_eq!(
        checked.status_of("aws.assume_role"),
        ["ok"],
        "{}",
        checked.stdout
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_named_with_its_account_and_region() {
    let world = World::without_stream(1).await;
    let checked = check(&world.yaml(None), &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "kinesis.stream");
    assert_mentions(
        &detail,
        &[&world.stream, "does not exist", "us-east-1", "222222222222"],
    );
    assert_mentions(&fix, &["kinesis.stream", "aws.region", "aws.role_arn"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_looked_for_in_the_wrong_region_is_named_with_the_region() {
    let world = World::new(1, 1).await;
    let yaml = world
        .yaml(None)
        .replace("region: us-east-1", "region: eu-west-1");
    let checked = check(&yaml, &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, _fix) = checked.failure();
    assert_eq!(hop, "kinesis.stream");
    assert_mentions(&detail, &["does not exist in region eu-west-1"]);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_the_first_failed_hop() {
    let checked = check("kafka:\n  brokers: b:9092\n", &[], &[]);
    assert_eq!(checked.code, Some(2), "{}", checked.stdout);
    let (hop, detail, _) = checked.failure();
    assert_eq!(hop, "config");
    assert_mentions(&detail, &["missing config key"]);
}

/// With routes, every route's chain is walked: a Kinesis route and a Firehose route pass (the
/// write test lands in the delivery stream's bucket), a route whose delivery stream is missing
/// is the one failed hop, named with its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_checked_kinesis_and_firehose_alike() {
    let world = World::new(1, 1).await;
    let (firehose, s3) = support::firehose::account_b_clients(&world.ep).await;
    let delivery_stream = unique("doka-check-fh");
    let bucket = unique("doka-check-bucket");
    support::firehose::create_delivery_stream(&firehose, &s3, &delivery_stream, &bucket, "c/")
        .await;
    let audit = unique("audit");
    world.kafka.create_topic(&audit, 1);
    let routes = |delivery: &str| {
        world
            .yaml(None)
            .replace(&format!("  topics: [{}]\n", world.topic), "")
            .replace(&format!("kinesis:\n  stream: {}\n", world.stream), "")
            + &format!(
                "routes:\n  - name: orders\n    topics: [{}]\n    kinesis: {{ stream: {} }}\n  \
                 - name: audit\n    topics: [{audit}]\n    firehose: {{ delivery_stream: {delivery} }}\n    \
                 aws: {{ firehose_endpoint: {} }}\n",
                world.topic,
                world.stream,
                support::firehose::endpoint(&world.ep),
            )
    };

    let checked = check(&routes(&delivery_stream), &["--write-test"], &[]);
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_eq!(
        checked.status_of("route"),
        ["ok", "ok"],
        "{}",
        checked.stdout
    );
    assert_eq!(checked.status_of("aws.assume_role"), ["ok", "ok"]);
    assert_eq!(checked.status_of("kinesis.stream"), ["ok"]);
    assert_eq!(checked.status_of("firehose.delivery_stream"), ["ok"]);
    assert_eq!(checked.status_of("firehose.write_test"), ["ok"]);
    let topics: Vec<String> = checked
        .hops("kafka.topic")
        .iter()
        .map(|h| h["detail"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        topics.iter().any(|d| d.contains(&audit))
            && topics.iter().any(|d| d.contains(&world.topic)),
        "both routes' topics: {topics:?}"
    );
    let lines =
        support::firehose::wait_for_lines(&s3, &bucket, "c/", 1, Duration::from_secs(30)).await;
    // One JSON object, so a prefix of JSON Lines stays valid.
    let test_record: serde_json::Value =
        serde_json::from_slice(&lines[0]).expect("the test record is JSON");
    assert!(
        test_record["doka_check"]
            .as_str()
            .is_some_and(|t| t.contains("--write-test")),
        "the test record is in the bucket: {test_record}"
    );

    let missing = unique("doka-check-missing");
    let checked = check(&routes(&missing), &[], &[]);
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let (hop, detail, fix) = checked.failure();
    assert_eq!(hop, "firehose.delivery_stream");
    assert_mentions(&detail, &[&missing]);
    assert_mentions(&fix, &["firehose.delivery_stream", "aws.role_arn"]);
    support::firehose::delete_delivery_stream(&firehose, &s3, &delivery_stream, &bucket).await;
    world.finish().await;
}
