"""A shard that is not a regular file — a FIFO, a device, a socket, which `tar x` of a downloaded archive can make —
is refused before it is opened, in training, evaluation and `ssl-vit-shards verify` alike, with one line naming
it; so is a shard that leads out of its folder through a symlink, unless the user says the links are theirs
(`data.follow_symlinks=true`, `verify --follow-symlinks`). A shard swapped for a FIFO after the check is refused
when it is opened (O_NONBLOCK), never waited on.

Before, a FIFO named in `_info.json` hung training and evaluation for ever (its open waits for a writer): every
test here has a timeout, so a regression fails instead of hanging.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from shardgen import solid_samples, write_shards
from stream_fixtures import take

from data_tools.cli import main as shards_cli
from data_tools.shard_files import NotRegularFile, open_shard_file
from data_tools.verify import verify_out
from ssl_vit.config.eval_data import EvalData
from ssl_vit.data import TrainStreamOptions, build_eval_stream, build_train_stream, resolve_spec
from ssl_vit.data.shards import ShardUnreadable, read_shard
from ssl_vit.errors import DataError
from ssl_vit.eval.context import EvalContext

pytestmark = pytest.mark.timeout(60)
OPTIONS = TrainStreamOptions(batch_size=4, image_size=16, num_workers=0, shuffle_buffer=4)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two shards of 6 samples under tmp/data, with _info.json."""
    write_shards(tmp_path / "data", solid_samples(num_classes=3, per_class=4), shard_size=6)
    return tmp_path / "data"


def make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def eval_context(data: Path, **eval_data) -> EvalContext:
    return EvalContext(backbone_factory=lambda: None,
                       data=EvalData(train=str(data), test=str(data), test_split="train", **eval_data))


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_fifo_named_in_info_json_is_refused_by_training_evaluation_and_verify(data, ssl_vit, tmp_path):
    make_fifo(data / "train-000001.tar")
    said = f"{data / 'train-000001.tar'} of {data / '_info.json'} is a FIFO, not a regular file: refused, never opened"
    with pytest.raises(DataError) as err:
        resolve_spec(str(data), "train")
    assert said in one_line(err)
    with pytest.raises(DataError, match="is a FIFO"):
        build_train_stream(str(data), OPTIONS, seed=0, split="train")
    with pytest.raises(DataError, match="is a FIFO"):
        build_eval_stream(str(data), batch_size=4, image_size=16, num_workers=0, split="train")
    with pytest.raises(DataError, match="is a FIFO"):
        eval_context(data).shards("train")

    report = verify_out(data, progress=False)
    assert not report.ok and report.samples == 6  # the regular shard is verified, the FIFO never opened
    assert any(p.startswith("train-000001.tar: is a FIFO, not a regular file; not read") for p in report.problems)
    assert shards_cli(["verify", str(data), "--no-progress"]) == 1

    rc, err_text = ssl_vit("pretrain", "--config", "pretrain/smoke", f"data.train={data}",
                           f"output_dir={tmp_path / 'run'}")
    lines = [line for line in err_text.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "is a FIFO, not a regular file" in lines[0], err_text
    assert not (tmp_path / "run").exists()


def test_devices_and_sockets_are_refused_also_when_links_are_followed(data, tmp_path):
    shard = data / "train-000000.tar"
    shard.unlink()
    shard.symlink_to("/dev/zero")  # reads without end
    with pytest.raises(DataError, match="train-000000.tar .* is a character device, not a regular file"):
        resolve_spec(str(data), "train", follow_symlinks=True)
    shard.unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(shard))
        with pytest.raises(DataError, match="is a socket, not a regular file"):
            resolve_spec(str(data), "train")
        assert any("is a socket" in p for p in verify_out(data, progress=False).problems)
    finally:
        sock.close()
    with pytest.raises(DataError, match="is a character device"):  # a URL list is checked the same way
        resolve_spec(["/dev/zero"], num_samples=1)


