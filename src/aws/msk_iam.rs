//! MSK IAM authentication tokens: what a client sends as its SASL/OAUTHBEARER token to a cluster
//! with IAM access control (port 9098).
//!
//! The token is a SigV4-presigned `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect`
//! (service `kafka-cluster`, valid 900 s, only `host` signed), with a `User-Agent` parameter added
//! after signing, base64url-encoded without padding — the format of AWS's own signers (Java, Go,
//! Python), which the brokers verify. It must be signed by the identity in the cluster's account:
//! in doka's picture the pod's source identity (IRSA role A), never the role assumed in the data
//! account.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

/// How long MSK accepts a token (the signers' fixed `X-Amz-Expires`).
pub const TOKEN_VALIDITY: Duration = Duration::from_secs(900);
const SERVICE: &str = "kafka-cluster";
const USER_AGENT: &str = concat!("doka/", env!("CARGO_PKG_VERSION"));

/// A signed token and when MSK stops accepting it.
pub struct MskToken {
    pub token: String,
    pub expires_at: SystemTime,
}

/// Signs tokens with the source credentials, for one region.
#[derive(Clone, Debug)]
pub struct MskTokenSigner {
    credentials: SharedCredentialsProvider,
    region: String,
    /// The last source credentials, reused while they have [`REUSE_MARGIN`] left: the default
    /// chain caches nothing, and with IRSA each resolution is an STS call (a brief STS outage
    /// at renewal time must not cost the Kafka connection).
    cached: Arc<Mutex<Option<Credentials>>>,
}

/// Credentials closer than this to their expiry are resolved again before signing.
const REUSE_MARGIN: Duration = Duration::from_secs(300);

impl MskTokenSigner {
    pub fn new(credentials: SharedCredentialsProvider, region: String) -> Self {
        Self {
            credentials,
            region,
            cached: Arc::default(),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Resolves the source credentials (the SDK chain renews them) and signs a token valid from
    /// now. The error says which step failed, never a key.
    pub async fn sign(&self) -> Result<MskToken, String> {
        let now = SystemTime::now();
        let fresh = |c: &Credentials| c.expiry().is_none_or(|e| e > now + REUSE_MARGIN);
        let cached = self.cached.lock().unwrap().clone().filter(fresh);
        let credentials = match cached {
            Some(c) => c,
            None => {
                let c = self.credentials.provide_credentials().await.map_err(|e| {
                    format!(
                        "no source AWS credentials to sign the MSK IAM token with: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
                    )
                })?;
                *self.cached.lock().unwrap() = Some(c.clone());
                c
            }
        };
        presign(&credentials, &self.region, now)
    }
}

/// The token for `credentials` in `region`, signed at `now`. It is valid for 900 s, or until the
/// credentials expire when that is sooner.
pub fn presign(
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
) -> Result<MskToken, String> {
    let url = format!("https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect");
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_VALIDITY);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("cannot set up signing: {e}"))?
        .into();
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| format!("cannot sign the MSK IAM request: {e}"))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| format!("cannot sign the MSK IAM request: {e}"))?
        .into_parts();
    let mut signed = http::Request::builder()
        .uri(&url)
        .body(())
        .map_err(|e| format!("bad MSK IAM URL: {e}"))?;
    instructions.apply_to_request_http1x(&mut signed);
    let presigned = format!("{}&User-Agent={USER_AGENT}", signed.uri());
    Ok(MskToken {
        token: base64_simd::URL_SAFE_NO_PAD.encode_to_string(presigned),
        expires_at: credentials
            .expiry()
            .map_or(now + TOKEN_VALIDITY, |e| e.min(now + TOKEN_VALIDITY)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(token: &str) -> String {
        let bytes = base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(token)
            .expect("base64url without padding");
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_token_is_a_presigned_connect_url_for_the_region() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "t");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = presign(&creds, "eu-west-1", at).unwrap();
        assert!(!token.token.contains('='), "no padding");
        let url = decode(&token.token);
        assert!(
            url.starts_with("https://kafka.eu-west-1.amazonaws.com/?"),
            "{url}"
        );
        for part in [
            "Action=kafka-cluster%3AConnect",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Fkafka-cluster%2Faws4_request",
            "X-Amz-Date=20231114T221320Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Security-Token=tok",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        assert!(url.ends_with(&format!("&User-Agent={USER_AGENT}")), "{url}");
        assert_eq!(token.expires_at, at + Duration::from_secs(900));
    }
}
