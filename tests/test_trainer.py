"""The trainer on real shards and the real MPP objective: it learns, logs, skips non-finite steps, and its
checkpoints are atomic and weights-only loadable. Runs in-process through `ssl_vit.cli.main`."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from run_records import records

from ssl_vit.models import create_model
from ssl_vit.objectives import build
from ssl_vit.objectives.mpp import MaskedPatchPrediction
from ssl_vit.train import checkpoint as ckpt
from ssl_vit.train.optim import lr_factor, param_groups


# --------------------------------------------------------------------------------------------------- units
def test_lr_schedule_warmup_then_cosine_to_min():
    f = lambda s: lr_factor(s, total_steps=110, warmup_steps=10, schedule="cosine", min_ratio=0.1)  # noqa: E731
    assert [f(0), f(4), f(9)] == [0.1, 0.5, 1.0]  # linear warmup: (step + 1) / 10
    assert f(10) == 1.0
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine: the mean of lr and min_lr
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert lr_factor(50, total_steps=110, warmup_steps=10, schedule="constant", min_ratio=0.1) == 1.0


def test_no_weight_decay_on_norms_biases_positions_and_tokens():
    objective = build("mpp", create_model("vit_nano_patch4"))
    decay, no_decay = param_groups(objective, 0.1)
    names = {id(p): n for n, p in objective.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token", "mask_token", "backbone.norm.weight",
            "backbone.blocks.0.attn.qkv.bias"} <= exempt
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert "backbone.patch_embed.proj.weight" in decayed and "backbone.blocks.1.mlp.fc2.weight" in decayed
    assert decayed | exempt == set(names.values()) and (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.timeout(120)
def test_smoke_recipe_learns_and_logs_every_step(pretrain_shards: Path, tmp_path: Path, pretrain):
    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **{"train.total_steps": 80, "train.log_every": 1, "train.checkpoint_every": 40}) == 0
    log = records(run_dir)
    assert [r["step"] for r in log] == list(range(1, 81))
    first, last = (sum(r["loss"] for r in part) / 20 for part in (log[:20], log[-20:]))
    assert last < first - 0.5, (first, last)  # ln 512 ≈ 6.24 at the start: chance among 512 colours
    assert log[0]["loss"] == pytest.approx(math.log(512), abs=0.3)
    # The rate each step used: warmup (step / 10) × 1e-3, then cosine towards min_lr 1e-5.
    assert [r["lr"] for r in log[:3]] == pytest.approx([1e-4, 2e-4, 3e-4])
    assert log[-1]["lr"] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 69 / 70)))
    for key in ("images_per_s", "data_wait_s", "skipped_samples", "nonfinite_skipped", "epoch", "acc"):
        assert key in log[-1]
    assert log[-1]["epoch"] == pytest.approx(80 * 16 / 48) and log[-1]["nonfinite_skipped"] == 0
    assert "mfu" not in log[-1]  # CPU: no peak table entry
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000080"
    # Every file of a checkpoint loads weights-only, and holds what a resume needs.
    for step in (40, 80):
        path = run_dir / "checkpoints" / ckpt.checkpoint_name(step)
        state = torch.load(path / "state.pt", weights_only=True)
        assert state["step"] == step and state["feed"]["order"] == "global-1" and state["version"] == 2 and state["world_size"] == 1
        assert state["config"]["model"]["name"] == "vit_nano_patch4" and state["accumulation"] == 1
        assert "backbone.pos_embed" in state["model"] and "mask_token" in state["model"]
        assert state["optimizer"]["state"]["mask_token"]["step"].item() == step
        assert state["scheduler"]["last_epoch"] == step
        rank_state = torch.load(path / "rng_rank0.pt", weights_only=True)
        assert set(rank_state["rng"]) >= {"python", "numpy", "torch"}
        assert rank_state["feed"] == {}  # the global order: a step says where the data stand


def inject_nan(monkeypatch, steps: set[int]) -> None:
    """Make the MPP objective's loss NaN at the given steps (the smoke recipe takes one micro-batch per step)."""
    forward = MaskedPatchPrediction.forward
    calls = {"n": 0}

    def nan_at_steps(self, *args, **kwargs):
        loss, metrics = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in steps:
                loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(MaskedPatchPrediction, "forward", nan_at_steps)


