"""The processes of one job, found by an environment variable they all inherit, and ending them.

`ssl-vit launch` runs its launcher with `SSL_VIT_SUPERVISOR_DIR` set to a folder of its own. Every process the job
starts inherits it — the launcher's agent, the workers in the sessions the agent gives them, their loader workers —
so the supervisor finds them all, whatever their session or parent, also once the launcher is gone (orphans
are re-parented and no longer its descendants). `/proc/PID/environ` holds a process's environment as it started.
"""
from __future__ import annotations

import os
import signal


def job_processes(variable: str, value: object) -> list[int]:
    """The pids of the processes (this one excepted) whose environment holds `variable=value`; Linux /proc, and
    none found elsewhere. Processes of other users cannot be read, and are not the job's."""
    marker = f"\0{variable}={value}\0".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours
            continue
        if marker in b"\0" + environ + b"\0":  # one whole variable, not a prefix of another
            found.append(int(entry))
    return found


def describe(pid: int) -> str:
    """'PID (its command line)', to name a process in a message."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = "?"
    return f"{pid} ({command[:80]})"


def signal_group(pid: int, signum: int) -> None:
    """`signum` to the process group led by `pid` (a process started in a new session leads one); gone: nothing."""
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def kill(pid: int) -> None:
    """SIGKILL to `pid`; gone: nothing."""
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
