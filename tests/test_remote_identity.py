"""Remote shards: a resumed download continues the same object or restarts, never splices two; a shard's sha256
from `_info.json` is checked as it streams; a trickling server fails each attempt and the retries end in one
line; a past deadline ends a shard; a stop request ends a blocked read within a second.

Every server here listens on 127.0.0.1 only, answers from memory, and stops by itself: each answer ends within
a few seconds, and every test shuts its server down."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from shardgen import Sample, unique_samples, write_shards

from ssl_vit.data import TrainStreamOptions, build_eval_stream, build_train_stream
from ssl_vit.data import remote
from ssl_vit.data.shards import read_shard
from ssl_vit.errors import DataError

from stream_fixtures import take

FAST = remote.RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05, timeout=5)
LONGEST_ANSWER_S = 5.0  # a trickling or silent answer gives up after this long, whoever is listening


class ObjectServer:
    """Serves `objects` (name → bytes, replaceable at any time) on 127.0.0.1.

    `validator`: "etag" sends a strong ETag that changes with every replacement (`replace`), "stale" one that
    never does (a server whose validator missed the change, e.g. a Last-Modified of the same second), None none.
    `if_range`: a ranged request whose If-Range differs from the current validator gets the whole object (200),
    as RFC 9110 says; False answers every range with a 206 of the current bytes, whatever If-Range says.
    `drop`: {name: n}: the first answer for `name` stops after n body bytes and closes the connection; its
    `on_drop` runs before it closes (so a retry finds the replacement). `trickle`: seconds between single body
    bytes; `silent`: headers only, then nothing."""

    def __init__(self, objects: dict[str, bytes], *, validator: str | None = "etag", if_range: bool = True,
                 drop: dict[str, int] | None = None, on_drop=None, trickle: float | None = None,
                 silent: bool = False) -> None:
        self.objects, self.validator, self.if_range = dict(objects), validator, if_range
        self.drop, self.on_drop, self.trickle, self.silent = dict(drop or {}), on_drop, trickle, silent
        self.version = {name: 0 for name in objects}
        self.answers: list[tuple[str, int, dict[str, str]]] = []  # (name, status, the request's headers)
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer._answer(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def replace(self, name: str, data: bytes) -> None:
        with self._lock:
            self.objects[name] = data
            self.version[name] += 1

    def requests_for(self, name: str) -> list[tuple[int, dict[str, str]]]:
        return [(status, headers) for n, status, headers in self.answers if n == name]

    def _tag(self, name: str) -> str | None:
        if self.validator == "etag":
            return f'"{hashlib.sha256(self.objects[name]).hexdigest()[:16]}-v{self.version[name]}"'
        return '"stale"' if self.validator == "stale" else None

    def _answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        name = request.path.lstrip("/")
        with self._lock:
            data, tag = self.objects.get(name), self._tag(name) if name in self.objects else None
        if data is None:
            request.send_error(404)
            return
        start, wanted = 0, request.headers.get("Range", "")
        if wanted.startswith("bytes="):
            start = int(wanted[6:].split("-")[0])
            condition = request.headers.get("If-Range")
            if self.if_range and condition is not None and condition != tag:
                start = 0  # another object now: the whole of it
        body = data[start:]
        status = 206 if start else 200
        self.answers.append((name, status, dict(request.headers)))
        request.send_response(status)
        request.send_header("Content-Length", str(len(body)))
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if tag is not None:
            request.send_header("ETag", tag)
        request.end_headers()
        request.close_connection = True
        with contextlib.suppress(OSError):
            self._body(request, name, body)

    def _body(self, request, name: str, body: bytes) -> None:  # noqa: ANN001
        give_up = time.monotonic() + LONGEST_ANSWER_S
        if self.silent:
            while time.monotonic() < give_up:
                time.sleep(0.05)
            return
        if self.trickle is not None:
            for i in range(len(body)):
                if time.monotonic() > give_up:
                    return
                request.wfile.write(body[i : i + 1])
                request.wfile.flush()
                time.sleep(self.trickle)
            return
        cut = self.drop.pop(name, None)
        if cut is not None:
            request.wfile.write(body[:cut])
            request.wfile.flush()
            if self.on_drop is not None:
                self.on_drop(self)
            return
        request.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    """Two shards of 6 samples, 3 classes, with their sha256 sums in `_info.json`."""
    samples = [Sample(s.key, s.data, i % 3) for i, s in enumerate(unique_samples(12))]
    write_shards(tmp_path / "a", samples, shard_size=6, class_names=["x", "y", "z"])
    return tmp_path / "a"


def _relabelled(shard: Path) -> bytes:
    """Another object of exactly `shard`'s layout: each `cls` digit replaced by the next class's, in place (same
    sizes, same headers), so a splice of the two still parses and only its bytes tell."""
    data = shard.read_bytes()
    out = bytearray(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".cls"):
                span = slice(member.offset_data, member.offset_data + member.size)
                out[span] = str((int(data[span]) + 1) % 3).encode()
    assert out != data and len(out) == len(data)
    return bytes(out)


def _objects(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _eval_keys(spec) -> list[tuple[str, int]]:  # noqa: ANN001
    out = []
    for batch in build_eval_stream(spec, batch_size=4, image_size=8, num_workers=0):
        out += list(zip(batch["key"], batch["label"].tolist()))
    return sorted(out)


@contextlib.contextmanager
def serving(objects: dict[str, bytes], **kw):  # noqa: ANN003
    server = ObjectServer(objects, **kw)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_drop_mid_shard_resumes_the_same_object_with_if_range_and_yields_every_sample_once(shards, monkeypatch):
    monkeypatch.setattr(remote, "RETRY", FAST)
    shard = shards / "train-000000.tar"
    cut = shard.stat().st_size // 2
    with serving(_objects(shards), drop={shard.name: cut}) as server:
        assert _eval_keys(f"{server.base}/_info.json:train") == _eval_keys(str(shards))
        (first, _), (status, retry) = server.requests_for(shard.name)[:2]
    assert first == 200 and status == 206
    assert retry["Range"] == f"bytes={cut}-" and retry["If-Range"].startswith('"')  # the first answer's ETag


@pytest.mark.timeout(30)
def test_a_shard_rebuilt_to_the_same_bytes_between_drop_and_retry_restarts_and_yields_every_sample_once(
        shards, monkeypatch):
    """A new ETag, the same bytes (a deterministic rebuild in place): the server answers 200, the restart's
    first bytes match those already read, and reading goes on without a sample twice."""
    monkeypatch.setattr(remote, "RETRY", FAST)
    shard = shards / "train-000000.tar"
    with serving(_objects(shards), drop={shard.name: shard.stat().st_size // 2},
                 on_drop=lambda s: s.replace(shard.name, shard.read_bytes())) as server:
        assert _eval_keys(f"{server.base}/_info.json:train") == _eval_keys(str(shards))
        statuses = [status for status, _ in server.requests_for(shard.name)]
    assert statuses[:2] == [200, 200]


@pytest.mark.timeout(30)
def test_a_shard_replaced_between_drop_and_retry_is_restarted_never_spliced(shards, monkeypatch):
    """The server honours If-Range: the retry gets the new object whole (200); its first bytes differ from those
    already read, so the shard fails naming itself instead of continuing with the new object's rest."""
    monkeypatch.setattr(remote, "RETRY", FAST)
    shard = shards / "train-000000.tar"
    other = _relabelled(shard)
    cut = shard.stat().st_size // 2
    with serving(_objects(shards), drop={shard.name: cut}, on_drop=lambda s: s.replace(shard.name, other)) as server:
        with pytest.raises(DataError) as info:
            _eval_keys([f"{server.base}/{shard.name}"])  # a URL list: no sha256, so only the restart can tell
        statuses = [status for status, _ in server.requests_for(shard.name)]
    message = str(info.value)
    assert statuses == [200, 200]
    assert f"/{shard.name} is unreadable after" in message and "ShardChanged" in message
    assert "changed on the server while it was read" in message and "\n" not in message


