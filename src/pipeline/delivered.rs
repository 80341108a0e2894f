//! The records above a partition's committed offset that were already delivered, carried in the
//! offset commit's metadata string.
//!
//! A partition's committed offset is its first undelivered record, and lanes deliver out of
//! order: one slow request holds that offset while thousands of records above it are
//! acknowledged. A member killed then would leave all of them to be sent again. Kafka keeps a
//! metadata string with every committed offset (every broker, MSK included, up to
//! `offset.metadata.max.bytes`, 4,096 by default), so each commit also says which offsets above
//! the committed one are done; the next owner reads it at assignment and skips exactly those
//! (Confluent's Parallel Consumer does the same).
//!
//! The string is `doka1:<destination>:<committed offset>:<run count>:<codec>:<runs>`:
//! - `<destination>`: 16 hex digits naming the route's destination ([`fingerprint`]). Metadata
//!   written for another destination means nothing here: changing a route's destination sends
//!   everything above the committed offset again, as without metadata.
//! - `<committed offset>`: the offset the runs are counted from. A committed offset moved by a
//!   tool (or by anyone but the writer) no longer matches: nothing is skipped.
//! - `<run count>`: how many runs follow. Metadata cut short (a tool that truncates it) no longer
//!   matches it and is not used.
//! - `<codec>`: `r` (the runs as they are) or `z` (zlib-compressed, when the runs do not all fit
//!   otherwise).
//! - `<runs>`: URL-safe base64 (no padding) of LEB128 varints, two per run of delivered offsets:
//!   the gap from the end of the previous run (the first from `committed + 1`) and the run's
//!   length minus one.
//!
//! Whatever does not fit in the size limit is left out from the highest offsets down: what is
//! stored is always true, only less of it. Anything unexpected reads as "nothing delivered":
//! sending again is always safe.

use std::fmt;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::write::ZlibEncoder;

use base64_simd::URL_SAFE_NO_PAD as BASE64;
use md5::{Digest, Md5};

/// The format's name and version: the first field of the metadata.
pub const FORMAT: &str = "doka1";

/// The largest metadata string Kafka brokers keep by default (`offset.metadata.max.bytes`, also
/// MSK's default).
pub const DEFAULT_MAX_BYTES: usize = 4096;

/// Runs encoded at most before compressing (a partition whose delivered records alternate with
/// undelivered ones for hundreds of thousands of offsets): compression then cannot bring them
/// under any broker's limit anyway, and each commit would pay for trying.
const MAX_RAW_BYTES: usize = 256 * 1024;

/// The compression ratio [`encode`] tries for at most.
pub const MAX_RATIO: usize = 16;

/// Runs between the flushes that measure the compressed size.
const CHUNK: usize = 32;

/// What finishing a flushed zlib stream adds: an empty final block and the Adler-32.
const ZLIB_END: usize = 8;

/// What a decoded metadata string may expand to (a zlib bomb is refused, not inflated).
const MAX_DECODED_BYTES: u64 = 4 * 1024 * 1024;

/// Sorted, disjoint, non-adjacent ranges of offsets `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveredRanges(Vec<(i64, i64)>);

impl DeliveredRanges {
    /// From ranges in any order, overlapping or not; empty ranges are ignored.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut all: Vec<(i64, i64)> = ranges.into_iter().filter(|(s, e)| s < e).collect();
        all.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(all.len());
        for (start, end) in all {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Self(merged)
    }

    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many offsets the ranges hold.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(s, e)| (e - s) as u64).sum()
    }

    pub fn contains(&self, offset: i64) -> bool {
        // The first range that ends after `offset`.
        let at = self.0.partition_point(|&(_, end)| end <= offset);
        self.0.get(at).is_some_and(|&(start, _)| start <= offset)
    }

    /// The ranges cut to the offsets above `offset`.
    pub fn above(&self, offset: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        let at = self.0.partition_point(|&(_, end)| end <= offset + 1);
        self.0[at..]
            .iter()
            .map(move |&(start, end)| (start.max(offset + 1), end))
    }
}

