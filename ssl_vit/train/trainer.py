"""The objective-agnostic training loop, under Accelerate (one process, DDP, FSDP; CPU or GPU).

    accelerator = make_accelerator(cfg.train, run_dir)
    feed = DataFeed(make_stream, batch_size=cfg.data.batch_size, samples_per_epoch=shards.num_samples)
    trainer = Trainer(objective, feed, accelerator=accelerator, train=cfg.train, optim=cfg.optim,
                      total_steps=10_000, run=RunFiles(run_dir, cfg.to_dict(), cfg.to_yaml()))
    result = trainer.fit(resume="auto")

The trainer knows only `loss, metrics = objective(images, labels)` and a `DataFeed` of uint8 batches
`{"image", "label", "skipped"}`. One step is one optimizer update of `train.global_batch` images:
`accumulation` micro-batches of the feed's batch per process. Around the loop, three collaborators keep their own
concerns: the feed (`feed.py`: the batches due after a step, in the global order; every key once in the split), the
precision (`precision.py`: autocast and fp16's loss scaling, a null object otherwise) and the session
(`session.py`: lock, start plan, run files, trackers, exit report). A checkpoint is their component states
beside the recipe (`checkpoint.py`); a resumed run restores them and the RNG states, so it draws the same batches
and the same random numbers as the uninterrupted run (exactly, on CPU, with the same number of processes). On
another number of processes, micro-batch or loader workers it trains on the same samples in every step
(`data/global_order.py`); only the floating-point sums differ.

Ranks agree before each micro-batch's collectives, in one host-side exchange (gloo, no device sync) that asks
"did any rank's data stream fail?" and "did any rank get a stop signal?" together (`DataFeed.next`). A stop
signal is honoured even while a loader is stuck in a read: the step waiting for the missing batch is given up
and the checkpoint is the previous step's, when that step had not begun to use micro-batches (always, without
accumulation); otherwise the last checkpoint stands (`_stop_without_batch`).
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from accelerate import Accelerator
from accelerate.tracking import LoggerType, get_available_trackers
from accelerate.utils import InitProcessGroupKwargs, set_seed

from ..config import OptimConfig, TrainConfig, accumulation_steps
from ..errors import ConfigError, PeerLost, UserError
from ..files import append_line
from . import checkpoint as ckpt
from .agreement import HostAgreement, together
from .feed import DataFeed, StoppedWaiting, batch_tensors
from .metrics import MetricsLog, MetricsWindow
from .optim import build_optimizer, build_scheduler, step_unless
from .precision import accelerate_precision, precision_for_run, report_launcher_disagreement, resolve_precision
from .recipe_changes import describe as describe_changes
from .run_dir import RESUMES_FILE, StartPlan
from .sample_records import SampleRecorder
from .session import RunFiles, RunSession, TrainResult
from .signals import StopRequest


@dataclass
class Prepared:
    """What one `fit` prepares and its steps and checkpoints share."""

    model: nn.Module  # the objective as Accelerate prepared it (DDP / FSDP wrapped)
    forward: Callable  # `model`, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    agreement: HostAgreement


@dataclass(frozen=True)
class Validation:
    """`fn(step) -> dict[str, float]`, run on every rank every `every` steps; its results go to `eval.jsonl` and
    the trackers."""

    every: int
    fn: Callable[[int], dict[str, float]]


def make_accelerator(train: TrainConfig, run_dir: Path | str) -> Accelerator:
    """The Accelerator for a run: CUDA when present (TF32 matmuls on), otherwise CPU processes over gloo.

    `cpu=True` matters under `accelerate launch --multi_gpu` on a machine without GPUs: Accelerate then runs
    real multi-process DDP over gloo instead of N independent single processes.
    """
    for name in train.log_with:
        if name not in LoggerType.list():
            raise ConfigError(f"train.log_with: unknown tracker '{name}'; Accelerate knows {', '.join(LoggerType.list())}")
        if LoggerType(name) not in get_available_trackers():
            raise ConfigError(f"train.log_with: '{name}' is not installed here (pip install {name}) or remove it")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = resolve_precision(train.precision, cuda)
    report_launcher_disagreement(train.precision, precision)
    return Accelerator(
        cpu=not cuda,
        mixed_precision=accelerate_precision(precision),  # fp16 is the trainer's own (`precision.LossScaling`)
        log_with=list(train.log_with) or None,
        project_dir=str(run_dir),
        # gloo and NCCL collectives give up after this long: a lost machine stops the others instead of hanging them
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=train.collective_timeout_s))],
    )


_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Timed out", "timed out",
              "Timeout", "Socket closed", "NCCL communicator was aborted")


class Trainer:
    """Runs `total_steps` optimizer steps of `objective` on batches from `feed`, with checkpoints and logs.

    `run` says where and under which recipe; `validation` runs every `validation.every` steps;
    `optimizer_factory(objective)` replaces the default AdamW (e.g. SGD with layer-wise rates for fine-tuning),
    and the warmup + cosine schedule scales each group's rate; `flops_per_image` gives the metrics their MFU.
    """

    def __init__(self, objective: nn.Module, feed: DataFeed, *, accelerator: Accelerator, train: TrainConfig,
                 optim: OptimConfig, total_steps: int, run: RunFiles, validation: Validation | None = None,
                 optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                 flops_per_image: float | None = None):
        if optim.warmup_steps >= total_steps:
            raise ConfigError(f"optim.warmup_steps ({optim.warmup_steps}) must be below the run's {total_steps} steps")
        self.objective, self.feed, self.accelerator = objective, feed, accelerator
        self.train, self.optim, self.total_steps, self.run = train, optim, total_steps, run
        self.validation, self.flops_per_image = validation, flops_per_image
        self.optimizer_factory = optimizer_factory or (lambda model: build_optimizer(model, optim))
        self.accumulation = accumulation_steps(train.global_batch, feed.batch_size, accelerator.num_processes)
        self.precision = precision_for_run(train, accelerator)  # autocast and fp16's loss scale (a no-op otherwise)
        self.ckpt_root = Path(run.dir) / ckpt.CHECKPOINTS
        self._lr = 0.0

    # ------------------------------------------------------------------------------------------ public
    def fit(self, resume: str | None = None, overwrite: bool = False) -> TrainResult:
        """Train to `total_steps` (from a checkpoint when `resume` is "auto" or a path). Collective: call on every rank.

        Nothing is written into the run directory before every check has passed and the checkpoint has loaded
        (`run_dir.py`); `overwrite` lets a fresh start, or a resume from an earlier checkpoint, replace the run
        that is there.
        """
        with RunSession(self.accelerator, self.run, self.train) as session:
            plan = session.plan(resume, overwrite)
            self._data = plan.data  # the shards' identity: every checkpoint records it, a resume compares it
            run = self._prepare(session.agreement)
            start = together(session.agreement, lambda: self._restore(plan, run), "loading the checkpoint")
            if start >= self.total_steps:
                self.accelerator.print(f"the run is already at step {start} of {self.total_steps}; nothing to do")
                return session.end(TrainResult(start, "already_finished", ckpt.latest_checkpoint(self.ckpt_root)),
                                   self.objective)
            session.begin(plan, start)
            self.accelerator.print(
                f"training steps {start + 1}..{self.total_steps}: {self.feed.batch_size} per device × "
                f"{self.accelerator.num_processes} process(es) × {self.accumulation} accumulation = "
                f"{self.train.global_batch} images per step; run directory {self.run.dir}")
            log = MetricsLog(self.accelerator, Path(self.run.dir), start_step=start, total_steps=self.total_steps,
                             global_batch=self.train.global_batch, samples_per_epoch=self.feed.samples_per_epoch,
                             flops_per_image=self.flops_per_image, precision=self.precision.name)
            try:
                result = self._loop(start, run, log)
            except (RuntimeError, ConnectionError, EOFError) as err:  # a loader worker's or a machine's death
                death = self.feed.worker_death(err) or self._peer_lost(err)
                if death is None:
                    raise
                raise death from err
            finally:
                self.feed.close()
                log.close()
            return session.end(result, self.objective)

    # ------------------------------------------------------------------------------------------ loop
    def _loop(self, start: int, run: Prepared, log: MetricsLog) -> TrainResult:
        """The steps from `start`, with a checkpoint at every `checkpoint_every` and on a stop request."""
        train, window = self.train, MetricsWindow(self.accelerator.device)
        note = self.feed.open(start, lambda: ckpt.latest_checkpoint(self.ckpt_root), accumulation=self.accumulation,
                              recorder=self._recorder(start, run))
        if note:
            self.accelerator.print(note)
        last_ckpt: Path | None = None
        saved = start  # the step of the newest checkpoint (the one resumed from; none at 0)
        with StopRequest() as stop:
            for step in range(start + 1, self.total_steps + 1):
                try:
                    stopping = self._step(step, run, window, stop)
                except StoppedWaiting as waited:
                    return self._stop_without_batch(step, saved, waited, run, log, window, stop)
                self.feed.step_done(step)
                log.advance()
                boundary = step % train.checkpoint_every == 0 or step == self.total_steps
                if step % train.log_every == 0 or boundary or stopping:
                    self._log(step, log, window)
                if self.validation is not None and self.validation.every and step % self.validation.every == 0:
                    self._validate(step)
                if boundary or stopping:
                    last_ckpt, saved = self._save(step, run), step
                if stopping:
                    self.accelerator.print(
                        f"\nstopped by {stop.received or 'a signal on another rank'} at step {step}; checkpoint "
                        f"{last_ckpt}. Resume: run the same command with --resume auto (or --resume {last_ckpt})")
                    return TrainResult(step, "preempted", last_ckpt)
        return TrainResult(self.total_steps, "finished", last_ckpt)

    def _stop_without_batch(self, step: int, saved: int, waited: StoppedWaiting, run: Prepared, log: MetricsLog,
                            window: MetricsWindow, stop: StopRequest) -> TrainResult:
        """A stop request while some rank's loader was stuck: step `step` is given up. Its state before the first
        micro-batch is step `step - 1`'s, so that is checkpointed (unless it is already); a step that had begun
        (accumulation) has changed random states and loader positions, so the last checkpoint stands."""
        done = step - 1
        if done > saved and not waited.began:
            if window.steps:
                self._log(done, log, window)
            path: Path | None = self._save(done, run)
            what = f"checkpoint {path}"
        else:
            path = ckpt.latest_checkpoint(self.ckpt_root)
            what = (f"no new checkpoint (step {step} had begun); the last is {path or 'none: a resume starts afresh'}"
                    if done > saved
                    else f"checkpoint {path}" if path is not None else "no step was trained, nothing to save")
        self.accelerator.print(
            f"\nstopped by {stop.received or 'a signal on another rank'} at step {done}: {waited}; {what}. "
            f"Resume: run the same command with --resume auto")
        return TrainResult(done, "preempted", path)

    def _step(self, step: int, run: Prepared, window: MetricsWindow, stop: StopRequest) -> bool:
        """Optimizer step `step`: `accumulation` micro-batches, gradients synchronised on the last one only.

        Returns whether the ranks agreed to stop after this step (a signal reached one of them).
        """
        acc, model, precision = self.accelerator, run.model, self.precision
        model.train()
        loss_sum = torch.zeros((), device=acc.device)
        metric_sums: dict[str, torch.Tensor] = {}
        data_wait, skipped, counted = 0.0, 0, 0
        for micro in range(self.accumulation):
            t0 = time.perf_counter()
            try:
                batch, stopping = self.feed.next(run.agreement, stop)
            except StoppedWaiting as waited:
                waited.began = micro > 0  # micro-batches of this step have drawn random numbers and moved the loaders
                raise
            data_wait += time.perf_counter() - t0
            skipped += int(batch.get("skipped", 0))
            images, labels, weight = batch_tensors(batch, acc.device)  # weight 0: an empty micro-batch's stand-in
            with acc.no_sync(model) if micro < self.accumulation - 1 else nullcontext():
                with precision.autocast():
                    loss, metrics = run.forward(images, labels)
                acc.backward(precision.scale(loss * (weight / self.accumulation)))
            if weight:
                counted += 1
                loss_sum += loss.detach().float()
                for key, value in metrics.items():
                    metric_sums[key] = metric_sums[key] + value.detach().float() if key in metric_sums else value.detach().float()
        nonfinite_grad = torch.zeros((), device=acc.device)
        precision.unscale(run.optimizer)  # true-scale gradients before clipping and the step
        if self.optim.grad_clip is not None or precision.watches_overflow:
            grad_norm = acc.clip_grad_norm_(model.parameters(), self.optim.grad_clip or float("inf"))
            nonfinite_grad = (~torch.isfinite(grad_norm)).float()
        flags = torch.stack([(~torch.isfinite(loss_sum)).float(), nonfinite_grad])  # (2,) loss, gradients
        if acc.num_processes > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # any rank non-finite → all skip (stays on the device)
        skip = flags.max()
        nonfinite, overflow = precision.classify(flags)
        self._lr = max(run.scheduler.get_last_lr())  # the rate this update used (the top one under layer-wise decay)
        step_unless(run.optimizer, skip)
        precision.update()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        n = max(counted, 1)  # micro-batches with samples (a step of empty ones only logs a loss of 0)
        window.add(loss_sum / n, skip, {k: v / n for k, v in metric_sums.items()}, data_wait, skipped,
                   nonfinite=nonfinite, overflow=overflow)
        return stopping

    # ------------------------------------------------------------------------------------- pieces
    def _prepare(self, agreement: HostAgreement) -> Prepared:
        if self.train.grad_checkpointing:
            self.objective.backbone.set_grad_checkpointing(True)
        optimizer = self.optimizer_factory(self.objective)
        scheduler = build_scheduler(optimizer, self.optim, self.total_steps)
        model, optimizer = self.accelerator.prepare(self.objective, optimizer)
        forward = torch.compile(model) if self.train.compile else model
        return Prepared(model, forward, optimizer, scheduler, agreement)

    def _restore(self, plan: StartPlan, run: Prepared) -> int:
        """Load the planned checkpoint (or seed a fresh run) into every component; returns the step to continue after."""
        acc = self.accelerator
        if plan.note:
            acc.print(plan.note)
        if plan.checkpoint is None:
            set_seed(self.train.seed, device_specific=True)  # seed + rank: ranks draw different corruptions
            return 0
        restored = ckpt.load_checkpoint(plan.checkpoint, model=run.model, optimizer=_inner(run.optimizer),
                                        scheduler=run.scheduler, rank=acc.process_index)
        step = restored.step
        if not restored.rng_restored:
            set_seed(self.train.seed + step, device_specific=True)
        note = self.precision.load_state_dict(restored.components["precision"])
        if note:
            acc.print(f"{plan.checkpoint} {note}")
        saved_world = int(restored.meta.get("world_size", acc.num_processes))
        if saved_world != acc.num_processes:
            acc.print(
                f"resuming a {saved_world}-process checkpoint with {acc.num_processes} processes: the global batch "
                f"stays {self.train.global_batch} (accumulation {self.accumulation}), and so do the samples of every "
                "step (the global order); the floating-point sums are ordered differently, so the weights will not "
                "match a run on the old shape bit for bit")
        self.feed.load_state_dict(restored.components["feed"], restored.rank_components.get("feed"), step)
        acc.print(f"resumed from {plan.checkpoint} at step {step}")
        if plan.changes:
            acc.print(f"the recipe changed on resume, from step {step + 1} on: {describe_changes(plan.changes)} "
                      f"(recorded in {Path(self.run.dir) / RESUMES_FILE})")
        return step

    def _recorder(self, start: int, run: Prepared) -> SampleRecorder | None:
        """This rank's writer of the samples record (`train.record_samples`), for this attempt (one id on all ranks)."""
        if not self.train.record_samples:
            return None
        attempt = run.agreement.gather(time.time_ns())[0]  # rank 0's start time names the attempt
        return SampleRecorder(Path(self.run.dir), attempt=attempt, rank=self.accelerator.process_index,
                              world_size=self.accelerator.num_processes, global_batch=self.train.global_batch,
                              start=start)

    def _save(self, step: int, run: Prepared) -> Path:
        """Every component's state into checkpoint `step`. Before it is written, the keys read since the last one
        are checked (a repeated key saves nothing)."""
        note = self.feed.check_keys(run.agreement)
        if note:
            self.accelerator.print(note)
        meta = {"config": self.run.config, "world_size": self.accelerator.num_processes,
                "accumulation": self.accumulation, "global_batch": self.train.global_batch, "data": self._data}
        return ckpt.save_checkpoint(
            self.ckpt_root, step, model=run.model, optimizer=_inner(run.optimizer), scheduler=run.scheduler,
            meta=meta, config_yaml=self.run.config_yaml, rank=self.accelerator.process_index,
            agreement=run.agreement, keep_last=self.train.keep_last,
            components={"feed": self.feed.state_dict(), "precision": self.precision.state_dict()},
            rank_components={"feed": self.feed.rank_state_dict()})

    def _log(self, step: int, log: MetricsLog, window: MetricsWindow) -> None:
        if window.steps == 0:
            return
        record = log.write(step, window, self._lr, self.precision.log_extra())
        self.precision.check(record, step)
        if record["_max_streak"] >= self.train.max_nonfinite:
            first_bad = step - record["_streak"] + 1 if record["_streak"] else step - window.steps
            good = [p for p in ckpt.list_checkpoints(self.ckpt_root) if ckpt.checkpoint_step(p) < first_bad]
            raise UserError(
                f"{record['_max_streak']} non-finite losses in a row (up to step {step}, max_nonfinite="
                f"{self.train.max_nonfinite}); the last good checkpoint is {good[-1] if good else 'none (no checkpoint yet)'}. "
                "Lower optim.lr, raise optim.warmup_steps or use train.precision=fp32, then --resume from it."
            )

    def _validate(self, step: int) -> None:
        results = self.validation.fn(step) or {}
        if self.accelerator.is_main_process and results:
            append_line(Path(self.run.dir) / "eval.jsonl", json.dumps({"step": step, **results}))
        self.accelerator.log({f"eval/{k}": v for k, v in results.items()}, step=step)

    def _peer_lost(self, err: BaseException) -> PeerLost | None:
        """The one-line error for a collective that failed because another process of the run is gone."""
        lost = isinstance(err, (RuntimeError, dist.DistError)) and any(text in str(err) for text in _LOST_PEER)
        if self.accelerator.num_processes == 1 or not lost:
            return None
        return PeerLost(
            f"rank {self.accelerator.process_index} lost contact with another process of the run "
            f"({' '.join(str(err).split())[:200]}); a machine died, was killed or was cut off "
            f"(train.collective_timeout_s={self.train.collective_timeout_s}). The last checkpoint is "
            f"{ckpt.latest_checkpoint(self.ckpt_root) or 'none yet'}: start every machine again with --resume auto")


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
