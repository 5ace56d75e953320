"""A Hugging Face Hub cache the test fills itself, and huggingface_hub held to it, offline.

The cache layout is huggingface_hub's (its `hf_hub_download` docstring, file_download.py; the "Understand caching"
guide), which `hf download` writes and which is read back offline:

    HF_HUB_CACHE/models--ORG--NAME/blobs/<sha256 of the file>
                                  /refs/main                      the commit, 40 hex digits (no newline)
                                  /snapshots/<commit>/config.json -> ../../blobs/<sha256>

`offline_hub` sets HF_HUB_OFFLINE=1, HF_HUB_CACHE and HF_HOME for any subprocess and replaces the values
huggingface_hub read when it was imported (earlier tests import it), points its endpoint at a closed local port,
and makes any socket connection or name lookup beyond this machine fail the test: nothing can reach the network.
"""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")
CLOSED_PORT = "http://127.0.0.1:9"  # the Hub's endpoint in these tests: nothing listens there (discard)


def cache_repo(cache: Path, repo_id: str, folder: Path, *, commit: str = COMMIT, ref: str | None = "main",
               only: tuple[str, ...] | None = None) -> Path:
    """Put `folder`'s files (those named in `only`, when given) into `cache` as snapshot `commit` of the model
    repository `repo_id` — blobs named by their sha256, relative links from the snapshot — with `refs/REF` naming
    the commit (None: no ref, as when only that commit was fetched); returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        if only is not None and path.name not in only:
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub offline, its cache an empty `tmp/hf_home/hub` (returned), the network out of reach."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)),
                        ("HF_HUB_DISABLE_TELEMETRY", "1"), ("HF_ENDPOINT", CLOSED_PORT)):
        monkeypatch.setenv(name, value)
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)),
                        ("HF_HUB_DISABLE_TELEMETRY", True), ("ENDPOINT", CLOSED_PORT),
                        ("HUGGINGFACE_CO_URL_TEMPLATE", CLOSED_PORT + "/{repo_id}/resolve/{revision}/{filename}")):
        monkeypatch.setattr(constants, name, value)

    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            pytest.fail(f"a test of the offline Hub tried to connect to {address}")
        return connect(sock, address)

    def local_lookup(host, *args, **kwargs):
        if host not in LOCAL_HOSTS:
            pytest.fail(f"a test of the offline Hub tried to look up {host}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", local_connect)
    monkeypatch.setattr(socket, "getaddrinfo", local_lookup)
    return cache
