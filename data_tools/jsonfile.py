"""Small JSON files written atomically (temp file + fsync + rename, by `files.atomic_write`), so a kill never leaves
half a file."""
from __future__ import annotations

import json
from pathlib import Path

from .files import atomic_write


def write_json_atomic(path: Path, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=1) + "\n")
