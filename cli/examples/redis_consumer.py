#!/usr/bin/env python3
"""Reads the dispatches that `handover run --redis URL --sink redis` publishes, as one member
of a Redis consumer group, and prints them as NDJSON.

    pip install redis
    HANDOVER_TOKEN=... python3 redis_consumer.py --url redis://127.0.0.1:6379 --shards 8

Each shard has its own stream, `<prefix>events:<shard>`; the prefix is the one `handover run`
logs at start (`redis coordination on ... prefix=...`), by default `handover:{<hash>}:` where
the hash is the 64-bit FNV-1a of the bot token (computed here from HANDOVER_TOKEN when
--prefix is not given; the token never leaves this process). Entry fields: shard, seq, type,
data (the event's raw JSON) and session. Entry ids are `<epoch>-<seq>`: the same event always
has the same id, so it is in its stream once.

Start several copies with different --consumer names to share the work: each entry goes to one
of them. An entry is acknowledged (XACK) once handled; entries a crashed consumer had taken
are claimed back after --claim-idle-ms (XAUTOCLAIM). Stop with Ctrl-C.
"""

import argparse
import json
import os
import sys

import redis


def default_prefix(token: str) -> str:
    h = 0xCBF29CE484222325
    for b in token.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "handover:{%016x}:" % h


def handle(stream: str, entry_id: str, fields: dict) -> None:
    """The application's work. Here: one NDJSON line per event."""
    print(
        json.dumps(
            {
                "stream": stream,
                "id": entry_id,
                "shard": int(fields["shard"]),
                "seq": int(fields["seq"]),
                "type": fields["type"],
                "session": fields["session"],
                "data": json.loads(fields["data"]),
            }
        ),
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="redis://127.0.0.1:6379")
    p.add_argument("--prefix", help="key prefix (default: from HANDOVER_TOKEN)")
    p.add_argument("--shards", type=int, required=True, help="the bot's total shard count")
    p.add_argument("--group", default="consumers")
    p.add_argument("--consumer", default=f"consumer-{os.getpid()}")
    p.add_argument("--claim-idle-ms", type=int, default=60_000)
    p.add_argument("--max-events", type=int, default=0, help="stop after this many (0: never)")
    args = p.parse_args()

    prefix = args.prefix
    if prefix is None:
        token = os.environ.get("HANDOVER_TOKEN")
        if not token:
            print("pass --prefix or set HANDOVER_TOKEN", file=sys.stderr)
            return 2
        prefix = default_prefix(token)

    r = redis.Redis.from_url(args.url, decode_responses=True)
    streams = [f"{prefix}events:{s}" for s in range(args.shards)]
    for s in streams:
        try:
            # From the beginning of the stream: a new group sees what is still kept.
            r.xgroup_create(s, args.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    seen = 0
    # Entries a dead consumer took but never acknowledged.
    for s in streams:
        _, claimed, *_ = r.xautoclaim(s, args.group, args.consumer, args.claim_idle_ms, "0-0")
        for entry_id, fields in claimed:
            handle(s, entry_id, fields)
            r.xack(s, args.group, entry_id)
            seen += 1

    try:
        while args.max_events == 0 or seen < args.max_events:
            got = r.xreadgroup(
                args.group, args.consumer, {s: ">" for s in streams}, count=100, block=5000
            )
            for stream, entries in got or []:
                for entry_id, fields in entries:
                    handle(stream, entry_id, fields)
                    r.xack(stream, args.group, entry_id)
                    seen += 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
