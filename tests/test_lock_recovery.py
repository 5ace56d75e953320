"""A run's lock never strands a run (issue #24): a `run.lock` that names no holder — empty, garbage, unreadable —
or a takeover file left by a process that died is either proven abandoned and taken over, or refused with one
line that names the file, says what is known and gives the command that clears it. Something that is not a lock
file under those names is never deleted. Each test builds the file it is about."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ssl_vit.errors import RunDirectoryError
from ssl_vit.train import run_lock
from ssl_vit.train.run_lock import LOCK_NAME, TAKEOVER_NAME, RunLock, preview, process_identity

FALSE_CLAIM = "keep taking"  # the old message for every lock it could not read


def backdate(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def refusal(run_dir: Path) -> str:
    with pytest.raises(RunDirectoryError) as err:
        RunLock(run_dir).acquire()
    message = str(err.value)
    assert "\n" not in message and FALSE_CLAIM not in message
    return message


@pytest.fixture
def shared_fs(monkeypatch):
    """The run directory as if on NFS: a free fcntl lock proves nothing there."""
    monkeypatch.setattr(run_lock, "_local_file_system", lambda path: False)


@pytest.fixture(autouse=True)
def short_waits(monkeypatch):
    monkeypatch.setattr(run_lock, "WRITE_GRACE_S", 0.3)
    monkeypatch.setattr(run_lock, "SETTLE_S", 1.0)


@pytest.fixture(autouse=True)
def local_tmp(tmp_path):
    if not run_lock._local_file_system(tmp_path):
        pytest.skip(f"{tmp_path} is not on a local file system: these tests set the file system by hand")


# ------------------------------------------------------------------------------------- no holder named
@pytest.mark.parametrize("content, problem", [
    (b"", "it is empty"),
    (b"\0" * 512, "it holds 512 bytes of nothing"),  # what a crash can leave of data that had not reached the disk
    (b'{"host": "node-3", "pid": 41', "bytes are not a lock holder's identity"),  # a torn write
    (b'{"host": "node-3", "pid": "41"}', "bytes are not a lock holder's identity"),  # the wrong types
    (b"\x89PNG\r\n\x1a\n", "bytes are not a lock holder's identity"),
])
def test_a_lock_naming_no_holder_is_taken_over_on_a_local_file_system(tmp_path: Path, content, problem):
    path = tmp_path / LOCK_NAME
    path.write_bytes(content)
    backdate(path, 5)
    with RunLock(tmp_path) as lock:
        assert lock.took_over["pid"] is None and problem in lock.took_over["what"]
        assert "no process holds its file lock" in lock.took_over["reason"]
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


@pytest.mark.parametrize("content", [b"", b"garbage\n"])
def test_on_a_shared_file_system_it_is_refused_until_its_heartbeat_is_stale(tmp_path: Path, content, shared_fs):
    path = tmp_path / LOCK_NAME
    path.write_bytes(content)
    backdate(path, 40)
    message = refusal(tmp_path)
    assert message.startswith(f"{path} names no holder (")
    assert "no process holds its file lock, but on this shared file system that proves nothing" in message
    assert "last touched 40 s ago" in message and f"clear it: rm {path}" in message
    assert path.read_bytes() == content  # refused: nothing touched
    assert "names no holder" in str(pytest.raises(RunDirectoryError, preview, tmp_path).value)  # the dry run's word

    backdate(path, run_lock.STALE_AFTER_S + 10)
    assert preview(tmp_path).startswith("would take over the lock of an unnamed holder")
    with RunLock(tmp_path) as lock:
        assert lock.took_over["reason"].startswith("nothing has touched it for 31")


def test_the_command_the_refusal_gives_clears_it(tmp_path: Path, shared_fs):
    path = tmp_path / LOCK_NAME
    path.write_bytes(b"")
    backdate(path, 5)
    command = refusal(tmp_path).rsplit("clear it: ", 1)[1]
    subprocess.run(command, shell=True, check=True)
    with RunLock(tmp_path) as lock:
        assert lock.took_over is None


def test_an_unreadable_lock_is_judged_by_its_date(tmp_path: Path, monkeypatch):
    """Root reads any file, so the other user's 0600 lock is simulated: reading and opening it fail."""
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps(process_identity()))

    def denied(_path):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(run_lock, "_read_bytes", denied)
    monkeypatch.setattr(run_lock, "_fcntl_held", lambda _path: None)
    message = refusal(tmp_path)
    assert message.startswith(f"{path} names no holder (it cannot be read (Permission denied)")
    assert "its file lock cannot be tested here" in message and f"rm {path}" in message
    backdate(path, time.time() - run_lock._boot_time() + 60)  # written before this machine booted
    with RunLock(tmp_path) as lock:
        assert lock.took_over["reason"] == "it was last written before this machine booted"
        assert "cannot be read" in lock.took_over["what"]


