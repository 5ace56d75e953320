"""Property-based: random and mutated bytes in the shard reader, the streams, `ssl-vit-shards verify` and the
data spec give data or our own clear errors (TarError / DataError / a verify problem with exit 1), never another
exception type and never a hang.

Mutations hit a real pax/ustar shard at random offsets; with `fix_checksums` the headers' checksums are recomputed
afterwards, so a mutated size, type or pax record reaches the parsing behind the checksum (a pax record whose
length was "0" looped for ever before tarstream checked it).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagegen import noise_image
from shardgen import encode

from data_tools.cli import main as shards_main
from ssl_vit.data import TrainStreamOptions, build_eval_stream, build_train_stream, resolve_spec
from ssl_vit.data.shards import read_shard
from ssl_vit.data.tarstream import TarError, iter_members
from ssl_vit.errors import DataError

FUZZ = settings(max_examples=100, deadline=None, database=None,  # no .hypothesis/ examples in the repository
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _shard() -> tuple[bytes, list[int]]:
    """A 3-sample shard in the documented layout, pax headers included; and the offsets of its header blocks."""
    buf = io.BytesIO()
    rng = random.Random(0)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):
            key = f"{'k' * 90}{i:03d}" if i == 1 else f"s{i:05d}"  # sample 1's names need a pax `path` record
            meta = json.dumps({"path": f"{key}.jpg", "class": None, "width": 16, "height": 16}).encode()
            for ext, data in (("cls", str(i).encode()), ("jpg", encode(noise_image(rng, (16, 16)))), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.pax_headers = {"comment": f"sample {i}"}  # a pax header before every member
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    headers, offset = [], 0
    while raw[offset:offset + 512] != bytes(512):
        headers.append(offset)
        size = int(raw[offset + 124:offset + 136].split(b"\0")[0].strip() or b"0", 8)
        offset += 512 + -(-size // 512) * 512
    return raw, headers


SHARD, HEADERS = _shard()


def _with_checksums(raw: bytearray, headers: list[int]) -> bytearray:
    for h in headers:
        if h + 512 <= len(raw):
            block = raw[h:h + 512]
            block[148:156] = b" " * 8
            raw[h + 148:h + 156] = b"%06o\0 " % sum(block)
    return raw


@dataclass(frozen=True)
class Mutation:
    """Byte overwrites of SHARD, then optionally recomputed header checksums and a cut (a short repr on failure)."""

    overwrites: tuple[tuple[int, int], ...] = ()
    fix_checksums: bool = False
    cut: int | None = None

    def apply(self) -> bytes:
        raw = bytearray(SHARD)
        for offset, value in self.overwrites:
            if offset < len(raw):
                raw[offset] = value
        if self.fix_checksums:
            raw = _with_checksums(raw, HEADERS)
        return bytes(raw if self.cut is None else raw[:self.cut])


anywhere = st.tuples(st.integers(0, len(SHARD) - 1), st.integers(0, 255))
in_fields = st.builds(  # aimed at headers and pax records: sizes, types, record lengths
    lambda header, field, value: (header + field, value), st.sampled_from(HEADERS),
    st.sampled_from([124, 125, 130, 134, 156, 512, 513, 514]), st.sampled_from(b"0123456789 -x\0\xff"))
mutations = st.builds(Mutation, st.lists(anywhere | in_fields, max_size=8).map(tuple), st.booleans(),
                      st.none() | st.integers(0, len(SHARD)))
PAX_LENGTH_ZERO = Mutation(((512, ord("0")), (513, ord("0"))))  # "20 comment=sample 0" → "00 comment=…"
CUT_AT_A_HEADER = Mutation(cut=HEADERS[3])


# -------------------------------------------------------------------------------------------- the tar reader
@pytest.mark.timeout(120)
@FUZZ
@given(st.one_of(st.binary(max_size=3000), st.builds(lambda n, tail: SHARD[:n] + tail,
                                                       st.integers(0, len(SHARD)), st.binary(max_size=1500))))
@example(b"")
@example(bytes(512))
@example(CUT_AT_A_HEADER.apply())  # cut exactly where a header would start
@example(PAX_LENGTH_ZERO.apply())
def test_tar_reader_raises_only_tar_errors(data: bytes) -> None:
    try:
        members = list(iter_members(io.BytesIO(data)))
    except TarError:
        return
    assert all(isinstance(name, str) and isinstance(body, bytes) for name, body in members)


# ------------------------------------------------------------------------------------- shards and streams
@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _expect_data_or_data_error(read) -> None:
    try:
        read()
    except DataError as exc:
        assert "\n" not in str(exc), str(exc)


@pytest.mark.timeout(240)
@FUZZ
@given(mutation=mutations)
@example(mutation=PAX_LENGTH_ZERO)
@example(mutation=CUT_AT_A_HEADER)
def test_mutated_shards_give_samples_or_a_data_error(scratch: Path, mutation: Mutation) -> None:
    path = scratch / "fuzz-000000.tar"
    path.write_bytes(mutation.apply())
    url = [str(path)]
    _expect_data_or_data_error(lambda: list(read_shard(str(path), expected=3)))
    _expect_data_or_data_error(lambda: list(build_eval_stream(url, batch_size=2, image_size=8, num_workers=0)))

    def train() -> None:
        options = TrainStreamOptions(batch_size=2, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.05,
                                     min_samples_for_bad_fraction=6)
        stream = build_train_stream(url, options, seed=0)
        try:
            assert len(list(itertools.islice(iter(stream), 4))) == 4  # endless while any sample decodes
        finally:
            stream.close()

    _expect_data_or_data_error(train)


# --------------------------------------------------------------------------------------------------- verify
def _verify(out: Path) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = shards_main(["verify", str(out), "--no-progress"])
    return rc, stdout.getvalue()


def _index(filename: str, data: bytes) -> dict:
    return {"splits": {"train": {"name": "train", "num_samples": 3, "filenames": [filename], "shard_lengths": [3],
                                 "sha256": [hashlib.sha256(data).hexdigest()], "bytes": [len(data)],
                                 "class_names": None, "num_classes": None}}}


@pytest.mark.timeout(240)
@FUZZ
@given(mutation=mutations)
@example(mutation=PAX_LENGTH_ZERO)
def test_verify_reports_any_damage_and_never_crashes(scratch: Path, mutation: Mutation) -> None:
    data = mutation.apply()
    out = scratch / "verify"
    out.mkdir(exist_ok=True)
    (out / "train-000000.tar").write_bytes(data)
    (out / "_info.json").write_text(json.dumps(_index("train-000000.tar", SHARD)))
    rc, printed = _verify(out)
    assert rc == (0 if data == SHARD else 1), printed  # the recorded sha256 is the unmutated shard's
    assert printed.splitlines()[-1].startswith("verified split(s) train: 1 shards")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**20) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
entry_fields = st.fixed_dictionaries({}, optional={
    "name": json_values, "num_samples": json_values, "filenames": json_values | st.just(["train-000000.tar"]),
    "shard_lengths": json_values | st.just([3]), "sha256": json_values, "bytes": json_values,
    "class_names": json_values, "num_classes": json_values})
indexes = st.one_of(
    json_values.map(json.dumps),
    st.builds(lambda entry: json.dumps({"splits": {"train": entry}}), entry_fields | json_values),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@pytest.mark.timeout(240)
@FUZZ
@given(index=indexes)
@example(index=json.dumps({"splits": ["train"]}))
@example(index=json.dumps({"splits": {"train": {"filenames": "train-000000.tar", "shard_lengths": [3]}}}))
@example(index='{"splits": {"train": {"filenames": ["train-000000.tar"], "shard_lengths": [Infinity]}}}')
def test_any_info_json_is_read_or_refused_with_a_data_error(scratch: Path, index: str) -> None:
    out = scratch / "index"
    out.mkdir(exist_ok=True)
    (out / "train-000000.tar").write_bytes(SHARD)
    (out / "_info.json").write_text(index, encoding="utf-8")
    rc, printed = _verify(out)
    assert rc in (0, 1) and printed.splitlines()[-1].startswith("verified split(s)")
    try:
        shards = resolve_spec(str(out), "train")
    except DataError as exc:
        assert "\n" not in str(exc) and str(out) in str(exc)
    else:
        assert all(url.startswith(str(out)) for url in shards.urls)  # only files inside the shard directory


@pytest.mark.timeout(120)
@FUZZ
@given(spec=st.text(alphabet=st.sampled_from("{}.,:/-_ab0~*?"), max_size=40))
@example(spec="/data/train-{000000..000009.tar")
def test_any_spec_string_is_resolved_or_refused_with_a_data_error(spec: str) -> None:
    try:
        resolve_spec(spec)
    except DataError as exc:
        assert "\n" not in str(exc)
