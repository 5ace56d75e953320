"""Reuse only what is proven to be the same (#24): a study's arms, the demo's workdir and cached features are reused
only by a command of the same settings — resolved recipes, the data by content, the code — and a report never
shows another command's numbers. Each test builds the situation itself: a study rerun with another length, shards
rebuilt in place under the same names (with and without sums in `_info.json`), the same data under another
path, a demo rerun with other settings, a full disk under the demo's --workdir."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from eval_fixtures import write_dataset, write_split
from test_full_disk import disk  # noqa: F401 — the real 4 MiB tmpfs, filled on demand
from trainer_fixtures import sigterm_at_step

from ssl_vit.cli import main
from ssl_vit.data.spec import ShardSet
from ssl_vit.eval.cache import cache_key, shard_contents

STEPS = ["train.global_batch=8", "data.batch_size=8", "optim.warmup_steps=1", "train.log_every=1"]
REUSED = "reused, finished earlier with the same settings"


def add_sums(root: Path) -> Path:
    """Record every shard's sha256 in `_info.json`, as `ssl-vit-shards build` does."""
    info = json.loads((root / "_info.json").read_text())
    for entry in info["splits"].values():
        entry["sha256"] = [hashlib.sha256((root / name).read_bytes()).hexdigest() for name in entry["filenames"]]
    (root / "_info.json").write_text(json.dumps(info))
    return root


def study(work: Path, data: Path | str, steps: int) -> list[str]:
    return ["study", "--workdir", str(work), "--train", f"{data}:train", "--test", f"{data}:validation",
            "--targets", "pixels", "--rates", "0.5", "--seeds", "0", "1", "--shots", "1", "--draws", "1",
            "--select-on", "fewshot/1shot_train_holdout", "--recipe", "recipes/pretrain/smoke.yaml",
            "--eval-recipe", "recipes/eval/smoke.yaml", f"train.total_steps={steps}",
            f"train.checkpoint_every={steps}", *STEPS]


def arms_of(work: Path) -> dict[str, dict]:
    """study.json's arms: name → {pretrained, random_init, folder}."""
    return json.loads((work / "study.json").read_text())["arms"]


def assert_report_is_from(work: Path, arms: dict[str, dict], steps: int) -> None:
    """Every figure in study.json is the record of an arm folder of this command's length."""
    for entry in arms.values():
        folder = Path(entry["folder"])
        record = json.loads((folder / "metrics.json").read_text())
        assert (entry["pretrained"], entry["random_init"]) == (record["pretrained"], record["random_init"])
        assert yaml.safe_load((folder / "pretrain" / "config.yaml").read_text())["train"]["total_steps"] == steps


@pytest.mark.timeout(600)
def test_a_study_rerun_reuses_only_arms_of_the_same_settings(tmp_path, capsys):
    data = add_sums(write_dataset(tmp_path / "shards", train_per_class=16))
    work = tmp_path / "study"
    assert main(study(work, data, steps=2)) == 0
    first = arms_of(work)
    capsys.readouterr()

    # Another length: nothing reused, the report holds the new arms only, the old ones stay as they were.
    assert main(study(work, data, steps=4)) == 0
    out = capsys.readouterr()
    assert REUSED not in out.err and "2 arm folder(s)" in out.err and "are not used" in out.err
    longer = arms_of(work)
    assert set(longer) == set(first) == {"pixels_r50_s0", "pixels_r50_s1"}
    assert {e["folder"] for e in longer.values()}.isdisjoint({e["folder"] for e in first.values()})
    assert_report_is_from(work, longer, steps=4)
    assert all(Path(e["folder"], "metrics.json").is_file() for e in first.values())

    # Unchanged (the first length again), through another spelling of the same folder: reused, and said so.
    alias = tmp_path / "same_shards"
    alias.symlink_to(data)
    assert main(study(work, f"{alias}/", steps=2)) == 0
    out = capsys.readouterr()
    assert out.err.count(REUSED) == 2 and "reused 2 of 2 arms" in out.err and "training steps" not in out.out + out.err
    assert arms_of(work) == first
    assert "**Reused.** 2 arm(s)" in (work / "study.md").read_text()

    # Shards rebuilt in place: the same names and counts, other images (so other sums): computed afresh.
    write_split(data, "train", per_class=16, num_shards=3, seed=7)
    add_sums(data)
    assert main(study(work, data, steps=2)) == 0
    out = capsys.readouterr()
    assert REUSED not in out.err
    rebuilt = arms_of(work)
    assert {e["folder"] for e in rebuilt.values()}.isdisjoint({e["folder"] for e in first.values()})
    assert_report_is_from(work, rebuilt, steps=2)


@pytest.mark.timeout(300)
def test_shards_without_sums_are_known_by_their_bytes(tmp_path, capsys):
    """No sums in `_info.json`: a shard rewritten in place with its old size and date is still another shard, so
    a study arm (and the feature cache) computes afresh."""
    data = write_dataset(tmp_path / "shards", train_per_class=16)
    work = tmp_path / "study"
    assert main(study(work, data, steps=2)) == 0
    first = arms_of(work)
    capsys.readouterr()

    shard = data / "validation-000000.tar"
    size, date = shard.stat().st_size, shard.stat().st_mtime_ns
    relabelled = shard.read_bytes().replace(b"c0/", b"c9/")  # the same length, other bytes
    shard.write_bytes(relabelled)
    os.utime(shard, ns=(date, date))
    assert shard.stat().st_size == size and shard.stat().st_mtime_ns == date
    assert main(study(work, data, steps=2)) == 0
    out = capsys.readouterr()
    assert REUSED not in out.err
    assert {e["folder"] for e in arms_of(work).values()}.isdisjoint({e["folder"] for e in first.values()})


