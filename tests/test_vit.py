"""The backbone does what its options say: pre-norm blocks, attention paths, pooling, position embeddings,
drop path, activation checkpointing, the objectives' interface, and the FLOP count."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from weights_fixtures import randomized

from ssl_vit.models import create_model
from ssl_vit.models.pos_embed import resample_pos_embed
from ssl_vit.models.vit import DropPath, gather_tokens

NANO = "vit_nano_patch4"  # 32px, 4px patches (8×8 grid), width 64, depth 2, 2 heads


def images(n: int = 4, size: int | tuple[int, int] = 32, seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_block_is_pre_norm_with_fused_qkv_and_exact_gelu() -> None:
    """A block equals a hand-written pre-norm Transformer block (qkv rows ordered q, k, v; heads contiguous)."""
    model = randomized(create_model(NANO)).eval()
    block = model.blocks[0]
    x = torch.randn(2, 65, 64)
    d, h = 64, 2

    def ln(t: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        mu, var = t.mean(-1, keepdim=True), t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias

    y = ln(x, block.norm1) @ block.attn.qkv.weight.T + block.attn.qkv.bias  # (B, T, 3D)
    q, k, v = (y[..., i * d : (i + 1) * d].reshape(2, 65, h, d // h).transpose(1, 2) for i in range(3))  # (B, h, T, hd)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)  # (B, h, T, T)
    mixed = (attn @ v).transpose(1, 2).reshape(2, 65, d)  # (B, T, D)
    x1 = x + mixed @ block.attn.proj.weight.T + block.attn.proj.bias
    hidden = ln(x1, block.norm2) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
    expected = x1 + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    with torch.no_grad():
        assert (block(x) - expected).abs().max().item() < 1e-5


def test_every_layer_norm_uses_eps_1e_6() -> None:
    norms = [m for m in create_model(NANO).modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1  # two per block, plus the final norm
    assert all(m.eps == 1e-6 for m in norms)


def test_patch_embedding_is_row_major_over_the_grid() -> None:
    """Patch r*8+c is the projection of pixels [4r:4r+4, 4c:4c+4] (what masking and the targets assume)."""
    model = randomized(create_model(NANO))
    x = images(1)
    with torch.no_grad():
        patches = model.embed_patches(x)  # (1, 64, 64)
        weight = model.patch_embed.proj.weight.flatten(1)  # (D, 3*4*4)
        for r, c in [(0, 0), (0, 7), (3, 5), (7, 0)]:
            pixels = x[0, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].flatten()  # (48,) in (C, P, P) order
            expected = weight @ pixels + model.patch_embed.proj.bias
            assert torch.allclose(patches[0, r * 8 + c], expected, atol=1e-5)


def test_interface_composes_to_forward_features() -> None:
    model = randomized(create_model(NANO)).eval()
    x = images()
    with torch.no_grad():
        patches = model.embed_patches(x)
        tokens = model.add_position_embedding(patches)
        assert patches.shape == (4, 64, 64) and tokens.shape == (4, 65, 64)
        assert torch.equal(tokens[:, 0], (model.cls_token[0] + model.pos_embed[:, 0]).expand(4, -1))
        assert torch.equal(model.encode(tokens), model.forward_features(x))
    assert (model.embed_dim, model.num_prefix_tokens, model.patch_size, model.grid_size) == (64, 1, 4, (8, 8))


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_encode_at_positions_equals_the_full_pass_gathered(checkpointing: bool, qkv_bias: bool) -> None:
    """The last block's query-side shortcut changes no value: outputs and every gradient match the full pass."""
    torch.manual_seed(0)
    model = randomized(create_model(NANO, qkv_bias=qkv_bias)).train()
    model.set_grad_checkpointing(checkpointing)
    tokens = model.add_position_embedding(model.embed_patches(images(3))).detach()  # (3, 65, 64)
    positions = torch.stack([torch.randperm(65)[:20] for _ in range(3)])  # (3, 20), [class] may be among them
    weights = torch.randn(3, 20, 64)  # a loss that weighs every output differently

    def grads(outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        (outputs * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    full = gather_tokens(model.encode(tokens), positions)  # (3, 20, 64)
    full_grads = grads(full)
    short = model.encode(tokens, positions)
    assert short.shape == (3, 20, 64)
    assert (short - full).abs().max().item() < 1e-5
    short_grads = grads(short)
    assert set(short_grads) == set(full_grads)
    for name, g in full_grads.items():
        assert torch.allclose(short_grads[name], g, atol=1e-5, rtol=1e-4), name


def test_explicit_attention_equals_sdpa_and_rows_sum_to_one() -> None:
    model = randomized(create_model(NANO)).eval()
    x = torch.randn(3, 65, 64)
    attn = model.blocks[1].attn
    with torch.no_grad():
        fast = attn(x)
        slow, weights = attn.forward_with_attention(x)
    assert (fast - slow).abs().max().item() < 1e-5
    assert weights.shape == (3, 2, 65, 65)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 2, 65), atol=1e-5)
    assert (weights >= 0).all()


