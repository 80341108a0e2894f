//! The AWS side's settings (`aws:`, per route): region, the role to assume in the destination's
//! account, STS and service endpoints, session lifetime — with their checks.

use serde::{Deserialize, Serialize};

use crate::settings::{Checked, Secret, bad, range};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region of the target stream; falls back to the AWS SDK's own lookup (AWS_REGION, profile).
    #[serde(default)]
    pub region: Option<String>,
    /// STS endpoint override (local emulator, VPC endpoint). `AWS_ENDPOINT_URL_STS` works too.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// Kinesis endpoint override. `AWS_ENDPOINT_URL_KINESIS` works too.
    #[serde(default)]
    pub kinesis_endpoint: Option<String>,
    /// Firehose endpoint override. `AWS_ENDPOINT_URL_FIREHOSE` works too.
    #[serde(default)]
    pub firehose_endpoint: Option<String>,
    /// Role in the target account to assume. Without it the source credentials write directly.
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<Secret>,
    /// Defaults to `doka-<profile>-<random suffix>`.
    #[serde(default)]
    pub session_name: Option<String>,
    #[serde(default = "default_session_duration_secs")]
    pub session_duration_secs: u64,
    /// Assumed-role credentials are renewed this long before they expire.
    #[serde(default = "default_credential_refresh_margin_secs")]
    pub credential_refresh_margin_secs: u64,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: None,
            sts_endpoint: None,
            kinesis_endpoint: None,
            firehose_endpoint: None,
            role_arn: None,
            external_id: None,
            session_name: None,
            session_duration_secs: default_session_duration_secs(),
            credential_refresh_margin_secs: default_credential_refresh_margin_secs(),
        }
    }
}

impl AwsConfig {
    /// Semantic checks; keys are reported under `prefix` (a route's `routes[i].`, or nothing).
    pub fn validate(&self, prefix: &str) -> Checked {
        let key = |k: &str| format!("{prefix}{k}");
        let aws = self;
        if let Some(region) = &aws.region
            && !is_region_name(region)
        {
            return bad(
                &key("aws.region"),
                format!("`{region}` is not a region name like eu-west-1"),
            );
        }
        for (name, value) in [
            ("sts_endpoint", &aws.sts_endpoint),
            ("kinesis_endpoint", &aws.kinesis_endpoint),
            ("firehose_endpoint", &aws.firehose_endpoint),
        ] {
            if let Some(url) = value
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return bad(
                    &key(&format!("aws.{name}")),
                    format!("`{url}` is not a URL: expected http(s)://host[:port]"),
                );
            }
        }
        if let Some(arn) = &aws.role_arn
            && !is_role_arn(arn)
        {
            return bad(
                &key("aws.role_arn"),
                format!(
                    "`{arn}` is not an IAM role ARN: expected arn:aws:iam::<12-digit account>:role/<name>"
                ),
            );
        }
        if aws.external_id.is_some() && aws.role_arn.is_none() {
            return bad(
                &key("aws.external_id"),
                "is only used with aws.role_arn: set the role or remove the external id",
            );
        }
        if let Some(id) = &aws.external_id {
            range(&key("aws.external_id (length)"), id.expose().len(), 2, 1224)?;
        }
        if let Some(name) = &aws.session_name {
            let ok = (2..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
            if !ok {
                return bad(
                    &key("aws.session_name"),
                    format!("`{name}`: expected 2 to 64 characters of letters, digits and +=,.@_-"),
                );
            }
        }
        range(
            &key("aws.session_duration_secs"),
            aws.session_duration_secs,
            900,
            43_200,
        )?;
        if aws.credential_refresh_margin_secs >= aws.session_duration_secs {
            return bad(
                &key("aws.credential_refresh_margin_secs"),
                "must be shorter than aws.session_duration_secs",
            );
        }

        Ok(())
    }
}

fn default_session_duration_secs() -> u64 {
    3600
}

fn default_credential_refresh_margin_secs() -> u64 {
    300
}

/// A region name such as `eu-west-1` (its form only: new regions keep appearing).
pub fn is_region_name(region: &str) -> bool {
    !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
        })
}

/// The session name when `aws.session_name` is not set: the profile, for CloudTrail, and a random
/// suffix.
pub fn default_session_name(profile: Option<&str>) -> String {
    let suffix: u32 = rand::random();
    let profile: String = profile
        .unwrap_or("default")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(*c))
        .take(40)
        .collect();
    format!("doka-{profile}-{suffix:08x}")
}
