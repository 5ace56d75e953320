"""The colour demo's images: the emoji extraction and `ssl-vit demo --data emoji`, on a toy install of the two
Debian packages that the tests build themselves (`emoji_fixtures.py`: a COLR font of coloured shapes on
transparency, and an emoji-test.txt with the lines that must be left out)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from emoji_fixtures import GROUPS, write_emoji_packages
from PIL import Image

from ssl_vit.cli import main
from ssl_vit.demo import emoji
from ssl_vit.demo.datasets import DATASETS
from ssl_vit.errors import UserError


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("packages")
    return root, write_emoji_packages(root)


def test_the_table_keeps_whole_fully_qualified_pictures(packages):
    root, expected = packages
    parsed = emoji.parse_table((root / emoji.TABLE).read_text(encoding="utf-8"))
    texts = {e.text for e in parsed}
    smile = chr(GROUPS["Smileys & Emotion"][1])
    assert smile in texts and smile + "\U0001F3FB" not in texts  # the skin-tone copy is left out
    assert chr(GROUPS["Smileys & Emotion"][1] + 1) + "\ufe0f" not in texts  # unqualified
    assert not any(e.group == "Component" for e in parsed)
    assert {emoji.class_name(e.group) for e in parsed} == set(expected)
    assert len(parsed) == sum(expected.values()) + 1  # + the ZWJ sequence, which only drawing can refuse
    with pytest.raises(UserError, match=r"x.txt: no fully-qualified emoji under a '# group:' line"):
        emoji.parse_table("# Version: 15.0\n1F600 ; fully-qualified # 😀 E1.0 grinning face\n", "x.txt")


def test_extraction_writes_class_folders_composited_on_white(packages, tmp_path):
    root, expected = packages
    images = tmp_path / "images"
    counts = emoji.write_emoji_folders(images, root)
    assert counts["skipped"] == 1  # the sequence this font draws as two glyphs side by side
    record = json.loads((images / "emoji.json").read_text())
    assert record["skipped"] == ["1f680-200d-1f681"] and "Apache-2.0" in record["licence"]
    for name, total in expected.items():
        assert counts["train"][name] + counts["test"][name] == total
        assert counts["test"][name] == round(0.3 * total)  # stratified: every class on both sides
    files = sorted(images.rglob("*.png"))
    assert len(files) == sum(expected.values())
    circle = np.asarray(Image.open(next((images / "train" / "smileys_emotion").glob("*.png"))))
    assert circle.shape == (32, 32, 3)
    assert (circle[0, 0] == 255).all()  # outside the circle: transparency became the fixed white background
    assert circle[16, 16].max() - circle[16, 16].min() > 100  # inside: a colour, not grey

    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert emoji.write_emoji_folders(images, root) == counts  # the same settings: kept, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    small = emoji.write_emoji_folders(images, root, limit=5)  # other settings: the other extraction's files go
    assert sorted(images.rglob("*.png")) != files
    assert len(list(images.rglob("*.png"))) == sum(small["train"].values()) + sum(small["test"].values()) == 15


def test_missing_packages_are_one_line_naming_the_apt_command(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["demo", "--workdir", str(tmp_path / "w"), "--source-root", str(tmp_path / "empty")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and not [line for line in lines[:-1] if "error" in line]
    err = lines[-1]
    assert "NotoColorEmoji.ttf (fonts-noto-color-emoji)" in err and "emoji-test.txt (unicode-data)" in err
    assert "apt-get install -y --no-install-recommends fonts-noto-color-emoji unicode-data" in err
    assert "--data digits" in err


def test_a_font_that_is_not_one_is_one_line_naming_it(packages, tmp_path):
    root, _ = packages
    broken = tmp_path / "root"
    (broken / emoji.FONT).parent.mkdir(parents=True)
    (broken / emoji.TABLE).parent.mkdir(parents=True)
    (broken / emoji.FONT).write_bytes(b"not a font" * 10)
    (broken / emoji.TABLE).write_bytes((root / emoji.TABLE).read_bytes())
    with pytest.raises(UserError, match=r"NotoColorEmoji.ttf: cannot be read as a font .*reinstall fonts-noto-color"):
        emoji.write_emoji_folders(tmp_path / "images", broken)
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("argv,message", [
    (["--data", "emoji", "--train", "x:train", "--test", "x:test"], "give one or the other"),
    (["--source-root", "/", "--train", "x:train", "--test", "x:test"], "give one or the other"),
    (["--data", "digits", "--source-root", "/"], "--data digits does not read it"),
])
def test_conflicting_data_options_are_refused(tmp_path, capsys, argv, message):
    assert main(["demo", "--workdir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_parser_offers_every_data_set():
    import argparse

    from ssl_vit.commands.demo import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "data")
    assert tuple(action.choices) == tuple(DATASETS)


@pytest.mark.timeout(240)
def test_quick_demo_on_emoji_reports_colour_data_and_raw_pixels(packages, tmp_path, capsys):
    root, expected = packages
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--quick", "--source-root", str(root),
                 "model.name=vit_nano_patch4"]) == 0
    assert str(work / "report.md") in capsys.readouterr().out
    info = json.loads((work / "shards_emoji" / "_info.json").read_text())
    assert info["splits"]["train"]["class_names"] == sorted(expected)
    assert not (work / "images").exists() and not (work / "shards").exists()  # the digits' folders stay apart
    summary = json.loads((work / "summary.json").read_text())
    assert summary["data"]["name"] == "emoji" and "Apache-2.0" in summary["data"]["licence"]
    pixels = summary["raw_pixels"]["fewshot"]
    assert all(isinstance(pixels[s], float) and 0 <= pixels[s] <= 100 for s in ("1", "5", "10"))
    report = (work / "report.md").read_text()
    assert report.startswith("# ssl_vit demo: masked patch prediction on Unicode's emoji in colour")
    assert "Licence: Noto Color Emoji" in report
    assert re.search(r"10-shot against raw pixels \+ least squares: \d+\.\d% vs \d+\.\d%", report)
