"""`ssl-vit export`: a run's backbone alone, timm layout, loads strictly into create_model with identical outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssl_vit import create_model
from ssl_vit.cli import main
from ssl_vit.models.weights import load_backbone


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, pretrain_shards_32: Path, pretrain) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    overrides = {"train.total_steps": 6, "optim.warmup_steps": 2, "train.checkpoint_every": 3,
                 "model.overrides.global_pool": "avg"}
    assert pretrain(pretrain_shards_32, run, **overrides) == 0
    return run


def test_export_round_trip_is_strict_and_exact(run_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "backbone.safetensors"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["model"]["embed_dim"] == 64 and info["model"]["global_pool"] == "avg" and info["step"] == 6
    assert info["train_seed"] == 0  # the smoke recipe's train.seed: `eval --baseline random` rebuilds the init from it
    from ssl_vit.eval.backbones import resolve_backbone

    assert resolve_backbone(str(out), seed=5).random_baseline(5).seed == 0

    tensors = load_file(str(out))
    assert not any(k.startswith(("backbone.", "module.", "_orig_mod.")) or k == "mask_token" for k in tensors)
    model = create_model("vit_nano_patch4", img_size=32, global_pool="avg")
    model.load_state_dict(tensors, strict=True)  # exactly the timm-layout keys, nothing missing or extra

    # Reference: the backbone weights straight from the checkpoint's objective state.
    state = torch.load(run_dir / "checkpoints" / "step_0000006" / "state.pt", weights_only=True)
    reference = create_model("vit_nano_patch4", img_size=32, global_pool="avg")
    reference.load_state_dict({k.removeprefix("backbone."): v for k, v in state["model"].items()
                               if k.startswith("backbone.")}, strict=True)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(images), reference.forward_features(images))
        assert torch.equal(load_backbone(out).eval().forward_features(images), reference.forward_features(images))

    # A checkpoint directory exports the same weights as its run directory (whose latest it is).
    again = tmp_path / "from_checkpoint.safetensors"
    assert main(["export", str(run_dir / "checkpoints" / "step_0000006"), str(again)]) == 0
    assert all(torch.equal(v, load_file(str(again))[k]) for k, v in tensors.items())
    older = tmp_path / "step3.safetensors"
    assert main(["export", str(run_dir / "checkpoints" / "step_0000003"), str(older)]) == 0
    assert not torch.equal(load_file(str(older))["pos_embed"], tensors["pos_embed"])


@pytest.mark.parametrize("source, output, message", [
    ("{run}", "{tmp}/b.pt", "the export is a .safetensors file; use"),
    ("{tmp}/nowhere", "{tmp}/b.safetensors", "no such run or checkpoint directory"),
    ("{tmp}", "{tmp}/b.safetensors", "no checkpoint there"),
])
def test_export_errors_are_one_line(run_dir: Path, tmp_path: Path, capsys, source, output, message):
    args = [s.format(run=run_dir, tmp=tmp_path) for s in (source, output)]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
