"""ssl-vit-shards build from tables: parquet files, a folder of them (the Hub's layout), a `datasets` save_to_disk folder.

The tables are written here with pyarrow alone, in the layouts `datasets` writes (no `datasets` dependency): an
`image` struct `{bytes, path}` and an int64 `label` whose ClassLabel names sit in the arrow schema's metadata key
`huggingface` as `{"info": {"features": ...}}` (parquet from `push_to_hub`, as ImageNet-1k is held on the Hub), or
in `dataset_info.json` beside `state.json` and `data-0000k-of-0000n.arrow` IPC streams (`save_to_disk`).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow as pa  # the `test` extra brings it: a missing pyarrow fails here rather than skipping
import pyarrow.parquet as pq
import pytest
from imagegen import image_bytes, make_image_folder, noise_image
from test_data_tools_resume import OPTS, _start_and_kill  # the one way the data_tools tests kill a build mid-shard
from test_data_tools_support import read_split, run_cli, visible_files

from data_tools import table_io, table_rows
from data_tools.build import build_split
from data_tools.cli import main

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature, as stored
NAMES = ["zebra", "apple", "mango"]  # ClassLabel order, which is not the sorted order: it must be kept


def hf_metadata(names: list[str] | None = NAMES, image: str = "image", label: str = "label") -> dict:
    """The schema metadata `datasets` writes: {"huggingface": {"info": {"features": ...}}}."""
    features = {image: {"_type": "Image"}}
    if names is not None:
        features[label] = {"names": names, "_type": "ClassLabel"}
    return {"huggingface": json.dumps({"info": {"features": features}, "fingerprint": "f00d"})}


def jpegs(count: int, seed: int, size: tuple[int, int] = (12, 10)) -> list[bytes]:
    rng = random.Random(seed)
    return [image_bytes(noise_image(rng, size), "JPEG", quality=90) for _ in range(count)]


def hf_table(count: int, *, seed: int = 0, prefix: str = "img", names: list[str] | None = NAMES,
             size: tuple[int, int] = (12, 10)) -> pa.Table:
    """`count` rows: image {bytes: a JPEG, path: PREFIX_i.JPEG}, label i % 3, with datasets' metadata."""
    images = [{"bytes": data, "path": f"{prefix}_{i:04d}.JPEG"} for i, data in enumerate(jpegs(count, seed, size))]
    table = pa.table({"image": pa.array(images, IMAGE), "label": pa.array([i % 3 for i in range(count)], pa.int64())})
    return table.replace_schema_metadata(hf_metadata(names))


def by_image(samples: list[dict]) -> dict[bytes, dict]:
    return {s["image"]: s for s in samples}


def test_parquet_file_with_class_labels(tmp_path):
    """Struct images + a ClassLabel: one sample per row, the image bytes as stored, cls = the row's label, the
    class names in ClassLabel order, keys from the (unique) image paths."""
    table = hf_table(23)
    src = tmp_path / "train.parquet"
    pq.write_table(table, src, row_group_size=5)
    out = tmp_path / "out"
    summary = build_split(src, out, "train", max_count=6, progress=False)
    assert (summary.written, summary.skipped, summary.shards) == (23, 0, 4)
    info = json.loads((out / "_info.json").read_text())["splits"]["train"]
    assert info["class_names"] == NAMES and info["num_samples"] == 23
    samples = read_split(out)
    rows = table.to_pylist()
    assert sorted(s["json"]["path"] for s in samples) == sorted(r["image"]["path"] for r in rows)
    stored = by_image(samples)
    for row in rows:
        sample = stored[row["image"]["bytes"]]  # passed through byte for byte
        assert sample["ext"] == "jpg" and sample["json"]["path"] == row["image"]["path"]
        assert sample["cls"] == row["label"] and sample["json"]["class"] == NAMES[row["label"]]
        assert (sample["json"]["width"], sample["json"]["height"]) == (12, 10)
    keys = [s["key"] for s in samples]
    assert len(set(keys)) == 23 and all(len(k) == 20 and "." not in k for k in keys)
    assert [s["json"]["path"] for s in samples] != [r["image"]["path"] for r in rows]  # shuffled


