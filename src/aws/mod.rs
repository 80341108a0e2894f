//! AWS identity: source credentials from the standard chain, then AssumeRole into the target
//! account, refreshed by the SDK before expiry while records keep flowing.

pub mod msk_iam;
pub mod settings;
pub mod source;

use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::identity::IdentityCache;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::identity::SharedIdentityCache;
use aws_types::SdkConfig;
use aws_types::region::Region;

pub use settings::{AwsConfig, default_session_name};

use crate::telemetry::health::Health;
use crate::telemetry::metrics::{CredentialKind, Metrics};

/// Who hears of each assumed role: the metrics (renewals, expiry) and readiness.
#[derive(Clone)]
pub struct CredentialObserver {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The route whose destination the credentials are for (its index in `Config::routes`).
    pub destination: usize,
    /// Its name, for the metrics.
    pub route: String,
}

impl std::fmt::Debug for CredentialObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialObserver")
    }
}

/// Who writes to a route's destination: the route's region and credentials (an assumed role in
/// the destination's account, or the source chain), from which its destination builds a client.
pub struct RouteIdentity {
    /// The SDK configuration in the route's region, for a service client's builder.
    pub sdk: SdkConfig,
    pub credentials: SharedCredentialsProvider,
    pub region: String,
    /// The AssumeRole session name; `None` without a role.
    pub session_name: Option<String>,
}

impl RouteIdentity {
    /// Whether the credentials are an assumed role's (their expiry is already moved early).
    fn assumed(&self) -> bool {
        self.session_name.is_some()
    }

    /// The identity cache a service client of this route uses.
    pub fn identity_cache(&self) -> SharedIdentityCache {
        if self.assumed() {
            // `Renewed` already moved the expiry `credential_refresh_margin_secs` early.
            IdentityCache::lazy().buffer_time(Duration::ZERO).build()
        } else {
            IdentityCache::lazy().build()
        }
    }

    /// How long before the credentials' expiry a client that caches them itself renews them.
    pub fn renew_early(&self) -> Duration {
        if self.assumed() {
            Duration::ZERO
        } else {
            SOURCE_CREDENTIALS_RENEWED_EARLY
        }
    }
}

/// One request's time limit, connecting included (at most 10 s of it).
pub fn timeouts(request_timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .build()
}

/// Makes `aws.sts_endpoint` the endpoint of every STS call. The SDK's web identity (IRSA)
/// provider builds its own STS client, which reads `AWS_ENDPOINT_URL_STS` but knows nothing of
/// doka's config; without this the pod's first hop would go to the public endpoint while
/// AssumeRole uses the configured one (a VPC endpoint in private subnets).
///
/// # Safety
/// Changes the process environment: call it before any other thread runs.
pub unsafe fn export_sts_endpoint(aws: &AwsConfig) {
    if let Some(endpoint) = &aws.sts_endpoint {
        // SAFETY: the caller guarantees no other thread reads the environment meanwhile.
        unsafe { std::env::set_var("AWS_ENDPOINT_URL_STS", endpoint) };
    }
}

/// Loads the SDK's default configuration (region, credential chain, `AWS_ENDPOINT_URL_*`), with
/// the region from the config file when set. With EKS Pod Identity as the source, says so, and
/// the chain's failures name it.
pub async fn base_config(aws: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let config = loader.load().await;
    match (
        source::PodIdentity::from_process_env(),
        config.credentials_provider(),
    ) {
        (Some(pod_identity), Some(chain)) => {
            tracing::info!("source credentials from {}", pod_identity.describe());
            let named = source::NamedSource::new(chain, pod_identity);
            config
                .into_builder()
                .credentials_provider(SharedCredentialsProvider::new(named))
                .build()
        }
        _ => config,
    }
}

/// The region the AWS SDK finds on its own (`AWS_REGION`, the profile), ignoring `aws.region`:
/// the MSK cluster's region may differ from the stream's.
pub async fn environment_region() -> Option<String> {
    aws_config::default_provider::region::DefaultRegionChain::builder()
        .build()
        .region()
        .await
        .map(|r| r.to_string())
}

/// Who a set of credentials belongs to, as STS GetCallerIdentity tells it.
#[derive(Debug, Clone)]
pub struct CallerIdentity {
    pub account: String,
    pub arn: String,
}

/// GetCallerIdentity with these credentials (needs no permission), at `aws.sts_endpoint` when set.
pub async fn caller_identity(
    base: &SdkConfig,
    aws: &AwsConfig,
    credentials: Credentials,
) -> Result<CallerIdentity, String> {
    let mut builder = aws_sdk_sts::config::Builder::from(base)
        .credentials_provider(credentials)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(15))
                .build(),
        );
    if let Some(endpoint) = &aws.sts_endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    let out = aws_sdk_sts::Client::from_conf(builder.build())
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| aws_smithy_types::error::display::DisplayErrorContext(&e).to_string())?;
    Ok(CallerIdentity {
        account: out.account.unwrap_or_default(),
        arn: out.arn.unwrap_or_default(),
    })
}

