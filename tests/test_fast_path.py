"""The fast training path computes what the plain path computes: SDPA against the explicit attention, bf16
autocast against fp32, `torch.compile` (one graph, AOT autograd) against eager, with and without activation
checkpointing. Speed is bench/step.py's business; this is only correctness, on the nano model.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ssl_vit.models import create_model
from ssl_vit.objectives.mpp import MaskedPatchPrediction

NANO = "vit_nano_patch4"


def objective(seed: int = 0) -> MaskedPatchPrediction:
    """The nano MPP objective with every backbone weight random (a zero-initialised tensor hides mistakes)."""
    torch.manual_seed(seed)
    backbone = create_model(NANO)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return MaskedPatchPrediction(backbone, target="mean_color", seed=seed)


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def loss_and_grads(mpp: MaskedPatchPrediction, forward, corruption_seed: int = 3) -> tuple[torch.Tensor, dict, dict]:
    mpp.zero_grad(set_to_none=True)
    torch.manual_seed(corruption_seed)  # the corruption draws from the global RNG: the same draw for both paths
    loss, metrics = forward(images())
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in metrics.items()}, grads(mpp)


def test_sdpa_and_explicit_attention_agree_in_outputs_and_gradients() -> None:
    """The training path (SDPA) and the analysis path (explicit softmax(QKᵀ/√d)V) are the same function."""
    torch.manual_seed(0)
    vit = objective().backbone.train()
    x = torch.randn(3, 3, 32, 32)
    results = []
    for explicit in (False, True):
        vit.zero_grad(set_to_none=True)
        if explicit:
            out = vit.forward_intermediates(x, layers=[-1], return_attention=True, norm=True)["layers"][0]
        else:
            out = vit.forward_features(x)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()  # a loss that weighs every channel
        results.append((out.detach(), grads(vit)))
    (fast, fast_grads), (slow, slow_grads) = results
    assert fast.shape == (3, 65, 64)
    assert (fast - slow).abs().max().item() < 1e-5
    assert fast_grads.keys() == slow_grads.keys() and len(fast_grads) == len(list(vit.parameters()))
    for name, g in fast_grads.items():
        # Relative to the tensor's scale: gradients reach ~360 here, where fp32 summation order alone (SDPA vs
        # matmul, 1 vs 2 BLAS threads) moves single elements by ~4e-5; an element-wise rtol fails near zero.
        scale = g.abs().max().item()
        assert (g - slow_grads[name]).abs().max().item() <= 1e-5 * scale, name


def test_bf16_autocast_stays_close_to_fp32() -> None:
    """bf16 keeps ~3 significant digits: the loss within 0.2%, features within 2%, gradients aligned."""
    mpp = objective().train()
    loss32, metrics32, grads32 = loss_and_grads(mpp, mpp)

    def under_autocast(x: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return mpp(x)

    loss16, metrics16, grads16 = loss_and_grads(mpp, under_autocast)
    assert loss16.dtype == torch.float32  # the head's logits are cast up: the loss is reduced in fp32
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        feats32 = mpp.backbone.forward_features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats16 = mpp.backbone.forward_features(x)
    error = (feats16.float() - feats32).abs()  # the final LayerNorm runs in fp32 under autocast, its input not
    assert error.max().item() > 0  # autocast did act (bf16 matmuls inside the blocks)
    assert error.mean().item() < 0.02 * feats32.abs().mean().item()
    assert grads16.keys() == grads32.keys()
    for name, g in grads32.items():  # measured ≥ 0.9999 for every tensor
        cos = F.cosine_similarity(grads16[name].flatten(), g.flatten(), dim=0).item()
        assert cos > 0.999, (name, cos)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_step_is_one_graph_and_matches_eager(checkpointing: bool) -> None:
    """`torch.compile(fullgraph=True)` fails on any graph break (each costs speed on a GPU); aot_eager traces
    forward and backward as inductor would, without paying for code generation on a 2-core CPU."""
    torch._dynamo.reset()
    mpp = objective().train()
    mpp.backbone.set_grad_checkpointing(checkpointing)
    compiled = torch.compile(mpp, backend="aot_eager", fullgraph=True)
    eager_loss, eager_metrics, eager_grads = loss_and_grads(mpp, mpp)
    loss, metrics, compiled_grads = loss_and_grads(mpp, compiled)
    assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-5)
    assert metrics.keys() == eager_metrics.keys() and "acc_masked" in metrics
    for key in metrics:
        assert metrics[key].item() == pytest.approx(eager_metrics[key].item(), rel=1e-5, abs=1e-6), key
    assert compiled_grads.keys() == eager_grads.keys() and "mask_token" in compiled_grads
    for name, g in compiled_grads.items():
        assert torch.allclose(g, eager_grads[name], atol=1e-6, rtol=1e-5), name
    # Two AdamW steps through the compiled module move the weights exactly as two eager steps move a twin's.
    twin = copy.deepcopy(mpp)
    for module, forward in ((mpp, compiled), (twin, twin)):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, fused=True)
        for step in range(2):
            loss_and_grads(module, forward, corruption_seed=10 + step)
            optimizer.step()
    start = dict(objective().named_parameters())
    assert all(not torch.equal(p, start[name]) for name, p in mpp.named_parameters())  # every tensor moved
    for (name, p), q in zip(mpp.named_parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5), name
    torch._dynamo.reset()


@pytest.mark.timeout(120)
def test_compiled_step_takes_a_second_batch_size_symbolically() -> None:
    """A second batch shape makes dynamo recompile with a symbolic batch size (what happens when one process
    compiles for two shapes); the corruption's random draws from the default RNG (the trainer's; an explicit
    generator is for eager analysis) must trace then too, and the step must equal eager's for both shapes.

    `dynamic=None`, as the trainer compiles: the first shape is traced static, the second symbolic in the batch
    size only (a third shape then needs no recompile). `dynamic=True` would make every dimension symbolic from
    the first call, which costs 40 s instead of 16 s here and is not what the trainer does."""
    torch._dynamo.reset()
    mpp = objective().train()
    compiled = torch.compile(mpp, backend="aot_eager", fullgraph=True)
    for n in (4, 6, 8):
        batch = images(n)
        torch.manual_seed(3)
        with torch._dynamo.config.patch(error_on_recompile=n == 8):  # the second shape's graph is symbolic
            loss, _ = compiled(batch)
        torch.manual_seed(3)
        eager, _ = mpp(batch)
        assert loss.item() == pytest.approx(eager.item(), rel=1e-5), n
    torch._dynamo.reset()
