"""`ssl-vit estimate-memory`: the package's fake-tensor estimate of one training step, for a recipe or flags."""
from __future__ import annotations

import json

import pytest
import torch

from ssl_vit import cli
from ssl_vit.config import load_config
from ssl_vit.train.estimate import pretrain_step_memory, step_peak_memory
from ssl_vit.models import create_model
from ssl_vit.objectives.mpp import MaskedPatchPrediction
from ssl_vit.recipe_files import resolve_recipe

NANO = ["--model", "vit_nano_patch4", "--img-size", "32", "--batch", "8"]


def _estimate(capsys, *argv: str) -> dict:
    assert cli.main(["estimate-memory", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.timeout(120)
def test_flags_estimate_the_recipe_with_exact_parameter_and_adamw_bytes(capsys):
    """fp32 parameters (4 bytes each), fused AdamW's two moments plus one fp32 step count per tensor; the
    flags are the recipe's keys (default recipe: the paper's ViT-B/16, so the mean-colour MPP objective)."""
    out = _estimate(capsys, *NANO)
    params = list(MaskedPatchPrediction(create_model("vit_nano_patch4", img_size=32), target="mean_color").parameters())
    param_bytes = 4 * sum(p.numel() for p in params)
    peak = out["peak_bytes"]
    assert (out["model"], out["batch_per_device"], out["image_size"]) == ("vit_nano_patch4", 8, 32)
    assert out["precision"] == "bf16" and out["parameters"] == param_bytes // 4
    assert peak["params"] == param_bytes and peak["optimizer"] == 2 * param_bytes + 4 * len(params)
    assert peak["total"] >= sum(v for k, v in peak.items() if k != "total")

    checkpointed = _estimate(capsys, *NANO, "--grad-checkpointing")["peak_bytes"]
    assert checkpointed["params"] == param_bytes and checkpointed["activations"] < 0.6 * peak["activations"]
    fp32 = _estimate(capsys, *NANO, "--precision", "fp32")["peak_bytes"]
    assert fp32["activations"] > peak["activations"]  # bf16 autocast keeps half-size matmul inputs


@pytest.mark.timeout(120)
def test_a_recipe_is_estimated_as_it_would_train(capsys):
    cfg = load_config(resolve_recipe("pretrain/smoke"), ["data.batch_size=4"])
    estimate = pretrain_step_memory(cfg)
    with torch.device("meta"):
        objective = MaskedPatchPrediction(create_model("vit_nano_patch4", img_size=32), **cfg.objective.kwargs)
    assert estimate["precision"] == "fp32"  # as the recipe says
    assert estimate["peak_bytes"] == step_peak_memory(objective, 4, 32, bf16=False)
    assert _estimate(capsys, "--config", "pretrain/smoke", "data.batch_size=4")["peak_bytes"] == estimate["peak_bytes"]

    assert cli.main(["estimate-memory", "--config", "pretrain/smoke", "--budget-gib", "0.0001"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("vit_nano_patch4 (") and "16 × 32px per device, fp32: peak " in text
    assert "does NOT fit in 0.0001 GiB" in text


def test_bad_flags_fail_with_one_line(capsys):
    assert cli.main(["estimate-memory", "--model", "vit_nano_patch5", "--batch", "8"]) == 2
    assert "unknown model 'vit_nano_patch5' (did you mean 'vit_nano_patch4'?)" in capsys.readouterr().err
