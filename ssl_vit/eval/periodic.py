"""Evaluators during pretraining: few-shot / kNN on the live backbone every N steps, metrics for the trainer.

The trainer's `val_fn(step)` calls `evaluate_during_pretraining(backbone, cfg, accelerator, step)` on every
rank. Features are extracted afresh each time (the backbone changes between calls, so nothing is cached
on disk), gathered so that every rank computes the same metrics, and returned flat (`fewshot/10shot`,
`knn/k20_top1`) for the trainer to log. The backbone's training mode is restored afterwards.

`cfg` is a pretraining config: its `eval` section lists the evaluators and may name `train`/`test` data and
the other eval-data keys; what it leaves out comes from `data` (`PretrainConfig.eval_data()`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ssl_vit.config import EvalData, PretrainConfig, normalise_evaluators
from ssl_vit.errors import ConfigError

from .context import EvalContext
from .registry import build

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ssl_vit.models import VisionTransformer

# Fine-tuning trains the backbone and the MAE probe trains for epochs: neither belongs inside pretraining.
NOT_PERIODIC = ("finetune",)


def periodic_settings(cfg: PretrainConfig) -> tuple[EvalData, dict[str, dict], int]:
    """(eval data, {evaluator: options}, seed) of a pretraining config."""
    evaluators = normalise_evaluators(cfg.eval.evaluators, "eval.evaluators")
    for name, options in evaluators.items():
        if name in NOT_PERIODIC or options.get("protocol") == "mae":
            raise ConfigError(f"eval.evaluators: '{name}' trains for epochs and cannot run during pretraining; "
                              "run it afterwards with `ssl-vit eval`")
    return cfg.eval_data(), evaluators, cfg.train.seed


def check_periodic(cfg: PretrainConfig) -> None:
    """Fail before training starts: unknown evaluators or options, missing or unresolvable data specs."""
    settings, evaluators, _ = periodic_settings(cfg)
    for name, options in evaluators.items():
        build(name, **options)
    ctx = EvalContext(backbone_factory=lambda: None, data=settings)  # type: ignore[arg-type, return-value]
    for split in ("train", "test"):
        ctx.shards(split)  # a missing or unresolvable spec fails here, naming the flag
    ctx.num_classes()  # … and class lists that disagree, before any training step


def evaluate_during_pretraining(
    backbone: "VisionTransformer", cfg: PretrainConfig, accelerator: "Accelerator | None", step: int
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
