"""HTTP(S) shards and indexes that fail softly, and only ever deliver the bytes of one object, once each.

Why not webdataset's opener: it pipes through `curl -s`, so a connection dropped mid-shard surfaces as a cut
tar (or, without a Content-Length, as nothing at all), and the whole shard is lost.

Retries. A dropped connection, a reset, a silent connection, a body shorter than its Content-Length, a
408/429/5xx answer or an attempt below the minimum rate (`remote_waits.py`) is retried after 1, 2, 4, … s (at
most `max_delay`), asking for the rest with a `Range` request. `attempts` failures in a row without progress
give up with `RemoteReadError`, and the stream stops or skips the shard as configured (`shard_errors`). An
attempt that delivered data is progress, so a long shard on a flaky link still finishes, unless it was cut for
being too slow: then only a rate window it passed counts, so a trickling server fails after `attempts` tries
like a dead one. A 404 or 403 is not transient: it fails at once.

One object. Every ranged retry sends `If-Range` with the first answer's strong ETag (or else its
Last-Modified), so a server answers 206 only while the object is the same. A 206 whose Content-Range start,
total length or validator differ from what was asked and first seen is another object (`ShardChanged`). A 200
(the object changed, or the server ignores ranges) restarts the object from its start: its first k bytes are
read again and compared, by sha256, with the k bytes already delivered. Equal, reading goes on at byte k:
nothing is delivered twice, nothing is spliced. Different, the samples already handed on came from an object
that no longer exists, and they cannot be taken back: the shard fails with `ShardChanged` (a read error, so
`shard_errors=skip` skips the rest of it this epoch) rather than join two objects. A server that sends neither
ETag nor Last-Modified cannot prove a 206 is the same object; then only the sha256 can.

Checksums. Given the shard's sha256 (from `_info.json`), the bytes are hashed as they stream and checked at the
object's end (`finish()` reads past the tar's end-of-archive padding to it). A mismatch is `ChecksumMismatch`,
a `DataError` that neither a retry nor `shard_errors=skip` hides: the shard's samples have been handed on, and
the shard is not the one the index describes (replaced on the server, or spliced by one that ignored If-Range).

Tokens. A request carries `Authorization: Bearer` only where `remote_auth.py` allows it (HF_TOKEN to the Hub,
SSL_VIT_HTTP_TOKEN to the hosts listed for it), decided again at every redirect; a 401 or 403 fails at once
with one line naming the variable to set.

`RemoteStream` holds what every remote object's stream shares (the retry loop, the sha256, `finish`); `HTTPStream`
is http(s)'s, `remote_fsspec.FsspecStream` that of `hf://`, `gs://` and other fsspec URLs. s3:// URLs go through
the AWS CLI, which retries by itself.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from ssl_vit.errors import DataError

from . import remote_auth
from .remote_waits import (BLOCK_S, RATE_ADVICE, OverDeadline, ReadInterrupted, RemoteReadError, TooSlow, Waits,
                           allow_reads, interrupt_reads, opener)

__all__ = ["RETRY", "ChecksumMismatch", "HTTPStream", "ReadInterrupted", "RemoteReadError", "RemoteStream",
           "RetryPolicy", "ShardChanged", "allow_reads", "fetch", "interrupt_reads", "is_http"]

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")
MAX_TRAILER = 16 << 20  # bytes a shard may go on after its tar's end (the padding to a whole record is ~10 KiB)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # failures in a row without progress before giving up
    first_delay: float = 1.0  # seconds before the first retry, doubled each time
    max_delay: float = 30.0
    timeout: float = 60.0  # seconds a connection may stay silent
    # 10 kB/s is about the slowest link anyone trains over (a 256 MB shard then takes 7 hours); averaged over a
    # minute of waiting, slow start and a stall of some seconds pass, a trickling server fails in about a minute.
    min_rate: float = 10_000.0  # bytes/s each attempt must average over every rate_window of waiting; 0: none
    rate_window: float = 60.0  # seconds of waiting the minimum rate is averaged over
    deadline: float | None = None  # seconds of waiting per object over all attempts; None: remote_waits.GRACE_S
    # more than its bytes take at min_rate

    def waits(self, url: str) -> Waits:
        return Waits(url, min_rate=self.min_rate, rate_window=self.rate_window, silence=self.timeout,
                     deadline=self.deadline)


RETRY = RetryPolicy()


class ShardChanged(RemoteReadError):
    """The object behind a URL changed while it was read, so its rest cannot be joined to what was delivered."""

    ADVICE = ("the samples read before the change stay read; read it again once the files on the server stop "
              "changing (data.shard_errors=skip skips the rest of such a shard in training)")


class ChecksumMismatch(DataError):
    """A remote shard's bytes do not have the sha256 `_info.json` gives for it."""


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