@pytest.mark.timeout(30)
def test_a_206_of_another_object_is_refused_by_its_etag(shards, monkeypatch):
    """The server ignores If-Range but its ETag follows the file: the 206 names another object, and the shard
    fails before a byte of it is used (a URL list: no sha256 to catch it later)."""
    monkeypatch.setattr(remote, "RETRY", FAST)
    shard = shards / "train-000000.tar"
    other = _relabelled(shard)
    with serving(_objects(shards), if_range=False, drop={shard.name: shard.stat().st_size // 2},
                 on_drop=lambda s: s.replace(shard.name, other)) as server:
        with pytest.raises(DataError, match=r"ShardChanged: .* changed on the server while it was read \(a retry at "
                                            r"byte [\d,]+ got the rest of another object: ETag \"\w+-v0\" → "
                                            r"\"\w+-v1\"\)"):
            _eval_keys([f"{server.base}/{shard.name}"])
        assert [status for status, _ in server.requests_for(shard.name)] == [200, 206]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shard_errors", ["stop", "skip"])
def test_a_server_that_ignores_if_range_and_splices_is_caught_by_the_sha256(shards, monkeypatch, shard_errors):
    """The server answers the ranged retry with a 206 of the replaced file (its validator missed the change): the
    spliced bytes parse, and only the sha256 from `_info.json` tells. Skipping would hide that samples of a
    wrong file were handed on, so it stops with `shard_errors=skip` too."""
    monkeypatch.setattr(remote, "RETRY", FAST)
    shard = shards / "train-000000.tar"
    other = _relabelled(shard)
    with serving(_objects(shards), validator="stale", if_range=False, drop={shard.name: shard.stat().st_size // 2},
                 on_drop=lambda s: s.replace(shard.name, other)) as server:
        options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=0,
                                     shard_errors=shard_errors)
        with pytest.raises(DataError) as info:
            take(build_train_stream(f"{server.base}/_info.json:train", options, seed=0), 6)
        statuses = [status for status, _ in server.requests_for(shard.name)]
    assert statuses[:2] == [200, 206]
    message = str(info.value)
    assert f"shard {server.base}/{shard.name} has sha256" in message and "but _info.json says" in message
    assert "\n" not in message


@pytest.mark.timeout(30)
def test_a_sha256_mismatch_from_info_json_is_a_data_error_naming_the_shard(shards, monkeypatch):
    monkeypatch.setattr(remote, "RETRY", FAST)
    info = json.loads((shards / "_info.json").read_text())
    info["splits"]["train"]["sha256"][1] = "0" * 64
    objects = _objects(shards) | {"_info.json": json.dumps(info).encode()}
    with serving(objects) as server:
        with pytest.raises(DataError, match=rf"shard {server.base}/train-000001\.tar has sha256 [0-9a-f]{{16}}… "
                                            r"\([\d,]+ bytes\) but _info\.json says 0{16}…"):
            _eval_keys(f"{server.base}/_info.json:train")


@pytest.mark.timeout(30)
def test_a_trickling_server_fails_every_attempt_and_the_retries_end_in_one_line(shards, monkeypatch):
    monkeypatch.setattr(remote, "RETRY", FAST)
    shard = shards / "train-000000.tar"
    with serving(_objects(shards), trickle=0.05) as server:  # ~20 bytes/s
        options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=0,
                                     remote_min_rate=1000, remote_rate_window_s=0.5)
        start = time.monotonic()
        with pytest.raises(DataError) as info:
            take(build_train_stream([f"{server.base}/{shard.name}"], options, seed=0), 1)
        elapsed = time.monotonic() - start
        attempts = len(server.requests_for(shard.name))
    message = str(info.value)
    assert attempts == FAST.attempts and elapsed < 5  # three windows of 0.5 s, and short back-offs
    assert f"shard {server.base}/{shard.name} is unreadable after 0 samples" in message
    assert "3 attempts in a row fell below the minimum rate" in message and "bytes/s), below" in message
    assert "lower data.remote_min_rate" in message and "data.shard_errors=skip" in message and "\n" not in message


