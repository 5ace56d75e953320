"""Linear probe: multinomial logistic regression on frozen features.

Default protocol (`protocol: lbfgs`): on the cached features, standardised with the training set's
statistics, full-batch L-BFGS (deterministic) minimises mean cross-entropy + wd/2·‖W‖². The weight decay
is chosen from a small grid on a held-out part of the training set (never the test set), then the
probe is refitted on the whole training set and scored on test.
`protocol: mae` is MAE's probe instead (augmented images through the frozen backbone online,
BatchNorm without affine + linear head, LARS); see `linear_mae.py`.
Metrics (percent): `linear/top1`, `linear/top5`, `linear/holdout_top1`, and `linear/weight_decay`; a test class
without training samples adds `test_only_class/NAME` (`unseen_classes.py`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from data_tools.progress_bar import progress_bar

from ssl_vit.errors import ConfigError

from .context import EvalContext
from .features import Pool
from .metrics import topk_accuracy
from .registry import register
from .unseen_classes import unseen_test_classes

log = logging.getLogger(__name__)
WD_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class LogisticProbe:
    mean: torch.Tensor  # (1, D)
    std: torch.Tensor  # (1, D)
    weight: torch.Tensor  # (D, C)
    bias: torch.Tensor  # (C,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.float().to(self.weight.device) - self.mean) / self.std
        return z @ self.weight + self.bias  # (N, C)


def fit_logistic(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 500,
    device: torch.device | str = "cpu",
) -> LogisticProbe:
    """Full-batch L-BFGS with a strong-Wolfe line search from a zero start: the same data give the same probe."""
    x = x.float().to(device)
    y = labels.long().to(device)
    mean = x.mean(dim=0, keepdim=True)  # (1, D)
    std = x.std(dim=0, unbiased=False, keepdim=True) + 1e-6  # (1, D)
    z = (x - mean) / std
    weight = torch.zeros(z.shape[1], num_classes, device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticProbe(mean, std, weight.detach(), bias.detach())


def split_holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random (fit, holdout) split of range(n); the holdout keeps at least one sample."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_hold = min(n - 1, max(1, round(n * fraction)))
    return perm[n_hold:], perm[:n_hold]


@register("linear")
class LinearProbe:
    """Logistic-regression probe on frozen features (see module docstring)."""

    MAE_OPTIONS = ("epochs", "warmup_epochs", "base_lr", "batch_size", "image_size", "weight_decay", "trust_coefficient", "num_classes")

    def __init__(
        self,
        protocol: str = "lbfgs",
        weight_decays: Sequence[float] = WD_GRID,
        holdout_fraction: float = 0.1,
        max_iter: int = 500,
        pool: Pool | None = None,
        layers: Sequence[int] | None = None,
        **mae_options,
    ):
        if protocol not in ("lbfgs", "mae"):
            raise ConfigError(f"linear.protocol must be 'lbfgs' (cached features) or 'mae' (MAE's LARS probe), got '{protocol}'")
        unknown = set(mae_options) - set(self.MAE_OPTIONS)
        if unknown or (mae_options and protocol != "mae"):
            bad = sorted(unknown or mae_options)
            raise ConfigError(
                f"linear has no option {', '.join(bad)} with protocol '{protocol}'; MAE-protocol options "
                f"({', '.join(self.MAE_OPTIONS)}) need protocol: mae"
            )
        if protocol == "lbfgs" and not weight_decays:
            raise ConfigError("linear.weight_decays must list at least one value, e.g. [1.0e-4]")
        if not 0 < holdout_fraction < 1:
            raise ConfigError(f"linear.holdout_fraction must be in (0, 1), got {holdout_fraction}")
        self.protocol = protocol
        self.weight_decays = [float(w) for w in weight_decays]
        self.holdout_fraction = holdout_fraction
        self.max_iter = int(max_iter)
        self.pool, self.layers = pool, layers
        self.mae_options = mae_options

    def run(self, ctx: EvalContext) -> dict[str, float]:
        if self.protocol == "mae":
            from .linear_mae import mae_linear_probe

            return mae_linear_probe(ctx, pool=self.pool, layers=self.layers, **self.mae_options)
        train, test, num_classes = ctx.train_test(self.pool, self.layers)
        unseen = unseen_test_classes(ctx, train, test, "linear")
        fit_idx, hold_idx = split_holdout(len(train), self.holdout_fraction, ctx.seed)
        scores = {}
        for wd in progress_bar(self.weight_decays, desc="linear: weight decay", disable=not ctx.is_main, leave=False):
            probe = fit_logistic(train.x[fit_idx], train.labels[fit_idx], num_classes, wd, self.max_iter, ctx.device)
            scores[wd] = topk_accuracy(probe.logits(train.x[hold_idx]).cpu(), train.labels[hold_idx], 1)
            log.info("linear: weight decay %g -> holdout top-1 %.2f", wd, scores[wd])
        best = max(scores.values())
        wd = max(w for w, s in scores.items() if s == best)  # ties: the stronger regulariser
        probe = fit_logistic(train.x, train.labels, num_classes, wd, self.max_iter, ctx.device)
        logits = probe.logits(test.x).cpu()
        return {
            **unseen,
            "linear/top1": topk_accuracy(logits, test.labels, 1),
            "linear/top5": topk_accuracy(logits, test.labels, 5),
            "linear/holdout_top1": best,
            "linear/weight_decay": wd,
        }
