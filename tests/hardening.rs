//! What a crash, a refused commit or a panic may cost: a member killed while one request hangs
//! leaves in its last commit's metadata the records delivered above the committed offset, and
//! the next owner skips exactly those (or, for another destination or damaged metadata, sends
//! them all); a commit refused during a rebalance is reported as not committed and left to the
//! new owner; a panic ends doka at once with code 70.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::prometheus::{http_get, sample_sum};
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// The hanging request stays in flight: no timeout, no retry before the kill.
const ENV: [(&str, &str); 1] = [("DOKA_KINESIS__REQUEST_TIMEOUT_MS", "300000")];

fn last_commit(world: &World) -> LastCommit {
    support::last_commit(
        &world.kafka.bootstrap(),
        &world.group,
        &world.topic,
        world.partitions,
    )
}

/// What a kill left behind.
struct Crashed {
    /// Records the stream accepted before the kill.
    acked: HashSet<usize>,
    /// Of those, the ones above their partition's committed offset (named only in the metadata).
    above: usize,
    /// The last commit, read after the kill.
    commit: LastCommit,
}

/// Runs doka until the request carrying `Faults::hold_key` hangs, every other record is
/// delivered, and the last commit names every delivered record; then SIGKILLs it.
async fn crash_with_a_hanging_request(
    world: &World,
    proxy: &proxy::FaultProxy,
    yaml: &str,
    placements: &[Placement],
) -> Crashed {
    let n = placements.len();
    let mut doka = Doka::start(yaml, &ENV);
    let port = doka.endpoint_port();
    let what = "one request hanging, every other record delivered and named by the last commit";
    eventually_async(what, WAIT, Duration::from_millis(200), async || {
        let held = proxy.counters.held_requests.load(Ordering::SeqCst);
        // Every request but the held ones answered: nothing else in flight at the kill.
        let open = proxy.counters.open_requests.load(Ordering::SeqCst);
        let acked = proxy.counters.acked_set();
        let metrics = http_get(port, "/metrics")
            .map(|(_, m)| m)
            .unwrap_or_default();
        let in_flight = sample_sum(&metrics, "doka_in_flight_records", &[]) as usize;
        let commit = last_commit(world);
        let uncovered = acked
            .iter()
            .filter(|&&id| !covered(&commit, &placements[id]))
            .count();
        (held > 0 && open == held && acked.len() + in_flight == n && uncovered == 0)
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "held requests {held}, open {open}, acked {}, in flight {in_flight}, acked but \
                     not in the last commit {uncovered}",
                    acked.len()
                )
            })
    })
    .await;
    doka.kill();
    let acked = proxy.counters.acked_set();
    let commit = last_commit(world);
    let above = acked
        .iter()
        .filter(|&&id| {
            let p = &placements[id];
            commit
                .get(&p.partition)
                .is_some_and(|(offset, _)| p.offset >= *offset)
        })
        .count();
    Crashed {
        acked,
        above,
        commit,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_skips_exactly_what_the_killed_member_delivered_above_its_commit() {
    let world = World::new(3, 4).await;
    let hold = proxy::Faults {
        hold_key: Some("key-3"),
        ..Default::default()
    };
    let proxy = proxy::FaultProxy::start(&world.ep.kinesis, hold).await;
    let yaml = world.yaml(Some(&proxy.url));
    let n = 3_000;
    let placements = world.produce(&keyed_messages(0..n, 20));

    let crashed = crash_with_a_hanging_request(&world, &proxy, &yaml, &placements).await;
    assert!(
        crashed.above > 0,
        "the hanging request held the committed offsets below delivered records"
    );
    println!(
        "killed with {} records delivered, {} of them above the committed offsets",
        crashed.acked.len(),
        crashed.above
    );

    proxy.set_faults(proxy::Faults::default());
    let mut doka = Doka::start(&yaml, &ENV);
    let port = doka.endpoint_port();
    let records = world.wait_for_all(n, WAIT).await;
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    let metrics = http_get(port, "/metrics").unwrap().1;
    let skipped = sample_sum(&metrics, "doka_records_skipped_as_delivered_total", &[]);
    let log = doka.stop();
    // The hanging request never reached the stream: every record is in it exactly once.
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    assert_eq!(
        duplicates, 0,
        "records delivered before the kill were sent again: {log}"
    );
    assert_eq!(skipped as usize, crashed.above, "{log}");
    assert!(
        log.contains("were delivered already: they are skipped"),
        "{log}"
    );
    world.finish().await;
}

/// `n` records over 2 partitions, a member killed while a request hangs
/// ([`crash_with_a_hanging_request`]); the proxy passes everything again afterwards.
async fn crashed_while_a_request_hangs(
    n: usize,
) -> (World, proxy::FaultProxy, String, Vec<Placement>, Crashed) {
    let world = World::new(2, 2).await;
    let hold = proxy::Faults {
        hold_key: Some("key-3"),
        ..Default::default()
    };
    let proxy = proxy::FaultProxy::start(&world.ep.kinesis, hold).await;
    let yaml = world.yaml(Some(&proxy.url));
    let placements = world.produce(&keyed_messages(0..n, 20));
    let crashed = crash_with_a_hanging_request(&world, &proxy, &yaml, &placements).await;
    assert!(
        crashed.above > 0,
        "records delivered above the committed offsets"
    );
    proxy.set_faults(proxy::Faults::default());
    (world, proxy, yaml, placements, crashed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_destination_gets_every_record_above_the_commit() {
    let n = 1_000;
    let (world, _proxy, yaml, placements, crashed) = crashed_while_a_request_hangs(n).await;

    // The route now writes to another stream: the metadata names records delivered to the old
    // one, so none of them may be skipped.
    let other = unique("doka-moved");
    create_stream(&world.b, &other, 2).await;
    let moved = yaml.replace(
        &format!("stream: {}", world.stream),
        &format!("stream: {other}"),
    );
    assert_ne!(moved, yaml);
    let mut doka = Doka::start(&moved, &ENV);
    let port = doka.endpoint_port();
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    let metrics = http_get(port, "/metrics").unwrap().1;
    let log = doka.stop();
    let expected: HashSet<usize> = (0..n)
        .filter(|&id| {
            let p = &placements[id];
            p.offset >= crashed.commit[&p.partition].0
        })
        .collect();
    let arrived: Vec<usize> = read_stream(&world.b, &other)
        .await
        .iter()
        .map(|r| message_id(&r.data))
        .collect();
    let arrived_set: HashSet<usize> = arrived.iter().copied().collect();
    assert_eq!(arrived.len(), arrived_set.len(), "each record once");
    assert_eq!(
        arrived_set, expected,
        "every record above the committed offsets"
    );
    assert_eq!(
        sample_sum(&metrics, "doka_records_skipped_as_delivered_total", &[]),
        0.0
    );
    assert!(log.contains("written for another destination"), "{log}");
    delete_stream(&world.b, &other).await;
    world.finish().await;
}

/// Replaces the group's committed metadata with `damage(metadata)`, keeping the offsets: joins
/// the group as a member (the broker takes commits from members only), commits, leaves.
fn rewrite_metadata(world: &World, damage: impl Fn(&str) -> String) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let commits = committed_with_metadata(
        &world.kafka.bootstrap(),
        &world.group,
        &world.topic,
        world.partitions,
    );
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", world.kafka.bootstrap())
        .set("group.id", &world.group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&world.topic]).unwrap();
    // The killed member's session expires first (6 s), then the group assigns this one.
    eventually(
        "the group to assign the topic to the test's member",
        WAIT,
        || {
            let _ = consumer.poll(Duration::from_millis(100));
            let assigned = consumer.assignment().unwrap().count();
            (assigned == world.partitions as usize).then_some(())
        },
    );
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (partition, (offset, metadata)) in &commits {
        let mut entry = tpl.add_partition(&world.topic, *partition);
        entry.set_offset(rdkafka::Offset::Offset(*offset)).unwrap();
        entry.set_metadata(damage(metadata));
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    consumer.unsubscribe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_metadata_sends_every_record_above_the_commit_again() {
    let n = 1_000;
    let (world, proxy, yaml, placements, crashed) = crashed_while_a_request_hangs(n).await;
    // Cut short in the middle of its runs (as a tool that truncates metadata would).
    rewrite_metadata(&world, |m| {
        if m.is_empty() {
            String::new()
        } else {
            m[..m.len() - 3].to_owned()
        }
    });
    let before = proxy.counters.acked();
    let mut doka = Doka::start(&yaml, &ENV);
    let port = doka.endpoint_port();
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    let metrics = http_get(port, "/metrics").unwrap().1;
    let log = doka.stop();
    // Everything above the committed offsets was sent again, what was delivered included.
    let acked = proxy.counters.acked_ids.lock().unwrap()[before..].to_vec();
    let resent: HashSet<usize> = acked
        .iter()
        .copied()
        .filter(|id| crashed.acked.contains(id))
        .collect();
    assert_eq!(resent.len(), crashed.above, "{log}");
    assert_eq!(
        sample_sum(&metrics, "doka_records_skipped_as_delivered_total", &[]),
        0.0
    );
    assert!(log.contains("its metadata is unreadable"), "{log}");
    let records = world.wait_for_all(n, WAIT).await;
    world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_during_a_rebalance_is_reported_and_left_to_the_new_owner() {
    let world = World::new(4, 2).await;
    // A long commit interval for the first member: its revoke's commit is the first one after
    // the refusal is set. The second commits often (its first commit comes after the revoke).
    let env = [("DOKA_PIPELINE__COMMIT_INTERVAL_MS", "600000")];
    let yaml = world.yaml(None);
    let placements = world.produce(&keyed_messages(0..400, 20));
    let mut first = Doka::start(&yaml, &env);
    first.wait_for_log("partitions assigned", 1, WAIT);
    world.wait_for_all(400, WAIT).await;
    // Delivered, not yet committed: a second member takes partitions from the first, whose
    // commit of them the broker refuses.
    world.kafka.refuse_next_commits(1);
    let mut second = Doka::start(&yaml, &[]);
    let refused = first.wait_for_line(
        &[
            "the broker refused their commit while the group rebalances",
            "not committed",
        ],
        WAIT,
    );
    // That revoke, the first member's only one so far, is not called committed.
    let so_far = first.log_text();
    assert!(!so_far.contains("revoked and committed"), "{so_far}");
    second.wait_for_log("partitions assigned", 1, WAIT);
    // The second member re-sends and commits the partitions it took (the first holds the
    // others until it stops).
    let ends = end_offsets(&placements);
    let what = "the second member to commit the partitions it took";
    eventually(what, WAIT, || {
        let commit = world.committed(world.partitions);
        let at_end = ends
            .iter()
            .filter(|(p, end)| commit.get(*p) == Some(*end))
            .count();
        (at_end >= 2).then_some(())
    });
    let log_second = second.stop();
    let log_first = first.stop();
    world.wait_for_committed(&ends, WAIT).await;
    let records = world.wait_for_all(400, WAIT).await;
    world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    // Only records of the partitions whose commit was refused came twice.
    let named: HashSet<i32> = regex::Regex::new(r"\[(\d+)\]@")
        .unwrap()
        .captures_iter(&refused)
        .map(|c| c[1].parse().unwrap())
        .collect();
    assert!(!named.is_empty(), "{refused}");
    let (_, duplicates) = tally(400, &records);
    let in_named = placements
        .iter()
        .filter(|p| named.contains(&p.partition))
        .count();
    assert!(
        duplicates <= in_named,
        "{duplicates} copies, {in_named} records in {named:?}\n{log_first}\n{log_second}"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_doka_at_once_with_code_70_and_commits_nothing_more() {
    for place in ["lane", "consumer"] {
        let world = World::new(2, 2).await;
        let yaml = world.yaml(None);
        let placements = world.produce(&keyed_messages(0..200, 10));
        let started = Instant::now();
        let doka = Doka::start(&yaml, &[("TEST_PANIC_IN_DOKA", place)]);
        // Well under the 30 s shutdown timeout a graceful stop would wait for the lost records.
        let (status, log) = doka.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(70), "{place}: {log}");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(log.contains("doka panicked"), "{log}");
        assert!(
            log.contains(&format!("TEST_PANIC_IN_DOKA={place}")),
            "{log}"
        );
        // Nothing committed past what the stream has; the restart delivers everything.
        let committed = world.committed(2);
        let arrived: HashSet<usize> = read_stream(&world.b, &world.stream)
            .await
            .iter()
            .map(|r| message_id(&r.data))
            .collect();
        for (id, p) in placements.iter().enumerate() {
            if committed.get(&p.partition).is_some_and(|&c| p.offset < c) {
                assert!(
                    arrived.contains(&id),
                    "{place}: record {id} committed, not delivered"
                );
            }
        }
        let doka = Doka::start(&yaml, &[]);
        world
            .wait_for_committed(&end_offsets(&placements), WAIT)
            .await;
        doka.stop();
        let records = world.wait_for_all(200, WAIT).await;
        world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
        world.finish().await;
    }
}
