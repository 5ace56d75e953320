"""Random draws for the objectives that honour an optional `torch.Generator` wherever it lives.

With `generator=None` the draws come from the default RNG of the data's device, so `torch.manual_seed` (and the
trainer's RNG-state checkpoints) reproduce a run. A generator may live on another device than the batch (a CPU
generator for a CUDA batch, say): the draw happens on the generator's device and the result moves to the batch.
"""
from __future__ import annotations

import torch


def _draw_device(device: torch.device, generator: torch.Generator | None) -> torch.device:
    return torch.device(device) if generator is None else generator.device


def uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """U[0, 1) float32 of `shape` on `device`."""
    out = torch.rand(shape, generator=generator, device=_draw_device(device, generator))
    return out.to(device)


def randint(high: int, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform int64 in [0, high) of `shape` on `device`."""
    out = torch.randint(0, high, shape, generator=generator, device=_draw_device(device, generator))
    return out.to(device)
