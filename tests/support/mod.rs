//! Test harness: the local stack (moto for STS, kinesis-mock for Kinesis, librdkafka's mock cluster
//! as the Kafka broker), doka run as a real child process, and readers that count every record.
#![allow(dead_code)]

pub mod auth;
pub mod checked;
pub mod firehose;
pub mod kpl;
pub mod msk_token;
pub mod pod_identity;
pub mod prometheus;
pub mod proxy;
pub mod schemas;

mod aws;
mod eventually;
mod kafka;
mod process;
mod world;

pub use aws::*;
pub use eventually::*;
pub use kafka::*;
pub use process::*;
pub use world::*;

use std::net::TcpStream;

/// The source identity: kinesis-mock files a 12-digit access key id under that account (A).
pub const ACCOUNT_A_KEY: &str = "123456789012";
pub const ACCOUNT_B: &str = "222222222222";
pub const ROLE_B: &str = "arn:aws:iam::222222222222:role/doka-writer";
pub const REGION: &str = "us-east-1";

pub struct Endpoints {
    pub sts: String,
    pub kinesis: String,
}

/// Endpoints of the local AWS stand-ins started by `scripts/stack.sh up`.
pub fn endpoints() -> Endpoints {
    let sts = std::env::var("DOKA_TEST_STS_ENDPOINT").unwrap_or("http://127.0.0.1:4599".into());
    let kinesis =
        std::env::var("DOKA_TEST_KINESIS_ENDPOINT").unwrap_or("http://127.0.0.1:4568".into());
    for url in [&sts, &kinesis] {
        let addr = url.trim_start_matches("http://");
        assert!(
            TcpStream::connect(addr).is_ok(),
            "nothing answers at {url}: start the local AWS stack with `scripts/stack.sh up` (or run `make test`)"
        );
    }
    Endpoints { sts, kinesis }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Every part must be in `text` (a log, an error, a report line).
pub fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// The stack's own facts

/// A variable `scripts/stack.sh up` (or `scripts/image.sh`) prints; `make test` exports them.
pub fn stack_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack with `scripts/stack.sh up` (and build the image with `scripts/image.sh`), exporting the lines they print, or run `make test`")
    })
}

/// The SASL proxy's record of OAUTHBEARER tokens presented by `client_id`, oldest first, each
/// with whether the proxy accepted it.
pub fn recorded_tokens(client_id: &str) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(stack_var("DOKA_TEST_OAUTH_TOKENS")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["client_id"] == client_id)
        .map(|v| {
            (
                v["token"].as_str().unwrap().to_owned(),
                v["accepted"] == true,
            )
        })
        .collect()
}

/// Who STS says an access key belongs to (moto identifies callers by key id).
pub async fn owner_of_key(ep: &Endpoints, access_key: &str) -> String {
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(REGION))
        .endpoint_url(&ep.sts)
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            access_key, "unused", None, None, "test",
        ))
        .build();
    aws_sdk_sts::Client::from_conf(conf)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity")
        .arn
        .unwrap_or_default()
}
