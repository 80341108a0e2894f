#!/usr/bin/env python3
"""Serializes schema-registry records the way real producers do, for doka's end-to-end tests.

Avro and JSON Schema through confluent-kafka-python's serializers against a Confluent-compatible
registry (rivven-schema in the stack), or through PyPI's aws-glue-schema-registry against moto's
Glue; Protobuf (neither library serializes it against these registries) with the official
`protobuf` library, its .proto registered over the registry's API and the wire header written to
the documented layout. Nothing goes to Kafka: each record is printed as one JSON line,

  {"key": str|null, "value_b64": base64 of the value bytes,
   "expected": the JSON doka must send for the value (null for a record that must not decode),
   "schema": {"id": N, "subject": S} | {"version_id": UUID, "schema_name": S, "registry_name": R}}

and the test produces the bytes, runs doka, and compares what arrives with `expected` — computed
here, independently of doka, by the mapping docs/SCHEMAS.md documents.
"""

import argparse
import base64
import datetime as dt
import decimal
import json
import math
import struct
import sys
import uuid
import zlib

# ---------------------------------------------------------------------------------------------
# Avro

AVRO_V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "doka.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "flag", "type": "boolean"},
        {"name": "count", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "price", "type": "double"},
        {"name": "name", "type": "string"},
        {"name": "raw", "type": "bytes"},
        {"name": "four", "type": {"type": "fixed", "name": "Four", "size": 4}},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["GIFT", "SALE", "RETURN"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "street", "type": "string"},
            {"name": "zip", "type": ["null", "string"], "default": None},
        ]}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "billing", "type": ["null", "Address"], "default": None},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "amount_fixed", "type": {"type": "fixed", "name": "Money", "size": 8,
                                          "logicalType": "decimal", "precision": 18, "scale": 4}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "t_ms", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "t_us", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "lts_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "lts_us", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "whole", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 0}},
    ],
}

# Version 2 adds a field with a default: a backward-compatible evolution.
AVRO_V2 = dict(AVRO_V1, fields=AVRO_V1["fields"] + [{"name": "channel", "type": "string", "default": "web"}])

# The smaller schema of the Glue cases. No float or double in it: the Firehose test compares its
# values with exact JSON equality.
GLUE_AVRO_V1 = {
    "type": "record",
    "name": "Payment",
    "namespace": "doka.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "payer", "type": {"type": "record", "name": "Payer", "fields": [
            {"name": "name", "type": "string"},
            {"name": "email", "type": ["null", "string"], "default": None},
        ]}},
        {"name": "lines", "type": {"type": "array", "items": "string"}},
        {"name": "meta", "type": {"type": "map", "values": "string"}},
        {"name": "raw", "type": "bytes"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 3}},
    ],
}
GLUE_AVRO_V2 = dict(GLUE_AVRO_V1, fields=GLUE_AVRO_V1["fields"] + [{"name": "currency", "type": "string", "default": "EUR"}])

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def b64(data):
    return base64.b64encode(data).decode()


def decimal_text(value, scale):
    """Exact, with exactly `scale` digits after the point (none for scale 0), never an exponent."""
    return format(value.quantize(decimal.Decimal(1).scaleb(-scale)), "f")


def ts_text(moment, digits, utc=True):
    fraction = moment.microsecond if digits == 6 else moment.microsecond // 1000
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{fraction:0{digits}d}" + ("Z" if utc else "")


