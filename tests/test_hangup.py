"""A closed terminal or a dropped ssh session (SIGHUP), and stops that come before the workers are ready: the job
stops (with a checkpoint where it had trained), `ssl-vit launch` exits 0, and no process of the job is left.

- SIGHUP to `ssl-vit launch accelerate launch` with 2 CPU processes: relayed as SIGTERM, one checkpoint of one
  step from both ranks, exit 0, nothing left (the checks of test_launch_signals.py);
- a signal right after the start, while the workers are still importing: it is relayed once they are ready (or
  the launcher is stopped), exit 0, nothing left;
- a launcher whose workers never get ready, which ignores SIGTERM and leaves a child in a session of its own:
  stopped, then killed, the child found by its environment and killed too, exit 0;
- under `nohup` (SIGHUP ignored) the supervisor and the trainer keep ignoring it;
- a single-process run whose terminal really hangs up (a pty whose other end closes): every later write to the
  terminal fails with EIO, and the run still checkpoints and exits 0.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from test_launch_signals import BIN, Case, check, launcher_command, run_case, start
from trainer_fixtures import REPO, SMOKE, cli_env, smoke_overrides

from ssl_vit.train.signals import StopRequest


@pytest.fixture(autouse=True)
def sighup_as_a_terminal_leaves_it():
    """SIGHUP at its default for these tests and the processes they start, which inherit it: a suite run under
    `nohup` (SIGHUP ignored) would pass that on, and the trainer and the supervisor rightly keep nohup's choice,
    so every hangup test failed there (`nohup make test`, as the tests were once run here)."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def alive(pids: set[int]) -> list[str]:
    """The processes of `pids` still running (zombies are gone for good)."""
    left = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {p.cmdline()[:4]}")
        except psutil.NoSuchProcess:
            pass
    return left


# ----------------------------------------------------------------------------------- ssl-vit launch, 2 ranks
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sighup_to_ssl_vit_launch_checkpoints_every_rank_and_exits_zero(pretrain_shards, tmp_path):
    outcome = run_case(Case("accelerate", True, signal.SIGHUP), pretrain_shards, tmp_path / "run")
    assert check(outcome) == 0, outcome.out[-3000:]
    assert "stopped by SIGTERM" in outcome.out  # relayed as the stop the workers take


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stop_before_the_workers_are_ready_still_stops_everything(pretrain_shards, tmp_path):
    run_dir = tmp_path / "run"
    proc = start([str(BIN / "ssl-vit"), "launch", *launcher_command("accelerate")], pretrain_shards, run_dir)
    root = psutil.Process(proc.pid)
    seen: set[int] = set()
    wait_for(lambda: root.children(), 60, "the launcher to start")  # the supervisor's handler is in place
    proc.send_signal(signal.SIGHUP)  # while everything is still importing torch: no worker is ready
    deadline = time.monotonic() + 400
    while proc.poll() is None:  # every process the job ever had, to check afterwards that none is left
        try:
            seen.update(p.pid for p in root.children(recursive=True))
        except psutil.Error:
            pass
        assert time.monotonic() < deadline, "the launch did not stop"
        time.sleep(0.2)
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-3000:]
    time.sleep(1)
    assert not alive(seen), (alive(seen), out[-3000:])
    assert len(seen) >= 3, seen  # launcher and two ranks at least: the signal did come before they were ready
    # Ready within the supervisor's grace: relayed as soon as a worker is (its first step or the next, as the
    # supervisor looks every 0.1 s), and checkpointed. Not ready in time: the launcher was stopped, nothing trained.
    relayed = re.findall(r"stopped by SIGTERM at step (\d+); checkpoint", out)
    escalated = "no worker was ready" in out
    assert relayed or escalated, out[-3000:]
    if relayed:
        assert int(relayed[0]) <= 3, out[-3000:]
        assert (run_dir / "checkpoints" / f"step_{int(relayed[0]):07d}" / "state.pt").is_file()


