//! Naming the source identity's provider when it is EKS Pod Identity. The SDK's default chain
//! gets it through its container-credentials provider, whose failures say only "Non-success
//! status from HTTP credential provider": doka's log says where the credentials come from, and a
//! failure says which agent and token file were asked and what to check.

use std::error::Error;
use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};

const FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
const TOKEN_FILE: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";
/// What the SDK's chain takes before EKS Pod Identity's full URI.
const PREFERRED: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
];

/// The EKS Pod Identity set-up the webhook puts into a pod's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The agent's credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    pub uri: String,
    /// The projected service account token (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
    pub token_file: String,
}

impl PodIdentity {
    /// From the process environment; see [`Self::from_env`].
    pub fn from_process_env() -> Option<Self> {
        Self::from_env(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Pod Identity is the source when its two variables are set and nothing the SDK's chain
    /// prefers is: static keys (`AWS_ACCESS_KEY_ID`), a web identity (IRSA's
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`), or an ECS task role (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        if PREFERRED.iter().any(|name| var(name).is_some()) {
            return None;
        }
        Some(Self {
            uri: var(FULL_URI)?,
            token_file: var(TOKEN_FILE)?,
        })
    }

    /// For the log: which agent, which token file (never the token).
    pub fn describe(&self) -> String {
        format!(
            "EKS Pod Identity (the agent at {FULL_URI} {}, with the token in {TOKEN_FILE} {})",
            self.uri, self.token_file
        )
    }
}

/// The source chain, its failures naming Pod Identity and what to check.
#[derive(Debug)]
pub struct NamedSource {
    inner: SharedCredentialsProvider,
    pod_identity: PodIdentity,
}

impl NamedSource {
    pub fn new(inner: SharedCredentialsProvider, pod_identity: PodIdentity) -> Self {
        Self {
            inner,
            pod_identity,
        }
    }
}

impl ProvideCredentials for NamedSource {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            self.inner.provide_credentials().await.map_err(|error| {
                let kind_kept = matches!(error, CredentialsError::CredentialsNotLoaded(_));
                let failed = PodIdentityFailed {
                    pod_identity: self.pod_identity.describe(),
                    error,
                };
                if kind_kept {
                    CredentialsError::not_loaded(failed)
                } else {
                    CredentialsError::provider_error(failed)
                }
            })
        })
    }
}

/// A failure of the Pod Identity source, naming it; the SDK's error is its source.
#[derive(Debug)]
struct PodIdentityFailed {
    pod_identity: String,
    error: CredentialsError,
}

impl fmt::Display for PodIdentityFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no source credentials from {}: check the service account's pod identity association \
             (aws eks list-pod-identity-associations) and that the eks-pod-identity-agent add-on \
             runs on the node",
            self.pod_identity
        )
    }
}

impl Error for PodIdentityFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const POD: [(&str, &str); 2] = [
        (FULL_URI, "http://169.254.170.23/v1/credentials"),
        (
            TOKEN_FILE,
            "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token",
        ),
    ];

    #[test]
    fn the_webhooks_two_variables_make_pod_identity_the_source() {
        let found = PodIdentity::from_env(env(&POD)).expect("Pod Identity");
        assert_eq!(found.uri, "http://169.254.170.23/v1/credentials");
        assert!(found.describe().contains("eks-pod-identity-token"));
        assert_eq!(PodIdentity::from_env(env(&POD[..1])), None, "no token file");
    }

    #[test]
    fn providers_earlier_in_the_chain_win() {
        for earlier in PREFERRED {
            let vars = [POD[0], POD[1], (earlier, "set")];
            assert_eq!(PodIdentity::from_env(env(&vars)), None, "{earlier}");
        }
    }
}
