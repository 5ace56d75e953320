"""The train stream's loader workers: each builds the micro-batches that fall to it, from the global order.

Rank r of R, with micro-batch b and A accumulation steps (G = R·A·b = `train.global_batch`), trains at global
step s, micro-step a, on the positions `s·G + (a·R + r)·b + [0, b)` of the order (`global_order.py`). Its
micro-batches are numbered j = s·A + a; the loader takes them from its K workers in turn, so worker k builds
j = start·A + k, + K, + 2K, … (`start`: the step the stream starts after). Every sample is read at its place
(`shard_access.py`), and its crop and flip are drawn from a generator seeded by (seed, epoch, place in the
epoch) alone, so a sample's pixels do not depend on who reads it either.

A batch carries, beside `image` and `label`, what the trainer checks and records: `micro` (j), `positions`,
`hashes` and `read` ((b,) each: every position of the micro-batch, its sample's key hash, and whether the sample
is in `image`). A sample that cannot be decoded, or that lies in a shard skipped this epoch
(`data.shard_errors: skip`), is left out of `image` (the micro-batch is smaller, even empty: the trainer then
steps with a zero-weight stand-in, `feed.batch_tensors`), counted in `skipped`, and recorded as not read: never
replaced by another. `part_keys` brings the key hashes of each shard this worker
indexed, for the split-wide key check (`split_keys.py`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_tools.decoding import max_file_bytes
from ssl_vit.errors import DataError

from .global_order import GlobalOrder
from .promises import SamplePromises
from .shard_access import ShardAccess
from .shards import ShardUnreadable
from .spec import ShardSet
from .split import Holdout
from .stages import BadSampleTally, stack_images, train_crop
from .stream_options import TrainStreamOptions

_CROP = 0x43524F50  # keeps the crops' seeds apart from the order's


@dataclass(frozen=True)
class TrainPlace:
    """Which train stream this is: its seed, this rank of `world_size`, the step it starts after, and the
    accumulation steps per step (with the options' batch size, the global batch)."""

    seed: int
    rank: int
    world_size: int
    start_step: int
    accumulation: int

    def micro_positions(self, micro: int, batch_size: int) -> np.ndarray:
        """(b,) the global positions of this rank's micro-batch number `micro`."""
        step, a = divmod(micro, self.accumulation)
        global_batch = batch_size * self.world_size * self.accumulation
        first = step * global_batch + (a * self.world_size + self.rank) * batch_size
        return np.arange(first, first + batch_size, dtype=np.int64)


class TrainReader(IterableDataset):
    """The endless micro-batches of one rank (see the module's docstring); `counts` are the samples trained on
    per shard (`ShardAccess.counts`), computed once in the process that builds the stream."""

    def __init__(self, shards: ShardSet, options: TrainStreamOptions, place: TrainPlace, holdout: Holdout | None,
                 counts: list[int]) -> None:
        self.shards, self.o, self.place, self.holdout, self.counts = shards, options, place, holdout, counts

    def __iter__(self) -> Iterator[dict]:
        worker, workers = _worker()
        access = ShardAccess(self.shards, holdout=self.holdout, policy=self.o.remote_policy(),
                             remote_cache_bytes=int(self.o.remote_cache_gb * 1e9),
                             max_member=max_file_bytes(self.o.max_pixels))
        try:
            yield from self._batches(worker, workers, access)
        except DataError as exc:
            yield {"error": str(exc)}  # `stream.Stream` raises it in the training process, as one line
        finally:
            access.close()

    def _batches(self, worker: int, workers: int, access: ShardAccess) -> Iterator[dict]:
        order = GlobalOrder(self.counts, seed=self.place.seed, window=self.o.shuffle_buffer)
        tally = BadSampleTally(self.o.max_bad_fraction, self.o.min_samples_for_bad_fraction,
                               f"rank {self.place.rank} worker {worker}")
        promises = SamplePromises(self.shards.class_names)
        lost: set[tuple[int, int]] = set()  # (epoch, shard) skipped for the rest of that epoch
        micro = self.place.start_step * self.place.accumulation + worker
        while True:
            yield self._micro_batch(micro, order, access, tally, promises, lost)
            micro += workers

    def _micro_batch(self, micro: int, order: GlobalOrder, access: ShardAccess, tally: BadSampleTally,
                     promises: SamplePromises, lost: set[tuple[int, int]]) -> dict:
        o = self.o
        positions = self.place.micro_positions(micro, o.batch_size)  # (b,)
        epochs, shards, members = order.locate(positions)  # (b,) each
        hashes = np.zeros(len(positions), dtype=np.int64)
        read = np.zeros(len(positions), dtype=bool)
        pixels, labels = [], []
        for i, (epoch, shard, member) in enumerate(zip(epochs.tolist(), shards.tolist(), members.tolist())):
            url = self.shards.urls[shard]
            if (epoch, shard) in lost:
                tally.missed()
                continue
            try:
                sample = access.read(shard, member)
            except ShardUnreadable as err:
                if o.shard_errors == "stop":
                    raise
                lost.add((epoch, shard))
                tally.lost_shard(url, order.counts[shard], err)
                tally.missed()
                continue
            promises.check_label(sample)
            hashes[i] = access.index(shard).key_hashes[access.kept(shard)[member]]
            rng = np.random.default_rng([self.place.seed, epoch, int(positions[i]) % order.epoch_size, _CROP])
            try:
                image, label = train_crop(sample, rng, image_size=o.image_size, scale=o.crop_scale,
                                          ratio=o.crop_ratio, hflip=o.hflip, max_pixels=o.max_pixels)
            except Exception as exc:  # noqa: BLE001 - any decode failure is a bad sample, counted and reported
                tally.skip(url, sample["__key__"], exc)
                continue
            tally.good(url)
            pixels.append(image)
            labels.append(label)
            read[i] = True
        return {
            "image": stack_images(pixels, o.image_size),  # (n, 3, S, S) uint8, 0 ≤ n ≤ b
            "label": torch.tensor(labels, dtype=torch.int64),
            "skipped": torch.tensor(tally.take_unreported(), dtype=torch.int64),
            "micro": torch.tensor(micro, dtype=torch.int64),
            "positions": torch.from_numpy(positions),
            "hashes": torch.from_numpy(hashes),
            "read": torch.from_numpy(read),
            "part_keys": access.take_records() if o.check_unique_keys else access.take_records()[:0],
        }


def _worker() -> tuple[int, int]:
    """(this worker's index, workers per rank); the main process counts as worker 0 of 1."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)
