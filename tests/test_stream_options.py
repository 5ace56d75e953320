"""TrainStreamOptions: the train stream's options, each with one name, one default and one range, checked in one
place — by the stream's callers and by recipe loading alike, in the same words."""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from shardgen import Sample, unique_samples, write_shards

from ssl_vit.config import DataConfig, FinetuneData, load_config, load_finetune_config
from ssl_vit.data import StreamOptionError, TrainStreamOptions, build_train_stream, remote
from ssl_vit.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "pretrain" / "smoke.yaml"
FINETUNE = REPO / "recipes" / "finetune" / "smoke.yaml"

# (option, a value outside its range, the key the message names, the range it states)
OUT_OF_RANGE = [
    ("batch_size", 0, "data.batch_size", "an integer ≥ 1"),
    ("batch_size", 2.5, "data.batch_size", "an integer ≥ 1"),
    ("image_size", 0, "data.image_size", "an integer ≥ 1"),
    ("num_workers", -1, "data.num_workers", "an integer ≥ 0"),
    ("shuffle_buffer", -1, "data.shuffle_buffer", "an integer ≥ 0"),
    ("remote_cache_gb", 0, "data.remote_cache_gb", "a number of GB > 0"),
    ("crop_scale", (0.0, 1.0), "data.crop_scale", "0 < min ≤ max ≤ 1"),
    ("crop_scale", (0.5, 1.01), "data.crop_scale", "0 < min ≤ max ≤ 1"),
    ("crop_scale", (0.6, 0.5), "data.crop_scale", "0 < min ≤ max ≤ 1"),
    ("crop_scale", (0.5,), "data.crop_scale", "0 < min ≤ max ≤ 1"),
    ("crop_ratio", (0.0, 1.0), "data.crop_ratio", "0 < min ≤ max"),
    ("crop_ratio", (2.0, 1.0), "data.crop_ratio", "0 < min ≤ max"),
    ("crop_ratio", (1.0, float("inf")), "data.crop_ratio", "0 < min ≤ max"),
    ("hflip", "yes", "data.hflip", "true or false"),
    ("max_bad_fraction", -0.01, "data.max_bad_fraction", "[0, 1)"),
    ("max_bad_fraction", 1.0, "data.max_bad_fraction", "[0, 1)"),
    ("max_bad_fraction", float("nan"), "data.max_bad_fraction", "[0, 1)"),
    ("max_pixels", 0, "data.max_pixels", "a positive number of pixels or null"),
    ("shard_errors", "sometimes", "data.shard_errors", "'stop' or 'skip'"),
    ("check_unique_keys", 1, "data.check_unique_keys", "true or false"),
    ("remote_min_rate", -1, "data.remote_min_rate", "a number of bytes/s ≥ 0"),
    ("remote_min_rate", "fast", "data.remote_min_rate", "a number of bytes/s ≥ 0"),
    ("remote_rate_window_s", 0, "data.remote_rate_window_s", "a number of seconds > 0"),
    ("remote_shard_deadline_s", 0, "data.remote_shard_deadline_s", "a number of seconds > 0 or null"),
    ("remote_shard_deadline_s", float("inf"), "data.remote_shard_deadline_s", "a number of seconds > 0 or null"),
    ("min_samples_for_bad_fraction", 0, "min_samples_for_bad_fraction", "an integer ≥ 1"),
    ("pin_memory", None, "pin_memory", "true or false"),
]


@pytest.mark.parametrize("option,value,key,allowed", OUT_OF_RANGE, ids=lambda v: str(v))
def test_every_option_out_of_range_is_a_one_line_config_error_naming_it_and_its_range(option, value, key, allowed):
    with pytest.raises(ConfigError) as info:
        TrainStreamOptions(**{option: value})
    message = str(info.value)
    assert isinstance(info.value, StreamOptionError) and info.value.key == key
    assert message.startswith(f"{key} must be ") and allowed in message and "\n" not in message


def test_every_option_is_checked():
    """The table above covers every field, so a new option cannot slip in unchecked."""
    assert {f.name for f in dataclasses.fields(TrainStreamOptions)} == {option for option, *_ in OUT_OF_RANGE}


@pytest.mark.parametrize("option,value", [
    ("batch_size", 1), ("image_size", 1), ("num_workers", 0), ("shuffle_buffer", 0),
    ("crop_scale", (1.0, 1.0)), ("crop_scale", (1e-6, 1.0)), ("crop_ratio", (1.0, 1.0)), ("crop_ratio", (1e-3, 1e3)),
    ("max_bad_fraction", 0.0), ("max_bad_fraction", 0), ("max_bad_fraction", 0.999),
    ("max_pixels", 1), ("max_pixels", None), ("min_samples_for_bad_fraction", 1),
    ("shard_errors", "stop"), ("shard_errors", "skip"),
    ("remote_min_rate", 0), ("remote_rate_window_s", 0.001), ("remote_shard_deadline_s", None),
    ("remote_shard_deadline_s", 0.5),
])
def test_the_edges_inside_each_range_are_accepted(option, value):
    assert getattr(TrainStreamOptions(**{option: value}), option) == value


