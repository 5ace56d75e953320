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
import time
from pathlib import Path

from ..files import atomic_write

ENV = "SSL_VIT_SUPERVISOR_DIR"
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
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


# --------------------------------------------------------------------------------------- supervisor side
class Supervisor:
    """Runs `command` and relays stop signals to its ready workers; `run()` returns the exit code."""

    def __init__(self, command: list[str], poll_s: float = 0.1) -> None:
        self.command = command
        self.poll_s = poll_s
        self.signals: list[int] = []  # every stop signal received, in order
        self.sent: dict[int, int] = {}  # worker pid -> how many of `signals` it has been sent
        self.folder = Path(tempfile.mkdtemp(prefix="ssl-vit-launch-"))

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._receive) for sig in RELAYED}
        env = {**LAUNCHER_ENV, **os.environ, ENV: str(self.folder)}
        try:
            try:
                proc = subprocess.Popen(self.command, env=env, start_new_session=True)
            except OSError as err:
                print(f"error: cannot start {self.command[0]!r}: {err.strerror}", file=sys.stderr)
                return 2
            while proc.poll() is None:
                self._relay()
                time.sleep(self.poll_s)
            return self._exit_code(proc.returncode)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.folder, ignore_errors=True)

    def _receive(self, signum: int, frame) -> None:  # noqa: ANN001 (signal handler signature)
        self.signals.append(signum)

    def _relay(self) -> None:
        """Send every worker that is ready the signals it has not had yet."""
        for ready in self.folder.glob("ready-*"):
            pid = int(ready.name.split("-", 1)[1])
            for signum in self.signals[self.sent.get(pid, 0):]:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    break
            self.sent[pid] = len(self.signals)

    def _exit_code(self, launcher_rc: int) -> int:
        code = 128 - launcher_rc if launcher_rc < 0 else launcher_rc  # killed by signal N → 128 + N, as shells say
        if code == 0:
            return 0
        workers = {p.name.split("-", 1)[1] for p in self.folder.glob("ready-*")}
        ends = {p.name.split("-", 1)[1]: json.loads(p.read_text()) for p in self.folder.glob("exit-*")}
        if workers and workers <= ends.keys() and all(e["status"] in CLEAN_ENDS for e in ends.values()):
            steps = sorted({e["step"] for e in ends.values()})
            print(f"ssl-vit launch: the launcher exited with {code} after all {len(ends)} worker(s) stopped cleanly "
                  f"at step {'/'.join(map(str, steps))}; exit 0", file=sys.stderr)
            return 0
        return code