def test_forward_intermediates() -> None:
    model = randomized(create_model("vit_micro_patch4")).eval()  # depth 4
    x = images(2)
    with torch.no_grad():
        features = model.forward_features(x)
        every = model.forward_intermediates(x, return_attention=True)
        picked = model.forward_intermediates(x, layers=[0, -1], norm=True)
    assert len(every["layers"]) == 4 and all(t.shape == (2, 65, 128) for t in every["layers"])
    assert (model.norm(every["layers"][-1]) - features).abs().max().item() < 1e-5
    assert len(picked["layers"]) == 2 and picked["attentions"] == []
    assert (picked["layers"][1] - features).abs().max().item() < 1e-5
    with torch.no_grad():  # `every` took the explicit-attention path, `picked` SDPA: equal up to rounding
        assert (picked["layers"][0] - model.norm(every["layers"][0])).abs().max().item() < 1e-5
    assert len(every["attentions"]) == 4
    for weights in every["attentions"]:
        assert weights.shape == (2, 4, 65, 65)
        assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 65), atol=1e-5)


def test_grad_checkpointing_gives_identical_outputs_and_grads() -> None:
    """Also with drop path on: the recomputed forward must draw the same drop mask."""
    model = randomized(create_model(NANO, drop_path_rate=0.5)).train()
    x = images()
    results = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(7)
        out = model.forward_features(x)
        (out**2).mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(model.parameters()))
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_train() -> None:
    drop = DropPath(0.5)
    x = torch.ones(64, 5, 3)
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(0)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and rescaled by 1 / (1 - p)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # whole samples
    assert 16 < int((per_sample[:, 0] == 0).sum()) < 48

    rates = [b.drop_path.p for b in create_model("vit_micro_patch4", drop_path_rate=0.3).blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])  # linear in depth

    model = randomized(create_model(NANO, drop_path_rate=0.5))
    plain = create_model(NANO)
    plain.load_state_dict(model.state_dict())
    x = images(8)
    with torch.no_grad():
        assert torch.equal(model.eval().forward_features(x), plain.eval().forward_features(x))
        torch.manual_seed(1)
        assert (model.train().forward_features(x) - plain.forward_features(x)).abs().max().item() > 1e-2


def test_sincos_pos_embed_is_frozen_and_equals_the_formula() -> None:
    model = create_model(NANO, pos_embed="sincos")
    table = model.pos_embed.detach()[0]  # (65, 64): row 0 is the [class] token's
    assert not model.pos_embed.requires_grad
    assert torch.equal(table[0], torch.zeros(64))
    quarter = 16
    for r, c in [(0, 1), (2, 5), (7, 7)]:
        row = table[1 + r * 8 + c]
        for j in (0, 3, 15):
            omega = 10000 ** (-j / quarter)
            assert row[j].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
            assert row[quarter + j].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
            assert row[2 * quarter + j].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
            assert row[3 * quarter + j].item() == pytest.approx(math.cos(r * omega), abs=1e-6)
    assert table[1 + 1 * 8 + 2, 0].item() == pytest.approx(0.9092974, abs=1e-6)  # (r, c) = (1, 2): sin(2 · 1)
    assert table[1 + 1 * 8 + 2, 32].item() == pytest.approx(0.8414710, abs=1e-6)  # sin(1 · 1)

    before = model.pos_embed.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.forward_features(images(2)).sum().backward()
    opt.step()
    assert torch.equal(model.pos_embed.detach(), before)
    assert "pos_embed" in model.state_dict()


