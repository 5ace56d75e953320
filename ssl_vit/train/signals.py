"""Preemption signals: a stop request the trainer reads at step boundaries.

A scheduler that preempts a job sends SIGTERM (SLURM can be told to send SIGUSR1 earlier); a person presses
Ctrl-C (SIGINT); a terminal that closes, or an ssh session that drops, sends SIGHUP. The handler only sets a
flag: the trainer looks at it at the next step boundary, where all ranks agree (any rank flagged → all stop)
and save a checkpoint together, and also while it waits for a batch (`batch_wait.py`: a read that is stuck does
not keep the stop waiting). A second Ctrl-C aborts at once. SIGHUP is left alone when it is ignored (`nohup`:
the user asked the run to outlive the terminal); a stop also points standard output and error at /dev/null when
they were a terminal that has hung up (`hangup.py`), so the messages of the checkpoint cannot crash it.

Under a launcher (torch's elastic agent, behind `torchrun` and `accelerate launch`) the worker also watches its
parent: a launcher killed by a signal it does not handle (SIGUSR1 by default) would otherwise leave its workers
training as orphans. A launcher that is gone counts as a stop request, so every rank still checkpoints once and
exits. Under `ssl-vit launch` (`supervisor.py`) the worker announces that its handler is in place, so the
supervisor relays signals to it from then on.

The ranks agree on a stop through `agreement.py` (host-side, every step).
"""
from __future__ import annotations

import os
import signal
import threading

from .hangup import quiet_if_hung_up, terminals
from .supervisor import announce_ready

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
PARENT_GONE = "the launcher's exit"


def launched_by_agent() -> bool:
    """Whether torch's elastic agent (torchrun, accelerate launch) started this process: it sets this variable."""
    return "TORCHELASTIC_RUN_ID" in os.environ


_RECEIVED: list[str] = []  # every stop this process was asked for, by any StopRequest, in order


def stops_received() -> tuple[str, ...]:
    """Every stop signal (or PARENT_GONE) this process received while training, in order.

    A command that runs other commands in its process (`ssl-vit demo`, `ssl-vit study`) compares it before and
    after a pretraining that returned 0: stopped by a signal, the run saved a checkpoint and must not be
    evaluated as if it had finished.
    """
    return tuple(_RECEIVED)


class StopRequest:
    """Context manager: while active, STOP_SIGNALS set `received` (the signal's name) instead of killing.

    `watch_parent` (default: when launched by torch's elastic agent) also sets `received` when the parent process
    exits, checked every `poll_s` seconds.
    """

    def __init__(self, watch_parent: bool | None = None, poll_s: float = 0.5) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}
        self._watch = launched_by_agent() if watch_parent is None else watch_parent
        self._poll_s = poll_s
        self._done = threading.Event()
        self._terminals: dict[int, bool] = {}

    def _handle(self, signum: int, frame) -> None:  # noqa: ANN001 (signal handler signature)
        quiet_if_hung_up(self._terminals)
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.received = signal.Signals(signum).name
        _RECEIVED.append(self.received)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._terminals = terminals()
            for sig in STOP_SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # under nohup: the run outlives its terminal, as asked
                self._previous[sig] = signal.signal(sig, self._handle)
            announce_ready()
        if self._watch:
            self._done.clear()
            threading.Thread(target=self._watch_parent, args=(os.getppid(),), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _watch_parent(self, parent: int) -> None:
        while not self._done.wait(self._poll_s):
            if os.getppid() != parent:  # re-parented: the launcher is gone
                if self.received is None:
                    self.received = PARENT_GONE
                    _RECEIVED.append(PARENT_GONE)
                return
