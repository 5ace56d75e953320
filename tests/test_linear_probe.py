"""Linear probe on features (L-BFGS) and the LARS optimiser of the MAE protocol."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_vit.eval import features_context
from ssl_vit.eval.features import Features
from ssl_vit.eval.lars import LARS
from ssl_vit.eval.linear import LinearProbe, fit_logistic, split_holdout
from ssl_vit.errors import ConfigError


def separable(n: int, dim: int, num_classes: int, seed: int) -> Features:
    """Labels are the argmax of a fixed random linear map: linearly separable by construction."""
    w = torch.randn(dim, num_classes, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 3 + 1
    return Features(x, (x @ w).argmax(dim=1), [f"{seed}-{i}" for i in range(n)])


def test_probe_reaches_full_accuracy_on_separable_features():
    train, test = separable(400, 8, 6, seed=1), separable(200, 8, 6, seed=2)
    out = LinearProbe(weight_decays=[1e-5, 1e-3]).run(features_context(train, test))
    assert out["linear/top1"] >= 97.0
    assert out["linear/top5"] == pytest.approx(100.0)
    assert out["linear/weight_decay"] in (1e-5, 1e-3)


def test_probe_is_deterministic_and_weight_decay_shrinks_weights():
    train = separable(100, 5, 3, seed=3)
    a = fit_logistic(train.x, train.labels, 3, 1e-3)
    b = fit_logistic(train.x, train.labels, 3, 1e-3)
    assert torch.equal(a.weight, b.weight)
    assert fit_logistic(train.x, train.labels, 3, 1e-1).weight.norm() < a.weight.norm()


def test_holdout_is_disjoint_and_never_empty():
    fit, hold = split_holdout(10, 0.01, seed=0)
    assert len(hold) == 1 and len(fit) == 9 and not set(fit.tolist()) & set(hold.tolist())


def test_mae_options_need_protocol_mae():
    with pytest.raises(ConfigError, match="protocol: mae"):
        LinearProbe(epochs=3)


def test_lars_trains_a_batchnorm_linear_head():
    torch.manual_seed(0)
    data = separable(256, 16, 4, seed=4)
    head = nn.Sequential(nn.BatchNorm1d(16, affine=False, eps=1e-6), nn.Linear(16, 4))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    # A larger trust coefficient than MAE's 0.001: the weight norm grows by ~η·lr per step, and MAE has 100k steps.
    opt = LARS(head.parameters(), lr=1.0, weight_decay=0.0, trust_coefficient=0.01)
    losses = []
    for step in range(200):
        idx = torch.arange(step * 32, step * 32 + 32) % 256
        loss = F.cross_entropy(head(data.x[idx]), data.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.eval()
    acc = (head(data.x).argmax(1) == data.labels).float().mean().item()
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
    assert acc > 0.9  # chance is 0.25


def test_lars_scales_matrix_updates_by_the_trust_ratio():
    w = nn.Parameter(torch.full((2, 2), 3.0))  # ‖w‖ = 6
    b = nn.Parameter(torch.zeros(2))
    opt = LARS([w, b], lr=1.0, momentum=0.0, trust_coefficient=0.01)
    w.grad, b.grad = torch.full((2, 2), 100.0), torch.ones(2)
    opt.step()
    # matrix: step = 0.01 * ‖w‖/‖g‖ * g = 0.01 * 6/200 * 100 = 0.03 per entry; vector: plain SGD.
    torch.testing.assert_close(w.detach(), torch.full((2, 2), 2.97))
    torch.testing.assert_close(b.detach(), torch.full((2,), -1.0))


def test_mae_protocol_trains_on_tiny_shards(tmp_path, monkeypatch):
    from eval_fixtures import write_dataset

    from ssl_vit.config import EvalData
    from ssl_vit.eval.context import EvalContext
    from ssl_vit.eval.lars import LARS
    from ssl_vit.models import create_model
    from ssl_vit.train.optim import lr_factor

    rates: list[float] = []
    lars_step = LARS.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return lars_step(self, *args, **kwargs)

    monkeypatch.setattr(LARS, "step", recording_step)

    data = write_dataset(tmp_path)

    def factory():
        torch.manual_seed(0)
        return create_model("vit_nano_patch4")

    ctx = EvalContext(factory, EvalData(train=str(data), test=str(data), image_size=32, batch_size=8, num_workers=0))
    # 24 images, batch 8: 3 steps per epoch, 30 steps. lr = 64 × 8 / 256 = 2 with a larger trust coefficient than
    # MAE's, so LARS moves the head in 30 steps rather than MAE's 100k.
    probe = LinearProbe(protocol="mae", epochs=10, warmup_epochs=1, base_lr=64.0, trust_coefficient=0.02)
    out = probe.run(ctx)
    assert out["linear/top1"] >= 75.0  # 3 classes: chance is 33%
    assert out["linear/train_loss"] < 0.8  # from log(3) = 1.10
    # each step's rate: 2 × the trainer's schedule (1 epoch = 3 steps of linear warmup, then cosine to 0 at step 30)
    assert rates == pytest.approx([2.0 * lr_factor(s, total_steps=30, warmup_steps=3, schedule="cosine", min_ratio=0.0)
                                   for s in range(30)])
    assert rates[:3] == pytest.approx([2 / 3, 4 / 3, 2.0])
