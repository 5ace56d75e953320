"""uint8 → normalised float, on the device.

The CPU workers only crop and batch uint8 pixels (4× less to copy than float32); scaling and normalisation
happen here, on whatever device the batch lives on, inside the objective or evaluator.
"""
from __future__ import annotations

import torch

# The ViT paper's preprocessing maps pixels to [-1, 1] (mean 0.5, std 0.5), as timm's augreg ViTs do.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def normalize_uint8(
    images: torch.Tensor,
    mean: tuple[float, ...] = DEFAULT_MEAN,
    std: tuple[float, ...] = DEFAULT_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, C, H, W) uint8 in [0, 255] -> (B, C, H, W) float, (x/255 - mean) / std."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image batch, got {images.dtype}; the data streams hand out uint8")
    if len(set(mean)) == 1 and len(set(std)) == 1:
        # Python scalars: no host→device copy of a mean/std tensor (a pageable copy syncs the stream) per step.
        return images.to(dtype) * (1.0 / (255.0 * std[0])) - mean[0] / std[0]
    m = torch.tensor(mean, device=images.device, dtype=dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
    return (images.to(dtype) / 255.0 - m) / s
