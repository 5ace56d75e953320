"""Bad-data thresholds are statistics: the train stream stops only when the evidence says the bad fraction is
above `max_bad_fraction`, never on a few early bad samples, and still quickly on a mostly-bad shard."""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest

from shardgen import Sample, unique_samples, write_shards

from ssl_vit.data import TrainStreamOptions, build_train_stream
from ssl_vit.data.stages import BadSampleTally
from ssl_vit.errors import DataError


def _first_stop(bad_at: set[int], n: int, limit: float) -> int | None:
    """Feed n samples (those in bad_at bad) to a tally; the 1-based sample at which it stops, or None."""
    tally = BadSampleTally(limit, 20, "test")
    for i in range(n):
        try:
            tally.skip("shard", f"k{i}", ValueError("bad")) if i in bad_at else tally.good("shard")
        except DataError:
            return i + 1
    return None


def test_the_bound_by_hand() -> None:
    """5 of 5 at 1%: exp(-5 ln 100) = 1e-10 < 1e-9 stops; 4 of 4: 1e-8 does not; 6 of 7 does."""
    tally = BadSampleTally(0.01, 20, "test")
    assert tally.too_many(5, 5) and not tally.too_many(4, 4)
    kl = 6 / 7 * math.log(6 / 7 / 0.01) + 1 / 7 * math.log(1 / 7 / 0.99)
    assert 7 * kl > math.log(1e9) and tally.too_many(6, 7)
    assert not tally.too_many(1, 1000) and BadSampleTally(0.0, 20, "t").too_many(1, 1000)  # 0: none tolerated


@pytest.mark.parametrize("where", ["first", "spread", "last"])
def test_three_bad_among_1300_at_one_percent_never_stop(where: str) -> None:
    bad = {"first": {0, 1, 2}, "spread": {19, 650, 1299}, "last": {1297, 1298, 1299}}[where]
    assert _first_stop(bad, 1300, 0.01) is None


def test_a_90_percent_bad_shard_stops_within_ten_samples_and_five_percent_within_600() -> None:
    assert _first_stop({i for i in range(100) if i % 10}, 100, 0.01) <= 10
    assert _first_stop({i for i in range(2000) if i % 20 == 0}, 2000, 0.01) <= 600


@pytest.mark.timeout(120)
def test_the_train_stream_reads_an_epoch_with_3_bad_of_1300_first_and_stops_a_mostly_bad_shard(tmp_path: Path) -> None:
    samples = unique_samples(1300, size=(16, 12))
    for i in range(3):  # the worst case: the bad ones come first
        samples[i] = Sample(f"s{i:05d}", b"\xff\xd8\xff damaged", i)
    write_shards(tmp_path / "ok", samples, shard_size=1300)
    options = TrainStreamOptions(batch_size=100, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.01)
    stream = build_train_stream(str(tmp_path / "ok"), options, seed=0)
    try:
        batches = list(itertools.islice(iter(stream), 14))  # 1,400 good samples: the epoch, and 3 bad again
    finally:
        stream.close()
    assert sum(int(b["skipped"]) for b in batches) == 6  # 6 of 1,406, never stopped

    mostly_bad = [Sample(f"s{i:05d}", b"junk", i) if i % 10 else s for i, s in enumerate(unique_samples(200))]
    write_shards(tmp_path / "bad", mostly_bad, shard_size=200)
    options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.01)
    stream = build_train_stream(str(tmp_path / "bad"), options, seed=0)
    with pytest.raises(DataError, match=r"train-000000\.tar") as info:
        list(itertools.islice(iter(stream), 50))
    stream.close()
    seen = int(re.search(r"(\d+) of (\d+) samples", str(info.value)).group(2))
    assert seen <= 10, str(info.value)
