"""Remote shards copied whole into the node cache (data/remote_copy.py): fetched once and shared when their sha256 is
known, private to the process when it is not, and the least recently used unheld copies deleted above the bound."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
from shardgen import unique_samples, write_shards
from stream_fixtures import QuietHandler

from ssl_vit.data import remote_copy
from ssl_vit.data.remote import RETRY
from ssl_vit.data.shards import open_url


@pytest.fixture()
def served(tmp_path: Path):
    """Two shards of 8 behind a 127.0.0.1 server that counts the GETs of each file."""
    folder = tmp_path / "served"
    paths = write_shards(folder, unique_samples(16), shard_size=8)
    requests: dict[str, int] = {}

    class Counting(QuietHandler):
        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            requests[name] = requests.get(name, 0) + 1
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", paths, requests
    server.shutdown()
    server.server_close()


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_shard_with_a_sum_is_fetched_once_and_reused_by_content(served, monkeypatch, tmp_path: Path):
    base, paths, requests = served
    monkeypatch.setenv("SSL_VIT_CACHE_DIR", str(tmp_path / "cache"))
    url = f"{base}/{paths[0].name}"
    first = remote_copy.local_copy(url, sha256=sha(paths[0]), policy=RETRY, limit=10**9, opener=open_url)
    again = remote_copy.local_copy(url, sha256=sha(paths[0]), policy=RETRY, limit=10**9, opener=open_url)
    assert first == again == tmp_path / "cache" / "shards" / f"{sha(paths[0])}.tar"
    assert first.read_bytes() == paths[0].read_bytes() and requests[paths[0].name] == 1
    private = remote_copy.local_copy(url, sha256=None, policy=RETRY, limit=10**9, opener=open_url)
    assert private.name.startswith("url-") and private.name.endswith(f"-{__import__('os').getpid()}.tar")
    assert requests[paths[0].name] == 2  # without a sum, nothing proves the shared copy is the same object


def test_a_wrong_sum_leaves_no_copy(served, monkeypatch, tmp_path: Path):
    from ssl_vit.data.remote import ChecksumMismatch

    base, paths, _ = served
    monkeypatch.setenv("SSL_VIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ChecksumMismatch):
        remote_copy.local_copy(f"{base}/{paths[0].name}", sha256="0" * 64, policy=RETRY, limit=10**9, opener=open_url)
    assert [p.name for p in (tmp_path / "cache" / "shards").glob("*.tar")] == []


def test_above_the_bound_the_oldest_unheld_copy_goes_and_a_held_one_stays(served, monkeypatch, tmp_path: Path):
    base, paths, _ = served
    monkeypatch.setenv("SSL_VIT_CACHE_DIR", str(tmp_path / "cache"))
    size = paths[0].stat().st_size
    one = remote_copy.local_copy(f"{base}/{paths[0].name}", sha256=sha(paths[0]), policy=RETRY, limit=size,
                                 opener=open_url)
    with open(one, "rb") as f:
        remote_copy.hold(f)  # a reader has it open
        two = remote_copy.local_copy(f"{base}/{paths[1].name}", sha256=sha(paths[1]), policy=RETRY, limit=size,
                                     opener=open_url)
        assert one.exists() and two.exists()  # over the bound, but the older copy is being read
    three = remote_copy.local_copy(f"{base}/{paths[0].name}", sha256=sha(paths[0]), policy=RETRY, limit=size,
                                   opener=open_url)
    assert three == one and three.exists() and not two.exists()  # one was used last: two is the oldest unheld