def test_an_empty_lock_whose_file_lock_is_held_is_in_use(tmp_path: Path):
    """A holder killed with -9 between creating the lock and writing its identity: while it lives the empty
    file is in use (its fcntl lock, taken before the identity, says so); once it is dead it is taken over."""
    code = ("import os, sys, time\nfrom ssl_vit.train.run_lock import RunLock\n"
            "def stuck(fd, data):\n    print('created', flush=True)\n    time.sleep(600)\n"
            "os.write = stuck\nRunLock(sys.argv[1]).acquire()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "created\n"
        path = tmp_path / LOCK_NAME
        assert path.read_bytes() == b""
        message = refusal(tmp_path)
        assert message.startswith(f"{tmp_path} is in use: a process holds the file lock of {path}, which names no "
                                  "holder (it is empty)") and f"fuser -v {path}" in message
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path) as lock:
        assert "it is empty" in lock.took_over["what"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make, kind", [
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "a directory"),
    (lambda p: os.mkfifo(p), "a pipe"),  # opened, it would block for ever
    (lambda p: p.symlink_to(p.parent / "elsewhere"), "a symbolic link"),
    (lambda p: p.write_bytes(b"x" * (run_lock.MAX_LOCK_BYTES + 1)), "bytes, far more than a lock's"),
])
def test_what_is_not_a_lock_file_is_never_deleted(tmp_path: Path, make, kind):
    path = tmp_path / LOCK_NAME
    make(path)
    backdate(path, run_lock.STALE_AFTER_S + 10)
    before = os.lstat(path)
    message = refusal(tmp_path)
    assert message.startswith(f"{path}: ") and kind in message and "is not deleted" in message
    assert message.endswith(f"mv {path} {path}.moved")
    assert os.lstat(path).st_ino == before.st_ino
    with pytest.raises(RunDirectoryError, match="not deleted"):
        preview(tmp_path)


# --------------------------------------------------------------------------------------- takeover files
def test_a_takeover_file_of_a_dead_process_is_removed_and_the_stale_lock_taken(tmp_path: Path, shared_fs):
    """A process killed during a takeover leaves `run.lock.takeover`; once it was younger than a minute every
    start failed with "other processes keep taking it". Its maker's pid is dead: it goes at once."""
    stale = dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps(process_identity(stale)))
    (tmp_path / TAKEOVER_NAME).write_text(json.dumps(process_identity(dead_pid())))
    with RunLock(tmp_path) as lock:
        assert lock.took_over["pid"] == stale and lock.took_over["reason"] == "no longer running"
    assert not (tmp_path / TAKEOVER_NAME).exists() and not (tmp_path / LOCK_NAME).exists()


def test_an_empty_takeover_file(tmp_path: Path, monkeypatch):
    """An empty takeover file (its maker died before writing, or an older ssl-vit): on a local file system its
    free fcntl lock proves it abandoned; on a shared one it is refused, naming it, with the rm that clears it."""
    (tmp_path / LOCK_NAME).write_text(json.dumps(process_identity(dead_pid())))
    guard = tmp_path / TAKEOVER_NAME
    guard.write_bytes(b"")
    monkeypatch.setattr(run_lock, "_local_file_system", lambda path: False)
    message = refusal(tmp_path)
    assert message.startswith(f"{guard} (left by a takeover of the run's lock that did not finish) names no holder "
                              "(it is empty)") and message.endswith(f"clear it: rm {guard}")
    assert guard.exists() and (tmp_path / LOCK_NAME).exists()
    monkeypatch.setattr(run_lock, "_local_file_system", lambda path: True)
    with RunLock(tmp_path) as lock:
        assert lock.took_over["reason"] == "no longer running"
    assert not guard.exists()


