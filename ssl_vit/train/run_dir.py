"""A run directory's history is never lost or mixed: how a command may start in one, decided before it writes.

    plan = plan_start(run_dir, resume, overwrite, config)   # reads only; raises a one-line UserError
    ... load plan.checkpoint (every rank) ...
    begin(run_dir, plan, config_yaml)                         # main process: the first write of the command

Rules (README "Resuming"):

- A fresh start (no `--resume`) in a directory that holds a run is refused, unless `--overwrite`: then this
  command deletes that run's checkpoints and logs (listing them) before it trains. Nothing is ever deleted
  without that flag.
- `--resume auto` continues from `checkpoints/latest`. A `latest` that is missing while checkpoints exist, or
  that names a checkpoint that is gone or incomplete, is refused, naming the intact checkpoints and how to
  resume from one (`--resume PATH`): it never falls back to step 0. A directory without any checkpoint starts
  at step 0 (nothing of a run can be lost: it never saved one).
- `--resume PATH` continues from that checkpoint. If it is an earlier checkpoint of this run, the later
  checkpoints would be replaced: refused unless `--overwrite`. A checkpoint of another run starts a new run
  from those weights in `output_dir`, which must hold no run (or `--overwrite`).
- The recipe may change on resume only in its changeable keys (`recipe_changes.py`); a resume records its
  step, checkpoint and changes in `resumes.jsonl`.

`plan_start` runs on the main process under the run's lock (`run_lock.py`) and writes nothing; `begin` is
the first write, so a refused command leaves the directory byte for byte as it was.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckpointError, RunDirectoryError
from ..files import append_line, atomic_write
from . import checkpoint as ckpt
from .metrics import truncate_after
from .recipe_changes import recipe_changes

CONFIG_FILE = "config.yaml"
RESUMES_FILE = "resumes.jsonl"
LOGS = ("metrics.jsonl", "eval.jsonl")
RUN_FILES = (CONFIG_FILE, *LOGS, RESUMES_FILE, "ranks", ckpt.CHECKPOINTS)  # what makes a directory hold a run


@dataclass
class StartPlan:
    """Where a command starts: a checkpoint (None: step 0) and what it will replace once it goes ahead."""

    checkpoint: Path | None = None
    step: int = 0
    replaces: list[Path] = field(default_factory=list)  # run files or checkpoints deleted by `begin`
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    note: str = ""  # printed before training


def plan_start(run_dir: Path, resume: str | None, overwrite: bool, config: dict | None) -> StartPlan:
    """Decide how this command starts in `run_dir`, or refuse with one line (`RunDirectoryError`,
    `CheckpointError`, `ConfigError`). Reads only."""
    root = run_dir / ckpt.CHECKPOINTS
    held = run_files(run_dir)
    if resume is None:
        if held and not overwrite:
            raise RunDirectoryError(
                f"{run_dir} already holds a run ({_summary(run_dir)}); pass --resume auto to continue it, --overwrite "
                "to delete it and start afresh, or choose another output_dir")
        return StartPlan(replaces=held, note=_replacing(held))
    if resume == "auto":
        return _auto(run_dir, root, held, config)
    found = ckpt.resolve_checkpoint(resume)
    plan = StartPlan(checkpoint=found, step=(ckpt.checkpoint_step(found) or 0), changes=_changes(found, config))
    if found.parent.resolve() == root.resolve():  # an earlier checkpoint of this very run
        later = [p for p in ckpt.list_checkpoints(root) if ckpt.checkpoint_step(p) > plan.step]
        if later and not overwrite:
            raise RunDirectoryError(
                f"--resume {resume}: {run_dir} holds later checkpoints ({', '.join(p.name for p in later)}), which "
                f"resuming from step {plan.step} would replace; pass --overwrite to replace them (they are deleted), "
                "or resume into another output_dir")
        plan.replaces = later
    elif held:
        if not overwrite:
            raise RunDirectoryError(
                f"--resume {resume}: {run_dir} already holds another run ({_summary(run_dir)}); choose an empty "
                "output_dir to continue from that checkpoint there, or pass --overwrite to delete the run in it")
        plan.replaces = held
    plan.note = _replacing(plan.replaces)
    return plan


def begin(run_dir: Path, plan: StartPlan, config_yaml: str | None, world_size: int) -> None:
    """The command's first writes (main process, after every check passed and the checkpoint loaded)."""
    root = run_dir / ckpt.CHECKPOINTS
    for path in plan.replaces:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if plan.checkpoint is not None and plan.checkpoint.parent.resolve() == root.resolve():
        if ckpt.latest_checkpoint(root) != plan.checkpoint:
            atomic_write(root / ckpt.LATEST, plan.checkpoint.name + "\n")  # a kill before the next save resumes here
    ckpt.remove_stale_temporaries(root)
    for name in LOGS:  # records past the start were written by steps this run takes again
        truncate_after(run_dir / name, plan.step)
    if config_yaml is not None:
        atomic_write(run_dir / CONFIG_FILE, config_yaml)
    if plan.checkpoint is not None:
        record = {"step": plan.step, "checkpoint": str(plan.checkpoint), "processes": world_size,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "changed": {k: [old, new] for k, (old, new) in plan.changes.items()}}
        append_line(run_dir / RESUMES_FILE, json.dumps(record, default=str))


