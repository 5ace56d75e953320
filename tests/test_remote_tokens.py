"""Bearer tokens for gated https shards go only where they were given for: HF_TOKEN to the Hub (here its
HF_ENDPOINT, a server on 127.0.0.1), SSL_VIT_HTTP_TOKEN to the hosts SSL_VIT_HTTP_TOKEN_HOSTS lists; never along a
redirect to another origin; and a 401/403 says in one line which variable to set. The token never appears in a
message."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from shardgen import Sample, unique_samples, write_shards
from timm_replica import eval_items

from ssl_vit.data import remote, resolve_spec
from ssl_vit.data.remote_auth import token_variable
from ssl_vit.data.shards import read_shard
from ssl_vit.errors import DataError

HF_SECRET, LAB_SECRET = "hf_s3cret_token", "lab-s3cret-token"
ENV = ("HF_TOKEN", "HF_ENDPOINT", "SSL_VIT_HTTP_TOKEN", "SSL_VIT_HTTP_TOKEN_HOSTS")


class TokenServer:
    """Serves a folder on 127.0.0.1, noting each request's Authorization header; wants `Bearer <token>` when given
    one (401 without a header, 403 with another); `/moved/NAME` redirects to `redirect_to` + NAME."""

    def __init__(self, folder: Path, token: str | None = None, redirect_to: str | None = None) -> None:
        self.folder, self.token, self.redirect_to = folder, token, redirect_to
        self.seen: list[tuple[str, str | None]] = []
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
        header = request.headers.get("Authorization")
        self.seen.append((request.path, header))
        if request.path.startswith("/moved/") and self.redirect_to:
            request.send_response(302)
            request.send_header("Location", self.redirect_to + request.path[len("/moved/"):])
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if self.token is not None and header != f"Bearer {self.token}":
            request.send_error(401 if header is None else 403)
            return
        path = self.folder / request.path.lstrip("/")
        if not path.is_file():
            request.send_error(404)
            return
        body = path.read_bytes()
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def headers(self) -> set[str | None]:
        return {header for _, header in self.seen}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    samples = [Sample(s.key, s.data, i % 3) for i, s in enumerate(unique_samples(12))]
    write_shards(tmp_path, samples, shard_size=6, class_names=["x", "y", "z"])
    return tmp_path


@pytest.fixture()
def env(monkeypatch):
    """The token variables, all unset to begin with; `env(NAME=value)` sets them."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(remote, "RETRY", remote.RetryPolicy(attempts=2, first_delay=0.01, max_delay=0.05, timeout=5))

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_


