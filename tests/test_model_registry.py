"""Every registered model builds, runs forward and backward, and has the paper's size.

The tiny models run for real on the CPU; the others are built on the `meta` device, where forward and
backward propagate shapes only (no memory, no compute).
"""
from __future__ import annotations

import pytest

from ssl_vit.errors import ConfigError
import torch

from ssl_vit.models import create_model, list_models, model_config

TINY = {"vit_nano_patch4", "vit_micro_patch4"}
SIZES = {  # width, depth, heads: the paper's Table 1 (B, L, H) and DeiT (Ti, S)
    "tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16), "huge": (1280, 32, 16),
}


def test_registry_holds_every_size_and_patch() -> None:
    expected = {f"vit_{size}_patch{p}" for size in SIZES for p in (14, 16, 32)} | TINY
    assert set(list_models()) == expected and len(list_models()) == 17
    for size, (dim, depth, heads) in SIZES.items():
        for patch in (14, 16, 32):
            cfg = model_config(f"vit_{size}_patch{patch}")
            assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (dim, depth, heads)
            assert (cfg.patch_size, cfg.img_size) == (patch, 224)
            assert (cfg.mlp_ratio, cfg.norm_eps, cfg.qkv_bias, cfg.class_token) == (4.0, 1e-6, True, True)


def count_params(dim: int, depth: int, patch: int, img: int = 224, mlp: int = 4) -> int:
    """By hand: patch projection, [class] token, position table, depth × block, final norm (no head)."""
    tokens = (img // patch) ** 2 + 1
    attention = 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim)  # norm1, qkv, proj
    feed_forward = 2 * dim + (mlp * dim * dim + mlp * dim) + (mlp * dim * dim + dim)  # norm2, fc1, fc2
    block = attention + feed_forward
    return (3 * patch * patch * dim + dim) + dim + tokens * dim + depth * block + 2 * dim


@pytest.mark.parametrize(
    "name, paper, ours",
    [
        ("vit_base_patch16", 86e6, 85_798_656),
        ("vit_large_patch16", 307e6, 303_301_632),
        ("vit_huge_patch14", 632e6, 630_764_800),
    ],
)
def test_parameter_counts_match_the_paper(name: str, paper: float, ours: int) -> None:
    with torch.device("meta"):
        model = create_model(name)
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    assert n == ours == count_params(cfg.embed_dim, cfg.depth, cfg.patch_size)
    assert abs(n - paper) / paper < 0.02  # Table 1: 86M, 307M, 632M


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward(name: str) -> None:
    cfg = model_config(name)
    device = "cpu" if name in TINY else "meta"
    with torch.device(device):
        model = create_model(name, num_classes=10)
        images = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    tokens = 1 + (cfg.img_size // cfg.patch_size) ** 2
    features = model.forward_features(images)
    assert features.shape == (2, tokens, cfg.embed_dim) and features.device.type == device
    logits = model.forward_head(features)
    assert logits.shape == (2, 10)
    torch.nn.init.normal_(model.head.weight)  # a zero head would pass no gradient to the backbone
    model.forward_head(model.forward_features(images)).logsumexp(-1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, pname
        if device == "cpu":
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_overrides_and_unknown_names() -> None:
    with torch.device("meta"):
        model = create_model("vit_base_patch16", img_size=384, global_pool="avg")
    assert model.grid_size == (24, 24) and model.pos_embed.shape == (1, 577, 768)
    assert model.config.global_pool == "avg" and model.config.embed_dim == 768
    with pytest.raises(ConfigError, match="vit_base_patch16"):
        create_model("vit_bse_patch16")
    with pytest.raises(ConfigError, match="drop_path_rate"):
        create_model("vit_nano_patch4", drop_path=0.1)
