"""Preemption and resumption in real processes: kill -9 at a random step, then `--resume auto`, reproduces the
uninterrupted run's per-step losses and final weights exactly; SIGTERM checkpoints and exits 0."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from trainer_fixtures import REPO, cli_env, pretrain_command, run_pretrain, smoke_overrides

STEPS, EVERY = 50, 10
# drop_path_rate makes every step draw from the torch RNG besides the corruption: both must be restored.
RUN = {"train.total_steps": STEPS, "train.checkpoint_every": EVERY, "train.log_every": 1,
       "model.overrides.drop_path_rate": 0.1, "optim.warmup_steps": 5}


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def last_logged_step(metrics: Path) -> int:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except json.JSONDecodeError:  # a line being written
            continue
    return 0


def start_and_wait(command: list[str], metrics: Path, until_step: int, timeout: float = 90) -> subprocess.Popen:
    proc = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while last_logged_step(metrics) < until_step:
        assert proc.poll() is None, f"the run ended before step {until_step}:\n{proc.stdout.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    return proc


@pytest.mark.timeout(240)
def test_kill9_at_a_random_step_then_resume_reproduces_the_run_exactly(pretrain_shards: Path, tmp_path: Path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_pretrain(smoke_overrides(pretrain_shards, whole, **RUN), "--resume", "auto")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--resume auto: no checkpoint in" in done.stdout and "starting from step 0" in done.stdout

    seed = random.randrange(10**6)
    kill_at = random.Random(seed).randint(EVERY + 1, 3 * EVERY)  # after the first checkpoint, well before the end
    command = pretrain_command(smoke_overrides(pretrain_shards, killed, **RUN))
    proc = start_and_wait(command, killed / "metrics.jsonl", kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    reached = last_logged_step(killed / "metrics.jsonl")
    assert proc.returncode == -signal.SIGKILL and reached < STEPS, (seed, reached)
    expected_ckpt = killed / "checkpoints" / f"step_{reached // EVERY * EVERY:07d}"

    resumed = run_pretrain(smoke_overrides(pretrain_shards, killed, **RUN), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {expected_ckpt} at step {reached // EVERY * EVERY}" in resumed.stdout, (seed, resumed.stdout)

    assert losses(killed) == losses(whole), f"seed {seed}, killed after step {reached}"
    assert [s for s, _ in losses(whole)] == list(range(1, STEPS + 1))
    final = [torch.load(d / "checkpoints" / f"step_{STEPS:07d}" / "state.pt", weights_only=True) for d in (whole, killed)]
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key
    summaries = [json.loads((d / "ranks" / "rank0.json").read_text()) for d in (whole, killed)]
    assert summaries[0] == summaries[1]


@pytest.mark.timeout(120)
def test_sigterm_checkpoints_and_exits_zero_with_a_resume_line(pretrain_shards: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    overrides = smoke_overrides(pretrain_shards, run_dir, **{"train.total_steps": 2000, "train.log_every": 1})
    proc = start_and_wait(pretrain_command(overrides), run_dir / "metrics.jsonl", 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    step = last_logged_step(run_dir / "metrics.jsonl")
    path = run_dir / "checkpoints" / f"step_{step:07d}"
    assert f"stopped by SIGTERM at step {step}; checkpoint {path}." in out
    assert "Resume: run the same command with --resume auto" in out
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == path.name
    assert torch.load(path / "state.pt", weights_only=True)["step"] == step
