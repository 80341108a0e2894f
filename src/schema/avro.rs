//! Avro records to JSON, with the writer schema the registry holds for them.
//!
//! The Apache Avro Rust SDK decodes the binary encoding into its `Value`; doka writes that as JSON
//! by its own documented mapping (docs/SCHEMAS.md), which readers such as Athena take as it is:
//! a union is its branch's plain value, bytes and fixed are base64, a decimal is an exact string,
//! dates and times are ISO 8601 text, a NaN or infinity is a string.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::NamesRef;

use super::avro_shape;
use apache_avro::schema::{ResolvedSchema, Schema};
use apache_avro::types::Value;

/// What one schema's records are decoded with, built once: the schemas (those it refers to
/// first, then its own) and a reader over them.
pub struct AvroSchema(Compiled);

struct Readers<'s> {
    reader: GenericDatumReader<'s>,
    names: ResolvedSchema<'s>,
    main: &'s Schema,
    /// Payloads are walked by [`avro_shape::check`] first (a recursive schema, or collections
    /// of empty items).
    guarded: bool,
}

self_cell::self_cell!(
    struct Compiled {
        owner: Vec<Schema>,
        #[covariant]
        dependent: Readers,
    }
);

/// The most one length field of a record may make the SDK allocate: a corrupt or hostile length
/// must not take the memory (its default is 512 MiB). Above any record Kafka or Kinesis carries.
const MAX_ALLOCATION_BYTES: usize = 64 * 1024 * 1024;

/// A decimal's digits after the point; more is not a number anyone writes.
const MAX_DECIMAL_SCALE: usize = 1_000;

/// Parses the writer schema (`text`) with the schemas it refers to (`references`, by name).
pub fn compile(text: &str, references: &[(String, String)]) -> Result<AvroSchema, String> {
    // The SDK keeps the first value it is given, process-wide: set before any record is decoded.
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    let (main, mut schemata) = if references.is_empty() {
        (Schema::parse_str(text), Vec::new())
    } else {
        let refs: Vec<&str> = references.iter().map(|(_, t)| t.as_str()).collect();
        match Schema::parse_str_with_list(text, refs) {
            Ok((main, others)) => (Ok(main), others),
            Err(e) => (Err(e), Vec::new()),
        }
    };
    let main = main.map_err(|e| format!("not an Avro schema: {e}"))?;
    schemata.push(main);
    let compiled = Compiled::try_new(schemata, |schemata| {
        let main = schemata.last().expect("the main schema is last");
        let all: Vec<&Schema> = schemata.iter().collect();
        let names = ResolvedSchema::new_with_schemata(all.clone())
            .map_err(|e| format!("its named types do not resolve: {e}"))?;
        let reader = GenericDatumReader::builder(main)
            .writer_schemata(all)
            .map_err(|e| format!("its named types do not resolve: {e}"))?
            .build()
            .map_err(|e| format!("cannot read with it: {e}"))?;
        let guarded = avro_shape::needs_check(main, names.get_names());
        Ok::<_, String>(Readers {
            reader,
            names,
            main,
            guarded,
        })
    })?;
    Ok(AvroSchema(compiled))
}

/// Appends the JSON of the Avro datum `payload` to `out`.
pub fn to_json(schema: &AvroSchema, mut payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let readers = schema.0.borrow_dependent();
    if readers.guarded {
        avro_shape::check(readers.main, readers.names.get_names(), payload)?;
    }
    let value = readers
        .reader
        .read_value(&mut payload)
        .map_err(|e| e.to_string())?;
    if !payload.is_empty() {
        return Err(format!(
            "{} bytes are left after the Avro value",
            payload.len()
        ));
    }
    write(&value, readers.main, readers.names.get_names(), out)
}

/// The schema a `Ref` stands for.
fn resolve<'a>(schema: &'a Schema, names: &'a NamesRef<'_>) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).copied().unwrap_or(schema),
        other => other,
    }
}

