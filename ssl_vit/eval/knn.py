"""Weighted k-nearest-neighbour classification on frozen features (DINO's protocol).

Features are L2-normalised, so the dot product is the cosine similarity. Each of the k most similar
training samples votes for its class with weight exp(sim / T), T = 0.07; the class with the largest
summed weight wins; classes tied on votes share the credit, and top-5 counts only classes that got a vote
(`metrics.topk_accuracy`). Test samples go in batches so the (batch, N_train) similarity block stays bounded.
Metrics (percent): `knn/k{k}_top1`, `knn/k{k}_top5` (top-5 only with more than 5 classes); a test class without
training samples adds `test_only_class/NAME` (`unseen_classes.py`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from data_tools.progress_bar import progress_bar

from ssl_vit.errors import ConfigError

from .context import EvalContext
from .features import Pool
from .metrics import topk_accuracy
from .registry import register
from .unseen_classes import unseen_test_classes

SIM_BLOCK = 1 << 24  # similarities held at once: 64 MB of float32 on a CPU
SIM_BLOCK_CUDA = 1 << 28  # 1 GB on a GPU (ImageNet: ~200 test images per block against 1.28M)


@torch.no_grad()
def knn_votes(
    train_x: torch.Tensor, train_labels: torch.Tensor, test_x: torch.Tensor, *, ks: Sequence[int],
    num_classes: int, temperature: float = 0.07, device: torch.device | str = "cpu",
) -> dict[int, torch.Tensor]:
    """For each k, the (N_test, C) summed vote weights. k larger than the training set is clipped to it."""
    train_n = F.normalize(train_x.float().to(device), dim=1)  # (N, D)
    labels = train_labels.long().to(device)
    k_max = min(max(ks), len(train_n))
    block = SIM_BLOCK_CUDA if torch.device(device).type == "cuda" else SIM_BLOCK
    batch = max(1, block // max(len(train_n), 1))
    votes: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in progress_bar(range(0, len(test_x), batch), desc="knn", unit="block", disable=len(test_x) <= batch, leave=False):
        query = F.normalize(test_x[start : start + batch].float().to(device), dim=1)  # (b, D)
        sims, idx = (query @ train_n.T).topk(k_max, dim=1)  # (b, k_max), most similar first
        weights = (sims / temperature).exp()  # (b, k_max)
        neighbour_labels = labels[idx]  # (b, k_max)
        for k in ks:
            kk = min(k, k_max)
            v = torch.zeros(len(query), num_classes, device=device)
            v.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])  # (b, C)
            votes[k].append(v.cpu())
    return {k: torch.cat(v) for k, v in votes.items()}


@register("knn")
class KNN:
    """Temperature-weighted kNN on L2-normalised features (see module docstring)."""

    def __init__(
        self, k: Sequence[int] = (10, 20, 200), temperature: float = 0.07, pool: Pool | None = None,
        layers: Sequence[int] | None = None,
    ):
        ks = [k] if isinstance(k, int) else list(k)
        if not ks or any(int(v) < 1 for v in ks):
            raise ConfigError(f"knn.k must be a positive integer or a list of them, got {k!r}")
        if temperature <= 0:
            raise ConfigError(f"knn.temperature must be positive, got {temperature}")
        self.ks = sorted({int(v) for v in ks})
        self.temperature = float(temperature)
        self.pool, self.layers = pool, layers

    def run(self, ctx: EvalContext) -> dict[str, float]:
        train, test, num_classes = ctx.train_test(self.pool, self.layers)
        out = unseen_test_classes(ctx, train, test, "knn")
        votes = knn_votes(
            train.x, train.labels, test.x, ks=self.ks, num_classes=num_classes, temperature=self.temperature,
            device=ctx.device,
        )
        for k, v in votes.items():
            out[f"knn/k{k}_top1"] = topk_accuracy(v, test.labels, 1, min_score=0.0)
            if num_classes > 5:
                out[f"knn/k{k}_top5"] = topk_accuracy(v, test.labels, 5, min_score=0.0)  # only voted classes count
        return out
