"""A terminal that hung up: every later write to it fails, so a stopping process stops writing to it.

When a terminal window closes or an ssh session drops, the kernel sends SIGHUP and from then on every write to
that terminal fails with EIO. A run stopped by the hangup still saves its checkpoint and says where, and that
`print` must not crash the process that is saving. So a stop request (`signals.StopRequest`, the supervisor of
`ssl-vit launch`) calls `quiet_if_hung_up`: standard output and error, when they were a terminal that is gone
now, are pointed at /dev/null. Their last lines are lost; the run directory keeps what matters
(`metrics.jsonl`, the checkpoint and `latest`).
"""
from __future__ import annotations

import os

STANDARD_STREAMS = (1, 2)


def terminals() -> dict[int, bool]:
    """Which standard streams are a terminal now (call before a hangup can happen)."""
    return {fd: _is_terminal(fd) for fd in STANDARD_STREAMS}


def quiet_if_hung_up(were_terminals: dict[int, bool]) -> None:
    """Point each stream that `were_terminals` says was a terminal, and is no longer one, at /dev/null. Safe to
    call from a signal handler (it runs between the main thread's bytecodes)."""
    for fd, was in were_terminals.items():
        if was and not _is_terminal(fd):  # a hung-up terminal answers no terminal query
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)


def _is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
