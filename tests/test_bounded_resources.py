"""Bounded resources: an image's pixel count is capped before it is decoded, in the build, verify and streams.

The hostile input is a small PNG that claims many pixels (tests/hostile.py): 144 Mpx in ~630 kB, which Pillow
only warns about. Peak memory is measured in a fresh process, with and without the cap, so the test shows
that the cap, not luck, keeps a worker's memory independent of the file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostile import bomb_png, jpeg_bytes, photo
from shardgen import Sample, unique_samples, write_shards

from data_tools.build import build_split
from data_tools.cli import main as shards_main
from data_tools.decoding import DEFAULT_MAX_PIXELS, UndecodableImage
from ssl_vit.data import CropBox, TrainStreamOptions, build_eval_stream, build_train_stream, decode_crop
from ssl_vit.errors import ConfigError, DataError

WHOLE = lambda w, h: CropBox(0, 0, w, h)  # noqa: E731
BOMB = bomb_png()  # 12000 x 12000


def test_the_default_cap_is_pillows_bomb_limit_and_refuses_the_144_mpx_png_small_file() -> None:
    assert len(BOMB) < 1_000_000 and DEFAULT_MAX_PIXELS == 89_478_485
    with pytest.raises(UndecodableImage, match=r"12000x12000 = 144,000,000 pixels exceeds the cap of 89,478,485"):
        decode_crop(BOMB, WHOLE, 8)


# The decoder the streams' decode_crop and the build use for PNGs, without importing torch (a fast subprocess).
# Peak RSS is the kernel's high-water mark VmHWM (ru_maxrss is not kept up to date in every sandbox).
_PEAK = """
from hostile import bomb_png
from data_tools.decoding import UndecodableImage, load_strictly, open_image
def peak_mb():
    return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) / 1024
data = bomb_png(6000, 6000)  # 36 Mpx of 8-bit grey: under Pillow's limit, over the cap of 10 Mpx given below
before = peak_mb()
try:
    load_strictly(open_image(data, {cap}), data)
    refused = False
except UndecodableImage:
    refused = True
print(refused, peak_mb() - before)
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_peak_memory_is_set_by_the_cap_not_by_the_file() -> None:
    def peak_mb(cap: int) -> tuple[bool, float]:
        code = _PEAK.format(cap=cap)
        tests = str(Path(__file__).parent)  # the subprocess imports tests/hostile.py
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True,
                             env=env)
        refused, mb = out.stdout.split()
        return refused == "True", float(mb)

    refused, capped = peak_mb(10_000_000)
    assert refused and capped < 8, capped  # refused from the header: nothing decoded
    refused, uncapped = peak_mb(100_000_000)
    assert not refused and uncapped > 20, uncapped  # 36 Mpx decoded (34 MiB), so the cap is what saved it


