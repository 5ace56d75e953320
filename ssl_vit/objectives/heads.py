"""Prediction heads for masked patch prediction, applied to the encoder tokens at corrupted positions.

The paper's pre-training head is an MLP with one hidden layer (Linear → GELU → Linear); a linear head is the
cheaper ablation. Both are created here so the objective's state_dict reads `head.fc1.*`/`head.fc2.*` (mlp) or
`head.weight`/`head.bias` (linear), separate from the backbone's keys.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.vit import Mlp

HEADS = ("mlp", "linear")


def build_head(kind: str, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> nn.Module:
    """A head of `kind` ("mlp" | "linear"); the MLP's hidden width defaults to `in_dim` (the embedding width)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = in_dim if hidden_dim is None else int(hidden_dim)
        if hidden < 1:
            raise ConfigError(f"head_hidden_dim must be a positive width, got {hidden_dim!r}")
        return Mlp(in_dim, hidden, out_dim)  # the blocks' MLP module: Linear → GELU → Linear, fc1/fc2 keys
    raise ConfigError(f"unknown MPP head '{kind}'; choose one of: {', '.join(HEADS)}")


def head_flops(head: nn.Module) -> float:
    """Forward FLOPs (2 × multiply-adds) of one head application to one token."""
    return float(sum(2 * m.in_features * m.out_features for m in head.modules() if isinstance(m, nn.Linear)))


@torch.no_grad()
def init_head(head: nn.Module, generator: torch.Generator | None = None) -> None:
    """JAX-ViT style init, like the backbone: xavier-uniform weights, zero biases."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)
