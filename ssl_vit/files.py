"""Every file ssl_vit writes goes through here: complete or absent, and a failure is one line naming the file.

`atomic_write(path, data)` writes into a temporary file beside `path`, flushes it to disk and renames it into
place, so a kill or a full disk never leaves half a file under the final name (config.yaml, checkpoints, the
`latest` pointer, exported weights and model cards, the feature cache, results, reports, figures all use it).
`data` may be a function that writes into the binary file object it is handed: `lambda f: torch.save(obj, f)`,
`lambda f: fig.savefig(f, format="png")`, `lambda f: image.save(f, format="PNG")`. `append_line` adds one line to
a log (`metrics.jsonl`, `eval.jsonl`), `make_dir` creates a directory, and `publish_dir` renames a directory
written in full into place (a checkpoint).

The rule, checked by `tests/test_writes_through_files.py`: no other module of ssl_vit opens a file for writing,
creates a directory, renames or copies a file, or saves one (torch.save, json.dump, savefig, Image.save,
safetensors' save_file, ...) except into the file object `atomic_write` hands its function. The few writes that
cannot go through here (the run lock, created with O_EXCL and held open; `ssl-vit launch`'s private mkdtemp
folder) are listed in that test with their reasons. Deleting is not writing and is not routed. data_tools, which
imports neither torch nor ssl_vit, has its own writer under the same rule: `data_tools/files.py`, and
`data_tools/tarwriter.py` for the shards it streams.

A write that fails for a reason the user can fix — a full disk, a quota, a read-only file system, no
permission, a directory where a file should be, a file where a directory should be — raises `StorageError`
with one line that names the file and the fix. torch's own writer reports a full disk as "unexpected pos 704
vs 598" or "file write failed"; that is translated too.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable, Union

from .errors import StorageError

Data = Union[bytes, str, Callable[[BinaryIO], None]]

# Substrings of torch's (C++) writer errors that mean the bytes did not reach the disk.
_TORCH_SHORT_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def atomic_write(path: str | Path, data: Data) -> Path:
    """Write `data` (bytes, text, or a function writing to a binary file object) to `path` all at once.

    The temporary file `.NAME.tmp-PID` lives in the same directory (a rename never crosses file systems) and is
    removed when the write fails. Returns `path`.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # update the file the link names, not the link
    if path.exists() and not path.is_file() and not path.is_dir():
        return _write_in_place(path, data)  # a device or pipe (/dev/null): renaming onto it would replace it
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _discard(tmp)
        if isinstance(err, (OSError, RuntimeError)):
            mapped = write_error(path, err)
            if mapped is not None:
                raise mapped from err
        raise
    return path


def _write_in_place(path: Path, data: Data) -> Path:
    try:
        with open(path, "wb") as f:
            data(f) if callable(data) else f.write(data.encode() if isinstance(data, str) else data)
    except (OSError, RuntimeError) as err:
        mapped = write_error(path, err)
        if mapped is None:
            raise
        raise mapped from err
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append `line` and a newline to a log file; flushed, so a reader (or a kill) sees whole lines only."""
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as err:
        _reraise(path, err)


def append_bytes(path: str | Path, data: bytes) -> None:
    """Append `data` to a binary record file (the samples record); a kill may leave a partial record at the end,
    which its reader drops."""
    path = Path(path)
    try:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
    except OSError as err:
        _reraise(path, err)


def make_dir(path: str | Path, what: str = "directory") -> Path:
    """`mkdir -p path`, with a file in the way, no permission or a full disk as one line naming `what`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StorageError(f"{what} {path} is a file, not a directory; choose another path or move the file away")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _reraise(path, err, what)
    return path


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Rename a directory written in full under `tmp` to `final`. A directory already there (the same checkpoint
    step saved again) is renamed aside first and deleted after, so `final` is always one complete directory."""
    tmp, final = Path(tmp), Path(final)
    try:
        if final.exists():
            old = final.with_name(f".old-{final.name}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as err:
        _reraise(final, err)
    return final


def write_error(path: Path, err: BaseException, what: str = "") -> StorageError | None:
    """The one-line `StorageError` for a failed write of `path`, or None when `err` is not the user's to fix."""
    name = f"{what} {path}" if what else str(path)
    if isinstance(err, RuntimeError):
        if not any(marker in str(err) for marker in _TORCH_SHORT_WRITE):
            return None
        code = errno.ENOSPC  # torch's writer stops short only when the file system takes no more bytes
    else:
        code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        kind = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        return StorageError(f"{kind} on {_mount_point(path)} while writing {name}; free space there (or choose "
                            "another output directory) and run the command again")
    if code == errno.EROFS:
        return StorageError(f"cannot write {name}: {_mount_point(path)} is mounted read-only; choose a writable location")
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {name}: permission denied; choose a location you can write to")
    if code == errno.EISDIR:
        return StorageError(f"cannot write {name}: it is a directory; move it away or choose another name")
    if code in (errno.ENOTDIR, errno.EEXIST):
        parent = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), Path(path).parent)
        return StorageError(f"cannot write {name}: {parent} is a file, not a directory; choose another path")
    if code == errno.ENAMETOOLONG:
        return StorageError(f"cannot write {name}: the name is too long for the file system")
    return None


def _reraise(path: Path, err: OSError, what: str = "") -> None:
    mapped = write_error(path, err, what)
    if mapped is None:
        raise err
    raise mapped from err


def _mount_point(path: Path) -> str:
    """The mount point of the file system holding `path` (what `df` would name as the full device)."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return str(here)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except OSError:
        pass
