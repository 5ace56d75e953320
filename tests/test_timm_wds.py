"""timm's WebDataset layout (`timm/imagenet-1k-wds` on the Hub) is a data spec as it is: a replica the test writes
the way timm's shard writer does (`imagenet1k-train-0000.tar`, `imagenet1k-validation-00.tar`, samples `jpg` +
`cls` + `json` {label, width, height, filename} keyed by the image's file stem, an index of
`{"name", "splits": {NAME: {"name", "filenames", "shard_lengths", "num_samples"}}}`) reads through both streams,
and each broken promise of its index is one line naming the file and the key."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from stream_fixtures import take
from timm_replica import eval_items, timm_replica

from ssl_vit.data import TrainStreamOptions, build_train_stream, resolve_spec
from ssl_vit.errors import DataError

def one_line_error(spec: str, split: str | None = None) -> str:
    with pytest.raises(DataError) as caught:
        resolve_spec(spec, split)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("index", ["_info.json", "info.json"])
def test_the_index_gives_each_split_its_shards_and_counts(tmp_path: Path, index: str):
    """`_info.json` (the Hub's copies) or, without one, `info.json` (the name timm's writer gives it)."""
    timm_replica(tmp_path, index=index)
    train = resolve_spec(f"{tmp_path}:train")
    assert train.urls == tuple(str(tmp_path / f"imagenet1k-train-{i:04d}.tar") for i in range(3))
    assert (train.num_samples, train.shard_lengths) == (11, (4, 4, 3))
    validation = resolve_spec(str(tmp_path), "validation")
    assert validation.urls[-1] == str(tmp_path / "imagenet1k-validation-01.tar")
    assert (validation.num_samples, validation.shard_lengths) == (5, (3, 2))
    # timm's index names no classes: nothing to check labels against, and evaluation sizes its heads from the
    # labels it sees (EvalContext.train_test: max label + 1); fine-tuning asks for data.num_classes
    assert train.class_names is None and train.num_classes is None
    assert resolve_spec(str(tmp_path / index), "train").urls == train.urls


def test_brace_patterns_in_filenames_expand_in_order(tmp_path: Path):
    timm_replica(tmp_path, brace=True)
    train = resolve_spec(f"{tmp_path}:train")
    assert train.urls == tuple(str(tmp_path / f"imagenet1k-train-{i:04d}.tar") for i in range(3))
    assert train.shard_lengths == (4, 4, 3)


def test_the_eval_stream_reads_each_sample_once_with_its_cls_label(tmp_path: Path):
    written = timm_replica(tmp_path)
    assert sorted(eval_items(f"{tmp_path}:validation")) == sorted(written["validation"])
    assert sorted(eval_items(f"{tmp_path}:train")) == sorted(written["train"])


def test_the_train_stream_reads_an_epoch_of_the_layout(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SSL_VIT_CACHE_DIR", str(tmp_path / "cache"))
    written = timm_replica(tmp_path / "in1k")
    options = TrainStreamOptions(batch_size=11, image_size=16, num_workers=0, shuffle_buffer=0)
    (batch,) = take(build_train_stream(f"{tmp_path / 'in1k'}:train", options, seed=0), 1)
    # one batch of the 11 samples is one epoch: every label once, as the cls members say
    assert sorted(batch["label"].tolist()) == sorted(label for _, label in written["train"])


def test_a_class_list_in_the_index_is_used_and_checked(tmp_path: Path):
    timm_replica(tmp_path)
    info = json.loads((tmp_path / "_info.json").read_text())
    info["splits"]["validation"]["class_names"] = ["tench", "goldfish"]  # labels go up to 2
    (tmp_path / "_info.json").write_text(json.dumps(info))
    assert resolve_spec(f"{tmp_path}:validation").num_classes == 2
    with pytest.raises(DataError, match=r"has label 2, outside the split's class list \(0\.\.1"):
        eval_items(f"{tmp_path}:validation")


def test_an_alt_label_split_is_refused_by_name(tmp_path: Path):
    timm_replica(tmp_path, alt_split=True)
    message = one_line_error(f"{tmp_path}:train_12k")
    assert f"{tmp_path / '_info.json'}: split 'train_12k'" in message
    assert "'label_12k'" in message and "alt_label" in message and "train, validation" in message
    assert resolve_spec(f"{tmp_path}:train").num_samples == 11  # alt_label null: read as usual


def _edited(root: Path, split: str, **changes) -> str:
    info = json.loads((root / "_info.json").read_text())
    for key, value in changes.items():
        if value is None:
            del info["splits"][split][key]
        else:
            info["splits"][split][key] = value
    (root / "_info.json").write_text(json.dumps(info))
    return f"{root}:{split}"


@pytest.mark.parametrize(("changes", "says"), [
    ({"num_samples": 12}, r"split 'train' num_samples 12 != sum of shard_lengths 11"),
    ({"shard_lengths": [4, 4]}, r"split 'train' lists 3 files but 2 shard_lengths"),
    ({"shard_lengths": [4, "4", 3]}, r"split 'train' shard_lengths\[1\] is '4', not a whole number"),
    ({"filenames": None}, r"split 'train' lacks or mangles 'filenames'"),
    ({"filenames": "imagenet1k-train-{0000..0002}.tar"}, r"split 'train' lacks or mangles 'filenames' \(not a list\)"),
    ({"filenames": ["imagenet1k-train-{0000..0002.tar"]}, r"split 'train' lists shard pattern '.*\{0000\.\.0002\.tar'"),
    ({"filenames": ["../imagenet1k-train-{0000..0002}.tar"]}, r"split 'train' lists shard '\.\./imagenet1k-train-0000"),
    ({"alt_label": 3}, r"split 'train' alt_label is '3', not the name of a json field"),
])
def test_each_broken_promise_of_the_index_is_one_line_naming_file_and_key(tmp_path: Path, changes, says):
    timm_replica(tmp_path)
    message = one_line_error(_edited(tmp_path, "train", **changes))
    assert message.startswith(str(tmp_path / "_info.json"))
    assert re.search(says, message), message


def test_a_shard_shorter_than_its_length_is_named_when_read(tmp_path: Path):
    timm_replica(tmp_path)
    spec = _edited(tmp_path, "validation", shard_lengths=[4, 2], num_samples=6)
    with pytest.raises(DataError, match=r"shard .*imagenet1k-validation-00\.tar holds 3 samples but _info\.json "
                                        r"says 4"):
        eval_items(spec)


def test_a_missing_shard_is_named_before_anything_is_read(tmp_path: Path):
    timm_replica(tmp_path)
    (tmp_path / "imagenet1k-train-0001.tar").unlink()
    message = one_line_error(f"{tmp_path}:train")
    assert "1 of 3 shards" in message and "imagenet1k-train-0001.tar" in message
