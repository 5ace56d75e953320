"""Helpers for the weights-in-and-out tests: backbones whose every tensor is random, a batch of images, and a
pickle that runs code when loaded (what every weights-only load must refuse)."""
from __future__ import annotations

from pathlib import Path

import torch


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor random (LayerNorms and biases too: the init zeroes some, which would hide a swapped or skipped
    key), in eval mode. Seeds torch's global RNG, so what a test draws after it is the same on every run."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class RunsCode:
    """Unpickling this calls open(marker, "w"): a checkpoint that runs code when loaded (the file is the proof)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
