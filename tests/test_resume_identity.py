"""A resume compares the data by identity, not spelling: the checkpoint records its shards (sha256 sums from
`_info.json`; sizes and modification times for a URL list without them), so the same shards under another
spelling resume, and shards rebuilt in place under the same names refuse, naming the shard. A checkpoint of an
earlier version, which records none, compares the spelling as before."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from shardgen import unique_samples, write_shards
from trainer_fixtures import tree_digest, write_pretrain_shards

from ssl_vit.data import resolve_spec
from ssl_vit.data.promises import key_hash
from ssl_vit.data.identity import data_difference, shard_records
from ssl_vit.data.split_keys import SplitKeyLedger, part_record

START = {"train.total_steps": 2, "train.checkpoint_every": 1, "train.log_every": 1, "optim.warmup_steps": 1}


def refusal(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture
def shards(pretrain_shards_32: Path, tmp_path: Path) -> Path:
    """A private copy: some tests rebuild it in place."""
    return Path(shutil.copytree(pretrain_shards_32, tmp_path / "data" / "shards"))


def test_the_same_shards_spelled_otherwise_resume(shards, tmp_path, capsys, monkeypatch, pretrain):
    run_dir = tmp_path / "run"
    assert pretrain(shards, run_dir, **START) == 0
    mount = tmp_path / "mnt"
    mount.symlink_to(shards.parent, target_is_directory=True)
    monkeypatch.chdir(shards.parent)
    spellings = {"relative": Path(shards.name), "trailing slash": f"{shards}/", "symlinked mount": mount / shards.name,
                 "DIR:split": f"{shards}:train"}
    for steps, (how, spelled) in enumerate(spellings.items(), start=3):
        rc = pretrain(spelled, run_dir, "--resume", "auto", **{**START, "train.total_steps": steps})
        out, err = capsys.readouterr()
        assert rc == 0, (how, err)
        assert f"at step {steps - 1}" in out and "data.train: " in out, how  # resumed; the new spelling recorded


def test_shards_rebuilt_in_place_refuse_naming_the_shard(shards, tmp_path, capsys, pretrain):
    run_dir = tmp_path / "run"
    assert pretrain(shards, run_dir, **START) == 0
    write_pretrain_shards(shards, num_samples=32, shard_size=16, seed=1)  # other images, the same names
    before = tree_digest(run_dir)
    line = refusal(capsys, pretrain(shards, run_dir, "--resume", "auto", **{**START, "train.total_steps": 3}))
    assert f"shard {shards / 'train-000000.tar'} changed since the checkpoint was written" in line
    assert "its sha256 in _info.json is" in line and "rebuilt in place?" in line
    assert tree_digest(run_dir) == before


def test_a_url_list_without_sums_is_known_by_size_and_time(shards, tmp_path, capsys, pretrain):
    run_dir = tmp_path / "run"
    spec = f"{shards}/train-{{000000..000001}}.tar"
    assert pretrain(spec, run_dir, **START, **{"data.num_samples": 32}) == 0
    other = write_pretrain_shards(tmp_path / "other", num_samples=32, shard_size=16, seed=1)
    shutil.copyfile(other / "train-000001.tar", shards / "train-000001.tar")  # one shard replaced, index untouched
    line = refusal(capsys, pretrain(spec, run_dir, "--resume", "auto",
                                    **{**START, "data.num_samples": 32, "train.total_steps": 3}))
    assert f"shard {shards / 'train-000001.tar'} changed since the checkpoint was written" in line
    assert "without sha256 sums in an _info.json the size and modification time decide" in line


def test_a_checkpoint_without_the_datas_identity_compares_the_spelling(shards, tmp_path, capsys, pretrain):
    run_dir = tmp_path / "run"
    assert pretrain(shards, run_dir, **START) == 0
    for state_file in run_dir.glob("checkpoints/step_*/state.pt"):  # as an earlier ssl_vit wrote them
        state = torch.load(state_file, weights_only=True)
        state.pop("data")
        torch.save(state, state_file)
    line = refusal(capsys, pretrain(f"{shards}/", run_dir, "--resume", "auto", **{**START, "train.total_steps": 3}))
    assert f"--resume: data.train is '{shards}/' but the checkpoint" in line
    assert pretrain(shards, run_dir, "--resume", "auto", **{**START, "train.total_steps": 3}) == 0  # the same spelling
    assert "data" in torch.load(run_dir / "checkpoints" / "step_0000003" / "state.pt", weights_only=True)  # recorded now


def test_shard_records_and_their_difference():
    a = {"name": "/d/train-000000.tar", "sha256": "ab" * 32, "size": 10}
    moved = {**a, "name": "/mnt/d/train-000000.tar"}
    assert data_difference([a], [moved]) is None  # names never count
    assert "has 2 shards now, and had 1" in data_difference([a], [a, a])
    assert "(11 bytes now, 10 then)" in data_difference([a], [{**a, "size": 11}])
    url = {"name": "https://h/x.tar", "url": "https://h/x.tar"}
    assert "cannot be shown to be" in data_difference([a], [url])
    assert data_difference(None, [a]) is None  # nothing recorded: nothing to compare


def test_shard_records_of_a_directory_use_the_indexs_sums(pretrain_shards_32):
    records = shard_records(resolve_spec(str(pretrain_shards_32), "train"))
    assert [set(r) for r in records] == [{"name", "sha256", "size"}] * 2


def test_the_key_ledger_knows_a_shard_by_its_file_not_its_spelling(tmp_path, monkeypatch):
    """A resumed run reads the same samples under the new spelling: no "occurs twice" between the two names."""
    paths = write_shards(tmp_path / "d", unique_samples(4), shard_size=4)
    hashes = [key_hash(f"s{i:05d}") for i in range(4)]
    ledger = SplitKeyLedger()
    ledger.add([part_record(str(paths[0]), 0, 1, hashes)])
    resumed = SplitKeyLedger()
    resumed.load_state_dict(ledger.state_dict())
    (tmp_path / "mnt").symlink_to(tmp_path / "d", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for spelled in ("d/train-000000.tar", str(tmp_path / "mnt" / "train-000000.tar")):
        assert resumed.add([part_record(spelled, 0, 1, hashes)]) is None and len(resumed) == 4
    assert resumed.state_dict()["urls"] == [str(tmp_path / "mnt" / "train-000000.tar")]  # the newest spelling