def float_json(x):
    """A float as doka writes it: a number, or the string for NaN and the infinities."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def avro_order(i, version):
    """One Order value (as fastavro takes it) and the JSON doka must make of it."""
    amount = decimal.Decimal(i * 137 - 500).scaleb(-2)  # negatives, cents
    amount_fixed = decimal.Decimal((i * 98765 + 1) * (-1 if i % 3 == 1 else 1)).scaleb(-4)
    whole = decimal.Decimal((i * 1001) % 60_001 - 30_000)  # scale 0: no point; within precision 6
    uid = uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % (1 << 128))
    day = dt.date(2024, 1, 1) + dt.timedelta(days=i * 3)
    t_ms = dt.time(i % 24, (i * 7) % 60, (i * 13) % 60, ((i * 37) % 1000) * 1000)
    t_us = dt.time((i + 5) % 24, (i * 11) % 60, (i * 17) % 60, (i * 7919) % 1_000_000)
    if i % 4 == 3:  # before 1970: negative epoch milliseconds
        ts_ms = EPOCH - dt.timedelta(milliseconds=34_560_000_123 + i * 1_001)
    else:
        ts_ms = EPOCH + dt.timedelta(milliseconds=1_704_164_645_678 + i * 1_001)
    ts_us = EPOCH + dt.timedelta(microseconds=1_704_164_645_678_901 + i * 999_983)
    lts_ms = dt.datetime(2023, 6, 30, 23, 59, 59, 999_000) + dt.timedelta(milliseconds=i * 86_400_123)
    # Around the epoch: the first records before it, the later ones after.
    lts_us = dt.datetime(1969, 12, 31, 23, 59, 59, 999_999) - dt.timedelta(hours=4) \
        + dt.timedelta(microseconds=i * 3_600_000_123)
    special = i % 10
    ratio = {7: math.inf, 8: -math.inf}.get(special, i * 0.5 + 0.25)
    price = math.nan if special == 9 else i * 1.1 + 0.001
    count = {5: -(2 ** 31), 6: 2 ** 31 - 1}.get(special, -i * 1000)
    address = {"street": f"Rue {i} «é»", "zip": None if i % 3 == 0 else f"{75000 + i}"}
    value = {
        "id": i,
        "flag": i % 2 == 0,
        "count": count,
        "big": (2 ** 60 + i) if i % 2 else -(2 ** 55) - i,
        "ratio": ratio,
        "price": price,
        "name": f"order-{i} ☃",
        "raw": bytes([i % 256, 0, 255, (i * 7) % 256]),
        "four": bytes([1, 2, 3, i % 256]),
        "kind": ["GIFT", "SALE", "RETURN"][i % 3],
        "tags": [f"t{j}" for j in range(i % 4)],
        "attrs": {f"a{j}": j * i for j in range(i % 3)},
        "address": address,
        "note": None if i % 2 else f"note {i}",
        "billing": None if i % 4 else {"street": f"Billing {i}", "zip": "1000"},
        "amount": amount,
        "amount_fixed": amount_fixed,
        "uid": uid,
        "day": day,
        "t_ms": t_ms,
        "t_us": t_us,
        "ts_ms": ts_ms,
        "ts_us": ts_us,
        "lts_ms": lts_ms,
        "lts_us": lts_us,
        "whole": whole,
    }
    expected = dict(value)
    expected.update({
        "ratio": float_json(ratio),
        "price": float_json(price),
        "raw": b64(value["raw"]),
        "four": b64(value["four"]),
        "amount": decimal_text(amount, 2),
        "amount_fixed": decimal_text(amount_fixed, 4),
        "uid": str(uid),
        "day": day.isoformat(),
        "t_ms": t_ms.strftime("%H:%M:%S.") + f"{t_ms.microsecond // 1000:03d}",
        "t_us": t_us.strftime("%H:%M:%S.") + f"{t_us.microsecond:06d}",
        "ts_ms": ts_text(ts_ms, 3),
        "ts_us": ts_text(ts_us, 6),
        "lts_ms": ts_text(lts_ms, 3, utc=False),
        "lts_us": ts_text(lts_us, 6, utc=False),
        "whole": decimal_text(whole, 0),
    })
    if version == 2:
        value["channel"] = ["web", "app", "store"][i % 3]
        expected["channel"] = value["channel"]
    return value, expected


def glue_avro_payment(i, version):
    at = EPOCH + dt.timedelta(milliseconds=1_700_000_000_123 + i * 60_000)
    amount = decimal.Decimal(i * 12345 - 7000).scaleb(-3)
    value = {
        "id": 10_000 + i,
        "payer": {"name": f"payer {i}", "email": None if i % 2 else f"p{i}@example.com"},
        "lines": [f"line {j}" for j in range(i % 3 + 1)],
        "meta": {"source": "test", "n": str(i)},
        "raw": bytes(range(i % 5)),
        "at": at,
        "amount": amount,
    }
    expected = dict(value, raw=b64(value["raw"]), at=ts_text(at, 3), amount=decimal_text(amount, 3))
    if version == 2:
        value["currency"] = ["EUR", "USD"][i % 2]
        expected["currency"] = value["currency"]
    return value, expected


# ---------------------------------------------------------------------------------------------
# JSON Schema

JSON_V1 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Event",
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
        "note": {"type": ["string", "null"]},
        "ok": {"type": "boolean"},
        "seq": {"type": "integer"},
        "lines": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"},
            "extra": {"type": ["object", "null"]}}}},
    },
    "required": ["id", "name"],
}
JSON_V2 = json.loads(json.dumps(JSON_V1))
JSON_V2["properties"]["level"] = {"type": "integer"}


def json_event(i, version):
    value = {
        "id": i,
        "name": f"event {i} ✓ \u00e9\t\\ {{}}",
        "tags": [f"t{j}" for j in range(i % 3)],
        "where": {"lat": 48.5 + i / 8, "lon": -2.25 - i / 3},
        "note": None if i % 2 else "a \"quoted\" note",
        "ok": i % 3 == 0,
        "seq": 2 ** 60 + i if i % 2 else -(2 ** 55) - i,  # beyond 2^53: kept exact
        "lines": [{"sku": f"s{i}-{j}", "qty": -j, "price": j * 0.1 + 1e-7 * i,
                   "extra": None if j % 2 else {"deep": {"list": [1, "two", None, True]}}}
                  for j in range(i % 3)],
    }
    if version == 2:
        value["level"] = i % 5
    return value, value


# ---------------------------------------------------------------------------------------------
# Protobuf

PROTO_V1 = """syntax = "proto3";
package doka.test;

