"""recipes/slurm/pretrain.sbatch against a real SLURM: slurmctld + slurmd on localhost (munge authentication),
started here with a minimal slurm.conf in a temporary directory. Run with `make test-slurm` (it installs Debian's
slurm-wlm and munge when they are missing; needs root); the default suite skips this module.

The sbatch script runs on CPU with 2 processes (gloo): an uninterrupted job finishes and is not requeued; a job
that gets SLURM's warning signal (`scancel --signal=USR1 --batch`, exactly what `--signal=B:USR1@180` sends)
checkpoints every rank once, requeues itself, and the requeued job resumes and finishes with the uninterrupted
job's per-step losses and final weights.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_records import losses
from trainer_fixtures import REPO, SMOKE, cli_env, free_port, smoke_overrides

# Deselected from the default run (pyproject's addopts), not skipped: `make test-slurm` selects it with -m slurm.
pytestmark = pytest.mark.slurm

SCRIPT = REPO / "recipes" / "slurm" / "pretrain.sbatch"
STEPS, EVERY = 30, 10
RUN = {"data.batch_size": 8, "data.num_workers": 1, "train.total_steps": STEPS, "train.checkpoint_every": EVERY,
       "train.log_every": 1, "optim.warmup_steps": 3}

CONF = """ClusterName=sslvit
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _run(*command: str, env: dict | None = None) -> str:
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict[str, str]:
    """The environment of a running single-node SLURM (munged, slurmctld, slurmd), shut down afterwards."""
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(host=host, root=root, ctld_port=free_port(), d_port=free_port(), cpus=os.cpu_count()))
    env = cli_env(SLURM_CONF=str(conf), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        subprocess.run(["munged", "--force"], check=True, timeout=30)
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=30)
    subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, (root / "slurmctld.log").read_text()[-2000:]
            time.sleep(1)
        yield env
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            pid = root / pid_file
            if pid.is_file():
                subprocess.run(["kill", pid.read_text().strip()])


def submit(env: dict, data: Path, run_dir: Path) -> tuple[str, Path]:
    out = run_dir.parent / f"{run_dir.name}.out"
    job = _run("sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=2", f"--output={out}", str(SCRIPT),
               str(SMOKE), *smoke_overrides(data, run_dir, **RUN),
               env={**env, "PROCS_PER_NODE": "2", "MAIN_PORT": str(free_port())}).strip()
    return job, out


def job_state(env: dict, job: str) -> dict[str, str]:
    text = _run("scontrol", "show", "job", job, env=env)
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_done(env: dict, job: str, out: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while (state := job_state(env, job))["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline, f"job {job} still {state['JobState']}:\n{out.read_text()[-3000:]}"
        time.sleep(2)
    return state


@pytest.mark.timeout(1500)
def test_sbatch_signal_checkpoints_requeues_and_resumes_to_the_uninterrupted_losses(slurm, pretrain_shards, tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    job, out = submit(slurm, pretrain_shards, whole)
    state = wait_done(slurm, job, out, timeout=600)
    log = out.read_text()
    assert (state["JobState"], state["Restarts"]) == ("COMPLETED", "0"), log[-3000:]
    assert f"done: step {STEPS}" in log and "requeueing" not in log  # a finished job does not requeue

    job, out = submit(slurm, pretrain_shards, stopped)
    metrics, deadline = stopped / "metrics.jsonl", time.monotonic() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
        assert time.monotonic() < deadline and job_state(slurm, job)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.2)
    _run("scancel", "--signal=USR1", "--batch", job, env=slurm)  # what --signal=B:USR1@180 sends
    state = wait_done(slurm, job, out, timeout=900)  # SLURM holds a requeued job ~2 min before it may start again
    log = out.read_text()
    assert (state["JobState"], state["Restarts"]) == ("COMPLETED", "1"), log[-3000:]
    (stop,) = re.findall(r"stopped by SIGUSR1 at step (\d+); checkpoint", log)
    assert f"requeueing job {job}" in log and f"job {job} (restart 1)" in log
    assert f"resumed from {stopped / 'checkpoints' / f'step_{int(stop):07d}'} at step {stop}" in log
    assert f"done: step {STEPS}" in log and 0 < int(stop) < STEPS
    assert losses(stopped) == losses(whole), f"stopped at step {stop}"
    final = [torch.load(d / "checkpoints" / f"step_{STEPS:07d}" / "state.pt", weights_only=True) for d in (whole, stopped)]
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key
