"""`ssl-vit launch`: a supervisor in front of `accelerate launch` or `torchrun` that turns a stop signal into one
checkpoint on every worker and exit code 0.

Why a supervisor. Schedulers signal whichever process they know: the batch shell, `srun`'s task (the launcher),
or every process of the job. The launchers handle that badly: torch's elastic agent (behind both `torchrun` and
`accelerate launch`) forwards SIGTERM/SIGINT to its workers but then raises and exits 1, gives them 30 s before
SIGKILL, and dies at once on SIGUSR1 (SLURM's usual warning), leaving its workers training as orphans.

How it works. The supervisor runs the launcher command in a new session (a terminal's Ctrl-C reaches only the
supervisor) with `SSL_VIT_SUPERVISOR_DIR` set. A worker that has installed its stop handler (the trainer's
`StopRequest`) writes `ready-<pid>` there; on SIGTERM, SIGINT or SIGUSR1 the supervisor relays the signal to those
workers (to late ones as soon as they are ready), never to the launcher. Every worker checkpoints the same step
(the ranks agree each step), writes `exit-<pid>` with how it ended and exits 0, so the launcher exits 0. When the
launcher itself was signalled too and exits non-zero, the workers' reports decide: every worker stopped cleanly
→ 0. The supervisor also lets SIGUSR1 reach the workers through the launcher (`PET_SIGNALS_TO_HANDLE`) and gives
them `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` (default here 170 s, inside SLURM's 180 s warning) before the agent's
SIGKILL, in case the scheduler signals the launcher directly.

A closed terminal or a dropped ssh session (SIGHUP) is a stop like SIGTERM, and is relayed as SIGTERM: the job runs
in its own session, where no hangup reaches it, so a supervisor that died of SIGHUP would leave it training with
nobody to signal it. (Under `nohup`, SIGHUP is ignored, and stays so: the job outlives the terminal, as asked.)
Output to a terminal that hung up is sent to /dev/null (`hangup.py`).

A stop that comes before any worker is ready is relayed as soon as one is. If none is `ready_grace_s` (60 s)
after the stop, the launcher is sent SIGTERM (its agent passes it to the workers, which have nothing to save
yet); if it has not exited `kill_grace_s` (30 s) later, the job is killed. Either way the supervisor exits 0: the
job stopped before it trained. When the launcher has exited, any process of the job still alive
`leftover_grace_s` (10 s) later — found by the `SSL_VIT_SUPERVISOR_DIR` in its environment, which every process of
the job inherits, also those in sessions of their own — is killed and named: no process outlives its job.

A user error (a bad recipe key, missing data) is one line and exit 2, as without the launcher: a worker that fails
with one writes its line to `error-<pid>` before printing it (`report_user_error`), the supervisor passes the
launcher's standard error on only until such a report exists (so neither the workers' copies nor the launcher's
traceback about a failed child reach the user) and then prints each distinct line once and exits 2.

Exit codes: 0 finished or stopped cleanly (resume with `--resume auto`); 2 a user error (one line); 130 a
second Ctrl-C (stopped without a checkpoint); anything else is the launcher's (a crash: its traceback).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..files import atomic_write
from .hangup import quiet_if_hung_up, terminals
from .job_processes import describe, job_processes, kill, signal_group

ENV = "SSL_VIT_SUPERVISOR_DIR"
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
AS_SENT = {signal.SIGHUP: signal.SIGTERM}  # what a worker is sent for a signal it does not take as a stop itself
READY_GRACE_S = 60.0  # how long a stop waits for a worker to become ready before the launcher is stopped instead
KILL_GRACE_S = 30.0  # then how long the launcher has to exit before the job is killed
LEFTOVER_GRACE_S = 10.0  # how long the job's processes may outlive the launcher before they are killed
CLEAN_ENDS = ("finished", "preempted", "already_finished")
LAUNCHER_ENV = {
    "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",  # torch's default plus SLURM's warning
    "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "170",
}


# ------------------------------------------------------------------------------------------- worker side
def announce_ready() -> None:
    """Tell a supervisor (if any) that this process now turns stop signals into a checkpoint."""
    folder = os.environ.get(ENV)
    if folder and Path(folder).is_dir():
        atomic_write(Path(folder) / f"ready-{os.getpid()}", os.environ.get("RANK", "0"))


def report_exit(status: str, step: int) -> None:
    """Tell a supervisor (if any) how this worker's training ended ("finished", "preempted", ...)."""
    folder = os.environ.get(ENV)
    if folder and Path(folder).is_dir():
        record = {"status": status, "step": step, "rank": int(os.environ.get("RANK", "0"))}
        atomic_write(Path(folder) / f"exit-{os.getpid()}", json.dumps(record))


def report_user_error(line: str) -> None:
    """Tell a supervisor (if any) this worker stops on a user error, with its one line (before printing it)."""
    folder = os.environ.get(ENV)
    if folder and Path(folder).is_dir():
        atomic_write(Path(folder) / f"error-{os.getpid()}", line)


