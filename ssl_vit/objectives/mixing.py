"""Label smoothing, mixup and cutmix for supervised fine-tuning, with static shapes and no host syncs.

Both mixes pair each image with its mirror in the batch (`flip(0)`, as timm does) and draw one mixing weight
λ ~ Beta(α, α) per batch. Whether to mix at all (probability `mix_prob`) and, when both are enabled, mixup or
cutmix (even odds) are decided by tensors and `torch.where`, never by Python branches on random values, so a
training step stays one graph and never waits for the device. Soft targets are λ·y + (1−λ)·y_partner, with λ
for cutmix corrected to the area actually kept after the box is clipped to the image.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from . import rng


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int64 → (B, C) float: one-hot with `smoothing` spread evenly over all classes (rows sum to 1)."""
    one_hot = F.one_hot(labels.long(), num_classes).float()  # (B, C)
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def sample_beta(alpha: float, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of Beta(α, α) as a 0-d float32 tensor on `device`.

    torch's gamma sampler takes no generator: with `generator=None` the device's default RNG draws it (no
    sync); with a generator, a seed drawn from it feeds Python's `betavariate` (one small host transfer).
    """
    if generator is None:
        concentration = torch.tensor(float(alpha), device=device)
        return torch.distributions.Beta(concentration, concentration).sample()
    seed = int(rng.randint(2**31 - 1, (1,), torch.device("cpu"), generator)[0])
    return torch.tensor(random.Random(seed).betavariate(alpha, alpha), device=device)


def cutmix_box(lam: torch.Tensor, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(H, W) bool mask of a box covering about 1 − λ of the image, centred at a uniform random pixel (timm's rand_bbox)."""
    device = lam.device
    ratio = (1.0 - lam).clamp_min(0).sqrt()
    half_h = (height * ratio).floor().div(2).floor()  # 0-d
    half_w = (width * ratio).floor().div(2).floor()
    centre = rng.uniform((2,), device, generator) * torch.tensor([height, width], device=device)  # (2,)
    cy, cx = centre.floor().unbind(0)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= cy - half_h) & (rows < cy + half_h)  # (H,), clipped by construction
    in_cols = (cols >= cx - half_w) & (cols < cx + half_w)  # (W,)
    return in_rows.unsqueeze(1) & in_cols.unsqueeze(0)  # (H, W)


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    mixup_alpha: float,
    cutmix_alpha: float,
    mix_prob: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) float images and (B, K) soft targets → mixed images and targets (rows still sum to 1)."""
    device = images.device
    h, w = images.shape[-2:]
    partner = images.flip(0)
    one = torch.ones((), device=device)
    lam_mixup = sample_beta(mixup_alpha, device, generator) if mixup_alpha > 0 else one
    mixed = lam_mixup * images + (1.0 - lam_mixup) * partner
    lam = lam_mixup
    if cutmix_alpha > 0:
        box = cutmix_box(sample_beta(cutmix_alpha, device, generator), h, w, generator)  # (H, W)
        cut = torch.where(box, partner, images)
        lam_cut = 1.0 - box.float().mean()  # the share of the image that is still its own
        use_cut = rng.uniform((), device, generator) < 0.5 if mixup_alpha > 0 else torch.ones((), dtype=torch.bool, device=device)
        mixed = torch.where(use_cut, cut, mixed)
        lam = torch.where(use_cut, lam_cut, lam_mixup)
    apply = rng.uniform((), device, generator) < mix_prob
    images = torch.where(apply, mixed, images)
    lam = torch.where(apply, lam, one)
    return images, lam * targets + (1.0 - lam) * targets.flip(0)