@pytest.mark.timeout(60)
def test_injected_nan_skips_the_update_and_is_counted(pretrain_shards: Path, tmp_path: Path, pretrain, monkeypatch):
    inject_nan(monkeypatch, {5})
    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **{"train.total_steps": 7, "optim.warmup_steps": 2, "train.log_every": 1,
                                                "train.checkpoint_every": 1, "train.keep_last": 10}) == 0
    log = records(run_dir)
    assert [r["loss"] is None for r in log] == [False] * 4 + [True] + [False] * 2
    assert [r["nonfinite_skipped"] for r in log] == [0, 0, 0, 0, 1, 1, 1]
    states = {s: torch.load(run_dir / "checkpoints" / ckpt.checkpoint_name(s) / "state.pt", weights_only=True)
              for s in (4, 5, 6)}
    for key, value in states[4]["model"].items():  # the skipped update changed nothing …
        assert torch.equal(value, states[5]["model"][key]), key
    assert states[5]["optimizer"]["state"]["mask_token"]["step"].item() == 4  # … not even AdamW's step count
    assert not torch.equal(states[5]["model"]["mask_token"], states[6]["model"]["mask_token"])  # step 6 updates again
    assert all(torch.isfinite(v).all() for v in states[6]["model"].values())


@pytest.mark.timeout(60)
def test_nonfinite_streak_stops_naming_the_last_good_checkpoint(pretrain_shards, tmp_path, pretrain, monkeypatch, capsys):
    inject_nan(monkeypatch, {3, 4, 5})
    run_dir = tmp_path / "run"
    rc = pretrain(pretrain_shards, run_dir, **{"train.total_steps": 9, "optim.warmup_steps": 2, "train.log_every": 1,
                                              "train.checkpoint_every": 2, "train.max_nonfinite": 3})
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    assert err.startswith("error: 3 non-finite losses in a row (up to step 5, max_nonfinite=3)")
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step_0000002'}" in err


