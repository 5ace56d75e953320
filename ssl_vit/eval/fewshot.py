"""Few-shot linear evaluation on frozen features, under three named protocols.

For each shot count k and draw: k training images per class, the closed-form least-squares classifier
(`lstsq.py`, big_vision's `fewshot_lsr`), top-1 on the test set; mean ± std over draws. The L2 strength moves
the result by several points, so how it is chosen is part of the protocol, and each has its own key:

- `fewshot/{k}shot` — **k labels per class** (the headline): L2 chosen from the k shots alone, by ridge's
  closed-form leave-one-out error (k ≥ 2) or generalised cross-validation (k = 1, where leaving the only
  example out leaves its class empty), over 2⁻⁶ … 2¹⁰. No other label is read.
- `fewshot/{k}shot_fixed_l2` — **big_vision's protocol**: L2 fixed at 2¹⁰, as in the ViT paper's code. The
  number to compare with the paper's few-shot figures.
- `fewshot/{k}shot_plus{v}_labels` — **k + v labels per class** (only with `val_per_class: v` > 0): L2 chosen
  by accuracy on v further labelled training images per class outside the shots.

Each has `…_std`; the chosen strengths are summarised as `…_log2_l2` (mean log2). Test labels never choose L2.
A test class without training samples adds `test_only_class/NAME` (`unseen_classes.py`).

With `train_holdout: f` > 0, `fewshot/{k}shot_train_holdout` scores the k-labels protocol on a seeded fraction f
of the *training* split, the shots drawn from the rest: a figure to choose models or recipes by without
looking at test (what `ssl-vit study` selects on).
"""
from __future__ import annotations

import logging
import math
import statistics
from typing import Sequence

import torch

from ssl_vit.errors import ConfigError

from .context import EvalContext
from .features import Features, Pool
from .lstsq import BIAS_CONSTANT, LeastSquares
from .registry import register
from .unseen_classes import unseen_test_classes

log = logging.getLogger(__name__)
PROTOCOLS = {  # metric-name pattern → the protocol it measures (written into every results.md and results.json)
    "fewshot/{k}shot": "k labels per class; L2 chosen on the k shots alone (leave-one-out, GCV at k = 1)",
    "fewshot/{k}shot_fixed_l2": "big_vision's protocol, as in the ViT paper's code: L2 fixed at 2^10",
    "fewshot/{k}shot_plus{v}_labels": "k + v labels per class: L2 chosen by accuracy on v more training images per class",
    "fewshot/{k}shot_train_holdout": "k labels per class as above, drawn from the training split minus a held-out "
                                     "part, scored on that part (for selection; test unused)",
}
L2_GRID = tuple(2.0**e for e in range(-6, 11))
FIXED_L2 = 2.0**10


