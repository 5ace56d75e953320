"""Classification metrics shared by the protocols (kNN votes, linear-probe logits)."""
from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int, *, min_score: float | None = None) -> float:
    """Percent of rows whose label is among the k highest scores, ties shared fairly.

    A row whose label ties with others at the boundary gets the chance a random tie-break would give it:
    with g classes scoring strictly higher and t scoring equal (the label included), credit
    clamp((k − g) / t, 0, 1). So the result never depends on class order (torch.topk breaks ties by index).
    With `min_score`, a label scoring ≤ min_score earns nothing (kNN: a class no neighbour voted for is not
    "in the top 5" just because fewer than 5 classes got votes).
    """
    scores = scores.double()
    own = scores.gather(1, labels.view(-1, 1).long())  # (N, 1) the label's score
    higher = (scores > own).sum(dim=1).double()  # (N,)
    tied = (scores == own).sum(dim=1).double()  # (N,), ≥ 1
    credit = ((k - higher) / tied).clamp(0.0, 1.0)
    if min_score is not None:
        credit = credit * (own.squeeze(1) > min_score).double()
    return 100.0 * credit.mean().item()
