"""What `train.precision` means on this machine, and fp16's loss scaling.

`auto` is bf16 on a GPU that has it, fp16 on an older GPU (V100, T4: no bf16), fp32 on a CPU. bf16 has fp32's
range and needs no scaling, so it goes through Accelerate's autocast. fp16 does not go through Accelerate:
Accelerate trains in fp32 without a word when asked for fp16 on a CPU, so the fp16 path could never be tested
here. Instead `LossScaling` does fp16 with torch.amp's own pieces, autocast and `GradScaler`, on whatever device
the run has: one code path, tested on CPU and used as-is on GPUs.

A step under fp16: the loss is multiplied by the scale before the backward, the gradients are divided by it
before clipping, and a step whose gradients overflowed (inf/nan although the loss was finite) is skipped and the
scale halved; after `growth_interval` clean steps it doubles again. Such *overflow* skips are the scaler
calibrating itself, counted apart from non-finite losses (which stop the run after `train.max_nonfinite`).

The trainer sees one `Precision` whatever the run trains in (a null object, as nanoGPT's
`GradScaler(enabled=False)` and MAE's `NativeScaler` are): `Precision` does nothing for fp32 and bf16, and
`LossScaling` scales for fp16. The step calls the same methods either way and has no branch of its own.
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext
from typing import Any, ContextManager

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..config import TrainConfig
from ..errors import ConfigError, UserError

NAMES = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}  # Accelerate's names → ours
FP16_SMALLEST = 2.0 ** -24  # fp16's smallest subnormal: a loss scale below it cannot be the cure for an overflow


def resolve_precision(precision: str, cuda: bool) -> str:
    """The precision a recipe trains in here, in Accelerate's names ("no" | "bf16" | "fp16")."""
    if precision == "auto":
        if not cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def accelerate_precision(precision: str) -> str:
    """What Accelerate is given: bf16 stays with it; fp16 is done by `LossScaling`, so Accelerate sees "no"."""
    return "bf16" if precision == "bf16" else "no"


def report_launcher_disagreement(recipe: str, precision: str) -> None:
    """One line when `accelerate launch --mixed_precision` (or its config) asks for something else than the recipe
    gives: the recipe decides, and says so, instead of being silently overridden or overriding."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher not in ("no", precision) and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(f"note: the launcher asks for mixed precision {launcher}, the recipe's train.precision={recipe} "
              f"gives {NAMES[precision]} on this machine: training in {NAMES[precision]} "
              f"(set train.precision={launcher} to follow the launcher)")


class Precision:
    """fp32 and bf16: nothing to scale (bf16's autocast is Accelerate's). Every method is the identity or a no-op.

    `classify(flags)` splits the step's all-reduced `(non-finite loss, non-finite gradients)` flags into
    (non-finite, overflow): without scaling every skipped step is a non-finite one.
    """

    watches_overflow = False  # whether the step must compute the gradient norm even without clipping

    def __init__(self, name: str = "fp32"):
        self.name = name

    def autocast(self) -> ContextManager:
        return nullcontext()

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def classify(self, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = flags.max()
        return skip, torch.zeros_like(skip)

    def update(self) -> None:
        pass

    def log_extra(self) -> dict[str, float]:
        """What the metrics record adds (fp16: the loss scale)."""
        return {}

    def check(self, record: dict, step: int) -> None:
        """Raise when a logged record shows that training in this precision cannot go on."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> str | None:
        """Continue from a checkpoint's precision state; returns what to say after the checkpoint's path when it
        cannot be continued exactly."""
        return None


class LossScaling(Precision):
    """fp16 autocast and dynamic loss scaling for one run (see the module's docstring)."""

    watches_overflow = True  # an overflow shows as a non-finite gradient norm

    def __init__(self, device: torch.device, init_scale: float, growth_interval: int = 2000):
        super().__init__("fp16")
        self.device_type = device.type
        self.init_scale = init_scale
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale, growth_interval=growth_interval)
        # Overflow skips in a row that would take the scale below fp16's smallest subnormal: by then the
        # gradients are not too large for fp16, they are broken (inf or nan at any scale).
        self.max_overflow_streak = int(math.log2(init_scale / FP16_SMALLEST)) + 1

    def autocast(self) -> ContextManager:
        return torch.autocast(self.device_type, dtype=torch.float16)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss.float())  # in fp32: the scaled loss itself must not overflow

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale in place (before clipping, before the step)."""
        self.scaler.unscale_(getattr(optimizer, "optimizer", optimizer))

    def classify(self, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients inf/nan with a finite loss: fp16 overflowed, and the scaler halves the scale and goes on."""
        return flags[0], flags[1] * (1.0 - flags[0])

    def update(self) -> None:
        """After the step (taken or skipped): halve the scale if the gradients overflowed, else count towards doubling."""
        self.scaler.update()

    def scale_value(self) -> float:
        """The current scale (one host sync: read when metrics are logged, which synchronise anyway)."""
        return float(self.scaler.get_scale())

    def log_extra(self) -> dict[str, float]:
        return {"loss_scale": self.scale_value()}

    def check(self, record: dict, step: int) -> None:
        streak = record["_overflow_streak"]
        if streak >= self.max_overflow_streak:
            raise UserError(
                f"fp16: the gradients overflowed {streak} steps in a row (up to step {step}) although the loss was "
                f"finite; the loss scale fell below fp16's smallest number, so they are inf or nan at any scale. "
                "Use train.precision=bf16 (or fp32), or lower optim.lr, then --resume from the last checkpoint"
            )

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()  # the same on every rank: its overflow decision follows all-reduced gradients

    def load_state_dict(self, state: dict[str, Any]) -> str | None:
        """fp16 continues with the saved loss scale (a resume that restarted at the initial one would skip steps
        the uninterrupted run took); a checkpoint of another precision has none, and the scale starts afresh."""
        if not state:
            return f"was not trained in fp16: the loss scale starts at train.fp16_loss_scale={self.init_scale:g}"
        self.scaler.load_state_dict(state)
        return None


def precision_for_run(train: TrainConfig, accelerator: Accelerator) -> Precision:
    """The run's `Precision`: `LossScaling` when it trains in fp16 here, else the null object named after Accelerate's
    mixed precision (fp32 or bf16)."""
    if resolve_precision(train.precision, accelerator.device.type == "cuda") != "fp16":
        return Precision(NAMES[accelerator.mixed_precision])
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(f"train.precision={train.precision} trains in fp16 here, which ssl_vit supports with one "
                          f"process or DDP, not {accelerator.distributed_type.value}: use train.precision=bf16 "
                          "(or fp32)")
    return LossScaling(accelerator.device, train.fp16_loss_scale)
