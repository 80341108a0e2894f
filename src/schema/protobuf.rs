//! Protobuf records to JSON, with the `.proto` text the registry holds for them.
//!
//! protox (a Protobuf compiler in Rust) compiles the schema and its imports — the well-known
//! types built in, the registry's references by name — into descriptors; prost-reflect decodes
//! a record's message with them and writes the canonical proto3 JSON mapping (lowerCamelCase
//! names, 64-bit integers as strings, enums by name, bytes as base64, Timestamp as RFC 3339,
//! fields at their default left out).

use std::collections::HashMap;

use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::wire::{self, Framing};

/// The name the schema's own file is compiled under (its imports use their own names).
const MAIN_FILE: &str = "doka_registry_schema.proto";

pub struct ProtoSchema {
    /// The schema's message types in the order the framing indexes them: for Confluent, the
    /// top-level ones (nested ones are reached by path); for Glue, all of them (nested
    /// included) sorted by full name.
    messages: Vec<MessageDescriptor>,
    framing: Framing,
}

/// The registry's files by name: the schema itself and its references.
struct InMemory(HashMap<String, String>);

impl FileResolver for InMemory {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Compiles the schema `text` with its references (imported by their names).
pub fn compile(
    text: &str,
    references: &[(String, String)],
    framing: Framing,
) -> Result<ProtoSchema, String> {
    let mut files: HashMap<String, String> = references.iter().cloned().collect();
    files.insert(MAIN_FILE.to_owned(), text.to_owned());
    let mut resolver = ChainFileResolver::new();
    resolver.add(InMemory(files));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler
        .open_file(MAIN_FILE)
        .map_err(|e| format!("the .proto does not compile: {e}"))?;
    let pool = compiler.descriptor_pool();
    let file = pool
        .get_file_by_name(MAIN_FILE)
        .ok_or("the compiled .proto has no file")?;
    let messages = match framing {
        Framing::Confluent => file.messages().collect(),
        Framing::Glue => {
            let mut all = Vec::new();
            let mut stack: Vec<MessageDescriptor> = file.messages().collect();
            while let Some(message) = stack.pop() {
                stack.extend(message.child_messages());
                all.push(message);
            }
            all.sort_by(|a, b| a.full_name().cmp(b.full_name()));
            all
        }
    };
    if messages.is_empty() {
        return Err("the .proto declares no message".into());
    }
    Ok(ProtoSchema { messages, framing })
}

impl ProtoSchema {
    /// The message type the record names, and the message's bytes.
    fn message<'a>(&self, payload: &'a [u8]) -> Result<(MessageDescriptor, &'a [u8]), String> {
        match self.framing {
            Framing::Confluent => {
                let (path, message) = wire::confluent_message_indexes(payload)?;
                let mut current = self
                    .messages
                    .get(path[0])
                    .cloned()
                    .ok_or_else(|| no_such(&path, self.messages.len()))?;
                for &index in &path[1..] {
                    let children = declared_children(&current);
                    let count = children.len();
                    current = children
                        .into_iter()
                        .nth(index)
                        .ok_or_else(|| no_such(&path, count))?;
                }
                Ok((current, message))
            }
            Framing::Glue => {
                let (index, message) = wire::glue_message_index(payload)?;
                let descriptor = self
                    .messages
                    .get(index)
                    .cloned()
                    .ok_or_else(|| no_such(&[index], self.messages.len()))?;
                Ok((descriptor, message))
            }
        }
    }

    /// Appends the canonical proto3 JSON of the record's message to `out`.
    pub fn to_json(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let (descriptor, bytes) = self.message(payload)?;
        let name = descriptor.full_name().to_owned();
        let message = DynamicMessage::decode(descriptor, bytes)
            .map_err(|e| format!("not a {name} message: {e}"))?;
        let mut serializer = serde_json::Serializer::new(&mut *out);
        message
            .serialize_with_options(&mut serializer, &SerializeOptions::new())
            .map_err(|e| format!("{name} has no JSON form: {e}"))
    }
}