@pytest.mark.timeout(60)
def test_failed_publish_of_latest_stops_with_the_previous_checkpoint_named(pretrain_shards, tmp_path, pretrain,
                                                                           monkeypatch, capsys):
    """The disk fills while `latest` is being replaced: the run stops with one line, `latest` intact."""
    run_dir = tmp_path / "run"
    real_publish = ckpt._publish
    calls = {"n": 0}

    def failing_publish(tmp: Path, final: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            os.replace(tmp, final)  # the directory made it into place; the pointer did not
            raise OSError(28, "No space left on device")
        real_publish(tmp, final)

    monkeypatch.setattr(ckpt, "_publish", failing_publish)
    overrides = {"train.total_steps": 6, "optim.warmup_steps": 2, "train.log_every": 1, "train.checkpoint_every": 2}
    assert pretrain(pretrain_shards, run_dir, **overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    root = run_dir / "checkpoints"
    assert f"could not write checkpoint {root / 'step_0000004'}" in err and "No space left on device" in err
    assert (root / "latest").read_text().strip() == "step_0000002"


@pytest.mark.timeout(60)
def test_failed_checkpoint_write_leaves_latest_at_the_previous_one(pretrain_shards, tmp_path, pretrain, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    real_write = ckpt._write
    calls = {"state": 0}

    def failing_write(obj, path: Path) -> None:
        if path.name == ckpt.STATE_FILE:
            calls["state"] += 1
            if calls["state"] == 2:  # the second checkpoint: half a file, then the disk is full
                path.write_bytes(b"PK\x03\x04 truncated")
                raise OSError(28, "No space left on device")
        real_write(obj, path)

    monkeypatch.setattr(ckpt, "_write", failing_write)
    overrides = {"train.total_steps": 6, "optim.warmup_steps": 2, "train.log_every": 1, "train.checkpoint_every": 2}
    assert pretrain(pretrain_shards, run_dir, **overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    root = run_dir / "checkpoints"
    assert f"could not write checkpoint {root / 'step_0000004'}" in err and "No space left on device" in err
    assert f"`latest` still names {root / 'step_0000002'}" in err
    assert (root / "latest").read_text().strip() == "step_0000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002"]  # no half-written directory left

    monkeypatch.setattr(ckpt, "_write", real_write)
    assert pretrain(pretrain_shards, run_dir, "--resume", "auto", **overrides) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in records(run_dir)] == [1, 2, 3, 4, 5, 6]  # steps 3–4 re-run, logged once
    assert (root / "latest").read_text().strip() == "step_0000006"


@pytest.mark.timeout(120)
def test_tensorboard_tracker_receives_the_logged_metrics(pretrain_shards: Path, tmp_path: Path, pretrain):
    """`train.log_with=[tensorboard]` goes through Accelerate's tracker: event files with the same scalars."""
    from tensorboard_reader import read_scalars

    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **{"train.total_steps": 4, "train.log_every": 2, "train.checkpoint_every": 4,
                                                "train.log_with": "[tensorboard]", "optim.warmup_steps": 1}) == 0
    scalars = read_scalars(run_dir)
    logged = {r["step"]: r["loss"] for r in records(run_dir)}
    assert sorted(scalars["loss"]) == [2, 4]
    assert scalars["loss"] == pytest.approx(logged, rel=1e-6)
    assert "lr" in scalars and "images_per_s" in scalars


@pytest.mark.timeout(120)
def test_evaluators_run_during_pretraining_and_are_logged(tmp_path: Path, pretrain):
    """`eval.every` + `eval.evaluators`: kNN and few-shot on the live backbone, logged to eval.jsonl."""
    from eval_fixtures import write_dataset

    data = write_dataset(tmp_path / "labelled", train_per_class=8, test_per_class=4)
    run_dir = tmp_path / "run"
    assert pretrain(data, run_dir, **{
        "data.split": "train", "data.val": str(data), "data.val_split": "validation",
        "train.total_steps": 4, "train.checkpoint_every": 4, "optim.warmup_steps": 1, "eval.every": 2,
        "eval.evaluators": "[{name: knn, k: [3]}, {name: fewshot, shots: [1, 2], seeds: 1, val_per_class: 1}]",
        "eval.crop_pct": 1.0, "eval.num_workers": 0,
    }) == 0
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4]
    for record in evals:
        assert 0.0 <= record["knn/k3_top1"] <= 100.0
        assert 0.0 <= record["fewshot/2shot"] <= 100.0


@pytest.mark.timeout(120)
def test_mfu_is_logged_from_the_objectives_analytic_flops(pretrain_shards: Path, tmp_path: Path, pretrain, monkeypatch):
    """On a GPU of the peak table each record carries `mfu`; here the table is pretended to know the CPU."""
    from ssl_vit.models import create_model
    from ssl_vit.objectives import build
    from ssl_vit.train import metrics

    monkeypatch.setattr(metrics, "device_peak_flops", lambda device, precision="bf16": 1e12)
    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **{"train.total_steps": 2, "train.log_every": 1, "train.checkpoint_every": 2,
                                                "optim.warmup_steps": 1}) == 0
    flops = build("mpp", create_model("vit_nano_patch4"), target="mean_color").flops_per_image()
    for record in records(run_dir):
        assert record["mfu"] == pytest.approx(record["images_per_s"] * flops / 1e12, rel=1e-6)


