"""Layer-wise learning-rate decay (MAE / BEiT fine-tuning) with SGD (the ViT paper) or AdamW (MAE).

Parameters of block i get lr × decay^(depth + 1 − i), the patch embedding, [class] token and position
embeddings decay^(depth + 1), the final norm and head the full rate: the early layers, which pretraining got
most right, move least. Each group carries its `lr_scale`; the trainer's warmup + cosine schedule scales every
group's rate alike.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .optim import no_weight_decay_names

if TYPE_CHECKING:
    from ..config import FinetuneOptim

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and the head (names without `backbone.`)."""
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return 0
    block = _BLOCK.match(name)
    return int(block[1]) + 1 if block else depth + 1


def param_groups_lrd(model: nn.Module, cfg: FinetuneOptim) -> list[dict]:
    """One group per (layer, decay or not) with `lr = cfg.lr × layer_decay^(depth + 1 − layer)`.

    No weight decay on norms, biases and what modules list in `no_weight_decay_keys()` (as in pretraining).
    """
    backbone = getattr(model, "backbone", model)
    depth = len(backbone.blocks)
    exempt = no_weight_decay_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name.removeprefix("backbone."), depth)
        decay = not (param.ndim <= 1 or name in exempt)
        key = (layer, decay)
        if key not in groups:
            scale = cfg.layer_decay ** (depth + 1 - layer)
            groups[key] = {"params": [], "lr": cfg.lr * scale, "lr_scale": scale,
                           "weight_decay": cfg.weight_decay if decay else 0.0}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def build_finetune_optimizer(model: nn.Module, cfg: FinetuneOptim) -> torch.optim.Optimizer:
    groups = param_groups_lrd(model, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    # Fused: one kernel per step, and what lets the trainer skip a non-finite step on the device.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)
