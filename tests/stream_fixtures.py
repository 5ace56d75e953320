"""Reading the test shards back: a stream's first batches, and a quiet HTTP handler to serve a shard folder."""
from __future__ import annotations

import http.server
import itertools


def take(stream, n: int) -> list[dict]:
    """The stream's first n batches; the stream is closed afterwards (its workers shut down), also on an error."""
    try:
        return list(itertools.islice(iter(stream), n))
    finally:
        stream.close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder (`functools.partial(QuietHandler, directory=...)`) without logging every request."""

    def log_message(self, *args: object) -> None:
        pass
