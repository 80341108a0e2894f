//! The Kinesis clients of a route: the SDK's for every call but PutRecords, the lean one for
//! PutRecords, and the health probe that describes the stream while doka runs.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_types::SdkConfig;

use super::KinesisConfig;
use super::put_records::PutRecordsClient;
use crate::aws::{AwsConfig, RouteIdentity, timeouts};
use crate::telemetry::health::Health;

/// Both clients, with the route's credentials, endpoint and timeouts. doka retries itself, entry
/// by entry, with its own backoff and accounting: no SDK retries.
pub async fn connect(
    identity: &RouteIdentity,
    aws: &AwsConfig,
    kinesis: &KinesisConfig,
) -> anyhow::Result<(aws_sdk_kinesis::Client, PutRecordsClient)> {
    let request_timeout = Duration::from_millis(kinesis.request_timeout_ms);
    let mut builder = aws_sdk_kinesis::config::Builder::from(&identity.sdk)
        .credentials_provider(identity.credentials.clone())
        .identity_cache(identity.identity_cache())
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts(request_timeout));
    if let Some(endpoint) = &aws.kinesis_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    let (stream_name, stream_arn) = kinesis.target();
    let url = kinesis_url(
        &identity.sdk,
        &identity.region,
        aws.kinesis_endpoint.as_deref(),
        stream_arn,
    )
    .await?;
    let writer = PutRecordsClient::new(
        identity.credentials.clone(),
        identity.renew_early(),
        identity.region.clone(),
        url,
        stream_name,
        stream_arn,
        request_timeout,
    );
    Ok((aws_sdk_kinesis::Client::from_conf(builder.build()), writer))
}

/// The data-plane endpoint of a stream, by the SDK's own endpoint rules (FIPS, dual stack, an
/// ARN's account-specific host, or `aws.kinesis_endpoint`).
async fn kinesis_url(
    base: &SdkConfig,
    region: &str,
    endpoint: Option<&str>,
    stream_arn: Option<&str>,
) -> anyhow::Result<String> {
    use aws_sdk_kinesis::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
    let mut params = Params::builder()
        .region(region)
        .use_fips(base.use_fips().unwrap_or(false))
        .use_dual_stack(base.use_dual_stack().unwrap_or(false))
        .operation_type("data");
    // As the SDK's Kinesis client picks it: the route's setting, then `AWS_ENDPOINT_URL_KINESIS`
    // (or the profile's `kinesis` section), then `AWS_ENDPOINT_URL`.
    let service_endpoint = base.service_config().and_then(|config| {
        config.load_config(
            aws_types::service_config::ServiceConfigKey::builder()
                .service_id("Kinesis")
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .expect("every field set"),
        )
    });
    let endpoint = endpoint
        .map(str::to_owned)
        .or(service_endpoint)
        .or(base.endpoint_url().map(str::to_owned));
    if let Some(endpoint) = endpoint {
        params = params.endpoint(endpoint);
    }
    if let Some(arn) = stream_arn {
        params = params.stream_arn(arn);
    }
    let params = params
        .build()
        .map_err(|e| anyhow::anyhow!("cannot resolve the Kinesis endpoint: {e}"))?;
    let endpoint = DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot resolve the Kinesis endpoint (check aws.region, aws.kinesis_endpoint and kinesis.stream): {}",
                aws_smithy_types::error::display::DisplayErrorContext(&*e)
            )
        })?;
    Ok(endpoint.url().to_owned())
}

/// `sink::watch` for a Kinesis stream (DescribeStreamSummary).
pub async fn watch_stream(
    client: aws_sdk_kinesis::Client,
    kinesis: KinesisConfig,
    health: Arc<Health>,
    destination: usize,
) {
    let (name, arn) = kinesis.target();
    let (name, arn) = (name.map(str::to_owned), arn.map(str::to_owned));
    crate::sink::watch(health, destination, || async {
        match client
            .describe_stream_summary()
            .set_stream_name(name.clone())
            .set_stream_arn(arn.clone())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Rate-limited: the stream answered.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_limit_exceeded_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(format!(
                "DescribeStreamSummary failed: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            )),
        }
    })
    .await
}
