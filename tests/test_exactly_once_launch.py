"""Exactly once across process counts, under real launchers (issue 26): a run on 2 CPU processes stopped by SIGTERM
between checkpoints and resumed on 3 (another micro-batch, accumulation and loader workers), and a run on 3
processes killed with `kill -9` and resumed on 1: each finished epoch of the samples record holds every sample
once, and every step's global batch equals the uninterrupted one-process run's (`ssl-vit samples --against`).
Weights are not compared: across shapes the floating-point sums are ordered differently (the README's one limit).

Where the first run stops is fixed, not raced: it runs through `HOLD`, which makes the reads of every step after
`hold` wait (a hung mount, as the trainer sees it), so the signal or the kill always lands after step `hold` on
any machine. (It once raced: on a fast machine all 12 steps were done before the SIGTERM arrived.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from trainer_fixtures import REPO, SMOKE, cli_env, free_port, smoke_overrides, write_pretrain_shards

from ssl_vit.train.sample_records import epoch_counts, first_difference, read_steps

BIN = Path(sys.executable).parent
# 50 samples in shards of 16, 16, 16 and 2; 12 a step: 144 positions, two finished epochs and most of a third
RUN = {"train.total_steps": 12, "train.checkpoint_every": 4, "train.log_every": 1, "optim.warmup_steps": 2,
       "train.global_batch": 12, "data.shuffle_buffer": 20, "train.record_samples": True}


HOLD = textwrap.dedent("""
    import sys, time
    from ssl_vit.cli import main
    from ssl_vit.data.train_reader import TrainPlace

    hold, real = int(sys.argv[1]), TrainPlace.micro_positions

    def micro_positions(self, micro, batch_size):  # no read of a step after `hold` ever starts
        while micro // self.accumulation >= hold:
            time.sleep(3600)
        return real(self, micro, batch_size)

    TrainPlace.micro_positions = micro_positions
    sys.exit(main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    return write_pretrain_shards(tmp_path_factory.mktemp("uneven_launch"), num_samples=50, shard_size=16)


@pytest.fixture(scope="module")
def whole(uneven, tmp_path_factory) -> Path:
    """The uninterrupted run: one process, 12 per micro-batch, no loader worker."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(launch(1, uneven, run_dir, batch=12, workers=0), cwd=REPO, env=cli_env(), check=True,
                   capture_output=True, text=True, timeout=300)
    return run_dir


def launch(processes: int, data: Path, run_dir: Path, *, batch: int, workers: int, resume: bool = False,
           supervised: bool = False, hold: int | None = None) -> list[str]:
    """The command of one run; with `hold`, through `HOLD` (written beside `run_dir`), stopping after step `hold`."""
    overrides = smoke_overrides(data, run_dir, **RUN, **{"data.batch_size": batch, "data.num_workers": workers})
    if processes == 1:
        command = [sys.executable]
    else:
        command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes),
                   "--main_process_port", str(free_port())]
        if supervised:
            command = [str(BIN / "ssl-vit"), "launch", *command]
    if hold is None:
        entry = ["-m", "ssl_vit"]
    else:
        script = run_dir.parent / "hold.py"
        script.write_text(HOLD)
        entry = [str(script), str(hold)]
    return [*command, *entry, "pretrain", "--config", str(SMOKE), *overrides,
            *(["--resume", "auto"] if resume else [])]


def run_until_step(command: list[str], run_dir: Path, step: int) -> subprocess.Popen:
    """Start `command` (held after `step`); return once metrics.jsonl holds `step` steps and no more come for
    2 s (the job still running, waiting for the held reads)."""
    proc = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 300
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= step):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no training within 300 s"
            time.sleep(0.2)
        time.sleep(2)
        assert len(metrics.read_text().splitlines()) == step and proc.poll() is None, "the run went past its hold"
    except BaseException:  # a held job left behind would sleep for an hour: end its whole session
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


def finish(command: list[str]) -> str:
    done = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


def assert_exactly_once_as(run_dir: Path, whole: Path) -> None:
    steps = read_steps(run_dir)
    assert sorted(steps.rows) == list(range(1, 13)) and not steps.incomplete
    counts = [(c.epoch, c.samples, c.duplicates, c.missing, c.finished) for c in epoch_counts(steps)]
    assert counts[:2] == [(0, 50, 0, 0, True), (1, 50, 0, 0, True)] and counts[2][1:4] == (44, 0, 6)
    assert first_difference(steps, read_steps(whole)) is None
    check = subprocess.run([sys.executable, "-m", "ssl_vit", "samples", str(run_dir), "--against", str(whole)],
                           cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "12 steps in both runs: identical global batches" in check.stdout, check.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_on_two_processes_then_a_resume_on_three_trains_each_epoch_once(uneven, whole, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_until_step(launch(2, uneven, run_dir, batch=6, workers=1, supervised=True, hold=6), run_dir, 6)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM at step 6" in out, out[-3000:]  # between the checkpoints of steps 4 and 8
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_")) == [
        "step_0000004", "step_0000006"]
    out = finish(launch(3, uneven, run_dir, batch=2, workers=2, resume=True))  # 3 × 2 × 2 accumulation = 12
    assert "resuming a 2-process checkpoint with 3 processes" in out
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000006'} at step 6" in out, out[-3000:]
    assert_exactly_once_as(run_dir, whole)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_on_three_processes_then_a_resume_on_one_trains_each_epoch_once(uneven, whole, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_until_step(launch(3, uneven, run_dir, batch=4, workers=0, hold=6), run_dir, 6)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        p.kill()  # SIGKILL to every process of the job: no handler runs, the checkpoint of step 4 stands
    psutil.wait_procs(tree, timeout=30)
    proc.communicate(timeout=30)
    out = finish(launch(1, uneven, run_dir, batch=6, workers=1, resume=True))  # 6 × 2 accumulation = 12
    assert "resuming a 3-process checkpoint with 1 processes" in out
    assert f"resumed from {run_dir / 'checkpoints' / 'step_0000004'} at step 4" in out, out[-3000:]
    assert_exactly_once_as(run_dir, whole)
