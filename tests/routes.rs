//! Routes: one doka process takes several topics to several destinations, each route with its own
//! AWS identity, endpoint and share of the in-flight bound. Every record is counted by its id, on
//! the stream it must reach and on the ones it must not.

mod support;

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use support::*;

/// A role in a third account (C). Only moto tells accounts of assumed roles apart, so account C's
/// stream lives in moto's Kinesis.
const ROLE_C: &str = "arn:aws:iam::333333333333:role/doka-writer-c";
const ACCOUNT_C: &str = "333333333333";

/// doka's config with `routes` (each a YAML flow mapping) and the shared sections of
/// [`DokaSetup`]: account B's role at moto's STS, kinesis-mock as the default Kinesis endpoint.
fn routes_yaml(
    bootstrap: &str,
    group: &str,
    ep: &Endpoints,
    max_in_flight_records: u64,
    routes: &[String],
) -> String {
    let routes: String = routes.iter().map(|r| format!("  - {r}\n")).collect();
    format!(
        r#"kafka:
  brokers: "{bootstrap}"
  group_id: {group}
  properties:
    fetch.wait.max.ms: 5
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
    topic.metadata.refresh.interval.ms: 1000
aws:
  region: {REGION}
  sts_endpoint: "{sts}"
  kinesis_endpoint: "{kinesis}"
  role_arn: "{ROLE_B}"
  external_id: test-external-id
  session_duration_secs: 900
  credential_refresh_margin_secs: 60
batch:
  linger_ms: 5
pipeline:
  commit_interval_ms: 100
  max_in_flight_records: {max_in_flight_records}
retry:
  initial_backoff_ms: 20
  max_backoff_ms: 500
http:
  listen: 127.0.0.1:0
routes:
{routes}"#,
        sts = ep.sts,
        kinesis = ep.kinesis,
    )
}

/// The stream holds every record of `ids` (copies allowed), each byte for byte as produced, and
/// no record of any other id. Returns the number of copies beyond the first.
fn assert_holds_exactly(
    stream: &str,
    records: &[StreamRecord],
    ids: Range<usize>,
    messages: &[(Vec<u8>, Vec<u8>)],
) -> usize {
    let mut copies = vec![0usize; ids.len()];
    for r in records {
        let id = message_id(&r.data);
        assert!(
            ids.contains(&id),
            "stream {stream} holds record {id}, which belongs to another route (expected ids {ids:?})"
        );
        let (key, value) = &messages[id - ids.start];
        assert_eq!(&r.data, value, "record {id}: data is the Kafka value");
        assert_eq!(
            r.partition_key.as_bytes(),
            key.as_slice(),
            "record {id}: partition key is the Kafka key"
        );
        copies[id - ids.start] += 1;
    }
    let missing: Vec<usize> = (0..ids.len())
        .filter(|&i| copies[i] == 0)
        .map(|i| i + ids.start)
        .collect();
    assert!(
        missing.is_empty(),
        "stream {stream} lacks {} records: {missing:?}",
        missing.len()
    );
    copies.iter().map(|c| c - 1).sum()
}

/// The stream does not exist for this client's account: DescribeStreamSummary answers
/// ResourceNotFound (not some other error) and ListStreams does not list it.
async fn assert_absent(client: &aws_sdk_kinesis::Client, stream: &str, whose: &str) {
    match client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
    {
        Ok(_) => panic!("stream {stream} exists in {whose}: only the assumed role may write"),
        Err(e) => {
            let e = e.into_service_error();
            assert!(
                e.is_resource_not_found_exception(),
                "DescribeStreamSummary of {stream} in {whose}: expected ResourceNotFound, got {e:?}"
            );
        }
    }
    assert!(
        !stream_names(client).await.iter().any(|s| s == stream),
        "ListStreams of {whose} lists {stream}"
    );
}

/// A mock cluster with a new topic of two partitions for each name: (cluster, bootstrap servers,
/// topics).
fn two_topics(names: [&str; 2]) -> (Kafka, String, [String; 2]) {
    let topics = names.map(unique);
    let kafka = Kafka::with_topics(&[(&topics[0], 2), (&topics[1], 2)]);
    let bootstrap = kafka.bootstrap();
    (kafka, bootstrap, topics)
}

/// One route's records: ids `ids` (over `keys` keys) produced to `topic`, bound for `stream`,
/// which `client` reads.
struct Sent {
    topic: String,
    stream: String,
    client: aws_sdk_kinesis::Client,
    ids: Range<usize>,
    messages: Vec<(Vec<u8>, Vec<u8>)>,
    ends: HashMap<i32, i64>,
}

