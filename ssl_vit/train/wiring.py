"""What every command that trains wires the same way: the run length in steps and the train-stream factory.

Pretraining (`commands/pretrain.py`) and fine-tuning (`eval/finetune.py`) both hand the trainer a number of
steps and a `make_stream(start_step)`; both come from here, so the same recipe length means the same number of
steps whichever command reads it. (It sits in train/, not commands/, because fine-tuning runs inside an
evaluator and no module imports from a stage above its own.)
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from ..data import build_train_stream, steps_per_epoch
from ..config.pretrain import accumulation_steps
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
    shards: "ShardSet", data: "DataConfig", *, seed: int, rank: int, world_size: int, global_batch: int,
    pin_memory: bool = False, holdout: "Holdout | None" = None,
) -> Callable:
    """`make_stream(start_step)` for the trainer: this rank's endless train stream from the step after
    `start_step` on (`holdout`: the part of the shards it keeps, when fine-tuning holds some out for selection).
    Which samples each step trains on is the global order's (`data/global_order.py`): the same for any
    `world_size`, micro-batch or loader workers that make up `global_batch`. The options come from the recipe's
    `data` section, checked here once."""
    options = data.stream_options(pin_memory=pin_memory)
    accumulation = accumulation_steps(global_batch, data.batch_size, world_size)

    def make_stream(start_step: int):
        return build_train_stream(shards, options, seed=seed, rank=rank, world_size=world_size,
                                  start_step=start_step, accumulation=accumulation, holdout=holdout)

    return make_stream
