"""One writer per run directory: `run.lock`, which survives `kill -9` and works on shared file systems.

    with RunLock(run_dir) as lock:    # raises RunDirectoryError naming the holder when the run is in use
        ...                            # lock.took_over: the dead holder whose stale lock was taken, or None
    note = preview(run_dir)            # what acquire would meet, read-only (the dry run): None, a note, or raises

Only the main process of a job takes it (the other ranks learn the outcome from it). How it is decided:

- **Taking it** is creating `run.lock` with `O_CREAT | O_EXCL`, which is atomic on local file systems and on
  NFS (v3 and later). The holder takes an `fcntl` lock on it at once, where the file system supports one, and
  then writes its identity as JSON: host, pid, the process's start time in clock ticks, the machine's boot id,
  the command, and when it started.
- **While it is held**, a thread touches the file every `HEARTBEAT_S` seconds.
- **A lock already there** is judged stale, and taken over, only on proof that its holder is gone:
  on the same host, its pid is not running, or runs another program (another start time), or the machine has
  rebooted since (another boot id); on another host, its heartbeat is older than `STALE_AFTER_S`. An `fcntl`
  lock that is still held proves the holder alive and is never taken over. A free `fcntl` lock proves
  nothing on a shared file system: NFS mounted with `nolock` keeps locks local to each machine.
- **A lock that names no holder** — empty (a holder killed between creating and writing it, or a crash that
  lost its bytes), not JSON, or unreadable — is judged by what is left: a held `fcntl` lock proves a live holder;
  on a local file system (ext4, xfs, tmpfs, …, where every process that can open the file shares this kernel's
  locks) a free one proves there is none, as does a last write from before this machine booted; anywhere, so
  does a file nobody has touched for `STALE_AFTER_S` (a live holder's heartbeat touches it). Without such a
  proof the command stops with one line that names the file, says what is known and gives the `rm` that clears
  it. A file that is too young to judge (being written) is looked at again for `WRITE_GRACE_S`.
- **Something that is not a lock file** (a directory, a link, a pipe, a file far larger than an identity) under
  either name was not written by ssl_vit: it is never deleted, and the line says how to move it away.
- **Taking over** happens under a second, short-lived exclusive file (`run.lock.takeover`), so two processes
  that both find the same stale lock cannot both win. It carries its maker's identity and `fcntl` lock, and is
  judged by the same rules (on another host it is stale `TAKEOVER_STALE_S` after it was made); a live one is
  waited for, for `SETTLE_S` at most.

What this cannot do: tell whether a process on another machine is alive sooner than `STALE_AFTER_S` after its
last heartbeat (a job requeued on another node waits up to that long, the message says so), or guard against
clocks that differ between machines by more than that.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import RunDirectoryError
from ..files import write_error

LOCK_NAME = "run.lock"
TAKEOVER_NAME = LOCK_NAME + ".takeover"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
TAKEOVER_STALE_S = 60.0  # a takeover file left by a process killed in the middle of a takeover (another host)
WRITE_GRACE_S = 2.0  # a file without an identity this young may still be being written: look again
SETTLE_S = 10.0  # the longest acquire waits for a takeover under way, or for locks that come and go
MAX_LOCK_BYTES = 64 * 1024  # an identity is well under 1 kB: a bigger file is something else
# File systems of this machine's own disks or memory: every process that can open a file there runs under this
# kernel and sees its fcntl locks, so a free lock proves that nobody holds it.
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "zfs", "jfs",
                                "reiserfs", "bcachefs", "overlay"})

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"


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


# ------------------------------------------------------------------------------------- what a lock file says
@dataclass(frozen=True)
class Found:
    """What lies at a lock's path: its holder when it names one, else `problem`, why it names none."""

    path: Path
    holder: dict | None
    problem: str | None  # "it is empty", "it cannot be read (…)", … (None when `holder` is set)
    foreign: bool  # not a lock file ssl_vit could have written (a directory, a link, a huge file): never deleted
    signature: tuple  # (device, inode, size, mtime) and the bytes: the same file, unchanged since
    age: float  # seconds since it was last written or touched (0 when its date lies in the future)

    def same_as(self, other: "Found | None") -> bool:
        return other is not None and other.signature == self.signature


