"""`ssl-vit export --format hf|timm`: a tiny real run → folders transformers and timm load, a model card with
the run's own figures (data, steps, images seen, objective, the `ssl-vit eval` table), and the Hub upload up
to huggingface_hub's call (the Hub is unreachable here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from transformers import ViTModel

from eval_fixtures import write_dataset
from ssl_vit.cli import main
from ssl_vit.eval.results import format_value
from ssl_vit.models.weights import load_backbone
from ssl_vit.train.restore import restore_objective

STEP_DIR = "checkpoints/step_0000004"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, pretrain, run_cli) -> Path:
    """4 steps × 16 images of a [class]-token nano ViT on 24 labelled images (3 classes), evaluated by kNN with
    its random-init baseline into RUN/eval (where export finds it)."""
    root = tmp_path_factory.mktemp("card")
    data = write_dataset(root / "shards")
    run = root / "run"
    assert pretrain(data, run, **{"train.total_steps": 4, "optim.warmup_steps": 1, "train.checkpoint_every": 4}) == 0
    assert run_cli("eval", "knn", "--checkpoint", str(run), "--baseline", "random", "--train", str(data), "--test",
                   f"{data}:validation", "--out", str(run / "eval"), "knn.k=[1,3]", "image_size=32", "batch_size=8",
                   "num_workers=0", "crop_pct=1.0") == 0
    return run


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_hf_export_loads_in_transformers_and_its_card_has_the_runs_figures(run_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), str(out), "--format", "hf"]) == 0
    assert "evaluation tables in the card: 1" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "preprocessor_config.json"]
    objective, _, _ = restore_objective(run_dir / STEP_DIR)
    hf = ViTModel.from_pretrained(out).eval()  # a plain load: its pooler is the export's, not a fresh random one
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf_out = hf(pixel_values=x)
        ours = objective.backbone.eval().forward_features(x)
        assert (hf_out.last_hidden_state - ours).abs().max().item() < 1e-5
        assert torch.allclose(hf_out.pooler_output, objective.backbone.pool(ours), atol=1e-5)
    assert json.loads((out / "config.json").read_text())["ssl_vit"]["step"] == 4

    card = (out / "README.md").read_text()
    front = front_matter(card)
    assert {k: v for k, v in front.items() if k != "model-index"} == {
        "library_name": "transformers", "license": "apache-2.0", "pipeline_tag": "image-feature-extraction",
        "tags": ["image-feature-extraction", "vision-transformer", "self-supervised-learning",
                 "masked-patch-prediction", "ssl_vit"]}  # local data and weights: no `datasets`, no `base_model`
    # The run: 24 training images of 3 classes, 4 steps of 16 = 64 images seen = 2.67 epochs.
    assert "split `train`: 24 images; 3 classes (c0, c1, c2), labels unused in pretraining" in card
    assert "4 steps × global batch 16 = 64 images seen (2.67 epochs)" in card
    assert "target: the 3-bit mean colour of each corrupted patch (512 classes)" in card
    assert "50% of the patch embeddings corrupted (80% [MASK], 10% another patch, the rest kept)" in card
    assert "total_steps: 4" in card and f"`{run_dir.name}/{STEP_DIR}`" in card  # the recipe and the checkpoint
    assert "features = out.pooler_output" in card
    assert "@inproceedings{dosovitskiy2021an," in card and "An Image is Worth 16x16 Words" in card
    # The evaluation table holds the eval run's own numbers, this checkpoint next to its random init.
    results = {json.loads(p.read_text())["label"]: json.loads(p.read_text())["metrics"]
               for p in (run_dir / "eval").glob("*/results.json")}
    assert set(results) == {"run@4", "random-init vit_nano_patch4 (seed 0)"}
    row = "| knn/k3_top1 | " + " | ".join(format_value("knn/k3_top1", results[label]["knn/k3_top1"])
                                          for label in ("run@4", "random-init vit_nano_patch4 (seed 0)")) + " |"
    assert "| metric | run@4 | random-init vit_nano_patch4 (seed 0) |" in card and row in card


def test_timm_export_and_its_card(run_dir: Path, tmp_path: Path):
    out = tmp_path / "timm"
    assert main(["export", str(run_dir / STEP_DIR), str(out), "--format", "timm", "--license", "mit"]) == 0
    info = json.loads((out / "config.json").read_text())
    assert info["model_args"]["global_pool"] == "token" and info["num_classes"] == 0
    assert info["ssl_vit"]["step"] == 4 and info["ssl_vit"]["objective"] == "mpp"
    from ssl_vit.eval.backbones import resolve_backbone

    source = resolve_backbone(str(out))  # eval reads the folder with the crop and seed the export recorded
    assert (source.crop_pct, source.train_seed, source.config.img_size) == (0.875, 0, 32)
    card = (out / "README.md").read_text()
    assert front_matter(card)["library_name"] == "timm" and front_matter(card)["license"] == "mit"
    assert 'timm.create_model("local-dir:timm", pretrained=True)' in card  # the folder's name, not where it is
    assert 'pretrained_cfg_overlay=dict(file="timm/model.safetensors", custom_load=False)' in card
    assert "timm has no architecture of this size (width 64, depth 2, patch 4): `vit_base_patch16_224` is only" in card
    assert "global_pool='token', fc_norm=False" in card
    objective, _, _ = restore_objective(run_dir / STEP_DIR)
    loaded = load_backbone(out).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), objective.backbone.eval().forward_features(x))


def test_single_file_export_writes_its_card_beside_it(run_dir: Path, tmp_path: Path):
    out = tmp_path / "vit.safetensors"
    assert main(["export", str(run_dir), str(out), "--eval", str(run_dir / "eval")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.json", "vit.md", "vit.safetensors"]
    card = (tmp_path / "vit.md").read_text()
    assert front_matter(card)["library_name"] == "ssl_vit" and "knn/k3_top1" in card


def test_eval_dir_without_this_checkpoint_is_an_error(run_dir: Path, tmp_path: Path, capsys):
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    (other / "x" / "results.json").write_text(json.dumps({"label": "x", "checkpoint": "random:vit_nano_patch4:0",
                                                          "metrics": {"knn/k1_top1": 50.0}}))
    assert main(["export", str(run_dir), str(tmp_path / "o"), "--format", "hf", "--eval", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--eval {other}: no results.json there evaluated" in err


def test_push_to_hub_calls_huggingface_hub(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: calls.append(("create_repo", kw)))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw))
        assert sorted(p.name for p in Path(kw["folder_path"]).iterdir()) == [
            "README.md", "config.json", "model.safetensors"]  # the card is uploaded too
        return "https://huggingface.co/me/nano-mpp/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "timm"
    assert main(["export", str(run_dir), str(out), "--format", "timm", "--push-to-hub", "me/nano-mpp", "--private"]) == 0
    assert calls == [
        ("create_repo", {"repo_id": "me/nano-mpp", "repo_type": "model", "private": True, "exist_ok": True}),
        ("upload_folder", {"folder_path": str(out), "repo_id": "me/nano-mpp", "repo_type": "model",
                           "commit_message": "vit_nano_patch4 at step 4, exported by ssl_vit"}),
    ]
    assert "pushed" in capsys.readouterr().out
    assert 'timm.create_model("hf-hub:me/nano-mpp", pretrained=True)' in (out / "README.md").read_text()


def test_push_failure_is_one_line_and_keeps_the_export(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    def refuse(self, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), str(out), "--format", "hf", "--push-to-hub", "me/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--push-to-hub me/x: ConnectionError: Failed to resolve" in err
    assert f"the export is complete in {out}" in err and (out / "model.safetensors").is_file()
    assert main(["export", str(run_dir), str(tmp_path / "a.safetensors"), "--push-to-hub", "me/x"]) == 2
    assert "--push-to-hub uploads a folder: add --format hf or --format timm" in capsys.readouterr().err


def test_card_is_the_hubs_metadata_with_each_protocol_and_no_local_path(run_dir: Path, tmp_path: Path):
    """huggingface_hub parses the card: model-index has this checkpoint's kNN accuracies, its protocol named, on the
    test split (the random-init baseline is no entry); its round trip through ModelCardData changes nothing; and no
    file of the export names the folders the run, the data or the export live in."""
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), str(out), "--format", "hf", "--license", "mit"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "transformers"
    metrics = json.loads(next(p for p in (run_dir / "eval").glob("*/results.json")
                              if json.loads(p.read_text())["label"] == "run@4").read_text())["metrics"]
    entries = {(r.dataset_name, r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert entries == {("shards", "validation", f"k-NN classifier (k={k}) on frozen features (knn/k{k}_{top})"):
                       metrics[f"knn/k{k}_{top}"] for k in (1, 3) for top in ("top1", "top5")
                       if f"knn/k{k}_{top}" in metrics}
    assert all(r.task_type == "image-classification" and r.metric_type == "accuracy" for r in card.data.eval_results)
    assert card.data.to_dict()["model-index"] == front_matter((out / "README.md").read_text())["model-index"]
    for path in out.iterdir():
        if path.suffix in (".md", ".json"):
            assert str(tmp_path) not in path.read_text() and str(run_dir.parent) not in path.read_text(), path.name
    assert json.loads((out / "config.json").read_text())["ssl_vit"]["source_checkpoint"] == f"{run_dir.name}/{STEP_DIR}"


def test_card_names_hub_weights_and_data_and_hides_local_ones() -> None:
    """`base_model` and `datasets` are Hub ids only; a local path anywhere in the card is cut to its name."""
    from ssl_vit.models import create_model
    from ssl_vit.models.formats import Preprocessing
    from ssl_vit.models.model_card import CardFacts, EvalScore, render_model_card

    with torch.device("meta"):
        config = create_model("vit_base_patch16").config
    facts = CardFacts(title="t", fmt="timm", config=config, model_name="vit_base_patch16", preprocessing=Preprocessing(),
                      objective="mpp", objective_kwargs={}, recipe_yaml="data:\n  val: /secret/home/val\n", step=1,
                      global_batch=2, checkpoint="run/checkpoints/step_1",
                      data_spec="hf://datasets/timm/imagenet-1k-wds/imagenet1k-train-{0000..1023}.tar",
                      init_from="hf-hub:facebook/vit-mae-base", weights_path="/secret/home/exports/vit",
                      eval_scores=[EvalScore("linear probe on frozen features", "linear/top1", 71.5, "in1k", "val")])
    text = render_model_card(facts)
    card = ModelCard(text)
    assert card.data.base_model == "facebook/vit-mae-base" and card.data.datasets == ["timm/imagenet-1k-wds"]
    assert [(r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        ("linear probe on frozen features (linear/top1)", 71.5)]
    assert "/secret" not in text and 'timm.create_model("local-dir:vit", pretrained=True)' in text
    assert "`vit_base_patch16_224` is timm's architecture of this size" in text
    local = render_model_card(CardFacts(**{**facts.__dict__, "init_from": "/secret/w.pth", "data_spec": "/secret/d"}))
    assert "base_model" not in front_matter(local) and "datasets" not in front_matter(local)
    assert "- **Initialised from**: `w.pth`" in local and "/secret" not in local
