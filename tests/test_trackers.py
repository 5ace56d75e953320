"""Trackers follow a run across a resume: `train.project` and `train.run_name` (default: the run directory's name)
reach W&B (offline) and MLflow (a local file store), and `--resume auto` continues the same W&B and MLflow runs,
whose histories then hold every step once, equal to metrics.jsonl."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from background import Background, selected
from trainer_fixtures import cli_env, pretrain_command, run_pretrain, smoke_overrides
from wandb_reader import read_run

RUN = {"train.log_every": 1, "train.checkpoint_every": 2, "optim.warmup_steps": 1,
       "train.log_with": "[wandb,mlflow]", "train.project": "mpp-trackers"}
CANNOT_START_TEST = "test_a_tracker_that_cannot_start_is_one_line_naming_its_settings"


@pytest.fixture(scope="module", autouse=True)
def tracker_that_cannot_start(request, pretrain_shards: Path, tmp_path_factory) -> Iterator[Background | None]:
    """The run of the last test starts with the module and runs while the resumed-run test's two runs do (each
    run is one process at one thread); that test collects it."""
    if not selected(request, CANNOT_START_TEST):
        yield None
        return
    tmp = tmp_path_factory.mktemp("tracker_cannot_start")
    overrides = {**RUN, "train.total_steps": 2, "train.log_with": "[mlflow]"}
    run = Background(pretrain_command(smoke_overrides(pretrain_shards, tmp / "run", **overrides)), tmp / "pretrain",
                     env=cli_env(MLFLOW_TRACKING_URI=f"file:{tmp / 'mlruns'}", MLFLOW_ALLOW_FILE_STORE="false"))
    yield run
    run.kill()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_resumed_run_continues_the_same_wandb_and_mlflow_runs(pretrain_shards: Path, tmp_path: Path, monkeypatch):
    run_dir, store = tmp_path / "vit-nano-7", tmp_path / "mlruns"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": f"file:{store}",
           "MLFLOW_ALLOW_FILE_STORE": "true"}
    for steps in (4, 6):
        done = run_pretrain(smoke_overrides(pretrain_shards, run_dir, **RUN, **{"train.total_steps": steps}),
                            "--resume", "auto", timeout=200, **env)
        assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads((run_dir / "trackers.json").read_text())
    logged = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(f"file:{store}")
    experiment = client.get_experiment_by_name("mpp-trackers")
    (run,) = client.search_runs([experiment.experiment_id])  # one run, not one per segment
    assert run.info.run_id == ids["mlflow"] and run.info.run_name == "vit-nano-7"
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(logged)
    assert run.data.params["train.project"] == "mpp-trackers"

    segments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(s.name.endswith(ids["wandb"]) for s in segments)
    rows = []
    for segment in segments:
        record, history = read_run(segment / f"run-{ids['wandb']}.wandb")
        assert (record.project, record.run_id, record.display_name) == ("mpp-trackers", ids["wandb"], "vit-nano-7")
        rows += [r for r in history if "loss" in r]
    assert {r["_step"]: r["loss"] for r in rows} == pytest.approx(logged) and len(rows) == 6


def test_a_tracker_that_cannot_start_is_one_line_naming_its_settings(tracker_that_cannot_start):
    done = tracker_that_cannot_start.finish(timeout=120)
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "train.log_with=['mlflow']: a tracker failed to start (MlflowException" in line
    assert "Traceback" not in done.stderr
