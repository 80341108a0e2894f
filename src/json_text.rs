//! JSON text as doka embeds it: one value, re-emitted compactly (the JSON whitespace outside its
//! strings dropped, nothing else changed). A leaf: the envelope and schema decoding both use it.

use serde::de::IgnoredAny;

#[cfg(test)]
pub(crate) mod proptests;

/// The deepest nesting of arrays and objects embedded as JSON; deeper values are written as
/// strings. With the envelope's own levels (at most 3, for a header value) the whole object stays
/// within the default limits of common readers (serde_json 127, Jackson 1000, Python 1000).
pub const MAX_JSON_DEPTH: usize = 100;

/// If `text` is one JSON value, appends it without the JSON whitespace outside its strings and
/// returns true; otherwise appends nothing and returns false.
///
/// serde_json decides what is JSON. Two things it accepts when only validating are refused here,
/// because readers of the envelope (serde_json's own `Value` among them) would reject the whole
/// line: nesting deeper than [`MAX_JSON_DEPTH`], and a `\u` escape that is a lone UTF-16
/// surrogate (the grammar allows it, but it decodes to no Unicode text). Such a value is written
/// as a string instead.
pub fn push_compact_json(out: &mut Vec<u8>, text: &str) -> bool {
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        return false;
    }
    let bytes = text.as_bytes();
    let mark = out.len();
    // Copies runs of significant bytes; `run` is where the current one starts.
    let mut run = 0;
    let mut i = 0;
    let mut depth = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.extend_from_slice(&bytes[run..i]);
                i += 1;
                run = i;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    out.truncate(mark);
                    return false;
                }
                i += 1;
            }
            b']' | b'}' => {
                depth -= 1;
                i += 1;
            }
            b'"' => match string_end(bytes, i + 1) {
                Some(end) => i = end,
                None => {
                    out.truncate(mark);
                    return false;
                }
            },
            _ => i += 1,
        }
    }
    out.extend_from_slice(&bytes[run..]);
    true
}

/// From just after a string's opening quote, the index just past its closing quote; `None` for a
/// lone surrogate escape (or, defensively, a string that does not end).
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match *bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = hex4(bytes, i + 2)?;
                i += 6;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = if bytes.get(i..i + 2) == Some(b"\\u") {
                            hex4(bytes, i + 2)?
                        } else {
                            return None;
                        };
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        i += 6;
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => {}
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}
