"""Read a W&B offline run file (`wandb/offline-run-*/run-ID.wandb`) back: its run record and history rows.

The file is a LevelDB-style log (7-byte file header, 32 KiB blocks, records split into FULL/FIRST/MIDDLE/LAST
chunks behind a 7-byte chunk header) of `wandb_internal_pb2.Record` protobufs; wandb ships the protobufs but, since
its Go core, no Python reader.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload


def read_run(path: Path) -> tuple[pb.RunRecord, list[dict]]:
    """(the run record: project, run_id, display_name, …; the history rows as {key: value})."""
    run, rows = None, []
    for payload in _payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return run, rows
