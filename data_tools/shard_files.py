"""Which local files may be read as shards, and how they are opened: regular files only, and never blocking.

A shard folder may come out of a downloaded archive, and `tar x` recreates whatever the archive holds: a FIFO
(opening it for reading waits for a writer for ever), a device (`/dev/zero` never ends), a socket, or a
symlink to any file of the machine. So a shard must be a regular file. `shard_file_problem` says why a path is
not one before anything opens it (training, evaluation and `ssl-vit-shards verify` all ask it), and
`open_shard_file` checks again on the open descriptor, opened with O_NONBLOCK: a FIFO swapped in after the check
still cannot block the open, and is refused.

A shard that leads out of its folder through a symlink is refused too, unless the user says the links are theirs
(`--follow-symlinks`, `data.follow_symlinks=true`), as the build refuses symlinks out of SRC. Only real paths
are compared, so a shard folder that is itself a symlink (a mount, `/data -> /mnt/disk2/data`) is fine.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

MISSING, NOT_REGULAR, OUTSIDE = "missing", "not a regular file", "outside"


@dataclass(frozen=True)
class ShardFileProblem:
    """Why a path is not read as a shard: `kind` (MISSING, NOT_REGULAR, OUTSIDE) and the words for it."""

    kind: str
    text: str  # completes "shard PATH ...", e.g. "is a FIFO, not a regular file"

    def __str__(self) -> str:
        return self.text


class NotRegularFile(OSError):
    """An opened shard that is not a regular file (it was swapped after the check)."""


def shard_file_problem(path: str | os.PathLike, folder: str | os.PathLike,
                       follow_symlinks: bool = False) -> ShardFileProblem | None:
    """Why `path` may not be read as a shard of `folder`, or None. Nothing is opened: only `stat` and links."""
    try:
        mode = os.stat(path).st_mode  # follows links: the file that would be read
    except FileNotFoundError:
        if os.path.islink(path):
            return ShardFileProblem(MISSING, f"is a symlink to {os.readlink(path)}, which does not exist")
        return ShardFileProblem(MISSING, "does not exist")
    except OSError as err:
        return ShardFileProblem(MISSING, f"cannot be examined ({err.strerror})")
    if not stat.S_ISREG(mode):
        return ShardFileProblem(NOT_REGULAR, f"is {file_kind(mode)}, not a regular file")
    if not follow_symlinks:
        real, base = os.path.realpath(path), os.path.realpath(folder)
        if os.path.commonpath([real, base]) != base:
            return ShardFileProblem(OUTSIDE, f"leads through a symlink to {real}, outside {folder}")
    return None


def open_shard_file(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for reading, after checking on the descriptor that it is a regular file (NotRegularFile)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"it is {file_kind(mode)}, not a regular file (refused, never read)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """'a FIFO', 'a character device', … for a `st_mode`."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"
