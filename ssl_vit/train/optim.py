"""AdamW with the usual exemptions from weight decay, the warmup + cosine schedule, and a skippable step.

Weight decay pulls weights towards zero; that is a regulariser for matrices, but for norm gains, biases,
position embeddings and learned tokens it only distorts scale or position information, so those are exempt
(ndim ≤ 1, plus whatever a module lists in `no_weight_decay_keys()`).

The step is skipped on the device: fused AdamW reads a `found_inf` tensor (the protocol `torch.amp.GradScaler`
uses) and leaves weights, moments and its step count untouched when it is non-zero, so skipping a non-finite
update needs no host-device synchronisation.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from ..config import OptimConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names exempt from weight decay: every module's `no_weight_decay_keys()`, prefixed by its path."""
    names: set[str] = set()
    for path, module in model.named_modules():
        keys_fn = getattr(module, "no_weight_decay_keys", None)
        if callable(keys_fn):
            # An objective lists full names (`backbone.pos_embed`), a backbone its own (`pos_embed`).
            names |= {f"{path}.{key}" if path else key for key in keys_fn()}
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices, and norms / biases / position embeddings / tokens without decay."""
    exempt = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Fused AdamW (one kernel per step on CUDA and CPU; also what makes the on-device skip possible)."""
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True
    )


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base rate before optimizer step `step + 1` (LambdaLR counts from 0).

    Linear warmup from lr/warmup to lr over `warmup_steps`, then cosine from lr to `min_ratio · lr` at the
    last step (or constant).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    fn: Callable[[int], float] = lambda step: lr_factor(  # noqa: E731
        step, total_steps=total_steps, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, min_ratio=cfg.min_lr / cfg.lr
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless `skip` (a 0-dim float tensor, 1.0 = skip) is set.

    Fused optimizers skip on the device; any other optimizer needs the flag on the host (one sync).
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the real one
    if getattr(inner, "_step_supports_amp_scaling", False) and getattr(inner, "defaults", {}).get("fused"):
        inner.found_inf, inner.grad_scale = skip, None
        try:
            optimizer.step()
        finally:
            del inner.found_inf, inner.grad_scale
    elif not bool(skip.item()):
        optimizer.step()
