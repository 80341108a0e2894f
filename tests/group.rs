//! Scaling out through the consumer group: members join and die mid-run, nothing is lost, and
//! what a killed member re-sends is bounded by what it had in flight.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_a_fourth_joining_and_one_killed_lose_nothing() {
    const N: usize = 8_000;
    const BOUND: usize = 100;
    const PARTITIONS: i32 = 8;
    let world = World::new(PARTITIONS, 2).await;
    let messages = keyed_messages(0..N, 500);
    let placements = world.produce(&messages);
    // The stream takes 200 records/s: the run lasts ~40 s on any machine, so the fourth member
    // joins and the victim dies mid-run.
    let proxy = proxy::FaultProxy::slowed(&world.ep.kinesis, 200.0).await;
    let yaml = world.yaml(Some(&proxy.url));
    let bound = BOUND.to_string();
    // Small batches, one lane and a small bound: the run lasts long enough for the group to
    // change under it, and a killed member has at most BOUND records in flight.
    let slow = [
        ("DOKA_BATCH__MAX_RECORDS", "20"),
        ("DOKA_PIPELINE__LANES", "1"),
        ("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", bound.as_str()),
        ("DOKA_PIPELINE__COMMIT_INTERVAL_MS", "200"),
    ];

    let mut members: Vec<Doka> = (0..3).map(|_| Doka::start(&yaml, &slow)).collect();
    for member in &mut members {
        member.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    }
    wait_for_records(&world.b, &world.stream, 500, Duration::from_secs(60)).await;

    let mut fourth = Doka::start(&yaml, &slow);
    fourth.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    assert_committed_were_delivered(&world, PARTITIONS, &placements).await;

    // One of the first three dies without a word; the group notices after the session timeout.
    let victim = members.remove(1);
    let victim_log = victim.kill();
    // Offsets first, then the stream: what was delivered and not named by the last commit at the
    // kill is what at-least-once may send again (the dead member's partitions restart from their
    // commits, skipping what the commits' metadata names).
    let commit_at_kill = last_commit(
        &world.kafka.bootstrap(),
        &world.group,
        &world.topic,
        PARTITIONS,
    );
    let at_kill = read_stream(&world.b, &world.stream).await;
    assert!(
        tally(N, &at_kill).0.len() > N / 10,
        "the kill must happen mid-run"
    );
    let mut delivered_at_kill = vec![false; N];
    for r in &at_kill {
        delivered_at_kill[message_id(&r.data)] = true;
    }
    // Delivered and not named by the last commit (its offset or its metadata).
    let uncommitted_at_kill = placements
        .iter()
        .enumerate()
        .filter(|(id, p)| delivered_at_kill[*id] && !covered(&commit_at_kill, p))
        .count();
    members.push(fourth);

    let records = world.wait_for_all(N, Duration::from_secs(300)).await;
    // Running members commit what they delivered (stopping them one by one starts rebalances,
    // which refuse the leavers' last commits).
    world
        .wait_for_committed(&end_offsets(&placements), Duration::from_secs(60))
        .await;
    for member in members {
        member.stop();
    }
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    // Re-sent at most: what was delivered and not named by the last commit at the kill, plus
    // what the dead member had in flight (at most BOUND), plus as much again for the rebalances
    // that follow.
    assert!(
        duplicates <= uncommitted_at_kill + 2 * BOUND,
        "{duplicates} duplicates; {uncommitted_at_kill} delivered but uncommitted at the kill, \
         in-flight bound {BOUND}.\n{victim_log}"
    );
    println!(
        "4 members (one joined, one killed): sent {N} received {} duplicated {duplicates} lost 0; \
         {uncommitted_at_kill} delivered but uncommitted at the kill",
        records.len()
    );
    world.finish().await;
}

/// A member stopped while the group hands it more partitions exits cleanly.
///
/// librdkafka 2.12 can hang in close when a cooperative rebalance assigns partitions to a
/// closing member (confluentinc/librdkafka#4527, #4792); doka leaves the group before it closes.
/// Here one member is stopping, held up by undeliverable records, when another dies and the group
/// gives the stopping member a share of the dead one's partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopping_while_partitions_are_assigned_to_it_exits_cleanly() {
    const N: usize = 4_000;
    const PARTITIONS: i32 = 8;
    let world = World::new(PARTITIONS, 2).await;
    let messages = keyed_messages(0..N, 500);
    let placements = world.produce(&messages);
    // The stream takes 300 records/s until the end: no member can deliver all of its records
    // before every request fails (a fast member would otherwise have nothing left in flight).
    let proxy = proxy::FaultProxy::slowed(&world.ep.kinesis, 300.0).await;
    let yaml = world.yaml(Some(&proxy.url));
    let slow = [
        ("DOKA_BATCH__MAX_RECORDS", "20"),
        ("DOKA_PIPELINE__LANES", "1"),
        ("DOKA_PIPELINE__MAX_IN_FLIGHT_RECORDS", "100"),
        ("DOKA_RETRY__MAX_BACKOFF_MS", "1000"),
    ];
    let mut dying = Doka::start(&yaml, &slow);
    let mut stopping = Doka::start(&yaml, &slow);
    let mut staying = Doka::start(&yaml, &slow);
    for member in [&mut dying, &mut stopping, &mut staying] {
        member.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    }
    wait_for_records(&world.b, &world.stream, 500, Duration::from_secs(60)).await;

    // Every request fails: the stopping member waits for its records in flight, not polling
    // Kafka, while the group reassigns the dead member's partitions after the session timeout.
    proxy.faults.lock().unwrap().error_every = Some(1);
    // "request failed, retrying" or, after throttled attempts, "request failed again".
    stopping.wait_for_log("request failed", 1, Duration::from_secs(30));
    stopping.signal_stop();
    stopping.wait_for_log(
        "stopping: waiting for records in flight",
        1,
        Duration::from_secs(30),
    );
    let _ = dying.kill();
    staying.wait_for_log("partitions assigned", 2, Duration::from_secs(60));
    {
        let mut faults = proxy.faults.lock().unwrap();
        faults.error_every = None;
        faults.capacity_per_sec = None;
    }

    let (status, log) = stopping.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("left the consumer group"), "{log}");

    let records = world.wait_for_all(N, Duration::from_secs(300)).await;
    staying.stop();
    let duplicates = world.assert_delivered(&records, &placements, Copies::AtLeastOnce);
    println!(
        "member stopped while partitions were assigned to it: sent {N} received {} duplicated {duplicates} lost 0",
        records.len()
    );
    world.finish().await;
}
