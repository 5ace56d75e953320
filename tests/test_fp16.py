"""fp16 training with dynamic loss scaling, on CPU (torch.amp's autocast and GradScaler; the same code path a
GPU without bf16 takes): the forward runs in fp16, overflows are skipped and counted apart from non-finite
losses, the scale is checkpointed and a resume continues it exactly, and `auto` picks fp16 on old GPUs."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import fresh_accelerate_state
from run_records import records

from ssl_vit.config import TrainConfig
from ssl_vit.errors import ConfigError
from ssl_vit.objectives.mpp import MaskedPatchPrediction
from ssl_vit.train import checkpoint as ckpt
from ssl_vit.train import make_accelerator, resolve_precision
from ssl_vit.train.precision import LossScaling, Precision, precision_for_run


def state(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / ckpt.checkpoint_name(step) / "state.pt", weights_only=True)


FP16 = {"train.precision": "fp16", "optim.warmup_steps": 2, "train.log_every": 1, "train.keep_last": 20}


def test_auto_is_bf16_where_supported_fp16_on_gpus_without_it_and_fp32_on_cpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a V100 or a T4
    assert resolve_precision("auto", cuda=True) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # an A100 or later
    assert resolve_precision("auto", cuda=True) == "bf16"
    assert resolve_precision("auto", cuda=False) == "no"
    assert [resolve_precision(p, cuda=False) for p in ("fp16", "bf16", "fp32")] == ["fp16", "bf16", "no"]


def test_fp16_is_not_handed_to_accelerate_which_would_silently_train_in_fp32_on_a_cpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # `accelerate launch --mixed_precision fp16`
    with fresh_accelerate_state():
        accelerator = make_accelerator(TrainConfig(precision="fp16"), tmp_path)
        assert accelerator.mixed_precision == "no" and accelerator.scaler is None  # ours does it (LossScaling)
        assert isinstance(precision_for_run(TrainConfig(precision="fp16"), accelerator), LossScaling)
        assert type(precision_for_run(TrainConfig(precision="bf16"), accelerator)) is Precision  # the null object
    assert capsys.readouterr().out == ""  # launcher and recipe agree
    with fresh_accelerate_state():
        make_accelerator(TrainConfig(precision="fp32"), tmp_path)
    assert capsys.readouterr().out.startswith("note: the launcher asks for mixed precision fp16, the recipe's "
                                              "train.precision=fp32 gives fp32 on this machine")


def test_fp16_with_fsdp_is_refused_in_one_line(tmp_path):
    class FakeAccelerator:
        device = torch.device("cpu")
        distributed_type = DistributedType.FSDP

    with pytest.raises(ConfigError, match=r"^train.precision=fp16 trains in fp16 here, which ssl_vit supports with "
                                          r"one process or DDP, not FSDP: use train.precision=bf16"):
        precision_for_run(TrainConfig(precision="fp16"), FakeAccelerator())


@pytest.mark.timeout(120)
def test_fp16_trains_in_half_precision_and_checkpoints_its_loss_scale(pretrain_shards, tmp_path, pretrain, monkeypatch):
    dtypes: set[torch.dtype] = set()
    forward = MaskedPatchPrediction.forward

    def spy(self, images, labels=None):
        hook = self.backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
        try:
            return forward(self, images, labels)
        finally:
            hook.remove()

    monkeypatch.setattr(MaskedPatchPrediction, "forward", spy)
    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **FP16, **{"train.total_steps": 6, "train.checkpoint_every": 3}) == 0
    assert dtypes == {torch.float16}  # the matmuls ran in fp16 (the weights stay fp32)
    log = records(run_dir)
    assert all(math.isfinite(r["loss"]) for r in log)
    assert [(r["nonfinite_skipped"], r["overflow_skipped"]) for r in log] == [(0, 0)] * 6
    assert [r["loss_scale"] for r in log] == [65536.0] * 6  # no overflow; doubling waits for 2000 clean steps
    saved = state(run_dir, 6)
    assert saved["precision"]["scale"] == 65536.0 and saved["precision"]["_growth_tracker"] == 6
    assert all(v.dtype == torch.float32 for v in saved["model"].values())


@pytest.mark.timeout(120)
def test_overflows_are_skipped_and_counted_apart_from_nonfinite_losses(pretrain_shards, tmp_path, pretrain):
    """A loss scale of 2^24 overflows fp16 (max 65504) in the backward: the scaler halves it at each overflow until
    the gradients fit. Those skips are the scaler's calibration, not non-finite losses: more of them in a row than
    max_nonfinite=2 do not stop the run, and each leaves the weights and AdamW's step count untouched."""
    run_dir = tmp_path / "run"
    steps = 10
    overrides = {**FP16, "train.total_steps": steps, "train.checkpoint_every": 1, "train.max_nonfinite": 2,
                 "train.fp16_loss_scale": 2.0 ** 24}
    assert pretrain(pretrain_shards, run_dir, **overrides) == 0
    log = records(run_dir)
    overflows = [r["overflow_skipped"] for r in log]  # so far, after each step
    skipped = [after - before for before, after in zip([0] + overflows, overflows)]  # (steps,) 0 or 1
    assert set(skipped) <= {0, 1} and skipped[:3] == [1, 1, 1] and 0 in skipped  # calibrated within the run
    assert all(r["nonfinite_skipped"] == 0 for r in log)
    # The scale halves at each overflow (and would double only after 2000 clean steps).
    assert [r["loss_scale"] for r in log] == [2.0 ** (24 - n) for n in overflows]
    assert [r["loss"] is None for r in log] == [bool(x) for x in skipped]  # a skipped step is not averaged
    before, after = state(run_dir, 1), state(run_dir, 3)  # steps 2 and 3 overflowed: nothing moved
    for key, value in before["model"].items():
        assert torch.equal(value, after["model"][key]), key
    assert state(run_dir, steps)["optimizer"]["state"]["mask_token"]["step"].item() == steps - overflows[-1]


