"""Evaluation recipes: YAML (`recipes/eval/*.yaml`) plus `key=value` overrides → a checked `EvalRecipe`.

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

Overrides are dotted keys with YAML values. Two shorthands: a data key alone (`batch_size=64` means
`data.batch_size=64`), and an evaluator name first (`fewshot.shots=[1,5]` means `evaluators.fewshot.shots`).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ssl_vit.config import check_seed, parse_override, read_yaml_mapping
from ssl_vit.errors import ConfigError

from .context import DataConfig
from .features import POOLS
from .registry import names as evaluator_names

DEFAULT_EVALUATORS = {"fewshot": {}, "knn": {}, "linear": {}}
CHECKPOINT_DEFAULTS = ("data.image_size", "data.crop_pct", "features.pool")  # unset: as the checkpoint was trained
DATA_KEYS = [f.name for f in dataclasses.fields(DataConfig)]
TOP_KEYS = ("data", "features", "seed", "cache", "precision", "evaluators")
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass
class EvalRecipe:
    data: DataConfig = field(default_factory=DataConfig)
    pool: str = "cls"
    layers: list[int] | None = None
    seed: int = 0
    cache: bool = True
    precision: str = "fp32"  # of feature extraction; auto: bf16 on GPUs that have it
    evaluators: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in DEFAULT_EVALUATORS})
    explicit: frozenset[str] = frozenset()  # of CHECKPOINT_DEFAULTS, the keys the recipe or command line set

    def to_dict(self) -> dict:
        return {"data": dataclasses.asdict(self.data), "features": {"pool": self.pool, "layers": self.layers},
                "seed": self.seed, "cache": self.cache, "precision": self.precision, "evaluators": self.evaluators}


def load_eval_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> EvalRecipe:
    where = str(path) if path is not None else "defaults"
    raw: dict = {}
    if path is not None:
        raw = read_yaml_mapping(path, "evaluation recipe (see recipes/eval/)", "data:, features:, evaluators:, ...")
    raw["evaluators"] = normalise_evaluators(raw.get("evaluators", DEFAULT_EVALUATORS), where)
    for item in overrides:
        key, value = parse_override(item)
        _set(raw, _expand(key), value)
    recipe = _build(raw, where if not overrides else f"{where} + command line")
    recipe.explicit = frozenset(k for k in CHECKPOINT_DEFAULTS if k.split(".")[1] in (raw.get(k.split(".")[0]) or {}))
    return recipe


def normalise_evaluators(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """`{name: options}` or `[{name: ..., **options}]` (the pretraining recipes' form) → `{name: options}`."""
    if value is None:
        return {}
    if isinstance(value, list):
        out = {}
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or "name" not in entry:
                raise ConfigError(f"{where}: evaluators[{i}] needs a 'name' (one of {', '.join(evaluator_names())})")
            options = dict(entry)
            out[str(options.pop("name"))] = options
        return out
    if isinstance(value, dict):
        return {str(k): dict(v or {}) for k, v in value.items()}
    raise ConfigError(f"{where}: evaluators must map evaluator names to their options, got {value!r}")


def _expand(key: str) -> str:
    head = key.split(".", 1)[0]
    if head in DATA_KEYS:
        return f"data.{key}"
    if head in ("pool", "layers"):
        return f"features.{key}"
    if head in evaluator_names():
        return f"evaluators.{key}"
    return key


def _set(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"command line: '{key}': '{part}' is a value, not a section")
    node[parts[-1]] = value


def _check_keys(given: dict, valid: list[str] | tuple[str, ...], prefix: str, where: str) -> None:
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; valid: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{hint}")


def _build(raw: dict, where: str) -> EvalRecipe:
    _check_keys(raw, TOP_KEYS, "", where)
    data_raw = raw.get("data") or {}
    feats = raw.get("features") or {}
    _check_keys(data_raw, DATA_KEYS, "data.", where)
    _check_keys(feats, ("pool", "layers"), "features.", where)
    data = DataConfig(**data_raw)
    for key in ("image_size", "batch_size"):
        if not isinstance(getattr(data, key), int) or getattr(data, key) < 1:
            raise ConfigError(f"{where}: data.{key} must be a positive integer, got {getattr(data, key)!r}")
    if not isinstance(data.num_workers, int) or data.num_workers < 0:
        raise ConfigError(f"{where}: data.num_workers must be an integer ≥ 0, got {data.num_workers!r}")
    if not isinstance(data.crop_pct, (int, float)) or not 0 < data.crop_pct <= 1:
        raise ConfigError(f"{where}: data.crop_pct must be in (0, 1], got {data.crop_pct!r}")
    pool = feats.get("pool", "cls")
    if pool not in POOLS:
        raise ConfigError(f"{where}: features.pool must be one of {', '.join(POOLS)}, got {pool!r}")
    layers = feats.get("layers")
    if layers is not None and (not isinstance(layers, list) or not all(isinstance(i, int) for i in layers)):
        raise ConfigError(f"{where}: features.layers must be null or a list of block indices, e.g. [-1, -4]")
    seed, cache = raw.get("seed", 0), raw.get("cache", True)
    if not isinstance(seed, int) or not isinstance(cache, bool):
        raise ConfigError(f"{where}: seed must be an integer and cache true or false, got {seed!r}, {cache!r}")
    check_seed(seed, "seed", where)
    precision = raw.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    evaluators = normalise_evaluators(raw.get("evaluators"), where)
    for name in evaluators:
        if name not in evaluator_names():
            close = difflib.get_close_matches(name, evaluator_names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown evaluator '{name}'{hint}; registered: {', '.join(evaluator_names())}")
    return EvalRecipe(data, pool, layers, seed, cache, precision, evaluators)
