//! AWS Glue Schema Registry records end to end: moto's Glue holds the schemas, PyPI's
//! aws-glue-schema-registry serializer writes Avro and JSON records (compressed and not) and
//! Protobuf ones are built to the documented layout, the real doka binary decodes them with the
//! source identity (account A, where the registry lives), and every record that arrives — in
//! Kinesis, and through Firehose in S3 — is compared field by field with what was serialised.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::schemas::*;
use support::*;

const WAIT: Duration = Duration::from_secs(90);
/// One registry for every test (moto, like Glue, caps registries per account); each test's
/// schemas are named after its own topic.
const REGISTRY: &str = "doka-test-registry";

fn glue_section(registry: &str) -> String {
    format!(
        "decode:\n  value:\n    glue:\n      region: {REGION}\n      endpoint: {}\n      registry_name: {registry}\n    unknown_schema_retry_ms: 1000\n",
        glue_endpoint()
    )
}

fn produce_glue(
    topic: &str,
    registry: &str,
    format: &str,
    count: &str,
    extra: &[&str],
) -> Vec<Produced> {
    let endpoint = glue_endpoint();
    let mut args = vec![
        "--registry",
        "glue",
        "--endpoint",
        &endpoint,
        "--region",
        REGION,
        "--registry-name",
        registry,
        "--schema-name",
        topic,
        "--format",
        format,
        "--topic",
        topic,
        "--count",
        count,
    ];
    args.extend_from_slice(extra);
    schema_records(&args)
}

/// Every record arrived once, its value the JSON the producer serialised, its schema named by
/// the version id the producer wrote.
fn assert_envelopes(
    envelopes: &std::collections::HashMap<(i32, i64), Value>,
    produced: &[Produced],
    placements: &[Placement],
) {
    assert_eq!(envelopes.len(), produced.len(), "one envelope per record");
    for (record, at) in produced.iter().zip(placements) {
        let envelope = envelopes
            .get(&(at.partition, at.offset))
            .unwrap_or_else(|| panic!("no envelope for {at:?}"));
        let path = format!("[{}@{}].value", at.partition, at.offset);
        assert_json_eq(&envelope["value"], &record.expected, &path);
        let schema = &envelope["value_schema"];
        assert_eq!(schema["registry"], "glue", "{path}: {envelope}");
        assert_eq!(
            schema["version_id"], record.schema["version_id"],
            "{path}: {envelope}"
        );
    }
}

async fn decodes_to_kinesis(format: &str, extra: &[&str]) {
    let world = World::new(2, 2).await;
    let registry = REGISTRY.to_owned();
    let mut produced = produce_glue(
        &world.topic,
        &registry,
        format,
        "40",
        &[&["--schema-version", "1"], extra].concat(),
    );
    produced.extend(produce_glue(
        &world.topic,
        &registry,
        format,
        "30",
        &[&["--schema-version", "2"], extra].concat(),
    ));
    let placements = produce_schema_records(&world.kafka.bootstrap(), &world.topic, &produced);
    let dead_letter = unique("dlq");
    world.kafka.create_topic(&dead_letter, 1);
    let yaml = format!(
        "{}records:\n  format: envelope\ndead_letter:\n  topic: {dead_letter}\n{}",
        world.yaml(None),
        glue_section(&registry)
    );
    let doka = Doka::start(&yaml, &[]);
    let records = wait_for_records(&world.b, &world.stream, produced.len(), WAIT).await;
    world
        .wait_for_committed(&end_offsets(&placements), WAIT)
        .await;
    assert_envelopes(&envelopes_by_position(&records), &produced, &placements);
    doka.stop();
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn glue_avro_records_of_two_versions_arrive_as_json_field_by_field() {
    decodes_to_kinesis("avro", &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn glue_zlib_compressed_avro_records_arrive_as_json() {
    decodes_to_kinesis("avro", &["--compression"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn glue_json_schema_records_arrive_as_their_json() {
    decodes_to_kinesis("json", &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn glue_protobuf_records_with_nested_types_arrive_as_canonical_json() {
    decodes_to_kinesis("protobuf", &[]).await;
}

/// Through Firehose to S3, as plain records (no envelope): each JSON line of the bucket is one
/// record's decoded value; an unknown schema version goes to the dead-letter topic.
#[tokio::test(flavor = "multi_thread")]
async fn glue_avro_through_firehose_lands_in_s3_as_json_lines() {
    const PREFIX: &str = "decoded/";
    let ep = endpoints();
    let (firehose_b, s3_b) = support::firehose::account_b_clients(&ep).await;
    let name = unique("doka-fh-glue");
    let bucket = unique("doka-fh-glue-b");
    support::firehose::create_delivery_stream(&firehose_b, &s3_b, &name, &bucket, PREFIX).await;
    let topic = unique("payments");
    let kafka = Kafka::new(&topic, 1);
    let registry = REGISTRY.to_owned();
    let mut produced = produce_glue(&topic, &registry, "avro", "25", &["--compression"]);
    let unknown_at = produced.len();
    produced.extend(produce_glue(
        &topic,
        &registry,
        "avro",
        "1",
        &["--bad", "unknown-id"],
    ));
    produced.extend(produce_glue(&topic, &registry, "avro", "5", &[]));
    let placements = produce_schema_records(&kafka.bootstrap(), &topic, &produced);
    let dead_letter = unique("dlq");
    kafka.create_topic(&dead_letter, 1);
    let group = unique("doka-group");
    let yaml = format!(
        r#"kafka:
  brokers: "{bootstrap}"
  group_id: {group}
  topics: [{topic}]
  properties:
    fetch.wait.max.ms: 5
aws:
  region: {REGION}
  sts_endpoint: {sts}
  firehose_endpoint: {firehose}
  role_arn: {ROLE_B}
  external_id: test-external-id
firehose:
  delivery_stream: {name}
batch:
  linger_ms: 5
pipeline:
  commit_interval_ms: 100
dead_letter:
  topic: {dead_letter}
http:
  listen: 127.0.0.1:0
{glue}"#,
        bootstrap = kafka.bootstrap(),
        sts = ep.sts,
        firehose = support::firehose::endpoint(&ep),
        glue = glue_section(&registry),
    );
    let doka = Doka::start(&yaml, &[]);
    wait_for_topic_committed(
        &kafka.bootstrap(),
        &group,
        &topic,
        &end_offsets(&placements),
        WAIT,
    )
    .await;
    let lines =
        support::firehose::wait_for_lines(&s3_b, &bucket, PREFIX, produced.len() - 1, WAIT).await;
    let log = doka.stop();
    let got: Vec<Value> = lines
        .iter()
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)))
        })
        .collect();
    let expected: Vec<&Produced> = produced
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != unknown_at)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "every decodable record, once: {log}"
    );
    // S3 objects are listed by key, not written order: each expected value must be one line
    // (the values have no floats, so JSON equality is exact), each line used once.
    let mut left = got.clone();
    for (i, record) in expected.iter().enumerate() {
        let at = left
            .iter()
            .position(|line| *line == record.expected)
            .unwrap_or_else(|| panic!("record {i} ({}) is not in S3: {left:?}", record.expected));
        left.swap_remove(at);
    }
    let dead = kafka.read_all(&dead_letter);
    assert_eq!(dead.len(), 1, "the unknown version, dead-lettered");
    assert_eq!(dead[0].1, produced[unknown_at].value);
    support::firehose::delete_delivery_stream(&firehose_b, &s3_b, &name, &bucket).await;
}