import "google/protobuf/timestamp.proto";

message Order {
  int64 id = 1;
  string name = 2;
  repeated string tags = 3;
  Status status = 4;
  map<string, int32> counts = 5;
  bytes raw = 6;
  Item item = 7;
  uint64 big = 8;
  google.protobuf.Timestamp at = 9;
  double price = 10;
  bool flag = 11;
  repeated Item items = 12;
%(extra)s
  message Item {
    string sku = 1;
    int32 quantity = 2;
    repeated Item parts = 3;
  }
}

enum Status {
  STATUS_UNKNOWN = 0;
  STATUS_OPEN = 1;
  STATUS_CLOSED = 2;
}

message Note {
  string text = 1;
  int32 priority = 2;
  repeated Link links = 3;

  message Link {
    string url = 1;
    sint64 clicks = 2;
    Status status = 3;
  }
}
"""


def proto_text(version):
    return PROTO_V1 % {"extra": "  string channel = 13;\n" if version == 2 else ""}


def proto_classes(version):
    """The message classes of the .proto above, built from its descriptor (no protoc here)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name=f"doka_test_v{version}.proto", package="doka.test", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"])

    def field(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None):
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name
        return f

    order = fdp.message_type.add(name="Order")
    field(order, "id", 1, F.TYPE_INT64)
    field(order, "name", 2, F.TYPE_STRING)
    field(order, "tags", 3, F.TYPE_STRING, F.LABEL_REPEATED)
    field(order, "status", 4, F.TYPE_ENUM, type_name=".doka.test.Status")
    field(order, "counts", 5, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".doka.test.Order.CountsEntry")
    field(order, "raw", 6, F.TYPE_BYTES)
    field(order, "item", 7, F.TYPE_MESSAGE, type_name=".doka.test.Order.Item")
    field(order, "big", 8, F.TYPE_UINT64)
    field(order, "at", 9, F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    field(order, "price", 10, F.TYPE_DOUBLE)
    field(order, "flag", 11, F.TYPE_BOOL)
    field(order, "items", 12, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".doka.test.Order.Item")
    if version == 2:
        field(order, "channel", 13, F.TYPE_STRING)
    # A map field is a repeated nested entry type, which protoc declares where the map field is
    # (before `message Item` in the text above): the Confluent index path of Item is [0, 1].
    entry = order.nested_type.add(name="CountsEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_INT32)
    item = order.nested_type.add(name="Item")
    field(item, "sku", 1, F.TYPE_STRING)
    field(item, "quantity", 2, F.TYPE_INT32)
    field(item, "parts", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".doka.test.Order.Item")
    status = fdp.enum_type.add(name="Status")
    for n, name in enumerate(["STATUS_UNKNOWN", "STATUS_OPEN", "STATUS_CLOSED"]):
        status.value.add(name=name, number=n)
    note = fdp.message_type.add(name="Note")
    field(note, "text", 1, F.TYPE_STRING)
    field(note, "priority", 2, F.TYPE_INT32)
    field(note, "links", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".doka.test.Note.Link")
    link = note.nested_type.add(name="Link")
    field(link, "url", 1, F.TYPE_STRING)
    field(link, "clicks", 2, F.TYPE_SINT64)
    field(link, "status", 3, F.TYPE_ENUM, type_name=".doka.test.Status")

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    names = ["doka.test.Order", "doka.test.Order.Item", "doka.test.Note", "doka.test.Note.Link"]
    return {name: get(pool.FindMessageTypeByName(name)) for name in names}


def proto_message(i, version, classes):
    """(full name of the message type, the message) for record i: half Orders (Confluent path
    [0]), the others a nested Order.Item ([0, 1]: the map's entry type comes first), a Note ([1])
    or a nested Note.Link ([1, 0])."""
    if i % 6 == 3:
        item = classes["doka.test.Order.Item"](sku=f"sku-{i}", quantity=i)
        item.parts.add(sku=f"part-{i}", quantity=1)
        return "doka.test.Order.Item", item
    if i % 6 == 4:
        note = classes["doka.test.Note"](text=f"note {i}", priority=i % 3)
        for j in range(i % 3):
            note.links.add(url=f"https://example.com/{i}/{j}", clicks=-j, status=j % 3)
        return "doka.test.Note", note
    if i % 6 == 5:
        link = classes["doka.test.Note.Link"](url=f"https://example.com/{i}", clicks=-(2 ** 40) - i, status=2)
        return "doka.test.Note.Link", link
    order = classes["doka.test.Order"](
        id=(2 ** 60 + i) if i % 2 else -i,
        name=f"order {i} ✓",
        tags=[f"t{j}" for j in range(i % 3)],
        status=i % 3,
        raw=bytes([i % 256, 0, 255]),
        big=2 ** 63 + i,
        price=i * 2.5,
        flag=bool(i % 2),
    )
    # The pool's own Timestamp type (not timestamp_pb2's class), field by field.
    order.at.seconds = 1_700_000_000 + i
    order.at.nanos = (i % 3) * 250_000_000
    for j in range(i % 3):
        order.counts[f"c{j}"] = j * i
    if i % 2 == 0:
        order.item.sku = f"main-{i}"
        order.item.quantity = i + 1
    for j in range(i % 2 + 1):
        order.items.add(sku=f"line-{i}-{j}", quantity=j)
    if version == 2:
        order.channel = "web"
    return "doka.test.Order", order


def proto_expected(message):
    from google.protobuf import json_format
    return json_format.MessageToDict(message)


def zigzag_varint(n):
    return varint((n << 1) ^ (n >> 63))


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def confluent_path(descriptor):
    """The message indexes of a type as Confluent's Java serializer (the reference) writes them:
    its index among the file's messages, then among each enclosing message's *declared* nested
    messages — it reads the .proto text, where a `map<>` field declares no entry type. (The
    Python client counts descriptor entries too, and would write [0, 1] for Order.Item.)"""
    path = []
    while descriptor.containing_type is not None:
        declared = [n for n in descriptor.containing_type.nested_types if not n.GetOptions().map_entry]
        path.insert(0, declared.index(descriptor))
        descriptor = descriptor.containing_type
    path.insert(0, list(descriptor.file.message_types_by_name.values()).index(descriptor))
    return path


def glue_order(descriptor):
    """Glue's list: all message types of the schema's file, nested ones (map entries too)
    included, sorted by full name (AWS's MessageIndexFinder)."""
    names, todo = [], list(descriptor.file.message_types_by_name.values())
    while todo:
        message = todo.pop()
        names.append(message.full_name)
        todo.extend(message.nested_types)
    return sorted(names)


def confluent_indexes(path):
    if path == [0]:
        return b"\x00"
    return zigzag_varint(len(path)) + b"".join(zigzag_varint(p) for p in path)


# ---------------------------------------------------------------------------------------------
# Registries


def confluent_records(args):
    import urllib.request
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.serialization import MessageField, SerializationContext

    subject = f"{args.topic}-value"
    client = SchemaRegistryClient({"url": args.url})
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    out = []
    if args.format in ("avro", "json"):
        if args.format == "avro":
            from confluent_kafka.schema_registry.avro import AvroSerializer
            # Version 2 adds a field with a default (backward compatible), but rivven-schema
            # 0.0.22 misjudges a union holding a reference to a named type: no check here.
            client.set_compatibility(subject_name=subject, level="NONE")
            schema = AVRO_V2 if args.schema_version == 2 else AVRO_V1
            serializer = AvroSerializer(client, json.dumps(schema))
            make = avro_order
        else:
            from confluent_kafka.schema_registry.json_schema import JSONSerializer
            schema = JSON_V2 if args.schema_version == 2 else JSON_V1
            serializer = JSONSerializer(json.dumps(schema), client)
            make = json_event
        for i in range(args.start, args.start + args.count):
            value, expected = make(i, args.schema_version)
            data = serializer(value, ctx)
            assert data[0] == 0, "Confluent framing"
            schema_id = struct.unpack(">I", data[1:5])[0]
            out.append((f"key-{i % 7}", data, expected, {"id": schema_id, "subject": subject}))
        return out
    # Protobuf: the .proto text registered over REST, the record framed by hand.
    body = json.dumps({"schemaType": "PROTOBUF", "schema": proto_text(args.schema_version)}).encode()
    request = urllib.request.Request(
        f"{args.url}/subjects/{subject}/versions", data=body, method="POST",
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    with urllib.request.urlopen(request) as response:
        schema_id = json.load(response)["id"]
    classes = proto_classes(args.schema_version)
    for i in range(args.start, args.start + args.count):
        name, message = proto_message(i, args.schema_version, classes)
        data = b"\x00" + struct.pack(">I", schema_id) + confluent_indexes(confluent_path(message.DESCRIPTOR)) + message.SerializeToString()
        out.append((f"key-{i % 7}", data, proto_expected(message), {"id": schema_id, "subject": subject}))
    return out


def glue_client(args):
    import boto3
    glue = boto3.client("glue", endpoint_url=args.endpoint, region_name=args.region)
    try:
        glue.get_registry(RegistryId={"RegistryName": args.registry_name})
    except glue.exceptions.EntityNotFoundException:
        try:
            glue.create_registry(RegistryName=args.registry_name)
        except glue.exceptions.AlreadyExistsException:
            pass  # created meanwhile by a test running beside this one
    return glue


def glue_records(args):
    glue = glue_client(args)
    schema_name = args.schema_name or args.topic
    ident = lambda version_id: {"version_id": str(version_id), "schema_name": schema_name,
                                "registry_name": args.registry_name}
    out = []
    if args.format in ("avro", "json"):
        from aws_schema_registry import SchemaRegistryClient
        from aws_schema_registry.serde import KafkaSerializer
        from aws_schema_registry.codec import encode
        client = SchemaRegistryClient(glue, registry_name=args.registry_name, wait_interval_seconds=0.1)
        serializer = KafkaSerializer(client, compatibility_mode="NONE",
                                     schema_naming_strategy=lambda topic, is_key, schema: schema_name)
        if args.format == "avro":
            from aws_schema_registry.avro import AvroSchema
            schema = AvroSchema(GLUE_AVRO_V2 if args.schema_version == 2 else GLUE_AVRO_V1)
            make = glue_avro_payment
        else:
            from aws_schema_registry.jsonschema import JsonSchema
            schema = JsonSchema(JSON_V2 if args.schema_version == 2 else JSON_V1)
            make = json_event
        for i in range(args.start, args.start + args.count):
            value, expected = make(i, args.schema_version)
            if args.compression:
                # The library's own encoder, with its zlib compression.
                version = serializer._get_schema_version(args.topic, schema)
                data = encode(schema.write(value), version.version_id, compression=True)
            else:
                data = serializer.serialize(args.topic, (value, schema))
            assert data[0] == 3 and data[1] == (5 if args.compression else 0), "Glue framing"
            out.append((f"key-{i % 7}", data, expected, ident(uuid.UUID(bytes=data[2:18]))))
        return out
    # Protobuf: the .proto registered with boto3, the record framed by hand.
    text = proto_text(args.schema_version)
    try:
        created = glue.create_schema(RegistryId={"RegistryName": args.registry_name}, SchemaName=schema_name,
                                     DataFormat="PROTOBUF", Compatibility="NONE", SchemaDefinition=text)
        version_id = created["SchemaVersionId"]
    except glue.exceptions.AlreadyExistsException:
        registered = glue.register_schema_version(
            SchemaId={"RegistryName": args.registry_name, "SchemaName": schema_name}, SchemaDefinition=text)
        version_id = registered["SchemaVersionId"]
    classes = proto_classes(args.schema_version)
    for i in range(args.start, args.start + args.count):
        name, message = proto_message(i, args.schema_version, classes)
        payload = varint(glue_order(message.DESCRIPTOR).index(name)) + message.SerializeToString()
        compression = 0
        if args.compression:
            payload, compression = zlib.compress(payload), 5
        data = bytes([3, compression]) + uuid.UUID(version_id).bytes + payload
        out.append((f"key-{i % 7}", data, proto_expected(message), ident(version_id)))
    return out


def bad_records(args):
    """Records that must not decode, each with `expected` null and, where it has one, the schema
    identity its header names:
      no-magic   : plain text, no framing (valid UTF-8, so pass-through can show it);
      unknown-id : a well-formed header naming a schema id (Confluent) or version UUID (Glue)
                   the registry does not have;
      corrupt    : a real schema's header, then a body that does not decode with it: Avro and
                   JSON Schema truncated after a few bytes, Protobuf a length-delimited field
                   longer than what follows; with --compression (Glue) bytes that are not zlib."""
    out = []
    for i in range(args.count):
        schema = {}
        if args.bad == "no-magic":
            data = f"plain text {i}, no registry framing".encode()
        elif args.registry == "confluent":
            if args.bad == "unknown-id":
                schema_id = 987_654_321 + i
                data = b"\x00" + struct.pack(">I", schema_id) + b"\x02\x04"
                schema = {"id": schema_id, "subject": f"{args.topic}-value"}
            else:
                _, good, _, schema = confluent_records(argparse.Namespace(**dict(vars(args), count=1, start=i)))[0]
                if args.format == "protobuf":
                    data = good[:5] + b"\x00" + b"\x0a\xff\x01x"
                else:
                    data = good[:12]
        else:
            if args.bad == "unknown-id":
                version_id = uuid.uuid4()
                data = bytes([3, 0]) + version_id.bytes + b"\x02\x04"
                schema = {"version_id": str(version_id), "schema_name": args.schema_name or args.topic,
                          "registry_name": args.registry_name}
            else:
                plain = argparse.Namespace(**dict(vars(args), count=1, start=i, compression=False))
                _, good, _, schema = glue_records(plain)[0]
                if args.compression:
                    data = bytes([3, 5]) + good[2:18] + b"this is not zlib data"
                elif args.format == "protobuf":
                    data = good[:19] + b"\x0a\xff\x01x"  # the record's own (one-byte) type index
                else:
                    data = good[:22]
        out.append((f"bad-{i}", data, None, schema))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", choices=["confluent", "glue"], required=True)
    p.add_argument("--url", help="Confluent registry URL")
    p.add_argument("--endpoint", help="Glue endpoint (moto)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--registry-name", default="doka-test")
    p.add_argument("--schema-name")
    p.add_argument("--format", choices=["avro", "protobuf", "json"], required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--start", type=int, default=0, help="index of the first record")
    p.add_argument("--schema-version", type=int, choices=[1, 2], default=1)
    p.add_argument("--compression", action="store_true", help="Glue: zlib")
    p.add_argument("--bad", choices=["unknown-id", "no-magic", "corrupt"])
    args = p.parse_args()
    if args.bad:
        records = bad_records(args)
    elif args.registry == "confluent":
        records = confluent_records(args)
    else:
        records = glue_records(args)
    for key, data, expected, schema in records:
        sys.stdout.write(json.dumps({"key": key, "value_b64": b64(data), "expected": expected,
                                     "schema": schema}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