def test_peak_flops_table_matches_device_names():
    from ssl_vit.train.metrics import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12 and peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12 and peak_flops("Tesla T4", "bf16") is None


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
HOST_SIDE_FILES = ("ssl_vit/data/", "ssl_vit/train/agreement.py", "ssl_vit/train/feed.py")
# CPU tensors by design: decoding, gloo flags, the loader batches' worker positions the feed notes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_no_host_device_synchronisation_inside_a_step(precision: str, pretrain_shards: Path, tmp_path: Path, pretrain,
                                                      monkeypatch):
    """Between logged steps no code of ours reads a tensor's value back on the host (`.item()`, `bool(t)`, …):
    objective, model, optimizer wrapper, NaN skip, gradient clipping, accumulation and fp16's loss scaling all
    stay on the device;
    the window is reduced and read once per logged step. Host-side tensors (decoded batches, the gloo stop flags)
    are exempt. Watched in a CPU run by patching the Tensor methods that would synchronise on a GPU."""
    from ssl_vit.train import trainer as trainer_module

    inside_step = [False]
    loader_tensors: dict[int, torch.Tensor] = {}  # the batches as the loader hands them over (kept: ids stay unique)
    reads: list[str] = []  # reads by our code inside a step
    logged_reads = [0]  # reads by our code outside the steps: proves the watch works

    def watch(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace(os.sep, "/")
            host_side = id(self) in loader_tensors or any(part in caller for part in HOST_SIDE_FILES)
            if "/ssl_vit/" in caller and not host_side:
                if inside_step[0]:
                    reads.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
                else:
                    logged_reads[0] += 1
            return original(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, watch(name))
    original_step = trainer_module.Trainer._step

    def step(self, *args, **kwargs):
        inside_step[0] = True
        try:
            return original_step(self, *args, **kwargs)
        finally:
            inside_step[0] = False

    from ssl_vit.train.feed import DataFeed

    original_next_batch = DataFeed.next

    def next_batch(self, *args, **kwargs):
        batch, stopping = original_next_batch(self, *args, **kwargs)
        loader_tensors.update((id(v), v) for v in batch.values() if torch.is_tensor(v))
        return batch, stopping

    monkeypatch.setattr(trainer_module.Trainer, "_step", step)
    monkeypatch.setattr(DataFeed, "next", next_batch)
    run_dir = tmp_path / "run"
    assert pretrain(pretrain_shards, run_dir, **{"train.total_steps": 4, "train.log_every": 4, "train.checkpoint_every": 4,
                                                "train.global_batch": 32, "optim.grad_clip": 1.0, "train.precision": precision,
                                                "optim.warmup_steps": 1}) == 0
    assert reads == []
    assert logged_reads[0] > 0
    assert len(records(run_dir)) == 1 and math.isfinite(records(run_dir)[0]["loss"])


@pytest.mark.timeout(240)
def test_compiled_training_matches_eager_and_checkpoints_plain_names(pretrain_shards: Path, tmp_path: Path, pretrain):
    """`train.compile=true` (inductor, as on a GPU): the same per-step losses as eager within float tolerance,
    and checkpoints keyed by the model's own names (no `_orig_mod.` prefix), so they load anywhere. Inductor
    draws random numbers its own way (the corruption would differ), so here it is told to draw as eager does."""
    import torch._inductor.config as inductor_config

    settings = {"train.total_steps": 4, "train.log_every": 1, "train.checkpoint_every": 4, "optim.warmup_steps": 2}
    assert pretrain(pretrain_shards, tmp_path / "eager", **settings) == 0
    with inductor_config.patch(fallback_random=True):  # the config's own patcher restores it exactly
        assert pretrain(pretrain_shards, tmp_path / "compiled", **settings, **{"train.compile": "true"}) == 0
    eager, compiled = records(tmp_path / "eager"), records(tmp_path / "compiled")
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-4)
    state = torch.load(tmp_path / "compiled" / "checkpoints" / ckpt.checkpoint_name(4) / "state.pt", weights_only=True)
    assert set(state["model"]) == set(build("mpp", create_model("vit_nano_patch4"), target="mean_color").state_dict())
