"""data_tools build: folder / unlabelled / CSV inputs, pass-through vs re-encoding, skips, options, CLI errors."""
from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from imagegen import make_image_folder, noise_image
from test_data_tools_support import by_path, read_split

from data_tools.build import build_split
from data_tools.cli import main
from data_tools.errors import DataToolsError

# imagegen.VARIANTS index → what the build must do with it
PASSED = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}  # RGB files of these formats: byte for byte


def _rgb(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _add_special_images(root: Path) -> None:
    """An EXIF-rotated JPEG, a 16-bit PNG, a half/fully transparent PNG, a TIFF and a GIF."""
    raw = Image.new("RGB", (40, 30), (0, 0, 255))
    raw.paste((255, 0, 0), (0, 0, 20, 15))  # red top-left quadrant of the stored (unrotated) pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    raw.save(root / "cat" / "rotated.jpg", "JPEG", quality=95, exif=exif.tobytes())
    Image.new("I;16", (8, 6), 60000).save(root / "cat" / "deep16.png")
    alpha = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    alpha.paste((255, 0, 0, 128), (0, 0, 4, 6))  # left half: red at alpha 128; right half: transparent
    alpha.save(root / "cat" / "alpha.png")
    Image.new("RGB", (10, 8), (10, 200, 30)).save(root / "dog" / "scan.tif")  # TIFF photo → JPEG
    Image.new("RGB", (10, 8), (10, 200, 30)).convert("P").save(root / "dog" / "anim.gif")  # GIF → PNG


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "images"
    make_image_folder(root, per_class=8)  # every class gets all 8 format/mode variants
    _add_special_images(root)
    return root


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    summary = build_split(folder, out, "train", max_count=5, progress=False)
    assert (summary.written, summary.skipped, summary.shards) == (29, 0, 6)
    assert summary.reencoded == 29 - 9  # 3 classes × (jpg, png, webp RGB) pass through
    return out


def test_folder_labels_and_info(folder, built):
    info = json.loads((built / "_info.json").read_text())["splits"]["train"]
    assert info["class_names"] == ["cat", "dog", "fox"] and info["num_classes"] == 3
    assert info["num_samples"] == 29 and info["shard_lengths"] == [5, 5, 5, 5, 5, 4]
    assert info["filenames"] == [f"train-{i:06d}.tar" for i in range(6)]
    for name, sha, size in zip(info["filenames"], info["sha256"], info["bytes"]):
        data = (built / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha and len(data) == size and size % 10240 == 0
    samples = read_split(built)
    assert sorted(by_path(samples)) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.*"))
    for s in samples:
        cls_name = s["json"]["path"].split("/")[0]
        assert s["json"]["class"] == cls_name and s["cls"] == info["class_names"].index(cls_name)
        assert len(s["key"]) == 20 and "." not in s["key"]
    assert len({s["key"] for s in samples}) == 29
    # the seeded shuffle mixes classes: the first shard is not one class
    assert len({s["cls"] for s in samples[:5]}) > 1


def test_pass_through_is_byte_identical_and_the_rest_is_rgb(folder, built):
    samples = by_path(read_split(built))
    passed = 0
    for path, s in samples.items():
        source = (folder / path).read_bytes()
        with Image.open(folder / path) as src_img:
            fmt, mode = src_img.format, src_img.mode
        img = _rgb(s["image"])
        assert img.mode == "RGB" and img.size == (s["json"]["width"], s["json"]["height"])
        if PASSED.get(path.rsplit(".", 1)[1]) == fmt and mode == "RGB" and path != "cat/rotated.jpg":
            assert s["image"] == source, path
            passed += 1
        else:
            assert s["image"] != source, path
            # photographs (JPEG, CMYK, TIFF) → JPEG; lossless or graphic sources (PNG, BMP, GIF, alpha) → PNG
            assert s["ext"] == ("jpg" if fmt in ("JPEG", "TIFF") else "png"), (path, fmt, mode)
    assert passed == 9


def test_exif_rotation_alpha_and_16bit(built):
    samples = by_path(read_split(built))
    rotated = samples["cat/rotated.jpg"]
    assert (rotated["json"]["width"], rotated["json"]["height"]) == (30, 40)  # upright: W and H swapped
    img = _rgb(rotated["image"])
    assert img.size == (30, 40) and "exif" not in img.info
    r, g, b = img.getpixel((25, 5))  # the red quadrant rotated clockwise: now top-right
    assert r > 200 and b < 60
    r, g, b = img.getpixel((5, 5))
    assert b > 200 and r < 60
    assert _rgb(samples["cat/deep16.png"]["image"]).getpixel((3, 3)) == (234, 234, 234)  # 60000 / 256
    alpha = _rgb(samples["cat/alpha.png"]["image"])
    assert alpha.getpixel((6, 3)) == (255, 255, 255)  # transparent → white
    r, g, b = alpha.getpixel((1, 3))  # red at alpha 128 over white: (255, 127, 127)
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_tar_metadata_and_plain_readers(built):
    info = json.loads((built / "_info.json").read_text())["splits"]["train"]
    with tarfile.open(built / info["filenames"][0]) as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
    listed = subprocess.run(["tar", "tf", str(built / info["filenames"][0])], capture_output=True, text=True,
                            check=True).stdout.split()
    assert len(listed) == 3 * info["shard_lengths"][0] and all(n.count(".") == 1 for n in listed)
    import webdataset as wds

    urls = [str(built / f) for f in info["filenames"]]
    seen = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        image = next(sample[e] for e in ("jpg", "png", "webp") if e in sample)
        assert image.mode == "RGB" and image.size == (sample["json"]["width"], sample["json"]["height"])
        assert sample["cls"] == info["class_names"].index(sample["json"]["class"])
        seen += 1
    assert seen == 29


def test_no_torch_import():
    """data_tools is a light tool: building and verifying must not drag in torch or ssl_vit."""
    code = "import sys, data_tools.cli; print(sorted(m for m in ('torch', 'ssl_vit') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_resize_shorter_never_upscales(tmp_path):
    src = tmp_path / "src"
    make_image_folder(src, classes=("a",), per_class=3, mixed=True)  # jpg, png, webp at 40×30
    Image.new("RGB", (16, 12), (9, 9, 9)).save(src / "a" / "small.png")
    summary = build_split(src, tmp_path / "out", "train", resize_shorter=20, progress=False)
    samples = by_path(read_split(tmp_path / "out"))
    assert summary.written == 4
    for path in ("a/img_000.jpg", "a/img_001.png", "a/img_002.webp"):
        s = samples[path]
        assert (s["json"]["width"], s["json"]["height"]) == (27, 20) == _rgb(s["image"]).size  # 40·20/30
    assert samples["a/img_000.jpg"]["ext"] == "jpg" and samples["a/img_001.png"]["ext"] == "png"
    assert samples["a/small.png"]["image"] == (src / "a" / "small.png").read_bytes()  # already small


def test_labels_none_any_nesting(tmp_path):
    rng = random.Random(1)
    for rel in ("x.jpg", "deep/er/y.png", "deep/z.webp"):
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        noise_image(rng, (12, 10)).save(tmp_path / "src" / rel)
    (tmp_path / "src" / ".hidden.jpg").write_bytes(b"ignored")
    summary = build_split(tmp_path / "src", tmp_path / "out", "unl", labels="none", progress=False)
    info = json.loads((tmp_path / "out" / "_info.json").read_text())["splits"]["unl"]
    assert (summary.written, summary.skipped) == (3, 0)
    assert info["class_names"] == [] and info["num_classes"] == 0
    samples = by_path(read_split(tmp_path / "out", "unl"))
    assert sorted(samples) == ["deep/er/y.png", "deep/z.webp", "x.jpg"]
    assert all(s["cls"] == -1 and s["json"]["class"] is None for s in samples.values())


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_csv_and_tsv_lists(tmp_path, suffix):
    rng = random.Random(2)
    (tmp_path / "lists" / "imgs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    noise_image(rng).save(tmp_path / "lists" / "imgs" / "1.jpg")
    noise_image(rng).save(tmp_path / "lists" / "imgs" / "2.png")
    noise_image(rng).save(tmp_path / "elsewhere" / "3.jpg")
    sep = "\t" if suffix == ".tsv" else ","
    rows = [("label", "path"), ("zebra", "imgs/1.jpg"), ("ant", "imgs/2.png"),
            ("zebra", str(tmp_path / "elsewhere" / "3.jpg")), ("ant", "imgs/missing.jpg")]
    listing = tmp_path / "lists" / f"list{suffix}"
    listing.write_text("".join(sep.join(r) + "\n" for r in rows))
    # SRC may be the list itself, or --list FILE with OUT alone
    assert main(["build", str(listing), str(tmp_path / "o1"), "--split", "train", "--no-progress"]) == 0
    assert main(["build", "--list", str(listing), str(tmp_path / "o2"), "--split", "train", "--no-progress"]) == 0
    for out in (tmp_path / "o1", tmp_path / "o2"):
        info = json.loads((out / "_info.json").read_text())["splits"]["train"]
        assert info["class_names"] == ["ant", "zebra"] and info["num_samples"] == 3
        samples = by_path(read_split(out))
        assert samples["imgs/1.jpg"]["cls"] == 1 and samples["imgs/2.png"]["cls"] == 0
        assert samples[str(tmp_path / "elsewhere" / "3.jpg")]["json"]["class"] == "zebra"
        assert samples["imgs/1.jpg"]["image"] == (tmp_path / "lists" / "imgs" / "1.jpg").read_bytes()
        skipped = (out / "train_skipped.tsv").read_text().splitlines()
        assert skipped[0] == "path\treason" and skipped[1].startswith("imgs/missing.jpg\tcannot read")


def test_class_order_is_natural_for_folders_and_lists(tmp_path):
    """"class2" before "class10" (as timm orders class folders), label "2" before "10" in a list."""
    make_image_folder(tmp_path / "src", classes=("class10", "class2", "class1"), per_class=1, mixed=False)
    build_split(tmp_path / "src", tmp_path / "o1", "train", progress=False)
    info = json.loads((tmp_path / "o1" / "_info.json").read_text())["splits"]["train"]
    assert info["class_names"] == ["class1", "class2", "class10"]
    assert by_path(read_split(tmp_path / "o1"))["class10/img_000.jpg"]["cls"] == 2
    rows = ["path,label"] + [f"src/class{c}/img_000.jpg,{c}" for c in (10, 2, 1)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    build_split(tmp_path / "list.csv", tmp_path / "o2", "train", progress=False)
    info = json.loads((tmp_path / "o2" / "_info.json").read_text())["splits"]["train"]
    assert info["class_names"] == ["1", "2", "10"]
    assert by_path(read_split(tmp_path / "o2"))["src/class10/img_000.jpg"]["cls"] == 2


def test_splits_of_one_out_share_the_class_list(tmp_path):
    """A test folder missing a class keeps train's indices (no silent shift); an unknown class is refused."""
    make_image_folder(tmp_path / "train", classes=("ant", "bee", "cat"), per_class=2, mixed=False)
    make_image_folder(tmp_path / "test", classes=("ant", "cat"), per_class=2, mixed=False, seed=1)
    make_image_folder(tmp_path / "val", classes=("ant", "dog"), per_class=1, mixed=False, seed=2)
    out = tmp_path / "out"
    build_split(tmp_path / "train", out, "train", progress=False)
    build_split(tmp_path / "test", out, "test", progress=False)
    splits = json.loads((out / "_info.json").read_text())["splits"]
    assert splits["test"]["class_names"] == splits["train"]["class_names"] == ["ant", "bee", "cat"]
    assert {s["json"]["class"]: s["cls"] for s in read_split(out, "test")} == {"ant": 0, "cat": 2}
    with pytest.raises(DataToolsError) as caught:
        build_split(tmp_path / "val", out, "val", progress=False)
    message = str(caught.value)
    assert "split 'val' has classes that split 'test'" in message and "'dog'" in message
    assert "val" not in json.loads((out / "_info.json").read_text())["splits"]
    # the same build again finds its split up to date: the adopted list is what a rerun compares against
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("test")}
    assert build_split(tmp_path / "test", out, "test", progress=False).up_to_date
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("test")} == before
