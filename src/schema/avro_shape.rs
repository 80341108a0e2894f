//! A guard for the Avro decoder: the Apache Avro SDK (0.22) decodes recursively with no depth
//! limit, and a collection of zero-byte items (nulls, empty records) costs no payload per item.
//! With a recursive schema a record of a few KB would nest deep enough to overflow the consumer
//! thread's stack (ending doka on every restart, the record never committed); with a collection
//! of zero-byte items a few bytes may claim millions of items. For schemas that allow either,
//! each payload is first walked as the schema says — nothing built, nothing allocated — and
//! refused past [`MAX_DEPTH`] levels or [`MAX_ZERO_SIZE_ITEMS`] zero-byte items.

use apache_avro::schema::{InnerDecimalSchema, Name, NamesRef, Schema, UuidSchema};

/// Nesting a record may have (as Protobuf's decoder allows; JSON readers such as serde_json
/// take 128 levels, and the envelope adds one).
pub const MAX_DEPTH: usize = 100;
/// Zero-byte collection items a record may hold.
pub const MAX_ZERO_SIZE_ITEMS: usize = 100_000;

/// Whether payloads of `schema` need [`check`]: it is recursive, or has a collection of items
/// that take no bytes.
pub fn needs_check(schema: &Schema, names: &NamesRef<'_>) -> bool {
    risky(schema, names, &mut Vec::new())
}

fn risky<'a>(schema: &'a Schema, names: &'a NamesRef<'_>, open: &mut Vec<&'a Name>) -> bool {
    match schema {
        Schema::Ref { name } => {
            if open.contains(&name) {
                return true;
            }
            match names.get(name) {
                Some(&target) => {
                    open.push(name);
                    let found = risky(target, names, open);
                    open.pop();
                    found
                }
                None => false,
            }
        }
        Schema::Record(record) => {
            open.push(&record.name);
            let found = record.fields.iter().any(|f| risky(&f.schema, names, open));
            open.pop();
            found
        }
        Schema::Array(array) => zero_size(&array.items) || risky(&array.items, names, open),
        Schema::Map(map) => risky(&map.types, names, open),
        Schema::Union(union) => union.variants().iter().any(|v| risky(v, names, open)),
        _ => false,
    }
}

/// A value of this type takes no bytes.
fn zero_size(schema: &Schema) -> bool {
    match schema {
        Schema::Null => true,
        Schema::Fixed(fixed) => fixed.size == 0,
        Schema::Record(record) => record.fields.iter().all(|f| zero_size(&f.schema)),
        // A reference is either a named type seen before (its size judged there) or a cycle.
        Schema::Ref { .. } => false,
        _ => false,
    }
}

/// Walks `payload` as `schema` says: Err when it nests deeper than [`MAX_DEPTH`], holds more than
/// [`MAX_ZERO_SIZE_ITEMS`] zero-byte items, or ends early.
pub fn check(schema: &Schema, names: &NamesRef<'_>, mut payload: &[u8]) -> Result<(), String> {
    let mut zero_items = 0;
    walk(schema, names, &mut payload, 0, &mut zero_items)
}

fn walk(
    schema: &Schema,
    names: &NamesRef<'_>,
    bytes: &mut &[u8],
    depth: usize,
    zero_items: &mut usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("it nests deeper than {MAX_DEPTH} levels"));
    }
    let schema = match schema {
        Schema::Ref { name } => *names
            .get(name)
            .ok_or_else(|| format!("its schema names an unknown type {name:?}"))?,
        other => other,
    };
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => skip(bytes, 1),
        Schema::Int
        | Schema::Long
        | Schema::Enum(_)
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => long(bytes).map(drop),
        Schema::Float => skip(bytes, 4),
        Schema::Double => skip(bytes, 8),
        Schema::Bytes | Schema::String | Schema::BigDecimal => sized(bytes),
        Schema::Uuid(UuidSchema::Bytes | UuidSchema::String) => sized(bytes),
        Schema::Decimal(decimal) => match &decimal.inner {
            InnerDecimalSchema::Bytes => sized(bytes),
            InnerDecimalSchema::Fixed(fixed) => skip(bytes, fixed.size),
        },
        Schema::Uuid(UuidSchema::Fixed(fixed)) | Schema::Fixed(fixed) | Schema::Duration(fixed) => {
            skip(bytes, fixed.size)
        }
        Schema::Union(union) => {
            let index = long(bytes)?;
            let branch = usize::try_from(index)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or_else(|| format!("union branch {index} does not exist"))?;
            walk(branch, names, bytes, depth + 1, zero_items)
        }
        Schema::Record(record) => {
            for field in &record.fields {
                walk(&field.schema, names, bytes, depth + 1, zero_items)?;
            }
            Ok(())
        }
        Schema::Array(array) => blocks(bytes, |bytes| {
            let before = bytes.len();
            walk(&array.items, names, bytes, depth + 1, zero_items)?;
            if bytes.len() == before {
                *zero_items += 1;
                if *zero_items > MAX_ZERO_SIZE_ITEMS {
                    return Err(format!(
                        "it holds more than {MAX_ZERO_SIZE_ITEMS} empty collection items"
                    ));
                }
            }
            Ok(())
        }),
        Schema::Map(map) => blocks(bytes, |bytes| {
            sized(bytes)?;
            walk(&map.types, names, bytes, depth + 1, zero_items)
        }),
        Schema::Ref { .. } => Err("a reference to a reference".into()),
    }
}

/// The blocks of an array or map: a count (negative: followed by the block's byte size), that
/// many items, until a zero count.
fn blocks(
    bytes: &mut &[u8],
    mut item: impl FnMut(&mut &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        let count = long(bytes)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            long(bytes)?;
        }
        for _ in 0..count.unsigned_abs() {
            item(bytes)?;
        }
    }
}

fn skip(bytes: &mut &[u8], n: usize) -> Result<(), String> {
    if bytes.len() < n {
        return Err("the payload ends inside a value".into());
    }
    *bytes = &bytes[n..];
    Ok(())
}

/// A length, then that many bytes.
fn sized(bytes: &mut &[u8]) -> Result<(), String> {
    let len = long(bytes)?;
    let len = usize::try_from(len).map_err(|_| format!("a negative length {len}"))?;
    skip(bytes, len)
}

/// Avro's zigzag varint long.
fn long(bytes: &mut &[u8]) -> Result<i64, String> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or("the payload ends inside a value")?;
        *bytes = rest;
        if shift == 63 && byte > 1 {
            return Err("a varint longer than 64 bits".into());
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err("a varint longer than 64 bits".into())
}