# --------------------------------------------------------------------------------------- supervisor side
class Supervisor:
    """Runs `command` and relays stop signals to its ready workers; `run()` returns the exit code."""

    def __init__(self, command: list[str], poll_s: float = 0.1, *, ready_grace_s: float = READY_GRACE_S,
                 kill_grace_s: float = KILL_GRACE_S, leftover_grace_s: float = LEFTOVER_GRACE_S) -> None:
        self.command = command
        self.poll_s = poll_s
        self.ready_grace_s, self.kill_grace_s, self.leftover_grace_s = ready_grace_s, kill_grace_s, leftover_grace_s
        self.signals: list[int] = []  # every stop signal received, in order
        self.first_signal: float | None = None  # when the first one came (time.monotonic)
        self.sent: dict[int, int] = {}  # worker pid -> how many of `signals` it has been sent
        self.escalated: float | None = None  # when the launcher was sent SIGTERM because no worker was ready
        self.folder = Path(tempfile.mkdtemp(prefix="ssl-vit-launch-"))
        self._terminals = terminals()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._receive) for sig in RELAYED
                    if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN)}  # nohup: ignored
        env = {**LAUNCHER_ENV, **os.environ, ENV: str(self.folder)}
        try:
            try:
                proc = subprocess.Popen(self.command, env=env, start_new_session=True, stderr=subprocess.PIPE)
            except OSError as err:
                _say(f"error: cannot start {self.command[0]!r}: {err.strerror}")
                return 2
            relay = threading.Thread(target=self._pass_stderr, args=(proc.stderr.fileno(),), daemon=True)
            relay.start()
            while proc.poll() is None:
                self._relay()
                self._escalate(proc)
                time.sleep(self.poll_s)
            relay.join(timeout=1.0)  # the launcher's last words, before ours
            code = self._exit_code(proc.returncode)
            self._end_leftovers()
            relay.join(timeout=1.0)
            proc.stderr.close()
            return code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.folder, ignore_errors=True)

    def _receive(self, signum: int, frame) -> None:  # noqa: ANN001 (signal handler signature)
        quiet_if_hung_up(self._terminals)
        self.signals.append(signum)
        if self.first_signal is None:
            self.first_signal = time.monotonic()

    def _relay(self) -> None:
        """Send every worker that is ready the signals it has not had yet."""
        for ready in self.folder.glob("ready-*"):
            pid = int(ready.name.split("-", 1)[1])
            for signum in self.signals[self.sent.get(pid, 0):]:
                try:
                    os.kill(pid, AS_SENT.get(signum, signum))
                except ProcessLookupError:
                    break
            self.sent[pid] = len(self.signals)

    def _escalate(self, proc: subprocess.Popen) -> None:
        """A stop that no ready worker took within `ready_grace_s`: SIGTERM to the launcher; `kill_grace_s` later,
        SIGKILL to the job."""
        if self.first_signal is None or self.sent:
            return
        now = time.monotonic()
        if self.escalated is None and now - self.first_signal >= self.ready_grace_s:
            self.escalated = now
            _say(f"ssl-vit launch: no worker was ready {self.ready_grace_s:g} s after "
                 f"{signal.Signals(self.signals[0]).name}; stopping the launcher (nothing was trained yet)")
            signal_group(proc.pid, signal.SIGTERM)
        elif self.escalated is not None and now - self.escalated >= self.kill_grace_s:
            _say(f"ssl-vit launch: the launcher did not exit {self.kill_grace_s:g} s after SIGTERM; killing the job")
            signal_group(proc.pid, signal.SIGKILL)
            for pid in job_processes(ENV, self.folder):
                kill(pid)
            self.escalated = float("inf")  # once

    def _end_leftovers(self) -> None:
        """Kill the job's processes still alive `leftover_grace_s` after the launcher exited, and name them."""
        deadline = time.monotonic() + self.leftover_grace_s
        while job_processes(ENV, self.folder) and time.monotonic() < deadline:
            time.sleep(self.poll_s)
        left = job_processes(ENV, self.folder)
        for pid in left:
            kill(pid)
        if left:
            _say(f"ssl-vit launch: killed {len(left)} process(es) of the job still running "
                 f"{self.leftover_grace_s:g} s after the launcher exited: {', '.join(map(describe, left))}")

    def _user_errors(self) -> list[str]:
        return list(dict.fromkeys(p.read_text().strip() for p in sorted(self.folder.glob("error-*"))))

    def _pass_stderr(self, fd: int) -> None:
        """Copy the launcher's standard error to ours as it comes, until a worker has reported a user error: what
        follows is its copies of that line and the launcher's traceback about a failed child. Never stops
        reading, so nobody of the job blocks on a full pipe; a write that fails (a terminal gone) is dropped."""
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            if self._user_errors():
                continue
            try:
                os.write(2, data)
            except OSError:
                pass

    def _exit_code(self, launcher_rc: int) -> int:
        code = 128 - launcher_rc if launcher_rc < 0 else launcher_rc  # killed by signal N → 128 + N, as shells say
        if code == 0:
            return 0
        errors = self._user_errors()
        if errors:
            for line in errors:
                _say(line)
            return 2
        if self.escalated is not None:
            _say(f"ssl-vit launch: the job stopped before any worker was ready (launcher exit {code}); exit 0: "
                 "run the same command again (with --resume auto) to go on")
            return 0
        workers = {p.name.split("-", 1)[1] for p in self.folder.glob("ready-*")}
        ends = {p.name.split("-", 1)[1]: json.loads(p.read_text()) for p in self.folder.glob("exit-*")}
        if workers and workers <= ends.keys() and all(e["status"] in CLEAN_ENDS for e in ends.values()):
            steps = sorted({e["step"] for e in ends.values()})
            _say(f"ssl-vit launch: the launcher exited with {code} after all {len(ends)} worker(s) stopped cleanly "
                 f"at step {'/'.join(map(str, steps))}; exit 0")
            return 0
        return code


def _say(text: str) -> None:
    """One line on stderr; nothing when stderr is gone (a terminal that hung up, a closed pipe)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
