//! A route's schema decoding of a record's value and key: the JSON it sends instead of the bytes,
//! a record that must wait for its schema, and what one that never decodes becomes.

use std::sync::Arc;

use prometheus::IntGauge;

use super::envelope;
use super::{Fallback, Fetched};
use crate::schema::{Decoder, Decoding, Schema, Side, UndecodablePolicy};

/// The decoders of one route (`decode:`), each side optional.
pub struct RouteDecoding {
    pub value: Option<Decoder>,
    pub key: Option<Decoder>,
    /// The route's records waiting for a schema.
    pub waiting: IntGauge,
}

/// One side of a record after decoding.
pub enum SideOut {
    /// The route does not decode this side.
    Plain,
    /// Its JSON, and the schema it was written with.
    Decoded(Vec<u8>, Arc<Schema>),
    /// The route decodes this side, but this record's is absent or passed through as its bytes.
    Undecoded,
}

/// What decoding a record came to.
pub enum Outcome {
    /// Key and value, as they go out.
    Ready { key: SideOut, value: SideOut },
    /// A schema is being fetched: the record waits (and its partition's later records with it).
    Wait,
    /// It can never decode, and its side's policy withholds it: what happens, why, and the
    /// setting that says so.
    Withhold {
        action: Fallback,
        reason: String,
        setting: &'static str,
    },
}

impl RouteDecoding {
    pub fn decode(&self, msg: &impl Fetched) -> Outcome {
        let value = match side(self.value.as_ref(), msg.value()) {
            Ok(Some(value)) => value,
            Ok(None) => return Outcome::Wait,
            Err(withhold) => return withhold,
        };
        match side(self.key.as_ref(), msg.key()) {
            Ok(Some(key)) => {
                // Counted now, once per record: a side decoded while the other waited is decoded
                // again next round.
                for (decoder, out) in [(&self.value, &value), (&self.key, &key)] {
                    if let (Some(decoder), SideOut::Decoded(..)) = (decoder, out) {
                        decoder.metrics.decoded.inc();
                    }
                }
                Outcome::Ready { key, value }
            }
            Ok(None) => Outcome::Wait,
            Err(withhold) => withhold,
        }
    }
}

/// `Ok(None)`: wait.
fn side(decoder: Option<&Decoder>, bytes: Option<&[u8]>) -> Result<Option<SideOut>, Outcome> {
    let Some(decoder) = decoder else {
        return Ok(Some(SideOut::Plain));
    };
    // A null or empty side (a tombstone the policy sends, a record without a key) has nothing
    // to decode.
    let Some(bytes) = bytes.filter(|b| !b.is_empty()) else {
        return Ok(Some(SideOut::Undecoded));
    };
    match decoder.decode(bytes) {
        Decoding::Json(json, schema) => Ok(Some(SideOut::Decoded(json, schema))),
        Decoding::Wait => Ok(None),
        Decoding::Undecodable(_, reason) => {
            let (setting, action) = match (decoder.side, decoder.policy) {
                (_, UndecodablePolicy::PassThrough) => return Ok(Some(SideOut::Undecoded)),
                (Side::Value, UndecodablePolicy::DeadLetter) => {
                    ("decode.value.on_undecodable", Fallback::DeadLetter)
                }
                (Side::Value, UndecodablePolicy::Stop) => {
                    ("decode.value.on_undecodable", Fallback::Stop)
                }
                (Side::Key, UndecodablePolicy::DeadLetter) => {
                    ("decode.key.on_undecodable", Fallback::DeadLetter)
                }
                (Side::Key, UndecodablePolicy::Stop) => {
                    ("decode.key.on_undecodable", Fallback::Stop)
                }
            };
            Err(Outcome::Withhold {
                action,
                reason: format!("its {} does not decode: {reason}", decoder.side.name()),
                setting,
            })
        }
    }
}

impl SideOut {
    /// The bytes this side carries out: its JSON when decoded.
    pub fn bytes<'a>(&'a self, original: Option<&'a [u8]>) -> Option<&'a [u8]> {
        match self {
            Self::Decoded(json, _) => Some(json),
            _ => original,
        }
    }

    pub fn envelope<'a>(&'a self, original: Option<&'a [u8]>) -> envelope::Side<'a> {
        match self {
            Self::Plain => envelope::Side::Bytes(original),
            Self::Decoded(json, schema) => envelope::Side::Decoded {
                json,
                schema: &schema.identity,
            },
            Self::Undecoded => envelope::Side::Undecoded(original),
        }
    }
}
