"""De-aggregates Kinesis records with AWS's own library (PyPI aws-kinesis-agg), for
tests/support/kpl.rs: an independent reader of doka's KPL aggregates.

stdin : {"records": [{"shard", "sequence", "partition_key", "data" (base64)}, ...]}
stdout: {"user_records": [{"source", "sub", "aggregated", "partition_key", "explicit_hash_key",
         "data"}, ...], "problems": [str, ...]}

`source` is the index of the Kinesis record a user record came from, `sub` its sub-sequence
number inside an aggregate (null for a plain record). `problems` lists what a reader would trip
over: data that starts with the magic bytes but that the library does not read as an aggregate (bad
checksum or protobuf), sub-records the library skipped, and explicit-hash-key indexes pointing
outside the table.

The library's deaggregate_records reads a sub-record's explicit hash key as
`ehks[explicit_hash_key_index]` whenever the table is non-empty, so a sub-record without one gets
the table's first entry. Which sub-records really have one is therefore read from the same
library's protobuf classes (HasField), not from that field.
"""

import base64
import hashlib
import json
import sys

import aws_kinesis_agg
from aws_kinesis_agg import deaggregator
from aws_kinesis_agg import messages_pb2


def parse_aggregate(data):
    """The library's AggregatedRecord for `data`, or None when it is not a valid aggregate."""
    magic = aws_kinesis_agg.MAGIC
    digest_size = aws_kinesis_agg.DIGEST_SIZE
    if not data.startswith(magic) or len(data) <= len(magic) + digest_size:
        return None
    body, digest = data[len(magic):-digest_size], data[-digest_size:]
    if hashlib.md5(body).digest() != digest:
        return None
    message = messages_pb2.AggregatedRecord()
    message.ParseFromString(body)
    return message


def main():
    request = json.load(sys.stdin)
    problems = []
    out = []
    for index, record in enumerate(request["records"]):
        lambda_shaped = {
            "source_index": index,
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "sequenceNumber": record["sequence"],
                "approximateArrivalTimestamp": 0,
                "partitionKey": record["partition_key"],
                "data": record["data"],
            },
        }
        raw = base64.b64decode(record["data"])
        users = list(deaggregator.iter_deaggregate_records([lambda_shaped]))
        aggregated = any(u["kinesis"].get("aggregated") for u in users)
        if not aggregated:
            if raw.startswith(aws_kinesis_agg.MAGIC):
                problems.append(
                    f"record {index} ({record['shard']} {record['sequence']}) starts with the "
                    "aggregation magic but is not a valid aggregate"
                )
            out.append(
                {
                    "source": index,
                    "sub": None,
                    "aggregated": False,
                    "partition_key": record["partition_key"],
                    "explicit_hash_key": None,
                    "data": record["data"],
                }
            )
            continue
        message = parse_aggregate(raw)
        if message is None or len(message.records) != len(users):
            problems.append(
                f"record {index} ({record['shard']} {record['sequence']}): the library read "
                f"{len(users)} sub-records, the aggregate holds "
                f"{'?' if message is None else len(message.records)}"
            )
            continue
        for sub, (user, proto) in enumerate(zip(users, message.records)):
            explicit_hash_key = None
            if proto.HasField("explicit_hash_key_index"):
                table = message.explicit_hash_key_table
                if proto.explicit_hash_key_index >= len(table):
                    problems.append(
                        f"record {index} sub-record {sub}: explicit hash key index "
                        f"{proto.explicit_hash_key_index} outside a table of {len(table)}"
                    )
                else:
                    explicit_hash_key = table[proto.explicit_hash_key_index]
            kinesis = user["kinesis"]
            out.append(
                {
                    "source": user["source_index"],
                    "sub": kinesis["subSequenceNumber"],
                    "aggregated": True,
                    "partition_key": kinesis["partitionKey"],
                    "explicit_hash_key": explicit_hash_key,
                    "data": kinesis["data"].decode("ascii"),
                }
            )
    json.dump({"user_records": out, "problems": problems}, sys.stdout)


if __name__ == "__main__":
    main()
