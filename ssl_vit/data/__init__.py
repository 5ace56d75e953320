"""Shards → uint8 batches: data specs, train/eval streams (split by rank and worker here, so never through
`accelerator.prepare()`), fast JPEG decode with crops, and uint8 → float normalisation on the device.

The names below are imported when first used (PEP 562, as in `ssl_vit/__init__.py`): the recipe schema reads
`stream_options` (torch-free) for its defaults, and `ssl-vit pretrain --help` must not import torch through this
package to print them.
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "CropBox": "ssl_vit.data.crops",
    "center_crop": "ssl_vit.data.crops",
    "random_resized_crop": "ssl_vit.data.crops",
    "decode_crop": "ssl_vit.data.decode",
    "normalize_uint8": "ssl_vit.data.normalize",
    "ShardSet": "ssl_vit.data.spec",
    "resolve_spec": "ssl_vit.data.spec",
    "Stream": "ssl_vit.data.stream",
    "build_eval_stream": "ssl_vit.data.stream",
    "build_train_stream": "ssl_vit.data.stream",
    "steps_per_epoch": "ssl_vit.data.stream",
    "StreamOptionError": "ssl_vit.data.stream_options",
    "TrainStreamOptions": "ssl_vit.data.stream_options",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ssl_vit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
