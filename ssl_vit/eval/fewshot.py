"""Few-shot linear evaluation, the ViT paper's protocol (big_vision's `fewshot_lsr`), with an honest L2 choice.

For each shot count and seed: draw `shots` training images per class, fit the closed-form least-squares
classifier (`lstsq.py`) and report top-1 on the test set; mean ± std over seeds.
The L2 strength moves the result by several points, and big_vision fixes it at 2¹⁰. Here it is chosen per
episode from a grid (2⁻⁶ … 2¹⁰) on validation images drawn from the *training pool outside the shots*;
test labels never influence it. The fixed-2¹⁰ figure is reported next to it for comparison.
Metrics (percent): `fewshot/{k}shot`, `…_std`, `fewshot/{k}shot_fixed_l2`, `…_fixed_l2_std`, and
`fewshot/{k}shot_log2_l2` (mean log2 of the chosen strengths).
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

log = logging.getLogger(__name__)
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


def fewshot_episode(
    train: Features, test: Features, *, shots: int, seed: int, num_classes: int, val_per_class: int = 10,
    grid: Sequence[float] = L2_GRID, fixed_l2: float = FIXED_L2, bias: float = BIAS_CONSTANT,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """One draw: test accuracy at the validation-chosen L2 and at the fixed L2, and the chosen L2."""
    generator = torch.Generator().manual_seed(seed)
    shot_idx, val_idx = sample_episode(train.labels, shots, val_per_class, generator)
    model = LeastSquares.fit(train.x[shot_idx].to(device), train.labels[shot_idx].to(device), num_classes, bias)
    if len(val_idx):
        l2 = select_l2(model, train.x[val_idx], train.labels[val_idx], grid)
    else:  # every class has exactly `shots` images: nothing to validate on
        l2 = fixed_l2
    return {
        "acc": model.accuracy(test.x, test.labels, l2),
        "acc_fixed": model.accuracy(test.x, test.labels, fixed_l2),
        "l2": l2,
    }


@register("fewshot")
class FewShot:
    """Closed-form few-shot linear classification on frozen features (see module docstring)."""

    def __init__(
        self,
        shots: Sequence[int] = (1, 5, 10, 25),
        seeds: int = 3,
        val_per_class: int = 10,
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
        self.shots = [int(k) for k in shots]
        self.seeds = int(seeds)
        self.val_per_class = int(val_per_class)
        self.grid = tuple(float(v) for v in (l2_grid or L2_GRID))
        self.fixed_l2 = float(fixed_l2)
        self.bias = float(bias)
        self.pool, self.layers = pool, layers

    def run(self, ctx: EvalContext) -> dict[str, float]:
        train, test, num_classes = ctx.train_test(self.pool, self.layers)
        smallest = int(torch.bincount(train.labels)[torch.unique(train.labels)].min())  # images in the rarest class
        out: dict[str, float] = {}
        for shots in self.shots:
            if shots > smallest:
                log.warning("fewshot: skipping %d-shot, the smallest training class has %d images", shots, smallest)
                continue
            runs = [
                fewshot_episode(
                    train, test, shots=shots, seed=ctx.seed * 1000 + seed, num_classes=num_classes,
                    val_per_class=self.val_per_class, grid=self.grid, fixed_l2=self.fixed_l2, bias=self.bias,
                    device=ctx.device,
                )
                for seed in range(self.seeds)
            ]
            out.update(_summarise(f"fewshot/{shots}shot", runs))
        return out


def _summarise(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
    def std(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    acc = [r["acc"] for r in runs]
    fixed = [r["acc_fixed"] for r in runs]
    return {
        name: statistics.fmean(acc),
        f"{name}_std": std(acc),
        f"{name}_fixed_l2": statistics.fmean(fixed),
        f"{name}_fixed_l2_std": std(fixed),
        f"{name}_log2_l2": statistics.fmean(math.log2(r["l2"]) for r in runs),
    }