def test_pairs_become_tuples_of_floats_and_options_are_frozen():
    options = TrainStreamOptions(crop_scale=[1, 1], crop_ratio=[0.5, 2])  # as YAML gives them
    assert options.crop_scale == (1.0, 1.0) and options.crop_ratio == (0.5, 2.0)
    assert all(isinstance(v, float) for v in options.crop_scale + options.crop_ratio)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 2  # type: ignore[misc]
    assert hash(options) == hash(TrainStreamOptions(crop_scale=(1.0, 1.0), crop_ratio=(0.5, 2.0)))


def test_the_recipe_defaults_are_the_options_defaults():
    defaults = TrainStreamOptions()
    for data in (DataConfig(), FinetuneData()):
        shared = [f.name for f in dataclasses.fields(TrainStreamOptions) if hasattr(data, f.name)]
        assert len(shared) == 15  # all but pin_memory (the device's choice) and min_samples_for_bad_fraction
        assert all(getattr(data, name) == getattr(defaults, name) for name in shared)
        assert data.stream_options() == defaults
    assert DataConfig().stream_options(pin_memory=True).pin_memory is True


def _message(**options) -> str:
    with pytest.raises(StreamOptionError) as info:
        TrainStreamOptions(**options)
    return str(info.value)


@pytest.mark.parametrize("override,options", [
    ("data.max_bad_fraction=1.5", {"max_bad_fraction": 1.5}),
    ("data.max_bad_fraction=1.0", {"max_bad_fraction": 1.0}),
    ("data.batch_size=0", {"batch_size": 0}),
    ("data.shuffle_buffer=-1", {"shuffle_buffer": -1}),
    ("data.crop_scale=[0.5, 0.2]", {"crop_scale": (0.5, 0.2)}),
    ("data.crop_ratio=[0, 1]", {"crop_ratio": (0.0, 1.0)}),  # the loader reads a float pair
    ("data.max_pixels=0", {"max_pixels": 0}),
    ("data.remote_min_rate=-5", {"remote_min_rate": -5.0}),
    ("data.remote_shard_deadline_s=0", {"remote_shard_deadline_s": 0.0}),
])
def test_a_bad_recipe_value_fails_at_load_with_the_streams_message(override, options):
    expected = f"command line: {_message(**options)}"
    for load, recipe in ((load_config, SMOKE), (load_finetune_config, FINETUNE)):
        with pytest.raises(ConfigError) as info:
            load(recipe, [override])
        assert str(info.value) == expected


def test_the_remote_limits_of_a_recipe_reach_the_streams_retry_policy(monkeypatch):
    """The recipe sets the rate and the deadline; attempts and back-offs stay `remote.RETRY`'s, read when a reader
    starts (so a test's faster retries apply)."""
    cfg = load_config(SMOKE, ["data.remote_min_rate=500", "data.remote_rate_window_s=5",
                              "data.remote_shard_deadline_s=7200"])
    monkeypatch.setattr(remote, "RETRY", remote.RetryPolicy(attempts=2))
    policy = cfg.data.stream_options().remote_policy()
    assert (policy.min_rate, policy.rate_window, policy.deadline, policy.attempts) == (500.0, 5.0, 7200.0, 2)
    assert TrainStreamOptions().remote_policy() == remote.RetryPolicy(attempts=2)  # the defaults are RETRY's


def test_a_bad_value_in_a_recipe_file_names_the_file(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {SMOKE}\ndata:\n  num_workers: -2\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    assert str(info.value) == f"{recipe}: {_message(num_workers=-2)}"


def test_max_bad_fraction_at_its_edges(tmp_path: Path):
    """0 tolerates no undecodable image: the first one stops the stream. Just below 1 tolerates nearly any
    fraction, but a reader whose every one of `min_samples_for_bad_fraction` samples is bad still stops."""
    samples = unique_samples(12)
    samples[5] = Sample("s00005", b"junk", 5)
    write_shards(tmp_path / "one", samples, shard_size=12)
    write_shards(tmp_path / "all", [Sample(f"s{i:05d}", b"junk", i) for i in range(4)], shard_size=4)

    def first_batches(spec: Path, **options) -> list[dict]:
        options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=0, **options)
        with build_train_stream(str(spec), options, seed=0) as stream:
            return list(itertools.islice(iter(stream), 3))

    with pytest.raises(DataError, match=r"1 of \d+ samples .* above max_bad_fraction 0\.0%"):
        first_batches(tmp_path / "one", max_bad_fraction=0)
    assert sum(int(b["skipped"]) for b in first_batches(tmp_path / "one", max_bad_fraction=0.5)) == 1
    with pytest.raises(DataError, match=r"8 of 8 samples"):
        first_batches(tmp_path / "all", max_bad_fraction=0.999, min_samples_for_bad_fraction=8)


def test_the_stream_takes_only_options():
    with pytest.raises(TypeError, match="must be a TrainStreamOptions"):
        build_train_stream("/nowhere", {"batch_size": 4}, seed=0)  # type: ignore[arg-type]
