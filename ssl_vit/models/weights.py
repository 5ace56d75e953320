"""Saving and loading backbone weights: one save function, one load function, one filter per foreign source.

    save_backbone(model, "vit_b16.safetensors")   # + vit_b16.json holding the ViTConfig
    model = load_backbone("vit_b16.safetensors")  # rebuilds the model from the JSON
    model = load_backbone("timm_or_hf.pth", create_model("vit_base_patch16", img_size=384, num_classes=10))

`load_backbone` accepts our exports, timm-layout state dicts (.safetensors / .pth / .bin), checkpoints that
hold the weights under `"model"` or `"backbone"` (the trainer's), and Hugging Face `ViTModel` /
`ViTForImageClassification` weights, in the Hub layout (`encoder.layer.{i}.attention.attention.query`, what
`save_pretrained` writes) or the in-memory layout of transformers >= 5 (`layers.{i}.attention.q_proj`).
Foreign keys pass through `filter_hf` (renaming) and then `filter_timm`, which fits the weights to the model:
it resamples `pos_embed` in 2D when the patch grid differs and drops a head whose class count differs.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import torch
import torch.nn as nn
from accelerate.utils import extract_model_from_parallel
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError
from ..files import atomic_write, make_dir
from ..safe_load import load_weights_only
from .formats.common import CONFIG_FILE, WEIGHT_NAMES, folder_kind, read_json, write_safetensors
from .formats.hf import config_from_hf
from .formats.timm import config_from_timm
from .hf import HF_DROPPED, HF_PREFIXES, hf_to_timm
from .mae import is_mae, split_mae
from .pos_embed import resample_pos_embed, sincos_2d
from .registry import MODEL_CONFIGS, create_model
from .unwrap import StateDict, unwrap_state_dict
from .vit import ViTConfig, VisionTransformer

FORMAT = "ssl_vit.backbone"

_TIMM_PREFIXES = ("patch_embed.", "blocks.")

_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


# ------------------------------------------------------------------------------------------- unwrapping
# ------------------------------------------------------------------------------------------------- saving
def save_backbone(model: nn.Module, path: str | Path, *, metadata: Mapping | None = None) -> Path:
    """Write `path` (.safetensors, timm-layout keys) and `path` with a `.json` suffix holding the config.

    The JSON is `{**metadata, "format": "ssl_vit.backbone", "version": 1, "model": <ViTConfig fields>,
    "model_name": <registered name or null>, "num_params": ...}`; the config is also stored in the
    safetensors header, so a lone .safetensors file still loads. Call it on the main process only.
    Returns `path`.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: backbones are exported as .safetensors; use {path.with_suffix('.safetensors')}")
    inner = extract_model_from_parallel(model, keep_torch_compile=False)
    config = getattr(inner, "config", None)
    if not isinstance(config, ViTConfig):
        raise TypeError(f"save_backbone expects an ssl_vit VisionTransformer, got {type(inner).__name__}")
    tensors = unwrap_state_dict(model.state_dict())
    info = {
        **(metadata or {}),  # first: the caller's extras never overwrite the fields below
        "format": FORMAT,
        "version": 1,
        "model": config.to_dict(),
        "model_name": suggest_model_name(config),
        "num_params": sum(t.numel() for t in tensors.values()),
    }
    make_dir(path.parent, "export directory")
    write_safetensors(tensors, path, {"format": FORMAT, "config": json.dumps(config.to_dict())})
    atomic_write(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ reading
def _config_from_dict(fields: Mapping, where: str) -> ViTConfig:
    try:
        return ViTConfig(**fields)
    except TypeError as err:
        raise CheckpointError(f"{where}: the model config does not fit this version of ssl_vit ({err})") from None


def saved_config(path: str | Path) -> ViTConfig | None:
    """The architecture an exported backbone records — its sidecar JSON, else its safetensors header, else (for a
    Hugging Face or timm folder) its config.json — or None for bare weights (timm, Hugging Face, MAE files),
    whose size must come from a model name or their shapes."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)[1]
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        try:
            info = json.loads(sidecar.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{sidecar}: not valid JSON ({err}); remove or repair it") from None
        if isinstance(info, dict) and info.get("format") == FORMAT:
            return _config_from_dict(info.get("model", {}), str(sidecar))
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err}); is it complete?") from None
        # `config` beside format ssl_vit.backbone (our single file); `ssl_vit_config` in our hf / timm folders.
        recorded = header.get("config") if header.get("format") == FORMAT else header.get("ssl_vit_config")
        if recorded:
            return _config_from_dict(json.loads(recorded), str(path))
    return None


def _read_file(path: Path) -> tuple[Mapping, ViTConfig | None]:
    """The object stored in `path` (a weights file, or a Hugging Face / timm folder) and the config saved with it."""
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file; give an exported .safetensors, a .pth/.bin state dict, a checkpoint, or a "
            "Hugging Face / timm folder"
        )
    if path.is_dir():
        if folder_kind(path) is None:
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
            listing = ", ".join(found) or "none found"
            raise CheckpointError(f"{path} is a directory; pass one weights file inside it ({listing}), or a "
                                  "Hugging Face / timm folder (with its config.json)")
        weights, config = read_folder(path)
        return _read_file(weights)[0], config
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                state = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err}); is it complete?") from None
    else:
        state = load_weights_only(
            path, "If you trust the file, re-save just its weights: "
            "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth')"
        )
    return state, saved_config(path)


def _extract(obj: object, source: str) -> StateDict:
    """The backbone's tensors from a bare state dict or a checkpoint, unwrapped, `backbone.` prefix removed.

    Checkpoints hold the weights under `"backbone"`, `"model"` or `"state_dict"`; a `"model"` entry may be a
    whole objective's state dict, whose backbone keys start with `backbone.`.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict or a checkpoint dict, found {type(obj).__name__}")
    for key in ("backbone", "model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:10]))
        raise CheckpointError(f"{source}: holds no weights (top-level keys: {keys}); expected a state dict, or one "
                              "under 'model' or 'backbone'")
    state = unwrap_state_dict(tensors)
    if not any(k.removeprefix("vit.").startswith(_TIMM_PREFIXES + HF_PREFIXES) for k in state):
        nested = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        if nested:
            state = nested
    return state


def detect_format(state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> Literal["timm", "hf"]:
    """'hf' for Hugging Face ViT keys (either layout, optionally under `vit.`), 'timm' for ours / timm's."""
    keys = [k.removeprefix("vit.") for k in state_dict]
    if any(k.startswith(HF_PREFIXES) for k in keys):
        return "hf"
    if any(k.startswith(_TIMM_PREFIXES) for k in keys):
        return "timm"
    raise CheckpointError(
        f"{source}: not a ViT state dict in timm or Hugging Face layout (first keys: {', '.join(keys[:6])})"
    )


def filter_hf(
    state_dict: Mapping[str, torch.Tensor], model: VisionTransformer, source: str = "state dict"
) -> StateDict:
    """Hugging Face ViT weights -> weights that load into `model` (renamed, then fitted by `filter_timm`)."""
    return filter_timm(hf_to_timm(state_dict, source), model, source)


# ------------------------------------------------------------------------------------ inferring the size
def _block_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    indices = {int(m[1]) for k in state_dict if (m := _BLOCK_INDEX.match(k))}
    return max(indices) + 1 if indices else 0


def suggest_model_name(config: ViTConfig) -> str | None:
    """The registered name with this width, depth and patch size (the weights' shape), if there is one."""
    for name, registered in sorted(MODEL_CONFIGS.items()):
        if (registered.embed_dim, registered.depth, registered.patch_size) == (
            config.embed_dim, config.depth, config.patch_size
        ):
            return name
    return None


def infer_config(state_dict: Mapping[str, torch.Tensor], *, num_heads: int | None = None) -> ViTConfig:
    """Build the ViTConfig a bare timm- or HF-layout state dict was trained with.

    Shapes give width and patch size (`patch_embed.proj.weight`: (D, C, P, P)), the image size
    (`pos_embed`'s grid × P), depth (block count), MLP ratio, qkv bias, [class] token and head size; a
    `pos_embed` equal to the 2D sin-cos formula marks a sin-cos model, and timm's `fc_norm` marks
    average pooling. The number of heads leaves no trace in the weights (any split of D gives the same
    shapes), so it is `num_heads` when given, else the head count of the registered sizes of that width
    (64-dim heads for Ti/S/B/L, 80 for H, 32 for the test sizes); an unregistered width needs `num_heads` or
    the exported JSON.
    """
    state = unwrap_state_dict(state_dict)
    if detect_format(state) == "hf":
        state = hf_to_timm(state)
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise CheckpointError("cannot infer the model: the state dict lacks patch_embed.proj.weight or pos_embed")
    embed_dim, in_chans, patch_size, _ = state["patch_embed.proj.weight"].shape
    class_token = "cls_token" in state
    grid_tokens = state["pos_embed"].shape[1] - int(class_token)
    side = math.isqrt(grid_tokens)
    if side * side != grid_tokens:
        raise CheckpointError(f"cannot infer the image size: pos_embed has {grid_tokens} grid tokens, not a square")
    depth = _block_count(state)
    if depth == 0 or "blocks.0.mlp.fc1.weight" not in state:
        raise CheckpointError("cannot infer the model: the state dict has no transformer blocks (blocks.0.*)")
    if num_heads is None:
        widths = {c.embed_dim: c.num_heads for c in MODEL_CONFIGS.values()}
        if embed_dim not in widths:
            raise CheckpointError(
                f"cannot infer the number of attention heads for width {embed_dim} (weights do not record it); "
                f"pass a model built with the right num_heads, or the exported .json next to the weights"
            )
        num_heads = widths[embed_dim]
    table = state["pos_embed"][0, int(class_token):].float()  # (N, D)
    is_sincos = embed_dim % 4 == 0 and torch.allclose(table, sincos_2d(embed_dim, (side, side)), atol=1e-5)
    has_fc_norm = "fc_norm.weight" in state and "norm.weight" not in state
    return ViTConfig(
        img_size=side * patch_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        class_token=class_token,
        global_pool="avg" if has_fc_norm or not class_token else "token",
        pos_embed="sincos" if is_sincos else "learn",
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
    )


def _size_hint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A sentence for error messages: the checkpoint's size, and the registered name that builds it if any."""
    try:
        config = infer_config(state_dict, num_heads=1)  # heads do not affect shapes
    except (CheckpointError, ValueError):
        return ""
    shape = f"width {config.embed_dim}, depth {config.depth}, patch {config.patch_size}, {config.img_size}px"
    name = suggest_model_name(config)
    if name is None:
        return f" The checkpoint's model has {shape}."
    return f" The checkpoint's model has {shape}: build it with create_model('{name}') or pass model='{name}'."


# ------------------------------------------------------------------------------------------------ timm
def filter_timm(
    state_dict: Mapping[str, torch.Tensor], model: VisionTransformer, source: str = "state dict"
) -> StateDict:
    """Fit timm-layout weights to `model`: resample `pos_embed`, drop a mismatched head or timm's `fc_norm`.

    A different width, depth, patch size or MLP size cannot be fitted and raises CheckpointError naming the
    key, both shapes and the registered model the checkpoint fits. Keys `model` lacks are passed through,
    for the caller's strictness check.
    """
    state = unwrap_state_dict(state_dict)
    expected = model.state_dict()
    if "fc_norm.weight" in state:
        if "norm.weight" in state:
            warnings.warn(f"{source}: dropping timm's fc_norm (the model applies its final norm before pooling)",
                          stacklevel=3)
            state = {k: v for k, v in state.items() if not k.startswith("fc_norm.")}
        else:
            warnings.warn(f"{source}: using timm's fc_norm as the final norm; ssl_vit applies it to every token "
                          "before pooling rather than after, so pooled features differ slightly", stacklevel=3)
            state = {(f"norm.{k[8:]}" if k.startswith("fc_norm.") else k): v for k, v in state.items()}
    depth = _block_count(state)
    if depth and depth != len(model.blocks):
        raise CheckpointError(f"{source} has {depth} blocks but the model has {len(model.blocks)}.{_size_hint(state)}")
    if ("cls_token" in state) != (model.cls_token is not None):
        has = "has" if "cls_token" in state else "has no"
        raise CheckpointError(f"{source} {has} a [class] token (cls_token) but the model was built with "
                              f"class_token={model.cls_token is not None}; build it with the other setting")
    for key in expected:  # in the model's order, so the first mismatch named is the most telling one
        fitted_later = key == "pos_embed" or key.startswith("head.")
        if key in state and not fitted_later and state[key].shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: key '{key}' has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(expected[key].shape)} in the model.{_size_hint(state)}"
            )
    if "pos_embed" in state and state["pos_embed"].shape != expected["pos_embed"].shape:
        state["pos_embed"] = _fit_pos_embed(state["pos_embed"], model, source)
    head = state.get("head.weight")
    if head is not None and (head.shape != getattr(expected.get("head.weight"), "shape", None)):
        warnings.warn(f"{source}: dropping its {head.shape[0]}-class head; the model has num_classes="
                      f"{model.config.num_classes} and keeps its own (zero-initialised) head", stacklevel=3)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return state


def _fit_pos_embed(pos_embed: torch.Tensor, model: VisionTransformer, source: str) -> torch.Tensor:
    """(1, prefix + n, D) -> (1, prefix + N, D) for the model's grid; the [class] position is kept as it is."""
    prefix = model.num_prefix_tokens
    grid_tokens = pos_embed.shape[1] - prefix
    side = math.isqrt(grid_tokens)
    if side * side != grid_tokens or pos_embed.shape[-1] != model.embed_dim:
        raise CheckpointError(f"{source}: pos_embed of shape {tuple(pos_embed.shape)} cannot be resampled to "
                              f"{tuple(model.pos_embed.shape)}")
    if model.config.pos_embed == "sincos":
        # A fixed function of the grid: compute it afresh rather than interpolate the old one.
        table = torch.cat([pos_embed[:, :prefix], sincos_2d(model.embed_dim, model.grid_size)[None]], dim=1)
        return table.to(pos_embed.dtype)  # (1, prefix + N, D)
    return resample_pos_embed(pos_embed, model.grid_size, prefix, old_grid=(side, side))


# ------------------------------------------------------------------------------------------------ loading
@dataclass
class LoadReport:
    """What loading a checkpoint into a model did, key by key (in the model's names where the model has them)."""

    source: str
    loaded: list[str] = field(default_factory=list)  # model keys filled from the checkpoint
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks: kept as initialised
    dropped: list[str] = field(default_factory=list)  # checkpoint keys not used (decoder, pooler, other head…)


def read_weights(path_or_state_dict: str | Path | Mapping) -> tuple[StateDict, ViTConfig | None, str, list[str]]:
    """(backbone tensors in timm or Hugging Face names, the recorded config or None, a name for messages, the
    keys dropped on the way: MAE's decoder) of any source `load_backbone` accepts."""
    if isinstance(path_or_state_dict, (str, Path)):
        source = str(path_or_state_dict)
        raw, config = _read_file(Path(path_or_state_dict))
    else:
        source, raw, config = "state dict", path_or_state_dict, None
    state = _extract(raw, source)
    dropped: list[str] = []
    if is_mae(state):
        state, dropped = split_mae(state)
    return state, config, source, dropped


def fit_weights(
    state: Mapping[str, torch.Tensor], model: VisionTransformer, source: str = "state dict"
) -> tuple[StateDict, list[str]]:
    """(weights that load into `model`, the checkpoint keys left out) for timm- or Hugging-Face-layout `state`."""
    if detect_format(state, source) == "hf":
        dropped = [k for k in state if k.removeprefix("vit.").startswith(HF_DROPPED)]
        state = hf_to_timm(state, source)
    else:
        dropped = []
    fitted = filter_timm(state, model, source)
    renamed_fc_norm = "fc_norm.weight" in state and "norm.weight" not in state  # timm's fc_norm became our norm
    dropped += [k for k in state if k not in fitted and not (renamed_fc_norm and k.startswith("fc_norm."))]
    return fitted, dropped


def load_backbone(
    path_or_state_dict: str | Path | Mapping,
    model: VisionTransformer | str | None = None,
    *,
    strict: bool = True,
) -> VisionTransformer:
    """Load weights into `model` (built from the saved config when None; a registered name builds that) and return it.

    Sources: our exports, timm / Hugging Face state dicts and folders, trainer checkpoints and MAE checkpoints
    (decoder dropped). `strict` refuses keys the model lacks and missing keys, except the head: a model with a
    classifier keeps its zero-initialised head when the checkpoint has none or one of another size
    (fine-tuning replaces it). A model built on the `meta` device gets the checkpoint's tensors assigned.
    """
    return load_backbone_with_report(path_or_state_dict, model, strict=strict)[0]


def load_backbone_with_report(
    path_or_state_dict: str | Path | Mapping,
    model: VisionTransformer | str | None = None,
    *,
    strict: bool = True,
) -> tuple[VisionTransformer, LoadReport]:
    """`load_backbone`, also returning which keys loaded, which the model kept, and which were dropped."""
    state, config, source, dropped = read_weights(path_or_state_dict)
    if model is None:
        model = VisionTransformer(config or infer_config(state))
    elif isinstance(model, str):
        model = create_model(model)
    fitted, left_out = fit_weights(state, model, source)
    on_meta = any(p.is_meta for p in model.parameters())
    missing, unexpected = model.load_state_dict(fitted, strict=False, assign=on_meta)
    problem_missing = [k for k in missing if not k.startswith("head.")]
    if problem_missing or unexpected:
        problems = "; ".join(
            f"{label}: {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''} ({len(keys)})"
            for label, keys in (("missing from the checkpoint", problem_missing), ("not in the model", unexpected))
            if keys
        )
        if strict:
            raise CheckpointError(f"{source} does not fit the model: {problems}.{_size_hint(state)} "
                                  "Pass strict=False to load what fits.")
        warnings.warn(f"{source}: loaded what fits; {problems}", stacklevel=2)
    loaded = [k for k in fitted if k not in set(unexpected)]
    return model, LoadReport(source, loaded, list(missing), dropped + left_out + list(unexpected))


def read_folder(path: str | Path) -> tuple[Path, ViTConfig | None]:
    """(the weights file, its ViTConfig) of a Hugging Face ViT or timm folder; every failure is one line."""
    path = Path(path)
    kind = folder_kind(path)
    if kind is None:
        raise CheckpointError(
            f"{path}: not a Hugging Face ViT or timm folder (its {CONFIG_FILE} is missing, or names neither "
            "model_type 'vit' nor a timm architecture); pass a weights file instead"
        )
    weights = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no weights file ({', '.join(WEIGHT_NAMES)}) next to its {CONFIG_FILE}")
    recorded = saved_config(weights) if weights.suffix == ".safetensors" else None  # ours: exact, pooling too
    if recorded is not None:
        return weights, recorded
    info = read_json(path / CONFIG_FILE)
    return weights, config_from_hf(info, str(path / CONFIG_FILE)) if kind == "hf" else config_from_timm(info)