@pytest.mark.parametrize("class_token", [True, False])
def test_average_pooling_is_the_mean_of_patch_tokens(class_token: bool) -> None:
    model = randomized(create_model(NANO, global_pool="avg", class_token=class_token, num_classes=3)).eval()
    with torch.no_grad():
        features = model.forward_features(images())
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(images())
    prefix = 1 if class_token else 0
    assert features.shape == (4, prefix + 64, 64)
    assert torch.allclose(pooled, features[:, prefix:].mean(1), atol=1e-6)
    assert torch.allclose(logits, pooled @ model.head.weight.T + model.head.bias, atol=1e-5)


def test_token_pooling_takes_the_class_token() -> None:
    model = randomized(create_model(NANO)).eval()
    with torch.no_grad():
        features = model.forward_features(images())
        assert torch.equal(model.pool(features), features[:, 0])


def test_without_class_token() -> None:
    model = create_model(NANO, class_token=False)
    state = model.state_dict()
    assert "cls_token" not in state and model.cls_token is None
    assert state["pos_embed"].shape == (1, 64, 64)
    assert model.num_prefix_tokens == 0
    assert model.forward_features(images(2)).shape == (2, 64, 64)


def test_position_embeddings_are_resampled_for_other_input_sizes() -> None:
    """A 48px input (12×12) and a 16×64 input (4×16: as many patches as 8×8, at other positions)."""
    model = randomized(create_model(NANO)).eval()
    for size, grid in [(48, (12, 12)), ((16, 64), (4, 16))]:
        x = images(2, size)
        with torch.no_grad():
            table = resample_pos_embed(model.pos_embed, grid, 1, old_grid=(8, 8))  # (1, 1 + gh*gw, D)
            tokens = torch.cat([model.cls_token.expand(2, -1, -1), model.embed_patches(x)], dim=1) + table
            expected = model.encode(tokens)
            got = model.forward_features(x)
        assert got.shape == (2, 1 + grid[0] * grid[1], 64)
        assert (got - expected).abs().max().item() < 1e-5


def test_reset_classifier_replaces_the_head_with_zeros() -> None:
    model = create_model(NANO).to(torch.float64)
    model.reset_classifier(10)
    assert model.config.num_classes == 10
    assert model.head.weight.shape == (10, 64) and model.head.weight.dtype == torch.float64
    assert torch.count_nonzero(model.head.weight) == 0
    assert model(images(2).double()).shape == (2, 10)


def test_forward_flops_counts_the_matmuls() -> None:
    """ViT-B/16 at 224px is the paper's ~35 GFLOPs, and the formula equals PyTorch's own count exactly."""
    with torch.device("meta"):
        base = create_model("vit_base_patch16")
        nano = create_model(NANO, num_classes=7)
    assert base.forward_flops() == pytest.approx(35.1e9, rel=0.05)
    assert base.forward_flops() == pytest.approx(2 * 17.6e9, rel=0.05)
    for model in (base, nano):
        side = model.config.img_size
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, side, side, device="meta"))
        assert model.forward_flops() == counter.get_total_flops()
    assert base.forward_flops(img_size=384) > 3 * base.forward_flops()  # 577 tokens vs 197, attention quadratic
    for model, k in ((base, 98), (nano, 32)):  # outputs at K positions only: the shortened last block
        t = model.patch_embed.num_patches + 1
        tokens = torch.empty(1, t, model.embed_dim, device="meta")
        positions = torch.zeros(1, k, dtype=torch.long, device="meta")
        with FlopCounterMode(display=False) as counter:
            model.encode(tokens, positions)
        patch = 2 * model.patch_embed.num_patches * model.embed_dim * 3 * model.patch_size**2
        head = 2 * model.embed_dim * model.config.num_classes
        assert model.forward_flops(num_outputs=k) == counter.get_total_flops() + patch + head
    assert base.forward_flops(num_outputs=98) == pytest.approx(base.forward_flops() * (1 - 0.035), rel=0.01)


def test_gradients_reach_every_trainable_parameter() -> None:
    """Through the SDPA path, every parameter but the frozen sin-cos table gets a non-zero gradient."""
    model = create_model(NANO, num_classes=5, pos_embed="sincos").train()
    torch.nn.init.normal_(model.head.weight)  # the zero-initialised head would block every gradient below it
    logits = model(images(4))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        if name == "pos_embed":
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
