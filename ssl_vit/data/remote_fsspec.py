"""`hf://`, `gs://` and other fsspec URLs, read with the same promises as http(s) shards (`remote.py`).

fsspec (the `remote` extra) opens them through the protocol's own library: huggingface_hub's `HfFileSystem` for
`hf://datasets/ORG/NAME/FILE`, gcsfs for `gs://BUCKET/PATH`, and so for any protocol fsspec knows (`az://`,
chained `simplecache::gs://…`). Which URLs: every `SCHEME://` but those read elsewhere (`ELSEWHERE`: plain files,
http(s) by `remote.HTTPStream`, s3 by the AWS CLI, webdataset's curl schemes). The check that fsspec and the
protocol's library are installed runs when the data spec is resolved (`check_backend`), so a missing one is one
line naming the pip install before anything starts, not an error inside a loader worker.

What the stream keeps of `remote.py`'s promises (`FsspecStream` is a `remote.RemoteStream`):
- the sha256 `_info.json` gives is checked at the object's end (`finish()`, as for http);
- every wait has the same limits: silence, minimum rate, the deadline over all attempts, and a stop request
  (`interrupt_reads`). A library call cannot be interrupted, so it runs in a reader thread that hands 1 MiB
  chunks through a small queue (at most `QUEUE_CHUNKS` ahead: bounded memory), and the stream waits on the queue
  in `POLL_S` slices, accounted like a socket's waits. A thread still blocked in its library when its attempt
  is given up is left to finish on its own (it is a daemon, and drops what it reads);
- transient failures (dropped connections, timeouts, 408/429/5xx, a body shorter than the object's size) are
  retried from the byte reached, by opening the object again and seeking there: the backends' own retries come
  first, ours bound the whole;
- one object: the object's size and version (`etag`, `generation`, `blob_id`, `mtime`, … whichever the backend
  reports) are read before each attempt, and a retry that finds another version fails with `ShardChanged`
  rather than join two objects;
- a missing object, refused access (401/403), a malformed URL fail at once, in one line (credentials: the
  backend's own, see `remote_auth.py`).
"""
from __future__ import annotations

import queue
import re
import threading
import time

from ssl_vit.errors import DataError

from .remote import RemoteReadError, RemoteStream, RetryPolicy, ShardChanged, one_line
from .remote_waits import POLL_S

CHUNK = 1 << 20  # bytes per read of the backend
QUEUE_CHUNKS = 4  # chunks a reader thread may read ahead of the stream
# Schemes read elsewhere: plain files, http(s) (remote.HTTPStream), s3 (the AWS CLI), webdataset's curl openers.
ELSEWHERE = frozenset({"file", "http", "https", "s3", "pipe", "sftp", "ftps", "scp", "ais", "htgs"})
# What to pip install for the common protocols: fsspec with the protocol's library, or (fsspec there) the library.
_WITH_FSSPEC = {"hf": "'ssl_vit[remote,hub]'", "gs": "'ssl_vit[remote]' gcsfs", "gcs": "'ssl_vit[remote]' gcsfs"}
_LIBRARY = {"hf": "'ssl_vit[hub]'", "gs": "gcsfs", "gcs": "gcsfs"}
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_FINAL = (PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError, NotImplementedError,
          ImportError, AttributeError, LookupError)
_PROTOCOLS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*(?:::[A-Za-z][A-Za-z0-9+.\-]*)*)://")
# Final errors of backends, by name (their libraries are optional): huggingface_hub with HF_HUB_OFFLINE set.
_FINAL_NAMES = frozenset({"OfflineModeIsEnabled"})
_VERSION_KEYS = ("etag", "ETag", "generation", "blob_id", "mtime", "LastModified", "last_modified", "created")


class BackendMissing(DataError):
    """fsspec, or the library it needs for a protocol, is not installed."""


def protocols(url: str) -> list[str]:
    """The protocols of a URL, outermost first (`simplecache::gs://b/x` → ["simplecache", "gs"]); [] for none
    (a path, or `pipe:curl https://…`, whose text before `://` is no scheme)."""
    found = _PROTOCOLS.match(url)
    return found.group(1).lower().split("::") if found else []


def is_fsspec(url: str) -> bool:
    """Whether `url` is read through fsspec: a `SCHEME://` URL whose scheme no other reader takes."""
    found = protocols(url)
    return bool(found) and found[0] not in ELSEWHERE


def check_backend(url: str) -> None:
    """Raise `BackendMissing` (one line, naming the pip install) unless fsspec and every protocol's library of
    `url` import. Imports only: no connection, no credentials."""
    found = protocols(url) or ["?"]
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError:
        install = _WITH_FSSPEC.get(found[0], f"'ssl_vit[remote]' and the fsspec library for {found[0]}")
        raise BackendMissing(f"{url}: {found[0]}:// URLs are read through fsspec, which is not installed: "
                             f"pip install {install}") from None
    for protocol in found:
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            package = known_implementations.get(protocol, {}).get("class", protocol).split(".")[0]
            raise BackendMissing(f"{url}: fsspec reads {protocol}:// URLs through {package}, which is not installed "
                                 f"({one_line(exc, 120)}): pip install {_LIBRARY.get(protocol, package)}") from None
        except ValueError:
            raise BackendMissing(f"{url}: no reader knows the protocol {protocol!r} (neither ssl_vit nor fsspec); "
                                 "check the URL, or install the fsspec library that provides it") from None