/// Appends `value` (decoded with `schema`) as JSON. Err: the value does not fit its schema — the
/// SDK (0.22) reads a string cut short by the end of the payload as a null, so a null is taken
/// only where the schema says null.
fn write(
    value: &Value,
    schema: &Schema,
    names: &NamesRef<'_>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let schema = resolve(schema, names);
    match value {
        Value::Null if matches!(schema, Schema::Null) => out.extend_from_slice(b"null"),
        Value::Null => {
            return Err(
                "the payload ends inside a value (a null where the schema has none)".into(),
            );
        }
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(n) => push_display(out, n),
        Value::Long(n) => push_display(out, n),
        Value::Float(f) => push_float(out, f64::from(*f), f.is_finite(), &f.to_string()),
        Value::Double(f) => push_float(out, *f, f.is_finite(), ""),
        Value::Bytes(bytes) | Value::Fixed(_, bytes) => push_base64(out, bytes),
        Value::String(s) | Value::Enum(_, s) => push_str(out, s),
        Value::Union(index, inner) => {
            let branch = match schema {
                Schema::Union(union) => union.variants().get(*index as usize).unwrap_or(schema),
                _ => schema,
            };
            write(inner, branch, names, out)?;
        }
        Value::Array(items) => {
            let item_schema = match schema {
                Schema::Array(array) => &*array.items,
                _ => schema,
            };
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, item_schema, names, out)?;
            }
            out.push(b']');
        }
        Value::Map(entries) => {
            let value_schema = match schema {
                Schema::Map(map) => &*map.types,
                _ => schema,
            };
            out.push(b'{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_str(out, key);
                out.push(b':');
                write(item, value_schema, names, out)?;
            }
            out.push(b'}');
        }
        Value::Record(fields) => {
            let field_schemas = match schema {
                Schema::Record(record) => Some(&record.fields),
                _ => None,
            };
            out.push(b'{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_str(out, name);
                out.push(b':');
                let field_schema = field_schemas
                    .and_then(|f| f.get(i))
                    .map(|f| &f.schema)
                    .ok_or("a field the schema does not have")?;
                write(item, field_schema, names, out)?;
            }
            out.push(b'}');
        }
        Value::Date(days) => {
            let (y, m, d) = civil_from_days(i64::from(*days));
            push_text(out, &format!("{y:04}-{m:02}-{d:02}"));
        }
        Value::Decimal(decimal) => {
            let scale = match schema {
                Schema::Decimal(d) => d.scale,
                _ => 0,
            };
            if scale > MAX_DECIMAL_SCALE {
                return Err(format!(
                    "its schema's decimal scale {scale} is over {MAX_DECIMAL_SCALE}"
                ));
            }
            let bytes = Vec::<u8>::try_from(decimal).unwrap_or_default();
            push_text(out, &decimal_text(&bytes, scale));
        }
        Value::BigDecimal(big) => push_text(out, &big.to_plain_string()),
        Value::TimeMillis(ms) => push_text(out, &time_of_day(i128::from(*ms) * 1_000_000, 3)),
        Value::TimeMicros(us) => push_text(out, &time_of_day(i128::from(*us) * 1_000, 6)),
        Value::TimestampMillis(ms) => {
            push_text(out, &timestamp(i128::from(*ms) * 1_000_000, 3, true))
        }
        Value::TimestampMicros(us) => push_text(out, &timestamp(i128::from(*us) * 1_000, 6, true)),
        Value::TimestampNanos(ns) => push_text(out, &timestamp(i128::from(*ns), 9, true)),
        Value::LocalTimestampMillis(ms) => {
            push_text(out, &timestamp(i128::from(*ms) * 1_000_000, 3, false))
        }
        Value::LocalTimestampMicros(us) => {
            push_text(out, &timestamp(i128::from(*us) * 1_000, 6, false))
        }
        Value::LocalTimestampNanos(ns) => push_text(out, &timestamp(i128::from(*ns), 9, false)),
        Value::Duration(d) => {
            let (months, days, millis): (u32, u32, u32) =
                (d.months().into(), d.days().into(), d.millis().into());
            push_text_raw(
                out,
                &format!("{{\"months\":{months},\"days\":{days},\"milliseconds\":{millis}}}"),
            );
        }
        Value::Uuid(uuid) => push_text(out, &uuid.to_string()),
    }
    Ok(())
}

fn push_display(out: &mut Vec<u8>, n: &impl std::fmt::Display) {
    use std::io::Write;
    let _ = write!(out, "{n}");
}

