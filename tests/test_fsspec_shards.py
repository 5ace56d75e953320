"""fsspec URLs (`hf://`, `gs://`, any protocol fsspec knows) read shards with http's promises: a filesystem the test
registers under its own protocol, backed by local files, drops connections, stalls, changes the object or serves
other bytes; `hf://` and `gs://` without their libraries (or without fsspec) fail in one line naming the pip
install. Nothing here reaches a network: `hf://` is shown routed to fsspec with the Hub's library swapped for the
test's local one."""
from __future__ import annotations

import hashlib
import importlib
import re
import sys
import threading
import time
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem
from shardgen import Sample, unique_samples, write_shards
from stream_fixtures import take
from timm_replica import eval_items, timm_replica

from ssl_vit.data import TrainStreamOptions, build_train_stream, remote, resolve_spec
from ssl_vit.data.remote_fsspec import FsspecStream, is_fsspec
from ssl_vit.data.remote_waits import ReadInterrupted
from ssl_vit.errors import DataError

FAST = remote.RetryPolicy(attempts=4, first_delay=0.01, max_delay=0.05, timeout=5)
PROTOCOL = "sslvittest"
_REGISTRY = importlib.import_module("fsspec.registry")._registry  # fsspec's registered classes (the module itself:
# the package's `fsspec.registry` attribute is the read-only view)


class LocalBacked(LocalFileSystem):
    """`sslvittest:///abs/path` is the local file /abs/path; subclasses misbehave (class-level state, per test)."""

    protocol = (PROTOCOL,)
    opens: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path):  # noqa: ANN001, ANN206 - fsspec's signature
        path = str(path)
        for protocol in cls.protocol:
            path = path.removeprefix(f"{protocol}://")
        return "/" + path.lstrip("/")

    def _open(self, path, mode="rb", **kwargs):  # noqa: ANN001, ANN202
        type(self).opens[path] = type(self).opens.get(path, 0) + 1
        return self.wrap(super()._open(path, mode, **kwargs), path)

    def wrap(self, file, path):  # noqa: ANN001, ANN201
        return file


