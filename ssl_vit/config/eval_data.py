"""The eval-data section, defined once: where labelled evaluation data lives and how it is preprocessed.

`EvalData` is the `data:` section of an evaluation recipe and what every evaluator reads through its context.
A pretraining recipe embeds the same keys in its `eval:` section as `PeriodicEvalData`, every key optional:
what it leaves out comes from the pretraining data (`PretrainConfig.eval_data()`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError
from .loader import _field_comments

SPLITS = ("train", "test")


@dataclass
class EvalData:
    """Where the labelled evaluation data lives and how it is preprocessed (centre crop, no augmentation)."""

    train: str | None = None  # a data spec: a shard directory or a brace-expanded URL list
    test: str | None = None  # the labelled test data's spec
    train_split: str = "train"  # the split of `train` (a shard directory's)
    test_split: str = "validation"  # the split of `test`
    follow_symlinks: bool = False  # read local shards that lead out of their folder through symlinks (your own links)
    image_size: int = 224  # side of the centre crops, in pixels
    crop_pct: float = 0.875  # resize the shorter side to image_size / crop_pct, then centre-crop image_size
    batch_size: int = 256  # per process
    num_workers: int = 4  # loader processes per process

    def spec(self, split: str) -> tuple[str, str]:
        """(data spec, split name inside it) for "train" or "test"; missing specs name the flag to pass."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        spec = self.train if split == "train" else self.test
        if not spec:
            raise ConfigError(f"no {split} data given: pass --{split} SPEC (a shard directory or URL pattern)")
        return spec, self.train_split if split == "train" else self.test_split

    def validate(self, where: str, prefix: str = "data.") -> None:
        for key in ("image_size", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}: {prefix}{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.num_workers < 0:
            raise ConfigError(f"{where}: {prefix}num_workers must be an integer ≥ 0, got {self.num_workers!r}")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"{where}: {prefix}crop_pct must be in (0, 1], got {self.crop_pct!r}")


# The same keys, each optional (None: take the pretraining data's value), generated from EvalData.
# Each key's help is EvalData's, read by `describe` from the field's metadata (a generated class has no source).
PeriodicEvalData = dataclasses.make_dataclass(
    "PeriodicEvalData",
    [(f.name, f"{f.type} | None", dataclasses.field(default=None, metadata={
        "help": f"{_field_comments(EvalData).get(f.name, f.name)} (unset: from the pretraining data)"}))
     for f in dataclasses.fields(EvalData)],
)
PeriodicEvalData.__module__ = __name__
PeriodicEvalData.__doc__ = "EvalData's keys, each optional: unset ones come from the pretraining data."