def test_a_split_built_next_to_it_shares_the_class_list(tmp_path):
    """A validation split of plain string labels (a subset, sorted differently) takes train's ClassLabel list,
    as a folder split does; so does an image folder."""
    pq.write_table(hf_table(9), tmp_path / "train.parquet")
    val = pa.table({"image": pa.array([{"bytes": b, "path": None} for b in jpegs(4, 1)], IMAGE),
                    "label": ["mango", "apple", "mango", "apple"]})
    pq.write_table(val, tmp_path / "val.parquet")
    out = tmp_path / "out"
    build_split(tmp_path / "train.parquet", out, "train", progress=False)
    build_split(tmp_path / "val.parquet", out, "validation", progress=False)
    make_image_folder(tmp_path / "folder", classes=("apple", "zebra"), per_class=2, mixed=False)
    build_split(tmp_path / "folder", out, "test", progress=False)
    splits = json.loads((out / "_info.json").read_text())["splits"]
    assert splits["train"]["class_names"] == splits["validation"]["class_names"] == splits["test"]["class_names"]
    assert sorted((s["json"]["class"], s["cls"]) for s in read_split(out, "validation")) == [
        ("apple", 1), ("apple", 1), ("mango", 2), ("mango", 2)]
    assert {s["json"]["class"]: s["cls"] for s in read_split(out, "test")} == {"apple": 1, "zebra": 0}
    # the paths are all null: keys come from the file name and row
    assert sorted(s["json"]["path"] for s in read_split(out, "validation")) == [f"val.parquet:{i}" for i in range(4)]


def test_folder_of_parquet_files_takes_the_split_named(tmp_path):
    """The Hub's `data/` holds several splits' files side by side: --split picks its own; a name none has is
    refused in one line naming the splits there."""
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        pq.write_table(hf_table(5, seed=k, prefix=f"train{k}"), data / f"train-0000{k}-of-00002.parquet",
                       row_group_size=2)
    pq.write_table(hf_table(3, seed=9, prefix="val"), data / "validation-00000-of-00001.parquet")
    (data / "README.md").write_text("not data\n")
    out = tmp_path / "out"
    assert build_split(data, out, "train", progress=False).written == 10
    assert build_split(data, out, "validation", progress=False).written == 3
    assert sorted(s["json"]["path"] for s in read_split(out, "validation")) == [f"val_{i:04d}.JPEG" for i in range(3)]
    assert {s["json"]["path"][:6] for s in read_split(out)} == {"train0", "train1"}
    with pytest.raises(Exception, match=r"several splits \(train, validation\) and none is named 'test'"):
        build_split(data, out, "test", progress=False)


def _save_to_disk(folder: Path, table: pa.Table, *, batch: int, files: int, features: dict) -> None:
    """What `Dataset.save_to_disk` writes: data-0000k-of-0000n.arrow (IPC streams of `batch`-row record batches),
    dataset_info.json with the features, state.json listing the files."""
    folder.mkdir(parents=True)
    per = -(-len(table) // files)
    names = [f"data-{k:05d}-of-{files:05d}.arrow" for k in range(files)]
    for k, name in enumerate(names):
        part = table.slice(k * per, per)
        with pa.ipc.new_stream(str(folder / name), part.schema) as writer:
            for b in part.to_batches(max_chunksize=batch):
                writer.write_batch(b)
    (folder / "dataset_info.json").write_text(json.dumps(
        {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}, indent=2))
    (folder / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": n} for n in names], "_fingerprint": "f00d", "_format_columns": None,
         "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": "train"}, indent=2))


def test_save_to_disk_folder(tmp_path):
    """Class names come from dataset_info.json (the arrow files here carry no metadata); a DatasetDict folder is
    refused with the split folder to give."""
    table = hf_table(14).replace_schema_metadata(None)
    features = json.loads(hf_metadata()["huggingface"])["info"]["features"]
    _save_to_disk(tmp_path / "dd" / "train", table, batch=3, files=2, features=features)
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    out = tmp_path / "out"
    assert build_split(tmp_path / "dd" / "train", out, "train", max_count=4, progress=False).written == 14
    assert json.loads((out / "_info.json").read_text())["splits"]["train"]["class_names"] == NAMES
    stored = by_image(read_split(out))
    for row in table.to_pylist():
        assert stored[row["image"]["bytes"]]["cls"] == row["label"]
        assert stored[row["image"]["bytes"]]["json"]["path"] == row["image"]["path"]
    with pytest.raises(Exception, match=r"is a DatasetDict saved with save_to_disk \(splits: train\); give one "
                                        r"split's folder as SRC, e\.g\. .*dd/train"):
        build_split(tmp_path / "dd", tmp_path / "out2", "train", progress=False)


