"""How a train stream reads and augments: one frozen dataclass, so each option has one name, one default and
one range, checked in one place.

    options = TrainStreamOptions(batch_size=256, image_size=224, num_workers=8)
    stream = build_train_stream("/data/in1k:train", options, seed=0, rank=rank, world_size=world_size)

The recipes' `data` section holds the same options under the same names (`config/pretrain.py`: DataConfig takes
its defaults from here, and builds a `TrainStreamOptions` while it checks a recipe), so a bad value fails when
the recipe loads, with the message the stream would give. Messages name an option by the recipe key users write
(`data.max_bad_fraction`); the two options no recipe sets (`pin_memory`, chosen by the device, and
`min_samples_for_bad_fraction`) by their own names. What a stream *is* — its seed, rank, world size, segment,
holdout and resume position — is not an option: `build_train_stream` takes those as arguments.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Literal

from ssl_vit.errors import ConfigError

from . import remote

_REMOTE = remote.RetryPolicy()  # the defaults of the http(s) limits below (their reasons: remote.py)

_NOT_RECIPE_KEYS = frozenset({"pin_memory", "min_samples_for_bad_fraction"})


class StreamOptionError(ConfigError):
    """An option outside its range. `key` is the name users write for it (the recipe key), so the recipe loader
    can say where it was set (the file or the command line) in front of the same message."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class TrainStreamOptions:
    """The train stream's reading and augmentation options, checked once when built (a `StreamOptionError`,
    a ConfigError, names the first one out of range)."""

    batch_size: int = 64  # samples per batch, ≥ 1 (per device, per micro-batch)
    image_size: int = 224  # side of the square crops in pixels, ≥ 1
    num_workers: int = 8  # loader processes, ≥ 0 (0: the calling process reads, as one worker)
    shuffle_buffer: int = 10_000  # samples shuffled together, ≥ 0: the order shuffles windows of whole shards that
    # hold at least this many (`global_order.py`); 0 or 1: the stored order, no shuffle
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random-resized crop area fraction: 0 < min ≤ max ≤ 1
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)  # random-resized crop aspect ratio: 0 < min ≤ max
    hflip: bool = True  # flip half the crops left-right
    max_bad_fraction: float = 0.01  # undecodable fraction tolerated, in [0, 1) (see __post_init__)
    max_pixels: int | None = None  # width × height cap per image, ≥ 1, refused before decoding; None: Pillow's
    shard_errors: Literal["stop", "skip"] = "stop"  # a shard unreadable after retries: raise, or skip it this epoch
    check_unique_keys: bool = True  # batches carry their parts' key hashes (`part_keys`) for the split-wide check
    remote_min_rate: float = _REMOTE.min_rate  # http(s) shards: bytes/s each attempt must average over every
    # remote_rate_window_s of waiting, ≥ 0 (0: no minimum); slower attempts fail and are retried
    remote_rate_window_s: float = _REMOTE.rate_window  # seconds of waiting the minimum rate is averaged over, > 0
    remote_cache_gb: float = 50.0  # GB of remote shards each node keeps copies of (`remote_copy.py`), > 0; at
    # least one shuffle window of shards, or copies are fetched again
    remote_shard_deadline_s: float | None = _REMOTE.deadline  # seconds of waiting one http(s) shard may take
    # over all its attempts, > 0; null: 15 minutes more than its bytes take at the minimum rate
    min_samples_for_bad_fraction: int = 20  # a reader whose first this-many samples are all bad stops, ≥ 1
    pin_memory: bool = False  # the loader pins batches (for CUDA copies)

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("image_size", 1), ("num_workers", 0), ("shuffle_buffer", 0),
                          ("min_samples_for_bad_fraction", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                self._refuse(name, f"must be an integer ≥ {low}, got {value!r}")
        for name in ("hflip", "check_unique_keys", "pin_memory"):
            if not isinstance(getattr(self, name), bool):
                self._refuse(name, f"must be true or false, got {getattr(self, name)!r}")
        scale = self._pair("crop_scale", "0 < min ≤ max ≤ 1", lambda lo, hi: 0 < lo <= hi <= 1)
        ratio = self._pair("crop_ratio", "0 < min ≤ max", lambda lo, hi: 0 < lo <= hi)
        object.__setattr__(self, "crop_scale", scale)  # lists (YAML) and ints become the tuple of floats the crop takes
        object.__setattr__(self, "crop_ratio", ratio)
        # [0, 1), as recipes have always promised: at 1 the bound could never stop a stream, so only an all-bad
        # reader (`min_samples_for_bad_fraction`) would; a run that may train on no image at all is a mistake.
        p = self.max_bad_fraction
        if not _is_number(p) or not 0 <= p < 1:
            self._refuse("max_bad_fraction", f"must be in [0, 1), got {p!r}")
        if self.max_pixels is not None and (not _is_int(self.max_pixels) or self.max_pixels < 1):
            self._refuse("max_pixels", f"must be a positive number of pixels or null, got {self.max_pixels!r}")
        if self.shard_errors not in ("stop", "skip"):
            self._refuse("shard_errors", f"must be 'stop' or 'skip', got {self.shard_errors!r}")
        if not _is_number(self.remote_min_rate) or self.remote_min_rate < 0:
            self._refuse("remote_min_rate", f"must be a number of bytes/s ≥ 0, got {self.remote_min_rate!r}")
        if not _is_number(self.remote_rate_window_s) or self.remote_rate_window_s <= 0:
            self._refuse("remote_rate_window_s", f"must be a number of seconds > 0, got {self.remote_rate_window_s!r}")
        if not _is_number(self.remote_cache_gb) or self.remote_cache_gb <= 0:
            self._refuse("remote_cache_gb", f"must be a number of GB > 0, got {self.remote_cache_gb!r}")
        deadline = self.remote_shard_deadline_s
        if deadline is not None and (not _is_number(deadline) or deadline <= 0):
            self._refuse("remote_shard_deadline_s", f"must be a number of seconds > 0 or null, got {deadline!r}")

    def remote_policy(self) -> remote.RetryPolicy:
        """The retries of http(s) shards (`remote.RETRY`'s, read now) with this stream's rate and deadline."""
        return dataclasses.replace(remote.RETRY, min_rate=float(self.remote_min_rate),
                                   rate_window=float(self.remote_rate_window_s),
                                   deadline=None if self.remote_shard_deadline_s is None
                                   else float(self.remote_shard_deadline_s))

    def _pair(self, name: str, rule: str, holds) -> tuple[float, float]:
        value = getattr(self, name)
        if (not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_number(v) for v in value)
                or not holds(*value)):
            shown = list(value) if isinstance(value, (tuple, list)) else repr(value)
            self._refuse(name, f"must be [min, max] with {rule}, got {shown}")
        return float(value[0]), float(value[1])

    @staticmethod
    def _refuse(name: str, rule: str) -> None:
        key = name if name in _NOT_RECIPE_KEYS else f"data.{name}"
        raise StreamOptionError(key, f"{key} {rule}")


def _is_int(value: object) -> bool:
    """An integer (numpy's too), not a bool: `True` is no batch size."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
