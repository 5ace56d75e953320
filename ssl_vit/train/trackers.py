"""Experiment trackers (Accelerate's: tensorboard, wandb, mlflow, …) that follow a run across resumes.

`train.project` names the W&B project, the MLflow experiment and the TensorBoard folder (inside the run
directory); `train.run_name` names the run (default: the run directory's name). The W&B and MLflow run ids are
kept in `RUN/trackers.json`, and a resumed run (`--resume auto`) hands them back, so the tracker continues the
same run — one curve across preemptions — instead of opening a new one. W&B runs offline with
`WANDB_MODE=offline`; MLflow writes wherever `MLFLOW_TRACKING_URI` says (e.g. `file:/shared/mlruns`).

The ids and the folders the trackers write into the run directory (`output_names`) are the run's: the run's
manifest lists them (`manifest.py`), so `--overwrite` deletes them with the run, and the fresh run after it
opens fresh W&B and MLflow runs instead of continuing the deleted one.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..files import atomic_write

IDS_FILE = "trackers.json"
# The folder each tracker creates in the run directory (Accelerate's `project_dir`): TensorBoard logs into
# `project_dir/<train.project>`, W&B into the `dir` `init_kwargs` gives it, Aim keeps its repository in `.aim`.
# MLflow, Comet, ClearML and DVCLive write nothing there (MLflow's store is MLFLOW_TRACKING_URI's).
_FOLDERS = {"tensorboard": None, "wandb": "wandb", "aim": ".aim"}  # None: the project's name


def saved_ids(run_dir: Path) -> dict[str, str]:
    """The tracker run ids a previous segment of this run kept ({} for a new run)."""
    path = Path(run_dir) / IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def output_names(log_with: list[str], project: str) -> list[str]:
    """The names of the folders the trackers `log_with` create in the run directory."""
    names = [(_FOLDERS[name] or project).split("/")[0] for name in log_with if name in _FOLDERS]
    return [name for name in names if name not in ("", ".", "..")]


def init_kwargs(log_with: list[str], run_dir: Path, run_name: str) -> dict[str, dict[str, Any]]:
    """Accelerate's `init_trackers(init_kwargs=...)`: the run's name, and its id when it already has one."""
    ids = saved_ids(run_dir)
    kwargs: dict[str, dict[str, Any]] = {}
    if "wandb" in log_with:
        # W&B takes an id from the caller: chosen here once, resumed with resume="allow" ever after.
        kwargs["wandb"] = {"name": run_name, "id": ids.get("wandb") or uuid.uuid4().hex[:12], "resume": "allow",
                           "dir": str(run_dir)}
    if "mlflow" in log_with:
        kwargs["mlflow"] = {"run_name": run_name, **({"run_id": ids["mlflow"]} if "mlflow" in ids else {})}
    return kwargs


def continues_a_run(log_with: list[str], run_dir: Path) -> bool:
    """Whether a tracker that keeps an id will continue a run it already holds (its config is recorded there)."""
    ids = saved_ids(run_dir)
    return any(name in ids for name in log_with)


def remember_ids(accelerator: Accelerator, run_dir: Path) -> dict[str, str]:
    """Write the started trackers' run ids to `RUN/trackers.json` (main process: the trackers live there)."""
    if not accelerator.is_main_process:
        return {}
    ids = saved_ids(run_dir)
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            ids["wandb"] = tracker.run.id
        elif tracker.name == "mlflow":
            ids["mlflow"] = tracker.active_run.info.run_id
    if ids:
        atomic_write(Path(run_dir) / IDS_FILE, json.dumps(ids, indent=1) + "\n")
    return ids