# ------------------------------------------------------------------------------- the supervisor on its own
FAKE_LAUNCHER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a launcher deaf to SIGTERM: only SIGKILL ends it
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                             start_new_session=True)  # as torch's agent starts its workers
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
""")


def supervise(command: list[str], **graces: float) -> list[str]:
    """A `python -c` that runs `Supervisor(command, **graces)` and exits with its code."""
    return [sys.executable, "-c", f"import sys; from ssl_vit.train.supervisor import Supervisor; "
            f"sys.exit(Supervisor({command!r}, **{graces!r}).run())"]


@pytest.mark.timeout(120)
def test_workers_that_never_get_ready_are_stopped_then_killed_with_every_process_of_the_job(tmp_path):
    pids = tmp_path / "pids"
    launcher = [sys.executable, "-c", FAKE_LAUNCHER, str(pids)]
    proc = subprocess.Popen(supervise(launcher, ready_grace_s=1.0, kill_grace_s=1.0, leftover_grace_s=1.0),
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(pids.exists, 60, "the fake launcher")
    launcher_pid, child_pid = map(int, pids.read_text().split())
    proc.send_signal(signal.SIGHUP)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert time.monotonic() - t0 < 15, out
    assert "no worker was ready 1 s after SIGHUP" in out and "killing the job" in out, out
    time.sleep(0.5)
    assert not alive({launcher_pid, child_pid}), out


@pytest.mark.timeout(120)
def test_under_nohup_sighup_is_ignored_by_the_supervisor(tmp_path):
    done = tmp_path / "done"
    launcher = [sys.executable, "-c", f"import time; time.sleep(3); open({str(done)!r}, 'w').close()"]
    proc = subprocess.Popen(supervise(launcher, ready_grace_s=0.5, kill_grace_s=0.5), cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # what nohup does
    time.sleep(1.5)  # the supervisor has imported and started the launcher
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and done.exists(), out  # the launcher ran to its end
    assert "no worker was ready" not in out, out


def test_the_trainer_takes_sighup_as_a_stop_unless_it_is_ignored():
    previous = signal.getsignal(signal.SIGHUP)
    try:
        with StopRequest(watch_parent=False) as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: stop.received is not None, 5, "the handler")
        assert stop.received == "SIGHUP"
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with StopRequest(watch_parent=False) as stop:
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN  # nohup's choice stands
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
        assert stop.received is None
    finally:
        signal.signal(signal.SIGHUP, previous)


# ---------------------------------------------------------------------------------- a real terminal hangup
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_whose_terminal_hangs_up_checkpoints_and_exits_zero(pretrain_shards, tmp_path):
    """The run is the session leader of a pty (as a login shell would be): closing the other end hangs the
    terminal up, the kernel sends SIGHUP, and every later write to the terminal fails with EIO."""
    run_dir = tmp_path / "run"
    overrides = smoke_overrides(pretrain_shards, run_dir, **{"train.total_steps": 5000, "train.log_every": 1,
                                                             "train.checkpoint_every": 5000, "data.num_workers": 1})
    master, slave = pty.openpty()

    def own_terminal() -> None:  # a new session whose controlling terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "ssl_vit", "pretrain", "--config", str(SMOKE), *overrides],
                            cwd=REPO, env=cli_env(), stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_terminal)
    os.close(slave)
    os.set_blocking(master, False)
    metrics = run_dir / "metrics.jsonl"
    try:
        def trained() -> bool:
            try:
                os.read(master, 1 << 16)  # keep the terminal drained, as a terminal window would
            except BlockingIOError:
                pass
            return metrics.exists() and len(metrics.read_text().splitlines()) >= 2

        wait_for(trained, 120, "two training steps")
        tree = {proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))}
    finally:
        os.close(master)  # the terminal window closes
    assert proc.wait(timeout=60) == 0
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert len(checkpoints) == 1 and (run_dir / "checkpoints" / checkpoints[0] / "state.pt").is_file()
    time.sleep(1)
    assert not alive(tree)
