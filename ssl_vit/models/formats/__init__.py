"""Weights in the layouts other libraries load: a Hugging Face `save_pretrained` folder, a timm Hub folder.

    write_folder(model, "out/", "hf", Preprocessing(crop_pct=0.875))   # config.json, model.safetensors, …
    weights.read_folder("out/")   # (weights file, ViTConfig) of an HF or timm folder, ours or anybody's

The single-file form (`.safetensors` + `.json`) stays `models.weights.save_backbone`; these folders are what
`transformers.ViTModel.from_pretrained` and `timm.create_model("local-dir:…")` read. Each folder's
`model.safetensors` also records our ViTConfig in its header (`ssl_vit_config`), so the pooling survives a
format (Hugging Face's) that has no field for it.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ...files import make_dir
from .common import (
    CONFIG_FILE,
    FOLDER_FORMATS,
    WEIGHTS_FILE,
    Preprocessing,
    folder_kind,
    read_json,
    write_json,
    write_safetensors,
)
from .hf import write_hf
from .timm import write_timm

__all__ = ["CONFIG_FILE", "FOLDER_FORMATS", "WEIGHTS_FILE", "Preprocessing", "folder_kind", "read_json",
           "write_folder", "write_json", "write_safetensors"]


def write_folder(model, out: str | Path, fmt: str, preprocessing: Preprocessing, metadata: dict | None = None,
                 extra: dict[str, str] | None = None) -> list[Path]:
    """Write `model` into folder `out` in format `fmt` ('hf' or 'timm'); returns the files written.

    `metadata` (plain data: step, objective, train seed…) goes into config.json under `ssl_vit`, a key
    neither transformers nor timm reads, with the record of the files written (`ownership.py`); `extra` are
    more files to write with them ({name: text}: the model card). config.json is written last."""
    writers = {"hf": write_hf, "timm": write_timm}
    if fmt not in writers:
        raise CheckpointError(f"unknown export format {fmt!r}; choose one of hf, timm, safetensors")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file; --format {fmt} writes a folder: pass a directory path")
    make_dir(out, "export folder")
    return writers[fmt](model, out, preprocessing, metadata, extra)
