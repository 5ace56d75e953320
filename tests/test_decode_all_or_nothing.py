"""Decoding is all or nothing: a damaged image is skipped and counted (or named), never decoded into grey.

The hostile inputs are built here (tests/hostile.py): JPEGs whose compressed scan is damaged behind intact
headers and end marker, a PNG cut before IEND. Each test first asserts the premise — Pillow alone decodes
them without a word — then that the build (`--check full`, and any re-encode), `verify`, and both streams
refuse them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import ImageFile

from hostile import damaged_scan_jpeg, jpeg_bytes, photo, pillow_accepts, png_without_iend
from shardgen import Sample, unique_samples, write_shards

from data_tools.build import build_split
from data_tools.cli import main as shards_main
from data_tools.decoding import UndecodableImage
from data_tools.images import BadImage, prepare_image
from ssl_vit.data import CropBox, TrainStreamOptions, build_eval_stream, build_train_stream, decode_crop
from ssl_vit.errors import DataError

DAMAGED = {
    "jpeg_scan_garbage": damaged_scan_jpeg(0, "garbage"),
    "jpeg_scan_cut_then_eoi": damaged_scan_jpeg(0, "cut"),
    "png_cut_before_iend": png_without_iend(photo(48, 40)),
}
WHOLE = lambda w, h: CropBox(0, 0, w, h)  # noqa: E731


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_pillow_alone_accepts_the_damage_and_decode_crop_refuses_it(kind: str) -> None:
    data = DAMAGED[kind]
    assert pillow_accepts(data), "premise: Pillow decodes this damaged file without an error"
    for reduce in (True, False):  # every DCT scale still decodes every entropy-coded byte
        with pytest.raises(UndecodableImage, match="damaged|truncated|IEND"):
            decode_crop(data, WHOLE, 8, reduce=reduce)


def test_a_clean_jpeg_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decode_crop(jpeg_bytes(photo()), WHOLE, 8).shape == (8, 8, 3)


def test_load_truncated_images_on_is_refused_not_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Some scripts set Pillow's global LOAD_TRUNCATED_IMAGES, which turns truncation into grey pixels."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(UndecodableImage, match="LOAD_TRUNCATED_IMAGES is on"):
        decode_crop(png_without_iend(photo(48, 40))[:-200], WHOLE, 8)


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_the_build_check_full_and_every_re_encode_refuse_the_damage(kind: str) -> None:
    data = DAMAGED[kind]
    with pytest.raises(BadImage, match="damaged|truncated|IEND"):
        prepare_image(data, resize_shorter=None, quality=95, check="full")
    with pytest.raises(BadImage, match="damaged|truncated|IEND"):  # re-encoding turns pixels into the sample
        prepare_image(data, resize_shorter=16, quality=95, check="header")


def test_check_header_passes_a_damaged_scan_as_the_readme_says() -> None:
    """The documented limit of the default check: headers and end marker are intact, nothing is decoded."""
    prepared = prepare_image(DAMAGED["jpeg_scan_garbage"], resize_shorter=None, quality=95, check="header")
    assert prepared.data == DAMAGED["jpeg_scan_garbage"] and prepared.reencoded is None


@pytest.fixture(scope="module")
def folder_with_damage(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("damage") / "src"
    (src / "a").mkdir(parents=True)
    for i in range(4):
        (src / "a" / f"good{i}.jpg").write_bytes(jpeg_bytes(photo(seed=i + 1)))
    for kind, data in DAMAGED.items():
        (src / "a" / f"{kind}.{'png' if kind.startswith('png') else 'jpg'}").write_bytes(data)
    return src


def test_build_check_full_skips_and_lists_each_damaged_file(folder_with_damage: Path, tmp_path: Path) -> None:
    summary = build_split(folder_with_damage, tmp_path, "train", check="full", progress=False)
    assert (summary.written, summary.skipped) == (4, 3)
    listed = summary.skipped_file.read_text()
    for kind in DAMAGED:
        assert f"a/{kind}." in listed


def test_verify_reports_damage_that_check_header_let_through(folder_with_damage: Path, tmp_path: Path, capsys):
    summary = build_split(folder_with_damage, tmp_path, "train", check="header", progress=False)
    assert summary.skipped == 1 and "png_cut_before_iend" in summary.skipped_file.read_text()  # no end marker
    capsys.readouterr()
    assert shards_main(["verify", str(tmp_path), "--no-progress"]) == 1
    lines = [x for x in capsys.readouterr().out.splitlines() if "image does not decode (JPEG data is damaged" in x]
    assert len(lines) == 2, lines  # the two damaged scans, each named by shard and key


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_both_streams_refuse_the_damage(tmp_path: Path, kind: str) -> None:
    samples = unique_samples(24)
    ext = "png" if kind.startswith("png") else "jpg"
    samples[7] = Sample("s00007", DAMAGED[kind], 7, ext)
    write_shards(tmp_path, samples, shard_size=12)
    stream = build_train_stream(str(tmp_path), TrainStreamOptions(batch_size=23, image_size=8, num_workers=0,
                                                                  shuffle_buffer=0, max_bad_fraction=0.5), seed=0)
    try:
        batch = next(iter(stream))
    finally:
        stream.close()
    assert int(batch["skipped"]) == 1 and 7 not in batch["label"].tolist()
    with pytest.raises(DataError, match=r"sample 's00007' of shard .*train-000000\.tar cannot be decoded"):
        list(build_eval_stream(str(tmp_path), batch_size=5, image_size=8, num_workers=0))


def test_copied_shards_keep_the_verdict(folder_with_damage: Path, tmp_path: Path) -> None:
    """The verdict is a property of the bytes, not of the process: rebuild from a copy, same skips."""
    copy = Path(shutil.copytree(folder_with_damage, tmp_path / "copy"))
    assert build_split(copy, tmp_path / "out", "train", check="full", progress=False).skipped == 3
