"""Remote shards fail softly: a local HTTP server on 127.0.0.1 drops connections mid-shard, ignores ranges or
never answers; `.tar.gz` shards are read; an `_info.json` given as a URL brings counts and class names."""
from __future__ import annotations

import gzip
import http.server
import itertools
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shardgen import Sample, unique_samples, write_shards

from ssl_vit.data import TrainStreamOptions, build_eval_stream, build_train_stream, resolve_spec
from ssl_vit.data import remote
from ssl_vit.errors import DataError

FAST = remote.RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.05, timeout=5)


class FlakyServer:
    """Serves a folder on 127.0.0.1; each file's first `drops` answers stop half-way through the body (the
    Content-Length promises all of it); `ranges=False` ignores Range headers; `drops=-1`: every answer promises
    the body and closes the connection before sending any of it (a dead backend behind a live proxy), and so
    do the files named in `dead`."""

    def __init__(self, folder: Path, drops: int = 0, ranges: bool = True, dead: tuple[str, ...] = ()) -> None:
        self.folder, self.drops, self.ranges, self.dead = folder, drops, ranges, dead
        self.requests: Counter[str] = Counter()
        self.range_requests: Counter[str] = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.handle(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        name = request.path.lstrip("/")
        path = self.folder / name
        if not path.is_file():
            request.send_error(404)
            return
        self.requests[name] += 1
        data = path.read_bytes()
        start = 0
        if self.ranges and request.headers.get("Range", "").startswith("bytes="):
            self.range_requests[name] += 1
            start = int(request.headers["Range"][6:].split("-")[0])
        body = data[start:]
        request.send_response(206 if start else 200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        dead = self.drops < 0 or name in self.dead
        if dead or self.requests[name] <= self.drops:
            request.wfile.write(body[: 0 if dead else len(body) // 2])
            request.wfile.flush()
            request.close_connection = True
            return
        request.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    samples = [Sample(s.key, s.data, i % 3) for i, s in enumerate(unique_samples(24))]
    write_shards(tmp_path, samples, shard_size=8, class_names=["x", "y", "z"])
    return tmp_path


def _eval_keys(spec, **kw) -> list[tuple[str, int]]:
    out = []
    for batch in build_eval_stream(spec, batch_size=5, image_size=8, num_workers=0, **kw):
        out += list(zip(batch["key"], batch["label"].tolist()))
    return sorted(out)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ranges", [True, False])
def test_dropped_connections_are_retried_and_every_sample_arrives_once(shards: Path, monkeypatch, ranges: bool):
    monkeypatch.setattr(remote, "RETRY", FAST)
    local = _eval_keys(str(shards))
    server = FlakyServer(shards, drops=2, ranges=ranges)
    try:
        remote_spec = f"{server.base}/_info.json:train"
        assert _eval_keys(remote_spec) == local  # each shard cut twice mid-body, resumed, read exactly once
        assert all(n == 3 for name, n in server.requests.items() if name.endswith(".tar"))
        assert sum(n for name, n in server.range_requests.items() if name.endswith(".tar")) == (6 if ranges else 0)
        options = TrainStreamOptions(batch_size=8, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.05)
        stream = build_train_stream(remote_spec, options, seed=0)
        try:
            batches = list(itertools.islice(iter(stream), 3))
        finally:
            stream.close()
        assert sorted(label for b in batches for label in b["label"].tolist()) == sorted(lbl for _, lbl in local)
        assert sum(int(b["skipped"]) for b in batches) == 0
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_a_dead_server_stops_after_bounded_retries_or_its_shard_is_skipped_and_counted(shards: Path, monkeypatch,
                                                                                       capsys):
    monkeypatch.setattr(remote, "RETRY", FAST)
    server = FlakyServer(shards, drops=-1)
    good = FlakyServer(shards)
    try:
        urls = [f"{good.base}/train-000000.tar", f"{server.base}/train-000001.tar"]
        start = time.monotonic()
        with pytest.raises(DataError, match=r"shard http://.*/train-000001\.tar is unreadable after \d+ samples "
                                            r"\(RemoteReadError: .*4 attempts failed"):
            list(build_eval_stream(urls, batch_size=4, image_size=8, num_workers=0))
        assert time.monotonic() - start < 10 and server.requests["train-000001.tar"] == 4
        options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.05,
                                     shard_errors="skip")
        stream = build_train_stream(urls, options, seed=0)
        try:
            batches = list(itertools.islice(iter(stream), 4))  # 16 samples: shard 0 twice; shard 1 never completes
        finally:
            stream.close()
        assert len(batches) == 4  # a URL list has no counts: the dead shard is left out of the order, with a warning
        assert "train-000001.tar is left out of the training order" in capsys.readouterr().err
    finally:
        server.close()
        good.close()


@pytest.mark.timeout(60)
def test_a_skipped_shard_counts_its_unread_samples(shards: Path, monkeypatch):
    monkeypatch.setattr(remote, "RETRY", FAST)
    server = FlakyServer(shards, dead=("train-000001.tar",))
    try:
        options = TrainStreamOptions(batch_size=8, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.05,
                                     shard_errors="skip")
        stream = build_train_stream(f"{server.base}/_info.json", options, seed=0)
        try:
            batches = list(itertools.islice(iter(stream), 4))  # 32 positions: epoch 0's 24, then 8 of epoch 1
        finally:
            stream.close()
        assert sum(int(b["skipped"]) for b in batches) == 8  # the dead shard's 8 samples of epoch 0: missed
        assert sum(b["read"].tolist().count(False) for b in batches) == 8  # left out of their batches, not replaced
        read = Counter(label for b in batches for label in b["label"].tolist())
        assert len(read) == 3 and sum(read.values()) == 24
    finally:
        server.close()


def test_tar_gz_shards_are_read_locally_and_remotely(shards: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(remote, "RETRY", FAST)
    gz = tmp_path / "gz"
    gz.mkdir()
    for shard in sorted(shards.glob("train-*.tar")):
        (gz / f"{shard.stem}.tar.gz").write_bytes(gzip.compress(shard.read_bytes()))
    local = _eval_keys(str(shards))
    assert _eval_keys(f"{gz}/train-{{000000..000002}}.tar.gz") == local
    server = FlakyServer(gz, drops=1)
    try:
        assert _eval_keys([f"{server.base}/train-00000{i}.tar.gz" for i in range(3)]) == local
    finally:
        server.close()
    cut = gz / "train-000000.tar.gz"
    cut.write_bytes(cut.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"train-000000\.tar\.gz is unreadable after \d+ samples \(EOFError"):
        _eval_keys([str(cut)])


def test_info_json_as_a_url_gives_counts_and_class_names(shards: Path, monkeypatch):
    monkeypatch.setattr(remote, "RETRY", FAST)
    server = FlakyServer(shards, drops=1)  # the index itself is cut once too
    try:
        remote_set = resolve_spec(f"{server.base}/_info.json", "train")
        local_set = resolve_spec(str(shards), "train")
        assert remote_set.urls == tuple(f"{server.base}/train-00000{i}.tar" for i in range(3))
        assert (remote_set.num_samples, remote_set.shard_lengths, remote_set.class_names) == (
            local_set.num_samples, local_set.shard_lengths, local_set.class_names) == (24, (8, 8, 8), ("x", "y", "z"))
        with pytest.raises(DataError, match=r"_info\.json: no split 'nope'"):
            resolve_spec(f"{server.base}/_info.json:nope")
        with pytest.raises(DataError, match=r"cannot read the shard index http://.*/missing/_info\.json: HTTP 404"):
            resolve_spec(f"{server.base}/missing/_info.json")
    finally:
        server.close()
