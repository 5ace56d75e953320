"""HTTP(S) shards and indexes that fail softly: a transient read error is retried with back-off, resuming where
the data stopped, a bounded number of times.

Why not webdataset's opener: it pipes through `curl -s`, so a connection dropped mid-shard surfaces as a cut
tar (or, without a Content-Length, as nothing at all), and the whole shard is lost. Here a dropped
connection, a reset, a timeout, a body shorter than its Content-Length, or a 408/429/5xx answer is retried
after 1, 2, 4, … s (at most `max_delay`), asking for the rest with a `Range` request (or skipping what was
already read when the server ignores ranges). A failure that makes no progress counts against `attempts`;
a retry that delivers data resets the count, so a long shard on a flaky link still finishes, while a dead
server stops after `attempts` tries. Then `RemoteReadError` is raised, and the stream stops or skips the
shard as configured (`shard_errors`). A 404 or 403 is not transient: it fails at once. s3:// URLs go
through the AWS CLI, which retries by itself.
"""
from __future__ import annotations

import http.client
import io
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # failures in a row without progress before giving up
    first_delay: float = 1.0  # seconds before the first retry, doubled each time
    max_delay: float = 30.0
    timeout: float = 60.0  # seconds a connection may stay silent


RETRY = RetryPolicy()


class RemoteReadError(OSError):
    """A remote shard or index could not be read, after retries where the error was transient."""


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


class HTTPStream(io.RawIOBase):
    """A readable byte stream of one URL that reconnects and resumes on transient errors."""

    def __init__(self, url: str, policy: RetryPolicy | None = None) -> None:
        super().__init__()
        self.url = url
        self.policy = policy or RETRY
        self.offset = 0  # bytes delivered so far
        self.retries = 0  # reconnections made (for the tests and the log)
        self._response: http.client.HTTPResponse | None = None
        self._call(lambda: None)  # connect now: a dead URL fails at open, like a missing file

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._call(lambda: self._read_some(n))
        self.offset += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
        super().close()

    def _read_some(self, n: int) -> bytes:
        response = self._response
        data = response.read() if n is None or n < 0 else response.read(n)
        if not data and n != 0 and response.length:  # EOF before Content-Length: the connection dropped
            raise http.client.IncompleteRead(b"", response.length)
        return data

    def _call(self, action):
        """Run `action` with a connection, reconnecting after transient errors (see the module doc)."""
        failures, delay = 0, self.policy.first_delay
        while True:
            try:
                if self._response is None:
                    self._connect()
                return action()
            except urllib.error.HTTPError as err:
                if err.code not in _TRANSIENT_STATUS:
                    raise RemoteReadError(f"HTTP {err.code} {err.reason} for {self.url}") from None
                last = err
            except (OSError, http.client.HTTPException) as err:  # reset, refused, timeout, incomplete body
                last = err
            self._drop()
            failures += 1
            if failures >= self.policy.attempts:
                raise RemoteReadError(
                    f"{self.url}: {failures} attempts failed at byte {self.offset} "
                    f"(last: {type(last).__name__}: {last})") from None
            time.sleep(delay)
            delay = min(2 * delay, self.policy.max_delay)
            self.retries += 1

    def _connect(self) -> None:
        headers = {"Range": f"bytes={self.offset}-"} if self.offset else {}
        response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),
                                          timeout=self.policy.timeout)
        if self.offset and response.status != 206:  # the server ignored the range: skip what we have
            left = self.offset
            while left:
                chunk = response.read(min(left, 1 << 20))
                if not chunk:
                    raise http.client.IncompleteRead(b"", left)
                left -= len(chunk)
        self._response = response

    def _drop(self) -> None:
        if self._response is not None:
            try:
                self._response.close()
            except OSError:
                pass
            self._response = None


def fetch(url: str, limit: int = 64 << 20) -> bytes:
    """The whole body of a small remote file (an `_info.json`), retried like a shard."""
    with HTTPStream(url) as stream:
        data = stream.read(limit + 1)
        while len(data) <= limit and (more := stream.read(limit + 1 - len(data))):
            data += more
    if len(data) > limit:
        raise RemoteReadError(f"{url} is larger than {limit} bytes; not an _info.json")
    return data
