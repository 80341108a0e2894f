//! How old the data is, what the process costs, and how many series a topic pattern makes, read
//! from `/metrics` of a real run: the record-age histogram against records of known age, the
//! oldest-undelivered gauge through a Kinesis outage, the standard `process_*` metrics against
//! /proc, and the `topic` label bound against a pattern matching more topics than it.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use doka::telemetry::metrics::{MAX_TOPIC_LABELS, OTHER_TOPICS};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::prometheus::{Prometheus, http_get, sample_sum};
use support::*;

fn scrape(port: u16) -> String {
    http_get(port, "/metrics").expect("doka serves /metrics").1
}

/// Scrapes until `done` holds for the exposition, or panics after `timeout` showing it.
fn wait_for_scrape(
    port: u16,
    what: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    eventually(what, timeout, || {
        let metrics = scrape(port);
        if done(&metrics) {
            Ok(metrics)
        } else {
            Err(format!("/metrics:\n{metrics}"))
        }
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Records produced with CreateTime two hours and ten seconds ago land in the buckets, count and
/// sum that their ages say, each record observed exactly once; with everything delivered the
/// oldest-undelivered gauge is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_age_histogram_agrees_with_records_of_known_age() {
    const OLD: usize = 40;
    const RECENT: usize = 60;
    const N: usize = OLD + RECENT;
    const TWO_HOURS_MS: i64 = 2 * 3600 * 1000;
    const TEN_SECONDS_MS: i64 = 10 * 1000;
    let world = World::new(2, 1).await;
    let messages = keyed_messages(0..N, 10);
    let produced_at = now_ms();
    let started = Instant::now();
    produce_built(
        &world.kafka.bootstrap(),
        &[],
        &world.topic,
        N,
        |i, record| {
            let (key, value) = &messages[i];
            let age = if i < OLD {
                TWO_HOURS_MS
            } else {
                TEN_SECONDS_MS
            };
            record
                .key(key.as_slice())
                .payload(value.as_slice())
                .timestamp(produced_at - age)
        },
    );
    let mut doka = Doka::start(&world.yaml(None), &[]);
    let port = doka.endpoint_port();
    let records = world.wait_for_all(N, Duration::from_secs(120)).await;
    assert_every_record(N, &records, Copies::AtLeastOnce);
    let route = r#"route="default""#;
    let metrics = wait_for_scrape(
        port,
        "every delivery observed",
        Duration::from_secs(30),
        |m| sample_sum(m, "doka_records_delivered_total", &[route]) >= N as f64,
    );
    // Every age observed lies between its age at production and that plus the time since.
    let slack = started.elapsed().as_secs_f64() + 1.0;
    let bucket = |le: &str| {
        sample_sum(
            &metrics,
            "doka_record_age_seconds_bucket",
            &[route, &format!("le=\"{le}\"")],
        )
    };
    assert_eq!(
        sample_sum(&metrics, "doka_record_age_seconds_count", &[route]),
        sample_sum(&metrics, "doka_records_delivered_total", &[route]),
        "each delivered record observed once"
    );
    assert_eq!(bucket("+Inf"), N as f64);
    assert_eq!(bucket("5"), 0.0, "nothing younger than 10 s");
    assert_eq!(
        bucket("3600"),
        RECENT as f64,
        "the 10 s old ones, not the 2 h old ones"
    );
    assert_eq!(bucket("86400"), N as f64);
    let sum = sample_sum(&metrics, "doka_record_age_seconds_sum", &[route]);
    let least = (OLD as f64) * 7200.0 + (RECENT as f64) * 10.0;
    assert!(
        sum >= least && sum <= least + N as f64 * slack,
        "sum of ages {sum}, expected {least} plus at most {slack} s per record"
    );
    if slack < 20.0 {
        assert_eq!(bucket("30"), RECENT as f64, "delivered within {slack} s");
    }
    wait_for_scrape(port, "nothing undelivered", Duration::from_secs(10), |m| {
        sample_sum(m, "doka_oldest_undelivered_record_age_seconds", &[route]) == 0.0
    });
    doka.stop();
    world.finish().await;
}

/// While Kinesis refuses connections, the age of the oldest record taken and not delivered
/// grows with the clock (nothing is acknowledged, yet the gauge moves); once Kinesis takes
/// records again, every record is delivered and the gauge returns to 0. A real Prometheus server
/// scrapes it, as the alert on it would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_undelivered_age_grows_during_an_outage_and_returns_to_zero() {
    const FIRST: usize = 20;
    const N: usize = 220;
    let world = World::new(2, 1).await;
    let kinesis = proxy::FaultProxy::start(&world.ep.kinesis, proxy::Faults::default()).await;
    world.produce(&keyed_messages(0..FIRST, 5));
    let mut doka = Doka::start(&world.yaml(Some(&kinesis.url)), &[]);
    let port = doka.endpoint_port();
    let prometheus = Prometheus::start(&[port]);
    world.wait_for_all(FIRST, Duration::from_secs(60)).await;
    let gauge = r#"doka_oldest_undelivered_record_age_seconds{route="default"}"#;
    prometheus.wait_for(gauge, 0.0, Duration::from_secs(30));

    kinesis.refuse_connections();
    world.produce(&keyed_messages(FIRST..N, 5));
    prometheus.wait_for(&format!("{gauge} > bool 3"), 1.0, Duration::from_secs(60));
    let seen = prometheus.scalar(gauge).expect("scraped");
    prometheus.wait_for(
        &format!("{gauge} > bool {}", seen + 3.0),
        1.0,
        Duration::from_secs(60),
    );
    assert_eq!(
        sample_sum(&scrape(port), "doka_records_delivered_total", &[]),
        FIRST as f64,
        "nothing was acknowledged meanwhile: the gauge grew by itself"
    );

    kinesis.accept_connections();
    let records = world.wait_for_all(N, Duration::from_secs(120)).await;
    assert_every_record(N, &records, Copies::AtLeastOnce);
    prometheus.wait_for(gauge, 0.0, Duration::from_secs(30));
    prometheus.wait_for(
        r#"sum(doka_record_age_seconds_count{route="default"})"#,
        N as f64,
        Duration::from_secs(30),
    );
    // The outage's records waited at least as long as the gauge showed.
    let slow = prometheus
        .scalar(r#"sum(doka_record_age_seconds_count{route="default"}) - sum(doka_record_age_seconds_bucket{route="default",le="5"})"#)
        .expect("scraped");
    assert!(
        slow >= 1.0,
        "records delivered after the outage are older than 5 s"
    );
    doka.stop();
    world.finish().await;
}

/// The standard process metrics are served, and agree with what /proc says of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_are_served_with_sane_values() {
    let world = World::new(1, 1).await;
    world.produce(&keyed_messages(0..50, 5));
    let mut doka = Doka::start(&world.yaml(None), &[]);
    let port = doka.endpoint_port();
    world.wait_for_all(50, Duration::from_secs(60)).await;
    let metrics = scrape(port);
    let value = |name: &str| {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} is served:\n{metrics}"
        );
        sample_sum(&metrics, name, &[])
    };
    let rss = value("process_resident_memory_bytes");
    let peak = peak_rss_kib(doka.pid()) as f64 * 1024.0;
    assert!(
        rss > 1_000_000.0 && rss <= peak,
        "RSS {rss} bytes: above 1 MB and at most the peak /proc reports ({peak})"
    );
    let fds = value("process_open_fds");
    let max_fds = value("process_max_fds");
    assert!(fds >= 3.0 && fds < max_fds, "{fds} open of {max_fds}");
    // The crate's collector counts whole seconds of CPU, as /proc/<pid>/stat does in ticks.
    let cpu = value("process_cpu_seconds_total");
    let used = cpu_seconds(doka.pid());
    assert!(
        cpu <= used && cpu >= used.floor() - 1.0,
        "{cpu} s of CPU, /proc says {used} s"
    );
    assert!(value("process_virtual_memory_bytes") >= rss);
    assert!(value("process_threads") >= 2.0);
    let started = value("process_start_time_seconds");
    let now = now_ms() as f64 / 1000.0;
    assert!(
        started <= now && started > now - 600.0,
        "started at {started}, now {now}"
    );
    doka.stop();
    world.finish().await;
}