def look(path: Path) -> Found | None:
    """The lock file at `path`, read without blocking and without following a link; None when there is none."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        return Found(path, None, f"it cannot be examined ({err.strerror})", False, (None,), 0.0)
    age = max(time.time() - st.st_mtime, 0.0)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if not stat.S_ISREG(st.st_mode):
        return Found(path, None, f"it is {_kind(st.st_mode)}, not a lock file", True, identity, age)
    if st.st_size > MAX_LOCK_BYTES:
        return Found(path, None, f"it holds {st.st_size:,} bytes, far more than a lock's few hundred", True,
                     identity, age)
    try:
        data = _read_bytes(path)
    except OSError as err:
        owner = f"; it belongs to {_owner(st.st_uid)}" if st.st_uid != os.geteuid() else ""
        return Found(path, None, f"it cannot be read ({err.strerror or type(err).__name__}{owner})", False,
                     identity, age)
    signature = (*identity, data)
    if not data.strip(b"\0 \t\r\n"):
        empty = "it is empty" if not data else f"it holds {len(data):,} bytes of nothing (zeros or blanks)"
        return Found(path, None, empty, False, signature, age)
    holder = _identity(data)
    if holder is None:
        return Found(path, None, f"its {len(data):,} bytes are not a lock holder's identity", False, signature, age)
    return Found(path, holder, None, False, signature, age)


def judge(found: Found, stale_after: float = STALE_AFTER_S) -> tuple[str, str]:
    """(ALIVE, DEAD or UNKNOWN, why): whether `found`'s holder is alive, by the rules of the module docstring."""
    held = _fcntl_held(found.path)
    if held:
        return ALIVE, "it holds the file's lock"
    holder = found.holder
    if holder is not None:
        if holder.get("host") == socket.gethostname():
            if holder.get("boot_id") != _boot_id():
                return DEAD, "the machine has rebooted since"
            ticks = _start_ticks(holder["pid"])
            if ticks is None:
                return DEAD, "no longer running"
            if holder.get("start_ticks") is not None and ticks != holder["start_ticks"]:
                return DEAD, "no longer running (its pid now belongs to another process)"
            return ALIVE, "running"
        if found.age > stale_after:
            return DEAD, f"no heartbeat for {found.age:.0f} s"
        return ALIVE, (f"its last heartbeat was {found.age:.0f} s ago; a job on another machine is taken for dead "
                       f"{stale_after:.0f} s after its last heartbeat")
    local = _local_file_system(found.path)
    if held is False and local:
        return DEAD, "no process holds its file lock, which a holder on this local file system always keeps"
    if local and found.age > time.time() - _boot_time():
        return DEAD, "it was last written before this machine booted"
    if found.age > stale_after:
        return DEAD, f"nothing has touched it for {found.age:.0f} s (a holder's heartbeat would, every {HEARTBEAT_S:.0f} s)"
    lock = ("no process holds its file lock, but on this shared file system that proves nothing" if held is False
            else "its file lock cannot be tested here")
    return UNKNOWN, (f"{lock}, and it was last touched {found.age:.0f} s ago (untouched for {stale_after:.0f} s it "
                     "counts as abandoned)")


def describe(holder: dict) -> str:
    if holder.get("pid") is None:
        return holder.get("what", "an unknown holder")
    command = f", command: {holder['command']}" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}{command})"


def preview(run_dir: str | Path) -> str | None:
    """What `RunLock(run_dir).acquire()` would meet, without taking or changing anything: None when nobody holds
    the lock, a note when a stale lock would be taken over; raises acquire's own RunDirectoryError when the run
    is in use or its lock is stranded (what `ssl-vit pretrain --dry-run` reports)."""
    found = look(Path(run_dir) / LOCK_NAME)
    if found is None:
        return None
    verdict, why = _verdict(found, STALE_AFTER_S)
    return f"would take over the lock of {describe(_took(found, why))}, {why}"


