"""Peak memory of one training step at full size, estimated on any laptop: "does ViT-L/16 at 128 fit in 80 GB?"

The objective is built on the meta device by `config.build_objective`, the one place a recipe becomes a model (as
`ssl-vit pretrain` builds it), and materialised as fake tensors (`FakeTensorMode`: shapes, dtypes and devices, no
storage). It runs a training step (forward under autocast, backward, fused AdamW,
`zero_grad(set_to_none=True)`) that creates the optimizer state, then a second one under torch's `MemTracker`,
which sees every tensor allocated and freed and keeps the peak by category: parameters, gradients, optimizer
state, activations, temporaries — the steady state of training. The fake tensors live on the CPU and autocast is
the CPU's bf16 policy (matmuls in bf16, norms and softmax in fp32, as on CUDA); the attention saves what the
flash kernels save (output and log-sum-exp). Not seen: the CUDA context (~0.5 GiB) and the caching allocator's
rounding and fragmentation, so leave headroom below the budget. One process holds a whole replica (DDP); FSDP
divides parameters, gradients and optimizer state by the number of processes.

Used by `ssl-vit estimate-memory`, `ssl-vit pretrain --dry-run` and bench/memory.py (which also measures a
Hugging Face reference with the same function).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from ..config import PretrainConfig

GIB = 2**30
# MemTracker's categories → ours; "total" is the peak of their sum, not the sum of each one's peak.
CATEGORIES = {"Parameter": "params", "Gradient": "grads", "Optstate": "optimizer", "Activation": "activations",
              "Temp": "temporaries"}


def step_peak_memory(objective: nn.Module, batch: int, img_size: int, *, bf16: bool,
                     num_classes: int = 1) -> dict[str, int]:
    """Peak bytes, by category (`CATEGORIES`) and `total`, of a steady-state training step of `objective`.

    `objective`: built on the meta device (`with torch.device("meta")`), its forward `(images, labels) →
    (loss, metrics)`; it is materialised as fake tensors here and stays unusable afterwards.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from .optim import param_groups

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = objective.to_empty(device="cpu").train()  # (meta → fake) every tensor: shapes, no storage
        optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, fused=True)
        images = torch.randint(0, 256, (batch, 3, img_size, img_size), dtype=torch.uint8)  # (B, 3, S, S)
        labels = torch.randint(0, num_classes, (batch,))  # (B,): read by classification, ignored by MPP

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = model(images, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # untracked: creates the optimizer state, which the tracker then counts from the start
        tracker = MemTracker()
        tracker.track_external(model, optimizer, images, labels)
        with tracker:
            step()
        snapshot = tracker.get_tracker_snapshot("peak")
    per_device = next(iter(snapshot.values()))  # one (fake) device
    out = {label: 0 for label in CATEGORIES.values()}
    for kind, value in per_device.items():
        label = CATEGORIES.get(getattr(kind, "value", kind))
        if label:
            out[label] += int(value)
    out["total"] = int(per_device["Total"])
    return out


def estimated_precision(precision: str) -> str:
    """The precision a recipe trains in on a GPU: `auto` is bf16 there (fp16 on GPUs without bf16, whose 2-byte
    activations take the same memory)."""
    return precision if precision in ("fp32", "fp16") else "bf16"


def pretrain_step_memory(cfg: PretrainConfig) -> dict:
    """The estimate for a pretraining recipe: its model, objective, per-device batch, image size, precision and
    activation checkpointing; the bytes of `step_peak_memory` plus what was estimated."""
    from ..config import build_objective

    with torch.device("meta"):  # the recipe's objective exactly as `ssl-vit pretrain` builds it, without storage
        objective = build_objective(cfg)
    if cfg.train.grad_checkpointing:
        objective.backbone.set_grad_checkpointing(True)
    precision = estimated_precision(cfg.train.precision)
    parameters = sum(p.numel() for p in objective.parameters())
    peak = step_peak_memory(objective, cfg.data.batch_size, cfg.data.image_size, bf16=precision != "fp32")  # fp16: the same bytes
    return {"model": cfg.model.name, "objective": cfg.objective.name, "batch_per_device": cfg.data.batch_size,
            "image_size": cfg.data.image_size, "precision": precision, "precision_setting": cfg.train.precision,
            "grad_checkpointing": cfg.train.grad_checkpointing, "parameters": parameters,
            "peak_bytes": peak}


def describe(estimate: dict, budget_gib: float | None = None) -> str:
    """Two lines for people: the peak and what it is made of, and whether it fits `budget_gib`."""
    peak = estimate["peak_bytes"]
    parts = ", ".join(f"{name} {peak[name] / GIB:.2f}" for name in CATEGORIES.values())
    text = (f"{estimate['model']} ({estimate['parameters'] / 1e6:.1f}M parameters with the objective), "
            f"{estimate['batch_per_device']} × {estimate['image_size']}px per device, {estimate['precision']}"
            f"{' (precision auto, on a GPU)' if estimate.get('precision_setting') == 'auto' else ''}"
            f"{', activation checkpointing' if estimate['grad_checkpointing'] else ''}: "
            f"peak {peak['total'] / GIB:.2f} GiB per device\n  at the peak (GiB): {parts}")
    if budget_gib is not None:
        verdict = "fits" if peak["total"] <= budget_gib * GIB else "does NOT fit"
        text += f"\n  {verdict} in {budget_gib:g} GiB (leave ~1-2 GiB for the CUDA context and fragmentation)"
    return text
