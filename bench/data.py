"""Data pipeline throughput: our train stream against the straightforward webdataset pipeline, and the shard
build's pass-through speed against `tar cf`.

    .venv/bin/python bench/data.py                      # defaults: 2,000 images, ~60-90 s on 2 cores
    .venv/bin/python bench/data.py --quick --json /tmp/data.json

Data: 500×375 photo-like JPEGs (smooth random fields and gradients plus sensor-like noise, quality 90; about
the size and entropy of an ImageNet JPEG), generated once and cached under bench/.cache/ (git-ignored).

Headline: images/s on one core (num_workers=0, everything in this process) of
  ours      build_train_stream(image_size=224, default scale/ratio, shuffle buffer 1000) → uint8 batches
  baseline  webdataset.WebDataset(urls, shardshuffle=False).decode("pil"), a plain PIL random-resized crop
            and flip, float tensor normalised on the CPU, batches of 64
in steady state (after one warm-up batch), interleaved (A B A B ...), median of the repetitions.
`ratio` = ours ÷ baseline (goal ≥ 1.3). `checks_ratio` = ours ÷ ours with the integrity checks switched off
(strict all-or-nothing decoding, `_info.json`'s promises per sample: keys once, labels in the class list), in
images per CPU-second of this process (one core, num_workers=0: all the work is here), so that other load on a
shared machine, which swings wall-clock rates by 2×, does not decide a 5% question; 5 interleaved pairs,
median (goal ≥ 0.95: the checks cost < 5% of the images/s).
Then both with 1 and 2 DataLoader workers (scaling), and `data_tools.build.build_split` (pass-through,
workers=1) against `tar cf` + fsync of the same files, the same durability (goal ≥ 0.5× its speed), and against
`tar cf` alone, whose archive is still in the page cache when it returns.
Results print as a table and are appended to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from shardgen import Sample, write_shards  # noqa: E402  (tests/shardgen.py: shards without data_tools)

from data_tools.progress_bar import progress_bar  # noqa: E402
from ssl_vit.data import TrainStreamOptions, build_train_stream, resolve_spec  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402  (bench/common.py)

CACHE = common.CACHE
WIDTH, HEIGHT, QUALITY, CLASSES, SHARD_SIZE = 500, 375, 90, 10, 250
IMAGE_SIZE, BATCH = 224, 64
MEAN = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
STD = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)


# --- data ---------------------------------------------------------------------------------------------------

def photo_like(rng: np.random.Generator, noise: np.ndarray) -> Image.Image:
    """A smooth random colour field (bicubic-upsampled 6×8 grid) + a gradient + noise: a photo's spectrum."""
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC)
    ramp = np.linspace(-40, 40, WIDTH)[None, :, None] * rng.uniform(-1, 1, 3)  # (1, W, 3)
    shift = rng.integers(0, noise.shape[0] - HEIGHT)
    pixels = np.asarray(field, dtype=np.float32) + ramp + noise[shift : shift + HEIGHT]  # (H, W, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(count: int) -> tuple[Path, Path]:
    """(image folder, shard directory) of `count` images; reused from bench/.cache when already complete."""
    root = CACHE / f"data-{count}"
    images, shards = root / "images", root / "shards"
    if (root / "complete").exists():
        return images, shards
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 5, (HEIGHT * 2, WIDTH, 3)).astype(np.float32)  # a bank of noise rows, sliced per image
    samples = []
    for i in progress_bar(range(count), desc="generating bench images", unit="img"):
        label = i % CLASSES
        path = images / f"class{label}" / f"img{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo_like(rng, noise).save(path, format="JPEG", quality=QUALITY)
        samples.append(Sample(f"img{i:06d}", path.read_bytes(), label, "jpg", (WIDTH, HEIGHT)))
    names = [f"class{k}" for k in range(CLASSES)]
    write_shards(shards, samples, split="train", shard_size=SHARD_SIZE, class_names=names)
    (root / "complete").touch()
    return images, shards


# --- the two pipelines ----------------------------------------------------------------------------------------

def plain_transform(img: Image.Image, rng: random.Random) -> torch.Tensor:
    """Random-resized crop + flip written plainly with PIL, then float and normalise on the CPU."""
    width, height = img.size
    for _ in range(10):
        area = width * height * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            img = img.crop((left, top, left + w, top + h))
            break
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    chw = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return (chw.float() / 255 - MEAN) / STD


