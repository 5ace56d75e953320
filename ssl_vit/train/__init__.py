"""The objective-agnostic training loop: optimizer and schedule, checkpoints, metrics, preemption."""
from .checkpoint import latest_checkpoint, list_checkpoints, read_state, resolve_checkpoint
from .feed import DataFeed
from .precision import resolve_precision
from .session import RunFiles, TrainResult, parameter_checksum
from .trainer import Trainer, Validation, make_accelerator

__all__ = [
    "DataFeed",
    "RunFiles",
    "Trainer",
    "TrainResult",
    "Validation",
    "latest_checkpoint",
    "list_checkpoints",
    "make_accelerator",
    "parameter_checksum",
    "read_state",
    "resolve_precision",
    "resolve_checkpoint",
]