def test_the_feature_cache_key_follows_the_content_not_the_name(tmp_path):
    shard = tmp_path / "x-000000.tar"
    shard.write_bytes(b"a" * 4096)
    urls = ShardSet((str(shard),))
    before = cache_key(weights="w", contents=shard_contents(urls))
    assert cache_key(weights="w", contents=shard_contents(urls)) == before  # the same content: a hit

    date = shard.stat().st_mtime_ns
    shard.write_bytes(b"b" * 4096)  # rebuilt in place: same name, size and date
    os.utime(shard, ns=(date, date))
    assert cache_key(weights="w", contents=shard_contents(urls)) != before

    # With sums: the sum decides, and a shard replaced behind its index's back (another size) differs too.
    summed = ShardSet((str(shard),), sha256=("00" * 32,))
    key = cache_key(weights="w", contents=shard_contents(summed))
    shard.write_bytes(b"b" * 8192)
    assert cache_key(weights="w", contents=shard_contents(summed)) != key
    assert shard_contents(ShardSet((str(shard),), sha256=("11" * 32,))) != shard_contents(summed)


def test_a_fifo_named_as_a_shard_is_not_read_to_key_it(tmp_path):
    fifo = tmp_path / "x-000000.tar"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert shard_contents(ShardSet((str(fifo),))) == [f"url:{fifo}"]  # never opened: opening one blocks for ever
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------------------------------------ the demo
def demo(work: Path, data: Path, *extra: str) -> list[str]:
    return ["demo", "--workdir", str(work), "--train", f"{data}:train", "--test", f"{data}:validation", "--quick",
            "model.name=vit_nano_patch4", *extra]


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.timeout(300)
def test_a_demo_rerun_with_other_settings_is_one_line_naming_the_workdir(tmp_path, capsys, monkeypatch):
    data = add_sums(write_dataset(tmp_path / "shards", train_per_class=8))
    work = tmp_path / "demo"
    sigterm_at_step(monkeypatch, 2)  # the first demo stops in its pretraining, after a checkpoint
    assert main(demo(work, data)) == 0
    assert "stopped: SIGTERM during `ssl-vit pretrain`" in capsys.readouterr().err
    monkeypatch.undo()
    recorded = (work / "demo.json").read_text()
    before = sorted(p.name for p in (work / "pretrain" / "checkpoints").iterdir())

    for changed, named in ((["train.total_steps=6"], "train.total_steps: 4 → 6"),
                           (["objective.kwargs.corruption_rate=0.3"], "objective.kwargs.corruption_rate: 0.15 → 0.3")):
        assert main(demo(work, data, *changed)) == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert line == (f"error: --workdir {work} holds a demo of other settings ({named}); pass --overwrite to "
                        "replace it, or choose another --workdir")
        assert (work / "demo.json").read_text() == recorded  # refused before anything was touched
        assert sorted(p.name for p in (work / "pretrain" / "checkpoints").iterdir()) == before

    # --overwrite replaces the work: the pretraining starts afresh with the new length, not resumed to it.
    sigterm_at_step(monkeypatch, 1)
    assert main(demo(work, data, "train.total_steps=6", "--overwrite")) == 0
    out = capsys.readouterr()
    monkeypatch.undo()
    assert "resumed from" not in out.out + out.err
    assert yaml.safe_load((work / "pretrain" / "config.yaml").read_text())["train"]["total_steps"] == 6
    assert json.loads((work / "demo.json").read_text())["fresh"] is False  # a rerun now resumes the new run

    # A workdir whose run the demo did not record (an older ssl-vit) is refused the same way.
    (work / "demo.json").unlink()
    assert main(demo(work, data, "train.total_steps=6")) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: --workdir {work} holds a pretraining run whose settings were not recorded")


@pytest.mark.timeout(300)
def test_a_full_disk_under_the_demo_is_one_line_naming_the_workdir(disk, tmp_path, capsys, monkeypatch):  # noqa: F811
    from ssl_vit.train import run_dir as run_dir_module
    from ssl_vit.train import session as session_module

    data = add_sums(write_dataset(tmp_path / "shards", train_per_class=8))
    work = disk.root / "demo"
    real = run_dir_module.begin

    def full_then_begin(*args, **kwargs):
        disk.fill()
        return real(*args, **kwargs)

    monkeypatch.setattr(session_module, "begin", full_then_begin)  # the disk fills as the pretraining starts
    assert main(demo(work, data)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: no space left on {disk.root} while writing {work / 'pretrain'}")
    assert f"--workdir {work}" in line and "choose another --workdir" in line
    assert "output_dir" not in line and "output directory" not in line

    # Full before anything is written: the demo's own record, the same one line.
    monkeypatch.undo()
    disk.free()
    (work / "demo.json").unlink()
    disk.fill()
    assert main(demo(work, data)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: no space left on {disk.root} while writing {work / 'demo.json'}")
    assert "choose another --workdir" in line and "output" not in line
