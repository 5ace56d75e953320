"""Tests that only mean something on a GPU: `pytest -m gpu` (the normal suite deselects them, see pyproject).

bench/gpu_check.py runs them on the GPU machine. `SSL_VIT_TEST_DEVICE=cpu pytest -m gpu` runs on a CPU what
can run there (a check of the tests themselves; the CUDA-only ones skip). Without CUDA and without that
variable they fail: whoever asked for `-m gpu` asked for the GPU, and a silent skip would read as a pass.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from run_records import last_logged_step, losses, records
from trainer_fixtures import REPO, SMOKE, cli_env, smoke_overrides, start_and_wait

from ssl_vit.config import OptimConfig
from ssl_vit.data.normalize import DEFAULT_MEAN, DEFAULT_STD, normalize_uint8
from ssl_vit.models import create_model
from ssl_vit.objectives.mpp import MaskedPatchPrediction
from ssl_vit.train.optim import build_optimizer, param_groups, step_unless

pytestmark = pytest.mark.gpu
FUSED_SDPA = {"flash", "efficient", "cudnn"}


@pytest.fixture(scope="module")
def device() -> torch.device:
    name = os.environ.get("SSL_VIT_TEST_DEVICE", "cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail("pytest -m gpu needs a CUDA device and torch sees none; SSL_VIT_TEST_DEVICE=cpu runs what can "
                    "run on a CPU")
    return torch.device(name)


@pytest.fixture
def cuda(device: torch.device) -> torch.device:
    if device.type != "cuda":
        pytest.skip("measures CUDA behaviour")
    return device


@pytest.fixture
def exact_fp32():
    """fp32 matmuls in full fp32 (no TF32), so fp32 references are references; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def objective(name: str, device: torch.device) -> MaskedPatchPrediction:
    torch.manual_seed(0)
    return MaskedPatchPrediction(create_model(name), target="mean_color", seed=0).to(device).train()


def image_batch(batch: int, side: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=gen).to(device)  # (B, 3, S, S)


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])


