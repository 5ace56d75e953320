"""Weights where they live: `model.init_from` and `ssl-vit eval --checkpoint` take a Hugging Face Hub id, read from
huggingface_hub's cache. Every test runs offline (HF_HUB_OFFLINE=1, the network out of reach: `offline_hub`) on a
cache it fills itself with our own exports — a timm repository and a transformers one — in the Hub's layout."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval_fixtures import write_dataset
from hub_fixtures import COMMIT, cache_repo, offline_hub  # noqa: F401 - offline_hub is a fixture
from ssl_vit.commands.pretrain import init_source
from ssl_vit.errors import CheckpointError
from ssl_vit.eval.backbones import resolve_backbone
from ssl_vit.models import create_model
from ssl_vit.models.formats import Preprocessing, write_folder
from ssl_vit.models.hub_weights import hub_id
from ssl_vit.models.init_from import init_from
from ssl_vit.objectives import build
from trainer_fixtures import REPO
from weights_fixtures import images, randomized

NANO = "vit_nano_patch4"
TIMM_REPO = "timm/vit_nano_patch4_32.ssl_test"  # the spelling of timm's own ids: ORG/ARCH.TAG
HF_REPO = "me/nano-vit-hf"


def same_backbone(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = images()
    with torch.no_grad():
        return a.state_dict().keys() == b.state_dict().keys() and torch.equal(
            a.eval().forward_features(x), b.eval().forward_features(x))


@pytest.fixture
def source() -> torch.nn.Module:
    return randomized(create_model(NANO), seed=3)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Shards with splits train and validation, 3 classes (what `ssl-vit eval` reads)."""
    return write_dataset(tmp_path_factory.mktemp("labelled"), train_per_class=4, test_per_class=2)


def export(model: torch.nn.Module, folder: Path, fmt: str) -> Path:
    write_folder(model, folder, fmt, Preprocessing())
    return folder


def test_timm_and_transformers_repos_load_from_the_cache_in_every_spelling(offline_hub, source, tmp_path):
    """A timm repository (config.json with `architecture`) and a transformers one (`model_type: vit`), each as
    `hf-hub:ORG/NAME`, bare `ORG/NAME`, and with a revision (a commit, a branch): eval builds the source's backbone,
    labelled and recorded by the id, and init_from loads it, the report naming the id and the commit read."""
    cache_repo(offline_hub, TIMM_REPO, export(source, tmp_path / "timm", "timm"))
    cache_repo(offline_hub, HF_REPO, export(source, tmp_path / "hf", "hf"))
    for repo in (TIMM_REPO, HF_REPO):
        for spelling in (f"hf-hub:{repo}", repo, f"hf-hub:{repo}@{COMMIT}", f"{repo}@main"):
            resolved = resolve_backbone(spelling)
            assert resolved.spec == spelling and resolved.label == spelling.removeprefix("hf-hub:")
            assert resolved.config == source.config and same_backbone(resolved.build(), source), spelling
        folder, name = init_source(f"hf-hub:{repo}")
        assert folder == offline_hub / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT
        torch.manual_seed(0)
        objective = build("mpp", create_model(NANO), target="mean_color")
        line = init_from(folder, objective.backbone, objective, name=name)
        assert line.startswith(f"init_from hf-hub:{repo} (commit {COMMIT}): loaded 30 tensors; new 5 ")
        assert same_backbone(objective.backbone, source)


def test_a_repository_with_pytorch_model_bin_only(offline_hub, source, tmp_path):
    """Weights as pytorch_model.bin (older transformers repositories): the first weights file the snapshot holds."""
    folder = export(source, tmp_path / "hf", "hf")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    cache_repo(offline_hub, HF_REPO, folder)
    assert same_backbone(resolve_backbone(f"hf-hub:{HF_REPO}").build(), source)


def test_a_local_path_wins_over_a_bare_id_and_hf_hub_is_always_the_hub(offline_hub, source, tmp_path, monkeypatch):
    """`me/nano-vit-hf` that exists here is that folder, never the Hub's repository of the same name;
    `hf-hub:me/nano-vit-hf` is the Hub's; a missing `runs/x.pth` is a missing file, not a Hub id."""
    cache_repo(offline_hub, HF_REPO, export(source, tmp_path / "hf", "hf"))
    monkeypatch.chdir(tmp_path)
    local = randomized(create_model(NANO), seed=4)
    export(local, tmp_path / HF_REPO, "hf")
    assert hub_id(HF_REPO, "--checkpoint") is None
    assert same_backbone(resolve_backbone(HF_REPO).build(), local)
    assert same_backbone(resolve_backbone(f"hf-hub:{HF_REPO}").build(), source)
    assert init_source(HF_REPO) == (Path(HF_REPO), None)
    for path in ("runs/x.pth", "runs/model.safetensors", "/abs/org/name", "./org/name", "a/b/c"):
        assert hub_id(path, "--checkpoint") is None, path
        with pytest.raises(CheckpointError, match="no such file or directory"):
            resolve_backbone(path)


