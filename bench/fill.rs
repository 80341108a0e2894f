//! Benchmark data: fills a Kafka topic with N keyed records and prints where each partition ends.
//!
//! Each value starts with its key's sequence number and a space (`"42 xxxx…"`), so the benchmark
//! endpoint can check per-key order and count distinct records; the rest is filler up to the
//! chosen size. Keys are `key-0` … `key-{K-1}`, picked by a fixed pseudo-random sequence (the same
//! data every run). The partition ends come from the delivery reports, not from the broker's
//! watermarks, which tansu reports wrong (../shared/reference/local-stack.md).
//!
//! With `--avro-schema-id N` the values are Confluent-framed Avro records of
//! [`AVRO_SCHEMA`] (registered by the benchmark as schema N), about `--size` bytes each; their
//! first field is the sequence, so the decoded JSON starts with `{"seq":42,` for the endpoint.
//!
//! `cargo run --release --example bench_fill -- --brokers 127.0.0.1:9092 --topic bench \
//!      --partitions 4 --records 1000000 --size 200 --keys 1000`
//! prints one JSON line: `{"topic":"bench","ends":{"0":250123,…},"records":1000000,"seconds":…}`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use std::sync::Mutex;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The topic exists already (librdkafka's mock broker, which has no CreateTopics).
    #[arg(long)]
    topic_exists: bool,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value size in bytes (at least the sequence prefix).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Records per second (0: as fast as the broker takes them). With a rate, the benchmark runs
    /// doka while the topic fills: a soak.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Write Confluent-framed Avro values with this schema id (the benchmark registers
    /// `--print-avro-schema`'s schema and passes its id).
    #[arg(long)]
    avro_schema_id: Option<u32>,
    /// Print the Avro schema of `--avro-schema-id` values and exit.
    #[arg(long)]
    print_avro_schema: bool,
}

/// The benchmark's Avro record: a sequence, the key, a decimal, a timestamp, an array, a union
/// and filler text — the shapes a decoder meets in business records.
const AVRO_SCHEMA: &str = r#"{"type":"record","name":"BenchOrder","namespace":"doka.bench","fields":[
  {"name":"seq","type":"long"},
  {"name":"key","type":"string"},
  {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"note","type":["null","string"],"default":null},
  {"name":"payload","type":"string"}]}"#;

/// One Avro value, framed (`0x00`, the schema id, the datum), padded to about `size` bytes.
fn avro_value(
    writer: &apache_avro::writer::datum::GenericDatumWriter<'_>,
    schema: &apache_avro::Schema,
    id: u32,
    seq: u64,
    key: &str,
    size: usize,
) -> anyhow::Result<Vec<u8>> {
    use apache_avro::types::{Record, Value};
    let mut record = Record::new(schema).expect("a record schema");
    record.put("seq", Value::Long(seq as i64));
    record.put("key", Value::String(key.to_owned()));
    let cents = (seq as i64 % 100_000) * 7 - 3_000;
    record.put(
        "amount",
        Value::Decimal(apache_avro::Decimal::from(cents.to_be_bytes())),
    );
    record.put("at", Value::TimestampMillis(1_733_333_333_000 + seq as i64));
    record.put(
        "tags",
        Value::Array(vec![
            Value::String("bench".into()),
            Value::String(key.into()),
        ]),
    );
    let note = if seq.is_multiple_of(2) {
        Value::Union(0, Box::new(Value::Null))
    } else {
        Value::Union(1, Box::new(Value::String("odd".into())))
    };
    record.put("note", note);
    // ~60 bytes of the above, framing included; the rest is payload.
    record.put(
        "payload",
        Value::String("x".repeat(size.saturating_sub(60))),
    );
    let mut framed = vec![0u8];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend(writer.write_value_to_vec(record)?);
    Ok(framed)
}

/// Highest delivered offset per partition, and delivery errors.
#[derive(Default)]
struct Delivered {
    ends: Mutex<BTreeMap<i32, i64>>,
    errors: Mutex<Vec<String>>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut ends = self.ends.lock().unwrap();
                let end = ends.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
            Err((e, _)) => self.errors.lock().unwrap().push(e.to_string()),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_avro_schema {
        println!("{}", AVRO_SCHEMA.replace('\n', ""));
        return Ok(());
    }
    let avro_schema = apache_avro::Schema::parse_str(AVRO_SCHEMA)?;
    let avro_writer =
        apache_avro::writer::datum::GenericDatumWriter::builder(&avro_schema).build()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    if !args.topic_exists {
        let created = runtime.block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))?;
        for result in created {
            if let Err((name, e)) = result {
                anyhow::bail!("creating topic {name}: {e}");
            }
        }
    }

    // The benchmark starts doka on this line when soaking (the topic exists now).
    eprintln!("created {}", args.topic);

    let producer: ThreadedProducer<Delivered> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("acks", "1")
        .create_with_context(Delivered::default())?;

    let started = Instant::now();
    let mut sequences = vec![0u64; args.keys as usize];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut value = Vec::with_capacity(args.size);
    for n in 0..args.records {
        if args.rate > 0.0 && n % 1000 == 0 {
            let due = started + Duration::from_secs_f64(n as f64 / args.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // xorshift64: fixed data, no RNG crate API to keep up with.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = (rng % args.keys) as usize;
        let key = format!("key-{k}");
        value.clear();
        if let Some(id) = args.avro_schema_id {
            value = avro_value(
                &avro_writer,
                &avro_schema,
                id,
                sequences[k],
                &key,
                args.size,
            )?;
        } else {
            value.extend_from_slice(format!("{} ", sequences[k]).as_bytes());
            value.resize(args.size.max(value.len()), b'x');
        }
        sequences[k] += 1;
        let mut record = BaseRecord::to(&args.topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, returned)) => {
                    // Queue full: let deliveries drain.
                    if !matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        anyhow::bail!("producing: {e}");
                    }
                    record = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let ctx = producer.context();
    let errors = ctx.errors.lock().unwrap();
    if !errors.is_empty() {
        anyhow::bail!("{} records failed, first: {}", errors.len(), errors[0]);
    }
    let ends = ctx.ends.lock().unwrap();
    let ends: serde_json::Map<String, serde_json::Value> = ends
        .iter()
        .map(|(p, e)| (p.to_string(), (*e).into()))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "topic": args.topic,
            "ends": ends,
            "records": args.records,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
