"""A run directory's files are the run's only when its manifest says so (or, for a run of an earlier ssl_vit,
their content): `--overwrite` deletes exactly those and keeps, and names, everything else; another tool's
`checkpoints/` is never a run; a symlinked `checkpoints/` trains, resumes and is emptied behind its link; a
refusal anywhere leaves every file as it was. Each test builds its hostile directory itself."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from trainer_fixtures import copy_of, run_pretrain, smoke_overrides, tree_digest

from ssl_vit import ownership
from ssl_vit.train.manifest import MANIFEST, RunOwnership

RUN = {"train.total_steps": 8, "train.checkpoint_every": 4, "train.log_every": 1, "optim.warmup_steps": 2}
SHORT = {**RUN, "train.total_steps": 4}
NOT_OURS = "not an ssl_vit run's"


@pytest.fixture(scope="module")
def shards(pretrain_shards_32: Path) -> Path:
    return pretrain_shards_32


@pytest.fixture(scope="module")
def finished_run(shards: Path, tmp_path_factory, pretrain) -> Path:
    """8 steps, checkpoints at 4 and 8 (each test changes a copy)."""
    run_dir = tmp_path_factory.mktemp("owned") / "run"
    assert pretrain(shards, run_dir, **RUN) == 0
    return run_dir


def refusal(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def as_earlier_version(run_dir: Path) -> None:
    """What a run of an ssl_vit before manifests looks like: no manifest, checkpoints without the data's identity."""
    (run_dir / MANIFEST).unlink()
    for state_file in run_dir.glob("checkpoints/step_*/state.pt"):
        state = torch.load(state_file, weights_only=True)
        state.pop("data", None)
        torch.save(state, state_file)


# ------------------------------------------------------------------------------------------ overwrite
def test_overwrite_deletes_the_runs_files_and_keeps_and_names_everything_else(finished_run, shards, tmp_path, capsys,
                                                                                pretrain):
    run_dir = copy_of(finished_run, tmp_path)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert manifest["entries"]["checkpoints"] == "folder" and manifest["entries"]["metrics.jsonl"] == "file"
    theirs = {run_dir / "a.txt": b"mine\n", run_dir / "notes" / "plan.md": b"# plan\n",
              run_dir / "checkpoints" / "model.ckpt": b"another tool's weights"}
    for path, data in theirs.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)

    assert pretrain(shards, run_dir, "--overwrite", **SHORT) == 0
    out = capsys.readouterr().out
    assert "kept: 3 files that are not this run's: a.txt, checkpoints/model.ckpt, notes/" in out
    assert f"{run_dir / 'checkpoints'}/{{latest, step_0000004, step_0000008}}" in out  # what went, listed
    assert all(path.read_bytes() == data for path, data in theirs.items())
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "model.ckpt", "step_0000004"]
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert "a.txt" not in json.loads((run_dir / MANIFEST).read_text())["entries"]


def test_an_unreadable_manifest_is_one_line_and_nothing_is_touched(finished_run, shards, tmp_path, capsys, pretrain):
    run_dir = copy_of(finished_run, tmp_path)
    (run_dir / MANIFEST).write_text("{not json")
    before = tree_digest(run_dir)
    line = refusal(capsys, pretrain(shards, run_dir, "--overwrite", **SHORT))
    assert f"{run_dir / MANIFEST}: not readable as ssl_vit's record of the run's files" in line
    assert tree_digest(run_dir) == before


# ------------------------------------------------------------------------------------------ not a run
def _lightning(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "epoch=3-step=100.ckpt").write_bytes(b"lightning")


def _step_dirs(run_dir: Path) -> None:
    """Looks like ours by name: step_N/state.pt and `latest`, but the state is another program's."""
    (run_dir / "checkpoints" / "step_0000100").mkdir(parents=True)
    torch.save({"epoch": 3, "model_state": {"w": torch.zeros(2)}}, run_dir / "checkpoints" / "step_0000100" / "state.pt")
    (run_dir / "checkpoints" / "latest").write_text("step_0000100\n")


