"""The one way ssl_vit opens a PyTorch pickle: weights-only, so a checkpoint from a stranger cannot run code."""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

# Plain-data classes that well-known checkpoints pickle next to their tensors and that construct nothing else:
# MAE's `checkpoint-*.pth` (and DeiT's, and many training scripts') store the run's `args` as a Namespace.
SAFE_EXTRA_GLOBALS = [argparse.Namespace]


def load_weights_only(path: str | Path, trust_hint: str = "") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with every failure as one `CheckpointError` line.

    `argparse.Namespace` (the `args` MAE-style checkpoints hold) is allowed: it only sets attributes.
    A pickle that needs a code object (a `__reduce__` payload, a custom class) is refused, naming the global it
    asked for; `trust_hint` tells the user what to do if the file is theirs. Truncated or corrupt files say so.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except pickle.UnpicklingError as err:
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if needs is None:
            raise CheckpointError(f"{path}: not a readable PyTorch file; is it complete?") from None
        raise CheckpointError(
            f"{path}: refusing to load: unpickling it would run code ({needs[1]}), and only tensors and plain "
            f"containers are loaded (torch.load(weights_only=True)). {trust_hint}".rstrip()
        ) from None
    except Exception as err:  # noqa: BLE001 — truncated or corrupt files mean the same to the user
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch file ({detail}); is it complete?") from None