/// Names a route's destination in 16 hex digits: the MD5 of `identity` (what the destination
/// is: kind, name or ARN, region, account — see `Destination::commit_identity`).
pub fn fingerprint(identity: &str) -> String {
    let digest = Md5::digest(identity.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The metadata for a commit of `committed` with `delivered` (sorted, disjoint, each above
/// `committed`), at most `max_bytes` long: the lowest runs that fit. `None` when no run fits or
/// there is none (commit with empty metadata).
pub fn encode(
    fingerprint: &str,
    committed: i64,
    delivered: impl IntoIterator<Item = (i64, i64)>,
    max_bytes: usize,
) -> Option<String> {
    let header = format!("{FORMAT}:{fingerprint}:{committed}:");
    let (raw, ends) = varints(committed, delivered);
    if raw.is_empty() {
        return None;
    }
    // Room for the run count (at most as many digits as all runs have), the codec letter and
    // their colons.
    let count_digits = ends.len().to_string().len();
    let room = max_bytes.checked_sub(header.len() + count_digits + 3)?;
    // The raw runs that fit: base64 takes 4 characters for every 3 bytes.
    let raw_fit = ends.partition_point(|&end| base64_len(end) <= room);
    if raw_fit == ends.len() {
        let runs = ends.len();
        return Some(format!(
            "{header}{runs}:r:{}",
            BASE64.encode_to_string(&raw)
        ));
    }
    // Compressed: one pass, flushed every CHUNK runs, finds how many runs fit; that prefix is
    // then compressed once more, finished. Varints of small gaps and lengths compress well but
    // not past MAX_RATIO in practice, so at most room × MAX_RATIO bytes are looked at.
    let most = ends.partition_point(|&end| end <= room * MAX_RATIO);
    let mut stream = ZlibEncoder::new(Vec::new(), Compression::fast());
    let (mut fitting, mut written) = (0, 0);
    let mut next = CHUNK.min(most);
    while next > fitting {
        // Writing to a Vec cannot fail.
        let _ = stream.write_all(&raw[written..ends[next - 1]]);
        let _ = stream.flush();
        written = ends[next - 1];
        if base64_len(stream.get_ref().len() + ZLIB_END) > room {
            break;
        }
        fitting = next;
        next = (next + CHUNK).min(most);
    }
    let packed = (fitting > raw_fit)
        .then(|| deflate(&raw[..ends[fitting - 1]]))
        .filter(|p| base64_len(p.len()) <= room);
    let best = fitting;
    match packed {
        Some(p) => Some(format!("{header}{best}:z:{}", BASE64.encode_to_string(&p))),
        _ if raw_fit > 0 => Some(format!(
            "{header}{raw_fit}:r:{}",
            BASE64.encode_to_string(&raw[..ends[raw_fit - 1]])
        )),
        _ => None,
    }
}

/// Why a commit's metadata names no delivered records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unused {
    /// No metadata (a first commit, another tool's commit, or nothing was above the offset).
    Absent,
    /// Not doka's: written by another program.
    Foreign,
    /// Written by a doka whose format this one does not read.
    OtherVersion(String),
    /// Written for another destination (the route's destination changed).
    OtherDestination,
    /// Written for another committed offset (the offset was moved since).
    OtherOffset(i64),
    /// Doka's, but damaged or truncated.
    Unreadable(&'static str),
}

impl fmt::Display for Unused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => write!(f, "the commit has no metadata"),
            Self::Foreign => write!(f, "its metadata is not doka's"),
            Self::OtherVersion(v) => write!(f, "its metadata is in format {v}, not {FORMAT}"),
            Self::OtherDestination => write!(f, "its metadata was written for another destination"),
            Self::OtherOffset(o) => write!(f, "its metadata was written for offset {o}"),
            Self::Unreadable(why) => write!(f, "its metadata is unreadable ({why})"),
        }
    }
}