def train_losses(model, images, steps: int, *, bf16: bool = False, forward=None) -> tuple[list[float], torch.Tensor]:
    """Per-step losses of `steps` fused-AdamW steps on one batch, each step's corruption drawn from
    `manual_seed(step)`; and the first step's gradient."""
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, fused=True)
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    out, first = [], None
    for step in range(steps):
        torch.manual_seed(step)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = forward(images)
        loss.backward()
        if first is None:
            first = flat_grad(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out, first


def test_bf16_autocast_step_tracks_fp32(device, exact_fp32):
    """bf16 autocast (as the trainer runs on GPUs) computes the fp32 loss to within 1%, a gradient pointing the
    same way, and a training trajectory within 5% of fp32's over 8 steps."""
    name, side = ("vit_tiny_patch16", 224) if device.type == "cuda" else ("vit_micro_patch4", 32)  # CPU bf16: slow
    fp32 = objective(name, device)
    bf16 = copy.deepcopy(fp32)
    images = image_batch(16, side, device)
    ref, ref_grad = train_losses(fp32, images, 8)
    low, low_grad = train_losses(bf16, images, 8, bf16=True)
    assert abs(low[0] - ref[0]) / ref[0] < 0.01, (low[0], ref[0])
    cosine = torch.nn.functional.cosine_similarity(low_grad, ref_grad, dim=0).item()
    assert cosine > 0.99 and abs(low_grad.norm() / ref_grad.norm() - 1) < 0.05, cosine
    assert low == pytest.approx(ref, rel=0.05)
    assert ref[-1] < ref[0] and low[-1] < low[0]  # both learn


def test_compiled_step_equals_eager(device, exact_fp32):
    """torch.compile (inductor, drawing random numbers as eager does) gives eager's losses and gradients."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    eager = objective("vit_nano_patch4", device)
    compiled = copy.deepcopy(eager)
    images = image_batch(32, 32, device)
    ref, ref_grad = train_losses(eager, images, 3)
    with inductor_config.patch(fallback_random=True):
        got, got_grad = train_losses(compiled, images, 3, forward=torch.compile(compiled))
    assert got == pytest.approx(ref, rel=1e-4)
    assert ((got_grad - ref_grad).norm() / ref_grad.norm()).item() < 1e-4


def test_fused_adamw_matches_the_reference_and_skips_on_the_device(device, exact_fp32):
    """Our optimizer is fused AdamW on the device; its steps equal the single-tensor reference implementation, and
    a skipped step (non-finite loss) leaves weights, moments and step count untouched without a host sync."""
    model = objective("vit_nano_patch4", device)
    twin = copy.deepcopy(model)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=0)
    fused = build_optimizer(model, cfg)
    reference = torch.optim.AdamW(param_groups(twin, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  foreach=False, fused=False)
    assert fused.defaults["fused"] and all(p.device.type == device.type for p in model.parameters())
    gen = torch.Generator().manual_seed(0)

    def set_grads() -> None:
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=gen).to(device)
            q.grad = p.grad.clone()

    for _ in range(3):
        set_grads()
        step_unless(fused, torch.zeros((), device=device))
        reference.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    before = copy.deepcopy((model.state_dict(), fused.state_dict()["state"]))
    set_grads()
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        step_unless(fused, torch.ones((), device=device))  # skipped on the device
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    after = (model.state_dict(), fused.state_dict()["state"])
    for key, value in before[0].items():
        assert torch.equal(value, after[0][key]), key
    for index, state in before[1].items():
        for name, value in state.items():
            assert torch.equal(value, after[1][index][name]), (index, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_attention_takes_a_fused_sdpa_kernel(cuda, dtype, bench_module):
    """At ViT-B/16's shapes (12 heads of 64, 197 tokens; and the last block's 98 queries against 197 keys) SDPA
    dispatches to flash, memory-efficient or cuDNN attention, forward and backward, never the math fallback."""
    attention_kernels = bench_module("gpu_stages").attention_kernels  # what the GPU check's environment stage reports

    for queries in (None, 98):
        kernels = attention_kernels(cuda, dtype, batch=8, heads=12, tokens=197, queries=queries)
        assert set(kernels["forward"]) & FUSED_SDPA and "math" not in kernels["forward"], (queries, kernels)
        assert set(kernels["backward"]) & FUSED_SDPA and "math" not in kernels["backward"], (queries, kernels)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_no_host_device_sync_inside_a_training_step(cuda, precision, pretrain_shards, tmp_path, pretrain, monkeypatch):
    """The trainer's steps (bf16, or fp16 with its loss scaling; gradient accumulation, clipping, the NaN guard,
    fused AdamW, the schedule) run under `torch.cuda.set_sync_debug_mode("error")`: any operation that waits for
    the GPU raises. The first step is exempt (it creates the optimizer state), and so are the logged steps'
    reductions, outside `_step`."""
    from ssl_vit.train import trainer as trainer_module

    original = trainer_module.Trainer._step
    watched = []

    def step(self, number, *args, **kwargs):
        if number == 1:
            return original(self, number, *args, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, number, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            watched.append(number)

    monkeypatch.setattr(trainer_module.Trainer, "_step", step)
    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **{"train.precision": precision, "train.total_steps": 6, "train.log_every": 3,
                                        "train.checkpoint_every": 6, "train.global_batch": 32, "data.batch_size": 16,
                                        "optim.grad_clip": 1.0, "optim.warmup_steps": 1}) == 0
    assert watched == [2, 3, 4, 5, 6]
    assert [r["step"] for r in records(run_dir)] == [3, 6] and all(r["loss"] is not None for r in records(run_dir))
    if precision == "fp16":  # the scaler ran on the GPU (torch.amp's CUDA kernels) and found no overflow
        assert [(r["loss_scale"], r["overflow_skipped"]) for r in records(run_dir)] == [(65536.0, 0)] * 2


DETERMINISTIC_MAIN = ("import sys, torch; torch.use_deterministic_algorithms(True); "
                      "from ssl_vit.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.timeout(300)
def test_resume_reproduces_the_losses(device, pretrain_shards, tmp_path):
    """On the GPU with deterministic algorithms, bf16: `kill -9` after a checkpoint, then `--resume auto`, gives
    the uninterrupted run's per-step losses and final weights exactly (tests/test_resume.py does it on CPU)."""
    steps, every = 20, 5
    settings = {"train.total_steps": steps, "train.checkpoint_every": every, "train.log_every": 1,
                "optim.warmup_steps": 2, "model.overrides.drop_path_rate": 0.1,
                "train.precision": "bf16" if device.type == "cuda" else "fp32"}
    env = cli_env(CUBLAS_WORKSPACE_CONFIG=":4096:8")

    def command(run_dir: Path) -> list[str]:
        return [sys.executable, "-c", DETERMINISTIC_MAIN, "pretrain", "--config", str(SMOKE),
                *smoke_overrides(pretrain_shards, run_dir, **settings)]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(whole), cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = start_and_wait(command(killed), killed / "metrics.jsonl", every + 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert last_logged_step(killed / "metrics.jsonl") < steps
    resumed = subprocess.run([*command(killed), "--resume", "auto"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    assert losses(killed) == losses(whole)
    final = [torch.load(d / "checkpoints" / f"step_{steps:07d}" / "state.pt", weights_only=True) for d in (whole, killed)]
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key


@pytest.fixture(scope="module")
def timm_export(device, pretrain_shards, tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, `ssl-vit export RUN DIR --format timm` folder) of a 2-step ViT-Ti/16 run at 224 px."""
    tmp = tmp_path_factory.mktemp("timm")
    run_dir, out = tmp / "run", tmp / "timm_export"
    settings = {"model.name": "vit_tiny_patch16", "data.image_size": 224, "data.batch_size": 8,
                "train.global_batch": 8, "train.total_steps": 2, "train.checkpoint_every": 2, "optim.warmup_steps": 1}
    trained = subprocess.run([sys.executable, "-m", "ssl_vit", "pretrain", "--config", str(SMOKE),
                              *smoke_overrides(pretrain_shards, run_dir, **settings)], cwd=REPO, env=cli_env(),
                             capture_output=True, text=True, timeout=240)
    assert trained.returncode == 0, trained.stderr[-2000:]
    export = subprocess.run([sys.executable, "-m", "ssl_vit", "export", str(run_dir), str(out), "--format", "timm"],
                            cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    if export.returncode != 0 or not (out / "config.json").exists() or not (out / "model.safetensors").exists():
        pytest.fail("`ssl-vit export RUN DIR --format timm` did not write DIR/config.json + DIR/model.safetensors "
                    f"(exit {export.returncode}): {export.stderr.strip()[-400:]}")
    return run_dir, out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("form", ["local-dir", "pretrained_cfg_overlay"])
def test_timm_loads_our_timm_export(device, timm_export, exact_fp32, form):
    """timm itself loads the `--format timm` folder: `create_model("local-dir:DIR", pretrained=True)` with no
    keyword arguments (config.json's architecture, model_args and pretrained_cfg), or `create_model(ARCH,
    pretrained=True, pretrained_cfg_overlay=dict(file=DIR/model.safetensors, custom_load=False), num_classes=0,
    **model_args)` — the form that reads only the weights, as the model card prints it. Either way its tokens and
    pooled features equal our backbone's."""
    if device.type == "cpu":
        timm = pytest.importorskip("timm")
    else:
        try:
            import timm
        except ImportError as err:
            pytest.fail(f"timm does not import on this GPU machine ({err}); this test checks the real load")
    from ssl_vit.train import checkpoint as ckpt
    from ssl_vit.train.restore import restore_objective

    run_dir, out = timm_export
    config = json.loads((out / "config.json").read_text())
    assert tuple(config["pretrained_cfg"]["mean"]) == DEFAULT_MEAN and tuple(config["pretrained_cfg"]["std"]) == DEFAULT_STD
    if form == "local-dir":
        version = tuple(int(p) for p in timm.__version__.split(".")[:3] if p.isdigit())
        if version < (1, 0, 16):
            pytest.skip(f"timm {timm.__version__} has no local-dir: model names (timm >= 1.0.16)")
        model = timm.create_model(f"local-dir:{out}", pretrained=True)
        assert tuple(model.pretrained_cfg["mean"]) == DEFAULT_MEAN and model.pretrained_cfg["input_size"][-1] == 224
    else:
        model = timm.create_model(config["architecture"], pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), custom_load=False),
                                  **config.get("model_args", {}))
    model = model.to(device).eval()
    ours = restore_objective(ckpt.latest_checkpoint(run_dir / "checkpoints"))[0].backbone.to(device).eval()
    x = normalize_uint8(image_batch(4, 224, device))
    with torch.no_grad():
        tokens = ours.forward_features(x)  # (B, 1+N, D)
        torch.testing.assert_close(model.forward_features(x), tokens, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x), ours.pool(tokens), rtol=1e-4, atol=1e-4)  # num_classes 0: pooled
