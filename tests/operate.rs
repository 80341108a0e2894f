//! Operating doka: a real Prometheus server scrapes `/metrics` during an end-to-end run and must
//! agree with the records counted in the stream; the probes are followed through a rebalance, a
//! Kinesis outage and shutdown; the endpoint's address is validated at start-up and it shows no
//! secrets.

mod support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::prometheus::{Prometheus, http_get, sample_sum, tool};
use support::*;

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get(port, path)
}

fn status(port: u16, path: &str) -> Option<u16> {
    get(port, path).map(|(s, _)| s)
}

/// Waits until `path` answers `want`, or panics after `timeout` saying what it answered.
fn wait_for_status(port: u16, path: &str, want: u16, timeout: Duration) {
    eventually(&format!("{path} to answer {want}"), timeout, || {
        let seen = get(port, path);
        if seen.as_ref().is_some_and(|(s, _)| *s == want) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
}

/// The harness' config listens on a port of the system's choosing: pin it.
fn with_http(yaml: &str, port: u16) -> String {
    assert!(yaml.contains("listen: 127.0.0.1:0\n"));
    yaml.replace(
        "listen: 127.0.0.1:0\n",
        &format!("listen: 127.0.0.1:{port}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrape_agrees_with_the_records_counted_end_to_end() {
    const N: usize = 3000;
    let world = World::new(3, 2).await;
    let placements = world.produce(&keyed_messages(0..N, 200));
    let mut doka = Doka::start(&world.yaml(None), &[]);
    let port = doka.endpoint_port();
    let prometheus = Prometheus::start(&[port]);
    let records = world.wait_for_all(N, Duration::from_secs(120)).await;
    let duplicates = assert_every_record(N, &records, Copies::AtLeastOnce);

    // What Prometheus scraped agrees with what the stream holds (a timed-out request that was
    // applied and sent again is one delivery and two copies), and the lag drains to 0.
    let delivered = format!(
        "sum(doka_records_delivered_total{{stream=\"{}\"}})",
        world.stream
    );
    prometheus.wait_for(
        &format!("{delivered} >= bool {N}"),
        1.0,
        Duration::from_secs(60),
    );
    let scraped = prometheus.scalar(&delivered).unwrap();
    assert!(
        scraped <= (N + duplicates) as f64,
        "{scraped} delivered, {} in the stream",
        N + duplicates
    );
    prometheus.wait_for(
        &format!(
            "sum(doka_records_consumed_total{{topic=\"{}\"}})",
            world.topic
        ),
        N as f64,
        Duration::from_secs(30),
    );
    prometheus.wait_for(
        &format!(
            "count(doka_consumer_lag_records{{topic=\"{}\"}})",
            world.topic
        ),
        3.0,
        Duration::from_secs(30),
    );
    prometheus.wait_for(
        &format!(
            "sum(doka_consumer_lag_records{{topic=\"{}\"}})",
            world.topic
        ),
        0.0,
        Duration::from_secs(30),
    );
    let ends = end_offsets(&placements);
    prometheus.wait_for(
        &format!(
            "sum(doka_partition_committed_offset{{topic=\"{}\"}})",
            world.topic
        ),
        ends.values().sum::<i64>() as f64,
        Duration::from_secs(30),
    );
    assert_eq!(
        prometheus.scalar("sum(doka_put_requests_total)"),
        prometheus.scalar("sum(doka_put_request_duration_seconds_count)"),
        "every request is counted by outcome and timed"
    );
    assert_eq!(
        prometheus.scalar("sum(doka_credential_renewals_total{kind=\"assumed_role\"})"),
        Some(1.0)
    );
    assert!(
        prometheus
            .scalar(
                "min(doka_credentials_expiry_timestamp_seconds{kind=\"assumed_role\"}) - time()"
            )
            .is_some_and(|left| left > 0.0),
        "the assumed role's expiry lies ahead"
    );

    // The exposition itself passes Prometheus' own linter.
    let (_, exposition) = get(port, "/metrics").expect("metrics");
    let mut promtool = Command::new(tool("DOKA_TEST_PROMTOOL"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The summary line reads the same registry.
    let log = doka.stop();
    assert_eq!(summary_count(&log, "consumed"), N as u64);
    assert_eq!(summary_count(&log, "delivered") as f64, scraped);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_through_a_rebalance_an_outage_and_shutdown() {
    let world = World::new(4, 1).await;
    let kinesis = proxy::FaultProxy::start(&world.ep.kinesis, proxy::Faults::default()).await;
    world.produce(&keyed_messages(0..200, 20));
    let yaml = world.yaml(Some(&kinesis.url));
    let mut a = Doka::start(&yaml, &[]);
    let port_a = a.endpoint_port();
    wait_for_status(port_a, "/readyz", 200, Duration::from_secs(60));
    assert_eq!(status(port_a, "/healthz"), Some(200));
    world.wait_for_all(200, Duration::from_secs(60)).await;

    // A second member joins: partitions move, both stay ready (a member waiting for partitions
    // is ready too).
    let mut b = Doka::start(&yaml, &[]);
    let port_b = b.endpoint_port();
    eventually("a rebalance", Duration::from_secs(60), || {
        if a.log_text().contains("partitions revoked and committed") {
            return Some(());
        }
        assert_eq!(
            status(port_a, "/readyz"),
            Some(200),
            "A during the rebalance"
        );
        None
    });
    b.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    wait_for_status(port_b, "/readyz", 200, Duration::from_secs(30));
    assert_eq!(
        status(port_a, "/readyz"),
        Some(200),
        "A after the rebalance"
    );
    a.wait_for_log("partitions assigned", 1, Duration::from_secs(30));

    // Kinesis refuses connections: not ready once requests have failed for 30 s, alive all
    // along, ready again at the first accepted request.
    kinesis.refuse_connections();
    world.produce(&keyed_messages(200..400, 20));
    let outage = Instant::now();
    eventually(
        "both not ready in the outage",
        Duration::from_secs(90),
        || {
            if status(port_a, "/readyz") == Some(503) && status(port_b, "/readyz") == Some(503) {
                return Some(());
            }
            assert_eq!(
                status(port_a, "/healthz"),
                Some(200),
                "alive during the outage"
            );
            None
        },
    );
    assert!(
        outage.elapsed() >= Duration::from_secs(29),
        "not ready after {:?}: before the documented 30 s",
        outage.elapsed()
    );
    let (_, why) = get(port_a, "/readyz").unwrap();
    assert!(why.contains("has not accepted a request"), "{why}");
    kinesis.accept_connections();
    wait_for_status(port_a, "/readyz", 200, Duration::from_secs(60));
    wait_for_status(port_b, "/readyz", 200, Duration::from_secs(60));
    world.wait_for_all(400, Duration::from_secs(60)).await;

    // Shutdown: not ready from the signal on while alive; then the endpoint is gone.
    // Records in flight keep A draining for a moment: refuse again so the drain takes time.
    let failures_so_far = a.log_text().matches("request failed").count();
    kinesis.refuse_connections();
    world.produce(&keyed_messages(400..450, 20));
    a.wait_for_log(
        "request failed",
        failures_so_far + 1,
        Duration::from_secs(30),
    );
    a.signal_stop();
    wait_for_status(port_a, "/readyz", 503, Duration::from_secs(10));
    assert_eq!(
        status(port_a, "/healthz"),
        Some(200),
        "alive while draining"
    );
    kinesis.accept_connections();
    let (exit, log) = a.wait_exit(Duration::from_secs(60));
    assert_eq!(exit.code(), Some(0), "{log}");
    assert_eq!(
        status(port_a, "/healthz"),
        None,
        "the endpoint stops with doka"
    );
    b.wait_for_log("partitions assigned", 2, Duration::from_secs(60));
    world.wait_for_all(450, Duration::from_secs(60)).await;
    b.stop();
    world.finish().await;
}

/// Readiness follows group membership as the group hands it out: a member with no partitions
/// (more members than partitions) is ready too, and each rebalance is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_partitions_is_ready_and_rebalances_are_counted() {
    let world = World::new(1, 1).await;
    world.produce(&keyed_messages(0..20, 2));
    let yaml = world.yaml(None);
    let mut a = Doka::start(&yaml, &[]);
    let port_a = a.endpoint_port();
    wait_for_status(port_a, "/readyz", 200, Duration::from_secs(60));
    world.wait_for_all(20, Duration::from_secs(60)).await;

    let mut b = Doka::start(&yaml, &[]);
    let port_b = b.endpoint_port();
    wait_for_status(port_b, "/readyz", 200, Duration::from_secs(60));
    let (_, metrics_b) = get(port_b, "/metrics").unwrap();
    assert_eq!(
        sample_sum(&metrics_b, "doka_assigned_partitions", &[]),
        0.0,
        "B waits for a partition:\n{metrics_b}"
    );
    assert_eq!(
        status(port_a, "/readyz"),
        Some(200),
        "A keeps its partition"
    );
    let (_, metrics_a) = get(port_a, "/metrics").unwrap();
    assert_eq!(sample_sum(&metrics_a, "doka_assigned_partitions", &[]), 1.0);
    assert!(
        sample_sum(&metrics_a, "doka_rebalances_total", &["event=\"assigned\""]) >= 1.0,
        "{metrics_a}"
    );

    // A leaves: B takes the partition over, and counts that assignment.
    a.stop();
    b.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    world.produce(&keyed_messages(20..30, 2));
    world.wait_for_all(30, Duration::from_secs(60)).await;
    let (_, metrics_b) = get(port_b, "/metrics").unwrap();
    assert_eq!(
        sample_sum(&metrics_b, "doka_rebalances_total", &["event=\"assigned\""]),
        1.0,
        "{metrics_b}"
    );
    assert_eq!(sample_sum(&metrics_b, "doka_assigned_partitions", &[]), 1.0);
    assert_eq!(status(port_b, "/readyz"), Some(200));
    b.stop();
    world.finish().await;
}

/// Joining is not ready: while the subscribed topic does not exist, librdkafka does not join the
/// group and `/readyz` says so; once the topic exists the group assigns it and doka is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_group_assigns() {
    let world = World::new(1, 1).await;
    let later = unique("later");
    let yaml = world.yaml(None).replace(
        &format!("topics: [{}]", world.topic),
        &format!("topics: [{later}]"),
    );
    assert!(yaml.contains(&later));
    let mut doka = Doka::start(&yaml, &[]);
    let port = doka.endpoint_port();
    doka.wait_for_log("does not exist", 1, Duration::from_secs(30));
    doka.wait_for_log("joining consumer group", 1, Duration::from_secs(30));
    let (code, why) = get(port, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{why}");
    assert_mentions(&why, &["not in the consumer group", "joining"]);
    assert_eq!(status(port, "/healthz"), Some(200), "joining is alive");

    world.kafka.create_topic(&later, 1);
    wait_for_status(port, "/readyz", 200, Duration::from_secs(90));
    produce(&world.kafka.bootstrap(), &later, &keyed_messages(0..20, 2));
    world.wait_for_all(20, Duration::from_secs(60)).await;
    doka.stop();
    world.finish().await;
}

/// A paused partition is one falling behind, and nothing fetches it: its end is asked of the
/// broker, so the lag gauge keeps growing with what is produced while doka waits (the lag alert
/// depends on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_keeps_growing_while_fetching_is_paused() {
    let world = World::new(1, 1).await;
    let kinesis = proxy::FaultProxy::start(&world.ep.kinesis, proxy::Faults::default()).await;
    world.produce(&keyed_messages(0..50, 5));
    let mut doka = Doka::start(
        &world.yaml(Some(&kinesis.url)),
        &[("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", "100")],
    );
    let port = doka.endpoint_port();
    world.wait_for_all(50, Duration::from_secs(60)).await;
    let scrape = || get(port, "/metrics").expect("metrics").1;
    let wait_for = |what: &str, done: &dyn Fn(&str) -> bool| {
        eventually(what, Duration::from_secs(60), || {
            let metrics = scrape();
            if done(&metrics) {
                Ok(())
            } else {
                Err(format!("/metrics:\n{metrics}"))
            }
        })
    };
    wait_for("the first 50 committed", &|m| {
        sample_sum(m, "doka_partition_committed_offset", &[]) == 50.0
    });

    // Kinesis refuses: 100 records fill the bound and fetching pauses.
    kinesis.refuse_connections();
    world.produce(&keyed_messages(50..350, 5));
    wait_for("fetching paused", &|m| {
        sample_sum(m, "doka_fetch_paused", &[]) == 1.0
    });
    // Produced while paused: no fetch response tells doka of these.
    world.produce(&keyed_messages(350..850, 5));
    wait_for("lag = end - committed = 850 - 50", &|m| {
        sample_sum(m, "doka_consumer_lag_records", &[]) == 800.0
    });

    kinesis.accept_connections();
    world.wait_for_all(850, Duration::from_secs(120)).await;
    wait_for("lag back to 0", &|m| {
        sample_sum(m, "doka_consumer_lag_records", &[]) == 0.0
    });
    doka.stop();
    world.finish().await;
}

/// `http.enabled: false` is the off switch: doka delivers and listens nowhere — not even on
/// `http.listen`, which here is an address already taken (binding it would stop start-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_can_be_switched_off() {
    let world = World::new(1, 1).await;
    world.produce(&keyed_messages(0..20, 2));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = with_http(&world.yaml(None), port).replace("http:\n", "http:\n  enabled: false\n");
    let doka = Doka::start(&yaml, &[]);
    world.wait_for_all(20, Duration::from_secs(60)).await;
    let log = doka.stop();
    assert!(!log.contains("serving /metrics"), "{log}");
    assert_eq!(summary_count(&log, "delivered"), 20);
    drop(taken);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_in_use_stops_start_up_naming_the_key() {
    let world = World::new(1, 1).await;
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let doka = Doka::start(&with_http(&world.yaml(None), port), &[]);
    let (exit, log) = doka.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(2), "{log}");
    assert_mentions(
        &log,
        &["http.listen", &format!("127.0.0.1:{port}"), "in use"],
    );
    drop(taken);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_shows_no_secrets_or_settings() {
    let world = World::new(1, 1).await;
    world.produce(&keyed_messages(0..20, 2));
    let mut doka = Doka::start(&world.yaml(None), &[]);
    let port = doka.endpoint_port();
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60));
    world.wait_for_all(20, Duration::from_secs(60)).await;
    for path in ["/metrics", "/healthz", "/readyz", "/", "/config"] {
        let (_, body) = get(port, path).unwrap();
        for secret in [
            "test-external-id",
            ROLE_B,
            "source-secret",
            ACCOUNT_A_KEY,
            &world.kafka.bootstrap(),
        ] {
            assert!(!body.contains(secret), "{path} shows {secret}:\n{body}");
        }
    }
    assert_eq!(status(port, "/config"), Some(404));
    doka.stop();
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abusive_scraper_cannot_stall_delivery() {
    let world = World::new(2, 1).await;
    let mut doka = Doka::start(&world.yaml(None), &[]);
    let port = doka.endpoint_port();
    wait_for_status(port, "/readyz", 200, Duration::from_secs(60));
    // Far more idle connections than the endpoint keeps, none of them sending a byte.
    let idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() > doka::telemetry::http::MAX_CONNECTIONS);
    let flooded = Instant::now();
    world.produce(&keyed_messages(0..500, 10));
    // The endpoint drops what it cannot keep and times out the idle ones it kept once they
    // have sent no request for HEADER_READ_TIMEOUT: probes get through again while they are
    // all still open, well within a liveness probe's failure threshold (and far sooner than
    // CONNECTION_TIMEOUT, the most a connection may live).
    wait_for_status(
        port,
        "/healthz",
        200,
        doka::telemetry::http::HEADER_READ_TIMEOUT + Duration::from_secs(5),
    );
    assert!(
        flooded.elapsed() < doka::telemetry::http::CONNECTION_TIMEOUT,
        "{:?} after the flood",
        flooded.elapsed()
    );
    // And delivery went on all along.
    world.wait_for_all(500, Duration::from_secs(60)).await;
    drop(idle);
    doka.stop();
    world.finish().await;
}