def test_bytes_column_and_labels_without_class_label(tmp_path):
    """A plain binary column (no `datasets` metadata) and integer / string labels: class names are the values in
    natural order ("2" before "10"); keys come from FILE:ROW, as the table has no paths."""
    data = jpegs(6, 3)
    pq.write_table(pa.table({"jpg": data, "label": [10, 2, 1, 10, 2, 1]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"jpg": data, "label": ["class10", "class2", "class1"] * 2}), tmp_path / "text.parquet")
    out = tmp_path / "out"
    build_split(tmp_path / "ints.parquet", out, "ints", progress=False)
    build_split(tmp_path / "text.parquet", tmp_path / "out2", "text", progress=False)
    ints = json.loads((out / "_info.json").read_text())["splits"]["ints"]
    text = json.loads((tmp_path / "out2" / "_info.json").read_text())["splits"]["text"]
    assert ints["class_names"] == ["1", "2", "10"] and text["class_names"] == ["class1", "class2", "class10"]
    samples = by_image(read_split(out, "ints"))
    assert [samples[d]["cls"] for d in data] == [2, 1, 0, 2, 1, 0]
    assert [samples[d]["json"]["path"] for d in data] == [f"ints.parquet:{i}" for i in range(6)]
    build_split(tmp_path / "ints.parquet", tmp_path / "out3", "unlabelled", labels="none", progress=False)
    assert {(s["cls"], s["json"]["class"]) for s in read_split(tmp_path / "out3", "unlabelled")} == {(-1, None)}


def test_repeated_paths_fall_back_to_file_and_row_and_class_label_minus_one_is_unlabelled(tmp_path):
    """`datasets` keeps only an image's file name, so two classes' "0001.jpg" collide: keys then come from
    FILE:ROW. A ClassLabel -1 (datasets' "no label", e.g. a test split) is cls -1."""
    images = [{"bytes": b, "path": "0001.jpg"} for b in jpegs(4, 5)]
    table = pa.table({"image": pa.array(images, IMAGE), "label": pa.array([0, -1, 2, -1], pa.int64())})
    pq.write_table(table.replace_schema_metadata(hf_metadata()), tmp_path / "t.parquet")
    build_split(tmp_path / "t.parquet", tmp_path / "out", "train", progress=False)
    samples = by_image(read_split(tmp_path / "out"))
    got = [(samples[r["bytes"]]["json"]["path"], samples[r["bytes"]]["cls"], samples[r["bytes"]]["json"]["class"])
           for r in images]
    assert got == [("t.parquet:0", 0, "zebra"), ("t.parquet:1", -1, None), ("t.parquet:2", 2, "mango"),
                   ("t.parquet:3", -1, None)]
    assert len({s["key"] for s in samples.values()}) == 4


def test_label_outside_the_class_label_names_is_one_line(tmp_path, capsys):
    table = pa.table({"image": pa.array([{"bytes": b, "path": None} for b in jpegs(3, 1)], IMAGE),
                      "label": pa.array([0, 1, 7], pa.int64())}).replace_schema_metadata(hf_metadata())
    pq.write_table(table, tmp_path / "t.parquet")
    assert main(["build", str(tmp_path / "t.parquet"), str(tmp_path / "out"), "--split", "train", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: t.parquet row 2: label 7 is not one of the 3 ClassLabel names of column 'label' "
                   "(0 … 2, or -1 for none)\n")


def test_undecodable_and_missing_images_are_skipped_and_listed(tmp_path, capsys):
    """A truncated JPEG, random bytes, a null image and a path without bytes: listed with reasons and counted;
    the good rows are written."""
    good = jpegs(4, 2)
    images = [{"bytes": b, "path": f"good{i}.jpg"} for i, b in enumerate(good)] + [
        {"bytes": good[0][:-50], "path": "cut.jpg"}, {"bytes": b"not an image\n" * 50, "path": "notes.jpg"},
        None, {"bytes": None, "path": "elsewhere/only_a_path.jpg"}]
    table = pa.table({"image": pa.array(images, IMAGE), "label": pa.array([0, 1, 2, 0, 1, 2, 0, 1], pa.int64())})
    pq.write_table(table.replace_schema_metadata(hf_metadata()), tmp_path / "t.parquet", row_group_size=3)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "t.parquet"), str(out), "--split", "train", "--no-progress"]) == 0
    assert "4 written, 4 skipped" in capsys.readouterr().out
    rows = [line.split("\t") for line in (out / "train_skipped.tsv").read_text().splitlines()]
    reasons = dict(rows[1:])
    # a row without a unique path everywhere: rows are named FILE:ROW
    assert sorted(reasons) == [f"t.parquet:{i}" for i in range(4, 8)]
    assert "truncated" in reasons["t.parquet:4"] and reasons["t.parquet:5"].startswith("not an image")
    assert reasons["t.parquet:6"] == "no image (the image cell is empty)"
    assert "only a path (elsewhere/only_a_path.jpg)" in reasons["t.parquet:7"]
    assert sorted(s["image"] for s in read_split(out)) == sorted(good)


