"""Stop signals under real launchers, 2 CPU processes (gloo DDP) with a loader worker each: every rank writes one
checkpoint of the same step, the job exits with the documented code, and no process of the tree survives.

- `ssl-vit launch accelerate launch …` / `ssl-vit launch torchrun …`, signalled with SIGTERM, SIGINT, SIGUSR1: 0.
- a bare `accelerate launch` / `torchrun` killed by SIGUSR1 (its exit code is its own: 138): the workers notice
  their launcher is gone, checkpoint and exit. (SIGTERM/SIGINT to a bare launcher: torch's agent forwards them,
  the workers checkpoint, and the agent exits 1; README "Running on a cluster".)
- one worker of a bare `accelerate launch` signalled: 0.

Each case is its own launch, but a launch spends most of its ~20 s importing torch in one process after another
(supervisor, launcher, ranks), with a core idle: the module's first test starts the launches of every selected
case, `CONCURRENT` at a time, each signalled as soon as it trains; each test then asserts on its own case.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
from trainer_fixtures import REPO, SMOKE, cli_env, free_port, smoke_overrides

BIN = Path(sys.executable).parent
RUN = {"data.batch_size": 8, "data.num_workers": 1, "train.total_steps": 5000, "train.log_every": 1,
       "train.checkpoint_every": 5000, "optim.warmup_steps": 2}
CONCURRENT = 3  # launches at once: fills the core a launch leaves idle; more only queue on 2 cores


@dataclass(frozen=True)
class Case:
    """One launch and the signal that stops it."""

    launcher: str  # "accelerate" or "torchrun"
    supervised: bool  # behind `ssl-vit launch`
    sig: signal.Signals
    to_worker: bool = False  # sent to one rank instead of the process the test started

    def __str__(self) -> str:
        launch = f"{'ssl-vit launch ' if self.supervised else 'bare '}{self.launcher}"
        return f"{self.sig.name} to {'one worker of ' if self.to_worker else ''}{launch}"


@dataclass
class Outcome:
    """What a case's launch did: its output and exit code, and the processes of its tree still alive after it."""

    case: Case
    run_dir: Path
    out: str = ""
    returncode: int | None = None
    tree: list[list[str]] = field(default_factory=list)
    alive: list[tuple[int, list[str]]] = field(default_factory=list)
    error: str | None = None  # where the launch went wrong before its checks (with the traceback)


def launcher_command(launcher: str) -> list[str]:
    if launcher == "accelerate":
        return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port())]
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]