def test_a_live_takeover_is_waited_for_and_a_stuck_one_named(tmp_path: Path):
    (tmp_path / LOCK_NAME).write_text(json.dumps(process_identity(dead_pid())))
    guard = tmp_path / TAKEOVER_NAME
    taker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        guard.write_text(json.dumps(process_identity(taker.pid)))
        message = refusal(tmp_path)  # SETTLE_S is 1 s here
        assert message.startswith(f"{guard}: pid {taker.pid} on ") and "has been taking over" in message
        assert "if it is stuck, stop it" in message and message.endswith(f"rm {guard}")

        threading.Timer(0.3, guard.unlink).start()  # a takeover that finishes while we wait
        with RunLock(tmp_path) as lock:
            assert lock.took_over["reason"] == "no longer running"
    finally:
        taker.kill()
        taker.wait()


def test_processes_that_find_one_stale_lock_together_let_one_win(tmp_path: Path):
    """The takeover file still does its job: of several processes that find the same dead holder, one takes the
    lock and the others are told who holds it now (never "keep taking it")."""
    (tmp_path / LOCK_NAME).write_text(json.dumps(process_identity(dead_pid())))
    code = ("import sys\nfrom ssl_vit.errors import RunDirectoryError\nfrom ssl_vit.train.run_lock import RunLock\n"
            "try:\n    lock = RunLock(sys.argv[1]).acquire()\nexcept RunDirectoryError as err:\n"
            "    print('refused', err, flush=True)\nelse:\n    print('took', flush=True)\n    sys.stdin.read()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        lines = [p.stdout.readline() for p in procs]  # the winner holds the lock until its stdin closes
    finally:
        for p in procs:
            p.communicate("", timeout=60)
    assert sum(line == "took\n" for line in lines) == 1, lines
    refused = [line for line in lines if line != "took\n"]
    assert all(line.startswith(f"refused {tmp_path} is in use by pid ") for line in refused), lines


# ------------------------------------------------------------------------------------------- a real start
@pytest.mark.timeout(300)
def test_pretrain_on_an_empty_lock_refuses_in_one_line_or_takes_it_over(pretrain, pretrain_shards_32, tmp_path,
                                                                        monkeypatch, capsys):
    """`ssl-vit pretrain` into a run directory whose lock a crash left empty: refused with the file and its rm
    where that cannot be proven abandoned (nothing else written), taken over and trained where it can."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / LOCK_NAME
    path.write_bytes(b"")
    backdate(path, 5)
    monkeypatch.setattr(run_lock, "_local_file_system", lambda p: False)
    steps = {"train.total_steps": 1, "optim.warmup_steps": 0, "train.checkpoint_every": 1}
    assert pretrain(pretrain_shards_32, run_dir, **steps) == 2
    err = capsys.readouterr().err
    lines = [re.sub(r"touched \d+ s ago", "touched N s ago", line) for line in err.splitlines() if "error:" in line]
    assert lines == [f"error: {path} names no holder (it is empty) and cannot be shown abandoned: no process holds "
                     "its file lock, but on this shared file system that proves nothing, and it was last touched N s "
                     "ago (untouched for 300 s it counts as abandoned). If no ssl-vit job is writing into "
                     f"{run_dir}, clear it: rm {path}"], err[-2000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME] and path.read_bytes() == b""

    monkeypatch.setattr(run_lock, "_local_file_system", lambda p: True)
    assert pretrain(pretrain_shards_32, run_dir, **steps) == 0
    out = capsys.readouterr().out
    assert (f"{run_dir}: took over the lock of an unnamed holder (run.lock: it is empty), no process holds its file "
            "lock, which a holder on this local file system always keeps") in out
    assert (run_dir / "checkpoints" / "latest").is_file() and not path.exists()
