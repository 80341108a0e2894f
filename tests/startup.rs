//! Bad start-up input: each gets a clear message and a documented exit code (README, "Exit
//! codes") instead of a doka that looks alive but cannot work.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::*;

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_exit_with_code_6() {
    let world = World::new(1, 1).await;
    let broker = format!("127.0.0.1:{}", closed_port());
    let yaml = world.yaml(None).replace(&world.kafka.bootstrap(), &broker);
    let started = Instant::now();
    let doka = Doka::start(&yaml, &[("DOKA_KAFKA__CONNECT_TIMEOUT_MS", "2000")]);
    let (status, log) = doka.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(6), "{log}");
    // Refused connections may pass (a broker starting): they are retried for the whole timeout.
    assert!(started.elapsed() >= Duration::from_secs(2), "{log}");
    assert_mentions(
        &log,
        &[
            &format!("cannot reach the Kafka brokers {broker}"),
            "kafka.connect_timeout_ms (2000 ms)",
            "kafka.brokers",
        ],
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sts_endpoint_exits_with_code_5() {
    let world = World::new(1, 1).await;
    let sts = format!("http://127.0.0.1:{}", closed_port());
    let yaml = world.yaml(None).replace(&world.ep.sts, &sts);
    let doka = Doka::start(&yaml, &[]);
    let (status, log) = doka.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{log}");
    assert_mentions(
        &log,
        &[
            "cannot obtain credentials for stream",
            &world.stream,
            ROLE_B,
            "aws.sts_endpoint",
        ],
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_source_credentials_exit_with_code_5_without_leaking_anything() {
    let world = World::new(1, 1).await;
    let doka = Doka::start(
        &world.yaml(None),
        &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")],
    );
    let (status, log) = doka.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(5), "{log}");
    assert_mentions(&log, &["cannot obtain credentials", "source identity"]);
    assert!(!log.contains("test-external-id"), "a secret leaked:\n{log}");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_looked_for_in_the_wrong_region_is_reported_with_the_region() {
    let world = World::new(1, 1).await;
    world.produce(&keyed_messages(0..10, 2));
    let yaml = world
        .yaml(None)
        .replace("region: us-east-1", "region: eu-west-1");
    assert!(yaml.contains("eu-west-1"));
    let mut doka = Doka::start(&yaml, &[("DOKA_PIPELINE__SHUTDOWN_TIMEOUT_MS", "500")]);
    doka.wait_for_log("does not exist", 2, Duration::from_secs(60));
    let (status, log) = doka.terminate();
    assert_eq!(status.code(), Some(3), "undelivered at shutdown:\n{log}");
    let line = log.lines().find(|l| l.contains("does not exist")).unwrap();
    assert_mentions(line, &[&world.stream, "region eu-west-1", "aws.region"]);
    assert!(world.committed(1).values().all(|&o| o <= 0));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_start_up_ends_it_cleanly() {
    let world = World::new(1, 1).await;
    // An STS endpoint that takes connections and never answers: AssumeRole hangs at start-up.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let sts = format!("http://{}", silent.local_addr().unwrap());
    let yaml = world.yaml(None).replace(&world.ep.sts, &sts);
    let mut doka = Doka::start(&yaml, &[]);
    doka.endpoint_port();
    doka.signal_stop();
    let (status, log) = doka.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{log}");
    assert_mentions(&log, &["stopped during start-up: nothing was fetched"]);
    assert!(!log.contains("joining consumer group"), "{log}");
    world.finish().await;
}
