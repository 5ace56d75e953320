"""Weights in the layouts other libraries load: a Hugging Face `save_pretrained` folder, a timm Hub folder.

    write_folder(model, "out/", "hf", Preprocessing(crop_pct=0.875))   # config.json, model.safetensors, …
    read_folder("out/")   # (weights file, ViTConfig) of an HF or timm folder, ours or anybody's

The single-file form (`.safetensors` + `.json`) stays `models.weights.save_backbone`; these folders are what
`transformers.ViTModel.from_pretrained` and `timm.create_model("local-dir:…")` read. Each folder's
`model.safetensors` also records our ViTConfig in its header (`ssl_vit_config`), so the pooling survives a
format (Hugging Face's) that has no field for it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import CheckpointError
from ...files import atomic_write
from ..vit import ViTConfig

FOLDER_FORMATS = ("hf", "timm")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Weight files of a folder, in the order timm's `load_state_dict_from_path` and transformers prefer them.
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


@dataclass(frozen=True)
class Preprocessing:
    """How images reach the model at evaluation: resize the shorter side to S / crop_pct, centre-crop S (the
    model's img_size), scale to [0, 1], normalise. `interpolation` is the resize kernel (PIL's name)."""

    crop_pct: float = 0.875
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def resize_shorter(self, img_size: int) -> int:
        """The shorter side before the centre crop (timm: `math.floor(img_size / crop_pct)`)."""
        return int(img_size / self.crop_pct)


def write_folder(model, out: str | Path, fmt: str, preprocessing: Preprocessing, metadata: dict | None = None) -> list[Path]:
    """Write `model` into folder `out` in format `fmt` ('hf' or 'timm'); returns the files written.

    `metadata` (plain data: step, objective, train seed…) goes into config.json under `ssl_vit`, a key
    neither transformers nor timm reads."""
    from .hf import write_hf
    from .timm import write_timm

    writers = {"hf": write_hf, "timm": write_timm}
    if fmt not in writers:
        raise CheckpointError(f"unknown export format {fmt!r}; choose one of hf, timm, safetensors")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} is a file; --format {fmt} writes a folder: pass a directory path")
    out.mkdir(parents=True, exist_ok=True)
    return writers[fmt](model, out, preprocessing, metadata or {})


def folder_kind(path: Path) -> Literal["hf", "timm"] | None:
    """'hf' or 'timm' for a folder whose config.json is a Hugging Face ViT or timm config, else None."""
    config = path / CONFIG_FILE
    if not config.is_file():
        return None
    info = read_json(config)
    if info.get("model_type") == "vit":
        return "hf"
    if "architecture" in info:
        return "timm"
    return None


def read_folder(path: str | Path) -> tuple[Path, ViTConfig | None]:
    """(the weights file, its ViTConfig) of a Hugging Face ViT or timm folder; every failure is one line."""
    from .hf import config_from_hf
    from .timm import config_from_timm

    path = Path(path)
    kind = folder_kind(path)
    if kind is None:
        raise CheckpointError(
            f"{path}: not a Hugging Face ViT or timm folder (its {CONFIG_FILE} is missing, or names neither "
            "model_type 'vit' nor a timm architecture); pass a weights file instead"
        )
    weights = next((path / n for n in _WEIGHT_NAMES if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no weights file ({', '.join(_WEIGHT_NAMES)}) next to its {CONFIG_FILE}")
    from ..weights import saved_config

    recorded = saved_config(weights) if weights.suffix == ".safetensors" else None  # ours: exact, pooling too
    if recorded is not None:
        return weights, recorded
    info = read_json(path / CONFIG_FILE)
    return weights, config_from_hf(info, str(path / CONFIG_FILE)) if kind == "hf" else config_from_timm(info)


def read_json(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err}); repair or remove it") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(info).__name__}")
    return info


def write_safetensors(tensors: dict, path: Path, metadata: dict[str, str]) -> Path:
    """Save `tensors` (detached, contiguous CPU copies) to `path` complete or not at all (`atomic_write`): an
    interrupted export never leaves a truncated file under the final name, a full disk is one line."""
    from safetensors.torch import save

    atomic_write(path, save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata))
    return path


def write_json(path: Path, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=2) + "\n")
