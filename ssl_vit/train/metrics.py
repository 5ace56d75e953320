"""Training metrics without host-device synchronisation inside the step.

Each step adds detached device tensors to a `MetricsWindow`; only every `log_every` steps is the window
reduced across ranks and brought to the host (one `.tolist()`). `MetricsLog` then writes one JSON line to
`metrics.jsonl` (always), hands the same record to Accelerate's trackers (tensorboard, wandb… when
configured) and updates the progress bar (data_tools.progress_bar) on the main process.

A record: `step`, `loss` (mean over the window's finite steps and all ranks; null if none), `lr`, the
objective's metrics, `images_per_s`, `data_wait_s` (seconds per step spent waiting for the data stream,
mean over ranks), `skipped_samples` (undecodable samples so far, all ranks), `nonfinite_skipped` (updates
skipped so far for a non-finite loss), `overflow_skipped` (fp16: updates skipped so far because the scaled
gradients overflowed, the loss scaler's own calibration) and `loss_scale` (fp16 only), `epoch` when the sample
count is known, and on CUDA `mfu` against the device's dense peak at the run's precision (16-bit tensor cores
for bf16 and fp16).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from data_tools.progress_bar import progress_bar

from ..files import append_line, atomic_write

# Dense peak TFLOP/s per device (vendor datasheets, without sparsity): (name fragment, bf16/fp16, fp32), the more
# specific names first ("H100 PCIe" before "H100", the SXM part). CPUs: no MFU.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5),
)


def peak_flops(gpu_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s of `gpu_name` at `precision` ("bf16" | "fp16" | "fp32"); None for an unknown GPU or a CPU."""
    for key, half, fp32 in PEAK_TFLOPS if gpu_name else ():
        if key in gpu_name:
            return (half if precision in ("bf16", "fp16") else fp32) * 1e12
    return None


def device_peak_flops(device: torch.device, precision: str = "bf16") -> float | None:
    """The dense peak of a CUDA device at `precision`; None on CPUs and GPUs missing from `PEAK_TFLOPS`."""
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device), precision)


class MetricsWindow:
    """Sums of one logging window, kept on the device. The streaks (steps in a row with a non-finite loss, and
    fp16 overflows in a row) span windows."""

    def __init__(self, device: torch.device):
        self.device = device
        self.streak = torch.zeros((), device=device)
        self.overflow_streak = torch.zeros((), device=device)
        self.nonfinite_total = torch.zeros((), device=device)
        self.overflow_total = torch.zeros((), device=device)
        self.skipped_total = 0
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.finite_steps = torch.zeros((), device=self.device)
        self.max_streak = torch.zeros((), device=self.device)
        self.metric_sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, bad: torch.Tensor, metrics: dict[str, torch.Tensor], data_wait: float, skipped: int,
            *, nonfinite: torch.Tensor | None = None, overflow: torch.Tensor | None = None) -> None:
        """One optimizer step: its mean loss and metrics; `bad` = 1.0 when the update was skipped, for a non-finite
        loss (`nonfinite`, default: every skip) or an fp16 overflow (`overflow`); all the same on every rank."""
        nonfinite = bad if nonfinite is None else nonfinite
        overflow = torch.zeros_like(bad) if overflow is None else overflow
        good = 1.0 - bad
        self.loss_sum += torch.where(bad > 0, 0.0, loss.float())
        self.finite_steps += good
        for key, value in metrics.items():
            value = torch.where(bad > 0, 0.0, value.detach().float())
            self.metric_sums[key] = self.metric_sums[key] + value if key in self.metric_sums else value
        self.streak = (self.streak + 1.0) * nonfinite
        self.max_streak = torch.maximum(self.max_streak, self.streak)
        self.nonfinite_total += nonfinite
        self.overflow_streak = (self.overflow_streak + 1.0) * overflow
        self.overflow_total += overflow
        self.steps += 1
        self.data_wait += data_wait
        self.skipped_total += skipped

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        """All-reduce the window and bring it to the host: the one synchronisation per logged step."""
        keys = sorted(self.metric_sums)
        local = torch.stack(
            [self.loss_sum, self.finite_steps, *(self.metric_sums[k] for k in keys)]
            + [torch.tensor(v, device=self.device, dtype=torch.float32)
               for v in (self.data_wait, float(self.skipped_total))]
        )  # (2 + M + 2,)
        total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
        # The streak counters are the same on every rank (the skip decision is all-reduced): not summed.
        counters = torch.stack([self.max_streak, self.streak, self.nonfinite_total, self.overflow_total,
                                self.overflow_streak])  # (5,)
        values = torch.cat([total, counters]).tolist()
        loss_sum, finite, *rest = values
        metric_values = rest[: len(keys)]
        wait, skipped, max_streak, streak, nonfinite, overflow, overflow_streak = rest[len(keys):]
        world = accelerator.num_processes
        out = {"loss": loss_sum / finite if finite else None}
        out.update({k: (v / finite if finite else None) for k, v in zip(keys, metric_values) if k != "loss"})
        out["data_wait_s"] = wait / world / max(self.steps, 1)
        out["skipped_samples"] = int(skipped)
        out["nonfinite_skipped"] = int(nonfinite)
        out["overflow_skipped"] = int(overflow)
        out["_max_streak"], out["_streak"], out["_overflow_streak"] = int(max_streak), int(streak), int(overflow_streak)
        return out


