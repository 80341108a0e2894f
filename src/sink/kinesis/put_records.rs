//! Kinesis PutRecords on the wire: the one call doka makes thousands of times a second.
//!
//! The SDK's generated client copies every record into an owned entry, builds and re-parses an
//! object per entry (sequence numbers included) and walks its interceptor chain per request: a
//! third of doka's CPU at full speed (docs/PERFORMANCE.md). This writes the request body once from
//! the records' bytes, signs it with the SDK's signer (`aws-sigv4`), sends it on the SDK's HTTP
//! connector (`aws-smithy-http-client`: the same TLS and proxy settings, its own connection pool) and reads only
//! the fields doka uses from the answer. Credentials come from the same provider as the SDK
//! client's, and the endpoint from the SDK's own endpoint rules; every other Kinesis call still
//! goes through the SDK.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::error::display::DisplayErrorContext;
use bytes::Bytes;
use serde::Deserialize;

/// The JSON protocol's version header for Kinesis.
const TARGET: &str = "Kinesis_20131202.PutRecords";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const USER_AGENT: &str = concat!("doka/", env!("CARGO_PKG_VERSION"));

/// One entry as it goes on the wire.
#[derive(Debug, Clone, Copy)]
pub struct WireEntry<'a> {
    pub data: &'a [u8],
    pub partition_key: &'a str,
    pub explicit_hash_key: Option<u128>,
}

/// How one entry fared.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryResult {
    /// Written to this shard (`None` if the answer did not say).
    Written(Option<String>),
    Failed {
        code: String,
    },
}

