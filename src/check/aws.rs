//! The AWS hops of `doka check` for one route: the source identity, AssumeRole into the
//! destination's account, then the destination's own hops (in its folder under `sink/`).

use aws_credential_types::Credentials;

use super::Walk;
use crate::aws::{self, default_session_name};
use crate::config::Route;

/// Source identity → AssumeRole → the destination's own hops (none of them for a destination that
/// needs no AWS).
pub(super) async fn chain(walk: &mut Walk<'_>, route: &Route, base: &aws_types::SdkConfig) {
    if !route.destination.needs_aws() {
        route.destination.check(walk, &route.aws, None).await;
        return;
    }
    let Some(chain) = base.credentials_provider() else {
        walk.fail(
            "aws.source_identity",
            "no AWS credential chain".into(),
            "Run doka with AWS credentials",
        );
        return;
    };
    let source = match aws::resolve(&chain).await {
        Ok(creds) => creds,
        Err(e) => {
            walk.fail(
                "aws.source_identity",
                format!("no source AWS credentials: {e}"),
                "On EKS with IRSA: the service account's eks.amazonaws.com/role-arn annotation \
                 (IRSA sets AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE) and the role's trust \
                 policy for the cluster's OIDC provider; with EKS Pod Identity: the pod identity \
                 association for the service account, the eks-pod-identity-agent add-on and the \
                 role's trust policy for pods.eks.amazonaws.com; elsewhere AWS_ACCESS_KEY_ID/AWS_PROFILE. aws.sts_endpoint \
                 (or AWS_ENDPOINT_URL_STS) must be reachable",
            );
            return;
        }
    };
    let source_id = match aws::caller_identity(base, &route.aws, source.clone()).await {
        Ok(id) => id,
        Err(e) => {
            walk.fail(
                "aws.source_identity",
                format!("GetCallerIdentity with the source credentials failed: {e}"),
                "Check aws.sts_endpoint (or AWS_ENDPOINT_URL_STS) and the network path to STS",
            );
            return;
        }
    };
    walk.ok(
        "aws.source_identity",
        format!(
            "source identity {} (account {})",
            source_id.arn, source_id.account
        ),
    );

    let session_name = route
        .aws
        .session_name
        .clone()
        .unwrap_or_else(|| default_session_name(walk.options.profile.as_deref()));
    if let Some(role) = &route.aws.role_arn
        && !assume_role(
            walk,
            route,
            base,
            source,
            &source_id.arn,
            role,
            &session_name,
        )
        .await
    {
        return;
    }

    let identity = match aws::route_identity(base, &route.aws, session_name, None).await {
        Ok(identity) => identity,
        Err(e) => {
            walk.fail(
                route.destination.check_hop(),
                format!("{e:#}"),
                "Set aws.region",
            );
            return;
        }
    };
    route
        .destination
        .check(walk, &route.aws, Some(&identity))
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn assume_role(
    walk: &mut Walk<'_>,
    route: &Route,
    base: &aws_types::SdkConfig,
    source: Credentials,
    source_arn: &str,
    role: &str,
    session_name: &str,
) -> bool {
    let mut sts = aws_sdk_sts::config::Builder::from(base).credentials_provider(source);
    if let Some(endpoint) = &route.aws.sts_endpoint {
        sts = sts.endpoint_url(endpoint);
    }
    let assumed = aws_sdk_sts::Client::from_conf(sts.build())
        .assume_role()
        .role_arn(role)
        .role_session_name(session_name)
        .duration_seconds(route.aws.session_duration_secs as i32)
        .set_external_id(
            route
                .aws
                .external_id
                .as_ref()
                .map(|id| id.expose().to_owned()),
        )
        .send()
        .await;
    match assumed {
        Ok(out) => {
            let arn = out.assumed_role_user.map(|u| u.arn).unwrap_or_default();
            let account = arn.split(':').nth(4).unwrap_or("?").to_owned();
            let expires = out
                .credentials
                .map(|c| c.expiration.to_string())
                .unwrap_or_else(|| "?".into());
            walk.ok(
                "aws.assume_role",
                format!(
                    "assumed {role} as {arn} (account {account}{}), session expires {expires}",
                    if route.aws.external_id.is_some() {
                        ", with external id"
                    } else {
                        ""
                    }
                ),
            )
        }
        Err(e) => {
            let text = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
            let fix = if text.contains("AccessDenied") {
                format!(
                    "Role {role}'s trust policy must allow sts:AssumeRole for {source_arn}{}; the \
                     source role needs sts:AssumeRole on {role}",
                    if route.aws.external_id.is_some() {
                        ", and its sts:ExternalId condition must equal aws.external_id"
                    } else {
                        " (if the trust policy requires sts:ExternalId, set aws.external_id)"
                    }
                )
            } else {
                "Check aws.role_arn, aws.sts_endpoint (or AWS_ENDPOINT_URL_STS) and the network path to STS"
                    .to_owned()
            };
            walk.fail(
                "aws.assume_role",
                format!("STS refused AssumeRole into {role}: {text}"),
                fix,
            )
        }
    }
}
