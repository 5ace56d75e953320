"""Few-shot solver parity with scikit-learn's Ridge, closed-form LOO/GCV checked, L2 choices that never see test labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from ssl_vit.eval import features_context
from ssl_vit.eval.features import Features
from ssl_vit.eval.fewshot import FewShot, fewshot_episode, sample_episode, select_l2_from_shots
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


@pytest.mark.parametrize("n_per_class,dim", [(6, 3), (3, 16)])  # both solver branches
@pytest.mark.parametrize("l2", [2.0**-6, 1.0, 2.0**10])
def test_closed_form_loo_equals_brute_force_loo(n_per_class: int, dim: int, l2: float):
    feats = blobs(n_per_class, 3, dim, seed=7, spread=2.0)
    model = LeastSquares.fit(feats.x, feats.labels, num_classes=3)
    xa, y = model.inputs, model.targets  # standardisation fixed (it reads no labels), as in the closed form
    residuals = []
    for i in range(len(xa)):
        keep = torch.arange(len(xa)) != i
        w = torch.linalg.solve(xa[keep].T @ xa[keep] + l2 * torch.eye(xa.shape[1], dtype=xa.dtype), xa[keep].T @ y[keep])
        residuals.append(y[i] - xa[i] @ w)
    brute = torch.stack(residuals).square().mean().item()
    assert model.loo_error(l2) == pytest.approx(brute, rel=1e-8, abs=1e-10)


def test_gcv_and_loo_by_hand():
    # x = [1, 2], y = [1, 3], λ = 1: XᵀX = 5, w = 7/6, fitted [7/6, 14/6], residuals [−1/6, 4/6], H = [[1, 2], [2, 4]] / 6.
    model = LeastSquares.from_inputs(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [3.0]]),
                                     torch.zeros(1, 1), torch.ones(1, 1))
    assert model.hat_diagonal(1.0).tolist() == pytest.approx([1 / 6, 4 / 6], abs=1e-12)
    # GCV = mean r² / (1 − tr H / n)² = (17/72) / (1 − 5/12)² = 34/49
    assert model.gcv_error(1.0) == pytest.approx(34 / 49, abs=1e-12)
    # LOO residuals r / (1 − h) = [−1/5, 2]: refit without x=1 gives w = 6/5, so 1 − 6/5 = −1/5
    assert model.loo_error(1.0) == pytest.approx((1 / 25 + 4) / 2, abs=1e-12)


def test_one_shot_uses_gcv_and_many_shots_loo():
    one, many = blobs(1, 4, 8, seed=3), blobs(5, 4, 8, seed=3, spread=2.0)
    grid = [2.0**e for e in range(-6, 11)]
    m1, m5 = LeastSquares.fit(one.x, one.labels, 4), LeastSquares.fit(many.x, many.labels, 4)
    assert select_l2_from_shots(m1, 1, grid) == min(grid, key=lambda l2: (m1.gcv_error(l2), -l2))
    assert select_l2_from_shots(m5, 5, grid) == min(grid, key=lambda l2: (m5.loo_error(l2), -l2))


def test_l2_choice_ignores_test_labels():
    train, test = blobs(30, 5, 12, seed=3, spread=3.0), blobs(20, 5, 12, seed=4, spread=3.0)
    permuted = Features(test.x, test.labels[torch.randperm(len(test), generator=torch.Generator().manual_seed(9))], test.keys)
    chosen = []
    for t in (test, permuted):
        runs = [fewshot_episode(train, t, shots=5, seed=s, num_classes=5, val_per_class=10) for s in range(4)]
        chosen.append([(r["l2"], r["l2_val"]) for r in runs])
    assert chosen[0] == chosen[1]
    assert len(set(chosen[0])) > 1 or chosen[0][0] != (2.0**10, 2.0**10)  # the sweeps are live, not stuck
    a = FewShot(shots=[1, 5], seeds=3).run(features_context(train, test))
    b = FewShot(shots=[1, 5], seeds=3).run(features_context(train, permuted))
    assert a["fewshot/5shot_log2_l2"] == b["fewshot/5shot_log2_l2"]
    assert a["fewshot/1shot_log2_l2"] == b["fewshot/1shot_log2_l2"]
    assert a["fewshot/5shot"] != b["fewshot/5shot"]  # the test labels do matter for the score itself


def test_fewshot_reports_mean_std_and_fixed_l2_per_shot_count():
    train, test = blobs(30, 4, 8, seed=5, spread=0.3), blobs(10, 4, 8, seed=6, spread=0.3)
    out = FewShot(shots=[1, 10, 31], seeds=3).run(features_context(train, test))  # 31 > 30 images: skipped
    assert set(out) == {f"fewshot/{k}shot{s}" for k in (1, 10) for s in ("", "_std", "_fixed_l2", "_fixed_l2_std", "_log2_l2")}
    extra = FewShot(shots=[5], seeds=2, val_per_class=10).run(features_context(train, test))
    assert {"fewshot/5shot_plus10_labels", "fewshot/5shot_plus10_labels_std", "fewshot/5shot_plus10_labels_log2_l2"} <= set(extra)
    assert out["fewshot/10shot"] == pytest.approx(100.0)  # well-separated clusters, centres shared by train and test
    assert -6 <= out["fewshot/10shot_log2_l2"] <= 10


def test_train_holdout_scores_on_training_images_only():
    """The selection figure reads no test label (shuffled test labels: identical) and only held-out train images."""
    train, test = blobs(30, 4, 8, seed=5, spread=1.5), blobs(10, 4, 8, seed=6, spread=1.5)
    permuted = Features(test.x, test.labels.flip(0), test.keys)
    a = FewShot(shots=[1, 5], seeds=2, train_holdout=0.25).run(features_context(train, test))
    b = FewShot(shots=[1, 5], seeds=2, train_holdout=0.25).run(features_context(train, permuted))
    assert a["fewshot/5shot_train_holdout"] == b["fewshot/5shot_train_holdout"] and a["fewshot/5shot"] != b["fewshot/5shot"]
    from ssl_vit.eval.linear import split_holdout

    fit, hold = split_holdout(len(train), 0.25, 0)
    direct = FewShot(shots=[5], seeds=2).run(features_context(train.subset(fit), train.subset(hold)))
    assert a["fewshot/5shot_train_holdout"] == direct["fewshot/5shot"]
    assert a["fewshot/5shot_train_holdout_std"] == direct["fewshot/5shot_std"]
