"""Which samples each reader (one DataLoader worker of one rank) reads.

Readers are numbered `reader = rank * workers_per_rank + worker` out of `readers = world_size *
workers_per_rank`. The assignment is a partition of all samples, so the eval stream sees every sample exactly
once and the ranks of the train stream draw from disjoint sample sets:

- shards >= readers: reader r owns the shards i with i % readers == r, and keeps all their samples;
- shards < readers: reader r reads shard r % shards; the m readers sharing that shard keep samples by index
  modulo m. Every reader gets a shard, so no worker is ever empty when shards are few, and each shard is
  read by at most ceil(readers / shards) readers rather than all of them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardPart:
    """Samples `offset, offset + stride, ...` (by index inside the shard) of shard number `shard`."""

    shard: int
    stride: int = 1
    offset: int = 0


def reader_parts(num_shards: int, readers: int, reader: int) -> list[ShardPart]:
    """The parts of the shards that reader `reader` of `readers` reads, in shard order."""
    if num_shards < 1 or readers < 1 or not 0 <= reader < readers:
        raise ValueError(f"need num_shards >= 1 and 0 <= reader < readers, got {num_shards}, {reader}, {readers}")
    if num_shards >= readers:
        return [ShardPart(i) for i in range(reader, num_shards, readers)]
    shard = reader % num_shards
    sharing = len(range(shard, readers, num_shards))  # readers r' with r' % num_shards == shard
    return [ShardPart(shard, stride=sharing, offset=reader // num_shards)]


@dataclass(frozen=True)
class Holdout:
    """A fixed fraction of a split's samples, chosen by a hash of each key: the same samples on every rank,
    worker and run, with no list to store. `held=False` keeps the rest (to train on), `held=True` the fraction
    (to select on: fine-tuning holds out 1–2% of the training split, as the ViT paper did)."""

    fraction: float
    held: bool

    def keeps(self, key: str) -> bool:
        u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64  # uniform in [0, 1)
        return (u < self.fraction) == self.held
