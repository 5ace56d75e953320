"""Read scalars back from TensorBoard event files (TFRecord of `Event` protos) with tensorboardX's protos only."""
from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def _records(path: Path):
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)  # uint64 length, then a uint32 crc of it
        start = offset + 12
        yield data[start : start + length]
        offset = start + length + 4  # the payload, then its uint32 crc


def read_scalars(root: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} over every event file under `root`."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(root.rglob("events.out.tfevents.*")):
        for record in _records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out
