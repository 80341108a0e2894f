//! Property tests of [`push_compact_json`], and the JSON generator the other property tests share
//! (the AWS answers of the sinks, the envelope's embedded values): a JSON tree rendered with the
//! whitespace and string escapes JSON allows, so a reader is tried on more than one spelling.

use proptest::prelude::*;
use serde_json::Value;

use super::{MAX_JSON_DEPTH, push_compact_json};

/// A JSON value as generated. Objects keep their members' order (names may repeat); a number
/// is its literal text, so big integers and exponents are spelled as a producer might.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// A JSON number literal of any shape JSON allows, within an f64's range (serde_json's `Value`
/// refuses `1e400`, which the envelope documents).
pub(crate) fn any_number() -> impl Strategy<Value = String> {
    "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,2})?"
}

/// Any JSON value, a few levels deep.
pub(crate) fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any_number().prop_map(Json::Num),
        any::<String>().prop_map(Json::Str),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Arr),
            prop::collection::vec((any::<String>(), inner), 0..5).prop_map(Json::Obj),
        ]
    })
}

/// The renderer's choices: splitmix64 from one seed proptest picks.
struct Choices {
    state: u64,
    /// Member names written with only the escapes JSON requires.
    plain_names: bool,
}

impl Choices {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

/// `value` as JSON text, with whitespace around its tokens and characters escaped as `seed`
/// decides.
pub(crate) fn render(value: &Json, seed: u64) -> String {
    rendered(value, seed, false)
}

/// [`render`], member names escaped only where JSON requires it, as AWS writes them (the SDK
/// matches the names of an error answer's members as written, escapes and all).
pub(crate) fn render_plain_names(value: &Json, seed: u64) -> String {
    rendered(value, seed, true)
}

fn rendered(value: &Json, seed: u64, plain_names: bool) -> String {
    let mut out = String::new();
    let mut choices = Choices {
        state: seed,
        plain_names,
    };
    whitespace(&mut out, &mut choices);
    write(&mut out, value, &mut choices);
    whitespace(&mut out, &mut choices);
    out
}

fn whitespace(out: &mut String, choices: &mut Choices) {
    while choices.one_in(3) {
        out.push([' ', '\t', '\n', '\r'][(choices.next() % 4) as usize]);
    }
}

fn write(out: &mut String, value: &Json, choices: &mut Choices) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Num(n) => out.push_str(n),
        Json::Str(s) => write_str(out, s, choices),
        Json::Arr(items) => {
            out.push('[');
            whitespace(out, choices);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    whitespace(out, choices);
                }
                write(out, item, choices);
                whitespace(out, choices);
            }
            out.push(']');
        }
        Json::Obj(members) => {
            out.push('{');
            whitespace(out, choices);
            for (i, (name, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    whitespace(out, choices);
                }
                if choices.plain_names {
                    out.push_str(&serde_json::to_string(name).expect("a string serializes"));
                } else {
                    write_str(out, name, choices);
                }
                whitespace(out, choices);
                out.push(':');
                whitespace(out, choices);
                write(out, item, choices);
                whitespace(out, choices);
            }
            out.push('}');
        }
    }
}

/// A JSON string: what must be escaped is, and any other character may be (`\uXXXX`, a
/// surrogate pair beyond the BMP, `\/`), in either hex case.
fn write_str(out: &mut String, s: &str, choices: &mut Choices) {
    let unicode = |out: &mut String, c: char, choices: &mut Choices| {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            if choices.one_in(2) {
                out.push_str(&format!("\\u{unit:04x}"));
            } else {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        }
    };
    out.push('"');
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '/' => Some("\\/"),
            _ => None,
        };
        let must = c == '"' || c == '\\' || u32::from(c) < 0x20;
        if must || choices.one_in(6) {
            match short {
                Some(escape) if choices.one_in(2) || (u32::from(c) < 0x20 && c != '/') => {
                    out.push_str(escape)
                }
                _ => unicode(out, c, choices),
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
}

/// The JSON text without the whitespace outside its strings: written here independently of
/// `push_compact_json`, as the property's oracle.
pub(crate) fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
            in_string = c == '"';
        }
    }
    out
}

