"""data_tools build: byte-identical rebuilds (any --workers), resume after SIGKILL, no-op reruns, two splits."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import make_image_folder
from test_data_tools_support import REPO, read_split, run_cli, visible_files

from data_tools.build import build_split

OPTS = ["--split", "train", "--max-count", "2", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """20 small mixed images: with --max-count 2 that is 10 shards, plenty of points to be killed at."""
    root = tmp_path_factory.mktemp("tiny") / "src"
    make_image_folder(root, classes=("a", "b"), per_class=10, size=(12, 10), mixed=True)
    return root


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref")
    build_split(tiny, out, "train", max_count=2, progress=False)
    return visible_files(out)


@pytest.mark.timeout(60)
def test_rebuilds_are_byte_identical_for_any_worker_count(tiny, tmp_path, reference):
    assert sum(name.endswith(".tar") for name in reference) == 10
    build_split(tiny, tmp_path / "w1", "train", max_count=2, progress=False)
    build_split(tiny, tmp_path / "w2", "train", max_count=2, workers=2, progress=False)
    assert visible_files(tmp_path / "w1") == reference == visible_files(tmp_path / "w2")
    build_split(tiny, tmp_path / "seed1", "train", max_count=2, seed=1, progress=False)
    order = [s["key"] for s in read_split(tmp_path / "seed1")]
    assert sorted(order) == sorted(s["key"] for s in read_split(tmp_path / "w1"))
    assert order != [s["key"] for s in read_split(tmp_path / "w1")]  # the seed changes the order, not the keys


def _start_and_kill(tiny: Path, out: Path, hang_after: int, workers: int) -> None:
    """Run the CLI until the test hook says it is mid-way through shard `hang_after`, then SIGKILL it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "build_until_killed.py"), str(hang_after), "build",
                             str(tiny), str(out), *OPTS, "--workers", str(workers)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "test hook: hanging" in line, line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.timeout(120)
def test_resume_after_sigkill_gives_the_same_files(tiny, tmp_path, reference):
    out = tmp_path / "out"
    _start_and_kill(tiny, out, hang_after=3, workers=2)
    assert sorted(p.name for p in out.glob("train-*")) == [f"train-{i:06d}.tar" for i in range(3)] + [
        "train-000003.tar.tmp"]
    assert not (out / "_info.json").exists()
    progress = json.loads((out / ".train.progress.json").read_text())
    assert len(progress["shards"]) == 3 and not progress["complete"]
    _start_and_kill(tiny, out, hang_after=2, workers=1)  # killed again, during the resumed run (shard 5)
    assert len(json.loads((out / ".train.progress.json").read_text())["shards"]) == 5

    done = run_cli("build", str(tiny), str(out), *OPTS)
    assert done.returncode == 0 and "resumed after 5 finished shards" in done.stdout, done.stderr
    assert visible_files(out) == reference

    again = run_cli("build", str(tiny), str(out), *OPTS)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert visible_files(out) == reference


@pytest.mark.timeout(60)
def test_resume_with_other_options_is_refused_and_overwrite_rebuilds(tiny, tmp_path, reference):
    out = tmp_path / "out"
    _start_and_kill(tiny, out, hang_after=1, workers=1)
    refused = run_cli("build", str(tiny), str(out), *OPTS, "--seed", "3")
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert "seed: 0 → 3" in refused.stderr and "--overwrite" in refused.stderr
    assert (out / "train-000000.tar").exists()  # nothing was touched
    assert run_cli("build", str(tiny), str(out), *OPTS, "--overwrite").returncode == 0
    assert visible_files(out) == reference