/// Why a whole request failed.
#[derive(Debug)]
pub enum PutError {
    /// The service answered with an error status.
    Service {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// No answer within the request timeout.
    Timeout,
    /// Credentials could not be obtained.
    Credentials(String),
    /// Connecting, sending or reading failed.
    Transport(String),
    /// A success status with an answer that cannot be read or does not match the request.
    Malformed(String),
}

/// PutRecords to one stream.
pub struct PutRecordsClient {
    connector: Connector,
    credentials: CachedCredentials,
    region: String,
    url: String,
    /// `"StreamName":"…"` or `"StreamARN":"…"`, JSON-escaped once.
    stream_field: String,
    timeout: Duration,
}

impl std::fmt::Debug for PutRecordsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutRecordsClient")
            .field("url", &self.url)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl PutRecordsClient {
    /// `url` as the SDK's endpoint rules resolve it; `stream_name` or `stream_arn` addresses the
    /// stream; credentials are renewed `renew_early` before they expire.
    pub fn new(
        credentials: SharedCredentialsProvider,
        renew_early: Duration,
        region: String,
        url: String,
        stream_name: Option<&str>,
        stream_arn: Option<&str>,
        timeout: Duration,
    ) -> Self {
        let stream_field = match (stream_arn, stream_name) {
            (Some(arn), _) => format!("\"StreamARN\":{}", json_string(arn)),
            (None, name) => format!("\"StreamName\":{}", json_string(name.unwrap_or_default())),
        };
        let connector = Connector::builder()
            .connector_settings(
                aws_smithy_runtime_api::client::http::HttpConnectorSettings::builder()
                    .connect_timeout(timeout.min(Duration::from_secs(10)))
                    .build(),
            )
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
            ))
            // HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as the SDK's default client reads them.
            .proxy_config(aws_smithy_http_client::proxy::ProxyConfig::from_env())
            .build();
        Self {
            connector,
            credentials: CachedCredentials {
                provider: credentials,
                renew_early,
                current: tokio::sync::Mutex::new(None),
            },
            region,
            url,
            stream_field,
            timeout,
        }
    }

    /// One PutRecords call: each entry's result, in request order.
    pub async fn put(&self, entries: &[WireEntry<'_>]) -> Result<Vec<EntryResult>, PutError> {
        match tokio::time::timeout(self.timeout, self.attempt(entries)).await {
            Ok(result) => result,
            Err(_) => Err(PutError::Timeout),
        }
    }

    async fn attempt(&self, entries: &[WireEntry<'_>]) -> Result<Vec<EntryResult>, PutError> {
        let body = request_body(entries, &self.stream_field);
        let credentials = self.credentials.get().await?;
        let request = self.signed(body, &credentials)?;
        let response = self
            .connector
            .call(request)
            .await
            .map_err(|e| PutError::Transport(DisplayErrorContext(&e).to_string()))?;
        let status = response.status().as_u16();
        let error_type = response
            .headers()
            .get("x-amzn-ErrorType")
            .map(str::to_owned);
        let body = ByteStream::new(response.into_body())
            .collect()
            .await
            .map_err(|e| PutError::Transport(DisplayErrorContext(&e).to_string()))?
            .into_bytes();
        if !(200..300).contains(&status) {
            return Err(service_error(status, error_type.as_deref(), &body));
        }
        read_results(&body, entries.len())
    }

    fn signed(&self, body: Vec<u8>, credentials: &Credentials) -> Result<HttpRequest, PutError> {
        let identity = credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kinesis")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| PutError::Credentials(format!("cannot sign the request: {e}")))?
            .into();
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
        let signable = SignableRequest::new(
            "POST",
            &self.url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| PutError::Malformed(format!("cannot sign the request: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| PutError::Credentials(format!("cannot sign the request: {e}")))?
            .into_parts();
        let mut request = http::Request::builder()
            .method("POST")
            .uri(&self.url)
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", TARGET)
            .header("user-agent", USER_AGENT)
            .body(SdkBody::from(Bytes::from(body)))
            .map_err(|e| PutError::Malformed(format!("bad Kinesis endpoint {}: {e}", self.url)))?;
        instructions.apply_to_request_http1x(&mut request);
        HttpRequest::try_from(request)
            .map_err(|e| PutError::Malformed(format!("bad Kinesis request: {e}")))
    }
}

/// The body: `{"Records":[{"Data":"<base64>","PartitionKey":"…"},…],"StreamName":"…"}`, written
/// once into a buffer of the right size.
fn request_body(entries: &[WireEntry<'_>], stream_field: &str) -> Vec<u8> {
    // SIMD base64 (as the SDK itself uses): the scalar engine spent a tenth of doka's CPU here.
    let engine = &base64_simd::STANDARD;
    let size: usize = entries
        .iter()
        .map(|e| {
            engine.encoded_length(e.data.len())
                + e.partition_key.len() * 2
                + if e.explicit_hash_key.is_some() { 64 } else { 0 }
                + 40
        })
        .sum::<usize>()
        + stream_field.len()
        + 16;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"{\"Records\":[");
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Data\":\"");
        engine.encode_append(entry.data, &mut out);
        out.extend_from_slice(b"\",\"PartitionKey\":");
        serde_json::to_writer(&mut out, entry.partition_key).expect("writing to a Vec");
        if let Some(hash) = entry.explicit_hash_key {
            out.extend_from_slice(b",\"ExplicitHashKey\":\"");
            out.extend_from_slice(hash.to_string().as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],");
    out.extend_from_slice(stream_field.as_bytes());
    out.push(b'}');
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(rename = "FailedRecordCount")]
    failed_record_count: Option<i64>,
    #[serde(rename = "Records", borrow)]
    records: Vec<ResultEntry<'a>>,
}

#[derive(Deserialize)]
struct ResultEntry<'a> {
    #[serde(rename = "ShardId", borrow)]
    shard_id: Option<Cow<'a, str>>,
    #[serde(rename = "ErrorCode", borrow)]
    error_code: Option<Cow<'a, str>>,
}

/// The results of a successful call, checked against the request: a response that does not line
/// up with it proves nothing, and the whole request is sent again.
fn read_results(body: &[u8], count: usize) -> Result<Vec<EntryResult>, PutError> {
    let output: Output<'_> = serde_json::from_slice(body)
        .map_err(|e| PutError::Malformed(format!("cannot read the PutRecords answer: {e}")))?;
    if output.records.len() != count {
        return Err(PutError::Malformed(format!(
            "PutRecords answered {} results for {count} entries",
            output.records.len()
        )));
    }
    let results: Vec<EntryResult> = output
        .records
        .into_iter()
        .map(|r| match r.error_code {
            Some(code) => EntryResult::Failed {
                code: code.into_owned(),
            },
            None => EntryResult::Written(r.shard_id.map(Cow::into_owned)),
        })
        .collect();
    let failed = results
        .iter()
        .filter(|r| matches!(r, EntryResult::Failed { .. }))
        .count();
    let reported = output.failed_record_count.unwrap_or(0);
    if failed as i64 != reported {
        return Err(PutError::Malformed(format!(
            "PutRecords reported {reported} failed entries but marked {failed}"
        )));
    }
    Ok(results)
}

/// An error answer as the AWS JSON protocol spells it: the code in the `x-amzn-ErrorType` header
/// or the body's `__type`, either possibly with a namespace (`…#Code`) or a suffix (`Code:…`).
fn service_error(status: u16, error_type: Option<&str>, body: &[u8]) -> PutError {
    // Read loosely, as the SDK does: the first of the spellings that is present.
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| parsed.get(*n).and_then(|v| v.as_str()).map(str::to_owned))
    };
    let message = first(&["message", "Message", "errorMessage"]);
    let kind = first(&["__type", "code", "Code"]);
    let code = error_type
        .or(kind.as_deref())
        .map(|raw| {
            let raw = raw.split(':').next().unwrap_or(raw);
            raw.rsplit('#').next().unwrap_or(raw).to_owned()
        })
        .filter(|c| !c.is_empty());
    PutError::Service {
        status,
        code,
        message,
    }
}

