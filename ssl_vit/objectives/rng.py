"""Random draws for the objectives that honour an optional `torch.Generator` wherever it lives.

With `generator=None` the draws come from the default RNG of the data's device, so `torch.manual_seed` (and the
trainer's RNG-state checkpoints) reproduce a run. A generator may live on another device than the batch (a CPU
generator for a CUDA batch, say): the draw happens on the generator's device and the result moves to the batch.
"""
from __future__ import annotations

import torch


def _where(device: torch.device, generator: torch.Generator | None) -> dict:
    """Keyword arguments of a draw. Without a generator the `generator` keyword is left out altogether: passing
    `generator=None` selects the generator overload, which `torch.compile` cannot trace with a symbolic batch
    size (a recompile for a second batch shape then fails)."""
    if generator is None:
        return {"device": torch.device(device)}
    return {"device": generator.device, "generator": generator}


def uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """U[0, 1) float32 of `shape` on `device`."""
    return torch.rand(shape, **_where(device, generator)).to(device)


def randint(high: int, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform int64 in [0, high) of `shape` on `device`."""
    return torch.randint(0, high, shape, **_where(device, generator)).to(device)
