"""Every file data_tools writes goes through here, but for the shards: complete or absent.

data_tools imports neither torch nor ssl_vit, so it has this small writer of its own (ssl_vit's is `ssl_vit/files.py`).
`atomic_write` writes a temporary file beside the target, fsyncs it and renames it into place (`_info.json`, the
progress record, `NAME_skipped.tsv`), so a kill or a full disk never leaves half a file under the final name;
`make_dir` creates OUT. The shards themselves are streamed sample by sample by `tarwriter.py`, the one other module
that writes. Failures are the OSError the system gave: the build's caller turns them into its one-line messages.
`tests/test_writes_through_files.py` checks that no other module of data_tools writes.
"""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write `data` (text is UTF-8; file names that are not, from `os.fsdecode`, are backslash-escaped) to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8", errors="backslashreplace") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def make_dir(path: Path) -> Path:
    """`mkdir -p path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
