"""One file, one sample, its own label: symlink farms, loops, links to outside, hard links, special files,
unreadable entries and hostile CSV lists never hang the build, never exhaust memory, never write a file twice or
under another folder's label; every skip is listed with its reason. The trees are built here."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hostile import jpeg_bytes, photo

from data_tools.build import build_split
from data_tools.images import BadImage
from data_tools.samples import read_regular_file


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(photo(16, 12, seed=seed)))


def _written(out: Path) -> dict[str, str]:
    """json path → json class of every sample in the split's shards (asserting each path once)."""
    found: dict[str, str] = {}
    for shard in sorted(out.glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    assert meta["path"] not in found, f"{meta['path']} written twice"
                    found[meta["path"]] = meta["class"]
    return found


def _skipped(out: Path) -> dict[str, str]:
    rows = list(csv.reader((out / "train_skipped.tsv").open(), delimiter="\t"))
    return dict(rows[1:])


@pytest.fixture()
def farm(tmp_path: Path) -> Path:
    """6 real images (a/0-2, b/0-2) behind a farm of links that once gave 2,282 samples with wrong labels."""
    src = tmp_path / "src"
    for cls in "ab":
        for i in range(3):
            _image(src / cls / f"{i}.jpg", seed=10 * (cls == "b") + i)
    os.symlink("../b", src / "a" / "b_again")  # a folder inside SRC, under another class
    os.symlink("..", src / "a" / "up")  # a loop back to SRC
    os.symlink(".", src / "b" / "self")  # a loop onto itself
    os.symlink("../b/0.jpg", src / "a" / "b0_as_a.jpg")  # b's file under a's label
    os.symlink("1.jpg", src / "a" / "1_again.jpg")  # a's file twice under a's label
    os.link(src / "a" / "2.jpg", src / "b" / "hard_a2.jpg")  # one file (a hard link) in two classes
    os.link(src / "b" / "1.jpg", src / "b" / "hard_b1.jpg")  # one file twice in one class
    os.symlink(src / "b", src.parent / "link_to_src_b")
    return src


@pytest.mark.timeout(60)
@pytest.mark.parametrize("follow", [False, True])
def test_a_symlink_farm_gives_each_real_file_once_under_its_own_folder(farm: Path, tmp_path: Path, follow: bool):
    out = tmp_path / "out"
    summary = build_split(farm, out, "train", follow_symlinks=follow, progress=False)
    written = _written(out)
    # a/2.jpg is also b/hard_a2.jpg: which class it is cannot be told, so neither is written
    assert written == {"a/0.jpg": "a", "a/1.jpg": "a", "b/0.jpg": "b", "b/1.jpg": "b", "b/2.jpg": "b"}
    skipped = _skipped(out)
    assert skipped["a/b_again/"].startswith("symlink to a folder inside SRC, not descended")
    assert skipped["a/up/"].startswith("symlink to a folder inside SRC") and skipped["b/self/"].startswith("symlink")
    assert skipped["a/b0_as_a.jpg"] == "the same file as b/0.jpg (a symlink or hard link to it)"
    assert skipped["a/1_again.jpg"] == "the same file as a/1.jpg (a symlink or hard link to it)"
    assert skipped["b/hard_b1.jpg"] == "the same file as b/1.jpg (a symlink or hard link to it)"
    assert skipped["a/2.jpg"].startswith("one file under several labels (a/2.jpg, b/hard_a2.jpg)")
    assert (summary.written, summary.skipped) == (5, len(skipped))


@pytest.mark.timeout(60)
def test_links_to_outside_are_followed_once_per_class_and_loops_end(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _image(outside / "o.jpg", seed=1)
    _image(outside / "deeper" / "d.jpg", seed=2)
    os.symlink(".", outside / "deeper" / "loop")  # a loop outside SRC
    src = tmp_path / "src"
    _image(src / "a" / "own.jpg", seed=3)
    _image(src / "c" / "own.jpg", seed=4)
    os.symlink(outside, src / "a" / "ext")
    os.symlink(outside, src / "a" / "ext_again")  # the same outside folder twice in one class
    os.symlink(outside / "deeper", src / "c" / "deep")  # and part of it in another class
    out = tmp_path / "out"
    build_split(src, out, "train", follow_symlinks=True, progress=False)
    assert _written(out) == {"a/ext/o.jpg": "a", "a/own.jpg": "a", "c/own.jpg": "c"}
    skipped = _skipped(out)
    assert skipped["a/ext_again/"] == "symlink to a folder already listed, not descended again"
    assert skipped["a/ext/deeper/d.jpg"].startswith("one file under several labels")  # also c/deep/d.jpg
    assert skipped["a/ext/deeper/loop/"] == "symlink to a folder already listed, not descended again"
    assert skipped["c/deep/loop/"] == "symlink to a folder already listed, not descended again"
    build_split(src, tmp_path / "plain", "train", progress=False)  # without --follow-symlinks: nothing outside
    assert set(_written(tmp_path / "plain")) == {"a/own.jpg", "c/own.jpg"}


@pytest.mark.timeout(60)
def test_special_files_in_a_tree_are_skipped_without_blocking(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _image(src / "a" / "ok.jpg", seed=1)
    os.mkfifo(src / "a" / "pipe.jpg")
    os.symlink("/dev/zero", src / "a" / "zero.jpg")
    os.symlink(src / "a" / "pipe.jpg", src / "a" / "pipe_link.jpg")
    out = tmp_path / "out"
    build_split(src, out, "train", follow_symlinks=True, progress=False)
    assert set(_written(out)) == {"a/ok.jpg"}
    skipped = _skipped(out)
    for name in ("pipe.jpg", "zero.jpg", "pipe_link.jpg"):
        assert skipped[f"a/{name}"].startswith("not a regular file"), skipped


@pytest.mark.timeout(60)
def test_a_csv_list_naming_devices_fifos_folders_huge_and_repeated_files(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    _image(imgs / "x.jpg", seed=1)
    _image(imgs / "y.jpg", seed=2)
    os.symlink(imgs / "x.jpg", imgs / "x_link.jpg")
    os.symlink(imgs / "y.jpg", imgs / "y_link.jpg")
    os.mkfifo(imgs / "fifo.jpg")
    with open(imgs / "huge.jpg", "wb") as f:
        f.truncate(2 << 30)  # 2 GiB, sparse: takes no disk, would take 2 GiB of memory to read
    rows = [("x.jpg", "cat"), ("x_link.jpg", "cat"), ("y.jpg", "cat"), ("y_link.jpg", "dog"),
            ("/dev/zero", "cat"), ("fifo.jpg", "cat"), (".", "cat"), ("huge.jpg", "cat"), ("gone.jpg", "cat")]
    listing = imgs / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    out = tmp_path / "out"
    summary = build_split(listing, out, "train", progress=False)
    assert _written(out) == {"x.jpg": "cat"}
    skipped = _skipped(out)
    assert skipped["x_link.jpg"] == "the same file as x.jpg (a symlink or hard link to it)"
    assert skipped["y.jpg"].startswith("one file under several labels") and "y_link.jpg" in skipped
    for rel in ("/dev/zero", "fifo.jpg", "."):
        assert skipped[rel].startswith("not a regular file"), (rel, skipped[rel])
    assert skipped["huge.jpg"].startswith("2,147,483,648 bytes: larger than any image within the pixel cap")
    assert skipped["gone.jpg"].startswith("cannot read: No such file")
    assert (summary.written, summary.skipped) == (1, 8)


@pytest.mark.timeout(30)
def test_a_file_swapped_for_a_fifo_after_listing_does_not_block_the_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "swapped.jpg")
    with pytest.raises(BadImage, match="not a regular file"):
        read_regular_file(str(tmp_path / "swapped.jpg"), 1 << 20)
    proc_file = Path("/proc/self/status")  # size 0 in stat, yet it has content: the read is bounded anyway
    if proc_file.exists():
        with pytest.raises(BadImage, match="more than 10 bytes"):
            read_regular_file(str(proc_file), 10)


def _build_without_root_privilege(src: Path, out: Path) -> None:
    """Build the split; as root (CI), in a child without the capabilities that read past a file's mode.

    Root reads every file whatever its permissions, so the unreadable case exists for root only once
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are dropped from the child's bounding set (util-linux's setpriv).
    """
    if os.geteuid() != 0:
        build_split(src, out, "train", progress=False)
        return
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root, this test needs util-linux's setpriv to build without root's read privilege"
    code = ("import sys; from pathlib import Path; from data_tools.build import build_split; "
            "build_split(Path(sys.argv[1]), Path(sys.argv[2]), 'train', progress=False)")
    done = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", sys.executable, "-c",
                           code, str(src), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr


def test_unreadable_files_and_folders_are_listed_with_the_reason(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _image(src / "a" / "ok.jpg", seed=1)
    _image(src / "a" / "locked.jpg", seed=2)
    _image(src / "a" / "closed" / "inner.jpg", seed=3)
    os.chmod(src / "a" / "locked.jpg", 0)
    os.chmod(src / "a" / "closed", 0)
    try:
        out = tmp_path / "out"
        _build_without_root_privilege(src, out)
        skipped = _skipped(out)
        assert skipped["a/locked.jpg"].startswith("cannot read: Permission denied")
        assert skipped["a/closed/"].startswith("cannot list folder: Permission denied")
        assert set(_written(out)) == {"a/ok.jpg"}
    finally:
        os.chmod(src / "a" / "closed", 0o755)
