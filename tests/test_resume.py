"""Preemption and resumption in real processes: kill -9 at a random step, then `--resume auto`, reproduces the
uninterrupted run's per-step losses and final weights exactly; SIGTERM checkpoints and exits 0."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from background import Background
from run_records import last_logged_step, losses
from trainer_fixtures import (LAUNCH_CONFIG, REPO, cli_env, free_port, pretrain_command, run_pretrain, smoke_overrides,
                              start_and_wait)

STEPS, EVERY = 50, 10
# drop_path_rate makes every step draw from the torch RNG besides the corruption: both must be restored.
RUN = {"train.total_steps": STEPS, "train.checkpoint_every": EVERY, "train.log_every": 1,
       "model.overrides.drop_path_rate": 0.1, "optim.warmup_steps": 5}


@pytest.mark.timeout(240)
def test_kill9_at_a_random_step_then_resume_reproduces_the_run_exactly(pretrain_shards: Path, tmp_path: Path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # The uninterrupted run and the one to be killed are independent: they run at once (each uses one core).
    uninterrupted = Background(pretrain_command(smoke_overrides(pretrain_shards, whole, **RUN), "--resume", "auto"),
                               tmp_path / "whole")

    seed = random.randrange(10**6)
    kill_at = random.Random(seed).randint(EVERY + 1, 3 * EVERY)  # after the first checkpoint, well before the end
    command = pretrain_command(smoke_overrides(pretrain_shards, killed, **RUN))
    proc = start_and_wait(command, killed / "metrics.jsonl", kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    reached = last_logged_step(killed / "metrics.jsonl")
    assert proc.returncode == -signal.SIGKILL and reached < STEPS, (seed, reached)
    expected_ckpt = killed / "checkpoints" / f"step_{reached // EVERY * EVERY:07d}"

    done = uninterrupted.finish(timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--resume auto: no checkpoint in" in done.stdout and "starting from step 0" in done.stdout

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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_signal_between_checkpoints_then_resume_reproduces_the_run_exactly_2_processes_2_workers(pretrain_shards,
                                                                                                   tmp_path):
    """SIGUSR1 at a random step to `ssl-vit launch accelerate launch` (2 processes × 2 loader workers): the
    checkpoint lands between scheduled ones, the resumed run fast-forwards every worker's stream to the batches
    consumed, and its per-step losses and final weights equal the uninterrupted run's."""
    steps, every = 24, 10
    run = {"train.total_steps": steps, "train.checkpoint_every": every, "train.log_every": 1, "data.batch_size": 4,
           "data.num_workers": 2, "data.shuffle_buffer": 8, "optim.warmup_steps": 3}

    def command(run_dir: Path, *args: str) -> list[str]:
        bin_dir = Path(sys.executable).parent
        return [str(bin_dir / "ssl-vit"), "launch", str(bin_dir / "accelerate"), "launch", "--config_file",
                str(LAUNCH_CONFIG), "--main_process_port", str(free_port()), "-m", "ssl_vit", "pretrain",
                "--config", str(REPO / "recipes" / "pretrain" / "smoke.yaml"), *smoke_overrides(pretrain_shards, run_dir, **run),
                *args]

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    # The uninterrupted run and the one to be stopped are independent: they run at once (a launch leaves a core
    # idle while its supervisor and launcher import torch one after the other).
    uninterrupted = Background(command(whole), tmp_path / "whole")

    seed = random.randrange(10**6)
    signal_at = random.Random(seed).randint(3, 15)
    proc = start_and_wait(command(stopped), stopped / "metrics.jsonl", signal_at, timeout=240)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    reached = last_logged_step(stopped / "metrics.jsonl")
    assert f"stopped by SIGUSR1 at step {reached}" in out and reached < steps, (seed, out[-2000:])
    done = uninterrupted.finish(timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    resumed = subprocess.run(command(stopped, "--resume", "auto"), cwd=REPO, env=cli_env(), capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"at step {reached}" in resumed.stdout
    assert losses(stopped) == losses(whole), f"seed {seed}, stopped at step {reached}"
    final = [torch.load(d / "checkpoints" / f"step_{steps:07d}" / "state.pt", weights_only=True) for d in (whole, stopped)]
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key