class RemoteStream(io.RawIOBase):
    """A readable byte stream of one remote object that reconnects and resumes on transient errors, from the same
    object only, and checks the object's sha256 at its end when given one (see the module's docstring).

    A subclass says how to connect at `offset` (`_connect`), read (`_read_some`), let go of a connection (`_drop`),
    whether it holds one (`_connected`), and which errors are final (`_final`)."""

    def __init__(self, url: str, policy: RetryPolicy | None = None, *, sha256: str | None = None) -> None:
        super().__init__()
        self.url = url
        self.policy = policy or RETRY
        self.sha256 = sha256.lower() if sha256 else None
        self.offset = 0  # bytes delivered so far
        self.retries = 0  # reconnections made (for the tests and the log)
        self._hash = hashlib.sha256()  # of the bytes delivered
        self._ended = False
        self._failures = 0  # failed attempts in a row without progress
        self._progress = False  # data delivered since the last failure
        self._waits = self.policy.waits(url)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self.readall()
        data = self._call(lambda: self._read_some(n))
        if data:
            self._hash.update(data)
            self.offset += len(data)
            self._progress = True
        elif n:
            self._at_end()
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Read to the object's end (a tar's padding after its end-of-archive marker) and check its sha256; nothing
        to do without one. Raises `ChecksumMismatch` (also when more than MAX_TRAILER bytes remain)."""
        if self.sha256 is None:
            return
        start = self.offset
        while not self._ended:
            if self.offset - start > MAX_TRAILER:
                raise ChecksumMismatch(
                    f"shard {self.url} goes on for more than {MAX_TRAILER:,} bytes after its tar archive ends, so it "
                    "is not the file whose sha256 _info.json gives; fix the file on the server or the index")
            self.read(1 << 20)

    def close(self) -> None:
        self._drop()
        super().close()

    def _at_end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self.sha256 is not None and self._hash.hexdigest() != self.sha256:
            raise ChecksumMismatch(
                f"shard {self.url} has sha256 {self._hash.hexdigest()[:16]}… ({self.offset:,} bytes) but _info.json "
                f"says {self.sha256[:16]}…: the server's file is not the one the index describes (replaced, or "
                "spliced by a server that ignored If-Range); put the right file back or rebuild the index")

    def _call(self, action):
        """Run `action` with a connection, reconnecting after transient errors (see the module doc)."""
        with self._waits as waits:
            while True:
                try:
                    if not self._connected():
                        self._connect()
                    return action()
                except (ReadInterrupted, OverDeadline, ShardChanged):
                    raise
                except Exception as err:  # noqa: BLE001 - `_final` sorts them: final ones raise, the rest retry
                    final = self._final(err)
                    if final is err:
                        raise
                    if final is not None:
                        raise final from None
                    last: Exception = err
                self._drop()
                progressed = waits.passed_window if isinstance(last, TooSlow) else self._progress
                self._failures = 1 if progressed else self._failures + 1
                self._progress = False
                if self._failures >= self.policy.attempts:
                    raise self._given_up(last) from None
                waits.sleep(min(self.policy.first_delay * 2 ** (self._failures - 1), self.policy.max_delay))
                self.retries += 1

    def _given_up(self, last: Exception) -> RemoteReadError:
        if isinstance(last, TooSlow):
            return RemoteReadError(f"{self.url}: {self._failures} attempts in a row fell below the minimum rate at "
                                   f"byte {self.offset:,} (last: {last})", advice=RATE_ADVICE)
        return RemoteReadError(f"{self.url}: {self._failures} attempts failed at byte {self.offset} "
                               f"(last: {type(last).__name__}: {one_line(last)})")

    def _connected(self) -> bool:
        raise NotImplementedError

    def _connect(self) -> None:
        raise NotImplementedError

    def _read_some(self, n: int) -> bytes:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    def _final(self, err: Exception) -> BaseException | None:
        """The error to raise for `err` (itself, or one that explains it), or None when it is transient."""
        raise NotImplementedError


class HTTPStream(RemoteStream):
    """An http(s) object's `RemoteStream`: ranged retries with If-Range, the token `remote_auth` allows."""

    def __init__(self, url: str, policy: RetryPolicy | None = None, *, sha256: str | None = None) -> None:
        self._response: http.client.HTTPResponse | None = None  # first: `close` may run on a failed __init__
        super().__init__(url, policy, sha256=sha256)
        self._validator: tuple[str, str] | None = None  # ("ETag" or "Last-Modified", value) of the object read
        self._size: int | None = None  # the object's length, when its answer gave one
        self._opener = opener(self._waits, remote_auth.TokenRedirects())
        self._call(lambda: None)  # connect now: a dead URL fails at open, like a missing file

    def _connected(self) -> bool:
        return self._response is not None

    def _read_some(self, n: int) -> bytes:
        response = self._response
        data = response.read(n)
        if not data and n != 0 and response.length:  # EOF before Content-Length: the connection dropped
            raise http.client.IncompleteRead(b"", response.length)
        return data

    def _final(self, err: Exception) -> BaseException | None:
        if isinstance(err, urllib.error.HTTPError):
            if err.code in _TRANSIENT_STATUS:
                return None
            answered = getattr(err, "url", None) or self.url  # after a redirect, the URL that answered
            advice = remote_auth.advice(answered, err.code) if err.code in (401, 403) else None
            where = self.url if answered == self.url else f"{self.url} (redirected to {answered})"
            return RemoteReadError(f"HTTP {err.code} {err.reason} for {where}", advice=advice)
        if isinstance(err, (OSError, http.client.HTTPException)):  # reset, refused, silence, too slow, cut body
            return None
        return err

    def _connect(self) -> None:
        self._waits.new_attempt()
        self._waits.check()
        headers = {}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self._validator is not None:
                headers["If-Range"] = self._validator[1]
        request = urllib.request.Request(self.url, headers=headers)
        remote_auth.authorize(request)
        response = self._opener.open(request, timeout=min(self.policy.timeout, BLOCK_S))
        self._response = response  # closed by `_drop` if what follows fails
        if not self.offset:
            self._validator, self._size = _validator(response), response.length
        elif response.status == 206:
            self._check_same(response)
        else:
            self._restart(response)

    def _check_same(self, response: http.client.HTTPResponse) -> None:
        """A 206 must continue the object at `offset`: same total length, same validator, where given (a server that
        omits Content-Range is taken at its word)."""
        given = response.headers.get("Content-Range")
        span = _CONTENT_RANGE.fullmatch(given.strip()) if given is not None else None
        if given is not None and (span is None or int(span.group(1)) != self.offset):
            raise http.client.HTTPException(f"asked for bytes {self.offset}- and got Content-Range {given!r}")
        total = None if span is None or span.group(2) == "*" else int(span.group(2))
        kind, value = self._validator or ("", "")
        now = response.headers.get(kind) if kind else None
        other_tag = now is not None and now != value
        if other_tag or (total is not None and self._size is not None and total != self._size):
            seen = f"{kind} {value} → {now}" if other_tag else f"{self._size:,} → {total:,} bytes"
            raise ShardChanged(f"{self.url} changed on the server while it was read (a retry at byte {self.offset:,} "
                               f"got the rest of another object: {seen}); its rest cannot be joined to what was read",
                               advice=ShardChanged.ADVICE)

    def _restart(self, response: http.client.HTTPResponse) -> None:
        """A 200 to a ranged request: the object from its start. Its first `offset` bytes must be those delivered."""
        size = response.length
        again, left = hashlib.sha256(), self.offset
        while left:
            chunk = response.read(min(left, 1 << 20))
            if not chunk:
                raise http.client.IncompleteRead(b"", left)
            again.update(chunk)
            left -= len(chunk)
        if again.digest() != self._hash.digest():
            kind, value = self._validator or ("", "")
            now = response.headers.get(kind) if kind else None
            seen = f", {kind} {value} → {now}" if now is not None and now != value else ""
            raise ShardChanged(
                f"{self.url} changed on the server while it was read: a retry at byte {self.offset:,} got the whole "
                f"object again (HTTP 200{seen}), and its first {self.offset:,} bytes differ from those already read, "
                "so its rest cannot be joined to them", advice=ShardChanged.ADVICE)
        self._validator = _validator(response) or self._validator
        self._size = size

    def _drop(self) -> None:
        if self._response is not None:
            try:
                self._response.close()
            except OSError:
                pass
            self._response = None


def _validator(response: http.client.HTTPResponse) -> tuple[str, str] | None:
    """What `If-Range` may carry for this answer: a strong ETag, or else Last-Modified (a weak ETag may not)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return "ETag", etag
    modified = response.headers.get("Last-Modified")
    return ("Last-Modified", modified) if modified else None


def fetch(url: str, limit: int = 64 << 20, stream_class: type[RemoteStream] = HTTPStream) -> bytes:
    """The whole body of a small remote file (an `_info.json`), retried like a shard (`stream_class`: http(s) here,
    `remote_fsspec.FsspecStream` for fsspec URLs)."""
    with stream_class(url) as stream:
        data = stream.read(limit + 1)
        while len(data) <= limit and (more := stream.read(limit + 1 - len(data))):
            data += more
    if len(data) > limit:
        raise RemoteReadError(f"{url} is larger than {limit} bytes; not an _info.json")
    return data


def one_line(err: BaseException, limit: int = 300) -> str:
    """An error's text on one line, at most `limit` characters (some libraries' messages span many lines)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
