"""The model card every export writes: README.md with the Hub's YAML front matter, the recipe, the data, the
training length, the objective, the evaluation results that exist for the checkpoint, how to load the weights in
each library, and the ViT paper's citation. Facts come in as plain data (`CardFacts`); nothing is looked up here.

The front matter is the Hub's model card metadata: `model-index` with one result per test accuracy, its protocol
named, `datasets` and `base_model` (Hub ids only), `license`. `card_data` states it once, in the keywords of
`huggingface_hub.ModelCardData` and `EvalResult`; `front_matter` has huggingface_hub's `ModelCardData.to_yaml`
write it where huggingface_hub is installed (the `hub` extra), else `_plain_front_matter` — so an export needs no
huggingface_hub — which tests/test_card_metadata.py holds equal to huggingface_hub's output, character for
character, on the same data. Local paths never reach a card: `local_names` cuts each absolute path to its last
component (the folder or file name).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import CheckpointError
from .formats import Preprocessing
from .formats.timm import timm_architecture, timm_has_size, timm_model_args
from .hub_weights import hub_id
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


def local_names(text: str) -> str:
    """`text` with each absolute local path cut to its last component: `/data/in1k:train` → `in1k:train`."""
    return _LOCAL_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)


def base_model(init_from: str | None) -> str | None:
    """The Hub repository `model.init_from` named (`hf-hub:ORG/NAME`, or `ORG/NAME` that is no local path here:
    the rule `hub_weights.hub_id` applies when the weights are read), else None."""
    try:
        found = hub_id(init_from, "model.init_from") if init_from else None
    except CheckpointError:  # malformed: the pretraining refused it, so no weights came from it
        return None
    return found.repo_id if found else None


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


def card_data(facts: CardFacts) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the front matter says, once: `huggingface_hub.ModelCardData`'s keywords in the order the card lists
    them, and one `EvalResult`'s keywords per test accuracy (the model-index). The protocol is named on the metric:
    the Hub groups a model-index by task type and dataset (`eval_results_to_model_index`), not by task name, so a
    protocol named there would be merged away."""
    fields: dict[str, Any] = {
        "library_name": LIBRARY[facts.fmt],
        "license": facts.license,
        "pipeline_tag": "image-feature-extraction",
        "tags": ["image-feature-extraction", "vision-transformer", "self-supervised-learning",
                 "masked-patch-prediction", "ssl_vit"] + (["timm"] if facts.fmt == "timm" else []),
    }
    datasets = [d for d in (hub_dataset(facts.data_spec),) if d]
    if datasets:
        fields["datasets"] = datasets
    if base_model(facts.init_from):
        fields["base_model"] = base_model(facts.init_from)
    results = [{"task_type": "image-classification", "task_name": "Image classification",
                "dataset_type": s.dataset, "dataset_name": s.dataset, "dataset_split": s.split,
                "metric_type": "accuracy", "metric_value": s.value, "metric_name": f"{s.protocol} ({s.metric})"}
               for s in facts.eval_scores]
    if results:
        fields["model_name"] = facts.repo_id.split("/")[-1] if facts.repo_id else facts.title
    return fields, results


def front_matter(facts: CardFacts) -> str:
    """The YAML between the card's `---` lines, written by huggingface_hub's `ModelCardData` where it is
    installed, else by `_plain_front_matter` (held equal to it by the tests)."""
    fields, results = card_data(facts)
    try:
        from huggingface_hub import EvalResult, ModelCardData
    except ImportError:
        return _plain_front_matter(fields, results)
    data = ModelCardData(**fields, eval_results=[EvalResult(**r) for r in results] or None)
    return data.to_yaml(original_order=list(fields))


def _plain_front_matter(fields: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """`ModelCardData(**fields, eval_results=…).to_yaml(original_order=list(fields))` without huggingface_hub:
    the fields in their order, then `model-index` as `eval_results_to_model_index` builds it (one entry per
    task type, dataset and split; keys that are None left out), dumped as huggingface_hub's `yaml_dump` dumps."""
    meta = {k: v for k, v in fields.items() if k != "model_name"}
    if results:
        grouped: dict[tuple, list[dict[str, Any]]] = {}
        for r in results:
            grouped.setdefault((r["task_type"], r["dataset_type"], r["dataset_split"]), []).append(r)
        meta["model-index"] = [{"name": fields["model_name"], "results": [
            {"task": {"type": group[0]["task_type"], "name": group[0]["task_name"]},
             "dataset": _without_none({"name": group[0]["dataset_name"], "type": group[0]["dataset_type"],
                                       "split": group[0]["dataset_split"]}),
             "metrics": [{"type": r["metric_type"], "value": r["metric_value"], "name": r["metric_name"]}
                         for r in group]}
            for group in grouped.values()]}]
    return yaml.dump(meta, sort_keys=False, allow_unicode=True).strip()


def _without_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def render_model_card(facts: CardFacts) -> str:
    sections = [
        f"---\n{front_matter(facts)}\n---",
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
