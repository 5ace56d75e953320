"""One writer per run directory: a second `pretrain` on the same output_dir is refused naming the first; the lock
of a process killed with -9 is taken over; on another host only a stale heartbeat counts; a 2-process job
takes the lock on rank 0 only, and a refusal there stops both ranks without a hang."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from background import Background, selected
from trainer_fixtures import (REPO, SMOKE, free_port, pretrain_command, rank_error_lines, run_pretrain, smoke_overrides,
                              start_and_wait, tree_digest)

from ssl_vit.errors import RunDirectoryError
from ssl_vit.train import run_lock
from ssl_vit.train.run_lock import LOCK_NAME, RunLock, process_identity

LONG = {"train.total_steps": 5000, "train.log_every": 1, "train.checkpoint_every": 5}


@pytest.fixture(scope="module")
def shards(pretrain_shards_32: Path) -> Path:
    return pretrain_shards_32


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


# ------------------------------------------------------------------------------------------------ in-process
def test_a_held_lock_names_its_holder_and_a_released_one_is_free(tmp_path: Path):
    with RunLock(tmp_path) as first:
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        # the same host and a live pid: in use (another RunLock object stands for another process here)
        with pytest.raises(RunDirectoryError, match=f"is in use by pid {os.getpid()} on {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
        assert first.took_over is None
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        pass


def test_a_lock_of_a_dead_pid_or_another_boot_is_taken_over(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps(process_identity(dead.pid)))
    with RunLock(tmp_path) as lock:
        assert lock.took_over["pid"] == dead.pid and lock.took_over["reason"] == "no longer running"
    (tmp_path / LOCK_NAME).write_text(json.dumps({**process_identity(), "boot_id": "another-boot"}))
    with RunLock(tmp_path) as lock:
        assert lock.took_over["reason"] == "the machine has rebooted since"
    # our own pid, but a start time that is not ours: the pid was reused by another program
    (tmp_path / LOCK_NAME).write_text(json.dumps({**process_identity(), "start_ticks": 1}))
    with RunLock(tmp_path) as lock:
        assert "its pid now belongs to another process" in lock.took_over["reason"]


def test_a_lock_from_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path: Path):
    other = {**process_identity(), "host": "node-17", "pid": 4242}
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(other))
    with pytest.raises(RunDirectoryError, match="in use by pid 4242 on node-17 .*last heartbeat was 0 s ago"):
        RunLock(tmp_path).acquire()
    old = time.time() - run_lock.STALE_AFTER_S - 10
    os.utime(path, (old, old))
    with RunLock(tmp_path) as lock:
        assert lock.took_over["host"] == "node-17" and lock.took_over["reason"].startswith("no heartbeat for")


def test_the_heartbeat_keeps_a_held_lock_fresh(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    with RunLock(tmp_path):
        path = tmp_path / LOCK_NAME
        os.utime(path, (1, 1))
        deadline = time.monotonic() + 5
        while path.stat().st_mtime < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > time.time() - 60


def test_a_file_system_without_fcntl_locks_still_has_one_writer(tmp_path: Path, monkeypatch):
    """NFS mounted without a lock manager: lockf fails; the exclusive lock file alone decides."""
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with RunLock(tmp_path):
        with pytest.raises(RunDirectoryError, match="is in use by"):
            RunLock(tmp_path).acquire()


# ------------------------------------------------------------------------------------------------ real runs
@pytest.mark.timeout(600)
def test_two_runs_at_once_the_second_is_refused_and_a_kill9_lock_is_taken_over(shards: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    overrides = smoke_overrides(shards, run_dir, **LONG)
    first = start_and_wait(pretrain_command(overrides), run_dir / "metrics.jsonl", 6, timeout=300)
    # What the second run would have written first. Only these are read: the first run goes on checkpointing, and
    # a whole-tree digest could list a `latest` temp file that is renamed before it is read.
    written_first = ("config.yaml", "run.lock")
    try:
        before = {name: (run_dir / name).read_bytes() for name in written_first}
        second = run_pretrain(overrides, "--resume", "auto", timeout=240)
        assert second.returncode == 2, second.stderr[-2000:]
        assert error_lines(second.stderr) == [line for line in second.stderr.splitlines() if line.startswith("error:")]
        (line,) = error_lines(second.stderr)
        assert f"{run_dir} is in use by pid {first.pid} on {socket.gethostname()}" in line and "(it holds the file's lock)" in line
        for name in written_first:
            assert (run_dir / name).read_bytes() == before[name], name
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == first.pid  # left behind by kill -9

    short = smoke_overrides(shards, run_dir, **{**LONG, "train.total_steps": 12})
    resumed = run_pretrain(short, "--resume", "auto", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"took over the lock of pid {first.pid} on {socket.gethostname()}" in resumed.stdout
    assert "no longer running" in resumed.stdout and not (run_dir / LOCK_NAME).exists()


TWO_PROCESS_TEST = "test_a_two_process_job_on_a_locked_run_stops_both_ranks_with_the_holders_name"


@pytest.fixture(scope="module", autouse=True)
def two_process_job_on_a_locked_run(request, shards: Path, tmp_path_factory) -> Iterator[tuple | None]:
    """The 2-process job of the test below starts with the module (if that test is selected) and runs while the
    other tests do: it spends ~10 s importing and then up to 10 s idle (`--monitor_interval 10`: the launcher
    would kill rank 1 before it prints its line otherwise). Yields (run directory, holder, digest before, job)."""
    if not selected(request, TWO_PROCESS_TEST):
        yield None
        return
    run_dir = tmp_path_factory.mktemp("locked") / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    job = None
    try:
        (run_dir / LOCK_NAME).write_text(json.dumps({**process_identity(holder.pid), "command": "ssl-vit pretrain X"}))
        before = tree_digest(run_dir)
        accelerate = Path(sys.executable).with_name("accelerate")
        command = [str(accelerate), "launch", "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"),
                   "--main_process_port", str(free_port()), "--monitor_interval", "10", "-m", "ssl_vit", "pretrain",
                   "--config", str(SMOKE), *smoke_overrides(shards, run_dir, **{"train.total_steps": 4, "data.batch_size": 8,
                                                                       "optim.warmup_steps": 1})]
        job = Background(command, run_dir.parent / "launch")
        yield run_dir, holder, before, job
    finally:
        if job is not None:
            job.kill()
        holder.kill()
        holder.wait()


@pytest.mark.timeout(480)
def test_a_two_process_job_on_a_locked_run_stops_both_ranks_with_the_holders_name(two_process_job_on_a_locked_run):
    run_dir, holder, before, job = two_process_job_on_a_locked_run
    proc = job.finish(timeout=400)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = rank_error_lines(proc.stderr)
    assert len(lines) == 2 and lines[0] == lines[1], output[-3000:]  # rank 1 says what rank 0 found
    assert f"is in use by pid {holder.pid} on {socket.gethostname()}" in lines[0] and "ssl-vit pretrain X" in lines[0]
    assert tree_digest(run_dir) == before


# ------------------------------------------------------------------------------------------------ loader workers
@pytest.mark.timeout(600)
def test_a_killed_loader_worker_is_one_line_with_the_resume_command(shards: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    overrides = smoke_overrides(shards, run_dir, **{**LONG, "data.num_workers": 1})
    proc = start_and_wait(pretrain_command(overrides), run_dir / "metrics.jsonl", 6, timeout=300)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert children, "the run has no loader worker"
    for child in children:  # the worker: what the out-of-memory killer would pick
        os.kill(int(child), signal.SIGKILL)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 2, out[-2000:]
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out[-3000:]
    assert "a data loader worker died" in lines[0] and "--resume auto" in lines[0]
    assert f"continues from {run_dir / 'checkpoints' / 'step_'}" in lines[0]  # step 5 or a later one