/// How deeply arrays and objects nest in `value` (a scalar: 0).
pub(crate) fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether `push_compact_json` must embed `text`: serde_json reads it as a `Value` (which refuses
/// lone surrogates) and it nests at most [`MAX_JSON_DEPTH`] deep. `None` when serde_json refuses
/// only a number beyond an f64 (embedded all the same: the envelope documents it).
pub(crate) fn embeddable(text: &str) -> Option<bool> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => Some(depth(&value) <= MAX_JSON_DEPTH),
        Err(e) if e.to_string().contains("number out of range") => None,
        Err(_) => Some(false),
    }
}

/// Text that is nearly JSON: its characters, in any order.
pub(crate) fn json_like_text() -> impl Strategy<Value = String> {
    "[\\[\\]{}\",:0-9a-eE.+\\- \t\n\\\\/u]{0,40}"
}

/// A JSON string whose `\u` escapes are any 16-bit units: lone surrogates and pairs among them.
pub(crate) fn string_of_escapes() -> impl Strategy<Value = String> {
    let unit = |u: u16| format!("\\u{u:04X}");
    prop::collection::vec(
        prop_oneof![
            any::<u16>().prop_map(unit),
            (0xD800u16..0xE000).prop_map(unit),
            (0xD800u16..0xDC00, 0xDC00u16..0xE000).prop_map(move |(h, l)| unit(h) + &unit(l)),
            "[a-z ]{0,2}",
        ],
        0..6,
    )
    .prop_map(|pieces| format!("[\"{}\"]", pieces.concat()))
}

/// `depth` nested arrays (or objects) around a number, with whitespace.
pub(crate) fn nested(depth: usize, objects: bool, seed: u64) -> String {
    let mut value = Json::Num("1".into());
    for _ in 0..depth {
        value = if objects {
            Json::Obj(vec![("k".into(), value)])
        } else {
            Json::Arr(vec![value])
        };
    }
    render(&value, seed)
}

/// One call, checked: `true` appends exactly the compacted text after what `out` held, `false`
/// appends nothing. Returns the answer.
fn checked_push(prefix: &[u8], text: &str) -> Result<bool, TestCaseError> {
    let mut out = prefix.to_vec();
    let embedded = push_compact_json(&mut out, text);
    prop_assert_eq!(&out[..prefix.len()], prefix, "what was there stays");
    if embedded {
        let written = std::str::from_utf8(&out[prefix.len()..]).expect("UTF-8 in, UTF-8 out");
        prop_assert_eq!(written, compact(text));
        if let Ok(original) = serde_json::from_str::<Value>(text) {
            prop_assert_eq!(serde_json::from_str::<Value>(written).ok(), Some(original));
        }
    } else {
        prop_assert_eq!(out.len(), prefix.len(), "nothing appended");
    }
    if let Some(expected) = embeddable(text) {
        prop_assert_eq!(embedded, expected, "{:?}", text);
    }
    Ok(embedded)
}

proptest! {
    #[test]
    fn json_in_any_spelling_is_embedded_compactly(
        value in any_json(),
        seed in any::<u64>(),
        prefix in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let text = render(&value, seed);
        prop_assert!(checked_push(&prefix, &text)?, "{:?}", text);
    }

    #[test]
    fn any_text_is_embedded_exactly_when_readers_accept_it(
        text in prop_oneof![any::<String>(), json_like_text(), string_of_escapes()],
    ) {
        checked_push(b"x", &text)?;
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused(
        depth in (MAX_JSON_DEPTH - 3)..(MAX_JSON_DEPTH + 4),
        objects in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let text = nested(depth, objects, seed);
        prop_assert_eq!(checked_push(b"", &text)?, depth <= MAX_JSON_DEPTH);
    }
}