def _ranks(run_dir: Path) -> None:
    (run_dir / "ranks").mkdir(parents=True)
    (run_dir / "ranks" / "rank0.json").write_text(json.dumps({"rank": 0, "hostname": "node1"}))


def _config(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 3\ntrainer: {max_epochs: 10}\n")


@pytest.mark.parametrize("build, named", [(_lightning, "checkpoints/"), (_step_dirs, "checkpoints/"),
                                          (_ranks, "ranks/"), (_config, "config.yaml")])
def test_another_tools_files_under_our_names_make_no_run(shards, tmp_path, capsys, pretrain, build, named):
    run_dir = tmp_path / "theirs"
    build(run_dir)
    (run_dir / "notes.txt").write_text("theirs\n")
    before = tree_digest(run_dir)
    for flags in ([], ["--overwrite"], ["--resume", "auto"]):
        line = refusal(capsys, pretrain(shards, run_dir, *flags, **SHORT))
        assert f"{run_dir} holds {named}, which is {NOT_OURS}" in line, (flags, line)
        assert "neither writes into nor deletes another tool's files, with or without --overwrite" in line
        assert tree_digest(run_dir) == before, flags


def test_a_run_of_an_earlier_version_is_recognised_by_its_content(finished_run, shards, tmp_path, capsys, pretrain):
    """No manifest, no data identity in its checkpoints: it resumes, gets its manifest, and --overwrite replaces it."""
    run_dir = copy_of(finished_run, tmp_path)
    as_earlier_version(run_dir)
    owned = RunOwnership.read(run_dir)
    assert owned.source == "content" and not owned.foreign
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "ranks"} <= set(owned.entries)

    assert pretrain(shards, run_dir, "--resume", "auto", **{**RUN, "train.total_steps": 10}) == 0
    assert "resumed from" in capsys.readouterr().out
    assert RunOwnership.read(run_dir).source == "manifest"

    as_earlier_version(run_dir)
    (run_dir / "mine.txt").write_text("mine\n")
    assert pretrain(shards, run_dir, "--overwrite", **SHORT) == 0
    assert "kept: 1 file that is not this run's: mine.txt" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", "step_0000004"]


