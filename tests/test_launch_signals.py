"""Stop signals under real launchers, 2 CPU processes (gloo DDP) with a loader worker each: every rank writes one
checkpoint of the same step, the job exits with the documented code, and no process of the tree survives.

- `ssl-vit launch accelerate launch …` / `ssl-vit launch torchrun …`, signalled with SIGTERM, SIGINT, SIGUSR1: 0.
- a bare `accelerate launch` / `torchrun` killed by SIGUSR1 (its exit code is its own: 138): the workers notice
  their launcher is gone, checkpoint and exit. (SIGTERM/SIGINT to a bare launcher: torch's agent forwards them,
  the workers checkpoint, and the agent exits 1; README "Running on a cluster".)
- one worker of a bare `accelerate launch` signalled: 0.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from trainer_fixtures import REPO, SMOKE, cli_env, free_port, smoke_overrides

BIN = Path(sys.executable).parent
RUN = {"data.batch_size": 8, "data.num_workers": 1, "train.total_steps": 5000, "train.log_every": 1,
       "train.checkpoint_every": 5000, "optim.warmup_steps": 2}


def launcher_command(launcher: str) -> list[str]:
    if launcher == "accelerate":
        return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port())]
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]


def start(command: list[str], data: Path, run_dir: Path) -> subprocess.Popen:
    full = [*command, "-m", "ssl_vit", "pretrain", "--config", str(SMOKE), *smoke_overrides(data, run_dir, **RUN)]
    return subprocess.Popen(full, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_training(proc: subprocess.Popen, run_dir: Path, steps: int = 2, timeout: float = 120) -> None:
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no training step within the timeout"
        time.sleep(0.05)


def workers_of(root: psutil.Process) -> list[psutil.Process]:
    """The training processes (`-m ssl_vit pretrain` with no `launch`) below `root`, loader workers excluded."""
    found = [p for p in root.children(recursive=True) if "pretrain" in p.cmdline() and "launch" not in p.cmdline()]
    return [p for p in found if p.parent() not in found]


def stop_and_check(proc: subprocess.Popen, target: list[int], sig: signal.Signals, run_dir: Path) -> int:
    """Send `sig` to `target`; assert one checkpoint of the stop step from both ranks and no survivor; return rc."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(tree) >= 5, [p.cmdline()[:4] for p in tree]  # (supervisor +) launcher + 2 ranks + 2 loader workers
    for pid in target:
        psutil.Process(pid).send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()[:5]) for p in alive]}\n{out[-3000:]}"
    stops = re.findall(r"stopped by (.+?) at step (\d+); checkpoint (\S+)\.", out)
    assert len(stops) == 1, out[-3000:]
    step = int(stops[0][1])
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints == ["latest", f"step_{step:07d}"], checkpoints
    folder = run_dir / "checkpoints" / f"step_{step:07d}"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "rng_rank0.pt", "rng_rank1.pt", "state.pt"]
    assert torch.load(folder / "state.pt", weights_only=True)["step"] == step
    return proc.returncode


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_to_ssl_vit_launch_checkpoints_every_rank_and_exits_zero(pretrain_shards, tmp_path, launcher, sig):
    run_dir = tmp_path / "run"
    proc = start([str(BIN / "ssl-vit"), "launch", *launcher_command(launcher)], pretrain_shards, run_dir)
    wait_for_training(proc, run_dir)
    assert stop_and_check(proc, [proc.pid], sig, run_dir) == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_sigusr1_to_a_bare_launcher_still_checkpoints_every_rank_and_leaves_nothing(pretrain_shards, tmp_path, launcher):
    """The issue's orphans: SIGUSR1 kills the launcher (torch's agent does not handle it); the workers notice."""
    run_dir = tmp_path / "run"
    proc = start(launcher_command(launcher), pretrain_shards, run_dir)
    wait_for_training(proc, run_dir)
    assert stop_and_check(proc, [proc.pid], signal.SIGUSR1, run_dir) == -signal.SIGUSR1  # the shell says 138


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_signal_to_one_worker_stops_both_ranks_and_the_launch_exits_zero(pretrain_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(launcher_command("accelerate"), pretrain_shards, run_dir)
    wait_for_training(proc, run_dir)
    worker = workers_of(psutil.Process(proc.pid))
    assert len(worker) == 2
    assert stop_and_check(proc, [worker[1].pid], signal.SIGTERM, run_dir) == 0