def test_an_id_not_in_the_cache_is_one_line_naming_how_to_fetch_it(offline_hub, ssl_vit, labelled,
                                                                    pretrain_shards_32, tmp_path):
    """Offline and not cached (nothing, or its config.json but no weights): one line, exit 2, for eval and for
    pretrain's model.init_from, naming the cache, the `hf download` that fetches it and HF_HUB_OFFLINE."""
    from conftest import SMOKE

    cache_repo(offline_hub, HF_REPO, export(randomized(create_model(NANO)), tmp_path / "hf", "hf"),
               only=("config.json",))
    for repo in ("me/absent", HF_REPO):
        for argv in (["eval", "knn", "--checkpoint", f"hf-hub:{repo}", "--train", str(labelled), "--test",
                      str(labelled), "--out", str(tmp_path / "eval")],
                     ["pretrain", "--config", str(SMOKE), f"data.train={pretrain_shards_32}",
                      f"output_dir={tmp_path / 'run'}", f"model.init_from=hf-hub:{repo}"]):
            rc, err = ssl_vit(*argv)
            assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert f"hf-hub:{repo}: not in the Hugging Face cache ({offline_hub}) and HF_HUB_OFFLINE is set" in err
            assert f"`hf download {repo} config.json model.safetensors`" in err and "unset HF_HUB_OFFLINE" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()
    with pytest.raises(CheckpointError, match=r"^--checkpoint me/absent \(no such local path, so a Hugging Face Hub "
                                              r"id\): not in the Hugging Face cache"):
        resolve_backbone("me/absent")  # a bare id says why it was read as one: it may be a mistyped local path


def test_wrong_spellings_are_one_line(offline_hub, ssl_vit):
    for wrong in ("hf-hub:", "hf-hub:org/na me", "hf-hub:org/name/extra", "hf-hub:org--x/name", "hf-hub:org/name@",
                  "hf-hub:-org/name", f"hf-hub:org/{'n' * 97}"):
        with pytest.raises(CheckpointError, match="not a Hugging Face Hub model id; write hf-hub:ORG/NAME"):
            resolve_backbone(wrong)
    rc, err = ssl_vit("eval", "knn", "--checkpoint", "hf-hub:org/na me", "--train", "x", "--test", "x")
    assert rc == 2 and err.count("\n") == 1 and "--checkpoint hf-hub:org/na me: not a Hugging Face Hub model id" in err


def test_a_repository_that_is_no_vit_is_one_line(offline_hub, tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model.safetensors").write_bytes(b"")
    cache_repo(offline_hub, "me/bert", folder)
    with pytest.raises(CheckpointError, match=r"^--checkpoint hf-hub:me/bert: its config.json names model_type "
                                              r"'bert'; ssl_vit reads transformers ViT repositories"):
        resolve_backbone("hf-hub:me/bert")


def test_without_huggingface_hub_a_hub_id_is_one_line_naming_the_extra(offline_hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(CheckpointError, match=r"^model.init_from hf-hub:timm/x: reading weights from the Hugging "
                                              r"Face Hub needs huggingface_hub >= 2.4: pip install 'ssl_vit\[hub\]'$"):
        init_source("hf-hub:timm/x")


def test_pretraining_and_evaluation_from_a_hub_id(offline_hub, source, tmp_path, pretrain, pretrain_shards_32,
                                                  labelled, ssl_vit, capsys):
    """End to end: `ssl-vit pretrain model.init_from=timm/…` starts from the cached repository (its report line on
    stdout), `ssl-vit eval knn --checkpoint hf-hub:…` evaluates it and `ssl-vit eval finetune` with the recipe's
    `model.init_from=timm/…` fine-tunes it, results.json naming the id as given."""
    cache_repo(offline_hub, TIMM_REPO, export(source, tmp_path / "timm", "timm"))
    run = tmp_path / "run"
    assert pretrain(pretrain_shards_32, run, **{"model.init_from": TIMM_REPO, "train.total_steps": 1,
                                                "optim.lr": 1e-12, "optim.min_lr": 0.0, "optim.warmup_steps": 0,
                                                "train.checkpoint_every": 1}) == 0
    assert f"init_from hf-hub:{TIMM_REPO} (commit {COMMIT}): loaded 30 tensors" in capsys.readouterr().out
    out = tmp_path / "eval"
    rc, err = ssl_vit("eval", "knn", "--checkpoint", f"hf-hub:{TIMM_REPO}", "--train", str(labelled), "--test",
                      f"{labelled}:validation", "--out", str(out), "knn.k=[1]", "num_workers=0", "batch_size=8")
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"] == f"hf-hub:{TIMM_REPO}" and results["label"] == TIMM_REPO
    finetuned = tmp_path / "finetune"  # a fine-tuning recipe's model.init_from: the same sources as --checkpoint
    rc, err = ssl_vit("eval", "finetune", "--train", str(labelled), "--test", str(labelled), "--config",
                      str(REPO / "recipes/finetune/smoke.yaml"), "--out", str(finetuned), f"model.init_from={TIMM_REPO}",
                      "train.total_steps=2", "optim.warmup_steps=1", "val_every=2", "train.checkpoint_every=2")
    assert rc == 0, err
    assert json.loads((finetuned / "results.json").read_text())["checkpoint"] == TIMM_REPO


def test_an_unreachable_hub_reads_the_cache_or_says_so_in_one_line(offline_hub, source, tmp_path, monkeypatch):
    """Not offline, but the Hub does not answer (its endpoint a closed local port): a cached repository still loads
    (huggingface_hub falls back to the cache), an uncached one is one line saying the Hub is unreachable."""
    import time
    import types

    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # huggingface_hub retries a refused download 5 times over 23 s (`http_backoff`): here without the waits.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(**{**vars(time), "sleep": lambda seconds: None}))
    cache_repo(offline_hub, HF_REPO, export(source, tmp_path / "hf", "hf"))
    assert same_backbone(resolve_backbone(HF_REPO).build(), source)
    with pytest.raises(CheckpointError, match=r"^--checkpoint hf-hub:me/absent: the Hub is unreachable \(.+\) and the "
                                              r"files are not in the cache .+; check the connection, or fetch it"):
        resolve_backbone("hf-hub:me/absent")
