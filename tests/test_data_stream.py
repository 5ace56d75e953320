"""Train and eval streams: batches, reproducibility, rank/worker splitting, bad samples and broken shards."""
from __future__ import annotations

import functools
import http.server
import io
import multiprocessing
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shardgen import PALETTE, Sample, encode, solid_samples, unique_samples, write_shards
from stream_fixtures import QuietHandler, take

from ssl_vit.data import ShardSet, TrainStreamOptions, build_eval_stream, build_train_stream, resolve_spec
from ssl_vit.data.split import reader_parts
from ssl_vit.data.tarstream import TarError, iter_members
from ssl_vit.errors import ConfigError, DataError

SMALL = {"batch_size": 8, "image_size": 16, "shuffle_buffer": 20}


def small(**options) -> TrainStreamOptions:
    return TrainStreamOptions(**{**SMALL, **options})


@pytest.fixture(scope="module")
def solid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("solid")
    write_shards(out, solid_samples(3, 10), shard_size=10, class_names=["r", "g", "b"])  # 3 shards × 10
    return out


@pytest.fixture(scope="module")
def unique_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unique")
    write_shards(out, unique_samples(45), shard_size=15)  # 3 shards: labels 0-14, 15-29, 30-44
    return out


def colour_class(images: torch.Tensor) -> list[int]:
    """Nearest PALETTE entry to each image's mean colour; images (B, 3, S, S) uint8."""
    means = images.float().mean(dim=(2, 3))  # (B, 3)
    return torch.cdist(means, torch.tensor(PALETTE, dtype=torch.float32)).argmin(1).tolist()


def test_train_batches_shapes_dtypes_and_labels(solid_dir: Path) -> None:
    for batch in take(build_train_stream(str(solid_dir), small(num_workers=0), seed=0), 6):
        assert batch["image"].shape == (8, 3, 16, 16) and batch["image"].dtype == torch.uint8
        assert batch["label"].shape == (8,) and batch["label"].dtype == torch.int64
        assert batch["skipped"].shape == () and batch["skipped"].dtype == torch.int64 and batch["skipped"] == 0
        assert colour_class(batch["image"]) == batch["label"].tolist()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_train_stream_is_reproducible_and_the_start_step_changes_it(solid_dir: Path, workers: int) -> None:
    def batches(**kw: int) -> list[dict]:
        args = {"seed": 3, "start_step": 0, **kw}
        return take(build_train_stream(str(solid_dir), small(num_workers=workers), **args), 4)

    def same(a: list[dict], b: list[dict]) -> bool:
        return all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"]) for x, y in zip(a, b))

    first = batches()
    assert same(first, batches())
    assert not same(first, batches(start_step=1))
    assert same(first[1:], batches(start_step=1)[:3])  # one micro-batch a step: step 2's batch, wherever it starts
    assert not same(first, batches(seed=4))


def test_flip_mirrors_about_half_and_only_when_asked(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # red left, blue right
    write_shards(tmp_path, [Sample(f"k{i:03d}", encode(img, "png"), 0, "png") for i in range(16)], shard_size=16)
    whole = {"crop_scale": (1.0, 1.0), "crop_ratio": (2.0, 2.0), "batch_size": 64, "image_size": 8, "num_workers": 0,
             "shuffle_buffer": 1000}

    def flipped(hflip: bool) -> int:
        stream = build_train_stream(str(tmp_path), TrainStreamOptions(hflip=hflip, **whole), seed=0)
        images = take(stream, 1)[0]["image"]
        return int((images[:, 2, 4, 0] > images[:, 0, 4, 0]).sum())  # blue on the left edge

    assert flipped(False) == 0
    assert 16 <= flipped(True) <= 48


@pytest.mark.timeout(60)
def test_zero_workers_reads_as_one_worker(solid_dir: Path) -> None:
    a = take(build_train_stream(str(solid_dir), small(num_workers=0), seed=1), 3)
    b = take(build_train_stream(str(solid_dir), small(num_workers=1), seed=1), 3)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


@pytest.mark.timeout(90)
def test_two_ranks_two_workers_three_shards_are_endless_and_each_epoch_is_a_permutation(unique_dir: Path) -> None:
    by_position: dict[int, int] = {}
    for rank in (0, 1):
        options = TrainStreamOptions(num_workers=2, batch_size=4, image_size=8, shuffle_buffer=20)
        stream = build_train_stream(str(unique_dir), options, seed=0, rank=rank, world_size=2)
        batches = take(stream, 30)  # 240 positions of a 45-sample split: five epochs, nobody runs dry
        assert len(batches) == 30
        for b in batches:
            assert b["read"].all() and len(b["label"]) == 4
            by_position.update(zip(b["positions"].tolist(), b["label"].tolist()))
    assert sorted(by_position) == list(range(240))  # the two ranks' slices tile the global batches
    for epoch in range(5):  # sample i carries label i: every epoch holds each sample exactly once
        assert sorted(by_position[p] for p in range(45 * epoch, 45 * epoch + 45)) == list(range(45))
    assert [by_position[p] for p in range(45)] != [by_position[p] for p in range(45, 90)]  # shuffled anew


@pytest.mark.timeout(90)
@pytest.mark.parametrize("world_size,workers", [(2, 2), (1, 0), (1, 2)])
def test_eval_sees_every_sample_exactly_once(unique_dir: Path, world_size: int, workers: int) -> None:
    keys: list[str] = []
    for rank in range(world_size):
        stream = build_eval_stream(
            str(unique_dir), batch_size=4, image_size=8, rank=rank, world_size=world_size, num_workers=workers
        )
        for batch in stream:
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 8, 8)
            assert [f"s{label:05d}" for label in batch["label"].tolist()] == batch["key"]
            assert colour_class(batch["image"]) == [label % len(PALETTE) for label in batch["label"].tolist()]
            keys += batch["key"]
    assert sorted(keys) == [f"s{i:05d}" for i in range(45)]