/// The nested message types a `.proto` declares, in order: Confluent's serializer (the Java
/// reference, reading the schema text) numbers these, so the entry types the compiler makes for
/// `map<…>` fields do not count. (Its Python and Go clients number descriptors, entries
/// included, and disagree with it for a map field declared before a nested message.)
fn declared_children(message: &MessageDescriptor) -> Vec<MessageDescriptor> {
    message
        .child_messages()
        .filter(|child| !child.is_map_entry())
        .collect()
}

fn no_such(path: &[usize], count: usize) -> String {
    format!("the record names message {path:?}, which the schema lacks ({count} there)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"
        syntax = "proto3";
        package shop;
        import "google/protobuf/timestamp.proto";
        message Order {
          int64 id = 1;
          repeated string tags = 2;
          google.protobuf.Timestamp at = 3;
          Kind kind = 4;
          map<string, int32> counts = 6;
          message Line { string sku = 1; uint32 quantity = 2; }
          repeated Line lines = 5;
        }
        enum Kind { KIND_UNSET = 0; KIND_GIFT = 1; }
        message Refund { string reason = 1; }
    "#;

    #[test]
    fn confluent_paths_and_glue_indexes_pick_the_message() {
        // Order { id: 9007199254740993, tags: ["a"], at: 1s, kind: GIFT, lines: [{sku: "x", quantity: 2}] }
        let order = [
            0x08, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, // id
            0x12, 0x01, b'a', // tags
            0x1a, 0x02, 0x08, 0x01, // at.seconds = 1
            0x20, 0x01, // kind
            0x2a, 0x05, 0x0a, 0x01, b'x', 0x10, 0x02, // lines
        ];
        let confluent = compile(PROTO, &[], Framing::Confluent).expect("compiles");
        let mut payload = vec![0x00];
        payload.extend_from_slice(&order);
        let mut out = Vec::new();
        confluent.to_json(&payload, &mut out).expect("decodes");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"9007199254740993","tags":["a"],"at":"1970-01-01T00:00:01Z","kind":"KIND_GIFT","lines":[{"sku":"x","quantity":2}]}"#
        );
        // [0, 0]: Order.Line (the map's entry type, declared first, does not count).
        let mut out = Vec::new();
        confluent
            .to_json(&[0x04, 0x00, 0x00, 0x0a, 0x01, b'y'], &mut out)
            .unwrap();
        assert_eq!(out, br#"{"sku":"y"}"#);
        // [1]: Refund.
        let mut out = Vec::new();
        confluent
            .to_json(&[0x02, 0x02, 0x0a, 0x01, b'z'], &mut out)
            .unwrap();
        assert_eq!(out, br#"{"reason":"z"}"#);
        assert!(confluent.to_json(&[0x02, 0x06], &mut out).is_err());
        assert!(confluent.to_json(&[0x00, 0x0a, 0x05], &mut out).is_err());

        // Glue sorts every message type by full name, map entries included (AWS's serializer
        // reads descriptors): shop.Order, shop.Order.CountsEntry, shop.Order.Line, shop.Refund.
        let glue = compile(PROTO, &[], Framing::Glue).expect("compiles");
        let mut out = Vec::new();
        glue.to_json(&[0x02, 0x0a, 0x01, b'y'], &mut out).unwrap();
        assert_eq!(out, br#"{"sku":"y"}"#);
        let mut out = Vec::new();
        glue.to_json(&[0x03, 0x0a, 0x01, b'z'], &mut out).unwrap();
        assert_eq!(out, br#"{"reason":"z"}"#);
        assert!(glue.to_json(&[0x04], &mut out).is_err());
    }

    #[test]
    fn references_are_imported_by_name() {
        let common = r#"syntax = "proto3"; package common; message Money { string currency = 1; }"#;
        let main = r#"syntax = "proto3"; import "common.proto"; message Price { common.Money money = 1; }"#;
        let schema = compile(
            main,
            &[("common.proto".into(), common.into())],
            Framing::Confluent,
        )
        .expect("compiles");
        let mut out = Vec::new();
        schema
            .to_json(&[0x00, 0x0a, 0x05, 0x0a, 0x03, b'E', b'U', b'R'], &mut out)
            .unwrap();
        assert_eq!(out, br#"{"money":{"currency":"EUR"}}"#);
        assert!(compile("message {", &[], Framing::Confluent).is_err());
    }
}
