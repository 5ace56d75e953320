"""Whose is it: ssl_vit deletes or replaces only what it wrote there, and what it can prove it wrote.

A directory ssl_vit writes into keeps a manifest of what it wrote: a run directory its own file
(`train/manifest.py`: names and kinds, since its logs grow and its checkpoints rotate while it trains), an
export the `files` record inside its config (`models/formats/ownership.py`: names, sizes and sha256, written
once). Runs and exports of earlier versions carry none; they are recognised by their content instead. Whatever
neither proves is somebody else's: kept, and named.

What both share lives here: a file's record, and the removal plan that checks every path it will delete
before it deletes the first, so a refusal (no permission, a read-only disk) leaves everything as it was.

    removal = Removal(root, delete=[...], kept=[...])
    removal.check()      # StorageError naming the first path that cannot be deleted; nothing deleted yet
    removal.run()        # deletes, never following a link: a link is removed, what it leads to is not
    removal.kept_line("this run's")   # "kept: 2 files that are not this run's: a.txt, notes/"

`delete` holds files, links and folders that are wholly ours (a checkpoint, a tracker's folder); a folder that
also holds somebody else's files is never in it: its own entries are, and `prune` names it, to be removed
only if it ends up empty.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StorageError

SHOWN = 5  # names listed in one line before "and N more"


def file_record(path: Path, *, digest: bool = True) -> dict:
    """{"size", "sha256"} of a file as written (sha256 left out with `digest=False`: large weights)."""
    path = Path(path)
    record: dict = {"size": path.stat().st_size}
    if digest:
        record["sha256"] = sha256_of(path)
    return record


def text_record(text: str | bytes) -> dict:
    """The record a file holding exactly `text` will have (for a file not written yet)."""
    data = text.encode() if isinstance(text, str) else text
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def matches(path: Path, record: object) -> bool:
    """Whether the file at `path` is still the one `record` describes (size, and sha256 where recorded)."""
    if not isinstance(record, dict) or not path.is_file() or path.is_symlink():
        return False
    if record.get("size") != path.stat().st_size:
        return False
    return "sha256" not in record or record["sha256"] == sha256_of(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing(paths: list[Path], root: Path) -> str:
    """`a.txt, notes/, checkpoints/x` (folders with a slash), at most SHOWN names and "and N more"."""
    names = [_shown(p, root) for p in sorted(paths)]
    extra = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + extra


@dataclass
class Removal:
    """What a command deletes under `root` (checked in full first) and what it keeps there."""

    root: Path
    delete: list[Path] = field(default_factory=list)  # wholly ours: files, links, folders
    prune: list[Path] = field(default_factory=list)  # our folders: removed after `delete` if empty
    kept: list[Path] = field(default_factory=list)  # not ours: never touched, named

    def check(self) -> None:
        """Raise `StorageError` naming the first path that cannot be deleted (a folder without write permission,
        a read-only file system, a sticky folder of another user); deletes nothing."""
        for path in self.delete:
            _check_removable(path)
            if path.is_dir() and not path.is_symlink():
                for folder, dirs, files in os.walk(path, onerror=_raise):
                    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                        raise _cannot(Path(folder), path, "no permission to empty it")
                    for name in dirs + files:
                        _check_sticky(Path(folder) / name)

    def run(self) -> None:
        """Delete `delete` (links are removed, never followed), then the `prune` folders that are empty."""
        for done, path in enumerate(self.delete):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as err:
                raise StorageError(
                    f"could not delete {path} ({err.strerror or err}); {done} of the {len(self.delete)} entries "
                    "planned were deleted before it, the rest are as they were; fix it and run the command again"
                ) from None
        for folder in self.prune:
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                try:
                    folder.rmdir()
                except OSError:
                    pass  # an empty folder of ours may stay

    def kept_line(self, whose: str) -> str:
        """"kept: 2 files that are not this run's: a.txt, notes/", or "" when nothing is kept."""
        if not self.kept:
            return ""
        n = len(self.kept)
        return f"kept: {n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not {whose}: " \
               f"{listing(self.kept, self.root)}"

    def deleting_line(self) -> str:
        """The paths deleted, a folder's entries grouped: `RUN/config.yaml, RUN/checkpoints/{latest, step_…}`."""
        groups: dict[Path, list[str]] = {}
        for path in self.delete:
            groups.setdefault(path.parent, []).append(path.name)
        parts = []
        for parent, names in groups.items():
            if parent == self.root or len(names) == 1:
                parts += [str(parent / name) for name in names]
            else:
                parts.append(f"{parent}/{{{', '.join(sorted(names))}}}")
        return ", ".join(parts)


def _shown(path: Path, root: Path) -> str:
    try:
        name = path.relative_to(root).as_posix()
    except ValueError:
        name = str(path)
    return name + ("/" if path.is_dir() and not path.is_symlink() else "")


def _check_removable(path: Path) -> None:
    parent = path.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "its file system is read-only" if _read_only(parent) else f"no permission to write to {parent}"
        raise _cannot(path, path, why)
    _check_sticky(path)


def _check_sticky(path: Path) -> None:
    """In a sticky folder (like /tmp) only the owner of an entry or of the folder may delete it."""
    try:
        folder, entry = os.stat(path.parent), os.lstat(path)
    except FileNotFoundError:
        return
    uid = os.geteuid()
    if folder.st_mode & stat.S_ISVTX and uid != 0 and uid not in (folder.st_uid, entry.st_uid):
        raise _cannot(path, path, f"{path.parent} is sticky and {path.name} belongs to another user")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _cannot(path: Path, planned: Path, why: str) -> StorageError:
    where = "" if path == planned else f" (inside {planned})"
    return StorageError(f"cannot delete {path}{where}: {why}; nothing was deleted. Fix the permissions, or choose "
                        "another directory")


def _raise(err: OSError) -> None:
    raise StorageError(f"cannot read {err.filename} ({err.strerror}); nothing was deleted. Fix the permissions, or "
                       "choose another directory")