@pytest.mark.timeout(30)
def test_a_shard_that_never_finishes_ends_at_its_deadline(shards, monkeypatch):
    """Every answer delivers a little and drops (progress each time, so the failure count never runs out): the
    deadline over all attempts ends it, in one line naming the option."""
    monkeypatch.setattr(remote, "RETRY", FAST)
    shard = shards / "train-000000.tar"

    class Cutting(ObjectServer):
        def _body(self, request, name, body):  # noqa: ANN001
            request.wfile.write(body[:64])

    server = Cutting(_objects(shards))
    try:
        options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=0,
                                     remote_shard_deadline_s=1.0)
        start = time.monotonic()
        with pytest.raises(DataError) as info:
            take(build_train_stream([f"{server.base}/{shard.name}"], options, seed=0), 1)
        elapsed = time.monotonic() - start
    finally:
        server.close()
    message = str(info.value)
    assert 1.0 <= elapsed < 4 and len(server.requests_for(shard.name)) > FAST.attempts
    assert "OverDeadline" in message and "past its deadline of 1 s (data.remote_shard_deadline_s)" in message
    assert "raise data.remote_shard_deadline_s" in message and "\n" not in message


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["socket", "back-off"])
def test_a_stop_request_ends_a_blocked_read_within_a_second(shards, monkeypatch, where):
    """A silent server (the read waits on the socket) or a dead one (the read waits in a 30 s back-off): either
    way the stop request ends the wait within a second, as `ReadInterrupted`, which the shard reader passes on
    rather than calling the shard unreadable."""
    policy = remote.RetryPolicy(attempts=5, first_delay=30, max_delay=30, timeout=60, min_rate=0)
    monkeypatch.setattr(remote, "RETRY", policy)
    server = ObjectServer(_objects(shards), silent=True)
    url = f"{server.base}/train-000000.tar" if where == "socket" else f"http://127.0.0.1:{_closed_port()}/x.tar"
    timer = threading.Timer(0.5, remote.interrupt_reads)
    try:
        timer.start()
        start = time.monotonic()
        with pytest.raises(remote.ReadInterrupted, match="stopped while waiting for data"):
            list(read_shard(url))
        assert time.monotonic() - start < 0.5 + 1.5  # POLL_S after the request, and slack for a busy machine
    finally:
        timer.cancel()
        remote.allow_reads()
        server.close()
