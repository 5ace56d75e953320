"""What every command that trains wires the same way: the run length in steps and the train-stream factory.

Pretraining (`commands/pretrain.py`) and fine-tuning (`eval/finetune.py`) both hand the trainer a number of
steps and a `make_stream(segment)`; both come from here, so the same recipe length means the same number of
steps whichever command reads it. (It sits in train/, not commands/, because fine-tuning runs inside an
evaluator and no module imports from a stage above its own.)
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from ..data import build_train_stream, steps_per_epoch
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import DataConfig, TrainConfig
    from ..data import ShardSet
    from ..data.split import Holdout


def total_steps(train: "TrainConfig", num_samples: int | None, spec: str) -> int:
    """`train.total_steps`, or `ceil(train.epochs × steps_per_epoch)`: an epoch is `ceil(N / global_batch)` steps
    (the stream's epoch: its last step takes a full batch), so 2 epochs of 10 images at batch 4 are 6 steps."""
    if train.total_steps is not None:
        return train.total_steps
    if num_samples is None:
        raise ConfigError(
            f"train.epochs needs the sample count of {spec}, which a URL list does not know: use a shard directory "
            "with _info.json, give the count (pretraining: data.num_samples), or set train.total_steps"
        )
    return math.ceil(train.epochs * steps_per_epoch(num_samples, train.global_batch))


def train_stream_factory(
    shards: "ShardSet", data: "DataConfig", *, seed: int, rank: int, world_size: int, pin_memory: bool = False,
    holdout: "Holdout | None" = None,
) -> Callable:
    """`make_stream(segment[, skip, first_worker])` for the trainer: this rank's endless train stream, a pure function
    of the segment (`holdout`: the part of the shards it keeps, when fine-tuning holds some out for selection),
    fast-forwarded past `skip[w]` samples of loader worker w (a resume between two checkpoints of one segment),
    with `first_worker`'s batch first. The options come from the recipe's `data` section, checked here once."""
    options = data.stream_options(pin_memory=pin_memory)

    def make_stream(segment: int, skip: list[int] | None = None, first_worker: int = 0):
        return build_train_stream(shards, options, seed=seed, rank=rank, world_size=world_size, segment=segment,
                                  holdout=holdout, skip=skip or (), first_worker=first_worker)

    return make_stream