/// A number, or `"NaN"`, `"Infinity"`, `"-Infinity"` (JSON has no such numbers). A float
/// (32-bit) is written as its shortest 32-bit text (`0.1`, not `0.10000000149011612`).
fn push_float(out: &mut Vec<u8>, f: f64, finite: bool, float32_text: &str) {
    if !finite {
        let text = if f.is_nan() {
            "NaN"
        } else if f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        return push_text(out, text);
    }
    if !float32_text.is_empty() {
        out.extend_from_slice(float32_text.as_bytes());
    } else {
        serde_json::to_writer(&mut *out, &f).expect("a finite f64 serialises");
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a str serialises");
}

fn push_text(out: &mut Vec<u8>, s: &str) {
    push_str(out, s);
}

fn push_text_raw(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(json.as_bytes());
}

fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    base64_simd::STANDARD.encode_append(bytes, out);
    out.push(b'"');
}

/// A two's-complement big-endian unscaled integer with `scale` digits after the point, exactly:
/// `[0x04, 0xCE]`, scale 2 → `"12.30"`.
pub fn decimal_text(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // The magnitude, big-endian: the two's complement negated for a negative number.
    let mut magnitude: Vec<u8> = if negative {
        let mut m: Vec<u8> = bytes.iter().map(|b| !b).collect();
        for byte in m.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                break;
            }
        }
        m
    } else {
        bytes.to_vec()
    };
    // Base 256 to base 10 by repeated division.
    let mut digits = Vec::new();
    while magnitude.iter().any(|b| *b != 0) {
        let mut remainder = 0u32;
        for byte in magnitude.iter_mut() {
            let current = (remainder << 8) | u32::from(*byte);
            *byte = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let mut text = String::with_capacity(digits.len() + 2);
    if negative {
        text.push('-');
    }
    text.push_str(std::str::from_utf8(whole).expect("digits"));
    if scale > 0 {
        text.push('.');
        text.push_str(std::str::from_utf8(fraction).expect("digits"));
    }
    text
}

/// `HH:MM:SS.fff…` with `digits` fractional digits, from nanoseconds after midnight (a value
/// beyond a day keeps counting hours).
fn time_of_day(nanos: i128, digits: u32) -> String {
    let seconds = nanos.div_euclid(1_000_000_000);
    let fraction = nanos.rem_euclid(1_000_000_000) / 10i128.pow(9 - digits);
    format!(
        "{:02}:{:02}:{:02}.{fraction:0width$}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        width = digits as usize
    )
}

/// RFC 3339 (`Z` for UTC) with `digits` fractional digits, from nanoseconds since the epoch.
fn timestamp(nanos: i128, digits: u32, utc: bool) -> String {
    let seconds = nanos.div_euclid(1_000_000_000) as i64;
    let fraction = nanos.rem_euclid(1_000_000_000) as i64 / 10i64.pow(9 - digits);
    let (y, m, d) = civil_from_days(seconds.div_euclid(86_400));
    let s = seconds.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{fraction:0width$}{}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        if utc { "Z" } else { "" },
        width = digits as usize
    )
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Record;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal_text(&[0x04, 0xCE], 2), "12.30");
        assert_eq!(decimal_text(&[0xFF, 0xFB], 2), "-0.05");
        assert_eq!(decimal_text(&[0x00], 2), "0.00");
        assert_eq!(decimal_text(&[0x7B], 0), "123");
        assert_eq!(decimal_text(&[0x80], 0), "-128");
        assert_eq!(decimal_text(&[], 1), "0.0");
        // 2^127 - 1 and beyond i128: 17 bytes.
        let mut big = vec![0x00];
        big.extend([0xFF; 16]);
        assert_eq!(
            decimal_text(&big, 3),
            "340282366920938463463374607431768211.455"
        );
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(time_of_day(3_723_004_000_000, 3), "01:02:03.004");
        assert_eq!(time_of_day(3_723_000_005_000, 6), "01:02:03.000005");
        assert!(!time_of_day(i128::from(i64::MAX) * 1_000, 6).is_empty());
        assert_eq!(
            timestamp(1_704_164_645_678 * 1_000_000, 3, true),
            "2024-01-02T03:04:05.678Z"
        );
        assert_eq!(timestamp(-1_000, 6, false), "1969-12-31T23:59:59.999999");
    }

    #[test]
    fn a_record_in_the_documented_mapping() {
        let text = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
            {"name":"id","type":"long"},
            {"name":"note","type":["null","string"]},
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"day","type":{"type":"int","logicalType":"date"}},
            {"name":"ratio","type":"float"},
            {"name":"raw","type":"bytes"},
            {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},
            {"name":"tags","type":{"type":"array","items":"string"}},
            {"name":"next","type":["null","Order"]}
        ]}"#;
        let schema = compile(text, &[]).expect("schema");
        let parsed = Schema::parse_str(text).unwrap();
        let mut record = Record::new(&parsed).unwrap();
        record.put("id", Value::Long(9_007_199_254_740_993));
        record.put(
            "note",
            Value::Union(1, Box::new(Value::String("é\"".into()))),
        );
        record.put(
            "amount",
            Value::Decimal(apache_avro::Decimal::from(vec![0x04, 0xCE])),
        );
        record.put("at", Value::TimestampMillis(1_704_164_645_678));
        record.put("day", Value::Date(19_723));
        record.put("ratio", Value::Float(0.1));
        record.put("raw", Value::Bytes(vec![0, 1, 255]));
        record.put("kind", Value::Enum(1, "B".into()));
        record.put("tags", Value::Array(vec![Value::String("x".into())]));
        record.put("next", Value::Union(0, Box::new(Value::Null)));
        let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&parsed)
            .build()
            .expect("writer")
            .write_value_to_vec(record)
            .expect("encodes");
        let mut out = Vec::new();
        to_json(&schema, &bytes, &mut out).expect("decodes");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":9007199254740993,"note":"é\"","amount":"12.30","at":"2024-01-02T03:04:05.678Z","day":"2024-01-01","ratio":0.1,"raw":"AAH/","kind":"B","tags":["x"],"next":null}"#
        );
        let mut out = Vec::new();
        let err = to_json(&schema, &bytes[..bytes.len() - 3], &mut out).unwrap_err();
        assert!(!err.is_empty());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            to_json(&schema, &longer, &mut out)
                .unwrap_err()
                .contains("left after")
        );
    }

    #[test]
    fn a_string_cut_short_is_an_error_not_a_null() {
        let text = r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"string"},{"name":"b","type":"string"},
            {"name":"c","type":["null","string"]}]}"#;
        let schema = compile(text, &[]).unwrap();
        // a = "hi", b = a 5-character string of which 2 arrived.
        let cut = [0x04, b'h', b'i', 0x0a, b'x', b'y'];
        let mut out = Vec::new();
        let err = to_json(&schema, &cut, &mut out).unwrap_err();
        assert!(err.contains("ends inside"), "{err}");
        // A null the schema allows is fine.
        let mut out = Vec::new();
        to_json(&schema, &[0x02, b'a', 0x02, b'b', 0x00], &mut out).unwrap();
        assert_eq!(out, br#"{"a":"a","b":"b","c":null}"#);
        // A length no record could have is refused before anything is allocated for it.
        let mut out = Vec::new();
        let huge = [0xfe, 0xff, 0xff, 0xff, 0x0f];
        assert!(to_json(&schema, &huge, &mut out).is_err());
    }

    #[test]
    fn a_recursive_schema_is_walked_first_and_deep_nesting_refused() {
        let text = r#"{"type":"record","name":"N","fields":[
            {"name":"v","type":"int"},{"name":"next","type":["null","N"]}]}"#;
        let schema = compile(text, &[]).unwrap();
        // Three levels: v=1 next→ v=2 next→ v=3 next=null.
        let mut out = Vec::new();
        to_json(&schema, &[0x02, 0x02, 0x04, 0x02, 0x06, 0x00], &mut out).unwrap();
        assert_eq!(out, br#"{"v":1,"next":{"v":2,"next":{"v":3,"next":null}}}"#);
        // 100,000 levels in 200 KB: refused, not a stack overflow.
        let mut deep = Vec::new();
        for _ in 0..100_000 {
            deep.extend_from_slice(&[0x00, 0x02]);
        }
        deep.extend_from_slice(&[0x00, 0x00]);
        let err = to_json(&schema, &deep, &mut Vec::new()).unwrap_err();
        assert!(err.contains("deeper than"), "{err}");
        // An array of nulls claiming a billion items in a few bytes.
        let nulls = compile(r#"{"type":"array","items":"null"}"#, &[]).unwrap();
        let err = to_json(
            &nulls,
            &[0x80, 0xa8, 0xd6, 0xb9, 0x07, 0x00],
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.contains("empty collection items"), "{err}");
        to_json(&nulls, &[0x06, 0x00], &mut Vec::new()).unwrap();
    }
}