def test_resume_after_the_inputs_changed_is_refused(tiny, tmp_path):
    """A new file in SRC (or another label) between start and resume: refused, nothing touched."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    out = tmp_path / "out"
    _start_and_kill(src, out, hang_after=1, workers=1)
    shutil.copy(src / "a" / sorted(p.name for p in (src / "a").iterdir())[0], src / "a" / "extra.jpg")
    before = visible_files(out)
    refused = run_cli("build", str(src), str(out), *OPTS)
    assert refused.returncode == 2
    assert "changed since split 'train' was started" in refused.stderr and "--overwrite" in refused.stderr
    assert visible_files(out) == before


def test_damaged_finished_shard_is_rewritten_on_resume(tiny, tmp_path, reference):
    out = tmp_path / "out"
    build_split(tiny, out, "train", max_count=2, progress=False)
    progress = json.loads((out / ".train.progress.json").read_text())
    progress["complete"] = False
    (out / ".train.progress.json").write_text(json.dumps(progress))  # as if killed before finishing
    shard = out / "train-000004.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different bytes: only the sha256 notices
    shard.write_bytes(bytes(data))
    summary = build_split(tiny, out, "train", max_count=2, progress=False)
    assert summary.resumed_shards == 4 and summary.written == 20
    assert visible_files(out) == reference


def test_two_splits_share_one_out(tiny, tmp_path, reference):
    out = tmp_path / "out"
    build_split(tiny, out, "train", max_count=2, progress=False)
    train = json.loads((out / "_info.json").read_text())["splits"]["train"]
    build_split(tiny / "a", out, "test", labels="none", progress=False)
    build_split(tiny / "a", out, "test", labels="none", overwrite=True, progress=False)
    splits = json.loads((out / "_info.json").read_text())["splits"]
    assert splits["train"] == train and sorted(splits) == ["test", "train"]
    assert splits["test"]["num_samples"] == 10 and splits["test"]["filenames"] == ["test-000000.tar"]
    assert {k: v for k, v in visible_files(out).items() if k.startswith("train")} == {
        k: v for k, v in reference.items() if k.startswith("train")}


@pytest.mark.timeout(60)
def test_disk_full_mid_build_names_the_file_and_the_rerun_resumes(tiny, tmp_path, reference, monkeypatch):
    """ENOSPC while writing the 4th shard: one clear error naming the file and what is kept; no partial shard
    under a real name; the same command afterwards finishes with the same bytes as an uninterrupted build."""
    import errno

    from data_tools import tarwriter
    from data_tools.errors import DataToolsError

    original = tarwriter.ShardWriter.__init__

    class FullDisk:
        """A file whose writes fail as on a full disk, and whose close (a flush) fails too."""

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        close = flush = lambda self: self.write(b"")

    def init(self, final: Path) -> None:
        original(self, final)
        if final.name.endswith("000003.tar"):
            self._file.close()
            self._file = FullDisk()

    out = tmp_path / "out"
    monkeypatch.setattr(tarwriter.ShardWriter, "__init__", init)
    with pytest.raises(DataToolsError) as caught:
        build_split(tiny, out, "train", max_count=2, progress=False)
    message = str(caught.value)
    assert "train-000003.tar.tmp" in message and "No space left on device" in message
    assert "3 finished shards are kept" in message and "rerun the same command" in message
    assert sorted(p.name for p in out.glob("*.tar")) == [f"train-00000{i}.tar" for i in range(3)]
    assert not list(out.glob("*.tmp"))
    monkeypatch.undo()
    build_split(tiny, out, "train", max_count=2, progress=False)
    assert visible_files(out) == reference


def test_a_rerun_never_renumbers_what_an_older_version_wrote(tmp_path):
    """Shards written before the class list was recorded (then: text order, "c10" before "c2") stay as they are:
    the rerun finds the split up to date under the list its `_info.json` names, and a resume continues with it."""
    from imagegen import make_image_folder as make

    make(tmp_path / "src", classes=("c2", "c10"), per_class=3, mixed=False)
    out = tmp_path / "out"
    build_split(tmp_path / "src", out, "train", max_count=2, progress=False)
    info_path, record_path = out / "_info.json", out / ".train.progress.json"
    info, record = json.loads(info_path.read_text()), json.loads(record_path.read_text())
    assert info["splits"]["train"]["class_names"] == record["class_names"] == ["c2", "c10"]
    # Make it look like an older version's build: text order in the index, no list in the record.
    info["splits"]["train"]["class_names"] = ["c10", "c2"]
    del record["class_names"]
    info_path.write_text(json.dumps(info))
    record_path.write_text(json.dumps(record))
    before = visible_files(out)
    assert build_split(tmp_path / "src", out, "train", max_count=2, progress=False).up_to_date
    after = visible_files(out)
    assert json.loads(after["_info.json"])["splits"]["train"]["class_names"] == ["c10", "c2"]
    assert {k: v for k, v in after.items() if k.endswith(".tar")} == {k: v for k, v in before.items() if k.endswith(".tar")}
