//! The Kafka side alone: how fast one librdkafka consumer, configured as doka configures its
//! own, reads a topic from the benchmark broker. What doka does cannot be faster than this.
//!
//! `bench_consume --brokers 127.0.0.1:9092 --topic bench --records 1000000 [--set key=value]…`
//! prints `{"records":…,"seconds":…,"records_per_sec":…}` timed from the first record.
//! With `--committed-of GROUP` it prints that group's committed offsets instead (run.py's crash
//! measurement).

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 0)]
    records: u64,
    /// Commit the consumed position this often (0: never), as doka does every second.
    #[arg(long, default_value_t = 0)]
    commit_every_ms: u64,
    /// Instead of consuming: print this group's committed offsets for the topic and exit.
    #[arg(long)]
    committed_of: Option<String>,
    /// Extra librdkafka properties, key=value.
    #[arg(long = "set")]
    properties: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("bench-consume-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "10000")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "16384");
    for p in &args.properties {
        let (k, v) = p.split_once('=').expect("key=value");
        config.set(k, v);
    }
    if let Some(group) = &args.committed_of {
        config.set("group.id", group);
    }
    let consumer: BaseConsumer = config.create()?;
    if args.committed_of.is_some() {
        let metadata = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition(&args.topic, p.id());
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        let mut offsets = serde_json::Map::new();
        // Per partition: the records above the committed offset its metadata names as delivered
        // (doka's commit metadata, src/pipeline/delivered.rs).
        let mut named = serde_json::Map::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            };
            let metadata = e.metadata();
            let fingerprint = metadata.split(':').nth(1).unwrap_or_default();
            let delivered =
                doka::pipeline::delivered::decode(metadata.as_bytes(), fingerprint, offset)
                    .unwrap_or_default();
            offsets.insert(e.partition().to_string(), offset.into());
            named.insert(e.partition().to_string(), delivered.count().into());
        }
        println!(
            "{}",
            serde_json::json!({ "committed": offsets, "named_in_metadata": named })
        );
        return Ok(());
    }
    consumer.subscribe(&[&args.topic])?;
    let mut first = None;
    let mut seen = 0u64;
    let mut last_commit = Instant::now();
    while seen < args.records {
        if args.commit_every_ms > 0
            && last_commit.elapsed() >= Duration::from_millis(args.commit_every_ms)
        {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    let seconds = first.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({"records": seen, "seconds": seconds, "records_per_sec": seen as f64 / seconds})
    );
    Ok(())
}
