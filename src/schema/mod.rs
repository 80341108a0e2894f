//! Schema-registry records: Avro, Protobuf and JSON Schema values (and keys) written through a
//! Confluent-compatible registry or the AWS Glue Schema Registry, decoded to JSON.
//!
//! A [`Decoder`] serves one side (value or key) of one route. It reads the record's framing
//! ([`wire`]), looks its schema up in the [`cache`] and decodes the payload with it ([`avro`],
//! [`protobuf`], JSON text as it is). A schema not yet known is fetched in the background
//! ([`registry`]); meanwhile the record *waits* — the intake holds its partition's records in
//! order, within the route's in-flight share — so nothing is skipped and nothing committed past
//! it. A record that can never decode follows the side's policy (`on_undecodable`).
//! docs/SCHEMAS.md is the user's guide and the JSON mapping.

pub mod avro;
mod avro_shape;
pub mod cache;
pub mod glue;
pub mod protobuf;
pub mod registry;
pub mod settings;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::telemetry::schema_metrics::{FetchOutcome, SchemaMetrics, Undecodable};
use cache::{Lookup, SchemaCache};
use registry::{FetchError, Registry, RegistrySchema};
pub use settings::{DecodeConfig, SideConfig, UndecodablePolicy};
use wire::{Framing, SchemaRef};

/// The schema languages both registries carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFormat {
    Avro,
    Protobuf,
    Json,
}

impl SchemaFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Avro => "avro",
            Self::Protobuf => "protobuf",
            Self::Json => "json",
        }
    }
}

/// A schema ready to decode records.
pub struct Schema {
    kind: Kind,
    /// The envelope's `value_schema` / `key_schema` object, rendered once.
    pub identity: Box<[u8]>,
}

enum Kind {
    Avro(avro::AvroSchema),
    Protobuf(protobuf::ProtoSchema),
    /// JSON Schema: the payload is JSON text (checked to be JSON; producers' serializers validate
    /// it against the schema).
    Json,
}

impl Schema {
    /// Builds a schema from what the registry answered. Err: it cannot be used.
    pub fn compile(fetched: &RegistrySchema, framing: Framing) -> Result<Self, String> {
        let kind = match fetched.format {
            SchemaFormat::Avro => Kind::Avro(avro::compile(&fetched.text, &fetched.references)?),
            SchemaFormat::Protobuf => Kind::Protobuf(protobuf::compile(
                &fetched.text,
                &fetched.references,
                framing,
            )?),
            SchemaFormat::Json => Kind::Json,
        };
        Ok(Self {
            kind,
            identity: serde_json::to_vec(&fetched.identity)
                .expect("a JSON value serialises")
                .into_boxed_slice(),
        })
    }

    /// Appends the JSON of a payload written with this schema to `out`.
    fn decode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match &self.kind {
            Kind::Avro(schema) => avro::to_json(schema, payload, out),
            Kind::Protobuf(schema) => schema.to_json(payload, out),
            Kind::Json => {
                let text = std::str::from_utf8(payload)
                    .map_err(|_| "the JSON Schema payload is not UTF-8".to_owned())?;
                if crate::json_text::push_compact_json(out, text) {
                    Ok(())
                } else {
                    Err(format!(
                        "the JSON Schema payload is not one JSON value (or nests deeper than {} \
                         levels)",
                        crate::json_text::MAX_JSON_DEPTH
                    ))
                }
            }
        }
    }

    #[cfg(test)]
    pub fn json_for_tests() -> Self {
        Self {
            kind: Kind::Json,
            identity: Box::from(&b"{}"[..]),
        }
    }
}

/// What decoding a record came to.
pub enum Decoding {
    /// The record's JSON, and the schema it was written with.
    Json(Vec<u8>, Arc<Schema>),
    /// Its schema is being fetched: the record (and its partition's later ones) wait.
    Wait,
    /// It can never decode: why, for the metrics and the policy.
    Undecodable(Undecodable, String),
}

/// Which part of a record a decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Value,
    Key,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Self::Value => "value",
            Self::Key => "key",
        }
    }
}

/// Decodes one side of one route's records.
pub struct Decoder {
    pub side: Side,
    pub policy: UndecodablePolicy,
    framing: Framing,
    cache: Arc<SchemaCache>,
    fetcher: Arc<Fetcher>,
    runtime: Handle,
    pub metrics: SchemaMetrics,
}

/// What a background fetch needs.
struct Fetcher {
    registry: Registry,
    /// How long "not found" is retried before the schema counts as gone.
    unknown_retry: Duration,
    route: Arc<str>,
    side: Side,
    framing: Framing,
    metrics: SchemaMetrics,
}

/// Fetches that fail for a reason that may pass (no answer, 5xx, credentials refused) are retried
/// from this pause, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A failing registry is reported at most this often per schema.
const REPORT_EVERY: Duration = Duration::from_secs(30);

