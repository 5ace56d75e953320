"""data_tools build: unreadable files are skipped (never fatal) and listed; symlinks; CLI errors exit 2."""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest

from imagegen import noise_image
from test_data_tools_support import by_path, read_split

from data_tools.build import build_split
from data_tools.cli import main
from data_tools.images import BadImage, prepare_image
from data_tools.options import parse_size


def _jpeg(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    noise_image(rng, (40, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def dirty(tmp_path) -> Path:
    """Two good JPEGs and four bad files that all claim to be images by name or sit among them."""
    rng = random.Random(3)
    src = tmp_path / "src"
    (src / "good").mkdir(parents=True)
    (src / "bad").mkdir()
    (src / "good" / "a.jpg").write_bytes(_jpeg(rng))
    (src / "good" / "b.jpg").write_bytes(_jpeg(rng))
    (src / "bad" / "truncated.jpg").write_bytes(_jpeg(rng)[:700])
    (src / "bad" / "random.jpg").write_bytes(bytes(rng.getrandbits(8) for _ in range(2000)))
    (src / "bad" / "empty.jpg").write_bytes(b"")
    (src / "bad" / "notes.txt").write_text("not an image\n")
    return src


@pytest.mark.parametrize("check", ["full", "header"])
def test_bad_files_are_skipped_listed_and_counted(dirty, tmp_path, check, capsys):
    out = tmp_path / "out"
    assert main(["build", str(dirty), str(out), "--split", "train", "--check", check, "--no-progress"]) == 0
    assert "2 written, 4 skipped" in capsys.readouterr().out
    rows = [line.split("\t") for line in (out / "train_skipped.tsv").read_text().splitlines()]
    assert rows[0] == ["path", "reason"]
    reasons = dict(rows[1:])
    assert sorted(reasons) == ["bad/empty.jpg", "bad/notes.txt", "bad/random.jpg", "bad/truncated.jpg"]
    assert reasons["bad/empty.jpg"] == "empty file"
    assert reasons["bad/notes.txt"].startswith("not an image") and reasons["bad/random.jpg"].startswith("not an image")
    assert "truncated" in reasons["bad/truncated.jpg"]
    info = json.loads((out / "_info.json").read_text())["splits"]["train"]
    assert info["num_samples"] == 2 and info["class_names"] == ["bad", "good"]
    assert sorted(by_path(read_split(out))) == ["good/a.jpg", "good/b.jpg"]


def test_full_check_catches_every_truncation_point():
    """Full checking must reject a JPEG cut anywhere; the 1/8-scale decode must agree with a full decode."""
    data = _jpeg(random.Random(4))
    for cut in range(200, len(data) - 1, 53):
        with pytest.raises(BadImage):
            prepare_image(data[:cut], resize_shorter=None, quality=95, check="full")
        with pytest.raises(BadImage):
            prepare_image(data[:cut], resize_shorter=None, quality=95, check="header")
    kept = prepare_image(data, resize_shorter=None, quality=95, check="full")
    assert kept.data == data and (kept.width, kept.height) == (40, 30) and kept.reencoded is None


def test_all_bad_is_an_error(tmp_path, capsys):
    (tmp_path / "src" / "c").mkdir(parents=True)
    (tmp_path / "src" / "c" / "x.jpg").write_text("no")
    assert main(["build", str(tmp_path / "src"), str(tmp_path / "out"), "--split", "train", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no usable image") and "train_skipped.tsv" in err
    assert (tmp_path / "out" / "train_skipped.tsv").read_text().count("\n") == 2


def test_symlinks_leaving_src_are_not_followed_unless_asked(tmp_path):
    rng = random.Random(5)
    (tmp_path / "src" / "k").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "src" / "k" / "in.jpg").write_bytes(_jpeg(rng))
    (tmp_path / "outside" / "o.jpg").write_bytes(_jpeg(rng))
    os.symlink(tmp_path / "outside" / "o.jpg", tmp_path / "src" / "k" / "link_out.jpg")
    os.symlink(tmp_path / "src" / "k" / "in.jpg", tmp_path / "src" / "k" / "link_in.jpg")
    s = build_split(tmp_path / "src", tmp_path / "o1", "train", progress=False)
    assert (s.written, s.skipped) == (1, 2)  # link_in.jpg is in.jpg again: one file, one sample
    listed = (tmp_path / "o1" / "train_skipped.tsv").read_text()
    assert "k/link_out.jpg\tsymlink to outside SRC" in listed
    assert "k/link_in.jpg\tthe same file as k/in.jpg" in listed
    s = build_split(tmp_path / "src", tmp_path / "o2", "train", follow_symlinks=True, progress=False)
    assert (s.written, s.skipped) == (2, 1)


def test_shard_size_bounds_files(tmp_path):
    rng = random.Random(6)
    (tmp_path / "src" / "k").mkdir(parents=True)
    for i in range(12):
        (tmp_path / "src" / "k" / f"{i}.jpg").write_bytes(_jpeg(rng))  # ~3.5 KB each → 5 tar blocks + 2
    s = build_split(tmp_path / "src", tmp_path / "out", "train", shard_size="25KB", progress=False)
    sizes = json.loads((tmp_path / "out" / "_info.json").read_text())["splits"]["train"]["bytes"]
    assert s.shards == len(sizes) > 1 and all(size <= 25_000 for size in sizes) and s.written == 12


def test_parse_size():
    assert parse_size("256MB") == 256_000_000 and parse_size("1GB") == 10**9 and parse_size("1 GiB") == 2**30
    assert parse_size("512k") == 512_000 and parse_size("1.5MB") == 1_500_000 and parse_size("100000") == 100_000


@pytest.mark.parametrize("args, message", [
    (["build", "{tmp}/missing", "{tmp}/out", "--split", "train"], "does not exist"),
    (["build", "{tmp}/empty", "{tmp}/out", "--split", "train"], "no class folders"),
    (["build", "{tmp}/empty", "{tmp}/out", "--split", "train", "--labels", "none"], "holds no files"),
    (["build", "{tmp}/cols.csv", "{tmp}/out", "--split", "train"], "'path' and 'label'"),
    (["build", "{tmp}/imgs", "{tmp}/out", "--split", "train", "--quality", "0"], "--quality"),
    (["build", "{tmp}/imgs", "{tmp}/out", "--split", "train", "--shard-size", "big"], "--shard-size"),
    (["build", "{tmp}/imgs", "{tmp}/out", "--split", "train", "--max-count", "0"], "--max-count"),
    (["build", "{tmp}/imgs", "{tmp}/out", "--split", "a.b"], "--split"),
    (["build", "{tmp}/imgs", "{tmp}/imgs/out", "--split", "train"], "inside SRC"),
    (["build", "{tmp}/imgs", "{tmp}/out"], "--split"),
    (["verify", "{tmp}/missing"], "not a folder"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "imgs" / "c").mkdir(parents=True)
    (tmp_path / "imgs" / "c" / "x.jpg").write_bytes(_jpeg(random.Random(7)))
    (tmp_path / "cols.csv").write_text("file,class\nimgs/c/x.jpg,c\n")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
