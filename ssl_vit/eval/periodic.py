"""Evaluators during pretraining: few-shot / kNN on the live backbone every N steps, metrics for the trainer.

The trainer's `val_fn(step)` calls `evaluate_during_pretraining(backbone, cfg, accelerator, step)` on every
rank. Features are extracted afresh each time (the backbone changes between calls, so nothing is cached
on disk), gathered so that every rank computes the same metrics, and returned flat (`fewshot/10shot`,
`knn/k20_top1`) for the trainer to log. The backbone's training mode is restored afterwards.

`cfg` is either flat (a dict or object with `evaluators`, `train`, `test`, `train_split`, `test_split`,
`image_size`, `batch_size`, `num_workers`, `crop_pct`) or a pretraining config, whose `eval` section
lists the evaluators and may name `train`/`test` data and the other keys; what it leaves out comes from
`data` (`train`/`split` as the labelled training pool, `val`/`val_split` as the test set).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ssl_vit.errors import ConfigError

from .context import DataConfig, EvalContext
from .recipe import normalise_evaluators
from .registry import build

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ssl_vit.models import VisionTransformer

# Fine-tuning trains the backbone and the MAE probe trains for epochs: neither belongs inside pretraining.
NOT_PERIODIC = ("finetune",)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    value = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    return default if value is None else value


def periodic_settings(cfg: Any) -> tuple[DataConfig, dict[str, dict], int]:
    """(data settings, {evaluator: options}, seed) from a flat or a pretraining-shaped config."""
    section, data = _get(cfg, "eval"), _get(cfg, "data")
    nested = section is not None and data is not None
    source = section if nested else cfg

    def pick(key: str, data_key: str | None, default: Any) -> Any:
        return _get(source, key, _get(data, data_key, default) if nested and data_key else default)

    settings = DataConfig(
        train=pick("train", "train", None), test=pick("test", "val", None),
        train_split=pick("train_split", "split", "train"), test_split=pick("test_split", "val_split", "validation"),
        image_size=pick("image_size", "image_size", 224), crop_pct=pick("crop_pct", None, 0.875),
        batch_size=pick("batch_size", "batch_size", 256), num_workers=pick("num_workers", "num_workers", 4),
    )
    evaluators = normalise_evaluators(_get(source, "evaluators", []), "eval.evaluators")
    for name, options in evaluators.items():
        if name in NOT_PERIODIC or options.get("protocol") == "mae":
            raise ConfigError(f"eval.evaluators: '{name}' trains for epochs and cannot run during pretraining; "
                              "run it afterwards with `ssl-vit eval`")
    seed = int(_get(_get(cfg, "train", {}), "seed", _get(cfg, "seed", 0)))
    return settings, evaluators, seed


def check_periodic(cfg: Any) -> None:
    """Fail before training starts: unknown evaluators or options, missing or unresolvable data specs."""
    settings, evaluators, _ = periodic_settings(cfg)
    for name, options in evaluators.items():
        build(name, **options)
    ctx = EvalContext(backbone_factory=lambda: None, data=settings)  # type: ignore[arg-type, return-value]
    for split in ("train", "test"):
        ctx.shards(split)  # a missing or unresolvable spec fails here, naming the flag
    ctx.num_classes()  # … and class lists that disagree, before any training step


def evaluate_during_pretraining(
    backbone: "VisionTransformer", cfg: Any, accelerator: "Accelerator | None", step: int
) -> dict[str, float]:
    """Run the configured evaluators on `backbone` as it is now; collective (call on every rank)."""
    settings, evaluators, seed = periodic_settings(cfg)
    built = [build(name, **options) for name, options in evaluators.items()]
    was_training = backbone.training
    ctx = EvalContext(
        backbone_factory=lambda: backbone, data=settings, fingerprint=f"step{step}", cache_dir=None,
        accelerator=accelerator, seed=seed,
    )
    results: dict[str, float] = {}
    try:
        for evaluator in built:
            results.update(evaluator.run(ctx))
    finally:
        backbone.train(was_training)
    return results
