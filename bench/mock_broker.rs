//! `bench_mock_broker`: librdkafka's mock cluster for the benchmark's crash measurement
//! (`bench/run.py --kill-after`). tansu does not re-admit a SIGKILLed member for minutes; the
//! mock cluster expires it after the session timeout and hands its partitions to the restarted
//! doka, so the restart — and what it sends again — is measured for real.
//!
//! Prints `{"bootstrap": "127.0.0.1:PORT"}` once the topic exists, then serves until its standard
//! input closes (the benchmark ends) or it is killed.

use std::io::{Read, Write};

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic(&args.topic, args.partitions, 1)?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{}",
        serde_json::json!({ "bootstrap": cluster.bootstrap_servers() })
    )?;
    out.flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
