"""Masked patch prediction: exact corruption counts and shares, replacement rules, gradients, compile, overfit."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_vit.errors import ConfigError
from ssl_vit.models import create_model
from ssl_vit.objectives import MaskedPatchPrediction, build
from ssl_vit.objectives.corruption import KEPT, MASKED, REPLACED, sample_corruption


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nano_mpp(**kwargs) -> MaskedPatchPrediction:
    torch.manual_seed(0)
    return build("mpp", create_model("vit_nano_patch4"), seed=0, **kwargs)


def batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    """(n, 3, 32, 32) uint8: blocky random colours, so colour targets vary between patches."""
    small = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen(seed))
    return small.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def coded_patches(b: int, n: int, d: int = 4) -> torch.Tensor:
    """(b, n, d) patches, all distinct: channel 0 holds the flat position b·N + n."""
    patches = torch.randn(b, n, d, generator=gen(9))
    patches[..., 0] = torch.arange(b * n, dtype=torch.float32).view(b, n)
    return patches


@pytest.mark.parametrize("rate,k", [(0.15, 10), (0.5, 32), (0.25, 16), (0.1, 6), (1.0, 64)])
def test_exact_corrupted_count_per_image(rate, k):
    c = sample_corruption(16, 64, rate, 0.8, 0.1, torch.device("cpu"), gen(0))
    assert c.index.shape == c.kind.shape == c.source.shape == (16, k)
    for row in c.index:
        assert len(set(row.tolist())) == k and 0 <= row.min() and row.max() < 64


def test_kind_shares_are_80_10_10_within_one_percent():
    # ≥100k corrupted slots, both as one big batch and as many small batches of 8 images × 32 slots.
    big = sample_corruption(4096, 64, 0.5, 0.8, 0.1, torch.device("cpu"), gen(0)).kind.flatten()
    g = gen(1)
    small = torch.cat([sample_corruption(8, 64, 0.5, 0.8, 0.1, torch.device("cpu"), g).kind.flatten() for _ in range(400)])
    for kinds in (big, small):
        assert kinds.numel() >= 100_000
        shares = torch.bincount(kinds, minlength=3).double() / kinds.numel()
        assert shares.tolist() == pytest.approx([0.8, 0.1, 0.1], abs=0.01)
    # And the per-batch split is exact: 2 images × 32 slots = 64 → 51 masked, 6 replaced, 7 kept.
    c = sample_corruption(2, 64, 0.5, 0.8, 0.1, torch.device("cpu"), gen(2))
    assert torch.bincount(c.kind.flatten(), minlength=3).tolist() == [51, 6, 7] and c.counts == (51, 6, 7)


def test_replacement_is_another_patch_of_the_batch_never_itself():
    mpp = nano_mpp(mask_prob=0.0, random_prob=1.0, corruption_rate=1.0)
    b, n = 3, 8
    patches = coded_patches(b, n, d=64)
    seen = set()
    for seed in range(150):
        out, c = mpp.corrupt(patches, gen(seed))
        own = torch.arange(b).view(b, 1) * n + c.index  # (B, K)
        assert (c.kind == REPLACED).all() and (c.source != own).all()
        assert ((c.source >= 0) & (c.source < b * n)).all()
        written = out.gather(1, c.index.unsqueeze(-1).expand(-1, -1, 64))  # (B, K, D)
        assert torch.equal(written, patches.reshape(b * n, 64)[c.source])  # the source's (uncorrupted) embedding
        seen |= {(s, o) for s, o in zip(c.source.flatten().tolist(), own.flatten().tolist())}
    # Any image, any position: every ordered pair of distinct positions turns up.
    assert len(seen) > 0.95 * (b * n) * (b * n - 1)
    # Two patches in the batch: each must take the other's embedding, every time.
    for seed in range(20):
        out, c = mpp.corrupt(coded_patches(1, 2, d=64), gen(seed))
        assert out[0, :, 0].tolist() == [1.0, 0.0]


def test_kept_patches_unchanged_masked_equal_mask_token():
    mpp = nano_mpp()
    patches = coded_patches(4, 64, d=64)
    out, c = mpp.corrupt(patches, gen(0))
    corrupted = torch.zeros(4, 64, dtype=torch.bool).scatter(1, c.index, True)
    assert torch.equal(out[~corrupted], patches[~corrupted])
    slots = c.index.unsqueeze(-1).expand(-1, -1, 64)
    written, original = out.gather(1, slots), patches.gather(1, slots)  # (B, K, D)
    assert torch.equal(written[c.kind == KEPT], original[c.kind == KEPT])
    assert (written[c.kind == MASKED] == mpp.mask_token.view(1, 64)).all()
    assert (c.source[c.kind != REPLACED] == -1).all()


def test_seeds_reproduce_and_differ():
    mpp = nano_mpp()
    patches = coded_patches(4, 64, d=64)
    a, ca = mpp.corrupt(patches, gen(5))
    b, cb = mpp.corrupt(patches, gen(5))
    _, cc = mpp.corrupt(patches, gen(6))
    assert torch.equal(a, b) and torch.equal(ca.index, cb.index) and torch.equal(ca.source, cb.source)
    assert not torch.equal(ca.index, cc.index)
    torch.manual_seed(3)  # no generator: the global RNG, so torch.manual_seed reproduces runs
    l1, _ = mpp(batch())
    torch.manual_seed(3)
    l2, _ = mpp(batch())
    assert l1.item() == l2.item()


def test_head_reads_the_encoder_at_corrupted_positions_and_mask_token_learns():
    """The encoder hands back exactly the full pass's outputs at the corrupted positions, in corruption order
    (never the [class] token), and every one of them carries gradient."""
    mpp = nano_mpp().eval()  # no drop-path, so the full pass below is the same computation
    captured = {}

    def keep_input(module, inputs):
        captured["tokens"] = inputs[0].detach()

    def keep_output(module, inputs, output):
        output.retain_grad()
        captured["features"] = output

    hooks = [mpp.backbone.blocks[0].register_forward_pre_hook(keep_input),
             mpp.backbone.norm.register_forward_hook(keep_output)]
    g = gen(0)
    state = g.get_state()
    loss, _ = mpp(batch(), generator=g)
    loss.backward()
    for hook in hooks:
        hook.remove()
    c = sample_corruption(8, 64, 0.5, 0.8, 0.1, torch.device("cpu"), torch.Generator().set_state(state))
    features = captured["features"]  # (B, K, D)
    assert features.shape == (8, 32, 64)
    with torch.no_grad():
        full = mpp.backbone.encode(captured["tokens"])  # (B, 1 + N, D)
    expected = full.gather(1, (c.index + 1).unsqueeze(-1).expand(8, 32, 64))  # (B, K, D)
    assert (features.detach() - expected).abs().max().item() < 1e-5
    assert (features.grad.abs().sum(-1) > 0).all()
    assert mpp.mask_token.grad is not None and mpp.mask_token.grad.abs().sum() > 0


def test_state_dict_layout_and_weight_decay_keys():
    mpp = nano_mpp()
    own = sorted(k for k in mpp.state_dict() if not k.startswith("backbone."))
    assert own == ["head.fc1.bias", "head.fc1.weight", "head.fc2.bias", "head.fc2.weight", "mask_token"]
    assert mpp.state_dict()["head.fc1.weight"].shape == (64, 64)  # hidden = embed_dim
    assert mpp.state_dict()["head.fc2.weight"].shape == (512, 64)
    assert set(mpp.backbone_state_dict()) == set(create_model("vit_nano_patch4").state_dict())
    assert mpp.no_weight_decay_keys() == {"backbone.pos_embed", "backbone.cls_token", "mask_token"}
    assert abs(mpp.mask_token.std().item() - 0.02) < 0.01
    linear = nano_mpp(head="linear", target="downsampled_color", target_kwargs={"grid": 2})
    assert linear.head.weight.shape == (4 * 512, 64)
    # 3 × (backbone forward asked for the 32 corrupted tokens' outputs + head on those 32)
    head = 2 * (64 * 64 + 64 * 512)
    assert mpp.flops_per_image() == pytest.approx(3 * (mpp.backbone.forward_flops(num_outputs=32) + 32 * head))


def test_metrics_and_prediction():
    mpp = nano_mpp()
    loss, metrics = mpp(batch(), generator=gen(0))
    assert set(metrics) == {"loss", "acc", "acc_masked", "acc_replaced", "acc_kept"}
    assert all(v.ndim == 0 and not v.requires_grad for v in metrics.values())
    assert loss.item() == pytest.approx(math.log(512), abs=1.0)
    out = mpp.eval().predict(batch(2), generator=gen(0))
    c = out["corruption"]
    assert out["targets"].shape == (2, 64, 1) and out["predictions"].shape == (2, 32, 1)
    assert torch.equal(out["corrupted_targets"], out["targets"].gather(1, c.index.unsqueeze(-1)))
    acc = (out["predictions"] == out["corrupted_targets"]).float().mean()
    assert out["metrics"]["acc"].item() == pytest.approx(acc.item())
    assert mpp.target.render(out["predictions"]).shape == (2, 32, 4, 4, 3)
    # Kinds without slots are left out, not nan.
    _, metrics = nano_mpp(random_prob=0.0, target="pixels")(batch(), generator=gen(0))
    assert set(metrics) == {"loss", "mse_masked", "mse_kept"}


def test_compiles_to_one_graph_and_matches_eager():
    mpp = nano_mpp()
    compiled = torch.compile(mpp, backend="eager", fullgraph=True)
    torch.manual_seed(1)
    loss, metrics = compiled(batch())
    loss.backward()
    torch.manual_seed(1)
    eager, _ = mpp(batch())
    assert loss.item() == pytest.approx(eager.item(), rel=1e-5)
    assert mpp.mask_token.grad is not None


def test_bf16_autocast_step():
    mpp = nano_mpp()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = mpp(batch(), generator=gen(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("target,kwargs", [("mean_color", {}), ("downsampled_color", {"grid": 2}), ("pixels", {})])
def test_few_adam_steps_overfit_a_fixed_batch(target, kwargs):
    mpp = nano_mpp(target=target, target_kwargs=kwargs)
    images = batch()
    opt = torch.optim.Adam(mpp.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = mpp(images, generator=gen(0))  # the same corruption every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_bad_settings_raise_config_errors():
    vit = create_model("vit_nano_patch4")
    with pytest.raises(ConfigError, match="corruption_rate"):
        MaskedPatchPrediction(vit, corruption_rate=0.0)
    with pytest.raises(ConfigError, match="corrupts no patch"):
        MaskedPatchPrediction(vit, corruption_rate=0.005)
    with pytest.raises(ConfigError, match="sum to at most 1"):
        MaskedPatchPrediction(vit, mask_prob=0.8, random_prob=0.3)
    with pytest.raises(ConfigError, match="mlp, linear"):
        MaskedPatchPrediction(vit, head="conv")
    with pytest.raises(ConfigError, match="did you mean 'mpp'"):
        build("mmp", vit)
    with pytest.raises(ConfigError, match="did you mean 'corruption_rate'"):
        build("mpp", vit, corruption_ratio=0.5)
