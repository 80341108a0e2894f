//! The registries' wire formats: which schema a record names, and where its payload starts.
//!
//! - Confluent: `0x00`, a 4-byte big-endian schema id, then the payload (for Protobuf, message
//!   indexes first: a zigzag varint count, then that many zigzag varint indexes; a single `0x00`
//!   stands for `[0]`).
//! - Glue: `0x03` (header version), a compression byte (`0x00` none, `0x05` zlib of everything
//!   after the header), the 16-byte schema version UUID, then the payload (for Protobuf, a plain
//!   varint index into the schema's message types sorted by full name, first).

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

/// Which schema a record was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchemaRef {
    Confluent(u32),
    Glue([u8; 16]),
}

impl fmt::Display for SchemaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Confluent(id) => write!(f, "schema id {id}"),
            Self::Glue(uuid) => write!(f, "schema version {}", uuid_text(uuid)),
        }
    }
}

/// `8-4-4-4-12` lowercase hex.
pub fn uuid_text(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A record's schema and the bytes after the header (decompressed for Glue).
#[derive(Debug)]
pub struct Framed<'a> {
    pub schema: SchemaRef,
    pub rest: Cow<'a, [u8]>,
}

/// The registry a side's records are framed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Confluent,
    Glue,
}

const CONFLUENT_MAGIC: u8 = 0x00;
const GLUE_HEADER_VERSION: u8 = 0x03;
const GLUE_UNCOMPRESSED: u8 = 0x00;
const GLUE_ZLIB: u8 = 0x05;
/// A zlib payload may not inflate past this (a Kafka record is at most a few MiB; a small
/// "zip bomb" must not take the memory).
const MAX_INFLATED: u64 = 64 * 1024 * 1024;

impl Framing {
    /// The schema and payload of `bytes`, or why they are not in this framing.
    pub fn read<'a>(self, bytes: &'a [u8]) -> Result<Framed<'a>, String> {
        match self {
            Self::Confluent => match bytes {
                [CONFLUENT_MAGIC, a, b, c, d, rest @ ..] => Ok(Framed {
                    schema: SchemaRef::Confluent(u32::from_be_bytes([*a, *b, *c, *d])),
                    rest: Cow::Borrowed(rest),
                }),
                [CONFLUENT_MAGIC, ..] => Err(format!(
                    "{} bytes: too short for the Confluent header (magic byte 0x00 and a 4-byte \
                     schema id)",
                    bytes.len()
                )),
                _ => Err(not_framed(bytes, "Confluent (magic byte 0x00)")),
            },
            Self::Glue => {
                let Some((&[version, compression], rest)) = bytes.split_first_chunk::<2>() else {
                    return Err(not_framed(bytes, "Glue (header version 0x03)"));
                };
                if version != GLUE_HEADER_VERSION {
                    return Err(not_framed(bytes, "Glue (header version 0x03)"));
                }
                let Some((uuid, payload)) = rest.split_first_chunk::<16>() else {
                    return Err(format!(
                        "{} bytes: too short for the Glue header (18 bytes)",
                        bytes.len()
                    ));
                };
                let rest = match compression {
                    GLUE_UNCOMPRESSED => Cow::Borrowed(payload),
                    GLUE_ZLIB => Cow::Owned(inflate(payload)?),
                    other => {
                        return Err(format!(
                            "Glue compression byte 0x{other:02x} is unknown (0x00 none, 0x05 zlib)"
                        ));
                    }
                };
                Ok(Framed {
                    schema: SchemaRef::Glue(*uuid),
                    rest,
                })
            }
        }
    }
}

fn not_framed(bytes: &[u8], expected: &str) -> String {
    match bytes.first() {
        None => format!("the record is empty, not {expected} framed"),
        Some(0x00) => format!("the first byte is 0x00 (Confluent framing?), not {expected}"),
        Some(0x03) => format!("the first byte is 0x03 (Glue framing?), not {expected}"),
        Some(b) => format!("the first byte is 0x{b:02x}: not {expected} framed"),
    }
}

