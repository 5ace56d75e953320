"""kNN against a brute-force reference written with plain loops."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_vit.eval import features_context
from ssl_vit.eval.features import Features
from ssl_vit.eval.knn import KNN, knn_votes
from ssl_vit.eval.metrics import topk_accuracy


def brute_force(train_x, train_y, test_x, k, num_classes, t):
    """Per test sample: cosine similarity to every training sample by hand, k best vote exp(sim / t)."""
    preds = []
    for q in test_x.tolist():
        sims = []
        for i, v in enumerate(train_x.tolist()):
            dot = sum(a * b for a, b in zip(q, v))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in v))
            sims.append((dot / norm, i))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, i in sims[: min(k, len(sims))]:
            votes[int(train_y[i])] += math.exp(sim / t)
        preds.append(votes)
    return torch.tensor(preds)


@pytest.mark.parametrize("k", [1, 3, 7, 50])  # 50 > 24 training samples: clipped
def test_votes_equal_brute_force(k: int):
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(24, 5, generator=g), torch.randn(9, 5, generator=g)
    train_y = torch.randint(0, 4, (24,), generator=g)
    votes = knn_votes(train_x, train_y, test_x, ks=[k], num_classes=4, temperature=0.07)[k]
    ref = brute_force(train_x, train_y, test_x, k, 4, 0.07)
    torch.testing.assert_close(votes, ref.float(), rtol=1e-4, atol=1e-3)


def test_batched_over_test_equals_one_batch(monkeypatch):
    g = torch.Generator().manual_seed(1)
    train_x, test_x, train_y = torch.randn(30, 4, generator=g), torch.randn(11, 4, generator=g), torch.randint(0, 3, (30,), generator=g)
    whole = knn_votes(train_x, train_y, test_x, ks=[5], num_classes=3)[5]
    monkeypatch.setattr("ssl_vit.eval.knn.SIM_BLOCK", 30 * 2)  # two test rows per block
    torch.testing.assert_close(knn_votes(train_x, train_y, test_x, ks=[5], num_classes=3)[5], whole)


def test_evaluator_top1_against_hand_labelled_neighbours():
    # Train: two directions per class; each test point sits next to exactly one training point.
    train = Features(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]]), torch.tensor([0, 0, 1, 1]), list("abcd"))
    test = Features(torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.95, 0.0]]), torch.tensor([0, 1, 1]), list("xyz"))
    out = KNN(k=[1, 20]).run(features_context(train, test))
    assert out["knn/k1_top1"] == pytest.approx(200 / 3)  # z is labelled 1 but lies among class 0
    assert out["knn/k20_top1"] == pytest.approx(200 / 3)  # k clipped to 4; exp(sim/0.07) favours the near pair
    assert "knn/k1_top5" not in out  # 2 classes: top-5 is meaningless


def test_topk_shares_ties_and_ignores_classes_without_votes():
    votes = torch.tensor([[2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # two classes tied for first
                          [3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # label 6 got no vote
    labels = torch.tensor([1, 6])
    # top-1: row 0 ties 1-in-2 (torch.topk would always pick class 0), row 1 misses
    assert topk_accuracy(votes, labels, 1) == pytest.approx(25.0)
    assert topk_accuracy(votes, torch.tensor([0, 6]), 1) == pytest.approx(25.0)  # class order does not matter
    # top-5: five zero-vote classes tie for places 3..5, so label 6 gets 3/5 credit unless unvoted classes are excluded
    assert topk_accuracy(votes, labels, 5) == pytest.approx(100 * (1 + 3 / 5) / 2)
    assert topk_accuracy(votes, labels, 5, min_score=0.0) == pytest.approx(50.0)


def test_knn_top5_counts_only_voted_classes():
    """k = 1: one class gets a vote; top-5 then equals top-1 (before, 4 unvoted classes filled the top 5)."""
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(7, 6, generator=g)
    train = Features(centres.repeat(2, 1), torch.arange(7).repeat(2), [f"t{i}" for i in range(14)])
    labels = torch.randint(0, 7, (20,), generator=g)
    test = Features(torch.randn(20, 6, generator=g), labels, [f"q{i}" for i in range(20)])
    out = KNN(k=[1]).run(features_context(train, test))
    assert out["knn/k1_top5"] == out["knn/k1_top1"]