def sample_episode(
    labels: torch.Tensor, shots: int, val_per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of `shots` images per class and, disjoint from them, up to `val_per_class` more per class."""
    train, val = [], []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        train.append(members[:shots])
        val.append(members[shots : shots + val_per_class])
    return torch.cat(train), torch.cat(val)


def select_l2(model: LeastSquares, val_x: torch.Tensor, val_labels: torch.Tensor, grid: Sequence[float]) -> float:
    """The grid value with the best validation accuracy; ties go to the stronger regularisation (safer)."""
    accs = [model.accuracy(val_x, val_labels, l2) for l2 in grid]
    best = max(accs)
    return max(l2 for l2, acc in zip(grid, accs) if acc == best)


def select_l2_from_shots(model: LeastSquares, shots: int, grid: Sequence[float]) -> float:
    """The grid value with the smallest leave-one-out (shots ≥ 2) or GCV (1 shot) error on the shots themselves.

    Ties go to the stronger regularisation, as in `select_l2`.
    """
    error = model.loo_error if shots >= 2 else model.gcv_error
    errors = [error(l2) for l2 in grid]
    best = min(errors)
    return max(l2 for l2, e in zip(grid, errors) if e == best)


def fewshot_episode(
    train: Features, test: Features, *, shots: int, seed: int, num_classes: int, val_per_class: int = 0,
    grid: Sequence[float] = L2_GRID, fixed_l2: float = FIXED_L2, bias: float = BIAS_CONSTANT,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """One draw: test accuracy under each protocol (see the module docstring) and the L2 each chose.

    Keys: `acc`/`l2` (k labels), `acc_fixed` (big_vision), and with `val_per_class` > 0 `acc_val`/`l2_val`.
    """
    generator = torch.Generator().manual_seed(seed)
    shot_idx, val_idx = sample_episode(train.labels, shots, val_per_class, generator)
    model = LeastSquares.fit(train.x[shot_idx].to(device), train.labels[shot_idx].to(device), num_classes, bias)
    l2 = select_l2_from_shots(model, shots, grid)
    out = {
        "acc": model.accuracy(test.x, test.labels, l2),
        "acc_fixed": model.accuracy(test.x, test.labels, fixed_l2),
        "l2": l2,
    }
    if val_per_class > 0:
        l2_val = select_l2(model, train.x[val_idx], train.labels[val_idx], grid)
        out.update(acc_val=model.accuracy(test.x, test.labels, l2_val), l2_val=l2_val)
    return out


@register("fewshot")
class FewShot:
    """Closed-form few-shot linear classification on frozen features (see module docstring)."""

    def __init__(
        self,
        shots: Sequence[int] = (1, 5, 10, 25),
        seeds: int = 3,
        val_per_class: int = 0,
        train_holdout: float = 0.0,
        l2_grid: Sequence[float] | None = None,
        fixed_l2: float = FIXED_L2,
        bias: float = BIAS_CONSTANT,
        pool: Pool | None = None,
        layers: Sequence[int] | None = None,
    ):
        if not shots or any(int(k) < 1 for k in shots):
            raise ConfigError(f"fewshot.shots must be a list of positive integers, got {shots!r}")
        if seeds < 1:
            raise ConfigError(f"fewshot.seeds must be at least 1, got {seeds}")
        if int(val_per_class) < 0:
            raise ConfigError(f"fewshot.val_per_class must be 0 (off) or a positive count, got {val_per_class}")
        if not 0 <= float(train_holdout) < 1:
            raise ConfigError(f"fewshot.train_holdout must be 0 (off) or a fraction below 1, got {train_holdout}")
        self.shots = [int(k) for k in shots]
        self.seeds = int(seeds)
        self.val_per_class = int(val_per_class)
        self.train_holdout = float(train_holdout)
        self.grid = tuple(float(v) for v in (l2_grid or L2_GRID))
        self.fixed_l2 = float(fixed_l2)
        self.bias = float(bias)
        self.pool, self.layers = pool, layers

    def run(self, ctx: EvalContext) -> dict[str, float]:
        train, test, num_classes = ctx.train_test(self.pool, self.layers)
        out = unseen_test_classes(ctx, train, test, "fewshot")
        out.update(self._sweep(train, test, num_classes, ctx, "", self.val_per_class))
        if self.train_holdout > 0:
            from .linear import split_holdout

            fit_idx, hold_idx = split_holdout(len(train), self.train_holdout, ctx.seed)
            held = self._sweep(train.subset(fit_idx), train.subset(hold_idx), num_classes, ctx, "train holdout", 0)
            for name in [f"fewshot/{k}shot" for k in self.shots if f"fewshot/{k}shot" in held]:
                out[f"{name}_train_holdout"], out[f"{name}_train_holdout_std"] = held[name], held[f"{name}_std"]
        return out

    def _sweep(self, train: Features, test: Features, num_classes: int, ctx: EvalContext, what: str,
               val_per_class: int) -> dict[str, float]:
        smallest = int(torch.bincount(train.labels)[torch.unique(train.labels)].min())  # images in the rarest class
        out: dict[str, float] = {}
        for shots in self.shots:
            if shots > smallest:
                log.warning("fewshot%s: skipping %d-shot, the smallest training class has %d images",
                            f" ({what})" if what else "", shots, smallest)
                continue
            runs = [
                fewshot_episode(
                    train, test, shots=shots, seed=ctx.seed * 1000 + seed, num_classes=num_classes,
                    val_per_class=val_per_class, grid=self.grid, fixed_l2=self.fixed_l2, bias=self.bias,
                    device=ctx.device,
                )
                for seed in range(self.seeds)
            ]
            out.update(_summarise(f"fewshot/{shots}shot", runs, val_per_class))
        return out


def _summarise(name: str, runs: list[dict[str, float]], val_per_class: int) -> dict[str, float]:
    def mean_std(key: str, metric: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {metric: statistics.fmean(values), f"{metric}_std": statistics.stdev(values) if len(values) > 1 else 0.0}

    out = {**mean_std("acc", name), f"{name}_log2_l2": statistics.fmean(math.log2(r["l2"]) for r in runs),
           **mean_std("acc_fixed", f"{name}_fixed_l2")}
    if val_per_class > 0:
        extra = f"{name}_plus{val_per_class}_labels"
        out.update(mean_std("acc_val", extra))
        out[f"{extra}_log2_l2"] = statistics.fmean(math.log2(r["l2_val"]) for r in runs)
    return out