/// The delivered offsets a commit of `committed` with `metadata` names for the destination
/// `fingerprint`.
pub fn decode(
    metadata: &[u8],
    fingerprint: &str,
    committed: i64,
) -> Result<DeliveredRanges, Unused> {
    if metadata.is_empty() {
        return Err(Unused::Absent);
    }
    let text = std::str::from_utf8(metadata).map_err(|_| Unused::Foreign)?;
    let mut fields = text.splitn(6, ':');
    let format = fields.next().unwrap_or_default();
    if format != FORMAT {
        let looks_like_doka = format.starts_with("doka")
            && format.len() > 4
            && format[4..].bytes().all(|b| b.is_ascii_digit());
        return Err(if looks_like_doka {
            Unused::OtherVersion(format.to_owned())
        } else {
            Unused::Foreign
        });
    }
    let (Some(destination), Some(offset), Some(count), Some(codec), Some(runs)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Unused::Unreadable("fields missing"));
    };
    if destination != fingerprint {
        return Err(Unused::OtherDestination);
    }
    let written_for: i64 = offset
        .parse()
        .map_err(|_| Unused::Unreadable("the offset is not a number"))?;
    if written_for != committed {
        return Err(Unused::OtherOffset(written_for));
    }
    let count: usize = count
        .parse()
        .map_err(|_| Unused::Unreadable("the run count is not a number"))?;
    let bytes = BASE64
        .decode_to_vec(runs)
        .map_err(|_| Unused::Unreadable("not base64"))?;
    let raw = match codec {
        "r" => bytes,
        "z" => inflate(&bytes).ok_or(Unused::Unreadable("not zlib"))?,
        _ => return Err(Unused::Unreadable("unknown codec")),
    };
    let ranges = runs_of(committed, &raw).ok_or(Unused::Unreadable("truncated or out of range"))?;
    if ranges.len() != count {
        return Err(Unused::Unreadable("cut short: fewer runs than it says"));
    }
    Ok(DeliveredRanges::from_ranges(ranges))
}

/// The varints of `delivered` counted from `committed`, and where each run's varints end.
fn varints(
    committed: i64,
    delivered: impl IntoIterator<Item = (i64, i64)>,
) -> (Vec<u8>, Vec<usize>) {
    let (mut raw, mut ends) = (Vec::new(), Vec::new());
    let mut previous_end = committed.saturating_add(1);
    for (start, end) in delivered {
        // The caller's promise (sorted, disjoint, above the commit); a run that breaks it is
        // left out with everything after it, never stored wrong.
        if start < previous_end || end <= start || raw.len() >= MAX_RAW_BYTES {
            break;
        }
        push_varint(&mut raw, (start - previous_end) as u64);
        push_varint(&mut raw, (end - start - 1) as u64);
        ends.push(raw.len());
        previous_end = end;
    }
    (raw, ends)
}

/// The runs, as written (each starts after the previous one ends).
fn runs_of(committed: i64, mut raw: &[u8]) -> Option<Vec<(i64, i64)>> {
    let mut ranges = Vec::new();
    let mut previous_end = committed.checked_add(1)?;
    while !raw.is_empty() {
        let gap = i64::try_from(read_varint(&mut raw)?).ok()?;
        let length = i64::try_from(read_varint(&mut raw)?).ok()?.checked_add(1)?;
        let start = previous_end.checked_add(gap)?;
        let end = start.checked_add(length)?;
        ranges.push((start, end));
        previous_end = end;
    }
    Some(ranges)
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        // The tenth byte holds the 64th bit only: more is damage, not a bigger number.
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn base64_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

fn deflate(raw: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(raw);
    encoder.finish().unwrap_or_default()
}

fn inflate(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(bytes)
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= MAX_DECODED_BYTES).then_some(out)
}

#[cfg(test)]
mod tests;
