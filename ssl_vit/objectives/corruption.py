"""BERT-style corruption of patch embeddings, the core of masked patch prediction (ViT paper, appendix B.1.2).

Of the N patch embeddings of each image, exactly K = round(rate · N) are corrupted (half-up rounding:
N=64 gives K=32 at rate 0.5 and K=10 at rate 0.15). The kinds of the B·K corrupted slots of a batch are split
exactly per batch: round(mask_prob · B·K) become the learnable [MASK] embedding, round(random_prob · B·K) the
embedding of another patch, the rest stay as they are; which slot gets which kind is a uniform random
permutation. A per-image split would be biased for small K (K=32: 26/3/3 is 81/9/9%), the per-batch split
keeps the 80/10/10 shares exact while every count stays a Python int, so shapes are static, nothing syncs
with the host, and the per-kind metrics have fixed denominators.

A replacement comes from the whole batch, any image, any position, but never the patch itself: the source
is drawn uniformly from the other B·N − 1 flat positions (draw in [0, B·N−1), step over the slot's own).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import rng

MASKED, REPLACED, KEPT = 0, 1, 2
KIND_NAMES = {MASKED: "masked", REPLACED: "replaced", KEPT: "kept"}


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


@dataclass
class Corruption:
    """Which patches were corrupted and how; enough to redraw the corrupted input picture.

    index:  (B, K) int64 patch positions in 0..N-1 (row-major over the patch grid), no order implied
    kind:   (B, K) int64, 0 masked ([MASK] embedding), 1 replaced, 2 kept
    source: (B, K) int64 flat position b·N + n of the patch whose embedding replaced this one; -1 unless replaced
    num_patches: N; counts: (masked, replaced, kept) slots in the whole batch (static Python ints)
    """

    index: torch.Tensor
    kind: torch.Tensor
    source: torch.Tensor
    num_patches: int
    counts: tuple[int, int, int]


def corruption_counts(batch: int, num_patches: int, rate: float, mask_prob: float, random_prob: float) -> tuple[int, tuple[int, int, int]]:
    """(K per image, (masked, replaced, kept) over the batch) — all Python ints, fixed by the shapes."""
    k = _round_half_up(rate * num_patches)
    total = batch * k
    n_mask = min(_round_half_up(mask_prob * total), total)
    n_rand = min(_round_half_up(random_prob * total), total - n_mask)
    return k, (n_mask, n_rand, total - n_mask - n_rand)


def sample_corruption(
    batch: int,
    num_patches: int,
    rate: float,
    mask_prob: float,
    random_prob: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Corruption:
    """Draw positions, kinds and replacement sources for a (batch, num_patches) grid of patch embeddings."""
    k, counts = corruption_counts(batch, num_patches, rate, mask_prob, random_prob)
    n_mask, n_rand, _ = counts
    if n_rand and batch * num_patches < 2:
        raise ValueError("random replacement needs at least two patches in the batch")
    # A uniformly random K-subset of positions per image: the first K of a random permutation.
    index = rng.uniform((batch, num_patches), device, generator).argsort(dim=1)[:, :k]  # (B, K)
    # Slot i's rank in a random permutation of the B·K slots decides its kind: exact counts per batch.
    rank = rng.uniform((batch * k,), device, generator).argsort().view(batch, k)  # (B, K), a permutation of 0..B·K-1
    kind = (rank >= n_mask).long() + (rank >= n_mask + n_rand).long()  # (B, K) in {0, 1, 2}
    own = torch.arange(batch, device=device).unsqueeze(1) * num_patches + index  # (B, K) flat self position
    source = rng.randint(max(batch * num_patches - 1, 1), (batch, k), device, generator)  # (B, K)
    source = source + (source >= own).long()  # skip over itself: uniform over the other B·N − 1
    source = torch.where(kind == REPLACED, source, torch.full_like(source, -1))
    return Corruption(index=index, kind=kind, source=source, num_patches=num_patches, counts=counts)


def apply_corruption(patches: torch.Tensor, corruption: Corruption, mask_token: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patch embeddings → (B, N, D) with the corrupted slots rewritten (out of place, differentiable).

    Replacements read the *uncorrupted* embeddings, so a source that is itself corrupted still lends its
    original embedding. `mask_token` is (1, 1, D).
    """
    b, n, d = patches.shape
    k = corruption.index.shape[1]
    slots = corruption.index.unsqueeze(-1).expand(b, k, d)  # (B, K, D)
    original = patches.gather(1, slots)  # (B, K, D)
    flat = patches.reshape(b * n, d)  # (B·N, D)
    replaced = flat.index_select(0, corruption.source.clamp_min(0).reshape(-1)).view(b, k, d)  # (B, K, D)
    masked = mask_token.to(patches.dtype).expand(b, k, d)  # (B, K, D)
    kind = corruption.kind.unsqueeze(-1)  # (B, K, 1)
    new = torch.where(kind == MASKED, masked, torch.where(kind == REPLACED, replaced, original))  # (B, K, D)
    return patches.scatter(1, slots, new)
