"""The model card's front matter is huggingface_hub's: `ModelCardData` (+ `EvalResult`) writes it where
huggingface_hub is installed, and the writer an export uses without it gives the same card, character for
character, on the same facts; `base_model` names a Hub id only, by the rule the weights were read with."""
from __future__ import annotations

import dataclasses
import sys

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData

from ssl_vit.models import create_model
from ssl_vit.models.formats import Preprocessing
from ssl_vit.models.model_card import CardFacts, EvalScore, render_model_card

NANO = create_model("vit_nano_patch4").config


def facts(**changes) -> CardFacts:
    base = CardFacts(title="vit_nano_patch4 pretrained by masked patch prediction (mean_color)", fmt="timm",
                     config=NANO, model_name="vit_nano_patch4", preprocessing=Preprocessing(), objective="mpp",
                     objective_kwargs={"target": "mean_color"}, recipe_yaml="model:\n  name: vit_nano_patch4\n",
                     step=4, global_batch=16, checkpoint="run/checkpoints/step_0000004", data_spec="shards")
    return dataclasses.replace(base, **changes)


SCORES = [EvalScore("k-NN classifier (k=1) on frozen features", "knn/k1_top1", 41.666666666666664, "shards",
                    "validation"),
          EvalScore("linear probe on frozen features", "linear/top1", 50.0, "shards", "validation"),
          EvalScore("few-shot (5 per class) linear on frozen features", "fewshot/5shot_top1", 33.3, "in1k: val #2",
                    None),  # a name YAML must quote, and no split
          EvalScore("k-NN classifier (k=1) on frozen features", "knn/k1_top1", 12.5, "café-test", "test"),
          EvalScore("linear probe on frozen features", "linear/top1", 47.5, "shards", "test")]  # another split
VARIANTS = {
    "no evaluation, local data and weights": facts(init_from="start.safetensors"),
    "evaluations on four test sets, Hub data and weights": facts(
        fmt="hf", eval_scores=SCORES, license="mit", repo_id="me/nano-mpp",
        data_spec="hf://datasets/timm/imagenet-1k-wds/imagenet1k-train-{0000..1023}.tar",
        init_from="hf-hub:timm/vit_base_patch16_224.augreg_in21k@main"),
    "single file, one evaluation": facts(fmt="safetensors", eval_scores=SCORES[:1]),
}


def without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails, as uninstalled


@pytest.mark.parametrize("name", VARIANTS)
def test_the_card_without_huggingface_hub_is_the_card_with_it(name, monkeypatch):
    """The same facts give the same card whether huggingface_hub's ModelCardData writes the front matter or the
    fallback does; and huggingface_hub reads that card back to the same text (its own dump of the metadata)."""
    card = render_model_card(VARIANTS[name])
    with monkeypatch.context() as patch:
        without_huggingface_hub(patch)
        assert render_model_card(VARIANTS[name]) == card
    assert str(ModelCard(card)) == card
    front = yaml.safe_load(card.split("---\n")[1])
    assert front == ModelCard(card).data.to_dict()


def test_huggingface_hub_writes_the_front_matter_where_installed(monkeypatch):
    """ModelCardData's own `to_yaml` writes it: its output, changed here, is what the card holds."""
    to_yaml = ModelCardData.to_yaml
    monkeypatch.setattr(ModelCardData, "to_yaml", lambda self, **kw: to_yaml(self, **kw) + "\nwritten_by: hub")
    front = yaml.safe_load(render_model_card(VARIANTS["evaluations on four test sets, Hub data and weights"])
                           .split("---\n")[1])
    assert front["written_by"] == "hub"
    assert front["base_model"] == "timm/vit_base_patch16_224.augreg_in21k"
    assert front["datasets"] == ["timm/imagenet-1k-wds"] and front["license"] == "mit"
    index = front["model-index"]
    assert index[0]["name"] == "nano-mpp" and len(index[0]["results"]) == 4  # one entry per test set and split
    assert [m["name"] for m in index[0]["results"][0]["metrics"]] == [
        "k-NN classifier (k=1) on frozen features (knn/k1_top1)", "linear probe on frozen features (linear/top1)"]


@pytest.mark.parametrize("init_from, expected", [
    ("hf-hub:timm/vit_base_patch16_224.augreg_in21k", "timm/vit_base_patch16_224.augreg_in21k"),
    ("hf-hub:google/vit-base-patch16-224-in21k@a1b2c3", "google/vit-base-patch16-224-in21k"),
    ("timm/vit_small_patch16_224.augreg_in1k", "timm/vit_small_patch16_224.augreg_in1k"),
    ("runs/mae.pth", None),  # a file's name: a missing local file, never a Hub id
    ("w.safetensors", None),
    ("hf-hub:bad id", None),  # malformed: no weights came from it
    ("exists/here", None),  # a local folder of that name wins
    (None, None),
])
def test_base_model_is_a_hub_id_by_the_rule_the_weights_were_read_with(init_from, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists" / "here").mkdir(parents=True)
    front = yaml.safe_load(render_model_card(facts(init_from=init_from)).split("---\n")[1])
    assert front.get("base_model") == expected
