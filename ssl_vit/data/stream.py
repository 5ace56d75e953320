"""Train and eval streams: shards → uint8 batches, split by rank and by worker here, exactly once.

    stream = build_train_stream("/data/in1k:train", TrainStreamOptions(batch_size=256, image_size=224), seed=0,
                                rank=accelerator.process_index, world_size=accelerator.num_processes,
                                start_step=step, accumulation=accumulation)
    for batch in stream:            # {"image": uint8 (B, 3, S, S), "label": int64 (B,), "skipped": int64 (), …}
        images = batch["image"].to(accelerator.device, non_blocking=True)
        ...
    stream.close()                  # before the process group is destroyed

Do NOT pass these streams (or their DataLoaders) through `accelerator.prepare()`: they already split the
shards between ranks and workers (`split.reader_parts`); prepare() would shard or dispatch them a second
time. Move batches to the device yourself; scale and normalise them there (`normalize.normalize_uint8`).

Train stream: endless, in the global order (`global_order.py`): global step s trains on positions
[s·G, (s+1)·G) of a seeded order of the split (G = the global batch), a function of (seed, epoch, position)
alone, so any number of processes, micro-batch size, accumulation or loader workers trains on the same
samples in the same global batches, and a resume on any shape starts at a global position with nothing
skipped or repeated. Each rank reads only its own slice of each step, sample by sample at its offset
(`member_index.py`: each shard's index is built once and cached; remote shards are copied whole into a
node cache, `remote_copy.py`), and crops each sample with random numbers drawn from its place in the
order (`train_reader.py`). `num_workers=0` reads in the calling process and yields the same batches as any
number of workers. Each batch also carries `micro`, `positions`, `hashes` and `read` (what the trainer checks
and, on request, records: `train.record_samples`) and `part_keys`: the key hashes of shards a worker indexed,
for the trainer's check that no key occurs twice in the split (`split_keys.py`).

Eval stream: finite, deterministic (centre crop of crop_pct, no flip), every sample exactly once across all
ranks and workers. Ranks may get different numbers of samples: gather with padding.

Broken data: an undecodable sample is left out of its batch (never replaced), counted per shard, and reported
in the batch's `skipped`;
when the evidence shows a worker's bad fraction above `max_bad_fraction` (a one-sided binomial bound, see
`stages.BadSampleTally`; or when all of `min_samples_for_bad_fraction` samples were bad) the train stream
raises `DataError` naming the shards. The eval stream raises at the first undecodable sample. Decoding is
all or nothing (`data_tools.decoding`), and an image above `max_pixels` (default: Pillow's bomb limit) is
refused before it is decoded, so one file cannot drive a worker's memory. An unreadable,
truncated or miscounted shard raises `DataError` naming it, in both streams (see `shards.py`), and so does any
other broken promise of `_info.json` — a shard listed twice, a key read twice, a label outside the class list
(see `promises.py`).
"""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import ImageFile
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_tools.decoding import max_file_bytes
from ssl_vit.errors import ConfigError, DataError

from . import loader_workers
from .promises import SamplePromises
from .remote import RetryPolicy
from .shards import read_shard
from .spec import ShardSet, resolve_spec
from .split import Holdout, ShardPart, reader_parts
from .shard_access import ShardAccess
from .stages import eval_batches, eval_items
from .stream_options import TrainStreamOptions
from .train_reader import TrainPlace, TrainReader

Shards = ShardSet | str | Sequence[str]


