//! The design doka replaces, for comparison in the benchmark: one consumer, one PutRecord per
//! Kafka message, each awaited before the next, offsets committed every second.
//!
//! It runs for `--seconds` and prints how many records it delivered and at what rate, as one
//! JSON line. Credentials, region and endpoint come from the usual AWS variables
//! (`AWS_ENDPOINT_URL_KINESIS` points it at the benchmark endpoint).

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    stream: String,
    #[arg(long, default_value = "bench-one-at-a-time")]
    group: String,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(&[&args.topic])?;

    let mut first: Option<Instant> = None;
    let mut delivered = 0u64;
    let mut last_commit = Instant::now();
    loop {
        if first.is_some_and(|t| t.elapsed() >= Duration::from_secs(args.seconds)) {
            break;
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg?;
        let key = msg
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| "none".into());
        kinesis
            .put_record()
            .stream_name(&args.stream)
            .partition_key(key)
            .data(Blob::new(msg.payload().unwrap_or_default()))
            .send()
            .await?;
        first.get_or_insert_with(Instant::now);
        delivered += 1;
        consumer.store_offset_from_message(&msg)?;
        if last_commit.elapsed() >= Duration::from_secs(1) {
            consumer.commit_consumer_state(CommitMode::Async)?;
            last_commit = Instant::now();
        }
    }
    let seconds = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "delivered": delivered,
            "seconds": seconds,
            "records_per_sec": delivered as f64 / seconds.max(1e-9),
        })
    );
    Ok(())
}
