//! `make demo`: doka moving records end to end on this machine.
//!
//! Starts a Kafka-protocol broker (librdkafka's mock cluster), creates a topic and a Kinesis stream
//! in account B (through AssumeRole at the STS emulator), publishes keyed orders, runs the real
//! `doka run --config … --profile local` through the assume-role path, reads the stream back and
//! prints what arrived. Needs the local AWS stack (`scripts/stack.sh up`; `make demo` does it).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const MESSAGES: usize = 1000;
const CUSTOMERS: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ep = endpoints();
    let topic = "demo-orders";
    let kafka = Kafka::new(topic, 4);
    let stream = unique("demo-orders");
    println!(
        "1. Kafka broker (mock cluster) at {} with topic `{topic}` (4 partitions)",
        kafka.bootstrap()
    );

    let b = account_b_kinesis(&ep).await;
    create_stream(&b, &stream, 2).await;
    let a = account_a_kinesis(&ep);
    create_stream(&a, &stream, 1).await;
    println!(
        "2. Kinesis stream `{stream}` created in account {ACCOUNT_B} (B) and, as a decoy, in account 123456789012 (A)"
    );

    let messages: Vec<(Vec<u8>, Vec<u8>)> = (0..MESSAGES)
        .map(|i| {
            let customer = format!("customer-{}", i % CUSTOMERS);
            let value = format!(
                r#"id={i};{{"order":{i},"customer":"{customer}","amount_cents":{}}}"#,
                100 + i * 7 % 900
            );
            (customer.into_bytes(), value.into_bytes())
        })
        .collect();
    let placements = produce(&kafka.bootstrap(), topic, &messages);
    println!("3. published {MESSAGES} orders keyed by customer ({CUSTOMERS} customers)");

    let dir = std::path::Path::new("target/demo");
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("doka.yaml");
    let bootstrap = kafka.bootstrap();
    let base = DokaSetup {
        bootstrap: "localhost:9092",
        group: "doka-demo",
        topic,
        stream: &stream,
        sts: &ep.sts,
        kinesis: &ep.kinesis,
    }
    .yaml();
    let yaml = format!(
        "{base}profiles:\n  local:\n    kafka:\n      brokers: \"{bootstrap}\"\n      group_id: {group}\n",
        group = unique("doka-demo")
    );
    std::fs::write(&config, &yaml).unwrap();
    println!(
        "4. running: AWS_ACCESS_KEY_ID=123456789012 … {} run --config {} --profile local",
        doka_binary(),
        config.display()
    );
    let config_arg = config.to_str().unwrap();
    let mut doka = Doka::spawn(
        &["run", "--config", config_arg, "--profile", "local"],
        &[("RUST_LOG", "info")],
        tempfile::tempdir().unwrap(),
    );
    doka.wait_for_log("partitions assigned", 1, Duration::from_secs(60));
    let started = std::time::Instant::now();
    wait_for_records(&b, &stream, MESSAGES, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let (status, log) = doka.terminate();

    let records = read_stream(&b, &stream).await;
    let (missing, duplicates) = tally(MESSAGES, &records);
    let in_a = read_stream(&a, &stream).await.len();
    let mut per_key: HashMap<&str, Vec<(&str, &str, usize)>> = HashMap::new();
    for r in &records {
        per_key.entry(&r.partition_key).or_default().push((
            &r.shard,
            &r.sequence,
            message_id(&r.data),
        ));
    }
    let in_order = per_key.values_mut().all(|v| {
        v.sort_by(|x, y| (x.0, sequence_key(x.1)).cmp(&(y.0, sequence_key(y.1))));
        v.windows(2).all(|w| w[0].2 < w[1].2)
    });
    let committed = committed(&bootstrap, &yaml_group(&yaml), topic, 4);
    let ends = end_offsets(&placements);

    println!(
        "5. doka delivered the records in {:.1}s and exited with code {:?}",
        elapsed.as_secs_f64(),
        status.code()
    );
    for line in log
        .lines()
        .filter(|l| l.contains("summary:") || l.contains("credentials for"))
    {
        println!("   doka: {}", strip_ansi(line));
    }
    println!("\nSummary");
    println!("  sent to Kafka           {MESSAGES}");
    println!("  received in B's stream  {}", records.len());
    println!("  lost                    {}", missing.len());
    println!("  duplicated              {duplicates}");
    println!("  records in A's stream   {in_a} (only the assumed role in B may write)");
    println!("  per-customer order kept {in_order}");
    println!("  committed = end offsets {}", committed == ends);
    if let Some(r) = records.first() {
        println!(
            "  a record in the stream: key={} shard={} data={}",
            r.partition_key,
            r.shard,
            String::from_utf8_lossy(&r.data)
        );
    }
    let ok = missing.is_empty()
        && in_a == 0
        && in_order
        && committed == ends
        && status.code() == Some(0);
    if !ok {
        eprintln!("demo FAILED; doka's log:\n{log}");
        std::process::exit(1);
    }
}

fn yaml_group(yaml: &str) -> String {
    yaml.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("group_id: "))
        .unwrap()
        .to_owned()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
