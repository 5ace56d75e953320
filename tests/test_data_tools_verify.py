"""data_tools verify: passes on good shards; names the shard (and key) and exits 1 on every kind of damage."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from imagegen import make_image_folder
from test_data_tools_support import run_cli

from data_tools.build import build_split
from data_tools.cli import main


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("vsrc") / "src"
    make_image_folder(src, classes=("a", "b"), per_class=6, size=(16, 12))
    out = tmp_path_factory.mktemp("vout")
    build_split(src, out, "train", max_count=4, progress=False)
    build_split(src / "a", out, "test", labels="none", progress=False)
    return out


@pytest.fixture()
def out(good, tmp_path) -> Path:
    """A private copy of the good shards to damage."""
    return Path(shutil.copytree(good, tmp_path / "out"))


def _verify(out: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    code = main(["verify", str(out), "--no-progress", *extra])
    return code, capsys.readouterr().out.splitlines()


def _member_offset(shard: Path, ext: str) -> tuple[str, int]:
    """Key and data offset of the first member with this extension."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("." + ext))
        return member.name.split(".")[0], member.offset_data


def test_good_shards_pass(good, capsys):
    code, lines = _verify(good, capsys)
    assert code == 0 and lines == ["verified split(s) test, train: 4 shards, 18 samples: OK"]
    code, lines = _verify(good, capsys, "--split", "test")
    assert code == 0 and lines[-1].endswith("1 shards, 6 samples: OK")


@pytest.mark.timeout(60)
def test_cli_subprocess_with_workers(good):
    done = run_cli("verify", str(good), "--workers", "2", "--no-progress")
    assert done.returncode == 0 and done.stdout.endswith("OK\n") and "Traceback" not in done.stderr


@pytest.mark.parametrize("ext, reason", [("png", "image does not decode"), ("json", "json does not parse"),
                                         ("cls", "not an ASCII integer")])
def test_corrupted_byte_names_shard_and_key(out, capsys, ext, reason):
    shard = out / "train-000000.tar"
    key, offset = _member_offset(shard, ext)
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF  # the first byte of that member: magic number, '{' or digit
    shard.write_bytes(bytes(data))
    code, lines = _verify(out, capsys)
    assert code == 1
    assert any(line.startswith(f"train-000000.tar {key}: ") and reason in line for line in lines), lines
    assert "train-000000.tar: sha256 differs from _info.json (the file changed since it was built)" in lines
    assert lines[-1].endswith("18 samples: 2 problems")


def test_truncated_tar(out, capsys):
    shard = out / "train-000001.tar"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:2000])
    code, lines = _verify(out, capsys)
    assert code == 1
    assert any(line.startswith("train-000001.tar: tar is truncated or corrupt") for line in lines), lines
    assert f"train-000001.tar: 2000 bytes, _info.json says {size}" in lines
    assert any(line.startswith("train-000001.tar: ") and "samples, _info.json says 4" in line for line in lines)


def test_missing_shard(out, capsys):
    (out / "train-000002.tar").unlink()
    code, lines = _verify(out, capsys, "--split", "train")
    assert code == 1 and lines[0].startswith("train-000002.tar: missing shard file")


@pytest.mark.parametrize("text, reason", [
    ("{not json", "_info.json: "),
    (json.dumps({"splits": {"train": {"name": "train", "filenames": ["train-000000.tar"], "shard_lengths": []}}}),
     "needs 'filenames' and 'shard_lengths' lists of equal length"),
])
def test_bad_info_json(out, capsys, text, reason):
    (out / "_info.json").write_text(text)
    code, lines = _verify(out, capsys)
    assert code == 1 and reason in lines[0]


def test_unknown_split_and_no_info(out, tmp_path, capsys):
    code, lines = _verify(out, capsys, "--split", "val")
    assert code == 1 and lines[0] == "_info.json: no split 'val' (it has: test, train)"
    (tmp_path / "bare").mkdir()
    code, lines = _verify(tmp_path / "bare", capsys)
    assert code == 1 and lines[0].startswith("_info.json: not found")