class Dropping(LocalBacked):
    """The first `drops` opens of each file break off half-way (a reset connection)."""

    drops = 2

    def wrap(self, file, path):  # noqa: ANN001, ANN201
        if type(self).opens[path] > self.drops:
            return file
        return _CutAfter(file, self.size(path) // 2)


class Stalling(LocalBacked):
    """Every open delivers 1,000 bytes, then blocks until released (a server that stopped sending)."""

    release = threading.Event()

    def wrap(self, file, path):  # noqa: ANN001, ANN201
        return _CutAfter(file, 1000, stall=self.release)


class Changing(Dropping):
    """Drops like `Dropping`, and each look at the file reports a new version (another object behind the URL)."""

    drops = 1
    looks = 0

    def info(self, path, **kwargs):  # noqa: ANN001, ANN201
        type(self).looks += 1
        return dict(super().info(path, **kwargs), generation=type(self).looks)


class _CutAfter:
    """A file whose reads raise ConnectionResetError (or block on `stall`) after `budget` bytes."""

    def __init__(self, file, budget: int, stall: threading.Event | None = None) -> None:  # noqa: ANN001
        self.file, self.left, self.stall = file, budget, stall

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            if self.stall is not None:
                self.stall.wait(60)
            raise ConnectionResetError("connection reset by peer")
        data = self.file.read(min(n, self.left) if n is not None and n >= 0 else self.left)
        self.left -= len(data)
        return data

    def __getattr__(self, name: str):  # noqa: ANN204 - seek, close, … of the real file
        return getattr(self.file, name)

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


@pytest.fixture()
def filesystem(monkeypatch):
    """Register a filesystem class under the test's protocol: `filesystem(Dropping)`."""

    def use(cls: type[LocalBacked]) -> type[LocalBacked]:
        cls.opens = {}
        monkeypatch.setitem(_REGISTRY, PROTOCOL, cls)
        return cls

    yield use
    Stalling.release.set()  # let a stalled reader thread end
    Stalling.release = threading.Event()


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    samples = [Sample(s.key, s.data, i % 3) for i, s in enumerate(unique_samples(24))]
    write_shards(tmp_path, samples, shard_size=8, class_names=["x", "y", "z"])
    return tmp_path


def url(path: Path) -> str:
    return f"{PROTOCOL}://{path}"


def test_which_urls_go_through_fsspec():
    assert is_fsspec("hf://datasets/timm/imagenet-1k-wds/x.tar") and is_fsspec("gs://bucket/x.tar")
    assert is_fsspec("simplecache::gs://bucket/x.tar") and is_fsspec("az://container/x.tar")
    assert not any(is_fsspec(u) for u in ("/data/x.tar", "file:///data/x.tar", "https://host/x.tar", "s3://b/x.tar",
                                          "pipe:curl -s https://host/x.tar", "sftp://host/x.tar"))


def test_a_stream_reads_the_object_and_checks_its_sha256(shards: Path, filesystem):
    filesystem(LocalBacked)
    path = shards / "train-000000.tar"
    data = path.read_bytes()
    with FsspecStream(url(path), FAST, sha256=hashlib.sha256(data).hexdigest()) as stream:
        assert stream.read(100) + stream.read() == data
        stream.finish()
    stream = FsspecStream(url(path), FAST, sha256="0" * 64)
    with pytest.raises(DataError, match=r"has sha256 .* but _info.json says 0000"):
        stream.read()


def test_dropped_reads_resume_at_the_byte_reached(shards: Path, filesystem):
    fs = filesystem(Dropping)
    path = shards / "train-000001.tar"
    with FsspecStream(url(path), FAST, sha256=hashlib.sha256(path.read_bytes()).hexdigest()) as stream:
        assert stream.read() == path.read_bytes()  # nothing twice, nothing lost
        stream.finish()
        assert stream.retries == 2 and fs.opens[str(path)] == 3


def test_another_object_behind_the_url_is_not_joined(shards: Path, filesystem):
    filesystem(Changing)
    stream = FsspecStream(url(shards / "train-000001.tar"), FAST)
    with pytest.raises(remote.ShardChanged, match=r"changed while it was read \(a retry at byte"):
        stream.read()


def test_a_stalled_read_ends_at_its_deadline_or_a_stop_request(shards: Path, filesystem):
    filesystem(Stalling)
    start = time.monotonic()
    stream = FsspecStream(url(shards / "train-000000.tar"), remote.RetryPolicy(deadline=1.0, first_delay=0.01))
    with pytest.raises(remote.RemoteReadError, match=r"past its deadline of 1 s"):
        stream.read()
    assert time.monotonic() - start < 5
    stream = FsspecStream(url(shards / "train-000000.tar"), FAST)
    threading.Timer(0.3, remote.interrupt_reads).start()
    try:
        start = time.monotonic()
        with pytest.raises(ReadInterrupted):
            stream.read()
        assert time.monotonic() - start < 3
    finally:
        remote.allow_reads()


def test_a_missing_object_fails_at_once_in_one_line(shards: Path, filesystem):
    fs = filesystem(LocalBacked)
    with pytest.raises(DataError) as caught:
        eval_items(url(shards / "train-{000007..000008}.tar"))
    message = str(caught.value)
    assert "\n" not in message and "cannot open shard" in message and "does not exist" in message
    assert fs.opens == {}  # not retried: the object's info already said it is not there


def test_both_streams_read_through_fsspec_with_the_index_beside_the_shards(shards: Path, filesystem, monkeypatch,
                                                                         tmp_path_factory):
    monkeypatch.setattr(remote, "RETRY", FAST)
    monkeypatch.setenv("SSL_VIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    filesystem(Dropping)
    local = sorted(eval_items(f"{shards}:train"))
    spec = f"{url(shards)}/_info.json:train"
    resolved = resolve_spec(spec)
    assert resolved.urls[0] == url(shards / "train-000000.tar") and resolved.class_names == ("x", "y", "z")
    assert sorted(eval_items(spec)) == local  # each shard cut twice, resumed: every sample once
    options = TrainStreamOptions(batch_size=24, image_size=8, num_workers=0, shuffle_buffer=0)
    (batch,) = take(build_train_stream(spec, options, seed=0), 1)
    assert sorted(batch["label"].tolist()) == sorted(label for _, label in local)


def test_a_timm_layout_on_the_hub_reads_through_hf_urls(tmp_path: Path, monkeypatch):
    """`hf://datasets/timm/imagenet-1k-wds/_info.json:validation` goes to fsspec's `hf` filesystem; here that is the
    test's, serving a replica of the dataset's files (HF_HUB_OFFLINE: nothing may reach the Hub)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    written = timm_replica(tmp_path / "datasets" / "timm" / "imagenet-1k-wds")

    class Hub(LocalBacked):
        protocol = ("hf",)

        @classmethod
        def _strip_protocol(cls, path):  # noqa: ANN001, ANN206
            return str(tmp_path / str(path).removeprefix("hf://"))

    monkeypatch.setitem(_REGISTRY, "hf", Hub)
    spec = "hf://datasets/timm/imagenet-1k-wds/_info.json:validation"
    assert resolve_spec(spec).urls[0] == "hf://datasets/timm/imagenet-1k-wds/imagenet1k-validation-00.tar"
    assert sorted(eval_items(spec)) == sorted(written["validation"])


def test_hf_urls_reach_the_hubs_library_which_offline_mode_stops_at_once(monkeypatch):
    """Up to the library call, with the real huggingface_hub: offline mode (set where the library reads it, also
    when it was imported before) refuses the request before it is sent, and that is final, not retried."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(remote, "RETRY", remote.RetryPolicy(attempts=6, first_delay=5.0))
    start = time.monotonic()
    with pytest.raises(DataError) as caught:
        resolve_spec("hf://datasets/timm/imagenet-1k-wds/_info.json:train")
    message = str(caught.value)
    assert time.monotonic() - start < 4  # a retry would have slept 5 s
    assert "\n" not in message and "OfflineModeIsEnabled" in message and "huggingface.co" in message


def _without(monkeypatch, *modules: str) -> None:
    """Make `modules` unimportable (and forget fsspec's classes loaded from them)."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    for protocol in ("hf", "gs", "gcs"):
        monkeypatch.delitem(_REGISTRY, protocol, raising=False)


@pytest.mark.parametrize(("spec", "missing", "install"), [
    ("hf://datasets/timm/imagenet-1k-wds/imagenet1k-train-{0000..0001}.tar", ("huggingface_hub",),
     "fsspec reads hf:// URLs through huggingface_hub, which is not installed (.*): pip install 'ssl_vit\\[hub\\]'$"),
    ("hf://datasets/timm/imagenet-1k-wds/_info.json:train", ("huggingface_hub",), "pip install 'ssl_vit\\[hub\\]'$"),
    ("gs://bucket/in1k/train-{000000..000009}.tar", ("gcsfs",),
     "fsspec reads gs:// URLs through gcsfs, which is not installed (.*): pip install gcsfs$"),
    ("hf://datasets/timm/imagenet-1k-wds/imagenet1k-train-0000.tar", ("fsspec",),
     "hf:// URLs are read through fsspec, which is not installed: pip install 'ssl_vit\\[remote,hub\\]'$"),
    ("gs://bucket/in1k/_info.json:train", ("fsspec",),
     "gs:// URLs are read through fsspec, which is not installed: pip install 'ssl_vit\\[remote\\]' gcsfs$"),
])
def test_a_missing_library_is_one_line_naming_the_install(monkeypatch, spec: str, missing: tuple, install: str):
    _without(monkeypatch, *missing)
    with pytest.raises(DataError) as caught:
        resolve_spec(spec)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(spec.split("{")[0].split("_info.json:")[0])
    assert re.search(install, message), message


def test_an_unknown_protocol_says_no_reader_knows_it():
    with pytest.raises(DataError, match=r"no reader knows the protocol 'nosuchfs'"):
        resolve_spec("nosuchfs://bucket/x-{0..1}.tar")
