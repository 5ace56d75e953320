"""The evaluation recipe (`recipes/eval/*.yaml`): which evaluators run, on which data, with which features.

    data: {image_size: 224, crop_pct: 0.875, batch_size: 256, num_workers: 8, train_split: train, test_split: validation}
    features: {pool: cls, layers: null}
    seed: 0
    cache: true
    precision: fp32              # feature extraction; auto: bf16 on GPUs that have it
    evaluators:                  # name → options, run in this order by `ssl-vit eval all`
      fewshot: {shots: [1, 5, 10, 25], seeds: 3}
      knn: {k: [10, 20, 200]}
      linear: {}

Resolution, crop and pooling left unset come from each checkpoint: the image size it was trained at, the
crop its recipe's `eval.crop_pct` names (else 0.875), `mean` pooling for a `global_pool: avg` model (else
`cls`). `EvalRecipe.explicit` records which of them the recipe or the command line set.

Loaded by the one recipe loader (`loader.py`: `base:`, dotted overrides, did-you-mean). Two shorthands for
overrides: a data key alone (`batch_size=64` means `data.batch_size=64`, `pool=mean` means `features.pool=mean`),
and an evaluator name first (`fewshot.shots=[1,5]` means `evaluators.fewshot.shots`). Evaluator names and
options are checked by the evaluator registry when the command builds them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .eval_data import EvalData
from .loader import load_recipe, plain, source_of

DEFAULT_EVALUATORS = ("fewshot", "knn", "linear")
CHECKPOINT_DEFAULTS = ("data.image_size", "data.crop_pct", "features.pool")  # unset: as the checkpoint was trained
DATA_KEYS = tuple(f.name for f in dataclasses.fields(EvalData))


@dataclass
class FeaturesConfig:
    """Which tokens of which blocks make a feature (ssl_vit.eval.features)."""

    pool: Literal["cls", "mean", "both"] = "cls"  # [class] token, mean of the patch tokens, or both concatenated
    layers: list[int] | None = None  # null: the last block; e.g. [-1, -4] concatenates two blocks


@dataclass
class EvalRecipe:
    """An evaluation run: data, features, and the evaluators with their options."""

    data: EvalData = field(default_factory=EvalData)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    seed: int = 0  # few-shot draws, holdout split, random init
    cache: bool = True  # features cached on disk, keyed by checkpoint, data and preprocessing
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # of feature extraction; auto: bf16 on GPUs that have it
    evaluators: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in DEFAULT_EVALUATORS})
    # of CHECKPOINT_DEFAULTS, the keys the recipe or command line set (derived while loading, not a recipe key)
    explicit: frozenset[str] = field(default=frozenset(), init=False)

    @property
    def pool(self) -> str:
        return self.features.pool

    @property
    def layers(self) -> list[int] | None:
        return self.features.layers

    def to_dict(self) -> dict:
        return {k: v for k, v in plain(self).items() if k != "explicit"}

    @staticmethod
    def expand_key(key: str) -> str:
        """Override shorthands: `batch_size` → `data.batch_size`, `pool` → `features.pool`,
        `knn.k` → `evaluators.knn.k`."""
        head = key.split(".", 1)[0]
        if head in DATA_KEYS:
            return f"data.{key}"
        if head in ("pool", "layers"):
            return f"features.{key}"
        if "." in key and head not in {f.name for f in dataclasses.fields(EvalRecipe)}:
            return f"evaluators.{key}"
        return key

    @staticmethod
    def prepare(raw: dict, where: str) -> dict:
        """`evaluators` as `{name: options}` (the pretraining recipes' list form is accepted too); absent: the
        default three."""
        raw["evaluators"] = normalise_evaluators(raw.get("evaluators", {k: {} for k in DEFAULT_EVALUATORS}), where)
        return raw

    def validate(self, where: str, sources: dict[str, str] | None = None) -> None:
        """The loader's hook: value checks, and which checkpoint-defaulted keys were set (`sources` holds them)."""
        self.data.validate(source_of(sources or {}, where, "data"))
        self.explicit = frozenset(k for k in CHECKPOINT_DEFAULTS if k in (sources or {}))


def load_eval_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> EvalRecipe:
    """Read an evaluation recipe (following `base:`), apply `key=value` overrides, check types and values."""
    return load_recipe(EvalRecipe, path, overrides, what="evaluation recipe (see recipes/eval/)",
                       sections="data:, features:, evaluators:, ...")


def normalise_evaluators(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """`{name: options}` or `[{name: ..., **options}]` (the pretraining recipes' form) → `{name: options}`."""
    if value is None:
        return {}
    if isinstance(value, list):
        out = {}
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or "name" not in entry:
                raise ConfigError(f"{where}: evaluators[{i}] needs a 'name' (e.g. {{name: knn, k: [20]}})")
            options = dict(entry)
            out[str(options.pop("name"))] = options
        return out
    if isinstance(value, dict):
        if not all(isinstance(v, dict) or v is None for v in value.values()):
            raise ConfigError(f"{where}: evaluators must map evaluator names to their options, got {value!r}")
        return {str(k): dict(v or {}) for k, v in value.items()}
    raise ConfigError(f"{where}: evaluators must map evaluator names to their options, got {value!r}")
