"""The objective-agnostic training loop, under Accelerate (one process, DDP, FSDP; CPU or GPU).

    accelerator = make_accelerator(cfg.train, run_dir)
    trainer = Trainer(objective, make_stream, accelerator=accelerator, train=cfg.train, optim=cfg.optim,
                      per_device_batch=cfg.data.batch_size, total_steps=10_000, run_dir=run_dir)
    result = trainer.fit(resume="auto")

The trainer knows only `loss, metrics = objective(images, labels)` and `make_stream(segment[, skip])`, an iterable
of uint8 batches `{"image", "label", "skipped"}` that is a pure function of its segment. One step is one
optimizer update of `train.global_batch` images: `accumulation` micro-batches of `per_device_batch` per process.

Reproducible resumption. At every checkpoint step the trainer saves, then closes its stream and opens the segment
that starts at that step; a resumed run restores the RNG states and opens the same segment, so it draws the same
batches and the same random numbers as the uninterrupted run (exactly, on CPU, with the same number of
processes). A checkpoint taken on a signal between checkpoint steps is exact too: batches say which loader
worker made them and how far into its stream they end (`worker`, `workers`, `position`); each rank keeps the
position of the last batch it consumed from each worker, and a resume fast-forwards every worker's stream to
it (reading bytes and drawing the skipped samples' random numbers, without decoding them). Batches the loader
had prefetched but the trainer never consumed are simply drawn again.

Every key once in the split. A batch may carry `part_keys`: the key hashes of the shard parts its loader worker
has read to their end (`data.split_keys`). At every checkpoint the ranks send theirs to the main process, whose
ledger holds one entry per sample of the split; a key at two samples (in two readers' shards, which neither
reader alone can see) stops every rank with one line naming the key and both shards. The ledger is saved in
the checkpoint, so a resumed run goes on checking against every sample read before.

Ranks agree before each micro-batch's collectives, in one host-side exchange (gloo, no device sync) that asks
"did any rank's data stream fail?" and "did any rank get a stop signal?" together. A stream that fails on one
rank only (a corrupt shard that only it reads) then stops every rank with that rank's error, instead of leaving
the others waiting in DDP's all-reduce (or FSDP's all-gather) for ever.

"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext, suppress
from datetime import timedelta
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import torch
import torch.distributed as dist
import torch.nn as nn
from accelerate import Accelerator
from accelerate.tracking import LoggerType, get_available_trackers
from accelerate.utils import InitProcessGroupKwargs, set_seed

from ..config import OptimConfig, TrainConfig, accumulation_steps
from ..data.split_keys import PartsRead, SplitKeyLedger
from ..data.stream import StreamLayoutChanged
from ..errors import ConfigError, DataError, PeerLost, UserError
from ..files import append_line, atomic_write, make_dir
from . import checkpoint as ckpt
from . import trackers
from .metrics import MetricsLog, MetricsWindow
from .optim import build_optimizer, build_scheduler, step_unless
from .precision import NAMES, LossScaling, accelerate_precision, report_launcher_disagreement, resolve_precision
from .recipe_changes import describe as describe_changes
from .recipe_changes import flatten
from .run_dir import RESUMES_FILE, StartPlan, begin, plan_start
from .run_lock import RunLock, describe as describe_holder
from .agreement import HostAgreement, raise_on_every_rank, together
from .signals import StopRequest
from .supervisor import report_exit

StreamFactory = Callable[[int], Iterable[dict[str, torch.Tensor]]]


@dataclass
class RunState:
    """What one `fit` prepares and its loop, steps and checkpoints share."""

    model: nn.Module  # the objective as Accelerate prepared it (DDP / FSDP wrapped)
    forward: Callable  # `model`, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    agreement: HostAgreement


@dataclass
class TrainResult:
    step: int
    status: Literal["finished", "preempted", "already_finished"]
    checkpoint: Path | None


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


def _lost_peer(err: BaseException) -> bool:
    """Whether a collective failed because another process is gone (its socket closed, or it stopped answering)."""
    return isinstance(err, (RuntimeError, dist.DistError)) and any(text in str(err) for text in _LOST_PEER)


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


class Trainer:
    """Runs `total_steps` optimizer steps of `objective` on batches from `make_stream`, with checkpoints and logs.

    `val_fn(step) -> dict[str, float]` runs on every rank every `val_every` steps (0: never); its results go
    to `eval.jsonl` and the trackers. `config` (plain data) is saved in checkpoints, `config_yaml` (text) in
    the run directory and beside each checkpoint. `optimizer_factory(objective)` replaces the default AdamW
    (e.g. SGD with layer-wise rates for fine-tuning); the warmup + cosine schedule scales each group's rate.

    `fit` finishes the trackers it started but leaves the process group to the caller, who may still need
    collectives afterwards (a last evaluation) and ends it with `accelerator.end_training()`.
    """

    def __init__(
        self,
        objective: nn.Module,
        make_stream: StreamFactory,
        *,
        accelerator: Accelerator,
        train: TrainConfig,
        optim: OptimConfig,
        per_device_batch: int,
        total_steps: int,
        run_dir: Path | str,
        config: dict[str, Any] | None = None,
        config_yaml: str | None = None,
        val_fn: Callable[[int], dict[str, float]] | None = None,
        val_every: int = 0,
        samples_per_epoch: int | None = None,
        flops_per_image: float | None = None,
        optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    ):
        self.objective = objective
        self.make_stream = make_stream
        self.accelerator = accelerator
        self.train = train
        self.optim = optim
        self.per_device_batch = per_device_batch
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / ckpt.CHECKPOINTS
        self.config = config or {}
        self.config_yaml = config_yaml
        self.val_fn = val_fn
        self.val_every = val_every
        self.samples_per_epoch = samples_per_epoch
        self.flops_per_image = flops_per_image
        self.optimizer_factory = optimizer_factory or (lambda model: build_optimizer(model, optim))
        self.accumulation = accumulation_steps(train.global_batch, per_device_batch, accelerator.num_processes)
        if optim.warmup_steps >= total_steps:
            raise ConfigError(f"optim.warmup_steps ({optim.warmup_steps}) must be below the run's {total_steps} steps")
        self.rank = accelerator.process_index
        self.scaling = LossScaling.for_run(train, accelerator)  # fp16's autocast and loss scale; None otherwise
        self.precision = "fp16" if self.scaling is not None else NAMES[accelerator.mixed_precision]
        self._stream: Iterable | None = None
        self._segment = 0  # the step the current stream's segment started at
        self._positions: list[int] = []  # per loader worker: the stream position of its last consumed batch
        self._next_worker = 0  # the loader worker whose batch comes next
        self._resume_stream: tuple[int, list[int], int] | None = None  # (segment, positions, next worker)
        self._split_keys = SplitKeyLedger()  # main process: every sample's key hash read so far
        self._parts_read = PartsRead()  # this rank's `part_keys` records not yet in the ledger
        self._lr = 0.0

    # ------------------------------------------------------------------------------------------ public
    def fit(self, resume: str | None = None, overwrite: bool = False) -> TrainResult:
        """Train to `total_steps` (from a checkpoint when `resume` is "auto" or a path). Collective: call on every rank.

        The main process holds the run directory's lock throughout, and nothing is written into the directory
        before every check has passed and the checkpoint has loaded (`run_dir.py`); `overwrite` lets a fresh
        start, or a resume from an earlier checkpoint, replace the run that is there.
        """
        acc = self.accelerator
        agreement = HostAgreement()
        lock = RunLock(self.run_dir) if acc.is_main_process else None
        created = acc.is_main_process and not self.run_dir.exists()
        try:
            return self._fit(resume, overwrite, agreement, lock)
        finally:
            agreement.close()
            if lock is not None:
                lock.release()
            if created:  # a refused command leaves no trace, not even an empty directory (rmdir: only if empty,
                with suppress(OSError):  # so whatever was written there stays)
                    self.run_dir.rmdir()

    def _fit(self, resume: str | None, overwrite: bool, agreement: HostAgreement, lock: RunLock | None) -> TrainResult:
        acc = self.accelerator
        plan = together(agreement, lambda: self._plan(resume, overwrite, lock), "checking the run directory", main_only=True)
        if self.train.grad_checkpointing:
            self.objective.backbone.set_grad_checkpointing(True)
        optimizer = self.optimizer_factory(self.objective)
        scheduler = build_scheduler(optimizer, self.optim, self.total_steps)
        model, optimizer = acc.prepare(self.objective, optimizer)
        forward = torch.compile(model) if self.train.compile else model
        start = together(agreement, lambda: self._restore(plan, model, optimizer, scheduler), "loading the checkpoint")
        if start >= self.total_steps:
            acc.print(f"the run is already at step {start} of {self.total_steps}; nothing to do")
            report_exit("already_finished", start)
            return TrainResult(start, "already_finished", ckpt.latest_checkpoint(self.ckpt_root))
        plan.step = start
        together(agreement, lambda: begin(self.run_dir, plan, self.config_yaml, acc.num_processes), "writing the run's files",
                 main_only=True)
        if acc.is_main_process:
            acc.print(
                f"training steps {start + 1}..{self.total_steps}: {self.per_device_batch} per device × "
                f"{acc.num_processes} process(es) × {self.accumulation} accumulation = {self.train.global_batch} "
                f"images per step; run directory {self.run_dir}"
            )
        log_with, run_name = list(self.train.log_with), self.train.run_name or self.run_dir.name
        try:
            acc.init_trackers(
                self.train.project,
                config=None if trackers.continues_a_run(log_with, self.run_dir) else _flat(self.config),
                init_kwargs=trackers.init_kwargs(log_with, self.run_dir, run_name),
            )
        except Exception as err:  # noqa: BLE001 - a tracker's own settings (URI, login, mode): say so in one line
            acc.trackers = []  # half-started: `end_training()` must not finish them
            raise ConfigError(
                f"train.log_with={log_with}: a tracker failed to start ({type(err).__name__}: {err}); fix its "
                "settings (WANDB_MODE, MLFLOW_TRACKING_URI, …) or leave it out of train.log_with"
            ) from err
        trackers.remember_ids(acc, self.run_dir)
        log = MetricsLog(acc, self.run_dir, start_step=start, total_steps=self.total_steps,
                         global_batch=self.train.global_batch, samples_per_epoch=self.samples_per_epoch,
                         flops_per_image=self.flops_per_image, precision=self.precision)
        window = MetricsWindow(acc.device)
        state = RunState(model, forward, optimizer, scheduler, agreement)
        finished = False
        try:
            try:
                result = self._loop(start, state, log, window)
            except (RuntimeError, ConnectionError, EOFError) as err:  # a worker's or a machine's death
                death = self._worker_death(err) or self._peer_lost(err)
                if death is None:
                    raise
                raise death from err
            finished = True
        finally:
            self._close_stream()
            log.close()
            if finished:
                acc.wait_for_everyone()
            for tracker in acc.trackers:
                tracker.finish()
            acc.trackers = []  # finished: a later `end_training()` must not finish them twice
        if result.status == "finished":
            self._write_rank_summary(result.step)
        report_exit(result.status, result.step)
        return result

    def _peer_lost(self, err: BaseException) -> PeerLost | None:
        """The one-line error for a collective that failed because another process of the run is gone."""
        if self.accelerator.num_processes == 1 or not _lost_peer(err):
            return None
        return PeerLost(
            f"rank {self.rank} lost contact with another process of the run ({' '.join(str(err).split())[:200]}); "
            f"a machine died, was killed or was cut off (train.collective_timeout_s={self.train.collective_timeout_s}). "
            f"The last checkpoint is {ckpt.latest_checkpoint(self.ckpt_root) or 'none yet'}: start every machine "
            "again with --resume auto"
        )

    # ------------------------------------------------------------------------------------------ loop
    def _loop(self, start: int, s: RunState, log: MetricsLog, window: MetricsWindow) -> TrainResult:
        acc, train = self.accelerator, self.train
        batches = self._open_first_stream(start)
        last_ckpt: Path | None = None
        with StopRequest() as stop:
            for step in range(start + 1, self.total_steps + 1):
                stopping = self._step(step, batches, s, window, stop)
                log.advance()
                boundary = step % train.checkpoint_every == 0 or step == self.total_steps
                if step % train.log_every == 0 or boundary:
                    self._log(step, log, window)
                if self.val_fn is not None and self.val_every and step % self.val_every == 0:
                    self._validate(step)
                if boundary:
                    last_ckpt = self._save(step, s, boundary=True)
                    if step < self.total_steps:
                        batches = self._open_stream(step)  # the segment a resumed run would open
                if stopping:
                    if not boundary:
                        self._log(step, log, window)
                        last_ckpt = self._save(step, s, boundary=False)
                    acc.print(
                        f"\nstopped by {stop.received or 'a signal on another rank'} at step {step}; checkpoint "
                        f"{last_ckpt}. Resume: run the same command with --resume auto (or --resume {last_ckpt})"
                    )
                    return TrainResult(step, "preempted", last_ckpt)
        return TrainResult(self.total_steps, "finished", last_ckpt)

    def _step(self, step: int, batches: Iterator, s: RunState, window: MetricsWindow, stop: StopRequest) -> bool:
        """One optimizer step: `accumulation` micro-batches, gradients synchronised on the last one only.

        Returns whether the ranks agreed to stop after this step (a signal reached one of them).
        """
        acc, model = self.accelerator, s.model
        model.train()
        loss_sum = torch.zeros((), device=acc.device)
        metric_sums: dict[str, torch.Tensor] = {}
        data_wait, skipped = 0.0, 0
        for micro in range(self.accumulation):
            t0 = time.perf_counter()
            batch, stopping = self._next_batch(batches, s.agreement, stop)
            data_wait += time.perf_counter() - t0
            skipped += int(batch.get("skipped", 0))
            self._consumed(batch)
            images = batch["image"].to(acc.device, non_blocking=True)
            labels = batch["label"].to(acc.device, non_blocking=True)
            sync = acc.no_sync(model) if micro < self.accumulation - 1 else nullcontext()
            with sync:
                with self.scaling.autocast() if self.scaling is not None else nullcontext():
                    loss, metrics = s.forward(images, labels)
                scaled = loss / self.accumulation
                acc.backward(self.scaling.scale(scaled) if self.scaling is not None else scaled)
            loss_sum += loss.detach().float()
            for key, value in metrics.items():
                metric_sums[key] = metric_sums[key] + value.detach().float() if key in metric_sums else value.detach().float()
        nonfinite_loss = (~torch.isfinite(loss_sum)).float()
        nonfinite_grad = torch.zeros((), device=acc.device)
        if self.scaling is not None:
            self.scaling.unscale(s.optimizer)  # true-scale gradients before clipping and the step
        if self.optim.grad_clip is not None or self.scaling is not None:  # fp16 needs the norm to see an overflow
            grad_norm = acc.clip_grad_norm_(model.parameters(), self.optim.grad_clip or float("inf"))
            nonfinite_grad = (~torch.isfinite(grad_norm)).float()
        flags = torch.stack([nonfinite_loss, nonfinite_grad])  # (2,)
        if acc.num_processes > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # any rank non-finite → all skip (stays on the device)
        skip = flags.max()
        if self.scaling is None:  # every skip is a non-finite step
            nonfinite, overflow = skip, torch.zeros_like(skip)
        else:  # gradients inf/nan with a finite loss: fp16 overflowed, the scaler halves the scale and goes on
            nonfinite, overflow = flags[0], flags[1] * (1.0 - flags[0])
        self._lr = max(s.scheduler.get_last_lr())  # the rate this update used (the top one under layer-wise decay)
        step_unless(s.optimizer, skip)
        if self.scaling is not None:
            self.scaling.update()
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        n = self.accumulation
        window.add(loss_sum / n, skip, {k: v / n for k, v in metric_sums.items()}, data_wait, skipped,
                   nonfinite=nonfinite, overflow=overflow)
        return stopping

    def _next_batch(self, batches: Iterator, agreement: HostAgreement, stop: StopRequest) -> tuple[dict, bool]:
        """The next micro-batch once every rank has one, and whether any rank has been asked to stop.

        Any failure of this rank's stream is shared before the micro-batch's collectives, and every rank raises it.
        """
        try:
            batch, failure = next(batches), None
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            batch, failure = None, self._worker_death(err) or err
        failed, stopping = agreement.any_each(failure is not None, stop.received is not None)
        if failed:
            raise_on_every_rank(failure, agreement.gather, "the data stream")
        return batch, stopping

    def _worker_death(self, err: Exception) -> DataError | None:
        """A loader worker killed from outside (most often by the out-of-memory killer) as one line that says
        how to go on; None for any other failure."""
        died = isinstance(err, RuntimeError) and "DataLoader worker" in str(err)
        if not died and isinstance(err, (ConnectionError, EOFError)):  # a batch lost in transfer: was it a death?
            died = bool(getattr(self._stream, "dead_workers", lambda wait: [])(wait=2.0))
        if not died:
            return None
        last = ckpt.latest_checkpoint(self.ckpt_root)
        since = f"from {last}" if last is not None else "from step 0: no checkpoint yet"
        return DataError(
            f"a data loader worker died ({' '.join(str(err).split())[:160]}); the usual cause is the out-of-memory "
            f"killer: lower data.num_workers or data.shuffle_buffer, then run the same command with --resume auto "
            f"(it continues {since})")

    # ------------------------------------------------------------------------------------- pieces
    def _log(self, step: int, log: MetricsLog, window: MetricsWindow) -> None:
        if window.steps == 0:
            return
        extra = {"loss_scale": self.scaling.scale_value()} if self.scaling is not None else None
        record = log.write(step, window, self._lr, extra)
        if self.scaling is not None:
            self.scaling.check_overflow_streak(record["_overflow_streak"], step)
        if record["_max_streak"] >= self.train.max_nonfinite:
            first_bad = step - record["_streak"] + 1 if record["_streak"] else step - window.steps
            good = [p for p in ckpt.list_checkpoints(self.ckpt_root) if int(p.name.split("_")[1]) < first_bad]
            last_good = good[-1] if good else None
            raise UserError(
                f"{record['_max_streak']} non-finite losses in a row (up to step {step}, max_nonfinite="
                f"{self.train.max_nonfinite}); the last good checkpoint is {last_good or 'none (no checkpoint yet)'}. "
                "Lower optim.lr, raise optim.warmup_steps or use train.precision=fp32, then --resume from it."
            )

    def _validate(self, step: int) -> None:
        results = self.val_fn(step) or {}
        if self.accelerator.is_main_process and results:
            append_line(self.run_dir / "eval.jsonl", json.dumps({"step": step, **results}))
        self.accelerator.log({f"eval/{k}": v for k, v in results.items()}, step=step)

    def _consumed(self, batch: dict) -> None:
        """Note how far the batch's loader worker has got (streams that say so: `worker`, `workers`, `position`),
        and the key records it carries (`part_keys`)."""
        self._parts_read.note(batch)
        if "position" not in batch:
            return
        worker, workers = int(batch["worker"]), int(batch["workers"])
        if not self._positions:
            self._positions = [0] * workers
        self._positions[worker] = int(batch["position"])
        self._next_worker = (worker + 1) % workers

    def _check_split_keys(self, agreement: HostAgreement) -> None:
        """Every rank's key records since the last checkpoint into the main process's ledger; collective. A key
        at two samples of the split raises its `DataError` on every rank."""
        gathered = agreement.gather_to_main(self._parts_read.take())
        note = together(agreement, lambda: self._split_keys.add(r for records in gathered for r in records),
                        "checking that every sample key occurs once", main_only=True)
        if note:
            self.accelerator.print(note)

    def _save(self, step: int, s: RunState, boundary: bool) -> Path:
        """A checkpoint step starts a new data segment; between them the stream positions say where it stands.
        Before it is written, the keys read since the last one are checked (a repeated key saves nothing)."""
        self._check_split_keys(s.agreement)
        segment, positions = (step, []) if boundary else (self._segment, self._positions)
        meta = {
            "stream": {"segment": segment, "seed": self.train.seed},
            "world_size": self.accelerator.num_processes,
            "accumulation": self.accumulation,
            "global_batch": self.train.global_batch,
            "config": self.config,
            "format": "ssl_vit.checkpoint",
            "version": 1,
        }
        if self.scaling is not None:  # the same on every rank (its overflow decision follows all-reduced gradients)
            meta["loss_scaler"] = self.scaling.state_dict()
        if len(self._split_keys):  # main process only (the others' ledgers stay empty; only rank 0 writes meta)
            meta["split_keys"] = self._split_keys.state_dict()
        path = ckpt.save_checkpoint(
            self.ckpt_root, step, model=s.model, optimizer=_inner(s.optimizer), scheduler=s.scheduler,
            meta=meta, config_yaml=self.config_yaml, rank=self.rank, agreement=s.agreement,
            keep_last=self.train.keep_last,
            rank_state={"stream_positions": list(positions), "stream_next_worker": self._next_worker if positions else 0},
        )
        return path

    def _plan(self, resume: str | None, overwrite: bool, lock: RunLock) -> StartPlan:
        """Main process: take the run's lock, then decide where to start (reads only; refusals are one line)."""
        make_dir(self.run_dir, "output_dir")
        lock.acquire()
        if lock.took_over:
            print(f"{self.run_dir}: took over the lock of {describe_holder(lock.took_over)}, "
                  f"{lock.took_over['reason']}", flush=True)
        return plan_start(self.run_dir, resume, overwrite, self.config)

    def _restore(self, plan: StartPlan, model, optimizer, scheduler) -> int:
        """Load the planned checkpoint (or seed a fresh run); returns the step to continue after."""
        acc = self.accelerator
        if plan.note:
            acc.print(plan.note)
        if plan.checkpoint is None:
            set_seed(self.train.seed, device_specific=True)  # seed + rank: ranks draw different corruptions
            return 0
        path = plan.checkpoint
        meta, rng_restored = ckpt.load_checkpoint(path, model=model, optimizer=_inner(optimizer),
                                                  scheduler=scheduler, rank=self.rank)
        step = int(meta["step"])
        self._restore_loss_scale(meta, path)
        if "split_keys" in meta and acc.is_main_process:
            self._split_keys.load_state_dict(meta["split_keys"])
        saved_world = int(meta.get("world_size", acc.num_processes))
        if not rng_restored:
            set_seed(self.train.seed + step, device_specific=True)
        if saved_world != acc.num_processes:
            acc.print(
                f"resuming a {saved_world}-process checkpoint with {acc.num_processes} processes: the global batch "
                f"stays {self.train.global_batch} (accumulation {self.accumulation}), the data order differs"
            )
        else:
            segment = int(meta.get("stream", {}).get("segment", step))
            rank_state = meta.get("rank_state", {})
            positions = list(rank_state.get("stream_positions", []))
            if segment != step and positions:  # taken between the segment's checkpoints: fast-forward to it
                self._resume_stream = (segment, positions, int(rank_state.get("stream_next_worker", 0)))
        acc.print(f"resumed from {path} at step {step}")
        if plan.changes:
            acc.print(f"the recipe changed on resume, from step {step + 1} on: {describe_changes(plan.changes)} "
                      f"(recorded in {self.run_dir / RESUMES_FILE})")
        return step

    def _restore_loss_scale(self, meta: dict, path: Path) -> None:
        """fp16 continues with the saved loss scale (a resume that restarted at the initial one would skip steps
        the uninterrupted run took); a checkpoint of another precision has none, and the scale starts afresh."""
        if self.scaling is None:
            return
        if "loss_scaler" in meta:
            self.scaling.load_state_dict(meta["loss_scaler"])
        else:
            self.accelerator.print(f"{path} was not trained in fp16: the loss scale starts at "
                                   f"train.fp16_loss_scale={self.train.fp16_loss_scale:g}")

    def _open_stream(self, segment: int, positions: list[int] | None = None, next_worker: int = 0) -> Iterator:
        """Close the current stream (shutting its workers down), then open the one for `segment`, fast-forwarded
        to `positions` (per loader worker, `next_worker`'s batch first) when resuming between the segment's
        checkpoints."""
        self._close_stream()
        if positions:
            self._stream = self.make_stream(segment, positions, next_worker)
        else:
            self._stream = self.make_stream(segment)
        self._segment, self._positions, self._next_worker = segment, list(positions or []), next_worker
        return iter(self._stream)

    def _open_first_stream(self, start: int) -> Iterator:
        """The stream a run starts or resumes with: where the uninterrupted run was at step `start`."""
        if self._resume_stream is None:
            return self._open_stream(start)
        try:
            return self._open_stream(*self._resume_stream)
        except StreamLayoutChanged as err:
            self.accelerator.print(f"{err}: the stream restarts at step {start}; the data order differs from here on")
            return self._open_stream(start)

    def _close_stream(self) -> None:
        close = getattr(self._stream, "close", None)
        if callable(close):
            close()
        self._stream = None

    def _write_rank_summary(self, step: int) -> None:
        """ranks/rank{r}.json: this rank's final step and parameter checksum (equal across ranks under DDP)."""
        folder = self.run_dir / "ranks"
        make_dir(folder)
        summary = {"rank": self.rank, "step": step, "param_sha256": parameter_checksum(self.objective)}
        atomic_write(folder / f"rank{self.rank}.json", json.dumps(summary) + "\n")


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _flat(config: dict) -> dict[str, Any]:
    """Dotted scalar keys for trackers (tensorboard's hparams accept only scalars)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}
