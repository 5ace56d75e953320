"""Helpers shared by the data_tools tests (no tests here): read shards back independently of data_tools."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_EXTS = ("jpg", "png", "webp")


def read_split(out: Path, split: str = "train") -> list[dict]:
    """Samples in shard order as `{"key", "shard", "ext", "image", "cls", "json"}`, read with tarfile."""
    entry = json.loads((out / "_info.json").read_text())["splits"][split]
    samples: dict[str, dict] = {}
    for name in entry["filenames"]:
        with tarfile.open(out / name) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                sample = samples.setdefault(key, {"key": key, "shard": name})
                data = tar.extractfile(member).read()
                if ext in IMAGE_EXTS:
                    sample["ext"], sample["image"] = ext, data
                elif ext == "cls":
                    sample["cls"] = int(data.decode("ascii"))
                else:
                    sample[ext] = json.loads(data)
    return list(samples.values())


def by_path(samples: list[dict]) -> dict[str, dict]:
    return {s["json"]["path"]: s for s in samples}


def visible_files(out: Path) -> dict[str, bytes]:
    """Every file of OUT by name with its bytes, hidden bookkeeping files included (`.info.lock` aside)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != ".info.lock"}


def run_cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m data_tools ARGS` in a subprocess, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "data_tools", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=60, **kwargs)
