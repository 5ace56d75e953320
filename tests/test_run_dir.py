"""A run directory's history is never lost or mixed: each fault is built here (delete `latest`, point it at a
missing step, rerun without --resume, resume with another model, change the rate on resume), and every refused
command must leave the directory byte for byte as it was."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from run_records import read_jsonl as records
from trainer_fixtures import copy_of, tree_digest
from weights_fixtures import RunsCode

from ssl_vit.config import FinetuneConfig, PretrainConfig, schema_keys
from ssl_vit.train import trainer as trainer_module
from ssl_vit.train.optim import lr_factor
from ssl_vit.train.recipe_changes import CHANGEABLE, FIXED, recipe_changes, rule

RUN = {"train.total_steps": 8, "train.checkpoint_every": 4, "train.log_every": 1, "optim.warmup_steps": 2}


@pytest.fixture(scope="module")
def shards(pretrain_shards_32: Path) -> Path:
    return pretrain_shards_32


@pytest.fixture(scope="module")
def finished_run(shards: Path, tmp_path_factory, pretrain) -> Path:
    """A run of 8 steps with checkpoints at 4 and 8 (copied by each test that changes it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert pretrain(shards, run_dir, **RUN) == 0
    return run_dir


def refused(capsys, run_dir: Path, rc: int, before: dict) -> str:
    """The one error line of a refused command, after checking it changed nothing in `run_dir`."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert tree_digest(run_dir) == before, "a refused command changed the run directory"
    return lines[0]


# ------------------------------------------------------------------------------------------ latest is broken
def test_resume_without_latest_refuses_and_names_the_intact_checkpoints(finished_run, shards, tmp_path, capsys,
        pretrain):
    run_dir = copy_of(finished_run, tmp_path)
    (run_dir / "checkpoints" / "latest").unlink()
    before = tree_digest(run_dir)
    line = refused(capsys, run_dir, pretrain(shards, run_dir, "--resume", "auto", **RUN), before)
    newest = run_dir / "checkpoints" / "step_0000008"
    assert f"{run_dir / 'checkpoints' / 'latest'} is missing" in line
    assert "intact checkpoints: step_0000004, step_0000008" in line and f"--resume {newest}" in line


def test_latest_naming_a_deleted_step_refuses_then_resume_path_continues_from_the_one_left(finished_run, shards, tmp_path, capsys,
        pretrain):
    """The natural way there: an error names a damaged step directory, the user deletes it, then resumes."""
    run_dir = copy_of(finished_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "step_0000008")
    before = tree_digest(run_dir)
    line = refused(capsys, run_dir, pretrain(shards, run_dir, "--resume", "auto", **RUN), before)
    step4 = run_dir / "checkpoints" / "step_0000004"
    assert "names step_0000008, which does not exist" in line and f"--resume {step4}" in line

    assert pretrain(shards, run_dir, "--resume", str(step4), **RUN) == 0
    assert f"resumed from {step4} at step 4" in capsys.readouterr().out
    assert [r["step"] for r in records(run_dir / "metrics.jsonl")] == list(range(1, 9))  # 5..8 logged once
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000008"


def test_resume_from_an_earlier_checkpoint_needs_overwrite_to_replace_the_later_ones(finished_run, shards, tmp_path, capsys,
        pretrain):
    run_dir = copy_of(finished_run, tmp_path)
    step4, step8 = (run_dir / "checkpoints" / f"step_000000{s}" for s in (4, 8))
    old8 = torch.load(step8 / "state.pt", weights_only=True)["model"]
    before = tree_digest(run_dir)
    line = refused(capsys, run_dir, pretrain(shards, run_dir, "--resume", str(step4), **RUN), before)
    assert "holds later checkpoints (step_0000008)" in line and "--overwrite" in line

    assert pretrain(shards, run_dir, "--resume", str(step4), "--overwrite", **RUN) == 0
    assert f"--overwrite: deleting {step8}" in capsys.readouterr().out
    new8 = torch.load(step8 / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(old8[k], new8[k]) for k in old8)  # same recipe, same steps: the same weights again


# ------------------------------------------------------------------------------------------ fresh starts
def test_a_fresh_start_in_a_run_directory_is_refused_without_overwrite(finished_run, shards, tmp_path, capsys,
        pretrain):
    run_dir = copy_of(finished_run, tmp_path)
    before = tree_digest(run_dir)
    line = refused(capsys, run_dir, pretrain(shards, run_dir, **{**RUN, "optim.lr": 0.01}), before)
    assert "already holds a run (latest checkpoint step_0000008)" in line and "--resume auto" in line
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 1e-3  # not the refused recipe

    assert pretrain(shards, run_dir, "--overwrite", **{**RUN, "train.total_steps": 4}) == 0
    out = capsys.readouterr().out
    assert "--overwrite: deleting" in out and str(run_dir / "checkpoints") in out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_0000004"]
    assert [r["step"] for r in records(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not (run_dir / "ranks" / "rank0.json").read_text() == ""


def test_a_resume_that_changes_the_model_is_refused_naming_the_key_and_both_values(finished_run, shards, tmp_path, capsys,
        pretrain):
    run_dir = copy_of(finished_run, tmp_path)
    before = tree_digest(run_dir)
    rc = pretrain(shards, run_dir, "--resume", "auto", **{**RUN, "train.total_steps": 12, "model.overrides.depth": 3})
    line = refused(capsys, run_dir, rc, before)
    assert "model.overrides.depth is 3 but the checkpoint" in line and "was trained with None" in line
    rc = pretrain(shards, run_dir, "--resume", "auto", **{**RUN, "train.total_steps": 12, "train.seed": 1})
    assert "train.seed is 1 but the checkpoint" in refused(capsys, run_dir, rc, before)


def test_an_output_dir_that_is_a_file_is_one_line(shards, tmp_path, capsys, pretrain):
    target = tmp_path / "taken"
    target.write_text("not a directory\n")
    line = refused(capsys, tmp_path, pretrain(shards, target, **RUN), tree_digest(tmp_path))
    assert str(target) in line and "is a file" in line  # the recipe loader's check; the trainer's make_dir is the net


# ------------------------------------------------------------------------------------------ changing the recipe
def test_a_changed_rate_weight_decay_and_betas_take_effect_at_the_resumed_step(finished_run, shards, tmp_path, capsys,
        monkeypatch, pretrain):
    """The NaN error's advice ("lower optim.lr, then resume") must act: the rate, weight decay and betas the
    optimizer actually uses after resuming are the new recipe's, on the new schedule's length."""
    run_dir = copy_of(finished_run, tmp_path)
    used: list[list[tuple]] = []
    original = trainer_module.step_unless

    def recording(optimizer, skip):
        inner = getattr(optimizer, "optimizer", optimizer)
        used.append([(g["lr"], g["weight_decay"], tuple(g["betas"])) for g in inner.param_groups])
        return original(optimizer, skip)

    monkeypatch.setattr(trainer_module, "step_unless", recording)
    new = {**RUN, "train.total_steps": 12, "optim.lr": 1e-4, "optim.weight_decay": 0.01, "optim.betas": "[0.8,0.9]"}
    assert pretrain(shards, run_dir, "--resume", "auto", **new) == 0
    out = capsys.readouterr().out
    assert out.count("the recipe changed on resume") == 1
    assert "optim.lr: 0.001 → 0.0001" in out and "train.total_steps: 8 → 12" in out

    min_ratio = 1e-5 / 1e-4  # smoke.yaml's min_lr over the new rate
    expected = [1e-4 * lr_factor(s, total_steps=12, warmup_steps=2, schedule="cosine", min_ratio=min_ratio) for s in range(8, 12)]
    assert [groups[0][0] for groups in used] == pytest.approx(expected, rel=1e-12)
    assert all(groups[0][0] == groups[1][0] for groups in used)
    assert {groups[0][1:] for groups in used} == {(0.01, (0.8, 0.9))}  # decayed group
    assert {groups[1][1:] for groups in used} == {(0.0, (0.8, 0.9))}  # exempt group keeps no decay
    logged = {r["step"]: r["lr"] for r in records(run_dir / "metrics.jsonl")}
    assert [logged[s] for s in range(9, 13)] == pytest.approx(expected, rel=1e-12)

    resumes = records(run_dir / "resumes.jsonl")
    assert len(resumes) == 1 and resumes[0]["step"] == 8
    assert resumes[0]["changed"]["optim.lr"] == [1e-3, 1e-4] and resumes[0]["changed"]["optim.betas"] == [[0.9, 0.999], [0.8, 0.9]]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 1e-4


def test_every_recipe_key_is_decided_changeable_or_fixed():
    listed = CHANGEABLE + FIXED
    keys = schema_keys(PretrainConfig) + schema_keys(FinetuneConfig)
    undecided = [k for k in keys if not any(k == name or k.startswith(name + ".") for name in listed)]
    assert undecided == [], f"decide these keys in ssl_vit/train/recipe_changes.py: {undecided}"
    assert rule("optim.lr") == "changeable" and rule("model.overrides.depth") == "fixed"
    assert rule("eval.evaluators") == "changeable" and rule("data.shuffle_buffer") == "fixed"
    assert recipe_changes({"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}}, {"optim": {"lr": 0.001, "betas": (0.9, 0.99)}}, "x") == {}


# ------------------------------------------------------------------------------------------ files read back

@pytest.mark.parametrize("tamper", ["code", "wrong shape"])
def test_a_tampered_rng_state_is_one_line_and_runs_no_code(finished_run, shards, tmp_path, capsys, tamper,
                                                                   pretrain):
    run_dir = copy_of(finished_run, tmp_path)
    rng_file = run_dir / "checkpoints" / "step_0000008" / "rng_rank0.pt"
    marker = tmp_path / "pwned"
    torch.save(RunsCode(marker) if tamper == "code" else {"python": 1, "torch": torch.zeros(3)}, rng_file)
    before = tree_digest(run_dir)
    line = refused(capsys, run_dir, pretrain(shards, run_dir, "--resume", "auto", **{**RUN, "train.total_steps": 12}), before)
    assert str(rng_file) in line and not marker.exists()
    if tamper == "code":
        assert "refusing to load: unpickling it would run code" in line
    else:
        assert "not an RNG state written by ssl-vit pretrain" in line and "delete the checkpoint's rng_rank*.pt" in line
