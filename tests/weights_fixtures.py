"""Helpers for the weights-in-and-out tests: backbones whose every tensor is random, and a batch of images."""
from __future__ import annotations

import torch


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor random (LayerNorms and biases too), so a swapped or skipped key changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