@pytest.mark.timeout(120)
def test_a_nonfinite_loss_under_fp16_still_counts_as_nonfinite(pretrain_shards, tmp_path, pretrain, monkeypatch):
    from test_trainer import inject_nan

    inject_nan(monkeypatch, {3})
    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **FP16, **{"train.total_steps": 5, "train.checkpoint_every": 5}) == 0
    log = records(run_dir)
    assert [(r["nonfinite_skipped"], r["overflow_skipped"]) for r in log] == [(0, 0), (0, 0), (1, 0), (1, 0), (1, 0)]
    assert log[2]["loss"] is None and log[2]["loss_scale"] == 32768.0  # the scaler backs off on nan gradients too


@pytest.mark.timeout(180)
def test_fp16_resume_continues_the_loss_scale_and_equals_the_uninterrupted_run(pretrain_shards, tmp_path, pretrain):
    """Resumed mid-calibration (scale 2^24: the first steps overflow): a resume that restarted at the initial scale
    would skip steps the uninterrupted run took, and end with other weights."""
    steps = 12
    overrides = {**FP16, "train.total_steps": steps, "train.checkpoint_every": 2, "train.fp16_loss_scale": 2.0 ** 24}
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert pretrain(pretrain_shards, whole, **overrides) == 0
    assert records(whole)[3]["overflow_skipped"] == 4  # step 4 is inside the calibration
    shutil.copytree(whole, split)  # then resume the copy from step 4, re-running steps 5..12
    resume = split / "checkpoints" / ckpt.checkpoint_name(4)
    assert pretrain(pretrain_shards, split, "--resume", str(resume), "--overwrite", **overrides) == 0
    assert [(r["step"], r["loss"], r["loss_scale"]) for r in records(split)] == \
        [(r["step"], r["loss"], r["loss_scale"]) for r in records(whole)]
    a, b = state(whole, steps), state(split, steps)
    assert a["precision"] == b["precision"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
