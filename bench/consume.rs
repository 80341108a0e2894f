//! The Kafka side alone: how fast one librdkafka consumer, configured as doka configures its
//! own, reads a topic from the benchmark broker. What doka does cannot be faster than this.
//!
//! `bench_consume --brokers 127.0.0.1:9092 --topic bench --records 1000000 [--set key=value]…`
//! prints `{"records":…,"seconds":…,"records_per_sec":…}` timed from the first record.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    records: u64,
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
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[&args.topic])?;
    let mut first = None;
    let mut seen = 0u64;
    while seen < args.records {
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
