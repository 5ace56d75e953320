"""Gather per-rank feature shards so that every rank holds the full, key-sorted, duplicate-free set.

Ranks hold different numbers of samples (shards split unevenly), and collective ops need equal shapes, so
each rank pads its rows to the largest count and the padding is cut off again after the gather. Rows go
in chunks to bound the device memory the collective needs (ImageNet's 1.28M x 768 floats are 3.9 GB).
Keys travel as Python objects. Sorting by key makes the result independent of the process count, and
dropping repeated keys undoes any padding a data pipeline may add to equalise ranks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .features import Features

CHUNK_ROWS = 65536


def sort_unique(features: "Features") -> "Features":
    """Order by key and keep the first occurrence of each key."""
    from .features import Features

    order = sorted(range(len(features.keys)), key=features.keys.__getitem__)
    keep = [i for j, i in enumerate(order) if j == 0 or features.keys[i] != features.keys[order[j - 1]]]
    index = torch.tensor(keep, dtype=torch.long)
    return Features(features.x[index], features.labels[index], [features.keys[i] for i in keep])


def gather_features(local: "Features", accelerator: "Accelerator | None") -> "Features":
    """All ranks' features on every rank (CPU tensors), sorted by key and deduplicated."""
    from accelerate.utils import gather_object

    from .features import Features

    if accelerator is None or accelerator.num_processes == 1:
        return sort_unique(local)
    device, world = accelerator.device, accelerator.num_processes
    counts = accelerator.gather(torch.tensor([len(local)], device=device)).tolist()
    n_max, dim = max(counts), local.x.shape[1]
    x_parts: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for start in range(0, n_max, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n_max)
        rows = torch.zeros(stop - start, dim, dtype=torch.float32)
        mine = local.x[start:stop]
        rows[: len(mine)] = mine
        gathered = accelerator.gather(rows.to(device)).cpu().view(world, stop - start, dim)  # (world, rows, D)
        for r in range(world):
            x_parts[r].append(gathered[r, : max(0, min(counts[r], stop) - start)])
    labels = torch.full((n_max,), -1, dtype=torch.long)
    labels[: len(local)] = local.labels
    all_labels = accelerator.gather(labels.to(device)).cpu().view(world, n_max)  # (world, n_max)
    keys = gather_object(list(local.keys))  # rank 0's keys, then rank 1's, ...
    merged = Features(
        torch.cat([torch.cat(p) if p else torch.zeros(0, dim) for p in x_parts]),
        torch.cat([all_labels[r, : counts[r]] for r in range(world)]),
        keys,
    )
    return sort_unique(merged)
