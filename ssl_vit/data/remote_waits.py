"""Every wait of a remote read has a deadline and yields to a stop request (`remote.HTTPStream` reads through here;
`remote_fsspec.FsspecStream` accounts its waits for a reader thread's chunks to the same `Waits`).

Why not socket timeouts alone: a timeout bounds one `recv`, so a server that trickles a byte every few seconds
never trips it, and a read blocked for the whole timeout does not notice that the process was asked to stop.
Here the socket is read only when `poll` says it is readable, in slices of `POLL_S` seconds, and between slices
the read looks at three limits and at the stop request:

- silence: no byte for `silence` seconds fails the attempt (a transient error: `remote.py` retries it);
- rate: each attempt must average `min_rate` bytes/s over every `rate_window` seconds it spends waiting
  (`TooSlow`, transient too). Only time spent waiting on the socket counts: a consumer that reads slowly (a
  shuffle buffer that is full, a trainer saving a checkpoint) does not make a server slow;
- deadline: one object may spend `deadline` seconds waiting over all its attempts, back-offs included
  (`OverDeadline`, final). Without a fixed deadline it is `GRACE_S` more than its bytes so far would take at the
  minimum rate: a link that holds the minimum rate never meets it, a server that keeps a shard from finishing
  (cut after every few bytes, an endless body) does.

`interrupt_reads()` ends every wait of this process within `POLL_S` with `ReadInterrupted`. The trainer's feed calls
it when it gives a batch up after a stop request (`train/feed.py`: the stop's grace has passed and a read is still
blocked), not the signal handler itself, so a read that is merely slow still gets the grace. A single system call waits at most `BLOCK_S`: connecting, a TLS handshake, the
rest of a TLS record. A DNS lookup waits as long as the resolver does (Python cannot interrupt it).
"""
from __future__ import annotations

import functools
import http.client
import io
import select
import time
import urllib.request

POLL_S = 0.5  # a blocked read looks at its limits and the stop request this often
BLOCK_S = 10.0  # the longest single blocking system call (connect, TLS handshake, the rest of a TLS record)
GRACE_S = 900.0  # the default deadline's allowance for reconnections and back-offs beyond size / min_rate

_interrupted = False  # a plain flag: a signal handler may set it at any moment (an Event's lock could deadlock)


def interrupt_reads() -> None:
    """Make every remote wait of this process end within `POLL_S` seconds with `ReadInterrupted`. Safe to call
    from a signal handler."""
    global _interrupted
    _interrupted = True


def allow_reads() -> None:
    """Undo `interrupt_reads()`: a new stream reads again (`DataFeed` opens every stream with it)."""
    global _interrupted
    _interrupted = False


class RemoteReadError(OSError):
    """A remote shard or index could not be read, after retries where the error was transient. `advice` says what
    the user can change (None: the caller's own advice applies)."""

    def __init__(self, message: str, *, advice: str | None = None) -> None:
        super().__init__(message)
        self.advice = advice


class ReadInterrupted(RemoteReadError):
    """A stop request ended a remote wait: neither retried nor skipped."""


class OverDeadline(RemoteReadError):
    """An object spent longer than its deadline waiting, over all its attempts: not retried."""


class TooSlow(OSError):
    """An attempt fell below the minimum rate: transient, so retried like a dropped connection."""


RATE_ADVICE = ("on a link this slow, lower data.remote_min_rate (bytes/s, 0: no minimum) or lengthen "
               "data.remote_rate_window_s; or set data.shard_errors=skip to train on without the shard this epoch")