def test_a_damaged_file_is_one_line_naming_it(tmp_path, capsys):
    """Not parquet at all: refused while listing. One row group's image data damaged (the labels intact, so the
    listing passes): the build stops at it with the file and row group named, and leaves no partial shard."""
    (tmp_path / "junk.parquet").write_bytes(b"PAR1" + b"x" * 100)
    argv = ["build", str(tmp_path / "junk.parquet"), str(tmp_path / "o1"), "--split", "train", "--no-progress"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read {tmp_path / 'junk.parquet'}: Parquet magic bytes")
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": jpegs(12, 6), "label": [i % 2 for i in range(12)]}), src, row_group_size=4,
                   compression="snappy")
    chunk = pq.ParquetFile(src).metadata.row_group(2).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(src.read_bytes())
    for i in range(start + 20, start + chunk.total_compressed_size - 20):
        data[i] ^= 0x5A
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["build", str(src), str(out), "--split", "train", "--max-count", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {src} (row group 2): ") and err.count("\n") == 1
    assert "damaged or incomplete" in err and not list(out.glob("*.tmp"))


def test_no_image_column_is_one_line_listing_the_columns(tmp_path, capsys):
    pq.write_table(pa.table({"name": ["a", "b"], "label": [0, 1]}), tmp_path / "t.parquet")
    argv = ["build", str(tmp_path / "t.parquet"), str(tmp_path / "out"), "--split", "train", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "its columns: name: string, label: int64" in err and "--image-column" in err
    assert not (tmp_path / "out" / "_info.json").exists()


def test_a_folder_with_both_parquet_files_and_folders_is_refused_not_guessed(tmp_path, capsys):
    """An image folder with a stray table (or a table beside its images) is neither packed as the table nor as the
    images: one line naming both, nothing written."""
    src = tmp_path / "src"
    make_image_folder(src, per_class=2)
    pq.write_table(hf_table(3), src / "metadata.parquet")
    argv = ["build", str(src), str(tmp_path / "out"), "--split", "train", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds parquet files (metadata.parquet) and folders (" in err
    assert "give the parquet file" in err and not (tmp_path / "out" / "_info.json").exists()


def test_columns_named_when_guessing_fails(tmp_path, capsys):
    """Two binary columns and no usual names: refused, naming both; --image-column / --label-column choose. Options
    that only tables have are refused for a folder."""
    data = jpegs(4, 4)
    pq.write_table(pa.table({"pixels": data, "thumb": data, "kind": ["x", "y", "x", "y"]}), tmp_path / "t.parquet")
    argv = ["build", str(tmp_path / "t.parquet"), str(tmp_path / "out"), "--split", "train", "--no-progress"]
    assert main(argv) == 2
    assert "several columns that may hold images (pixels, thumb); choose one with --image-column" in \
        capsys.readouterr().err
    assert main(argv + ["--image-column", "pixels"]) == 2
    assert "no label column found" in capsys.readouterr().err
    assert main(argv + ["--image-column", "pixels", "--label-column", "nope"]) == 2
    assert "has no column 'nope' (--label-column); its columns: pixels: binary" in capsys.readouterr().err
    assert main(argv + ["--image-column", "pixels", "--label-column", "kind"]) == 0
    info = json.loads((tmp_path / "out" / "_info.json").read_text())["splits"]["train"]
    assert info["class_names"] == ["x", "y"] and info["num_samples"] == 4
    make_image_folder(tmp_path / "folder", classes=("a",), per_class=1, mixed=False)
    assert main(["build", str(tmp_path / "folder"), str(tmp_path / "o3"), "--split", "train", "--image-column", "x"]) == 2
    assert "name the columns of a table" in capsys.readouterr().err


def test_without_pyarrow_a_table_is_one_line_and_folders_still_build(tmp_path, capsys, monkeypatch):
    pq.write_table(hf_table(2), tmp_path / "t.parquet")
    make_image_folder(tmp_path / "folder", classes=("a", "b"), per_class=2, mixed=False)
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import pyarrow` now raises ImportError
    assert main(["build", str(tmp_path / "t.parquet"), str(tmp_path / "out"), "--split", "train"]) == 2
    assert capsys.readouterr().err == "error: reading parquet needs pyarrow: pip install 'ssl_vit[parquet]'\n"
    assert main(["build", str(tmp_path / "folder"), str(tmp_path / "out"), "--split", "train", "--no-progress"]) == 0


def test_memory_is_bounded_by_the_window_not_the_table(tmp_path, monkeypatch):
    """Each row group's image column is read exactly once, never the whole table, and at most the blocks of one
    shuffle window are held at a time (the window is made small here: ~2 row groups of a 40-group table)."""
    table = hf_table(120, size=(24, 20))
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)
    groups = pq.ParquetFile(tmp_path / "t.parquet").metadata.num_row_groups
    group_bytes = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0).column(0).total_uncompressed_size
    monkeypatch.setattr(table_rows, "WINDOW_BYTES", 2 * group_bytes)

    def refuse(*args, **kwargs):
        raise AssertionError("the whole table was read")

    for name in ("read", "iter_batches", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, name, refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    reads: list[tuple[int, tuple[str, ...]]] = []
    original = pq.ParquetFile.read_row_group

    def read_row_group(self, i, columns=None, **kwargs):
        reads.append((i, tuple(columns)))
        return original(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    live, peak = [0], [0]

    class Held(list):  # a block's images, counted while alive
        def __del__(self):
            live[0] -= 1

    cells = table_io.TableFile.image_cells

    def image_cells(self, number, image):
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        return Held(cells(self, number, image))

    monkeypatch.setattr(table_io.TableFile, "image_cells", image_cells)
    assert build_split(tmp_path / "t.parquet", tmp_path / "out", "train", max_count=7, progress=False).written == 120
    listing = [i for i, columns in reads if columns == ("label", "image.path")]
    images = [i for i, columns in reads if columns == ("image",)]
    assert sorted(listing) == sorted(images) == list(range(groups)) and len(reads) == 2 * groups
    assert 2 <= peak[0] <= 3 and live[0] == 0, peak  # a window (2 groups, or 3 when it crosses) and nothing after


@pytest.mark.timeout(120)
def test_same_bytes_for_any_workers_and_resume_after_sigkill(tmp_path):
    """--workers 1 and 2 write the same files; a build killed twice mid-shard resumes to the same files; another
    seed changes the order, not the keys."""
    src = tmp_path / "data"
    src.mkdir()
    for k in range(2):
        pq.write_table(hf_table(11, seed=k, prefix=f"p{k}"), src / f"part{k}.parquet", row_group_size=4)
    reference = tmp_path / "ref"
    build_split(src, reference, "train", max_count=2, progress=False)
    build_split(src, tmp_path / "w2", "train", max_count=2, workers=2, progress=False)
    assert visible_files(tmp_path / "w2") == visible_files(reference)
    build_split(src, tmp_path / "seed1", "train", max_count=2, seed=1, progress=False)
    order = [s["key"] for s in read_split(tmp_path / "seed1")]
    assert order != [s["key"] for s in read_split(reference)] and sorted(order) == sorted(
        s["key"] for s in read_split(reference))

    out = tmp_path / "out"
    _start_and_kill(src, out, hang_after=3, workers=2)
    assert len(json.loads((out / ".train.progress.json").read_text())["shards"]) == 3
    _start_and_kill(src, out, hang_after=2, workers=1)  # killed again, during the resumed run
    done = run_cli("build", str(src), str(out), *OPTS)
    assert done.returncode == 0 and "resumed after 5 finished shards" in done.stdout, done.stderr
    assert visible_files(out) == visible_files(reference)


def test_resume_after_the_table_changed_is_refused(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(hf_table(12), src, row_group_size=4)
    out = tmp_path / "out"
    _start_and_kill(src, out, hang_after=1, workers=1)
    pq.write_table(hf_table(13), src, row_group_size=4)
    refused = run_cli("build", str(src), str(out), *OPTS)
    assert refused.returncode == 2 and "changed since split 'train' was started" in refused.stderr


def test_pyarrow_is_an_extra_that_the_test_extra_brings():
    """data_tools needs pyarrow only for tables: it is the `parquet` extra, not a dependency, and CI gets it."""
    import tomllib

    from test_study_extras import ROOT, _name, resolved_extra

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "pyarrow" not in {_name(d) for d in project["dependencies"]}
    assert "pyarrow" in resolved_extra(project, "parquet") and "pyarrow" in resolved_extra(project, "test")