def steps_per_epoch(num_samples: int | None, global_batch: int) -> int:
    """ceil(num_samples / global_batch): the epoch's last step takes a full batch from the endless stream.

    `global_batch` is the per-rank batch size times the number of ranks (times gradient-accumulation steps).
    """
    if num_samples is None:
        raise DataError(
            "the number of samples is unknown: use a shard directory with _info.json, or pass num_samples with a URL list"
        )
    if num_samples <= 0 or global_batch <= 0:
        raise ConfigError(f"num_samples and global_batch must be positive, got {num_samples} and {global_batch}")
    return -(-num_samples // global_batch)


class Stream:
    """Batches from a DataLoader whose workers build them (batch_size=None). `close()` stops the workers;
    `abandon()` kills them at once (one is blocked in a read: `loader_workers.py`).

    Iterating again restarts from the first batch (and shuts down the previous iteration's workers).
    """

    def __init__(self, dataset: IterableDataset, shards: ShardSet, *, num_workers: int, pin_memory: bool) -> None:
        self.shards = shards
        # DataLoader draws its workers' base seed from this generator, so it never advances the global torch RNG.
        self._loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=_ignore_stop_signals,  # the training process decides when to stop, and saves first
        )
        self._iterator: Iterator | None = None

    def __iter__(self) -> Iterator[dict]:
        self.close()
        self._iterator = iter(self._loader)
        loader_workers.end_at_exit(self._iterator)
        return self._batches(self._iterator)

    def _batches(self, iterator: Iterator) -> Iterator[dict]:
        for batch in iterator:
            if "error" in batch:
                self.close()
                raise DataError(batch["error"])
            yield batch
            if self._iterator is not iterator:  # closed (or restarted) while the caller held this generator
                return
        self.close()

    def dead_workers(self, wait: float = 0.0) -> list[int]:
        """The pids of this iteration's loader workers that have died (killed from outside, e.g. for memory),
        giving a dying one up to `wait` seconds to be seen dead (its sockets close a moment before it exits)."""
        workers = getattr(self._iterator, "_workers", None) or []
        deadline = time.monotonic() + wait
        for worker in workers:
            worker.join(timeout=max(deadline - time.monotonic(), 0.0))
        return [w.pid for w in workers if not w.is_alive() and w.exitcode not in (None, 0)]

    def close(self) -> None:
        """Shut the worker processes down (killing any that does not exit); safe to call more than once."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            loader_workers.end(iterator)

    def abandon(self) -> None:
        """Kill the worker processes now, without waiting for them: one is stuck (the trainer gave up on its
        batch after a stop request). Batches they had not sent are lost, as on any close."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            loader_workers.end(iterator, now=True)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_train_stream(
    shards: Shards,
    options: TrainStreamOptions,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    accumulation: int = 1,
    split: str | None = None,
    holdout: Holdout | None = None,
) -> Stream:
    """The endless training stream of `shards` (a ShardSet or a data spec; `split` for a directory spec), read
    and augmented as `options` says (checked when they were built: `stream_options.py`). The other arguments
    say which stream this is: `seed`, this `rank` of `world_size`, the `start_step` whose successor it begins
    at, and the `accumulation` steps of each step (global batch = options.batch_size × world_size ×
    accumulation); `holdout` keeps only the samples it keeps (`split.Holdout`). Which samples each step trains
    on does not depend on `world_size`, the batch size or the loader workers (`global_order.py`)."""
    if not isinstance(options, TrainStreamOptions):
        raise TypeError(f"options must be a TrainStreamOptions, got {type(options).__name__}")
    _check_rank(rank, world_size)
    if seed < 0 or start_step < 0 or accumulation < 1:
        raise ConfigError(f"need seed >= 0, start_step >= 0 and accumulation >= 1, got {seed}, {start_step}, "
                          f"{accumulation}")
    _check_pillow()
    resolved = resolve_spec(shards, split)
    counts = ShardAccess(resolved, holdout=holdout, policy=options.remote_policy(),
                         remote_cache_bytes=int(options.remote_cache_gb * 1e9)).counts(options.shard_errors == "skip")
    place = TrainPlace(seed=seed, rank=rank, world_size=world_size, start_step=start_step, accumulation=accumulation)
    dataset = TrainReader(resolved, options, place, holdout, counts)
    stream = Stream(dataset, resolved, num_workers=options.num_workers, pin_memory=options.pin_memory)
    stream.samples_per_epoch = sum(counts)
    return stream


