"""The model card every export writes: README.md with the Hub's YAML front matter, the recipe, the data, the
training length, the objective, the evaluation results that exist for the checkpoint, how to load the weights in
each library, and the ViT paper's citation. Facts come in as plain data (`CardFacts`); nothing is looked up here.

The front matter is the Hub's model card metadata (what `huggingface_hub.ModelCardData` reads and writes:
`model-index` with one result per evaluation protocol and test set, `datasets`, `base_model`, `license`), written
here as plain YAML so an export needs no `huggingface_hub` (the `hub` extra is for `--push-to-hub` only); the tests
load every card with `huggingface_hub.ModelCard` and check its `model-index` round-trips unchanged. Local paths
never reach a card: `local_names` cuts each absolute path to its last component (the folder or file name).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .formats import Preprocessing
from .formats.timm import timm_architecture, timm_has_size, timm_model_args
from .vit import ViTConfig

VIT_BIBTEX = """@inproceedings{dosovitskiy2021an,
  title     = {An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author    = {Alexey Dosovitskiy and Lucas Beyer and Alexander Kolesnikov and Dirk Weissenborn and Xiaohua Zhai and
               Thomas Unterthiner and Mostafa Dehghani and Matthias Minderer and Georg Heigold and Sylvain Gelly and
               Jakob Uszkoreit and Neil Houlsby},
  booktitle = {International Conference on Learning Representations},
  year      = {2021},
  url       = {https://openreview.net/forum?id=YicbFdNTTy}
}"""
LIBRARY = {"hf": "transformers", "timm": "timm", "safetensors": "ssl_vit"}
_TARGETS = {
    "mean_color": "the 3-bit mean colour of each corrupted patch (512 classes), the paper's main setting",
    "downsampled_color": "a 3-bit 4×4 downsized version of each corrupted patch (16 × 512 classes)",
    "pixels": "the normalised pixels of each corrupted patch (L2 regression)",
}


# An absolute (or ~) local path: starts after whitespace, a quote, `=`, `,` or `(`, never inside a URL
# (`https://host/…`, `hf://…`, after `:` or `/`); runs to the next separator (`:` starts a split).
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])~?(?:/[^\s,;:'\"`()\[\]<>|]+)+/?")
_HUB_DATASET = re.compile(r"^hf://datasets/([\w.-]+/[\w.-]+)")
HUB_PREFIX = "hf-hub:"


def local_names(text: str) -> str:
    """`text` with each absolute local path cut to its last component: `/data/in1k:train` → `in1k:train`."""
    return _LOCAL_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)


def hub_id(source: str | None) -> str | None:
    """The Hub repo id a weights source names (`hf-hub:org/name`, or `org/name` that is no local path), else None."""
    if not source:
        return None
    if source.startswith(HUB_PREFIX):
        return source[len(HUB_PREFIX):].split("@")[0] or None
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists():
        return source
    return None


def hub_dataset(spec: str) -> str | None:
    """The Hub dataset id of a data spec read from the Hub (`hf://datasets/org/name/…`), else None."""
    found = _HUB_DATASET.match(spec)
    return found.group(1) if found else None


@dataclass(frozen=True)
class EvalScore:
    """One test accuracy of this checkpoint for the card's `model-index`: the protocol that measured it (named
    in words), the metric's ssl_vit name, its value in percent, and the test data (paths already cut)."""

    protocol: str
    metric: str
    value: float
    dataset: str
    split: str | None = None


@dataclass
class CardFacts:
    """What the card states. `data_*` may be None when the shards are not at hand at export time."""

    title: str
    fmt: str  # hf | timm | safetensors
    config: ViTConfig
    model_name: str | None
    preprocessing: Preprocessing
    objective: str
    objective_kwargs: dict[str, Any]
    recipe_yaml: str
    step: int
    global_batch: int
    checkpoint: str
    data_spec: str
    data_split: str | None = None
    data_samples: int | None = None
    class_names: list[str] | None = None
    eval_tables: list[tuple[str, str]] = field(default_factory=list)  # (heading, Markdown table)
    license: str = "apache-2.0"
    eval_scores: list[EvalScore] = field(default_factory=list)  # the model-index entries
    init_from: str | None = None  # model.init_from of the pretraining recipe
    weights_path: str = "."  # how the usage snippets name the exported file or folder
    repo_id: str | None = None


def card_metadata(facts: CardFacts) -> dict:
    """The card's front matter, in the Hub's schema (`huggingface_hub.ModelCardData.to_dict()` gives it back)."""
    front: dict[str, Any] = {
        "library_name": LIBRARY[facts.fmt],
        "license": facts.license,
        "pipeline_tag": "image-feature-extraction",
        "tags": ["image-feature-extraction", "vision-transformer", "self-supervised-learning",
                 "masked-patch-prediction", "ssl_vit"] + (["timm"] if facts.fmt == "timm" else []),
    }
    datasets = [d for d in (hub_dataset(facts.data_spec),) if d]
    if datasets:
        front["datasets"] = datasets
    if hub_id(facts.init_from):
        front["base_model"] = hub_id(facts.init_from)
    if facts.eval_scores:
        front["model-index"] = [{"name": facts.repo_id.split("/")[-1] if facts.repo_id else facts.title,
                                 "results": _model_index_results(facts.eval_scores)}]
    return front


def _model_index_results(scores: list[EvalScore]) -> list[dict]:
    """One result per test data, each metric named by its protocol: the Hub groups a model-index by task type and
    dataset (`huggingface_hub.eval_results_to_model_index`), not by task name, so a protocol named there would be
    merged away; named on the metric it round-trips unchanged."""
    grouped: dict[tuple, list[EvalScore]] = {}
    for score in scores:
        grouped.setdefault((score.dataset, score.split), []).append(score)
    return [{"task": {"type": "image-classification", "name": "Image classification"},
             "dataset": {"name": dataset, "type": dataset, **({"split": split} if split else {})},
             "metrics": [{"type": "accuracy", "value": s.value, "name": f"{s.protocol} ({s.metric})"} for s in group]}
            for (dataset, split), group in grouped.items()]


def render_model_card(facts: CardFacts) -> str:
    sections = [
        "---\n" + yaml.safe_dump(card_metadata(facts), sort_keys=False, allow_unicode=True) + "---",
        f"# {facts.title}",
        _summary(facts),
        "## Model\n\n" + _model_table(facts),
        "## Pretraining\n\n" + _pretraining(facts),
        "## Evaluation\n\n" + _evaluation(facts),
        "## How to use\n\n" + _usage(facts),
        "## Citation\n\nThe architecture and the masked patch prediction objective (appendix B.1.2):\n\n"
        f"```bibtex\n{VIT_BIBTEX}\n```",
    ]
    return local_names("\n\n".join(sections) + "\n")  # the recipe, data and checkpoint name no local folder


def images_seen(facts: CardFacts) -> int:
    return facts.step * facts.global_batch


def _summary(facts: CardFacts) -> str:
    c = facts.config
    return (f"A Vision Transformer (width {c.embed_dim}, depth {c.depth}, patch {c.patch_size}, {c.img_size}px) "
            f"pretrained without labels by masked patch prediction, the self-supervised objective of the ViT paper "
            f"(Dosovitskiy et al., ICLR 2021, appendix B.1.2), with ssl_vit — "
            f"{facts.step:,} steps, {images_seen(facts):,} images seen. The weights are the backbone alone "
            f"(no prediction head, no [MASK] embedding).")


def _pooling(c: ViTConfig) -> str:
    if c.class_token and c.global_pool == "token":
        return "the [class] token after the final LayerNorm"
    return "the mean of the patch tokens after the final LayerNorm (the [class] token, if any, left out)"


def _model_table(facts: CardFacts) -> str:
    c, p = facts.config, facts.preprocessing
    rows = [
        ("architecture", f"{facts.model_name or 'ViT'}: width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads, "
                         f"MLP {int(c.embed_dim * c.mlp_ratio)}, patch {c.patch_size}"),
        ("input", f"{c.in_chans}×{c.img_size}×{c.img_size}; resize the shorter side to {p.resize_shorter(c.img_size)} "
                  f"({p.interpolation}), centre-crop {c.img_size} (crop_pct {p.crop_pct}), scale to [0, 1], "
                  f"normalise with mean {list(p.mean)} and std {list(p.std)}"),
        ("features", f"{c.embed_dim}-d: {_pooling(c)}"),
        ("[class] token", "yes" if c.class_token else "no"),
        ("position embeddings", "learned" if c.pos_embed == "learn" else "fixed 2D sin-cos"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _pretraining(facts: CardFacts) -> str:
    kwargs = dict(facts.objective_kwargs)
    target = kwargs.get("target")
    objective = f"`{facts.objective}`"
    if facts.objective == "mpp":
        objective = (f"masked patch prediction (`mpp`): {kwargs.get('corruption_rate', 0.5):.0%} of the patch "
                     f"embeddings corrupted ({kwargs.get('mask_prob', 0.8):.0%} [MASK], "
                     f"{kwargs.get('random_prob', 0.1):.0%} another patch, the rest kept); target: "
                     f"{_TARGETS.get(target, f'`{target}`') if target else 'the default'}")
    if facts.data_samples is not None:
        data = f"`{facts.data_spec}`, split `{facts.data_split}`: {facts.data_samples:,} images"
        epochs = images_seen(facts) / facts.data_samples
        length = f"{facts.step:,} steps × global batch {facts.global_batch:,} = {images_seen(facts):,} images seen " \
                 f"({epochs:.2f} epochs)"
    else:
        data = f"`{facts.data_spec}`, split `{facts.data_split}` (not readable at export time: sample count unknown)"
        length = f"{facts.step:,} steps × global batch {facts.global_batch:,} = {images_seen(facts):,} images seen"
    if facts.class_names:
        shown = ", ".join(facts.class_names[:20]) + (", …" if len(facts.class_names) > 20 else "")
        data += f"; {len(facts.class_names)} classes ({shown}), labels unused in pretraining"
    elif facts.data_samples is not None:
        data += "; unlabelled"
    lines = [f"- **Objective**: {objective}", f"- **Data**: {data}", f"- **Length**: {length}",
             f"- **Checkpoint**: `{facts.checkpoint}`",
             *([f"- **Initialised from**: `{facts.init_from}`"] if facts.init_from else []),
             "",
             "<details><summary>The recipe (resolved, as saved with the run)</summary>",
             "",
             f"```yaml\n{facts.recipe_yaml.rstrip()}\n```",
             "",
             "</details>"]
    return "\n".join(lines)


def _evaluation(facts: CardFacts) -> str:
    if not facts.eval_tables:
        return ("No `ssl-vit eval` results existed for this checkpoint at export time. Measure it with "
                "`ssl-vit eval all --checkpoint … --train … --test …` and export again to include them.")
    parts = ["Accuracies in percent (`ssl-vit eval`; few-shot figures are mean ± std over draws)."]
    parts += [f"### {heading}\n\n{table.rstrip()}" for heading, table in facts.eval_tables]
    return "\n\n".join(parts)


def _usage(facts: CardFacts) -> str:
    c, where = facts.config, local_names(facts.weights_path)  # after `local-dir:` no pattern would see it
    avg = not (c.class_token and c.global_pool == "token")
    if facts.fmt == "hf":
        source = f'"{facts.repo_id or where}"'
        if avg:
            pool = ("features = out.last_hidden_state[:, 1:].mean(dim=1)  # GAP: the mean of the patch tokens\n```\n\n"
                    "ViTModel's pooler reads the [class] token only, so it cannot give this model's features: "
                    "the export fills its weights with NaN, so `out.pooler_output` and "
                    "`pipeline(\"image-feature-extraction\", pool=True)` give NaN rather than a plausible wrong "
                    "vector. Average `last_hidden_state[:, 1:]` as above.")
        else:
            pool = ("features = out.pooler_output  # the [class] token: equal to out.last_hidden_state[:, 0]\n```\n\n"
                    "The pooler is the identity (dense = identity matrix, `pooler_act: linear`), so `pooler_output` "
                    "and `pipeline(\"image-feature-extraction\", model=…, pool=True)` give ssl_vit's pooled "
                    "features; transformers' usual pooler (an untrained dense layer and tanh) is not there.")
        return (f"transformers (the token outputs equal ssl_vit's to 1e-5):\n\n```python\n"
                f"from transformers import AutoImageProcessor, ViTModel\n\n"
                f"processor = AutoImageProcessor.from_pretrained({source})\n"
                f"model = ViTModel.from_pretrained({source}).eval()\n"
                f"out = model(**processor(images, return_tensors=\"pt\"))\n"
                f"{pool}")
    if facts.fmt == "timm":
        args = ", ".join(f"{k}={v!r}" for k, v in timm_model_args(c).items())
        arch = timm_architecture(c)
        named = f"`{arch}` is timm's architecture of this size" if timm_has_size(c) else (
            f"timm has no architecture of this size (width {c.embed_dim}, depth {c.depth}, patch {c.patch_size}): "
            f"`{arch}` is only the base whose sizes `model_args` replace")
        hub = f'\nmodel = timm.create_model("hf-hub:{facts.repo_id}", pretrained=True)  # from the Hub' \
            if facts.repo_id else ""
        return (f"timm ≥ 1.0.16 reads this folder's config.json (architecture, `model_args`, `num_classes: 0`, "
                f"`pretrained_cfg`), so no keyword arguments are needed ({named}):\n\n```python\nimport timm\n\n"
                f'model = timm.create_model("local-dir:{where}", pretrained=True).eval(){hub}\n'
                f"config = timm.data.resolve_data_config({{}}, model=model)   # our mean, std, size, crop_pct\n"
                f"transform = timm.data.create_transform(**config)\n"
                f"features = model(transform(image).unsqueeze(0))           # ({c.embed_dim},) per image\n```\n\n"
                f"`timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=…))` does not read "
                f"config.json (timm then starts from its registry's config for ARCH: 1000 classes, token pooling, "
                f"perhaps an .npz loader); it needs everything spelled out:\n\n```python\n"
                f'timm.create_model("{arch}", pretrained=True, num_classes=0,\n'
                f'                  pretrained_cfg_overlay=dict(file="{where}/model.safetensors", custom_load=False),\n'
                f'                  {args})\n```')
    return ("ssl_vit:\n\n```python\nfrom ssl_vit.models import load_backbone\n\n"
            f'model = load_backbone("{where}").eval()   # the architecture comes from the .json beside it\n'
            "features = model.forward_head(model.forward_features(images), pre_logits=True)\n```\n\n"
            "The file's keys are timm's; `ssl-vit export … --format timm` or `--format hf` writes folders that timm "
            "and transformers load without ssl_vit.")
