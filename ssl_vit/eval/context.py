"""What an evaluator sees: cached features, a backbone factory, the data specs, the output directory.

Evaluators never open checkpoints or shards themselves; they ask the context. That keeps every protocol
testable on synthetic features (a context built from tensors) and lets the pretraining trainer run the
same evaluators on its live backbone (a context with no disk cache, see `periodic.py`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ssl_vit.config.eval_data import SPLITS, EvalData
from ssl_vit.data.normalize import DEFAULT_MEAN, DEFAULT_STD
from ssl_vit.errors import ConfigError, DataError

from .cache import cache_key, cache_path, load_features, save_features, shard_contents
from .features import Features, Pool, check_pool, extract_features

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ssl_vit.data.split import Holdout
    from ssl_vit.data.stream import Stream
    from ssl_vit.models import VisionTransformer

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """Everything an evaluator may use. `features()` memoises in memory and, with `cache_dir`, on disk."""

    backbone_factory: Callable[..., "VisionTransformer"]
    data: EvalData
    fingerprint: str = "live"
    pool: Pool = "cls"
    layers: Sequence[int] | None = None
    out_dir: Path | None = None
    cache_dir: Path | None = None
    accelerator: "Accelerator | None" = None
    seed: int = 0
    backbone_name: str | None = None  # the backbone in messages (the --checkpoint value); None: "the backbone"
    _features: dict = field(default_factory=dict, repr=False)
    _backbone: "VisionTransformer | None" = field(default=None, repr=False)
    _shards: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------ processes
    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    # ------------------------------------------------------------------------------------------ data
    def shards(self, split: str):
        """The resolved `ShardSet` of "train" or "test" (resolved once)."""
        if split not in self._shards:
            from ssl_vit.data import resolve_spec

            spec, name = self.data.spec(split)
            self._shards[split] = resolve_spec(spec, name, follow_symlinks=self.data.follow_symlinks)
        return self._shards[split]

    def num_classes(self) -> int | None:
        """The class count of the labelled data, from the shards' class lists; None when they list none.

        Train and test must list the same classes in the same order, or label k names two different classes
        and every score is silently wrong (shards built into separate directories from folders that differ
        in one class do exactly that): a mismatch is an error naming both.
        """
        lists = {split: self.shards(split).class_names
                 for split, spec in zip(SPLITS, (self.data.train, self.data.test)) if spec}  # none: given features
        train, test = lists.get("train"), lists.get("test")
        if train is not None and test is not None and tuple(train) != tuple(test):
            first = next((i for i, (a, b) in enumerate(zip(train, test)) if a != b), min(len(train), len(test)))
            at = lambda names: repr(names[first]) if first < len(names) else "nothing"  # noqa: E731
            (train_spec, train_split), (test_spec, test_split) = self.data.spec("train"), self.data.spec("test")
            raise ConfigError(
                f"the train data ({train_spec}, split '{train_split}') and the test data ({test_spec}, split "
                f"'{test_split}') list different classes ({len(train)} vs {len(test)}; label {first} is {at(train)} "
                f"vs {at(test)}), so a label would name different classes. Build both splits into one shard "
                "directory (a split built next to another takes its class list), or from the same class folders")
        names = next((n for n in (train, test) if n is not None), None)
        return None if names is None else len(names)

    def eval_batches(
        self, split: str, image_size: int | None = None, *, batch_size: int | None = None,
        num_workers: int | None = None, crop_pct: float | None = None, holdout: "Holdout | None" = None,
    ) -> "Stream":
        """This rank's share of the centre-cropped, unaugmented stream of `split` (each sample once overall).

        Arguments left None take the context's data settings (a fine-tuning recipe brings its own); `holdout`
        keeps only the samples it keeps.
        """
        from ssl_vit.data import build_eval_stream

        return build_eval_stream(
            self.shards(split),
            batch_size=batch_size or self.data.batch_size,
            image_size=image_size or self.data.image_size,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.data.num_workers if num_workers is None else num_workers,
            crop_pct=crop_pct or self.data.crop_pct,
            holdout=holdout,
        )

    # -------------------------------------------------------------------------------------- backbone
    def backbone(self) -> "VisionTransformer":
        """The frozen backbone on this rank's device, built once per context."""
        if self._backbone is None:
            self._backbone = self.backbone_factory().to(self.device).eval()
        return self._backbone

    # -------------------------------------------------------------------------------------- features
    def features(self, split: str, pool: Pool | None = None, layers: Sequence[int] | None = None) -> Features:
        """Labelled features of "train" or "test" on every rank, key-sorted; extracted at most once."""
        pool = pool or self.pool
        layers = self.layers if layers is None else layers
        check_pool(pool, layers)
        memo = (split, pool, tuple(layers) if layers is not None else None)
        if memo not in self._features:
            self._features[memo] = self._load_or_extract(split, pool, layers)
        return self._features[memo]

    def train_test(
        self, pool: Pool | None = None, layers: Sequence[int] | None = None
    ) -> tuple[Features, Features, int]:
        """(train features, test features, number of classes) — what every feature-based protocol starts from."""
        listed = self.num_classes()  # first: class lists that disagree fail before any feature is extracted
        train, test = self.features("train", pool, layers), self.features("test", pool, layers)
        seen = int(max(train.labels.max(), test.labels.max())) + 1
        return train, test, max(listed or 0, seen)

    def _load_or_extract(self, split: str, pool: Pool, layers: Sequence[int] | None) -> Features:
        spec, name = self.data.spec(split)
        shards = self.shards(split)
        path = None
        if self.cache_dir is not None:
            key = cache_key(
                weights=self.fingerprint, urls=list(shards.urls), contents=shard_contents(shards),
                num_samples=shards.num_samples, image_size=self.data.image_size, crop_pct=self.data.crop_pct,
                mean=DEFAULT_MEAN, std=DEFAULT_STD, pool=pool, layers=list(layers) if layers is not None else None,
                precision=self.accelerator.mixed_precision if self.accelerator is not None else "no",
            )
            path = cache_path(self.cache_dir, key)
            if self._everyone_sees(path):
                log.info("features of %s (%s) from cache %s", split, spec, path)
                return _check_labelled(load_features(path), spec, name)
        with self.eval_batches(split) as stream:  # closes the loader workers even when extraction fails
            features = extract_features(
                self.backbone(), stream, pool=pool, layers=layers, accelerator=self.accelerator,
                total=shards.num_samples, desc=f"features {split}",
                source=f"{self.backbone_name or 'the backbone'} on {spec} (split '{name}')",
            )
        if not len(features):
            raise DataError(f"{spec} (split '{name}') yielded no samples; check the spec and split name")
        if path is not None and self.is_main:
            save_features(path, features, {"spec": spec, "split": name, "checkpoint": self.fingerprint})
        return _check_labelled(features, spec, name)

    def _everyone_sees(self, path: Path) -> bool:
        """A cache hit only when every rank can read the file (caches on node-local disks differ)."""
        here = path.exists()
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return here
        from accelerate.utils import gather_object

        return all(gather_object([here]))


def _check_labelled(features: Features, spec: str, split: str) -> Features:
    unlabelled = int((features.labels < 0).sum())
    if unlabelled:
        example = features.keys[int((features.labels < 0).nonzero()[0])]
        raise DataError(
            f"{spec} (split '{split}') has {unlabelled} unlabelled samples (cls -1, e.g. '{example}'); "
            "evaluation needs class labels: build the shards from a class-per-folder tree"
        )
    return features


def features_context(train: Features, test: Features, **kwargs) -> EvalContext:
    """A context whose features are given (tests, or features computed elsewhere); no backbone needed."""

    def no_backbone():
        raise ConfigError("this evaluation context holds precomputed features only; it has no backbone")

    ctx = EvalContext(backbone_factory=no_backbone, data=EvalData(), **kwargs)
    for split, feats in (("train", train), ("test", test)):
        ctx._features[(split, ctx.pool, tuple(ctx.layers) if ctx.layers is not None else None)] = feats
    return ctx