def baseline_loader(urls: list[str], workers: int) -> torch.utils.data.DataLoader:
    rng = random.Random(0)
    dataset = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only, empty_check=False)
        .repeat()
        .decode("pil")
        .to_tuple("jpg", "cls")
        .map_tuple(lambda img: plain_transform(img, rng), int)
        .batched(BATCH)
    )
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)


def images_per_s(batches, count: int) -> float:
    """Steady-state images/s over `count` images, after one warm-up batch (worker start-up, shuffle-buffer
    fill: paid once per run, not per image)."""
    iterator = iter(batches)
    next(iterator)
    start, seen = time.perf_counter(), 0
    while seen < count:
        batch = next(iterator)
        seen += len(batch["label"] if isinstance(batch, dict) else batch[1])
    elapsed = time.perf_counter() - start
    close = getattr(batches, "close", None)
    if close:
        close()
    del iterator
    return seen / elapsed


def ours(shards: Path, workers: int, seed: int):
    options = TrainStreamOptions(batch_size=BATCH, image_size=IMAGE_SIZE, num_workers=workers, shuffle_buffer=1000)
    return build_train_stream(str(shards), options, seed=seed)


@contextlib.contextmanager
def checks_off():
    """The train stream as it was before the integrity checks (in this process: measure with num_workers=0):
    no per-sample promise check, and libjpeg-turbo's lenient mode."""
    import simplejpeg

    from ssl_vit.data import decode, train_reader

    class Unchecked:
        def __init__(self, class_names) -> None:
            pass

        def new_epoch(self) -> None:
            pass

        def checked(self, samples, hashes=None):
            return samples  # no key hashes recorded either: the split-wide check gets empty records

        def check_label(self, sample) -> None:
            pass

    def size(data: bytes, max_pixels: int | None = None) -> tuple[int, int]:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data, strict=False)
        return width, height

    def lenient(data: bytes, *, min_width: int = 0, min_height: int = 0):
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_width, min_height=min_height, strict=False)

    saved = train_reader.SamplePromises, decode.jpeg_size, decode.decode_jpeg
    train_reader.SamplePromises, decode.jpeg_size, decode.decode_jpeg = Unchecked, size, lenient
    try:
        yield
    finally:
        train_reader.SamplePromises, decode.jpeg_size, decode.decode_jpeg = saved


def images_per_cpu_s(stream, count: int) -> float:
    """Like `images_per_s`, in images per CPU-second of this process (num_workers=0 streams only)."""
    iterator = iter(stream)
    next(iterator)
    start, seen = time.process_time(), 0
    while seen < count:
        seen += len(next(iterator)["label"])
    elapsed = time.process_time() - start
    stream.close()
    return seen / elapsed