/// CPU seconds (user and system) the process used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // After the command name in parentheses: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    let per_second: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    ticks / per_second
}

/// A topic pattern matching more topics than the bound: the first topics counted keep their own
/// `topic` series, the rest are counted under one overflow series, and the totals stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_over_many_topics_keeps_the_topic_series_bounded() {
    const TOPICS: usize = MAX_TOPIC_LABELS + 20;
    const PER_TOPIC: usize = 5;
    const N: usize = TOPICS * PER_TOPIC;
    let ep = endpoints();
    let prefix = unique("many");
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("{prefix}-{i:03}")).collect();
    let with_partitions: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
    let kafka = Kafka::with_topics(&with_partitions);
    let bootstrap = kafka.bootstrap();
    let messages = keyed_messages(0..N, 50);
    // One producer for every topic (one per topic takes a second each).
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (i, (key, value)) in messages.iter().enumerate() {
        let topic = &topics[i / PER_TOPIC];
        producer
            .send(BaseRecord::to(topic).key(key).payload(value))
            .expect("queued");
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("every record produced");
    let stream = unique("doka-many-topics");
    let b = account_b_kinesis(&ep).await;
    create_stream(&b, &stream, 1).await;
    let group = unique("doka-group");
    let setup = DokaSetup {
        bootstrap: &bootstrap,
        group: &group,
        topic: "unused",
        stream: &stream,
        sts: &ep.sts,
        kinesis: &ep.kinesis,
    };
    let route = format!(
        "routes:\n  - name: many\n    topic_pattern: \"{prefix}-.*\"\n    kinesis: {{ stream: {stream} }}\n"
    );
    let yaml = setup
        .yaml()
        .replace("  topics: [unused]\n", "")
        .replace(&format!("kinesis:\n  stream: {stream}\n"), &route);
    assert!(
        yaml.contains("topic_pattern") && !yaml.contains("unused"),
        "{yaml}"
    );
    let mut doka = Doka::start(&yaml, &[]);
    let port = doka.endpoint_port();
    wait_for_ids(&b, &stream, 0..N, Duration::from_secs(180)).await;
    let metrics = wait_for_scrape(
        port,
        "every record consumed",
        Duration::from_secs(30),
        |m| sample_sum(m, "doka_records_consumed_total", &[]) == N as f64,
    );
    let series: Vec<(&str, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("doka_records_consumed_total{topic=\""))
        .map(|l| {
            let (topic, rest) = l.split_once('"').unwrap();
            (topic, rest.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    let own: Vec<&(&str, f64)> = series.iter().filter(|(t, _)| *t != OTHER_TOPICS).collect();
    assert_eq!(own.len(), MAX_TOPIC_LABELS, "{series:?}");
    assert!(
        own.iter()
            .all(|(t, v)| topics.iter().any(|n| n == t) && *v == PER_TOPIC as f64)
    );
    let other = series.iter().find(|(t, _)| *t == OTHER_TOPICS);
    assert_eq!(
        other.map(|(_, v)| *v),
        Some(((TOPICS - MAX_TOPIC_LABELS) * PER_TOPIC) as f64),
        "the topics past the bound, counted together"
    );
    // Per-partition gauges: one per assigned partition, no more (set within a second).
    let lag_series = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("doka_consumer_lag_records{"))
            .count()
    };
    let metrics = wait_for_scrape(
        port,
        "a lag series per partition",
        Duration::from_secs(10),
        |m| lag_series(m) >= TOPICS,
    );
    assert_eq!(lag_series(&metrics), TOPICS);
    doka.stop();
    delete_stream(&b, &stream).await;
}
