"""Validates doka envelopes (JSON Lines) against docs/envelope.schema.json.

usage: python validate_envelope.py SCHEMA_PATH < envelopes.jsonl

Reads JSON Lines from stdin and validates each line against the schema with jsonschema's
Draft202012Validator (the schema itself is checked first). Prints nothing and exits 0 when every
line is valid; otherwise prints the first problem with its line number to stdout and exits 1.
Exits 2 on a usage error or an invalid schema. Needs the `jsonschema` package (the local stack's
venv, ~/.cache/doka-stack/venv, has it).

A line must be exactly one JSON object: blank lines, a missing final newline aside, are errors, as
are a carriage return or any other text around the object, a field of the envelope (or of a
header) given twice, and NaN/Infinity. Embedded JSON values keep whatever the Kafka record held,
duplicate keys included (docs/ENVELOPE.md), so duplicates there are allowed.
"""

import json
import sys

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match


def main():
    if len(sys.argv) != 2:
        print("usage: python validate_envelope.py SCHEMA_PATH < envelopes.jsonl")
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        print(f"{sys.argv[1]}: invalid schema: {e.message}")
        return 2
    validator = Draft202012Validator(schema)

    data = sys.stdin.buffer.read()
    if not data:
        print("no envelopes on stdin")
        return 1
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final record's delimiter
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            print(f"line {number}: not UTF-8: {e}")
            return 1
        try:
            envelope = json.loads(
                text, parse_constant=reject_constant, object_pairs_hook=Fields
            )
        except ValueError as e:
            print(f"line {number}: not one JSON object: {e}")
            return 1
        twice = repeated_fields(envelope)
        if twice:
            print(f"line {number}: not one JSON object: duplicate key {twice!r}")
            return 1
        if text != text.strip():
            print(f"line {number}: whitespace around the JSON object")
            return 1
        error = best_match(validator.iter_errors(envelope))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(the envelope)"
            print(f"line {number}: at {where}: {error.message}")
            return 1
    return 0


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


class Fields(dict):
    """A JSON object that remembers a key it was given twice (the last value wins, as in json)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        seen = set()
        self.twice = None
        for key, _ in pairs:
            if key in seen and self.twice is None:
                self.twice = key
            seen.add(key)


def repeated_fields(envelope):
    """A field of the envelope or of one of its headers given twice; None when there is none."""
    if not isinstance(envelope, Fields):
        return None
    if envelope.twice is not None:
        return envelope.twice
    for header in envelope.get("headers") or []:
        if isinstance(header, Fields) and header.twice is not None:
            return header.twice
    return None


if __name__ == "__main__":
    sys.exit(main())