def isolated_check_cost(shards: Path, count: int, reps: int) -> dict:
    """The checks' own CPU cost per image, measured on their own so that machine load cannot hide or invent
    it: the promise check over `count` real samples, and strict minus lenient libjpeg-turbo decoding of the same
    images at the stream's reduced scale; interleaved, median of `reps`. Compared with one image's CPU cost in
    the stream (from `checks_cost`), this bounds what the checks take from the images/s."""
    import simplejpeg

    from ssl_vit.data.promises import SamplePromises
    from ssl_vit.data.shards import read_shard
    from ssl_vit.data.split_keys import SplitKeyLedger, part_record

    shard_set = resolve_spec(str(shards))
    samples = list(itertools.islice((s for u in shard_set.urls for s in read_shard(u)), count))
    datas = [s["jpg"] for s in samples]
    promise_s, strict_s, lenient_s, ledger_s = [], [], [], []

    def decode_all(strict: bool) -> float:
        start = time.process_time()
        for d in datas:
            height, width, _, _ = simplejpeg.decode_jpeg_header(d, strict=strict)
            simplejpeg.decode_jpeg(d, colorspace="RGB", min_width=width // 2, min_height=height // 2, strict=strict)
        return time.process_time() - start

    for rep in range(reps):
        start = time.process_time()
        hashes: list[int] = []
        for _ in SamplePromises(shard_set.class_names).checked(samples, hashes):  # as the train stream: hashes kept
            pass
        promise_s.append(time.process_time() - start)
        ledger, record = SplitKeyLedger(), part_record("shard", 0, 1, hashes)
        start = time.process_time()
        ledger.add([record])  # the first epoch: every sample new
        ledger.add([record])  # later epochs: every sample seen before
        ledger_s.append((time.process_time() - start) / 2)
        for strict in ((True, False) if rep % 2 == 0 else (False, True)):
            (strict_s if strict else lenient_s).append(decode_all(strict))
    n = len(samples)
    return {"promise_us": statistics.median(promise_s) / n * 1e6, "ledger_us": statistics.median(ledger_s) / n * 1e6,
            "strict_minus_lenient_us": (statistics.median(strict_s) - statistics.median(lenient_s)) / n * 1e6}


def checks_cost(shards: Path, count: int, reps: int) -> tuple[list[float], list[float]]:
    """Images per CPU-second with and without the integrity checks, interleaved (A B, B A, ...)."""
    checked, unchecked = [], []
    for rep in progress_bar(range(reps), desc="checks on/off, interleaved", unit="rep"):
        for off in ((False, True) if rep % 2 == 0 else (True, False)):
            with checks_off() if off else contextlib.nullcontext():
                (unchecked if off else checked).append(images_per_cpu_s(ours(shards, 0, rep), count))
    return checked, unchecked


# --- the shard build -------------------------------------------------------------------------------------------

def time_build(images: Path, reps: int) -> dict:
    """Seconds of `build_split` (pass-through, 1 worker; `check="full"`, which decodes every image, and the
    default `check="header"`) and of `tar cf` on the same folder, interleaved (common.interleaved: the order
    turns every repetition); median of `reps`.

    Two baselines: `tar cf` alone leaves its output in the page cache, while the build fsyncs every shard before
    it counts as written (a kill or power cut never leaves a shard that `_info.json` trusts half on disk), so
    `tar cf` + fsync of the archive is the same work with the same durability. Every run writes into a fresh
    folder: deleting the previous run's output (`overwrite`) is not part of either."""
    from data_tools.build import build_split

    size = sum(p.stat().st_size for p in images.rglob("*.jpg")) / 1e6
    runs = itertools.count()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:

        def build(check: str) -> Callable[[], None]:  # named explicitly: the default changed once and a row lied
            return lambda: build_split(images, Path(tmp) / f"{check}{next(runs)}", "train", labels="folder", seed=0,
                                       workers=1, progress=False, check=check)

        def tar(fsync: bool) -> Callable[[], None]:
            def run() -> None:
                archive = Path(tmp) / f"all{next(runs)}.tar"
                subprocess.run(["tar", "cf", str(archive), "-C", str(images), "."], check=True)
                if fsync:
                    with open(archive, "rb") as f:
                        os.fsync(f.fileno())
            return run

        times = common.interleaved({"tar": tar(False), "tar_fsync": tar(True), "full": build("full"),
                                    "header": build("header")}, reps=reps)
    tar_s, tar_fsync_s = statistics.median(times["tar"]), statistics.median(times["tar_fsync"])
    result = {"mb": size, "tar_mb_per_s": size / tar_s, "tar_fsync_mb_per_s": size / tar_fsync_s}
    for check in ("full", "header"):
        seconds = statistics.median(times[check])
        result[check] = {"seconds": seconds, "mb_per_s": size / seconds, "ratio": tar_s / seconds,
                         "ratio_fsync": tar_fsync_s / seconds}
    return result


# --- report ----------------------------------------------------------------------------------------------------

def table(r: dict) -> str:
    rows = ["| pipeline | workers | images/s | ours ÷ baseline |", "|---|---|---|---|"]
    ours_cell = f"{r['ours_images_per_s']:.0f} | **{r['ratio']:.2f}×** (goal ≥ 1.3)"
    rows.append(f"| ours (uint8 out) | 0 (1 core) | {ours_cell} |")
    rows.append(f"| baseline (wds + PIL + float) | 0 (1 core) | {r['baseline_images_per_s']:.0f} | |")
    for w, (a, b) in r["workers"].items():
        rows.append(f"| ours / baseline | {w} | {a:.0f} / {b:.0f} | {a / b:.2f}× |")
    rows.append(f"\nIntegrity checks (strict decoding, `_info.json` promises), images per CPU-second on one core: "
                f"on {r['checked_images_per_cpu_s']:.0f}, off {r['unchecked_images_per_cpu_s']:.0f}: on ÷ off = "
                f"**{r['checks_ratio']:.3f}×** (goal ≥ 0.95). Measured on their own (load cannot hide or invent it): "
                f"the promise check {r['isolated_checks']['promise_us']:.1f} µs and strict − lenient decoding "
                f"{r['isolated_checks']['strict_minus_lenient_us']:+.1f} µs per image, against "
                f"{r['isolated_checks']['per_image_us']:.0f} µs of CPU per image in the stream: "
                f"**{r['isolated_checks']['ratio']:.4f}×** the images/s. The split-wide key ledger costs the training "
                f"process {r['isolated_checks']['ledger_us']:.2f} µs per sample read (at checkpoints)")
    build = r["build"]
    for check in ("full", "header"):
        b = build[check]
        rows.append(
            f"\nShard build of {build['mb']:.0f} MB, pass-through, 1 worker, check={check}: {b['mb_per_s']:.0f} MB/s "
            f"vs `tar cf` + fsync (the build's durability) {build['tar_fsync_mb_per_s']:.0f} MB/s: "
            f"**{b['ratio_fsync']:.2f}×** (goal ≥ 0.5); vs `tar cf` into the page cache "
            f"{build['tar_mb_per_s']:.0f} MB/s: {b['ratio']:.2f}×"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the generated data set (cached)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    n_images = 400 if args.quick else args.images
    count, reps = (256, 1) if args.quick else (min(768, n_images), 3)
    torch.set_num_threads(1)
    images, shards = make_dataset(n_images)
    urls = list(resolve_spec(str(shards)).urls)

    ours_s, base_s = [], []
    for rep in progress_bar(range(reps), desc="1 core, interleaved", unit="rep"):
        ours_s.append(images_per_s(ours(shards, 0, rep), count))
        base_s.append(images_per_s(baseline_loader(urls, 0), count))
    checked_cpu, unchecked_cpu = checks_cost(shards, count, 1 if args.quick else 5)
    isolated = isolated_check_cost(shards, count, 1 if args.quick else 9)
    per_image_us = 1e6 / statistics.median(checked_cpu)
    isolated["per_image_us"] = per_image_us
    isolated["ratio"] = per_image_us / (per_image_us + max(0.0, isolated["promise_us"] + isolated["strict_minus_lenient_us"]))
    workers = {}
    for w in (1, 2):
        workers[w] = (images_per_s(ours(shards, w, 0), count), images_per_s(baseline_loader(urls, w), count))
    result = {
        "ratio": statistics.median(ours_s) / statistics.median(base_s),
        "ours_images_per_s": statistics.median(ours_s),
        "baseline_images_per_s": statistics.median(base_s),
        "ours_runs": ours_s,
        "baseline_runs": base_s,
        "checks_ratio": statistics.median(checked_cpu) / statistics.median(unchecked_cpu),
        "checked_images_per_cpu_s": statistics.median(checked_cpu),
        "unchecked_images_per_cpu_s": statistics.median(unchecked_cpu),
        "checked_cpu_runs": checked_cpu,
        "isolated_checks": isolated,
        "unchecked_cpu_runs": unchecked_cpu,
        "workers": workers,
        "build": time_build(images, 1 if args.quick else 5),
        "images": n_images,
        "count": count,
        "reps": reps,
        "command": " ".join(["python", "bench/data.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": common.machine_info("cpu"),
    }
    notes = (f"Load average {os.getloadavg()[0]:.2f} at the end (other work slows both sides alike). {n_images} "
             f"images 500×375 JPEG q90, crops 224, batches of {BATCH}, {count} images per measurement, median of "
             f"{reps} interleaved runs; the shard build: median of {1 if args.quick else 5} interleaved runs of "
             "`tar cf`, `tar cf` + fsync, `--check full` and `--check header`, each into a fresh folder.")
    common.finish(args, result, table(result), title="bench/data.py — train stream and shard build", notes=notes)
    return result


if __name__ == "__main__":
    main()
