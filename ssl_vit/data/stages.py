"""The stages of the train and eval pipelines, each a generator over the previous one's output.

train: one sample at a time (`train_reader.py` reads it at its place in the order) → train_crop;
eval: raw samples (shards.read_shard) → eval_items (decode + centre crop) → eval_batches.
All randomness comes from the `numpy.random.Generator`s passed in, never from global state.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch

from ssl_vit.errors import DataError

from .crops import center_crop, random_resized_crop
from .decode import decode_box, decode_crop, read_header
from .promises import parse_label

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
EvalItem = tuple[np.ndarray, int, str]  # (S, S, 3) uint8 pixels, label, key


def image_and_label(sample: dict) -> tuple[bytes, int]:
    """The encoded image and the class index of a raw sample (-1 when it carries no `cls`)."""
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        found = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(f"no image entry (expected one of {'/'.join(IMAGE_KEYS)}, found {found})")
    if not isinstance(data, bytes):  # a `tarstream.OversizeMember`: read past, never into memory
        raise ValueError(f"the image is {data}")
    return data, parse_label(sample.get("cls"))


class BadSampleTally:
    """Counts good and skipped samples per shard for one reader; stops the stream when the evidence says that
    more than `max_bad_fraction` of the samples are bad.

    Judging the raw fraction early is a coin flip (3 bad images among 1,300 stopped a run at 1% when one came
    20th). The test here is a sequential one-sided binomial test: with `bad` of `seen` samples bad, the chance
    that a stream whose true bad fraction is at most p = `max_bad_fraction` shows this many is at most
    exp(-seen · KL(bad/seen ‖ p)) (the Chernoff bound); the stream stops when that is below `ALPHA` (1e-9).
    So at p = 1%, 3 bad samples never stop it even when they come first (3 of 3: 1e-6), a mostly-bad shard
    stops within ~6 samples (5 of 5: 1e-10), and a stream at 5% stops after ~500. A bad fraction only just
    above the limit needs more samples to be told from noise (at 2%, ~2,000). A reader whose every sample is
    bad also stops after `min_samples` samples, whatever the limit (at max_bad_fraction=1 it would otherwise
    loop for ever, yielding nothing).
    """

    ALPHA = 1e-9

    def __init__(self, max_bad_fraction: float, min_samples: int, reader: str) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.reader = reader
        self.seen = 0
        self.bad = 0
        self.unreported = 0  # skipped since the last batch
        self.per_shard: dict[str, list] = {}  # url -> [seen, bad, first bad key, its error]

    def good(self, url: str) -> None:
        self.seen += 1
        self.per_shard.setdefault(url, [0, 0, None, None])[0] += 1

    def skip(self, url: str, key: str, error: Exception) -> None:
        self.seen += 1
        self.bad += 1
        self.unreported += 1
        entry = self.per_shard.setdefault(url, [0, 0, None, None])
        entry[0] += 1
        entry[1] += 1
        if entry[2] is None:
            entry[2], entry[3] = key, f"{type(error).__name__}: {error}"
        if self.too_many(self.bad, self.seen):  # evidence only grows with a bad sample: judge only then
            self._stop()

    def lost_shard(self, url: str, samples: int, error: Exception) -> None:
        """A shard skipped for the rest of this epoch (`shard_errors="skip"`): a warning names it. Each of its
        samples this reader was to read is then `missed`; they do not count as bad images."""
        print(f"warning: {self.reader} skips shard {url} for the rest of this epoch (it holds {samples} samples; "
              f"those due are missed, not replaced): {error}", file=sys.stderr, flush=True)

    def missed(self) -> None:
        """A sample due in a batch that could not be read (its shard is skipped): reported in `skipped`."""
        self.unreported += 1

    def describe(self) -> str:
        """What this reader has skipped so far, per shard (for an error that needs the context)."""
        bad = "; ".join(f"{url}: {b} of {n} bad (first: {key!r}, {err})"
                        for url, (n, b, key, err) in self.per_shard.items() if b)
        return bad or "its samples lie in shards skipped this epoch (data.shard_errors: skip)"

    def take_unreported(self) -> int:
        n, self.unreported = self.unreported, 0
        return n

    def too_many(self, bad: int, seen: int) -> bool:
        """Does `bad` of `seen` prove the bad fraction above the limit (or is every sample of many bad)?"""
        if bad == seen and seen >= self.min_samples:
            return True
        p, q = self.max_bad_fraction, bad / seen
        if q <= p:
            return False
        if p == 0:
            return True  # no bad sample is tolerated
        kl = q * math.log(q / p) + ((1 - q) * math.log((1 - q) / (1 - p)) if q < 1 else 0.0)
        return seen * kl > -math.log(self.ALPHA)

    def _stop(self) -> None:
        shards = "; ".join(
            f"{url}: {bad} of {seen} bad (first: {key!r}, {err})"
            for url, (seen, bad, key, err) in self.per_shard.items()
            if bad
        )
        raise DataError(
            f"{self.bad} of {self.seen} samples read by {self.reader} failed to decode: the bad fraction is above "
            f"max_bad_fraction {self.max_bad_fraction:.1%} beyond reasonable doubt: {shards}. "
            "Rebuild these shards with `ssl-vit-shards`, or raise max_bad_fraction"
        )


def train_crop(sample: dict, rng: np.random.Generator, *, image_size: int, scale: tuple[float, float],
               ratio: tuple[float, float], hflip: bool, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """Random-resized crop (+ flip) of one sample: ((S, S, 3) uint8 pixels, label). Raises on an unreadable
    image (the caller counts it). The crop box is drawn from the header's size alone, then the flip."""
    data, label = image_and_label(sample)
    header = read_header(data, max_pixels)
    box = random_resized_crop(header.width, header.height, rng, scale, ratio)
    flip = hflip and rng.random() < 0.5
    pixels = decode_box(data, box, image_size, header)
    return (pixels[:, ::-1] if flip else pixels), label  # (S, S, 3), mirrored left-right on a flip


def eval_items(
    samples: Iterable[dict], *, image_size: int, crop_pct: float, max_pixels: int | None = None
) -> Iterator[EvalItem]:
    """Centre crop of each sample. Evaluation needs every sample, so an unreadable one stops the stream."""
    for sample in samples:
        try:
            data, label = image_and_label(sample)
            pixels = decode_crop(data, lambda w, h: center_crop(w, h, crop_pct), image_size, max_pixels=max_pixels)
        except Exception as exc:  # noqa: BLE001
            raise DataError(
                f"sample {sample['__key__']!r} of shard {sample['__url__']} cannot be decoded "
                f"({type(exc).__name__}: {exc}); evaluation needs every sample: rebuild the shard with `ssl-vit-shards`"
            ) from None
        yield pixels, label, sample["__key__"]


def stack_images(pixels: list[np.ndarray], size: int) -> torch.Tensor:
    images = np.empty((len(pixels), 3, size, size), dtype=np.uint8)  # (B, 3, S, S)
    for i, p in enumerate(pixels):
        images[i] = p.transpose(2, 0, 1)  # (S, S, 3) -> (3, S, S)
    return torch.from_numpy(images)


def eval_batches(items: Iterator[EvalItem], batch_size: int, image_size: int) -> Iterator[dict]:
    """Batches of up to `batch_size`; the last one of each reader may be smaller."""
    while group := list(islice(items, batch_size)):
        yield {
            "image": stack_images([p for p, _, _ in group], image_size),
            "label": torch.tensor([label for _, label, _ in group], dtype=torch.int64),
            "key": [key for _, _, key in group],
        }
