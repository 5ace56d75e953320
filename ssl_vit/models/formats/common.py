"""What the folder formats share: file names, the preprocessing a folder records, its JSON and safetensors files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...errors import CheckpointError
from ...files import atomic_write
from ...ownership import file_record

FOLDER_FORMATS = ("hf", "timm")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Weight files of a folder, in the order timm's `load_state_dict_from_path` and transformers prefer them.
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


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


def finish_folder(out: Path, config: dict, written: list[Path], extra: dict[str, str] | None,
                  record: bool) -> list[Path]:
    """Write the `extra` files (the model card), then config.json last; with `record`, its `ssl_vit.files` lists
    every other file the export wrote (size; sha256 but for the weights), so a later export with --overwrite
    replaces exactly these and keeps whatever else the folder holds (`ownership.py`)."""
    written = [*written, *(atomic_write(out / name, text) for name, text in (extra or {}).items())]
    if record:
        config.setdefault("ssl_vit", {})["files"] = {
            p.name: file_record(p, digest=p.name != WEIGHTS_FILE) for p in written}
    return [write_json(out / CONFIG_FILE, config), *written]