def run_files(run_dir: Path) -> list[Path]:
    """The files and folders of a run that `run_dir` holds (empty for a new or empty directory)."""
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    return [p for p in found if not (p.is_dir() and not any(p.iterdir()))]


# ------------------------------------------------------------------------------------------------ pieces
def _auto(run_dir: Path, root: Path, held: list[Path], config: dict | None) -> StartPlan:
    pointer = root / ckpt.LATEST
    intact = ckpt.list_checkpoints(root)
    if pointer.is_file():
        name = pointer.read_text().strip()
        found = ckpt.latest_checkpoint(root)
        if found is None:
            state = "is incomplete" if (root / name).is_dir() else "does not exist"
            raise CheckpointError(f"{pointer} names {name}, which {state}; {ckpt.intact_choices(root, intact)}")
        return StartPlan(checkpoint=found, step=(ckpt.checkpoint_step(found) or 0), changes=_changes(found, config))
    if intact or any(root.glob("step_*")):
        raise CheckpointError(f"{pointer} is missing, so the run's latest checkpoint is unknown; {ckpt.intact_choices(root, intact)}")
    note = f"--resume auto: no checkpoint in {root}; starting from step 0"
    return StartPlan(note=note)


def _changes(found: Path, config: dict | None) -> dict[str, tuple[Any, Any]]:
    """The recipe keys this resume changes (fixed ones refuse); the checkpoint's recipe is its config.yaml."""
    if not config:
        return {}
    recipe = found / CONFIG_FILE
    try:
        saved = yaml.safe_load(recipe.read_text()) if recipe.is_file() else ckpt.read_state(found).get("config")
    except yaml.YAMLError as err:
        raise CheckpointError(f"{recipe}: not valid YAML ({' '.join(str(err).split())[:200]}); restore it from "
                              f"{found / ckpt.STATE_FILE}'s config or resume from another checkpoint") from None
    if not isinstance(saved, dict):
        return {}
    return recipe_changes(saved, config, str(found))


def _summary(run_dir: Path) -> str:
    latest = ckpt.latest_checkpoint(run_dir / ckpt.CHECKPOINTS)
    if latest is not None:
        return f"latest checkpoint {latest.name}"
    intact = ckpt.list_checkpoints(run_dir / ckpt.CHECKPOINTS)
    if intact:
        return f"checkpoints {', '.join(p.name for p in intact)}"
    return ", ".join(p.name for p in run_files(run_dir))


def _replacing(paths: list[Path]) -> str:
    if not paths:
        return ""
    return "--overwrite: deleting " + ", ".join(str(p) for p in paths)
