"""The objective-agnostic training loop: optimizer and schedule, checkpoints, metrics, preemption."""
from .checkpoint import latest_checkpoint, list_checkpoints, read_state, resolve_checkpoint
from .precision import resolve_precision
from .trainer import Trainer, TrainResult, make_accelerator, parameter_checksum

__all__ = [
    "Trainer",
    "TrainResult",
    "latest_checkpoint",
    "list_checkpoints",
    "make_accelerator",
    "parameter_checksum",
    "read_state",
    "resolve_precision",
    "resolve_checkpoint",
]
