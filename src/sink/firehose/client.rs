//! The Firehose client of a route, and the health probe that describes the delivery stream
//! while doka runs.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;

use super::FirehoseConfig;
use crate::aws::{AwsConfig, RouteIdentity, timeouts};
use crate::telemetry::health::Health;

/// The client with the route's credentials, endpoint and timeouts; no SDK retries (doka retries
/// entry by entry itself).
pub fn connect(
    identity: &RouteIdentity,
    aws: &AwsConfig,
    firehose: &FirehoseConfig,
) -> aws_sdk_firehose::Client {
    let mut builder = aws_sdk_firehose::config::Builder::from(&identity.sdk)
        .credentials_provider(identity.credentials.clone())
        .identity_cache(identity.identity_cache())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts(Duration::from_millis(firehose.request_timeout_ms)));
    if let Some(endpoint) = &aws.firehose_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    aws_sdk_firehose::Client::from_conf(builder.build())
}

/// `sink::watch` for a delivery stream (DescribeDeliveryStream).
pub async fn watch_delivery_stream(
    client: aws_sdk_firehose::Client,
    name: String,
    health: Arc<Health>,
    destination: usize,
) {
    crate::sink::watch(health, destination, || async {
        client
            .describe_delivery_stream()
            .delivery_stream_name(&name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "DescribeDeliveryStream failed: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                )
            })
    })
    .await
}