impl Sent {
    fn produce(
        bootstrap: &str,
        topic: &str,
        client: &aws_sdk_kinesis::Client,
        stream: &str,
        ids: Range<usize>,
        keys: usize,
    ) -> Self {
        let messages = keyed_messages(ids.clone(), keys);
        let ends = end_offsets(&produce(bootstrap, topic, &messages));
        Self {
            topic: topic.to_owned(),
            stream: stream.to_owned(),
            client: client.clone(),
            ids,
            messages,
            ends,
        }
    }

    /// Waits until every record is in the stream (or panics after `timeout`), then until the
    /// group's offsets of the topic are committed to their ends (or panics after 30 s).
    async fn wait_delivered(&self, bootstrap: &str, group: &str, timeout: Duration) {
        wait_for_ids(&self.client, &self.stream, self.ids.clone(), timeout).await;
        wait_for_topic_committed(
            bootstrap,
            group,
            &self.topic,
            &self.ends,
            Duration::from_secs(30),
        )
        .await;
    }

    /// Reads the stream back: it holds exactly these records ([`assert_holds_exactly`]), and the
    /// group's offsets of the topic are committed to their ends. Returns (records read, copies).
    async fn assert_delivered(&self, bootstrap: &str, group: &str) -> (usize, usize) {
        let records = read_stream(&self.client, &self.stream).await;
        let copies = assert_holds_exactly(&self.stream, &records, self.ids.clone(), &self.messages);
        let partitions = self.ends.keys().max().map_or(0, |p| p + 1);
        assert_eq!(
            committed(bootstrap, group, &self.topic, partitions),
            self.ends,
            "committed offsets of {} are its ends",
            self.topic
        );
        (records.len(), copies)
    }

