"""Few-shot solver parity with scikit-learn's Ridge, and an L2 choice that never sees test labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from ssl_vit.eval import features_context
from ssl_vit.eval.features import Features
from ssl_vit.eval.fewshot import FewShot, fewshot_episode, sample_episode
from ssl_vit.eval.lstsq import BIAS_CONSTANT, LeastSquares, augment


def blobs(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 1.0) -> Features:
    """Gaussian clusters around centres shared by every seed (so train and test match), with sample keys."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)) * 2.0
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return Features(x, labels, [f"s{seed}_{i:05d}" for i in range(len(labels))])


@pytest.mark.parametrize("n_per_class,dim", [(10, 6), (2, 16)])  # N >= D+1 and N < D+1: both solver branches
@pytest.mark.parametrize("l2", [2.0**-6, 1.0, 2.0**4, 2.0**10])
def test_solver_equals_sklearn_ridge(n_per_class: int, dim: int, l2: float):
    feats = blobs(n_per_class, 4, dim, seed=1)
    model = LeastSquares.fit(feats.x, feats.labels, num_classes=4)
    xa = augment(feats.x, model.mean, model.std, BIAS_CONSTANT).numpy()  # the same standardised + bias inputs
    targets = 2.0 * np.eye(4)[feats.labels.numpy()] - 1.0
    ridge = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(xa, targets)
    np.testing.assert_allclose(model.weights(l2).numpy(), ridge.coef_.T, atol=1e-4, rtol=1e-4)
    test = blobs(5, 4, dim, seed=2)
    np.testing.assert_allclose(
        model.predict(test.x, l2).numpy(), ridge.predict(augment(test.x, model.mean, model.std).numpy()), atol=1e-4
    )


def test_standardisation_uses_the_fewshot_set_statistics():
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    model = LeastSquares.fit(x, torch.tensor([0, 1]), num_classes=2)
    assert model.mean.tolist() == [[2.0, 20.0]]
    assert torch.allclose(model.std, torch.tensor([[1.0, 10.0]], dtype=torch.float64) + 1e-5)


def test_episode_draws_shots_and_disjoint_validation_per_class():
    labels = torch.arange(3).repeat_interleave(7)  # 7 images in each of 3 classes
    shots, val = sample_episode(labels, 5, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[shots]).tolist() == [5, 5, 5]
    assert torch.bincount(labels[val]).tolist() == [2, 2, 2]  # only what is left outside the shots
    assert not set(shots.tolist()) & set(val.tolist())


def test_l2_choice_ignores_test_labels():
    train, test = blobs(30, 5, 12, seed=3, spread=3.0), blobs(20, 5, 12, seed=4, spread=3.0)
    permuted = Features(test.x, test.labels[torch.randperm(len(test), generator=torch.Generator().manual_seed(9))], test.keys)
    chosen = []
    for t in (test, permuted):
        runs = [fewshot_episode(train, t, shots=5, seed=s, num_classes=5, val_per_class=10) for s in range(4)]
        chosen.append([r["l2"] for r in runs])
    assert chosen[0] == chosen[1]
    assert len(set(chosen[0])) > 1 or chosen[0][0] != 2.0**10  # the sweep is live, not stuck at the default
    a = FewShot(shots=[1, 5], seeds=3).run(features_context(train, test))
    b = FewShot(shots=[1, 5], seeds=3).run(features_context(train, permuted))
    assert a["fewshot/5shot_log2_l2"] == b["fewshot/5shot_log2_l2"]
    assert a["fewshot/5shot"] != b["fewshot/5shot"]  # the test labels do matter for the score itself


def test_fewshot_reports_mean_std_and_fixed_l2_per_shot_count():
    train, test = blobs(30, 4, 8, seed=5, spread=0.3), blobs(10, 4, 8, seed=6, spread=0.3)
    out = FewShot(shots=[1, 10, 31], seeds=3).run(features_context(train, test))  # 31 > 30 images: skipped
    assert set(out) == {f"fewshot/{k}shot{s}" for k in (1, 10) for s in ("", "_std", "_fixed_l2", "_fixed_l2_std", "_log2_l2")}
    assert out["fewshot/10shot"] == pytest.approx(100.0)  # well-separated clusters, centres shared by train and test
    assert -6 <= out["fewshot/10shot_log2_l2"] <= 10
