"""Small JSON files written atomically (temp file + fsync + rename), so a kill never leaves half a file."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