def start(command: list[str], data: Path, run_dir: Path) -> subprocess.Popen:
    full = [*command, "-m", "ssl_vit", "pretrain", "--config", str(SMOKE), *smoke_overrides(data, run_dir, **RUN)]
    return subprocess.Popen(full, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_training(proc: subprocess.Popen, run_dir: Path, steps: int = 2, timeout: float = 300) -> None:
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no training step within the timeout"
        time.sleep(0.05)


def workers_of(root: psutil.Process) -> list[psutil.Process]:
    """The training processes (`-m ssl_vit pretrain` with no `launch`) below `root`, loader workers excluded."""
    found = [p for p in root.children(recursive=True) if "pretrain" in p.cmdline() and "launch" not in p.cmdline()]
    return [p for p in found if p.parent() not in found]


def run_case(case: Case, data: Path, run_dir: Path) -> Outcome:
    """Launch, wait for 2 steps, send the case's signal, wait for the launch and its whole tree to end."""
    outcome = Outcome(case, run_dir)
    command = launcher_command(case.launcher)
    proc = start([str(BIN / "ssl-vit"), "launch", *command] if case.supervised else command, data, run_dir)
    tree = [psutil.Process(proc.pid)]
    try:
        wait_for_training(proc, run_dir)
        root = tree[0]
        tree = [root, *root.children(recursive=True)]
        outcome.tree = [p.cmdline()[:4] for p in tree]
        if case.to_worker:
            worker = workers_of(root)
            assert len(worker) == 2, [p.cmdline()[:4] for p in worker]
            targets = [worker[1].pid]
        else:
            targets = [proc.pid]
        for pid in targets:
            psutil.Process(pid).send_signal(case.sig)
        outcome.out, _ = proc.communicate(timeout=120)
        outcome.returncode = proc.returncode
        _, alive = psutil.wait_procs(tree, timeout=60)
        outcome.alive = [(p.pid, p.cmdline()[:5]) for p in alive]
        for p in alive:  # recorded: now they only slow down the other cases
            p.kill()
    except Exception:  # noqa: BLE001 — reported by the case's own test
        outcome.error = traceback.format_exc()
        for p in tree:  # leave nothing running to slow down the other cases
            try:
                p.kill()
            except psutil.Error:
                pass
        outcome.out = proc.communicate()[0]
    return outcome


def check(outcome: Outcome) -> int:
    """Assert one checkpoint of the stop step from both ranks and no survivor; return the launch's exit code."""
    case, out, run_dir = outcome.case, outcome.out, outcome.run_dir
    assert outcome.error is None, f"{case}: {outcome.error}\n{out[-3000:]}"
    assert len(outcome.tree) >= 5, (str(case), outcome.tree)  # (supervisor +) launcher + 2 ranks + 2 loader workers
    assert not outcome.alive, f"{case}: left behind: {outcome.alive}\n{out[-3000:]}"
    stops = re.findall(r"stopped by (.+?) at step (\d+); checkpoint (\S+)\.", out)
    assert len(stops) == 1, f"{case}:\n{out[-3000:]}"
    step = int(stops[0][1])
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))
    assert checkpoints == ["latest", f"step_{step:07d}"], (str(case), checkpoints)
    folder = run_dir / "checkpoints" / f"step_{step:07d}"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["config.yaml", "rng_rank0.pt", "rng_rank1.pt", "state.pt"], (str(case), files)
    assert torch.load(folder / "state.pt", weights_only=True)["step"] == step, str(case)
    return outcome.returncode


# The case of each test of this module, from its parameters.
CASE_OF: dict[str, Callable[..., Case]] = {
    "test_a_signal_to_ssl_vit_launch_checkpoints_every_rank_and_exits_zero":
        lambda launcher, sig: Case(launcher, True, sig),
    "test_sigusr1_to_a_bare_launcher_still_checkpoints_every_rank_and_leaves_nothing":
        lambda launcher: Case(launcher, False, signal.SIGUSR1),
    "test_a_signal_to_one_worker_stops_both_ranks_and_the_launch_exits_zero":
        lambda: Case("accelerate", False, signal.SIGTERM, to_worker=True),
}


def case_of(item: pytest.Item) -> Case:
    params = item.callspec.params if hasattr(item, "callspec") else {}
    return CASE_OF[item.originalname](**params)


@pytest.fixture(scope="module")
def stopped(request, pretrain_shards, tmp_path_factory) -> dict[Case, Outcome]:
    """The outcome of every case selected in this module, launched `CONCURRENT` at a time."""
    cases = list(dict.fromkeys(case_of(item) for item in request.session.items
                               if item.module is request.module and item.originalname in CASE_OF))
    run_dirs = [tmp_path_factory.mktemp("launch") / "run" for _ in cases]
    with ThreadPoolExecutor(CONCURRENT) as pool:
        outcomes = list(pool.map(run_case, cases, [pretrain_shards] * len(cases), run_dirs))
    return {o.case: o for o in outcomes}


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first test of the module waits for every case's launch
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_to_ssl_vit_launch_checkpoints_every_rank_and_exits_zero(stopped, launcher, sig):
    case = Case(launcher, True, sig)
    assert check(stopped[case]) == 0, f"{case}:\n{stopped[case].out[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_sigusr1_to_a_bare_launcher_still_checkpoints_every_rank_and_leaves_nothing(stopped, launcher):
    """The issue's orphans: SIGUSR1 kills the launcher (torch's agent does not handle it); the workers notice."""
    case = Case(launcher, False, signal.SIGUSR1)
    assert check(stopped[case]) == -signal.SIGUSR1, f"{case}:\n{stopped[case].out[-3000:]}"  # the shell says 138


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_signal_to_one_worker_stops_both_ranks_and_the_launch_exits_zero(stopped):
    case = Case("accelerate", False, signal.SIGTERM, to_worker=True)
    assert check(stopped[case]) == 0, f"{case}:\n{stopped[case].out[-3000:]}"