class Waits:
    """The clock of one remote object over all its attempts: silence and rate per attempt, the deadline over all,
    and the stop request. Use it as a context manager around each call that may wait (`account` and `sleep`
    inside)."""

    def __init__(self, url: str, *, min_rate: float, rate_window: float, silence: float,
                 deadline: float | None) -> None:
        self.url, self.min_rate, self.rate_window, self.silence = url, min_rate, rate_window, silence
        self.deadline = deadline
        self.received = 0  # bytes off the socket, all attempts together
        self._waited = 0.0  # seconds spent in finished calls
        self._since: float | None = None  # when the call in progress began
        self.new_attempt()

    def new_attempt(self) -> None:
        self._window_s, self._window_bytes, self._silent_s = 0.0, 0, 0.0
        self.passed_window = False  # a full rate window at or above the minimum rate: progress, whatever came after

    def __enter__(self) -> Waits:
        self._since = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self._waited += time.monotonic() - self._since
        self._since = None

    def waited(self) -> float:
        """Seconds spent waiting so far, the call in progress included."""
        return self._waited + (time.monotonic() - self._since if self._since is not None else 0.0)

    def limit(self) -> float | None:
        """The deadline in seconds of waiting now (it grows with the bytes received when derived); None: none."""
        if self.deadline is not None:
            return self.deadline
        return GRACE_S + self.received / self.min_rate if self.min_rate > 0 else None

    def check(self) -> None:
        """Raise `ReadInterrupted` on a stop request, `OverDeadline` past the deadline."""
        if _interrupted:
            raise ReadInterrupted(f"{self.url}: stopped while waiting for data (a stop was requested)")
        limit = self.limit()
        if limit is not None and self.waited() > limit:
            fixed = "data.remote_shard_deadline_s" if self.deadline is not None else (
                f"{GRACE_S:.0f} s more than its bytes take at data.remote_min_rate={self.min_rate:g} bytes/s")
            raise OverDeadline(
                f"{self.url}: not read after {self.waited():.0f} s of waiting over all attempts ({self.received:,} "
                f"bytes arrived), past its deadline of {limit:.0f} s ({fixed})",
                advice="raise data.remote_shard_deadline_s (seconds), or set data.shard_errors=skip to train on "
                       "without the shard this epoch")

    def account(self, seconds: float, received: int) -> None:
        """`seconds` spent waiting on the socket brought `received` bytes: check silence, rate and the rest."""
        self.received += received
        self._window_s += seconds
        self._window_bytes += received
        self._silent_s = 0.0 if received else self._silent_s + seconds
        if self._silent_s >= self.silence:
            raise TimeoutError(f"no data for {self._silent_s:.0f} s")
        if self.min_rate > 0 and self._window_s >= self.rate_window:
            rate = self._window_bytes / self._window_s
            if rate < self.min_rate:
                raise TooSlow(f"{self._window_bytes:,} bytes in {self._window_s:.1f} s of waiting ({rate:,.0f} "
                              f"bytes/s), below data.remote_min_rate={self.min_rate:g} bytes/s over "
                              f"data.remote_rate_window_s={self.rate_window:g}")
            self._window_s, self._window_bytes, self.passed_window = 0.0, 0, True
        self.check()

    def sleep(self, seconds: float) -> None:
        """A back-off: sleeps in slices, each followed by `check()`."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, POLL_S))
            self.check()


def opener(waits: Waits, *handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    """urllib's opener (redirects, proxies from the environment, https) whose responses read through `waits`;
    `handlers` replace or add to urllib's own (`remote_auth.TokenRedirects` for the redirects)."""
    return urllib.request.build_opener(_HTTPHandler(waits), _HTTPSHandler(waits), *handlers)


class _Watched:
    """A urllib handler whose connections give their responses a socket that reads through `waits`."""

    def __init__(self, waits: Waits) -> None:
        super().__init__()
        self.waits = waits

    def do_open(self, http_class, req, **kwargs):  # noqa: ANN001 - urllib's signature
        def connection(host, **kw):  # noqa: ANN001, ANN202
            conn = http_class(host, **kw)
            conn.response_class = functools.partial(_response, waits=self.waits)
            return conn

        return super().do_open(connection, req, **kwargs)


class _HTTPHandler(_Watched, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_Watched, urllib.request.HTTPSHandler):
    pass


def _response(sock, *args, waits: Waits, **kwargs) -> http.client.HTTPResponse:  # noqa: ANN001
    return http.client.HTTPResponse(_SocketView(sock, waits), *args, **kwargs)


class _SocketView:
    """All `HTTPResponse` asks of its socket: a file to read from, here one whose reads wait through `waits`."""

    def __init__(self, sock, waits: Waits) -> None:  # noqa: ANN001
        self._sock, self._waits = sock, waits

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_WatchedRaw(self._sock, self._waits))


class _WatchedRaw(io.RawIOBase):
    """A socket's bytes, read only when it is readable, waiting in `POLL_S` slices accounted to `waits`."""

    def __init__(self, sock, waits: Waits) -> None:  # noqa: ANN001
        super().__init__()
        self._sock, self._waits = sock, waits
        self._file = sock.makefile("rb", buffering=0)  # keeps the socket open until this closes, as http.client expects

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        while True:
            start = time.monotonic()
            got = self._file.readinto(buffer) if _readable(self._sock, POLL_S) else None
            self._waits.account(time.monotonic() - start, got or 0)
            if got is not None:
                return got

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _readable(sock, timeout: float) -> bool:  # noqa: ANN001
    """Whether a read would find data (or the end) within `timeout` seconds."""
    pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted are invisible to poll
    if pending is not None and pending():
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    return bool(select.select([sock], [], [], timeout)[0])