def test_eval_is_deterministic(solid_dir: Path) -> None:
    a = list(build_eval_stream(str(solid_dir), batch_size=7, image_size=12, num_workers=0))
    b = list(build_eval_stream(str(solid_dir), batch_size=7, image_size=12, num_workers=0))
    assert [len(x["key"]) for x in a] == [7, 7, 7, 7, 2]  # one reader: batches run across shards
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


@pytest.mark.timeout(60)
def test_http_and_pipe_urls(unique_dir: Path) -> None:
    handler = functools.partial(QuietHandler, directory=str(unique_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/train-{{000000..000002}}.tar"
        keys = [k for b in build_eval_stream(url, batch_size=16, image_size=8, num_workers=0) for k in b["key"]]
        assert sorted(keys) == [f"s{i:05d}" for i in range(45)]
    finally:
        server.shutdown()
    pipe = f"pipe:cat {unique_dir}/train-{{000000..000002}}.tar"
    assert sum(len(b["key"]) for b in build_eval_stream(pipe, batch_size=16, image_size=8, num_workers=0)) == 45


def _shard_with(tmp_path: Path, bad: dict[int, Sample], n: int) -> Path:
    samples = [bad.get(i, s) for i, s in enumerate(unique_samples(n))]
    write_shards(tmp_path, samples, shard_size=n)
    return tmp_path


def test_bad_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    bad = {10: Sample("s00010", b"\xff\xd8\xff garbage", 10), 25: Sample("s00025", b"no image here", 25, ext="txt")}
    shards = _shard_with(tmp_path, bad, 40)  # 2 of 40 bad; at most 2 of 26 (7.7%) seen at any time
    options = TrainStreamOptions(batch_size=38, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.1)
    stream = build_train_stream(str(shards), options, seed=0)
    batches = take(stream, 3)
    # stored order (no shuffle): positions 0..37, then 38..75 (epoch 2 from 40 on), 76..113; each holds both
    assert [int(b["skipped"]) for b in batches] == [2, 2, 2]
    assert sorted(batches[0]["label"].tolist()) == [i for i in range(38) if i not in bad]  # left out, not replaced
    assert [b["read"].tolist().count(False) for b in batches] == [2, 2, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_bad_samples_stop_with_the_shard_named(tmp_path: Path, workers: int) -> None:
    shards = _shard_with(tmp_path, {i: Sample(f"s{i:05d}", b"junk", i) for i in range(0, 30, 3)}, 30)
    options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=workers, shuffle_buffer=0,
                                 max_bad_fraction=0.05)
    stream = build_train_stream(str(shards), options, seed=0)
    # a third bad at 5%: the evidence suffices after ~50 samples (tests/test_bad_fraction.py)
    expected = r"\d+ of \d+ samples .* failed to decode.*train-000000\.tar: \d+ of \d+ bad"
    with pytest.raises(DataError, match=expected) as info:
        take(stream, 100)
    assert "Traceback" not in str(info.value)
    stream.close()


def test_all_bad_samples_stop_even_when_almost_any_fraction_is_allowed(tmp_path: Path) -> None:
    shards = _shard_with(tmp_path, {i: Sample(f"s{i:05d}", b"junk", i) for i in range(6)}, 6)
    options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=1000, max_bad_fraction=0.99)
    stream = build_train_stream(str(shards), options, seed=0)
    with pytest.raises(DataError, match=r"20 of 20 samples"):
        take(stream, 10)  # empty micro-batches until the evidence suffices


def test_eval_refuses_a_bad_sample(tmp_path: Path) -> None:
    shards = _shard_with(tmp_path, {4: Sample("s00004", b"junk", 4)}, 8)
    with pytest.raises(DataError, match=r"sample 's00004' of shard .*train-000000\.tar cannot be decoded"):
        list(build_eval_stream(str(shards), batch_size=4, image_size=8, num_workers=0))


@pytest.mark.timeout(60)
def test_truncated_shards_are_named(tmp_path: Path) -> None:
    write_shards(tmp_path, unique_samples(10), split="a", shard_size=10)
    write_shards(tmp_path, unique_samples(5), split="b", shard_size=5)
    shard = tmp_path / "a-000000.tar"
    shutil.copy(tmp_path / "b-000000.tar", shard)  # a valid tar that ends early: only the count can tell
    with pytest.raises(DataError, match=r"a-000000\.tar holds 5 samples but _info.json says 10"):
        take(build_train_stream(f"{tmp_path}:a", small(num_workers=2), seed=0), 3)
    shard.write_bytes((tmp_path / "b-000000.tar").read_bytes()[:3000])  # cut inside a member
    with pytest.raises(DataError, match=r"shard .*a-000000\.tar is unreadable after \d samples"):
        list(build_eval_stream(f"{tmp_path}:a", batch_size=4, image_size=8, num_workers=2))


@pytest.mark.timeout(60)
def test_missing_shard_is_named_without_hanging(unique_dir: Path, tmp_path: Path) -> None:
    urls = (str(unique_dir / "train-000000.tar"), str(tmp_path / "gone-000001.tar"))
    with pytest.raises(DataError, match=r"cannot open shard .*gone-000001\.tar"):
        take(build_train_stream(ShardSet(urls), small(num_workers=2), seed=0), 10)
    with pytest.raises(DataError, match=r"shard pipe:cat .*gone\.tar is unreadable"):
        list(build_eval_stream(f"pipe:cat {tmp_path}/gone.tar", batch_size=4, image_size=8, num_workers=0))


def test_more_ranks_than_samples_still_read_their_slice(unique_dir: Path) -> None:
    one = ShardSet((str(resolve_spec(str(unique_dir)).urls[0]),), shard_lengths=None)
    # 15 samples over 16 ranks: each rank reads its slice of every global batch of 16 (one sample wraps round)
    batch = take(build_train_stream(one, small(num_workers=0, batch_size=1), seed=0, rank=15, world_size=16), 1)[0]
    assert batch["positions"].tolist() == [15] and batch["read"].tolist() == [True] and len(batch["label"]) == 1


@pytest.mark.timeout(60)
def test_close_stops_workers_is_idempotent_and_global_rng_is_untouched(solid_dir: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    before = len(multiprocessing.active_children())
    stream = build_train_stream(str(solid_dir), small(num_workers=2), seed=0)
    iterator: Iterator[dict] = iter(stream)
    next(iterator)
    assert len(multiprocessing.active_children()) == before + 2
    stream.close()
    stream.close()
    assert len(multiprocessing.active_children()) == before
    assert torch.equal(torch.get_rng_state(), state)


def test_invalid_arguments_are_config_errors(solid_dir: Path) -> None:
    with pytest.raises(ConfigError, match="rank 2 of 2"):
        build_train_stream(str(solid_dir), small(), seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="data.crop_scale"):
        build_train_stream(str(solid_dir), small(crop_scale=(0.5, 0.2)), seed=0)
    with pytest.raises(ConfigError, match="need seed >= 0, start_step >= 0 and accumulation >= 1"):
        build_train_stream(str(solid_dir), small(), seed=-1)


def test_reader_parts_partition_every_sample() -> None:
    lengths = [5, 1, 7, 3, 8, 2, 6]
    for num_shards in range(1, 8):
        for readers in range(1, 10):
            owned = [
                (part.shard, i)
                for r in range(readers)
                for part in reader_parts(num_shards, readers, r)
                for i in range(lengths[part.shard])
                if i % part.stride == part.offset
            ]
            assert sorted(owned) == [(s, i) for s in range(num_shards) for i in range(lengths[s])]
            assert all(reader_parts(num_shards, readers, r) for r in range(readers))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_matches_tarfile(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "x.tar"
    files = {"a.jpg": b"x" * 700, f"{'d' * 60}/{'n' * 90}.cls": b"3", "b.json": b"", "c.txt": bytes(range(256)) * 5}
    with tarfile.open(path, "w", format=fmt) as tar:
        directory = tarfile.TarInfo("somedir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)  # not a regular file: passed over
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if fmt == tarfile.PAX_FORMAT:
                info.pax_headers = {"comment": "ünïcode"}
            tar.addfile(info, io.BytesIO(data))
    with path.open("rb") as stream:
        assert list(iter_members(stream)) == list(files.items())
    raw = path.read_bytes()
    with pytest.raises(TarError, match="truncated"):
        list(iter_members(io.BytesIO(raw[: len(raw) // 3])))
    with pytest.raises(TarError, match="checksum"):
        list(iter_members(io.BytesIO(raw[:148] + b"9" + raw[149:])))