def test_the_build_skips_a_bomb_before_decoding_and_a_lower_cap_skips_more(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    (src / "bomb.png").write_bytes(BOMB)
    (src / "small.jpg").write_bytes(jpeg_bytes(photo(64, 48)))
    (src / "large.jpg").write_bytes(jpeg_bytes(photo(128, 96)))
    summary = build_split(src.parent, tmp_path / "out", "train", progress=False)
    assert (summary.written, summary.skipped) == (2, 1)
    assert "a/bomb.png\t12000x12000 = 144,000,000 pixels exceeds the cap" in summary.skipped_file.read_text()
    code = shards_main(["build", str(src.parent), str(tmp_path / "out2"), "--split", "train", "--no-progress",
                        "--max-pixels", str(100 * 100)])
    assert code == 0 and "1 written, 2 skipped" in capsys.readouterr().out  # 128x96 > 10,000 pixels
    assert "a/large.jpg\t128x96 = 12,288 pixels exceeds the cap of 10,000" in (tmp_path / "out2" / "train_skipped.tsv").read_text()


def test_verify_reports_an_image_above_the_cap(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    (src / "large.jpg").write_bytes(jpeg_bytes(photo(128, 96)))
    build_split(src.parent, tmp_path / "out", "train", progress=False)
    capsys.readouterr()
    assert shards_main(["verify", str(tmp_path / "out"), "--no-progress", "--max-pixels", "10000"]) == 1
    assert "exceeds the cap of 10,000" in capsys.readouterr().out


def test_streams_skip_or_name_a_bomb_and_refuse_a_bad_cap(tmp_path: Path) -> None:
    samples = unique_samples(12)
    samples[3] = Sample("s00003", BOMB, 3, "png")
    write_shards(tmp_path, samples, shard_size=12)
    stream = build_train_stream(str(tmp_path), TrainStreamOptions(batch_size=11, image_size=8, num_workers=0,
                                                                  shuffle_buffer=0, max_bad_fraction=0.5), seed=0)
    try:
        batch = next(iter(stream))
    finally:
        stream.close()
    assert int(batch["skipped"]) == 1 and 3 not in batch["label"].tolist()
    with pytest.raises(DataError, match=r"sample 's00003' .* exceeds the cap"):
        list(build_eval_stream(str(tmp_path), batch_size=4, image_size=8, num_workers=0))
    with pytest.raises(ConfigError, match="max_pixels must be a positive number"):
        build_eval_stream(str(tmp_path), batch_size=4, image_size=8, num_workers=0, max_pixels=0)


def test_a_resumed_build_of_an_earlier_version_still_matches_its_options() -> None:
    """max_pixels left at its default is not part of the resume record, so older records still match."""
    from data_tools.options import BuildOptions

    assert "max_pixels" not in BuildOptions("train").record()
    assert json.dumps(BuildOptions("train", max_pixels=5).record()).count("max_pixels") == 1


def _shard_with_a_huge_member(path: Path, member_bytes: int) -> None:
    """Samples s00000..s00002 (JPEG + cls); s00001's .jpg is `member_bytes` zero bytes, written from /dev/zero
    (the test never holds it in memory either)."""
    import io
    import tarfile

    good = jpeg_bytes(photo(32, 24))
    with tarfile.open(path, "w") as tar, open("/dev/zero", "rb") as zeros:
        for i in range(3):
            data_size = member_bytes if i == 1 else len(good)
            info = tarfile.TarInfo(f"s{i:05d}.jpg")
            info.size = data_size
            tar.addfile(info, zeros if i == 1 else io.BytesIO(good))
            cls = tarfile.TarInfo(f"s{i:05d}.cls")
            cls.size = 1
            tar.addfile(cls, io.BytesIO(b"0"))


def test_a_huge_tar_member_is_read_past_never_into_memory(tmp_path: Path) -> None:
    """A shard member larger than any image within the pixel cap (4 bytes a pixel + 16 MiB): the streams read
    past it in 1 MiB pieces and skip (train) or name (eval) its sample, and verify reports it; none of them
    holds it in memory, so a worker's peak does not grow with it."""
    import tracemalloc

    from data_tools.verify import ShardExpectation, check_shard

    path = tmp_path / "huge.tar"
    _shard_with_a_huge_member(path, 64 << 20)
    cap = 1_000  # 4,000 + 16 MiB = 16,781,216 bytes at most per file
    tracemalloc.start()
    try:
        options = TrainStreamOptions(batch_size=2, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.05,
                                     max_pixels=cap)
        stream = build_train_stream([str(path)], options, seed=0)
        try:
            batch = next(iter(stream))
        finally:
            stream.close()
        with pytest.raises(DataError, match=r"sample 's00001' of shard .*huge\.tar cannot be decoded \(ValueError: "
                                            r"the image is a 67,108,864-byte file, larger than any image within the "
                                            r"pixel cap \(16,781,216 bytes\)\)"):
            list(build_eval_stream([str(path)], batch_size=4, image_size=8, num_workers=0, max_pixels=cap))
        result = check_shard(ShardExpectation(path=path, count=3, sha256=None, bytes=None, class_names=None,
                                                      max_pixels=cap))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert int(batch["skipped"]) == 1 and len(batch["label"]) == 1  # samples 0 and 1 (the huge one: left out)
    assert result.samples == 3 and [p for p in result.problems if "s00001" in p] == [
        "huge.tar s00001: member .jpg is 67,108,864 bytes, larger than any image within the pixel cap (16,781,216 bytes)"]
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB while reading past a 64 MiB member"