class MetricsLog:
    """metrics.jsonl + Accelerate trackers + the progress bar. Construct on every rank; only the main one writes."""

    def __init__(
        self,
        accelerator: Accelerator,
        run_dir: Path,
        *,
        start_step: int,
        total_steps: int,
        global_batch: int,
        samples_per_epoch: int | None = None,
        flops_per_image: float | None = None,
        precision: str = "fp32",
    ):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.path = run_dir / "metrics.jsonl"
        self.global_batch = global_batch
        self.samples_per_epoch = samples_per_epoch
        peak = device_peak_flops(accelerator.device, precision)
        self.flops_budget = peak * accelerator.num_processes if peak and flops_per_image else None
        self.flops_per_image = flops_per_image
        self.bar = progress_bar(total=total_steps, initial=start_step, disable=not self.main, dynamic_ncols=True,
                        desc="train", unit="step")

    def advance(self) -> None:
        self.bar.update(1)

    def write(self, step: int, window: MetricsWindow, lr: float, extra: dict[str, float] | None = None) -> dict:
        """Reduce `window`, write the record (with `extra`, e.g. fp16's `loss_scale`), reset the window; returns
        the record with the `_streak` fields."""
        reduced = window.reduce(self.accelerator)
        elapsed = max(time.perf_counter() - window.started, 1e-9)
        images_per_s = window.steps * self.global_batch / elapsed
        record = {"step": step, "loss": reduced.pop("loss"), "lr": lr}
        streaks = {k: reduced.pop(k) for k in ("_max_streak", "_streak", "_overflow_streak")}
        record.update(reduced)
        record.update(extra or {})
        record["images_per_s"] = images_per_s
        if self.samples_per_epoch:
            record["epoch"] = step * self.global_batch / self.samples_per_epoch
        if self.flops_budget:
            record["mfu"] = images_per_s * self.flops_per_image / self.flops_budget
        window.reset()
        if self.main:
            append_line(self.path, json.dumps(record))
            postfix = {"loss": f"{record['loss']:.4f}" if record["loss"] is not None else "nan",
                       "lr": f"{lr:.2e}", "img/s": f"{images_per_s:.0f}"}
            self.bar.set_postfix(postfix, refresh=False)
        self.accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)
        return {**record, **streaks}

    def close(self) -> None:
        self.bar.close()


def truncate_after(path: Path, step: int) -> None:
    """Keep only the records up to `step` (a resumed run rewrites what the interrupted one logged past its checkpoint).

    A line cut short by a kill is dropped too.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= step:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in kept))
