//! The registries: what one schema fetch asks and how its answer is read.
//!
//! Errors are sorted by what doka can do about them: the registry does not know the schema
//! ([`FetchError::NotFound`]: its records can never decode), refuses doka's credentials, or does
//! not answer properly (both retried: a rotated secret or a registry back up heals them).

use std::time::Duration;

use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::error::display::DisplayErrorContext;
use serde::Deserialize;
use serde_json::{Value, json};

use super::settings::{ConfluentRegistry, SecretSource, SideConfig};
use super::wire::{Framing, SchemaRef};
use super::{SchemaFormat, Side};
use crate::aws::AwsConfig;

pub use super::glue::GlueClient;

/// A schema as the registry gave it.
pub struct RegistrySchema {
    pub format: SchemaFormat,
    pub text: String,
    /// The schemas it refers to (Avro named types, Protobuf imports) by the name it uses for
    /// them, each before those that refer to it.
    pub references: Vec<(String, String)>,
    /// What the envelope says of it (`registry`, `format`, id or version, subject or name).
    pub identity: Value,
}

#[derive(Debug)]
pub enum FetchError {
    NotFound(String),
    Refused(String),
    Unavailable(String),
}

pub enum Registry {
    Confluent(ConfluentClient),
    Glue(GlueClient),
}

impl Registry {
    /// The client of one side's registry: Confluent's over HTTPS, or Glue with the source
    /// identity (or the role the side names), in the side's region or the source's.
    pub async fn connect(
        config: &SideConfig,
        side: Side,
        route_aws: &AwsConfig,
        base: &aws_types::SdkConfig,
        session_name: String,
    ) -> anyhow::Result<Self> {
        if let Some(confluent) = &config.confluent {
            return ConfluentClient::new(confluent)
                .map(Self::Confluent)
                .map_err(|e| anyhow::anyhow!("decode.{}.confluent: {e}", side.name()));
        }
        let Some(glue) = &config.glue else {
            anyhow::bail!("decode.{} names no registry", side.name());
        };
        let region = match &glue.region {
            Some(region) => region.clone(),
            None => crate::aws::environment_region()
                .await
                .or_else(|| base.region().map(|r| r.to_string()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no AWS region for the Glue schema registry: set decode.{}.glue.region",
                        side.name()
                    )
                })?,
        };
        let settings = GlueClient::aws_settings(route_aws, glue, region);
        let identity = crate::aws::route_identity(base, &settings, session_name, None).await?;
        Ok(Self::Glue(GlueClient::new(&identity, glue)))
    }

    /// Whether the registry answers and takes doka's credentials: what it said, or what failed
    /// and what to change.
    pub async fn probe(&self) -> Result<String, (String, String)> {
        match self {
            Self::Confluent(c) => c.probe().await,
            Self::Glue(g) => g.probe().await,
        }
    }

    pub fn framing(&self) -> Framing {
        match self {
            Self::Confluent(_) => Framing::Confluent,
            Self::Glue(_) => Framing::Glue,
        }
    }

    /// For logs: which registry.
    pub fn describe(&self) -> String {
        match self {
            Self::Confluent(c) => format!("schema registry {}", c.url),
            Self::Glue(g) => g.describe(),
        }
    }

    pub async fn fetch(&self, schema: SchemaRef) -> Result<RegistrySchema, FetchError> {
        match (self, schema) {
            (Self::Confluent(c), SchemaRef::Confluent(id)) => c.fetch(id).await,
            (Self::Glue(g), SchemaRef::Glue(uuid)) => g.fetch(uuid).await,
            _ => Err(FetchError::NotFound(
                "the record's framing belongs to the other registry".into(),
            )),
        }
    }
}

/// A Confluent Schema Registry (or one with its REST API): `GET /schemas/ids/{id}`.
pub struct ConfluentClient {
    /// Without a trailing slash.
    pub url: String,
    auth: Option<Auth>,
    connector: Connector,
    timeout: Duration,
}

