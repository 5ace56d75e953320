"""The one progress bar of ssl_vit and data_tools: a tqdm bar on a terminal, plain timed lines in a log.

On a terminal (or in a notebook) this is `tqdm.auto.tqdm` as it is. When the stream is not a terminal — a
SLURM log, `nohup`, CI — carriage-return redraws would pile up into one unreadable line, so the same bar
prints one plain line every `LOG_INTERVAL_S` seconds (and a last one at the end), with the count, rate and
ETA:

    train:  40% 400/1000 step [01:40<02:30, 4.00step/s, loss=5.1234, lr=2.00e-04]

The interval is tqdm's own `mininterval`, so tqdm's environment variable `TQDM_MININTERVAL=10` changes it,
as it changes any other tqdm default (a caller's explicit `mininterval` wins as well). Lives in data_tools (which imports no torch) so that both packages share it.
"""
from __future__ import annotations

import os
import sys
from typing import IO, Any

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm as auto_tqdm

LOG_INTERVAL_S = 30.0
_LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_OPEN_FORMAT = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"  # no total: no percentage, no ETA


class _Lines:
    """A stream for tqdm that turns each carriage-return redraw into one line of its own."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Any = None, **kwargs: Any):
    """`tqdm(iterable, **kwargs)`, in line mode when its stream (`file`, default stderr) is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or _interactive(stream):
        return auto_tqdm(iterable, **kwargs)
    kwargs["file"] = _Lines(stream)
    if "TQDM_MININTERVAL" not in os.environ:  # tqdm reads its variables once, at import
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.pop("dynamic_ncols", None)
    kwargs.pop("leave", None)  # a line already written stays; inner loops' final lines are worth keeping
    total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
    kwargs["bar_format"] = _LINE_FORMAT if total else _OPEN_FORMAT
    return plain_tqdm(iterable, **kwargs)


def _interactive(stream: IO[str]) -> bool:
    """A terminal, or a Jupyter kernel (whose streams are not terminals but draw tqdm's widget)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # closed or unusual streams
        return False
    return "ipykernel" in sys.modules