    async fn delete_stream(&self) {
        delete_stream(&self.client, &self.stream).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_reach_two_accounts_through_two_roles() {
    const N1: usize = 300;
    const N2: usize = 200;
    let ep = endpoints();
    // moto serves STS and Kinesis on one endpoint.
    let moto = ep.sts.clone();
    let (_kafka, bootstrap, [t1, t2]) = two_topics(["orders", "invoices"]);

    // S1 in account B at kinesis-mock; S2 in account C at moto, one shard (moto's Kinesis only
    // stays correct with one request at a time to a shard: the route has one lane).
    let s1 = unique("doka-route-b");
    let s2 = unique("doka-route-c");
    let b = account_b_kinesis(&ep).await;
    let c = kinesis_client_at(&moto, assume_role_credentials(&ep.sts, ROLE_C).await);
    create_stream(&b, &s1, 2).await;
    create_stream(&c, &s2, 1).await;

    let r1 = Sent::produce(&bootstrap, &t1, &b, &s1, 0..N1, 20);
    let r2 = Sent::produce(&bootstrap, &t2, &c, &s2, N1..N1 + N2, 20);
    assert!(
        r1.ends.len() == 2 && r2.ends.len() == 2,
        "both partitions of each topic hold records"
    );

    // The first route is named; the second takes its destination's name.
    let group = unique("doka-group");
    let yaml = routes_yaml(
        &bootstrap,
        &group,
        &ep,
        1000,
        &[
            format!("{{ name: to-b, topics: [{t1}], kinesis: {{ stream: {s1} }} }}"),
            format!(
                "{{ topics: [{t2}], kinesis: {{ stream: {s2} }}, lanes: 1, \
                 aws: {{ role_arn: \"{ROLE_C}\", kinesis_endpoint: \"{moto}\" }} }}"
            ),
        ],
    );
    let doka = Doka::start(&yaml, &[]);
    r1.wait_delivered(&bootstrap, &group, Duration::from_secs(60))
        .await;
    r2.wait_delivered(&bootstrap, &group, Duration::from_secs(60))
        .await;
    let log = doka.stop();

    // Read back after the stop: whatever doka sent is in by now.
    let (n1, d1) = r1.assert_delivered(&bootstrap, &group).await;
    let (n2, d2) = r2.assert_delivered(&bootstrap, &group).await;

    // Nothing went to account A under the same names, at either endpoint.
    assert_absent(&account_a_kinesis(&ep), &s1, "account A at kinesis-mock").await;
    assert_absent(&account_a_kinesis_at(&moto), &s2, "account A at moto").await;

    // Each route says which identity it writes as.
    let identities: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("target identity:"))
        .collect();
    let route_b = identities
        .iter()
        .find(|l| l.contains("to-b"))
        .unwrap_or_else(|| panic!("no target identity for route to-b:\n{log}"));
    assert_mentions(
        route_b,
        &[&format!(
            "arn:aws:sts::{ACCOUNT_B}:assumed-role/doka-writer/"
        )],
    );
    let route_c = identities
        .iter()
        .find(|l| l.contains(&s2))
        .unwrap_or_else(|| panic!("no target identity for route {s2}:\n{log}"));
    assert_mentions(
        route_c,
        &[&format!(
            "arn:aws:sts::{ACCOUNT_C}:assumed-role/doka-writer-c/"
        )],
    );
    println!(
        "route to-b: sent {N1} received {n1} duplicated {d1} lost 0 (account {ACCOUNT_B}); \
         route {s2}: sent {N2} received {n2} duplicated {d2} lost 0 (account {ACCOUNT_C})"
    );
    r1.delete_stream().await;
    r2.delete_stream().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_in_an_outage_does_not_stop_another() {
    const NA: usize = 1000;
    const NB: usize = 1000;
    // 100 records in flight per route.
    const BOUND: u64 = 200;
    const OUTAGE: Duration = Duration::from_secs(30);
    let ep = endpoints();
    let (_kafka, bootstrap, [ta, tb]) = two_topics(["orders", "payments"]);
    let sa = unique("doka-refused");
    let sb = unique("doka-open");
    let b = account_b_kinesis(&ep).await;
    create_stream(&b, &sa, 2).await;
    create_stream(&b, &sb, 2).await;
    // Route `stuck` reaches kinesis-mock through the proxy, route `flowing` directly.
    let proxy = proxy::FaultProxy::start(&ep.kinesis, proxy::Faults::default()).await;

    let group = unique("doka-group");
    let yaml = routes_yaml(
        &bootstrap,
        &group,
        &ep,
        BOUND,
        &[
            format!(
                "{{ name: stuck, topics: [{ta}], kinesis: {{ stream: {sa} }}, \
                 aws: {{ kinesis_endpoint: \"{}\" }} }}",
                proxy.url
            ),
            format!("{{ name: flowing, topics: [{tb}], kinesis: {{ stream: {sb} }} }}"),
        ],
    );
    let mut doka = Doka::start(&yaml, &[]);
    doka.wait_for_log("partitions assigned", 1, Duration::from_secs(60));

    proxy.refuse_connections();
    let refused = Instant::now();
    let stuck = Sent::produce(&bootstrap, &ta, &b, &sa, 0..NA, 40);
    let paused = doka.wait_for_line(&["fetching paused", "stuck"], Duration::from_secs(20));
    assert!(
        !paused.contains("flowing"),
        "the pause is route stuck's: {paused}"
    );
    let flowing = Sent::produce(&bootstrap, &tb, &b, &sb, NA..NA + NB, 40);
    assert!(
        stuck.ends.len() == 2 && flowing.ends.len() == 2,
        "both partitions of each topic hold records"
    );

    // All of route flowing's records arrive and are committed while route stuck is refused
    // (within OUTAGE, 30 s, each).
    flowing.wait_delivered(&bootstrap, &group, OUTAGE).await;
    let flowing_done = refused.elapsed();
    assert!(
        flowing_done < OUTAGE,
        "route flowing took {flowing_done:?}, as long as the outage"
    );

    // The rest of the 30 s: nothing of route stuck reaches its stream or is committed.
    let mut checks = 0;
    loop {
        assert!(
            committed(&bootstrap, &group, &ta, 2)
                .values()
                .all(|&o| o <= 0),
            "{ta} committed during the outage: {:?}",
            committed(&bootstrap, &group, &ta, 2)
        );
        assert!(
            read_stream(&b, &sa).await.is_empty(),
            "records reached {sa} through a refusing endpoint"
        );
        checks += 1;
        let left = OUTAGE.saturating_sub(refused.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_secs(2))).await;
    }
    proxy.accept_connections();

    let resumed = Instant::now();
    stuck
        .wait_delivered(&bootstrap, &group, Duration::from_secs(60))
        .await;
    let caught_up = resumed.elapsed();
    doka.wait_for_line(&["fetching resumed", "stuck"], Duration::from_secs(10));
    let log = doka.stop();
    assert!(
        log.contains("Connection refused") || log.contains("connection refused"),
        "the log says what went wrong:\n{log}"
    );

    let (na, da) = stuck.assert_delivered(&bootstrap, &group).await;
    let (nb, db) = flowing.assert_delivered(&bootstrap, &group).await;
    println!(
        "stuck refused {OUTAGE:?} ({checks} checks), caught up {caught_up:?} after: sent {NA} \
         received {na} duplicated {da} lost 0; flowing done {flowing_done:?} into the outage: \
         sent {NB} received {nb} duplicated {db} lost 0"
    );
    stuck.delete_stream().await;
    flowing.delete_stream().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_topic_matching_a_pattern_is_delivered() {
    const N1: usize = 200;
    const N2: usize = 200;
    const N3: usize = 100;
    let ep = endpoints();
    let prefix = unique("routed");
    let first = format!("{prefix}-first");
    let second = format!("{prefix}-second");
    // Contains a match of the pattern but is not one as a whole name.
    let other = format!("x{prefix}-other");
    let kafka = Kafka::new(&first, 2);
    let bootstrap = kafka.bootstrap();
    let stream = unique("doka-route-pattern");
    let b = account_b_kinesis(&ep).await;
    create_stream(&b, &stream, 1).await;

    let m1 = keyed_messages(0..N1, 20);
    let p1 = produce(&bootstrap, &first, &m1);
    let group = unique("doka-group");
    let yaml = routes_yaml(
        &bootstrap,
        &group,
        &ep,
        1000,
        &[format!(
            "{{ name: by-pattern, topic_pattern: \"{prefix}-.*\", kinesis: {{ stream: {stream} }} }}"
        )],
    );
    let mut doka = Doka::start(&yaml, &[]);
    doka.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    wait_for_ids(&b, &stream, 0..N1, Duration::from_secs(60)).await;

    // The non-matching topic exists and holds records before the matching one is created, so
    // the metadata refresh that finds the new topic finds it too.
    kafka.create_topic(&other, 1);
    let m3 = keyed_messages(N1 + N2..N1 + N2 + N3, 20);
    let p3 = produce(&bootstrap, &other, &m3);
    assert_eq!(p3.len(), N3);
    kafka.create_topic(&second, 2);
    let m2 = keyed_messages(N1..N1 + N2, 20);
    let p2 = produce(&bootstrap, &second, &m2);
    let created = Instant::now();
    wait_for_ids(&b, &stream, N1..N1 + N2, Duration::from_secs(45)).await;
    let picked_up = created.elapsed();
    let line = doka.wait_for_line(
        &[&format!("topic `{second}` matches topic_pattern")],
        Duration::from_secs(10),
    );
    assert_mentions(&line, &["by-pattern", &stream]);
    for (topic, placements) in [(&first, &p1), (&second, &p2)] {
        let ends = end_offsets(placements);
        wait_for_topic_committed(&bootstrap, &group, topic, &ends, Duration::from_secs(30)).await;
    }
    let log = doka.stop();

    let mut messages = m1.clone();
    messages.extend(m2.iter().cloned());
    let records = read_stream(&b, &stream).await;
    let duplicates = assert_holds_exactly(&stream, &records, 0..N1 + N2, &messages);
    assert!(
        committed(&bootstrap, &group, &other, 1).is_empty(),
        "{other} does not match the pattern: nothing of it is committed"
    );
    for line in log.lines().filter(|l| l.contains(&other)) {
        assert!(
            !line.contains("partitions assigned") && !line.contains("delivering"),
            "{other} does not match the pattern, yet: {line}"
        );
    }
    assert_eq!(committed(&bootstrap, &group, &second, 2), end_offsets(&p2));
    println!(
        "{second} picked up and delivered {picked_up:?} after it was created; sent {} received {} \
         duplicated {duplicates} lost 0; {N3} records of {other} not delivered",
        N1 + N2,
        records.len()
    );
    delete_stream(&b, &stream).await;
}

/// Two topic patterns that both match an existing topic cannot be told apart at load time; doka
/// says so at start-up, naming both routes, with the config exit code, and delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_patterns_matching_one_topic_stop_start_up() {
    let ep = endpoints();
    let prefix = unique("ovl");
    let topic = format!("{prefix}-x");
    let kafka = Kafka::new(&topic, 1);
    produce(&kafka.bootstrap(), &topic, &keyed_messages(0..5, 2));
    let yaml = routes_yaml(
        &kafka.bootstrap(),
        &unique("doka-group"),
        &ep,
        200,
        &[
            format!(
                "{{ name: first, topic_pattern: \"{prefix}-.*\", kinesis: {{ stream: {} }} }}",
                unique("s1")
            ),
            format!(
                "{{ name: second, topic_pattern: \".*-x\", kinesis: {{ stream: {} }} }}",
                unique("s2")
            ),
        ],
    );
    let doka = Doka::start(&yaml, &[]);
    let (status, log) = doka.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "topic `{topic}` matches route `first` and route `second`"
        )),
        "{log}"
    );
    assert_eq!(summary_count(&log, "delivered"), 0, "{log}");
}
