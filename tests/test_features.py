"""Feature extraction: pooling, intermediate layers, exactly-once over shards and ranks, the on-disk cache."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval_fixtures import write_dataset

from ssl_vit.data.normalize import normalize_uint8
from ssl_vit.errors import ConfigError
from ssl_vit.eval import build
from ssl_vit.config import EvalData
from ssl_vit.eval.context import EvalContext
from ssl_vit.eval.features import embed_images
from ssl_vit.models import create_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shards"))


def nano() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_nano_patch4").eval()


def test_pooling_and_layers_match_the_token_outputs():
    model = nano()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        tokens = model.forward_features(normalize_uint8(images))  # (3, 1 + 64, 64)
        first = model.norm(model.forward_intermediates(normalize_uint8(images), [0])["layers"][0])
    torch.testing.assert_close(embed_images(model, images, "cls"), tokens[:, 0])
    torch.testing.assert_close(embed_images(model, images, "mean"), tokens[:, 1:].mean(1))
    both = embed_images(model, images, "both")
    assert both.shape == (3, 128)
    torch.testing.assert_close(both[:, 64:], tokens[:, 1:].mean(1))
    torch.testing.assert_close(embed_images(model, images, "cls", layers=[-1]), tokens[:, 0])
    two = embed_images(model, images, "cls", layers=[-1, 0])  # in the order listed
    torch.testing.assert_close(two, torch.cat([tokens[:, 0], first[:, 0]], dim=1))


def context(data: Path, **kwargs) -> EvalContext:
    return EvalContext(
        backbone_factory=kwargs.pop("factory", nano),
        data=EvalData(train=str(data), test=str(data), image_size=32, batch_size=5, num_workers=0),
        **kwargs,
    )


def test_every_sample_once_sorted_and_equal_to_a_direct_forward(data: Path):
    ctx = context(data)
    feats = ctx.features("train")
    assert len(feats) == 24 and feats.keys == sorted(feats.keys) and len(set(feats.keys)) == 24
    assert feats.labels.tolist() == [int(k.split("_c")[1][0]) for k in feats.keys]
    with ctx.eval_batches("train") as stream:
        batch = next(iter(stream))
    direct = embed_images(nano(), batch["image"])
    for row, key in zip(direct, batch["key"]):
        torch.testing.assert_close(feats.x[feats.keys.index(key)], row)


def test_cache_is_reused_by_the_next_protocol_and_the_next_run(data: Path, tmp_path: Path):
    calls = []

    def factory():
        calls.append(1)
        model = nano()
        model.norm.register_forward_hook(lambda *a: calls.append("forward"))  # runs in every forward pass
        return model

    ctx = context(data, factory=factory, cache_dir=tmp_path, fingerprint="ckpt-a")
    build("fewshot", shots=[1], seeds=1).run(ctx)
    forwards = calls.count("forward")
    assert calls.count(1) == 1 and forwards > 0
    build("knn", k=[3]).run(ctx)  # the second protocol: no new forward pass
    assert calls.count("forward") == forwards
    assert len(list(tmp_path.glob("features-*.pt"))) == 2  # train and test

    again = context(data, factory=factory, cache_dir=tmp_path, fingerprint="ckpt-a")
    torch.testing.assert_close(again.features("train").x, ctx.features("train").x)
    assert calls.count(1) == 1  # a fresh run finds the files: the backbone is never even built

    other = context(data, factory=factory, cache_dir=tmp_path, fingerprint="ckpt-b")  # another checkpoint
    other.features("test")
    assert calls.count(1) == 2 and len(list(tmp_path.glob("features-*.pt"))) == 3


@pytest.mark.timeout(180)
def test_two_processes_extract_each_sample_exactly_once(data: Path, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "tests" / "eval_fixtures.py"), str(data), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    own = ranks[0]["own"] + ranks[1]["own"]
    assert len(own) == 24 and len(set(own)) == 24  # the stream split: each sample read by exactly one rank
    assert ranks[0]["own"] and ranks[1]["own"]
    single = context(data).features("train")
    for r in ranks:  # after the gather every rank holds the full set, in key order
        assert r["keys"] == single.keys
        torch.testing.assert_close(r["x"], single.x)
        assert torch.equal(r["labels"], single.labels)


def test_periodic_evaluation_on_the_live_backbone(data: Path, tmp_path: Path, monkeypatch):
    from ssl_vit.config import PretrainConfig
    from ssl_vit.eval.periodic import check_periodic, evaluate_during_pretraining

    monkeypatch.chdir(tmp_path)
    model = nano().train()
    own = PretrainConfig()  # the eval section names its own data
    own.eval.evaluators = [{"name": "knn", "k": [3]}, {"name": "fewshot", "shots": [2], "seeds": 1}]
    own.eval.train, own.eval.test, own.eval.image_size, own.eval.batch_size, own.eval.num_workers = (
        str(data), str(data), 32, 8, 0)
    out = evaluate_during_pretraining(model, own, None, step=100)
    assert set(out) == {"knn/k3_top1", "fewshot/2shot", "fewshot/2shot_std", "fewshot/2shot_fixed_l2",
                        "fewshot/2shot_fixed_l2_std", "fewshot/2shot_log2_l2"}
    assert model.training and not list(tmp_path.rglob("features-*"))  # mode restored, nothing cached
    cfg = PretrainConfig()  # eval data left out: it comes from data.train / data.val
    cfg.data.train, cfg.data.val, cfg.data.image_size, cfg.data.batch_size, cfg.data.num_workers = str(data), str(data), 32, 8, 0
    cfg.eval.evaluators = [{"name": "knn", "k": [3]}]
    check_periodic(cfg)
    assert evaluate_during_pretraining(model, cfg, None, step=200) == {"knn/k3_top1": out["knn/k3_top1"]}
    cfg.eval.evaluators = [{"name": "finetune"}]
    with pytest.raises(ConfigError, match="cannot run during pretraining"):
        check_periodic(cfg)


def test_threads_respect_omp_num_threads_else_split_physical_cores(monkeypatch):
    from ssl_vit.eval.threads import configure_threads, physical_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert configure_threads(local_processes=2) == 3 == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert configure_threads(local_processes=2) == max(1, physical_cores() // 2)
    finally:
        torch.set_num_threads(before)