def test_a_shard_swapped_for_a_fifo_after_the_check_is_refused_when_opened(data):
    shards = resolve_spec(str(data), "train")  # checked: two regular files
    make_fifo(data / "train-000000.tar")  # then replaced, under a running job
    with pytest.raises(ShardUnreadable, match="it is a FIFO, not a regular file \\(refused, never read\\)"):
        next(read_shard(shards.urls[0]))
    with pytest.raises(DataError, match="train-000000.tar: it is a FIFO"):
        take(build_eval_stream(shards, batch_size=4, image_size=16, num_workers=1), 10)
    with pytest.raises(NotRegularFile):
        open_shard_file(data / "train-000000.tar")
    with pytest.raises(NotRegularFile, match="a character device"):
        open_shard_file("/dev/zero")


def test_a_symlink_out_of_the_folder_is_refused_unless_the_links_are_the_users(data, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = data / "train-000001.tar"
    shutil.move(shard, elsewhere / "real.tar")
    shard.symlink_to(elsewhere / "real.tar")
    with pytest.raises(DataError) as err:
        resolve_spec(str(data), "train")
    assert (f"shard {shard} of {data / '_info.json'} leads through a symlink to {elsewhere / 'real.tar'}, outside "
            f"{data}: refused") in one_line(err)
    assert "data.follow_symlinks=true" in one_line(err)
    with pytest.raises(DataError, match="leads through a symlink"):
        eval_context(data).shards("test")

    shards = resolve_spec(str(data), "train", follow_symlinks=True)  # the user's own links
    keys = [k for b in build_eval_stream(shards, batch_size=4, image_size=16, num_workers=0) for k in b["key"]]
    assert len(keys) == 12
    assert eval_context(data, follow_symlinks=True).shards("train").urls == shards.urls

    report = verify_out(data, progress=False)
    assert [p for p in report.problems if "leads through a symlink" in p and "--follow-symlinks" in p], report.problems
    assert verify_out(data, progress=False, follow_symlinks=True).ok
    assert shards_cli(["verify", str(data), "--no-progress"]) == 1
    assert shards_cli(["verify", str(data), "--no-progress", "--follow-symlinks"]) == 0


def test_links_inside_the_folder_and_a_linked_folder_are_fine(data, tmp_path):
    (data / "store").mkdir()
    shard = data / "train-000000.tar"
    shutil.move(shard, data / "store" / "real.tar")
    shard.symlink_to(Path("store") / "real.tar")  # a relative link that stays inside
    mount = tmp_path / "mount"
    mount.symlink_to(data)  # /data -> /mnt/disk2/data
    for spec in (str(data), str(mount)):
        assert len(resolve_spec(spec, "train").urls) == 2
    assert verify_out(mount, progress=False).ok


def test_the_recipe_key_lets_training_read_the_users_links(data, ssl_vit, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = data / "train-000001.tar"
    shutil.move(shard, elsewhere / "real.tar")
    shard.symlink_to(elsewhere / "real.tar")
    common = ("pretrain", "--dry-run", "--config", "pretrain/smoke", f"data.train={data}",
              f"output_dir={tmp_path / 'run'}")
    rc, err = ssl_vit(*common)
    assert rc == 2 and "leads through a symlink" in err and "data.follow_symlinks=true" in err, err
    rc, err = ssl_vit(*common, "data.follow_symlinks=true")
    assert rc == 0, err


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_training_and_its_resume_read_the_users_links_when_told(pretrain_shards, pretrain, tmp_path):
    """Every place that resolves the training data honours the key (the run's start plan and resume, too)."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(pretrain_shards / "_info.json", data / "_info.json")
    for shard in pretrain_shards.glob("train-*.tar"):
        (data / shard.name).symlink_to(shard)  # a folder of links into the shared dataset
    run = {"train.total_steps": 4, "train.checkpoint_every": 2, "optim.warmup_steps": 1}
    with pytest.raises(DataError, match="leads through a symlink"):
        resolve_spec(str(data))
    assert pretrain(data, tmp_path / "run", **run, **{"data.follow_symlinks": "true"}) == 0
    run["train.total_steps"] = 6
    assert pretrain(data, tmp_path / "run", "--resume", "auto", **run, **{"data.follow_symlinks": "true"}) == 0
    assert (tmp_path / "run" / "checkpoints" / "step_0000006" / "state.pt").is_file()