impl Decoder {
    pub fn new(
        route: Arc<str>,
        side: Side,
        config: &SideConfig,
        registry: Registry,
        runtime: Handle,
        metrics: SchemaMetrics,
    ) -> Self {
        let framing = registry.framing();
        Self {
            side,
            policy: config.on_undecodable,
            framing,
            cache: Arc::new(SchemaCache::new(config.max_cached_schemas)),
            fetcher: Arc::new(Fetcher {
                registry,
                unknown_retry: Duration::from_millis(config.unknown_schema_retry_ms),
                route,
                side,
                framing,
                metrics: metrics.clone(),
            }),
            runtime,
            metrics,
        }
    }

    /// Decodes `bytes`; starts fetching its schema when it is not known yet.
    pub fn decode(&self, bytes: &[u8]) -> Decoding {
        let framed = match self.framing.read(bytes) {
            Ok(framed) => framed,
            Err(reason) => return self.undecodable(Undecodable::NotFramed, reason),
        };
        let schema = match self.cache.lookup(framed.schema) {
            (Lookup::Ready(schema), _) => schema,
            (Lookup::Fetching, first) => {
                if first {
                    self.start_fetch(framed.schema);
                }
                return Decoding::Wait;
            }
            (Lookup::Gone(reason), _) => {
                return self.undecodable(
                    Undecodable::UnknownSchema,
                    format!("{}: {reason}", framed.schema),
                );
            }
        };
        let mut json = Vec::with_capacity(bytes.len() * 2 + 16);
        match schema.decode(&framed.rest, &mut json) {
            // Counted by the caller once the whole record is decoded (a key may still wait).
            Ok(()) => Decoding::Json(json, schema),
            Err(reason) => self.undecodable(
                Undecodable::Malformed,
                format!("does not match its {}: {reason}", framed.schema),
            ),
        }
    }

    fn undecodable(&self, why: Undecodable, reason: String) -> Decoding {
        self.metrics.undecodable(why).inc();
        Decoding::Undecodable(why, reason)
    }

    fn start_fetch(&self, schema: SchemaRef) {
        let fetcher = self.fetcher.clone();
        let cache = self.cache.clone();
        self.runtime
            .spawn(async move { fetcher.until_known(schema, &cache).await });
    }
}

impl Fetcher {
    /// Fetches `schema` until the registry says what it is (or that it has none such).
    async fn until_known(&self, schema: SchemaRef, cache: &SchemaCache) {
        let mut backoff = FIRST_BACKOFF;
        let mut reported: Option<Instant> = None;
        let started = Instant::now();
        loop {
            let begun = Instant::now();
            let answer = self.registry.fetch(schema).await;
            self.metrics
                .fetch_duration
                .observe(begun.elapsed().as_secs_f64());
            let (outcome, problem) = match answer {
                Ok(fetched) => {
                    self.metrics.fetched(FetchOutcome::Ok);
                    // A compiler panic on a hostile schema must not leave its records waiting.
                    let compiled =
                        crate::panics::contained(|| Schema::compile(&fetched, self.framing))
                            .unwrap_or_else(|panic| {
                                Err(format!("compiling it panicked ({panic})"))
                            });
                    match compiled {
                        Ok(compiled) => {
                            let held = cache.ready(schema, Arc::new(compiled));
                            self.metrics.cached.set(held as i64);
                            info!(
                                route = %self.route,
                                side = self.side.name(),
                                format = fetched.format.name(),
                                "{schema} fetched from the {} after {:?}",
                                self.registry.describe(),
                                started.elapsed()
                            );
                        }
                        Err(reason) => {
                            warn!(route = %self.route, side = self.side.name(), "{schema} from the {} cannot be used: {reason}; its records cannot decode", self.registry.describe());
                            cache.gone(
                                schema,
                                format!("the registry's schema cannot be used: {reason}"),
                            );
                        }
                    }
                    return;
                }
                Err(FetchError::NotFound(reason)) if started.elapsed() < self.unknown_retry => {
                    self.metrics.fetched(FetchOutcome::NotFound);
                    (
                        FetchOutcome::NotFound,
                        format!(
                            "the registry does not know it ({reason}); asked again until \
                             decode.{}.unknown_schema_retry_ms has passed",
                            self.side.name()
                        ),
                    )
                }
                Err(FetchError::NotFound(reason)) => {
                    self.metrics.fetched(FetchOutcome::NotFound);
                    warn!(route = %self.route, side = self.side.name(), "the {} does not know {schema}: {reason}; its records cannot decode", self.registry.describe());
                    cache.gone(schema, format!("the registry does not know it ({reason})"));
                    return;
                }
                Err(FetchError::Refused(reason)) => (FetchOutcome::Refused, reason),
                Err(FetchError::Unavailable(reason)) => (FetchOutcome::Unavailable, reason),
            };
            if outcome != FetchOutcome::NotFound {
                self.metrics.fetched(outcome);
            }
            if reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                warn!(
                    route = %self.route,
                    side = self.side.name(),
                    "cannot fetch {schema} from the {}: {problem}; its partition's records wait \
                     (nothing is skipped or committed past them) and the fetch is retried",
                    self.registry.describe()
                );
                reported = Some(Instant::now());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
