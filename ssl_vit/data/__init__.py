"""Shards → uint8 batches: data specs, train/eval streams (split by rank and worker here, so never through
`accelerator.prepare()`), fast JPEG decode with crops, and uint8 → float normalisation on the device."""
from .crops import CropBox, center_crop, random_resized_crop
from .decode import decode_crop
from .normalize import normalize_uint8
from .spec import ShardSet, resolve_spec
from .stream import Stream, build_eval_stream, build_train_stream, steps_per_epoch
from .stream_options import StreamOptionError, TrainStreamOptions

__all__ = [
    "CropBox",
    "ShardSet",
    "Stream",
    "StreamOptionError",
    "TrainStreamOptions",
    "build_eval_stream",
    "build_train_stream",
    "center_crop",
    "decode_crop",
    "normalize_uint8",
    "random_resized_crop",
    "resolve_spec",
    "steps_per_epoch",
]