enum Auth {
    Basic {
        username: String,
        password: SecretSource,
    },
    Bearer(SecretSource),
}

/// Nested references are followed this deep at most (a cycle is an error, not a hang).
const MAX_REFERENCE_DEPTH: usize = 16;

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

#[derive(Deserialize)]
struct SubjectVersion {
    subject: String,
    version: i64,
}

impl ConfluentClient {
    pub fn new(config: &ConfluentRegistry) -> Result<Self, String> {
        let url = config
            .url
            .as_deref()
            .unwrap_or_default()
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let mut builder = Connector::builder()
            .connector_settings(
                aws_smithy_runtime_api::client::http::HttpConnectorSettings::builder()
                    .connect_timeout(timeout.min(Duration::from_secs(10)))
                    .build(),
            )
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .proxy_config(aws_smithy_http_client::proxy::ProxyConfig::from_env());
        if let Some(ca) = &config.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read `{}`: {e}", ca.display()))?;
            let store = aws_smithy_http_client::tls::TrustStore::empty()
                .with_native_roots(false)
                .with_pem_certificate(pem);
            let context = aws_smithy_http_client::tls::TlsContext::builder()
                .with_trust_store(store)
                .build()
                .map_err(|e| format!("the CA file `{}` cannot be used: {e}", ca.display()))?;
            builder = builder.tls_context(context);
        }
        let auth = if let Some(basic) = &config.basic_auth {
            basic.password_source().map(|password| Auth::Basic {
                username: basic.username.clone().unwrap_or_default(),
                password,
            })
        } else {
            config
                .bearer_auth
                .as_ref()
                .and_then(|b| b.token_source())
                .map(Auth::Bearer)
        };
        Ok(Self {
            url,
            auth,
            connector: builder.build(),
            timeout,
        })
    }

    async fn probe(&self) -> Result<String, (String, String)> {
        match self.get_json::<Vec<String>>("/subjects").await {
            Ok(subjects) => Ok(format!(
                "{} answers and takes doka's credentials ({} subjects)",
                self.url,
                subjects.len()
            )),
            Err(FetchError::Refused(problem)) => Err((
                problem,
                "Check decode.<side>.confluent.basic_auth or bearer_auth (the secret file or \
                 variable, and the registry's ACLs)"
                    .into(),
            )),
            Err(FetchError::NotFound(problem) | FetchError::Unavailable(problem)) => Err((
                problem,
                "Check decode.<side>.confluent.url, the network path to the registry and, for \
                 https, ca_file"
                    .into(),
            )),
        }
    }

    async fn fetch(&self, id: u32) -> Result<RegistrySchema, FetchError> {
        let answer: SchemaAnswer = self.get_json(&format!("/schemas/ids/{id}")).await?;
        let format = match answer.schema_type.as_deref().unwrap_or("AVRO") {
            "AVRO" => SchemaFormat::Avro,
            "PROTOBUF" => SchemaFormat::Protobuf,
            "JSON" => SchemaFormat::Json,
            other => {
                return Err(FetchError::NotFound(format!(
                    "its schema type {other} is not one doka reads (AVRO, PROTOBUF, JSON)"
                )));
            }
        };
        let mut references = Vec::new();
        self.resolve(&answer.references, &mut references, 0).await?;
        // Where it is registered: optional (older registries lack the call).
        let mut identity = json!({"registry": "confluent", "format": format.name(), "id": id});
        if let Ok(versions) = self
            .get_json::<Vec<SubjectVersion>>(&format!("/schemas/ids/{id}/versions"))
            .await
            && let Some(first) = versions.first()
        {
            identity["subject"] = json!(first.subject);
            identity["version"] = json!(first.version);
        }
        Ok(RegistrySchema {
            format,
            text: answer.schema,
            references,
            identity,
        })
    }

    /// Fetches `refs` (and theirs, depth first) into `out`, dependencies first.
    async fn resolve(
        &self,
        refs: &[Reference],
        out: &mut Vec<(String, String)>,
        depth: usize,
    ) -> Result<(), FetchError> {
        if refs.is_empty() {
            return Ok(());
        }
        if depth >= MAX_REFERENCE_DEPTH {
            return Err(FetchError::NotFound(format!(
                "its references nest deeper than {MAX_REFERENCE_DEPTH} (a cycle?)"
            )));
        }
        for r in refs {
            if out.iter().any(|(name, _)| *name == r.name) {
                continue;
            }
            let path = format!(
                "/subjects/{}/versions/{}",
                url_path_segment(&r.subject),
                r.version
            );
            let answer: SchemaAnswer = Box::pin(self.get_json(&path)).await?;
            Box::pin(self.resolve(&answer.references, out, depth + 1)).await?;
            out.push((r.name.clone(), answer.schema));
        }
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, FetchError> {
        let url = format!("{}{path}", self.url);
        let (status, body) = match tokio::time::timeout(self.timeout, self.get(&url)).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(FetchError::Unavailable(format!(
                    "no answer from {url} within {} ms (decode.*.confluent.request_timeout_ms)",
                    self.timeout.as_millis()
                )));
            }
        };
        match status {
            200..=299 => serde_json::from_slice(&body).map_err(|e| {
                FetchError::Unavailable(format!(
                    "{url} answered {status} with a body doka cannot read: {e}"
                ))
            }),
            401 | 403 => Err(FetchError::Refused(format!(
                "{url} answered {status}: the registry refuses doka's credentials (check \
                 decode.*.confluent.basic_auth or bearer_auth; a secret file is read again at \
                 each retry)"
            ))),
            404 if confluent_error_code(&body).is_some_and(|c| c / 100 == 404) => {
                Err(FetchError::NotFound(format!(
                    "{url} answered 404 (error code {})",
                    confluent_error_code(&body).unwrap_or_default()
                )))
            }
            _ => Err(FetchError::Unavailable(format!(
                "{url} answered {status}{}",
                if status == 404 {
                    " without a registry error code: is decode.*.confluent.url the registry's?"
                } else {
                    ""
                }
            ))),
        }
    }

    async fn get(&self, url: &str) -> Result<(u16, bytes::Bytes), FetchError> {
        let mut request = http::Request::builder()
            .method("GET")
            .uri(url)
            .header(
                "accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .header("user-agent", concat!("doka/", env!("CARGO_PKG_VERSION")));
        match &self.auth {
            None => {}
            Some(Auth::Basic { username, password }) => {
                let password = password.read().map_err(FetchError::Refused)?;
                let pair = format!("{username}:{}", password.expose());
                let encoded = base64_simd::STANDARD.encode_to_string(pair.as_bytes());
                request = request.header("authorization", format!("Basic {encoded}"));
            }
            Some(Auth::Bearer(token)) => {
                let token = token.read().map_err(FetchError::Refused)?;
                request = request.header("authorization", format!("Bearer {}", token.expose()));
            }
        }
        let request = request
            .body(SdkBody::empty())
            .map_err(|e| FetchError::Unavailable(format!("bad registry URL {url}: {e}")))?;
        let request = HttpRequest::try_from(request)
            .map_err(|e| FetchError::Unavailable(format!("bad registry request {url}: {e}")))?;
        let response =
            self.connector.call(request).await.map_err(|e| {
                FetchError::Unavailable(format!("{url}: {}", DisplayErrorContext(&e)))
            })?;
        let status = response.status().as_u16();
        let body = ByteStream::new(response.into_body())
            .collect()
            .await
            .map_err(|e| FetchError::Unavailable(format!("{url}: {}", DisplayErrorContext(&e))))?
            .into_bytes();
        Ok((status, body))
    }
}

/// Confluent's `error_code` in an error body (40403: schema not found).
fn confluent_error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("error_code")?
        .as_i64()
}

/// A subject name as one URL path segment.
fn url_path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
