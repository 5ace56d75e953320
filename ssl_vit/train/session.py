"""One training run's life in its run directory, as a context manager around the trainer's loop.

    with RunSession(accelerator, RunFiles(run_dir, config, config_yaml), train) as session:
        plan = session.plan(resume, overwrite)     # lock taken; where to start (reads only)
        ... restore the checkpoint plan.checkpoint names ...
        session.begin(plan, start)                 # the command's first write; trackers started
        ... the loop ...
        return session.end(result, model)          # rank summary, exit report

Whatever happens in between, leaving the block finishes the trackers it started, releases the run's lock and the
ranks' host-side agreement, and removes the run directory again if this command created it and wrote nothing
into it (a refused command leaves no trace). The process group stays: the caller may still need collectives (a
last evaluation) and ends it with `accelerator.end_training()`.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch.nn as nn
from accelerate import Accelerator

from ..config import TrainConfig
from ..errors import ConfigError
from ..files import atomic_write, make_dir
from . import trackers
from .agreement import HostAgreement, together
from .recipe_changes import flatten
from .run_dir import StartPlan, begin, plan_start
from .run_lock import RunLock, describe as describe_holder
from .supervisor import report_exit


@dataclass(frozen=True)
class RunFiles:
    """Where a run writes and what it records about itself: the recipe as plain data (saved in checkpoints and
    compared on resume) and as text (`config.yaml` in the run directory and beside each checkpoint); `writes`
    names the files the command writes into the run directory besides the trainer's (the run's manifest lists them)."""

    dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_yaml: str | None = None
    writes: tuple[str, ...] = ()


@dataclass
class TrainResult:
    step: int
    status: Literal["finished", "preempted", "already_finished"]
    checkpoint: Path | None


class RunSession:
    """The lock, the start plan, the run's files, the trackers and the exit report of one `Trainer.fit`."""

    def __init__(self, accelerator: Accelerator, run: RunFiles, train: TrainConfig):
        self.accelerator = accelerator
        self.run = run
        self.train = train
        self.agreement: HostAgreement | None = None
        self._lock: RunLock | None = None
        self._created = False
        self._tracking = False

    def __enter__(self) -> RunSession:
        main = self.accelerator.is_main_process
        self.agreement = HostAgreement()
        self._lock = RunLock(self.run.dir) if main else None
        self._created = main and not self.run.dir.exists()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        try:
            if self._tracking:
                if exc_type is None:
                    self.accelerator.wait_for_everyone()
                for tracker in self.accelerator.trackers:
                    tracker.finish()
                self.accelerator.trackers = []  # finished: a later `end_training()` must not finish them twice
        finally:
            self.agreement.close()
            if self._lock is not None:
                self._lock.release()
            if self._created:  # rmdir: only if empty, so whatever was written there stays
                with suppress(OSError):
                    self.run.dir.rmdir()

    def plan(self, resume: str | None, overwrite: bool) -> StartPlan:
        """Main process, under the run's lock: decide where to start (reads only; refusals are one line on every rank)."""
        return together(self.agreement, lambda: self._plan(resume, overwrite), "checking the run directory",
                        main_only=True)

    def begin(self, plan: StartPlan, start: int) -> None:
        """The command's first writes (replacing what the plan replaces), then the trackers."""
        plan.step = start
        together(self.agreement, lambda: begin(self.run.dir, plan, self.run.config_yaml, self.accelerator.num_processes),
                 "writing the run's files", main_only=True)
        self._start_trackers()

    def end(self, result: TrainResult, model: nn.Module) -> TrainResult:
        """A finished run writes every rank's summary; every ending reports its status to `ssl-vit launch`."""
        if result.status == "finished":
            self._write_rank_summary(result.step, model)
        report_exit(result.status, result.step)
        return result

    # ----------------------------------------------------------------------------------------- pieces
    def _plan(self, resume: str | None, overwrite: bool) -> StartPlan:
        make_dir(self.run.dir, "output_dir")
        self._lock.acquire()
        if self._lock.took_over:
            print(f"{self.run.dir}: took over the lock of {describe_holder(self._lock.took_over)}, "
                  f"{self._lock.took_over['reason']}", flush=True)
        return plan_start(self.run.dir, resume, overwrite, self.run.config, self.run.writes)

    def _start_trackers(self) -> None:
        acc, log_with = self.accelerator, list(self.train.log_with)
        run_name = self.train.run_name or self.run.dir.name
        try:
            acc.init_trackers(
                self.train.project,
                config=None if trackers.continues_a_run(log_with, self.run.dir) else _flat(self.run.config),
                init_kwargs=trackers.init_kwargs(log_with, self.run.dir, run_name),
            )
        except Exception as err:  # noqa: BLE001 - a tracker's own settings (URI, login, mode): say so in one line
            acc.trackers = []  # half-started: `end_training()` must not finish them
            raise ConfigError(
                f"train.log_with={log_with}: a tracker failed to start ({type(err).__name__}: {err}); fix its "
                "settings (WANDB_MODE, MLFLOW_TRACKING_URI, …) or leave it out of train.log_with"
            ) from err
        self._tracking = True
        trackers.remember_ids(acc, self.run.dir)

    def _write_rank_summary(self, step: int, model: nn.Module) -> None:
        """ranks/rank{r}.json: this rank's final step and parameter checksum (equal across ranks under DDP)."""
        folder = self.run.dir / "ranks"
        make_dir(folder)
        rank = self.accelerator.process_index
        summary = {"rank": rank, "step": step, "param_sha256": parameter_checksum(model)}
        atomic_write(folder / f"rank{rank}.json", json.dumps(summary) + "\n")


def parameter_checksum(model: nn.Module) -> str:
    """sha256 over every parameter's bytes in name order: equal on all ranks iff DDP kept them in sync."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):  # an FSDP2 shard: gather it (collective, same order on every rank)
            tensor = tensor.full_tensor()
        digest.update(name.encode())
        digest.update(tensor.float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _flat(config: dict) -> dict[str, Any]:
    """Dotted scalar keys for trackers (tensorboard's hparams accept only scalars)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}