def build_eval_stream(
    shards: Shards,
    *,
    batch_size: int,
    image_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    crop_pct: float = 0.875,
    pin_memory: bool = False,
    split: str | None = None,
    max_pixels: int | None = None,
    holdout: Holdout | None = None,
) -> Stream:
    """The finite evaluation stream of `shards`: each sample exactly once over all ranks and workers (of those
    `holdout` keeps, when given). Its options are checked here: evaluation recipes check theirs themselves."""
    if batch_size < 1 or image_size < 1 or num_workers < 0:
        raise ConfigError(
            f"need batch_size >= 1, image_size >= 1, num_workers >= 0; got {batch_size}, {image_size}, {num_workers}"
        )
    _check_rank(rank, world_size)
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise ConfigError(f"max_pixels must be a positive number of pixels (or None for Pillow's limit), got {max_pixels}")
    _check_pillow()
    resolved = resolve_spec(shards, split)
    dataset = _EvalDataset(resolved, _EvalOptions(batch_size, image_size, rank, world_size, crop_pct, max_pixels, holdout))
    return Stream(dataset, resolved, num_workers=num_workers, pin_memory=pin_memory)


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ConfigError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")


def _check_pillow() -> None:
    """Not an option but the process's state, so checked whenever a stream is built."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on, so truncated images would decode as grey; "
            "turn it off before building a stream (some library or script set it)")


def _ignore_stop_signals(_worker_id: int) -> None:
    """A launcher signals a worker's whole process group (a terminal's Ctrl-C, or its hangup, every foreground
    process): loader workers ignore stop signals, so the training process can still fetch batches while it saves
    its checkpoint. They exit when the loader shuts them down (or kills them: `loader_workers.py`), or on their
    own once the training process is gone."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _worker() -> tuple[int, int]:
    """(this worker's index, workers per rank); the main process counts as worker 0 of 1."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _read(shards: ShardSet, part: ShardPart, promises: SamplePromises, max_pixels: int | None,
          hashes: list[int] | None = None, remote: RetryPolicy | None = None) -> Iterator[dict]:
    """The samples of one shard part, each checked against what `_info.json` promises (promises.py; a remote
    shard's sha256 too); their key hashes are appended to `hashes` when given. A file too large for any image
    within `max_pixels` is read past, not into memory (as the build skips it: `max_file_bytes`). `remote`: the
    retries and rate limits of http(s) shards (None: `remote.RETRY`)."""
    expected = shards.shard_lengths[part.shard] if shards.shard_lengths is not None else None
    sha256 = shards.sha256[part.shard] if shards.sha256 is not None else None
    return promises.checked(read_shard(shards.urls[part.shard], stride=part.stride, offset=part.offset,
                                       expected=expected, max_member=max_file_bytes(max_pixels), sha256=sha256,
                                       policy=remote), hashes)


def _reported(batches: Iterator[dict]) -> Iterator[dict]:
    """A DataError inside a worker becomes an {"error": message} item, which `Stream` raises in the main
    process as the same one-line DataError (DataLoader would wrap it in the worker's traceback)."""
    try:
        yield from batches
    except DataError as exc:
        yield {"error": str(exc)}


class _ShardReader(IterableDataset):
    """One reader per (rank, worker): which parts of which shards it reads is decided here, exactly once."""

    def __init__(self, shards: ShardSet, rank: int, world_size: int) -> None:
        self.shards = shards
        self.rank = rank
        self.world_size = world_size

    def _parts(self) -> tuple[int, list[ShardPart]]:
        """(this worker's index, the shard parts of reader rank·workers + worker among world·workers)."""
        worker, workers = _worker()
        return worker, reader_parts(len(self.shards.urls), self.world_size * workers, self.rank * workers + worker)


@dataclass(frozen=True)
class _EvalOptions:
    batch_size: int
    image_size: int
    rank: int
    world_size: int
    crop_pct: float
    max_pixels: int | None
    holdout: Holdout | None = None


class _EvalDataset(_ShardReader):
    def __init__(self, shards: ShardSet, options: _EvalOptions) -> None:
        super().__init__(shards, options.rank, options.world_size)
        self.o = options

    def __iter__(self) -> Iterator[dict]:
        o = self.o
        _, parts = self._parts()
        promises = SamplePromises(self.shards.class_names)
        raw = (sample for part in parts for sample in _read(self.shards, part, promises, o.max_pixels)
               if o.holdout is None or o.holdout.keeps(sample["__key__"]))
        items = eval_items(raw, image_size=o.image_size, crop_pct=o.crop_pct, max_pixels=o.max_pixels)
        return _reported(eval_batches(items, o.batch_size, o.image_size))
