"""What a run directory's JSON-lines files say, read back: every record, the per-step losses, the last step logged."""
from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line of a JSON-lines file (metrics.jsonl, resumes.jsonl, ...)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl, one dict per logged step."""
    return read_jsonl(run_dir / "metrics.jsonl")


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every logged step: what an uninterrupted and a resumed run must agree on."""
    return [(r["step"], r["loss"]) for r in records(run_dir)]


def last_logged_step(metrics: Path) -> int:
    """The last step in a metrics.jsonl a run is still writing (0 before the first); a half-written line is skipped."""
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except json.JSONDecodeError:  # a line being written
            continue
    return 0