/// A route's identity: its region, and credentials from AssumeRole when `aws.role_arn` is set.
pub async fn route_identity(
    base: &SdkConfig,
    aws: &AwsConfig,
    session_name: String,
    observer: Option<CredentialObserver>,
) -> anyhow::Result<RouteIdentity> {
    // A route in another region than the shared one keeps the shared credential chain.
    let routed;
    let base = match &aws.region {
        Some(region) if base.region().is_none_or(|r| r.as_ref() != region) => {
            routed = base
                .clone()
                .into_builder()
                .region(Region::new(region.clone()))
                .build();
            &routed
        }
        _ => base,
    };
    let Some(region) = base.region().map(|r| r.to_string()) else {
        anyhow::bail!("no AWS region: set aws.region in the config (or AWS_REGION)");
    };
    let Some(source) = base.credentials_provider() else {
        anyhow::bail!("no AWS credential chain could be set up");
    };
    let (credentials, session_name) = match &aws.role_arn {
        Some(role) => {
            // The STS client gets its own endpoint: in private subnets (and with emulators) STS
            // and Kinesis are reached at different addresses.
            let mut sts_config = base.clone();
            if let Some(endpoint) = &aws.sts_endpoint {
                sts_config = sts_config.into_builder().endpoint_url(endpoint).build();
            }
            let mut builder = AssumeRoleProvider::builder(role)
                .session_name(&session_name)
                .session_length(Duration::from_secs(aws.session_duration_secs))
                .configure(&sts_config);
            if let Some(id) = &aws.external_id {
                builder = builder.external_id(id.expose());
            }
            let provider = builder.build_from_provider(source).await;
            let renewed = Renewed {
                inner: provider,
                role: role.clone(),
                margin: Duration::from_secs(aws.credential_refresh_margin_secs),
                observer,
                current: std::sync::Mutex::new(None),
            };
            (SharedCredentialsProvider::new(renewed), Some(session_name))
        }
        None => (source, None),
    };

    Ok(RouteIdentity {
        sdk: base.clone(),
        credentials,
        region,
        session_name,
    })
}

/// Credentials from the source chain (no role to assume) are renewed this long before they
/// expire, as the SDK's identity cache does.
const SOURCE_CREDENTIALS_RENEWED_EARLY: Duration = Duration::from_secs(10);

/// After a failed renewal, how soon it is tried again (while the old credentials last).
const RETRY_RENEWAL: Duration = Duration::from_secs(10);

/// Assumed-role credentials as the Kinesis client sees them: reported in the log each time the
/// role is assumed (start-up and every renewal), and marked as expiring `margin` early so the
/// client's identity cache renews them exactly that long before they really expire (its own
/// buffer adds up to 50% random jitter, too loose to configure a margin with).
#[derive(Debug)]
struct Renewed<P> {
    inner: P,
    role: String,
    margin: Duration,
    observer: Option<CredentialObserver>,
    /// The last credentials, margin-adjusted.
    current: std::sync::Mutex<Option<Credentials>>,
}

impl<P: ProvideCredentials> ProvideCredentials for Renewed<P> {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            // The start-up check and the Kinesis client's cache both ask at first: one
            // AssumeRole serves both, until the renewal point.
            let now = std::time::SystemTime::now();
            if let Some(current) = self.current.lock().unwrap().clone()
                && current.expiry().is_some_and(|renew_at| renew_at > now)
            {
                return Ok(current);
            }
            let assumed = match self.inner.provide_credentials().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(
                        role = %self.role,
                        "assuming the role failed: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
                    );
                    // The last credentials are still good for `margin` past their renewal
                    // point: keep writing with them, and try again shortly.
                    if let Some(current) = self.current.lock().unwrap().clone()
                        && current
                            .expiry()
                            .is_some_and(|renew_at| renew_at + self.margin > now + RETRY_RENEWAL)
                    {
                        return Ok(Credentials::new(
                            current.access_key_id(),
                            current.secret_access_key(),
                            current.session_token().map(str::to_owned),
                            Some(now + RETRY_RENEWAL),
                            "doka-assume-role",
                        ));
                    }
                    return Err(e);
                }
            };
            let expires_in = assumed
                .expiry()
                .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
                .map_or(0, |d| d.as_secs());
            tracing::info!(
                role = %self.role,
                expires_in_secs = expires_in,
                renew_in_secs = expires_in.saturating_sub(self.margin.as_secs()),
                "assumed role: new credentials"
            );
            if let Some(observer) = &self.observer {
                let expiry = assumed.expiry();
                observer.metrics.credentials_renewed(
                    CredentialKind::AssumedRole,
                    &observer.route,
                    expiry.and_then(|e| {
                        e.duration_since(std::time::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs_f64())
                    }),
                );
                observer
                    .health
                    .credentials_obtained(observer.destination, expiry);
            }
            let renewed = match assumed.expiry() {
                Some(expiry) => Credentials::new(
                    assumed.access_key_id(),
                    assumed.secret_access_key(),
                    assumed.session_token().map(str::to_owned),
                    Some(expiry - self.margin),
                    "doka-assume-role",
                ),
                None => assumed,
            };
            *self.current.lock().unwrap() = Some(renewed.clone());
            Ok(renewed)
        })
    }
}

/// Resolves credentials once, to report a broken chain at start-up (never shows a key).
pub async fn resolve(credentials: &SharedCredentialsProvider) -> Result<Credentials, String> {
    match tokio::time::timeout(Duration::from_secs(30), credentials.provide_credentials()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()),
        Err(_) => Err("timed out after 30 s".into()),
    }
}

/// "are renewed in 840s" or "do not expire", for the log.
pub fn describe_expiry(credentials: &Credentials) -> String {
    credentials
        .expiry()
        .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        .map(|d| format!("are renewed in {}s", d.as_secs()))
        .unwrap_or_else(|| "do not expire".into())
}