fn inflate(compressed: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(compressed.len() * 4);
    flate2::read::ZlibDecoder::new(compressed)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the zlib-compressed Glue payload does not inflate: {e}"))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(format!(
            "the zlib-compressed Glue payload inflates past {MAX_INFLATED} bytes"
        ));
    }
    Ok(out)
}

/// Reads a base-128 varint (as Protobuf writes it) from the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = bytes.split_first() else {
            return Err("the Protobuf message index ends early".into());
        };
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("the Protobuf message index is not a varint".into())
}

fn zigzag(bytes: &mut &[u8]) -> Result<i64, String> {
    let v = varint(bytes)?;
    Ok((v >> 1) as i64 ^ -((v & 1) as i64))
}

/// Confluent's Protobuf message indexes: the path to the record's message type (`[0]`: the
/// first message of the file; `[1, 0]`: the first nested type of the second), and the message.
pub fn confluent_message_indexes(mut rest: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let count = zigzag(&mut rest)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=100).contains(&count) {
        return Err(format!(
            "the Protobuf message index count {count} is not a path"
        ));
    }
    let mut path = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let index = zigzag(&mut rest)?;
        path.push(usize::try_from(index).map_err(|_| format!("message index {index} < 0"))?);
    }
    Ok((path, rest))
}

/// Glue's Protobuf message index (into the schema's message types sorted by full name), and the
/// message.
pub fn glue_message_index(mut rest: &[u8]) -> Result<(usize, &[u8]), String> {
    let index = varint(&mut rest)?;
    Ok((index as usize, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_header_names_the_schema_id() {
        let framed = Framing::Confluent
            .read(&[0, 0, 0, 1, 2, b'x'])
            .expect("framed");
        assert_eq!(framed.schema, SchemaRef::Confluent(258));
        assert_eq!(&*framed.rest, b"x");
        let err = Framing::Confluent.read(b"{\"a\":1}").unwrap_err();
        assert!(err.contains("0x7b"), "{err}");
        let err = Framing::Confluent.read(&[3, 0]).unwrap_err();
        assert!(err.contains("Glue framing?"), "{err}");
        assert!(Framing::Confluent.read(&[0, 0, 1]).is_err());
    }

    #[test]
    fn glue_header_names_the_version_and_inflates() {
        let uuid = [7u8; 16];
        let mut plain = vec![3, 0];
        plain.extend_from_slice(&uuid);
        plain.extend_from_slice(b"payload");
        let framed = Framing::Glue.read(&plain).expect("framed");
        assert_eq!(framed.schema, SchemaRef::Glue(uuid));
        assert_eq!(&*framed.rest, b"payload");

        let mut zipped = vec![3, 5];
        zipped.extend_from_slice(&uuid);
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, b"payload").unwrap();
        zipped.extend_from_slice(&encoder.finish().unwrap());
        assert_eq!(&*Framing::Glue.read(&zipped).unwrap().rest, b"payload");

        zipped.truncate(22);
        assert!(Framing::Glue.read(&zipped).unwrap_err().contains("zlib"));
        assert!(Framing::Glue.read(&[3, 9]).is_err());
        assert!(Framing::Glue.read(&[0, 0, 0, 0, 1]).is_err());
        assert_eq!(
            uuid_text(&[
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7
            ]),
            "12345678-9abc-def0-0001-020304050607"
        );
    }

    #[test]
    fn protobuf_message_indexes() {
        assert_eq!(
            confluent_message_indexes(&[0, 8, 42]).unwrap(),
            (vec![0], &[8u8, 42][..])
        );
        // Count 2 (zigzag 4), path [1, 0] (zigzag 2, 0).
        assert_eq!(
            confluent_message_indexes(&[4, 2, 0, 8]).unwrap(),
            (vec![1, 0], &[8u8][..])
        );
        assert!(confluent_message_indexes(&[4, 2]).is_err());
        assert!(confluent_message_indexes(&[1]).is_err()); // count -1
        assert_eq!(glue_message_index(&[3, 8]).unwrap(), (3, &[8u8][..]));
        assert_eq!(glue_message_index(&[0x81, 0x01]).unwrap(), (129, &[][..]));
    }
}
