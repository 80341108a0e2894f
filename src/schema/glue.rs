//! The AWS Glue Schema Registry: `GetSchemaVersion` by the version id each record carries, with
//! the source identity (the registry usually lives beside MSK) or a role assumed for it.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_glue::error::SdkError;
use aws_sdk_glue::types::DataFormat;
use aws_smithy_types::error::display::DisplayErrorContext;
use serde_json::json;

use super::SchemaFormat;
use super::registry::{FetchError, RegistrySchema};
use super::settings::GlueRegistry;
use super::wire::uuid_text;
use crate::aws::{AwsConfig, RouteIdentity};

pub struct GlueClient {
    client: aws_sdk_glue::Client,
    region: String,
    registry_name: Option<String>,
}

/// Glue answers within this, or the fetch is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl GlueClient {
    pub fn new(identity: &RouteIdentity, config: &GlueRegistry) -> Self {
        let mut builder = aws_sdk_glue::config::Builder::from(&identity.sdk)
            .credentials_provider(identity.credentials.clone())
            .identity_cache(identity.identity_cache())
            // doka retries with its own backoff, and a record waits meanwhile.
            .retry_config(RetryConfig::disabled())
            .timeout_config(crate::aws::timeouts(REQUEST_TIMEOUT));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Self {
            client: aws_sdk_glue::Client::from_conf(builder.build()),
            region: identity.region.clone(),
            registry_name: config.registry_name.clone(),
        }
    }

    /// The AWS settings the Glue identity is built from: the route's STS endpoint, the Glue
    /// section's region and role.
    pub fn aws_settings(route_aws: &AwsConfig, config: &GlueRegistry, region: String) -> AwsConfig {
        AwsConfig {
            region: Some(region),
            role_arn: config.role_arn.clone(),
            external_id: config.external_id.clone(),
            ..route_aws.clone()
        }
    }

    pub fn describe(&self) -> String {
        match &self.registry_name {
            Some(name) => format!("Glue schema registry `{name}` ({})", self.region),
            None => format!("Glue schema registry ({})", self.region),
        }
    }

    pub fn client(&self) -> &aws_sdk_glue::Client {
        &self.client
    }

    pub fn registry_name(&self) -> Option<&str> {
        self.registry_name.as_deref()
    }

    /// GetRegistry when the registry is named; otherwise a GetSchemaVersion for an id no
    /// registry holds, which proves reachability and permission (EntityNotFound is the answer
    /// hoped for) with the one permission doka needs anyway.
    pub(super) async fn probe(&self) -> Result<String, (String, String)> {
        let fix_denied = "Grant the identity glue:GetSchemaVersion (and glue:GetRegistry) on the \
                          registry and its schemas (deploy/iam/role-a-policy.json)";
        if let Some(name) = &self.registry_name {
            return match self
                .client
                .get_registry()
                .registry_id(
                    aws_sdk_glue::types::RegistryId::builder()
                        .registry_name(name)
                        .build(),
                )
                .send()
                .await
            {
                Ok(_) => Ok(format!("{} answers", self.describe())),
                Err(e) => {
                    let text = DisplayErrorContext(&e).to_string();
                    let fix = match &e {
                        SdkError::ServiceError(s) if s.err().is_entity_not_found_exception() => {
                            "Check decode.<side>.glue.registry_name and region".to_owned()
                        }
                        SdkError::ServiceError(s) if s.err().is_access_denied_exception() => {
                            fix_denied.to_owned()
                        }
                        _ => "Check the network path to Glue (a VPC endpoint in private \
                              subnets) and decode.<side>.glue.endpoint"
                            .to_owned(),
                    };
                    Err((format!("GetRegistry failed: {text}"), fix))
                }
            };
        }
        match self.fetch([0; 16]).await {
            Ok(_) | Err(FetchError::NotFound(_)) => Ok(format!(
                "{} answers GetSchemaVersion with doka's credentials",
                self.describe()
            )),
            Err(FetchError::Refused(problem)) => Err((problem, fix_denied.to_owned())),
            Err(FetchError::Unavailable(problem)) => Err((
                problem,
                "Check the network path to Glue (a VPC endpoint in private subnets), the region \
                 and decode.<side>.glue.endpoint"
                    .to_owned(),
            )),
        }
    }

    pub(super) async fn fetch(&self, uuid: [u8; 16]) -> Result<RegistrySchema, FetchError> {
        let version_id = uuid_text(&uuid);
        let out = self
            .client
            .get_schema_version()
            .schema_version_id(&version_id)
            .send()
            .await
            .map_err(|e| {
                let text = DisplayErrorContext(&e).to_string();
                match &e {
                    SdkError::ServiceError(service)
                        if service.err().is_entity_not_found_exception() =>
                    {
                        FetchError::NotFound(format!("GetSchemaVersion: {text}"))
                    }
                    SdkError::ServiceError(service)
                        if service.err().is_access_denied_exception() =>
                    {
                        FetchError::Refused(format!(
                            "GetSchemaVersion was refused: {text} (the identity needs \
                             glue:GetSchemaVersion on the registry and schema; see deploy/iam)"
                        ))
                    }
                    _ => FetchError::Unavailable(format!("GetSchemaVersion failed: {text}")),
                }
            })?;
        let format = match out.data_format() {
            Some(DataFormat::Avro) => SchemaFormat::Avro,
            Some(DataFormat::Protobuf) => SchemaFormat::Protobuf,
            Some(DataFormat::Json) => SchemaFormat::Json,
            other => {
                return Err(FetchError::NotFound(format!(
                    "its data format {other:?} is not one doka reads (AVRO, PROTOBUF, JSON)"
                )));
            }
        };
        let Some(text) = out.schema_definition() else {
            return Err(FetchError::Unavailable(
                "GetSchemaVersion answered without a SchemaDefinition".into(),
            ));
        };
        let mut identity = json!({
            "registry": "glue",
            "format": format.name(),
            "version_id": version_id,
        });
        // arn:aws:glue:<region>:<account>:schema/<registry>/<schema>
        if let Some((registry, schema)) = out
            .schema_arn()
            .and_then(|arn| arn.split_once(":schema/"))
            .and_then(|(_, path)| path.split_once('/'))
        {
            identity["registry_name"] = json!(registry);
            identity["schema_name"] = json!(schema);
        }
        if let Some(version) = out.version_number() {
            identity["version"] = json!(version);
        }
        Ok(RegistrySchema {
            format,
            text: text.to_owned(),
            references: Vec::new(),
            identity,
        })
    }
}