@pytest.fixture()
def servers():
    started: list[TokenServer] = []

    def start(*args, **kwargs) -> TokenServer:
        started.append(TokenServer(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


def refused(spec: str) -> str:
    """The one-line error a spec's index or shards fail with."""
    with pytest.raises(DataError) as caught:
        eval_items(spec)
    message = str(caught.value)
    assert "\n" not in message and HF_SECRET not in message and LAB_SECRET not in message
    return message


def test_which_variable_applies_to_which_url(env):
    assert token_variable("https://huggingface.co/datasets/timm/imagenet-1k-wds/resolve/main/x.tar") == "HF_TOKEN"
    assert token_variable("https://HF.co/x.tar") == "HF_TOKEN"
    for elsewhere in ("http://huggingface.co/x.tar", "https://huggingface.co:8443/x.tar",
                      "https://huggingface.co.example.org/x.tar", "https://cdn-lfs.huggingface.co/x.tar",
                      "https://example.org/x.tar", "https://user@evilhuggingface.co/x", "s3://huggingface.co/x"):
        assert token_variable(elsewhere) is None, elsewhere
    env(HF_ENDPOINT="https://hf-mirror.example.org", SSL_VIT_HTTP_TOKEN_HOSTS="data.example.org, http://lab:8080")
    assert token_variable("https://hf-mirror.example.org/x.tar") == "HF_TOKEN"
    assert token_variable("https://data.example.org/x.tar") == "SSL_VIT_HTTP_TOKEN"
    assert token_variable("http://data.example.org/x.tar") is None  # a bare host means https: no token in clear
    assert token_variable("http://lab:8080/x.tar") == "SSL_VIT_HTTP_TOKEN"
    assert token_variable("http://lab/x.tar") is None  # another port is another origin


def test_hf_token_goes_to_the_hub_endpoint_and_nowhere_else(shards: Path, env, servers):
    server = servers(shards, token=HF_SECRET)
    env(HF_TOKEN=HF_SECRET)  # set, but 127.0.0.1 is not the Hub
    message = refused(f"{server.base}/_info.json:train")
    assert "HTTP 401" in message and f"SSL_VIT_HTTP_TOKEN_HOSTS=http://127.0.0.1:{server.server.server_port}" in message
    assert server.headers() == {None}
    env(HF_ENDPOINT=server.base)  # a Hub mirror: HF_TOKEN goes there
    local = sorted(eval_items(f"{shards}:train"))
    assert sorted(eval_items(f"{server.base}/_info.json:train")) == local
    assert server.headers() - {None} == {f"Bearer {HF_SECRET}"}


def test_a_missing_or_refused_hf_token_says_which_variable(shards: Path, env, servers):
    server = servers(shards, token=HF_SECRET)
    env(HF_ENDPOINT=server.base)
    message = refused(f"{server.base}/_info.json:train")
    assert "HTTP 401" in message and "set HF_TOKEN to a Hugging Face access token" in message
    env(HF_TOKEN="hf_wrong")
    message = refused(f"{server.base}/train-{{000000..000001}}.tar")  # a shard, read by the stream
    assert "HTTP 403" in message and "the token in HF_TOKEN was refused" in message and "hf_wrong" not in message


def test_the_generic_token_goes_to_the_listed_origins_only(shards: Path, env, servers):
    server = servers(shards, token=LAB_SECRET)
    port = server.server.server_port
    env(SSL_VIT_HTTP_TOKEN=LAB_SECRET, SSL_VIT_HTTP_TOKEN_HOSTS=f"127.0.0.1:{port}")  # https only: not sent in clear
    assert "HTTP 401" in refused(f"{server.base}/_info.json:train")
    assert server.headers() == {None}
    env(SSL_VIT_HTTP_TOKEN_HOSTS=f"example.org, http://127.0.0.1:{port}", HF_TOKEN=HF_SECRET, HF_ENDPOINT=server.base)
    assert len(eval_items(f"{server.base}/_info.json:train")) == 12  # the listed token wins over HF_TOKEN
    assert server.headers() - {None} == {f"Bearer {LAB_SECRET}"}


def test_a_redirect_to_another_origin_carries_no_token(shards: Path, env, servers):
    other = servers(shards)  # another port: another origin
    hub = servers(shards, redirect_to=f"{other.base}/")
    env(HF_TOKEN=HF_SECRET, HF_ENDPOINT=hub.base)
    expected = sum(1 for _ in read_shard(f"{other.base}/train-000000.tar"))
    other.seen.clear()
    assert sum(1 for _ in read_shard(f"{hub.base}/moved/train-000000.tar")) == expected
    assert hub.seen == [("/moved/train-000000.tar", f"Bearer {HF_SECRET}")]
    assert other.seen == [("/train-000000.tar", None)]
    # each hop is decided again: an origin listed for the generic token gets that token, not the Hub's
    env(SSL_VIT_HTTP_TOKEN=LAB_SECRET, SSL_VIT_HTTP_TOKEN_HOSTS=other.base)
    other.seen.clear()
    assert sum(1 for _ in read_shard(f"{hub.base}/moved/train-000000.tar")) == expected
    assert other.seen == [("/train-000000.tar", f"Bearer {LAB_SECRET}")]
