//! Reading one field of a JSON record value, for partition keys taken from the value
//! (e.g. `customer.id`).
//!
//! A path is a list of steps from the top-level value: each step is an object key, or, when the
//! step is all ASCII digits and the value at that point is an array, an index into it
//! (`items.0.sku`). A digit step on an object is an ordinary key (`{"0": …}`).

use serde_json::Value;

/// The text of the field at `path` in the JSON `value`: a string's contents, or a number's or
/// boolean's JSON text (`42`, `1.5`, `true`). `None` when the value is not JSON, the field is
/// missing, or it is null, an object or an array (the caller then falls back).
pub fn field_text(value: &[u8], path: &[String]) -> Option<String> {
    let root: Value = serde_json::from_slice(value).ok()?;
    let mut at = &root;
    for step in path {
        at = match at {
            Value::Object(map) => map.get(step)?,
            Value::Array(items) if is_index(step) => items.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match at {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Object(_) | Value::Array(_) => None,
    }
}

fn is_index(step: &str) -> bool {
    !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::settings::field_path as parse_path;

    fn text(value: &str, path: &str) -> Option<String> {
        field_text(value.as_bytes(), &parse_path(path).unwrap())
    }

    const ORDER: &str = r#"{"customer": {"id": "c-17", "n": 42, "vip": true, "score": -1.5,
        "none": null, "tags": ["a", "b"], "addr": {"city": "Oslo"}, "0": "zero"},
        "items": [{"sku": "X1"}, {"sku": 9}], "top": "t", "big": 123456789012345678901234567890}"#;

    #[test]
    fn strings_give_their_contents() {
        assert_eq!(text(ORDER, "customer.id").as_deref(), Some("c-17"));
        assert_eq!(text(ORDER, "top").as_deref(), Some("t"));
        assert_eq!(text(ORDER, "customer.addr.city").as_deref(), Some("Oslo"));
        assert_eq!(
            text(r#"{"k": "a\"b\u00e9"}"#, "k").as_deref(),
            Some("a\"bé")
        );
        assert_eq!(text(r#"{"k": ""}"#, "k").as_deref(), Some(""));
    }

    #[test]
    fn numbers_and_bools_give_their_json_text() {
        assert_eq!(text(ORDER, "customer.n").as_deref(), Some("42"));
        assert_eq!(text(ORDER, "customer.score").as_deref(), Some("-1.5"));
        assert_eq!(text(ORDER, "customer.vip").as_deref(), Some("true"));
        assert_eq!(text(r#"{"f": false}"#, "f").as_deref(), Some("false"));
        // Without arbitrary precision serde_json reads a big integer as a float.
        assert!(text(ORDER, "big").is_some());
    }

    #[test]
    fn null_object_array_missing_give_none() {
        assert_eq!(text(ORDER, "customer.none"), None);
        assert_eq!(text(ORDER, "customer"), None);
        assert_eq!(text(ORDER, "customer.tags"), None);
        assert_eq!(text(ORDER, "customer.missing"), None);
        assert_eq!(text(ORDER, "nope.id"), None);
        assert_eq!(text(ORDER, "top.deeper"), None);
        assert_eq!(text(ORDER, "customer.id.x"), None);
    }

    #[test]
    fn values_that_are_not_a_json_object_give_none() {
        assert_eq!(text("not json", "id"), None);
        assert_eq!(text(r#"{"id": 1"#, "id"), None);
        assert_eq!(text("", "id"), None);
        assert_eq!(text("42", "id"), None);
        assert_eq!(text(r#"["id"]"#, "id"), None);
        assert_eq!(field_text(b"\xff\xfe", &["id".to_string()]), None);
    }

    #[test]
    fn digit_steps_index_arrays() {
        assert_eq!(text(ORDER, "items.0.sku").as_deref(), Some("X1"));
        assert_eq!(text(ORDER, "items.1.sku").as_deref(), Some("9"));
        assert_eq!(text(ORDER, "items.2.sku"), None);
        assert_eq!(text(ORDER, "customer.tags.1").as_deref(), Some("b"));
        assert_eq!(text(ORDER, "items.x"), None);
        assert_eq!(text(ORDER, "items.99999999999999999999999"), None);
        // On an object, digits are a key.
        assert_eq!(text(ORDER, "customer.0").as_deref(), Some("zero"));
    }

    #[test]
    fn empty_path_gives_the_top_level_scalar() {
        assert_eq!(field_text(b"\"abc\"", &[]).as_deref(), Some("abc"));
        assert_eq!(field_text(b"7", &[]).as_deref(), Some("7"));
        assert_eq!(field_text(b"{}", &[]), None);
    }

    #[test]
    fn parse_path_splits_on_dots() {
        assert_eq!(parse_path("id").unwrap(), ["id"]);
        assert_eq!(parse_path("customer.id").unwrap(), ["customer", "id"]);
        assert_eq!(parse_path("a b.c-d.0").unwrap(), ["a b", "c-d", "0"]);
    }

    #[test]
    fn parse_path_rejects_empty_segments() {
        let err = parse_path("").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = parse_path(".id").unwrap_err();
        assert!(err.contains("`.id` starts with a dot"), "{err}");
        let err = parse_path("customer.").unwrap_err();
        assert!(err.contains("`customer.` ends with a dot"), "{err}");
        let err = parse_path("customer..id").unwrap_err();
        assert!(
            err.contains("empty segment") && err.contains("after `customer`"),
            "{err}"
        );
        assert!(parse_path(".").is_err());
    }
}
