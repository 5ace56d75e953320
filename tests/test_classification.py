"""Supervised classification objective: zero-initialised head, soft targets from mixup/cutmix, fitting a batch."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_vit.data.normalize import normalize_uint8
from ssl_vit.errors import ConfigError
from ssl_vit.models import create_model
from ssl_vit.objectives import ImageClassification, build


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data(n: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 32, 32) uint8 noise images, all different, and labels cycling over the classes."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen(0))
    return images, torch.arange(n) % classes


def classifier(**kwargs) -> ImageClassification:
    torch.manual_seed(0)
    return build("classification", create_model("vit_nano_patch4"), num_classes=4, **kwargs)


def test_zero_initialised_head_gives_uniform_logits():
    model = classifier()
    images, labels = data()
    assert torch.equal(model.eval().predict(images), torch.zeros(8, 4))
    loss, metrics = model(images, labels)
    assert loss.item() == pytest.approx(math.log(4), rel=1e-6)
    assert set(metrics) == {"loss", "acc"} and not metrics["acc"].requires_grad


def test_label_smoothing_matches_torch():
    model = classifier(label_smoothing=0.1)
    model.backbone.head.weight.data.normal_(generator=gen(1))
    images, labels = data()
    x = normalize_uint8(images)
    _, targets = model.mix(x, labels)
    assert torch.allclose(targets.sum(-1), torch.ones(8)) and targets.max().item() == pytest.approx(0.9 + 0.1 / 4)
    loss, _ = model(images, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(model.backbone(x), labels, label_smoothing=0.1).item(), rel=1e-5)


def test_mixup_mixes_images_and_labels_with_one_weight():
    model = classifier(mixup_alpha=0.8).train()
    images, labels = data()
    x = normalize_uint8(images)
    mixed, targets = model.mix(x, labels, gen(3))
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    lam = targets[0, labels[0]].item()  # image 0 is paired with image 7, of another class
    assert 0.0 < lam < 1.0
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5)
    expected = lam * F.one_hot(labels, 4) + (1 - lam) * F.one_hot(labels.flip(0), 4)
    assert torch.allclose(targets, expected.float(), atol=1e-6)
    again, _ = model.mix(x, labels, gen(3))
    assert torch.equal(mixed, again)  # a generator reproduces the draw


def test_cutmix_weight_is_the_kept_area():
    model = classifier(cutmix_alpha=1.0).train()
    images, labels = data()
    x = normalize_uint8(images)
    for seed in range(5):
        mixed, targets = model.mix(x, labels, gen(seed))
        own = (mixed[0] == x[0]).all(0).float().mean().item()  # share of image 0's own pixels
        assert targets[0, labels[0]].item() == pytest.approx(own, abs=1e-6)
        assert torch.allclose(targets.sum(-1), torch.ones(8))


def test_no_mixing_in_eval_mode_or_with_mix_prob_zero():
    images, labels = data()
    x = normalize_uint8(images)
    for model in (classifier(mixup_alpha=0.8, cutmix_alpha=1.0).eval(), classifier(mixup_alpha=0.8, mix_prob=0.0).train()):
        mixed, targets = model.mix(x, labels, gen(0))
        assert torch.equal(mixed, x) and torch.equal(targets, F.one_hot(labels, 4).float())


def test_loss_decreases_on_a_fixed_batch():
    model = classifier(mixup_alpha=0.2, label_smoothing=0.1).train()
    images, labels = data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(20):
        loss, metrics = model(images, labels, generator=gen(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    _, metrics = model.eval()(images, labels)
    assert metrics["acc"].item() == 1.0


def test_fullgraph_compile_with_mixing():
    model = classifier(mixup_alpha=0.8, cutmix_alpha=1.0).train()
    images, labels = data()
    loss, _ = torch.compile(model, backend="eager", fullgraph=True)(images, labels)
    loss.backward()
    assert torch.isfinite(loss)


def test_bad_settings():
    with pytest.raises(ConfigError, match="num_classes"):
        ImageClassification(create_model("vit_nano_patch4"), num_classes=0)
    with pytest.raises(ConfigError, match="mixup_alpha"):
        ImageClassification(create_model("vit_nano_patch4"), num_classes=3, mixup_alpha=-1)
    model = classifier()
    assert model.no_weight_decay_keys() == {"backbone.pos_embed", "backbone.cls_token"}
    assert model.backbone_state_dict()["head.weight"].shape == (4, 64)