def test_earlier_checkpoints_of_format_version_1_and_damaged_ones_are_ours(tmp_path):
    """A version-1 state.pt (no `format` key) is ours by content; one that cannot be read (truncated) is ours by the
    folder's shape, so resuming reports the damage instead of calling the run somebody else's."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_0000002").mkdir(parents=True)
    torch.save({"step": 2, "model": {}, "optimizer": {}, "scheduler": {}, "stream": {"segment": 2}},
               run_dir / "checkpoints" / "step_0000002" / "state.pt")
    assert RunOwnership.read(run_dir).entries == {"checkpoints": "folder"}
    (run_dir / "checkpoints" / "step_0000002" / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    (run_dir / "checkpoints" / "step_0000002" / "rng_rank0.pt").write_bytes(b"")
    assert RunOwnership.read(run_dir).entries == {"checkpoints": "folder"}
    (run_dir / "checkpoints" / "step_0000002" / "optimizer.bin").write_bytes(b"")  # not a file a run writes there
    assert RunOwnership.read(run_dir).foreign == ["checkpoints"]


def test_a_recipe_config_yaml_is_ours_and_another_yaml_is_not(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "vit_nano_patch4"}, "data": {}, "train": {}}))
    assert RunOwnership.read(run_dir).source == "content"
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": "resnet50", "lr": 0.1}))
    assert RunOwnership.read(run_dir).foreign == ["config.yaml"]


# ------------------------------------------------------------------------------------------ symlinked checkpoints/
def linked_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory whose checkpoints/ is a link to an empty folder on another disk."""
    disk = tmp_path / "scratch" / "ckpts"
    disk.mkdir(parents=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(disk, target_is_directory=True)
    return run_dir, disk


def test_a_symlinked_checkpoints_folder_trains_resumes_and_is_emptied_behind_its_link(shards, tmp_path, capsys, pretrain):
    run_dir, disk = linked_run(tmp_path)
    assert pretrain(shards, run_dir, **SHORT) == 0
    assert (disk / "step_0000004" / "state.pt").is_file() and (run_dir / "checkpoints").is_symlink()
    assert pretrain(shards, run_dir, "--resume", "auto", **RUN) == 0
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000004'} at step 4" in capsys.readouterr().out

    (disk / "README").write_text("the lab's scratch space\n")  # somebody else's file behind the link
    assert pretrain(shards, run_dir, "--overwrite", **SHORT) == 0
    assert "kept: 1 file that is not this run's: checkpoints/README" in capsys.readouterr().out
    assert (run_dir / "checkpoints").is_symlink() and (run_dir / "checkpoints").resolve() == disk.resolve()
    assert sorted(p.name for p in disk.iterdir()) == ["README", "latest", "step_0000004"]


def test_a_refused_overwrite_leaves_the_run_and_the_linked_disk_as_they_were(shards, tmp_path, capsys, pretrain,
                                                                             monkeypatch):
    """The old way deleted config.yaml and the logs, then failed inside checkpoints/. Now every path is checked
    first: a checkpoint that cannot be deleted, or a link to a disk that is not mounted, refuses before anything goes."""
    run_dir, disk = linked_run(tmp_path)
    assert pretrain(shards, run_dir, **RUN) == 0
    capsys.readouterr()
    locked = disk / "step_0000008"
    if os.geteuid() == 0:  # root may delete anything: stand in for a folder this user may not empty
        real = os.access
        monkeypatch.setattr(ownership.os, "access",
                            lambda p, mode, **kw: Path(p).resolve() != locked.resolve() and real(p, mode, **kw))
    else:
        locked.chmod(0o500)
    before = tree_digest(run_dir), tree_digest(disk)
    try:
        line = refusal(capsys, pretrain(shards, run_dir, "--overwrite", **SHORT))
    finally:
        locked.chmod(0o755)
    assert f"cannot delete {run_dir / 'checkpoints' / locked.name}" in line and "nothing was deleted" in line
    assert (tree_digest(run_dir), tree_digest(disk)) == before
    monkeypatch.undo()

    unmounted = disk.parent.rename(tmp_path / "elsewhere")
    before = tree_digest(run_dir), tree_digest(unmounted)
    for flags in (["--overwrite"], ["--resume", "auto"]):
        line = refusal(capsys, pretrain(shards, run_dir, *flags, **SHORT))
        assert f"{run_dir / 'checkpoints'} is a link to {disk}, which does not exist (a disk that is not mounted?)" in line
        assert (tree_digest(run_dir), tree_digest(unmounted)) == before


# ------------------------------------------------------------------------------------------ trackers
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_fresh_run_after_overwrite_opens_fresh_wandb_and_mlflow_runs(pretrain_shards: Path, tmp_path: Path,
                                                                        monkeypatch):
    """trackers.json and W&B's offline folder are the run's: --overwrite deletes them, so the new run does not
    continue the old W&B and MLflow runs (whose histories would mix two trainings)."""
    import mlflow

    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": f"file:{store}",
           "MLFLOW_ALLOW_FILE_STORE": "true"}
    settings = {"train.total_steps": 2, "train.checkpoint_every": 2, "optim.warmup_steps": 1,
                "train.log_with": "[wandb,mlflow]", "train.project": "owned"}
    ids = []
    for flags in ([], ["--overwrite"]):
        done = run_pretrain(smoke_overrides(pretrain_shards, run_dir, **settings), *flags, timeout=200, **env)
        assert done.returncode == 0, done.stderr[-3000:]
        ids.append(json.loads((run_dir / "trackers.json").read_text()))
    assert ids[0]["wandb"] != ids[1]["wandb"] and ids[0]["mlflow"] != ids[1]["mlflow"]
    assert json.loads((run_dir / MANIFEST).read_text())["entries"]["wandb"] == "tracker"
    segments = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 1 and segments[0].endswith(ids[1]["wandb"])  # the old run's folder went with it

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(f"file:{store}")
    runs = client.search_runs([client.get_experiment_by_name("owned").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([ids[0]["mlflow"], ids[1]["mlflow"]])