# ------------------------------------------------------------------------------------------------ the lock
class RunLock:
    """The exclusive right to write into `run_dir` (see the module docstring for how staleness is judged)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.took_over: dict | None = None
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_seen: dict[tuple, float] = {}  # signature → when this process first saw that file

    # ------------------------------------------------------------------------------------------ public
    def acquire(self) -> "RunLock":
        deadline = time.monotonic() + SETTLE_S
        waiting_for = "other processes keep taking and releasing it"
        while True:
            if self._create():
                self._start_heartbeat()
                return self
            found = look(self.path)
            obstacle = None
            if found is not None and self._too_young(found):
                obstacle = f"{self.path} is being written"
            elif found is not None:
                _, why = _verdict(found, STALE_AFTER_S)  # raises unless its holder is proven gone
                obstacle = self._take_over(found, why)  # None: ours to create now (or another's, judged next)
            waiting_for = obstacle or waiting_for
            if time.monotonic() > deadline:
                raise RunDirectoryError(f"{self.path}: could not take the run's lock within {SETTLE_S:.0f} s "
                                        f"({waiting_for}); make sure only one job writes into this output_dir")
            if obstacle is not None:
                time.sleep(0.05)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            found = look(self.path)
            mine = found.holder if found is not None else None
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
        """Create the lock file exclusively, lock it, write our identity; False when it exists."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise write_error(self.path, err, "run lock") or err from None
        _try_fcntl(fd)  # before the identity: a lock that is still empty already proves a live holder
        try:
            os.write(fd, (json.dumps(process_identity()) + "\n").encode())
            os.fsync(fd)
        except OSError as err:
            self.path.unlink(missing_ok=True)
            os.close(fd)
            raise write_error(self.path, err, "run lock") or err from None
        self._fd = fd
        return True

    def _too_young(self, found: Found) -> bool:
        """A file without an identity that was made moments ago may still be being written: wait for it, for
        WRITE_GRACE_S by its date or (a date skewed by another machine's clock) by our own watch."""
        if found.holder is not None or found.foreign or found.age >= WRITE_GRACE_S:
            return False
        return self._watched(found) < WRITE_GRACE_S

    def _watched(self, found: Found) -> float:
        return time.monotonic() - self._first_seen.setdefault(found.signature, time.monotonic())

    def _take_over(self, stale: Found, why: str) -> str | None:
        """Remove the stale lock `stale`, if it is still the one there, while holding the takeover file. Returns
        None when the lock may be created now, else what is being waited for (a takeover under way)."""
        guard = self.path.with_name(TAKEOVER_NAME)
        try:
            fd = os.open(guard, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return self._judge_guard(guard)
        except OSError as err:
            raise write_error(guard, err, "run lock takeover") or err from None
        try:
            _try_fcntl(fd)
            try:
                os.write(fd, (json.dumps(process_identity()) + "\n").encode())
            except OSError:
                pass  # held for milliseconds; an empty takeover file is judged by its file lock and its age
            if stale.same_as(look(self.path)):
                _remove(self.path, "the stale run lock")
                self.took_over = _took(stale, why)
        finally:
            guard.unlink(missing_ok=True)  # before closing: our fcntl lock covers it until it is gone
            os.close(fd)
        return None

    def _judge_guard(self, guard: Path) -> str | None:
        """A takeover file is in the way: remove it when its maker is proven gone (None: try again at once);
        wait while a live takeover finishes (returns what is waited for); raise when it is stranded."""
        found = look(guard)
        if found is None:
            return None
        if found.foreign:
            raise _foreign(found)
        if self._too_young(found):
            return f"{guard} is being written"
        verdict, why = judge(found, TAKEOVER_STALE_S)
        if verdict == DEAD:
            if found.same_as(look(guard)):
                _remove(guard, "the abandoned takeover file")
            return None
        watched = self._watched(found)
        if verdict == ALIVE and watched < SETTLE_S:
            return f"{describe(found.holder) if found.holder else 'a process'} is taking it over ({guard})"
        if verdict == ALIVE:
            who = describe(found.holder) if found.holder else "a process that holds its file lock"
            raise RunDirectoryError(
                f"{guard}: {who} has been taking over {self.path} for {watched:.0f} s without finishing ({why}); "
                f"if it is stuck, stop it; if no process is taking over the lock, clear it: {_rm(guard)}")
        if watched < WRITE_GRACE_S:
            return f"{guard} is left from a takeover"
        raise _stranded(found, why, " (left by a takeover of the run's lock that did not finish)")

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


# ------------------------------------------------------------------------------------------- the verdicts
def _verdict(found: Found, stale_after: float) -> tuple[str, str]:
    """judge(found), raising the one-line refusal unless its holder is proven gone: (DEAD, why)."""
    if found.foreign:
        raise _foreign(found)
    verdict, why = judge(found, stale_after)
    if verdict == ALIVE:
        run_dir = found.path.parent
        if found.holder is not None:
            raise RunDirectoryError(f"{run_dir} is in use by {describe(found.holder)} ({why}); "
                                    "wait for it to finish or stop it, or choose another output_dir")
        raise RunDirectoryError(
            f"{run_dir} is in use: a process holds the file lock of {found.path}, which names no holder "
            f"({found.problem}); wait for it to finish or stop it (`fuser -v {shlex.quote(str(found.path))}` "
            "names it), or choose another output_dir")
    if verdict == UNKNOWN:
        raise _stranded(found, why)
    return verdict, why


def _stranded(found: Found, why: str, left_by: str = "") -> RunDirectoryError:
    """The line for a file that names no holder and cannot be proven abandoned."""
    return RunDirectoryError(
        f"{found.path}{left_by} names no holder ({found.problem}) and cannot be shown abandoned: {why}. If no "
        f"ssl-vit job is writing into {found.path.parent}, clear it: {_rm(found.path)}")


def _foreign(found: Found) -> RunDirectoryError:
    moved = found.path.with_name(found.path.name + ".moved")
    return RunDirectoryError(
        f"{found.path}: {found.problem} ssl-vit writes, so no run holds it, and it is not deleted; move it out of "
        f"the way: mv {shlex.quote(str(found.path))} {shlex.quote(str(moved))}")


def _took(found: Found, why: str) -> dict:
    """`took_over` for a stale lock: its holder's identity, or a description of a lock that named none."""
    if found.holder is not None:
        return {**found.holder, "reason": why}
    return {"pid": None, "host": None, "what": f"an unnamed holder ({found.path.name}: {found.problem})", "reason": why}


def _remove(path: Path, what: str) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise write_error(path, err, what) or RunDirectoryError(
            f"cannot remove {what} {path} ({err.strerror}); remove it yourself: {_rm(path)}") from None


def _rm(path: Path) -> str:
    return f"rm {shlex.quote(str(path))}"


# ------------------------------------------------------------------------------------------ the host
def _read_bytes(path: Path) -> bytes:
    """A lock file's bytes: never following a link, never blocking (a pipe made under the name meanwhile)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return os.read(fd, MAX_LOCK_BYTES + 1)
    finally:
        os.close(fd)


def _identity(data: bytes) -> dict | None:
    """The holder a lock file names (host and a positive pid at least, of the right types), else None."""
    try:
        holder = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(holder, dict):
        return None
    pid, host, ticks, boot = (holder.get(k) for k in ("pid", "host", "start_ticks", "boot_id"))
    if not isinstance(host, str) or type(pid) is not int or pid <= 0:
        return None
    if (ticks is not None and type(ticks) is not int) or (boot is not None and not isinstance(boot, str)):
        return None
    return holder


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a pipe"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name}"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if not running."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
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
    fields = stat_line[stat_line.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime 22
    if fields[0] in ("Z", "X"):
        return None  # a zombie: dead, waiting for its parent
    return int(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _boot_time() -> float:
    """When this machine booted (seconds since the epoch); 0 when unknown (then nothing predates it)."""
    try:
        return time.time() - float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def _local_file_system(path: Path) -> bool:
    """True when `path` lies on one of LOCAL_FILE_SYSTEMS (by /proc/self/mountinfo); False for network file
    systems, and whenever it cannot be told."""
    try:
        target = os.path.realpath(path)
        best, kind = "", None
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), left.split()[4])
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):  # the deepest mount wins; a later one hides an earlier one
                best, kind = mount, right.split()[0]
    except (OSError, IndexError):
        return False
    return kind in LOCAL_FILE_SYSTEMS


def _try_fcntl(fd: int) -> None:
    try:
        import fcntl

        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass  # no lock support here (e.g. NFS without a lock manager): the lock file alone decides


def _fcntl_held(path: Path) -> bool | None:
    """True when another process holds an fcntl lock on `path` (proof of life); False when it is free; None when
    it cannot be tested (no permission to open the file, no lock support)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (ImportError, OSError):
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        return True if err.errno in (errno.EACCES, errno.EAGAIN) else None
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)  # closing any descriptor of the file drops this process's fcntl locks on it
