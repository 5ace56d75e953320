"""One writer per run directory: `run.lock`, which survives `kill -9` and works on shared file systems.

    with RunLock(run_dir) as lock:    # raises RunDirectoryError naming the holder when the run is in use
        ...                            # lock.took_over: the dead holder whose stale lock was taken, or None

Only the main process of a job takes it (the other ranks learn the outcome from it). How it is decided:

- **Taking it** is creating `run.lock` with `O_CREAT | O_EXCL`, which is atomic on local file systems and on
  NFS (v3 and later). The file holds the holder's identity as JSON: host, pid, the process's start time in
  clock ticks, the machine's boot id, the command, and when it started.
- **While it is held**, a thread touches the file every `HEARTBEAT_S` seconds, and the holder also keeps an
  `fcntl` lock on it where the file system supports one.
- **A lock already there** is judged stale, and taken over, only on proof that its holder is gone:
  on the same host, its pid is not running, or runs another program (another start time), or the machine has
  rebooted since (another boot id); on another host, its heartbeat is older than `STALE_AFTER_S`. An `fcntl`
  lock that is still held proves the holder alive and is never taken over. A free `fcntl` lock proves
  nothing: NFS mounted with `nolock` keeps locks local to each machine, so it is not used to declare anyone
  dead.
- **Taking over** happens under a second, short-lived exclusive file (`run.lock.takeover`), so two processes
  that both find the same stale lock cannot both win.

What this cannot do: tell whether a process on another machine is alive sooner than `STALE_AFTER_S` after its
last heartbeat (a job requeued on another node waits up to that long, the message says so), or guard against
clocks that differ between machines by more than that.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..errors import RunDirectoryError
from ..files import write_error

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
TAKEOVER_STALE_S = 60.0  # a takeover file left by a process killed in the middle of a takeover


def process_identity(pid: int | None = None) -> dict:
    """Who holds a lock: host, pid, start time (clock ticks since boot) and boot id, command, start date."""
    pid = os.getpid() if pid is None else pid
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "start_ticks": _start_ticks(pid),
        "boot_id": _boot_id(),
        "command": " ".join(sys.argv)[:500],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class RunLock:
    """The exclusive right to write into `run_dir` (see the module docstring for how staleness is judged)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.took_over: dict | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ public
    def acquire(self) -> "RunLock":
        for _ in range(3):  # a lock released or taken over between our look and our create: look again
            if self._create():
                self._start_heartbeat()
                return self
            holder = self._read(self.path)
            if holder is None:
                continue  # gone meanwhile, or still being written: try again
            alive, why = self._judge(holder)
            if alive:
                raise RunDirectoryError(f"{self.path.parent} is in use by {describe(holder)} ({why}); "
                                        "wait for it to finish or stop it, or choose another output_dir")
            self._take_over(holder, why)
        raise RunDirectoryError(f"{self.path}: could not take the run's lock (other processes keep taking it); "
                                "make sure only one job writes into this output_dir")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            mine = self._read(self.path)
            if mine is not None and mine.get("pid") == os.getpid() and mine.get("host") == socket.gethostname():
                try:
                    self.path.unlink()
                except OSError:
                    pass
            os.close(self._fd)  # also drops the fcntl lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ----------------------------------------------------------------------------------------- pieces
    def _create(self) -> bool:
        """Create the lock file exclusively with our identity; False when it exists."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise write_error(self.path, err, "run lock") or err from None
        try:
            os.write(fd, (json.dumps(process_identity()) + "\n").encode())
            os.fsync(fd)
        except OSError as err:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise write_error(self.path, err, "run lock") or err from None
        _try_fcntl(fd)
        self._fd = fd
        return True

    def _judge(self, holder: dict) -> tuple[bool, str]:
        """(is the holder alive?, why we think so)."""
        if _fcntl_held(self.path):
            return True, "it holds the file's lock"
        if holder.get("host") == socket.gethostname():
            if holder.get("boot_id") != _boot_id():
                return False, "the machine has rebooted since"
            pid = int(holder.get("pid", -1))
            ticks = _start_ticks(pid)
            if ticks is None:
                return False, "no longer running"
            if holder.get("start_ticks") is not None and ticks != holder["start_ticks"]:
                return False, "no longer running (its pid now belongs to another process)"
            return True, "running"
        age = _age(self.path)
        if age is None or age > STALE_AFTER_S:
            return False, f"no heartbeat for {age or 0:.0f} s"
        return True, (f"its last heartbeat was {age:.0f} s ago; a job on another machine is taken for dead "
                      f"{STALE_AFTER_S:.0f} s after its last heartbeat")

    def _take_over(self, holder: dict, why: str) -> None:
        """Remove `holder`'s stale lock, if it is still the one there, while holding the takeover file."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            age = _age(guard)
            if age is not None and age > TAKEOVER_STALE_S:
                guard.unlink(missing_ok=True)
            time.sleep(0.05)
            return
        try:
            if self._read(self.path) == holder:
                self.path.unlink(missing_ok=True)
                self.took_over = {**holder, "reason": why}
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a missing or unwritable lock file shows up as a stale heartbeat to others

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def describe(holder: dict) -> str:
    command = f", command: {holder['command']}" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}{command})"


# ------------------------------------------------------------------------------------------ the host
def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:
            os.kill(pid, 0)  # no /proc (macOS): existence only
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    if fields[0] in ("Z", "X"):
        return None  # a zombie: dead, waiting for its parent
    return int(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _age(path: Path) -> float | None:
    try:
        return max(time.time() - path.stat().st_mtime, 0.0)
    except OSError:
        return None


def _try_fcntl(fd: int) -> None:
    try:
        import fcntl

        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass  # no lock support here (e.g. NFS without a lock manager): the lock file alone decides


def _fcntl_held(path: Path) -> bool:
    """True when another process holds an fcntl lock on `path` (proof of life); False when free or unsupported."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR)
    except (ImportError, OSError):
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EACCES, errno.EAGAIN)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)  # closing any descriptor of the file drops this process's fcntl locks on it
