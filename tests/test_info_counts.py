"""The counts of `_info.json` are checked against each other before anything is read, and against what an epoch
really reads: a negative, fractional, quoted or inconsistent count is one line naming the file and the key, and
a count that is simply wrong — where there are no `shard_lengths` to check each shard against (an index without
them, a URL list with `data.num_samples`) — stops training with one line once the whole split has been read,
instead of silently giving every epoch the wrong number of steps."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from shardgen import solid_samples, write_shards

from data_tools.verify import verify_out
from ssl_vit.data import resolve_spec
from ssl_vit.errors import DataError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two shards of 6 samples under tmp/data, with _info.json."""
    write_shards(tmp_path / "data", solid_samples(num_classes=3, per_class=4), shard_size=6)
    return tmp_path / "data"


def edit_info(data: Path, **changes: object) -> None:
    info = json.loads((data / "_info.json").read_text())
    for key, value in changes.items():
        if value is None:
            info["splits"]["train"].pop(key, None)
        else:
            info["splits"]["train"][key] = value
    (data / "_info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("changes, said", [
    ({"num_samples": -12, "shard_lengths": None}, "num_samples is -12, not a whole number of samples ≥ 0"),
    ({"num_samples": "12"}, "num_samples is '12', not a whole number"),
    ({"num_samples": 11.5, "shard_lengths": None}, "num_samples is 11.5, not a whole number"),
    ({"num_samples": True, "shard_lengths": None}, "num_samples is True, not a whole number"),
    ({"shard_lengths": [18, -6]}, "shard_lengths[1] is -6, not a whole number"),
    ({"shard_lengths": [6.0, 6]}, "shard_lengths[0] is 6.0, not a whole number"),
    ({"shard_lengths": "6,6"}, "shard_lengths is str, not a list of sample counts"),
    ({"shard_lengths": [12]}, "lists 2 files but 1 shard_lengths"),
    ({"num_samples": 13}, "num_samples 13 != sum of shard_lengths 12"),
    ({"class_names": "abc"}, "class_names is 'abc', not a list of names"),
    ({"class_names": ["a", "b", "c"], "num_classes": 4}, "num_classes 4 != the 3 class_names"),
    ({"filenames": [], "shard_lengths": [], "num_samples": 0}, "lists no shard files"),
], ids=["negative", "quoted", "fractional", "bool", "negative-length", "float-length", "lengths-string",
        "lengths-short", "sum", "class-string", "num-classes", "no-files"])
def test_impossible_counts_are_one_line_at_spec_resolution(data, changes, said):
    edit_info(data, **changes)
    with pytest.raises(DataError) as err:
        resolve_spec(str(data), "train")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{data / '_info.json'}: split 'train' "), text
    assert said in text, text


@pytest.mark.parametrize("changes, said", [
    ({"num_samples": "12"}, "num_samples '12' is not a whole number of samples ≥ 0"),
    ({"num_samples": True, "shard_lengths": [1, 0]}, "num_samples True is not a whole number"),
    ({"shard_lengths": [6, True]}, "'shard_lengths' non-negative integers"),
])
def test_verify_reports_counts_that_are_not_whole_numbers(data, changes, said):
    edit_info(data, **changes)
    report = verify_out(data, progress=False)
    assert any(said in problem for problem in report.problems), report.problems


# ----------------------------------------------------------------------------------- what an epoch reads
@pytest.mark.slow
@pytest.mark.parametrize("spec", ["index", "url-list"])
def test_a_count_the_shards_do_not_hold_stops_training_in_one_line(pretrain_shards, tmp_path, ssl_vit, spec):
    """48 samples in 3 shards; the count says 80. The epoch length (and `train.epochs`) would follow the count."""
    if spec == "index":
        data = tmp_path / "data"
        data.mkdir()
        for shard in pretrain_shards.glob("train-*.tar"):
            shutil.copy(shard, data / shard.name)
        info = json.loads((pretrain_shards / "_info.json").read_text())
        info["splits"]["train"].pop("shard_lengths")  # another tool's index: counts per shard unknown
        info["splits"]["train"]["num_samples"] = 80
        (data / "_info.json").write_text(json.dumps(info))
        where = [f"data.train={data}"]
    else:
        where = [f"data.train={pretrain_shards}/train-{{000000..000002}}.tar", "data.num_samples=80"]
    rc, err = ssl_vit("pretrain", "--config", "pretrain/smoke", *where, f"output_dir={tmp_path / 'run'}",
                      "train.total_steps=20", "train.checkpoint_every=4", "optim.warmup_steps=2")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert ("the split's 3 shards hold 48 samples, but its count says 80 (num_samples in _info.json, or "
            "data.num_samples for a URL list)") in lines[0]
    # Stopped at the first checkpoint after the whole split was read (3 steps of 16), before writing it.
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert checkpoints == [], checkpoints


@pytest.mark.slow
def test_a_right_count_without_shard_lengths_trains_on(pretrain_shards, tmp_path, pretrain):
    where = f"{pretrain_shards}/train-{{000000..000002}}.tar"
    assert pretrain(where, tmp_path / "run", **{"data.num_samples": 48, "train.total_steps": 8,
                                                "train.checkpoint_every": 4, "optim.warmup_steps": 2}) == 0