/// How long obtaining credentials may take (the SDK's identity cache allows 5 s).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);

/// The provider's credentials, kept until `renew_early` before they expire; one caller renews
/// while the others wait for it.
struct CachedCredentials {
    provider: SharedCredentialsProvider,
    renew_early: Duration,
    current: tokio::sync::Mutex<Option<Credentials>>,
}

impl CachedCredentials {
    async fn get(&self) -> Result<Credentials, PutError> {
        let mut current = self.current.lock().await;
        if let Some(credentials) = current.as_ref()
            && credentials
                .expiry()
                .is_none_or(|expiry| expiry > SystemTime::now() + self.renew_early)
        {
            return Ok(credentials.clone());
        }
        // Bounded on its own, like the SDK's identity cache: a hung provider is a credentials
        // problem, not an overloaded stream.
        let fresh = tokio::time::timeout(CREDENTIALS_TIMEOUT, self.provider.provide_credentials())
            .await
            .map_err(|_| {
                PutError::Credentials(format!(
                    "no credentials within {CREDENTIALS_TIMEOUT:?} (the credential chain or AssumeRole hangs)"
                ))
            })?
            .map_err(|e| PutError::Credentials(DisplayErrorContext(&e).to_string()))?;
        *current = Some(fresh.clone());
        Ok(fresh)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_json_the_sdk_would_send() {
        let entries = [
            WireEntry {
                data: b"hello",
                partition_key: "k\"1",
                explicit_hash_key: None,
            },
            WireEntry {
                data: &[0, 255, 7],
                partition_key: "é",
                explicit_hash_key: Some(340282366920938463463374607431768211455),
            },
        ];
        let body = request_body(&entries, "\"StreamName\":\"s\"");
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "Records": [
                    {"Data": "aGVsbG8=", "PartitionKey": "k\"1"},
                    {"Data": "AP8H", "PartitionKey": "é",
                     "ExplicitHashKey": "340282366920938463463374607431768211455"},
                ],
                "StreamName": "s",
            })
        );
    }

    #[test]
    fn results_are_read_and_checked_against_the_request() {
        let body = br#"{"FailedRecordCount":1,"Records":[
            {"SequenceNumber":"49","ShardId":"shardId-000000000001"},
            {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"slow down"}]}"#;
        assert_eq!(
            read_results(body, 2).unwrap(),
            vec![
                EntryResult::Written(Some("shardId-000000000001".into())),
                EntryResult::Failed {
                    code: "ProvisionedThroughputExceededException".into()
                },
            ]
        );
        assert!(matches!(read_results(body, 3), Err(PutError::Malformed(_))));
        let miscounted = br#"{"FailedRecordCount":0,"Records":[{"ErrorCode":"InternalFailure"}]}"#;
        assert!(matches!(
            read_results(miscounted, 1),
            Err(PutError::Malformed(_))
        ));
        assert!(matches!(
            read_results(b"<html>", 1),
            Err(PutError::Malformed(_))
        ));
    }

    #[test]
    fn error_codes_lose_their_namespace_and_suffix() {
        let from_body = service_error(
            400,
            None,
            br#"{"__type":"com.amazonaws.kinesis.v20131202#ResourceNotFoundException","message":"Stream s not found"}"#,
        );
        assert!(matches!(
            from_body,
            PutError::Service { status: 400, code: Some(ref c), message: Some(ref m) }
                if c == "ResourceNotFoundException" && m == "Stream s not found"
        ));
        let from_header = service_error(
            400,
            Some("AccessDeniedException:http://internal.amazon.com/coral/"),
            b"{}",
        );
        assert!(matches!(
            from_header,
            PutError::Service { code: Some(ref c), message: None, .. } if c == "AccessDeniedException"
        ));
        let both = service_error(
            400,
            None,
            br#"{"__type":"ExpiredTokenException","code":"x","message":"expired","Message":"y"}"#,
        );
        assert!(matches!(
            both,
            PutError::Service { code: Some(ref c), message: Some(ref m), .. }
                if c == "ExpiredTokenException" && m == "expired"
        ));
        assert!(matches!(
            service_error(503, None, b"Service Unavailable"),
            PutError::Service {
                status: 503,
                code: None,
                ..
            }
        ));
    }
}