class FsspecStream(RemoteStream):
    """An fsspec URL's `RemoteStream` (see the module's docstring)."""

    def __init__(self, url: str, policy: RetryPolicy | None = None, *, sha256: str | None = None) -> None:
        self._fetch: _Fetch | None = None  # first: `close` may run on a failed __init__
        super().__init__(url, policy, sha256=sha256)
        check_backend(url)
        self._chunk, self._pos, self._eof = b"", 0, False
        self._version: tuple[object, object] | None = None  # (size, version) of the object first opened
        self._call(lambda: None)  # open now: a missing object fails at open, like a missing file

    def _connected(self) -> bool:
        return self._fetch is not None

    def _connect(self) -> None:
        self._waits.new_attempt()
        self._waits.check()
        self._fetch = _Fetch(self.url, self.offset)
        info = self._take()
        seen = (info.get("size"), next((info[k] for k in _VERSION_KEYS if info.get(k) is not None), None))
        if self._version is None:
            self._version = seen
        elif seen != self._version:
            raise ShardChanged(f"{self.url} changed while it was read (a retry at byte {self.offset:,} found size, "
                               f"version {self._version} → {seen}); its rest cannot be joined to what was read",
                               advice=ShardChanged.ADVICE)

    def _read_some(self, n: int) -> bytes:
        if n == 0:
            return b""
        if self._pos >= len(self._chunk):
            if self._eof:
                return b""
            self._chunk, self._pos = self._take(), 0
            if not self._chunk:
                self._eof = True
                size = self._version[0] if self._version is not None else None
                if isinstance(size, int) and self.offset != size:
                    raise _CutShort(f"the body ended at byte {self.offset:,} of {size:,}")
                return b""
        data = self._chunk[self._pos : self._pos + n]
        self._pos += len(data)
        return data

    def _take(self):
        """The reader thread's next item (the object's info, then chunks, b"" at its end), waiting in slices
        accounted to the waits (silence, rate, deadline, stop request); a failure in the thread is raised here."""
        fetch = self._fetch
        while True:
            start = time.monotonic()
            try:
                kind, value = fetch.queue.get(timeout=POLL_S)
            except queue.Empty:
                kind, value = None, None
            self._waits.account(time.monotonic() - start, len(value) if kind == "data" else 0)
            if kind == "error":
                raise value
            if kind is not None:
                return value

    def _drop(self) -> None:
        if self._fetch is not None:
            self._fetch.stop()
            self._fetch = None
        self._chunk, self._pos, self._eof = b"", 0, False

    def _final(self, err: Exception) -> BaseException | None:
        status = _status(err)
        if status in (401, 403) or isinstance(err, PermissionError):
            code = f"HTTP {status}" if status is not None else type(err).__name__
            return RemoteReadError(f"{self.url}: access refused ({code}: {one_line(err, 160)})",
                                   advice=credentials_advice(self.url))
        if isinstance(err, FileNotFoundError) or status == 404:
            return RemoteReadError(f"{self.url} does not exist ({one_line(err, 160)})",
                                   advice="check the path in the data spec; " + credentials_advice(self.url))
        if status is not None and status not in _TRANSIENT_STATUS and 400 <= status < 500:
            return RemoteReadError(f"{self.url}: HTTP {status} ({one_line(err, 160)})")
        if isinstance(err, _FINAL) or type(err).__name__ in _FINAL_NAMES:
            return RemoteReadError(f"{self.url}: {type(err).__name__}: {one_line(err, 200)}")
        return None  # dropped connections, timeouts, 5xx, a cut body, anything a backend raises for them


def credentials_advice(url: str) -> str:
    """Where the backend of `url` takes its credentials from, in one clause."""
    protocol = (protocols(url) or ["?"])[-1]
    if protocol == "hf":
        return ("a gated or private dataset reads as missing or refused without access: set HF_TOKEN (or run "
                "`hf auth login`) for an account that accepted the dataset's terms on its Hub page")
    if protocol in ("gs", "gcs"):
        return ("gcsfs uses Google's application-default credentials: run `gcloud auth application-default login` "
                "or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key")
    return f"check the credentials fsspec's {protocol} library uses"


def _status(err: BaseException) -> int | None:
    """An HTTP status carried by a backend's error (`code`, `status`, `status_code`, or its response's), if any."""
    for obj in (err, getattr(err, "response", None)):
        for name in ("status_code", "status", "code"):
            value = getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
                return value
    return None


class _CutShort(OSError):
    """The body ended before the object's size: transient, so read again from the byte reached."""


class _Fetch:
    """One attempt's reader thread: the object's info, then its bytes from `offset`, in chunks through `queue`."""

    def __init__(self, url: str, offset: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._stopped = threading.Event()
        threading.Thread(target=self._run, args=(url, offset), name="ssl_vit fsspec read", daemon=True).start()

    def stop(self) -> None:
        """The stream let this attempt go: the thread ends at its next chunk (or when its library returns)."""
        self._stopped.set()

    def _run(self, url: str, offset: int) -> None:
        try:
            from fsspec.core import url_to_fs

            fs, path = url_to_fs(url)
            if not self._put(("info", dict(fs.info(path)))):
                return
            with fs.open(path, "rb") as file:
                if offset:
                    file.seek(offset)
                    if file.tell() != offset:  # a file that cannot resume must not deliver its first bytes again
                        raise NotImplementedError(f"{url} did not seek to byte {offset:,}, so its read cannot resume")
                while True:
                    data = file.read(CHUNK)
                    if not self._put(("data", data)) or not data:
                        return
        except BaseException as exc:  # noqa: BLE001 - the stream decides what it means (`_final`)
            self._put(("error", exc))

    def _put(self, item: tuple) -> bool:
        while not self._stopped.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False
