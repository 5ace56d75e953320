"""The one way ssl_vit opens a PyTorch pickle: weights-only, so a checkpoint from a stranger cannot run code.

When the weights-only unpickler refuses a file, the refusal says why in the user's terms. torch names the global a
pickle asks for in two wordings ("Unsupported global: GLOBAL x.y", and "unsupported GLOBAL posix.system whose
module posix is blocked" for modules it never allows); a pickle written outside `torch.save` (a plain
`pickle.dump`, protocol 4 framing) fails on an opcode before any global is reached. Either way the file's pickle
is read here without running it (`pickletools`, which only decodes opcodes) for the globals it would import: a
file that would call `posix.system` is reported as code, never as "incomplete".
"""
from __future__ import annotations

import argparse
import io
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

# Plain-data classes that well-known checkpoints pickle next to their tensors and that construct nothing else:
# MAE's `checkpoint-*.pth` (and DeiT's, and many training scripts') store the run's `args` as a Namespace.
SAFE_EXTRA_GLOBALS = [argparse.Namespace]

_NAMED_GLOBAL = (re.compile(r"Unsupported global: GLOBAL (\S+)"), re.compile(r"unsupported GLOBAL (\S+) whose module"))
SCANNED_BYTES = 64 * 1024 * 1024  # of a pickle outside a zip archive: the globals of a crafted file come early


def load_weights_only(path: str | Path, trust_hint: str = "") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with every failure as one `CheckpointError` line.

    `argparse.Namespace` (the `args` MAE-style checkpoints hold) is allowed: it only sets attributes.
    A pickle that needs a code object (a `__reduce__` payload, a custom class) is refused, naming the global it
    asked for; `trust_hint` tells the user what to do if the file is theirs. Truncated or corrupt files say so.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as err:  # noqa: BLE001 — truncated or corrupt files mean the same to the user
        named = _named_global(str(err))
        code = ", ".join(_payload_first(dict.fromkeys([named] * (named is not None) + code_globals(path)))[:3])
        if code:
            raise CheckpointError(
                f"{path}: refusing to load: unpickling it would run code ({code}), and only tensors and plain "
                f"containers are loaded (torch.load(weights_only=True)). {trust_hint}".rstrip()
            ) from None
        if isinstance(err, pickle.UnpicklingError) and "Unsupported operand" in str(err) and _a_whole_pickle(path):
            raise CheckpointError(f"{path}: a pickle that torch.load does not read weights-only (written by "
                                  "pickle.dump rather than torch.save?); re-save its tensors with torch.save") from None
        if isinstance(err, pickle.UnpicklingError):
            raise CheckpointError(f"{path}: not a readable PyTorch file; is it complete?") from None
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch file ({detail}); is it complete?") from None


def code_globals(path: str | Path) -> list[str]:
    """The globals (`module.name`) the pickles in `path` would import that the weights-only unpickler does not
    allow, in the order they appear (torch's own last), read without unpickling: the `data.pkl` of a `torch.save` zip archive, else
    the pickles at the start of the file (a plain `pickle.dump`, or torch's legacy format). [] when none are
    found or the file is not a pickle."""
    allowed, allowed_prefix = _allowed_globals()
    found = [name for data in _pickles(Path(path)) for name in _globals(data)]
    return _payload_first(dict.fromkeys(
        name for name in found if name not in allowed and not name.startswith(allowed_prefix)))


def _payload_first(names) -> list[str]:
    """A payload (os.system, …) before torch's own helpers (torch.storage._load_from_bytes), else in order."""
    return sorted(names, key=lambda name: name.startswith("torch."))


def _named_global(message: str) -> str | None:
    for pattern in _NAMED_GLOBAL:
        match = pattern.search(message)
        if match:
            return match[1].rstrip(".")
    return None


def _pickles(path: Path) -> list[bytes]:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return [archive.read(info) for info in archive.infolist()
                        if info.filename.endswith("data.pkl") and info.file_size <= SCANNED_BYTES]
        with open(path, "rb") as f:
            return [f.read(SCANNED_BYTES)]
    except (OSError, zipfile.BadZipFile, ValueError):
        return []


def _a_whole_pickle(path: Path) -> bool:
    """Whether `path` starts with one complete pickle (read to its STOP without running it): a file written by
    pickle.dump, not a damaged one."""
    try:
        with open(path, "rb") as f:
            return any(op.name == "STOP" for op, _, _ in pickletools.genops(io.BytesIO(f.read(SCANNED_BYTES))))
    except Exception:  # noqa: BLE001 — not a pickle, or cut short
        return False


def _globals(data: bytes) -> list[str]:
    """Every global the pickles in `data` import (GLOBAL, INST, STACK_GLOBAL with its two strings, through the
    memo), decoding opcodes only; stops quietly where the bytes stop being a pickle (legacy torch files go on
    with raw tensor data)."""
    stream, found = io.BytesIO(data), []
    while stream.tell() < len(data):
        pushed: list[Any] = []  # what the opcodes pushed, as far as a global's name needs: strings, else None
        memo: dict[int, str] = {}  # the strings put in the pickle's memo (MEMOIZE numbers them in order)
        memo_size = 0
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                    pushed.append(None)
                elif op.name == "STACK_GLOBAL":
                    module, name = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                    found.append(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "?")
                    pushed[-2:] = [None]
                elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                    index = memo_size if op.name == "MEMOIZE" else arg
                    memo_size += op.name == "MEMOIZE"
                    if pushed and isinstance(pushed[-1], str):
                        memo[index] = pushed[-1]
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                elif len(op.stack_after) == 1 and not op.stack_before:
                    pushed.append(arg if isinstance(arg, str) else None)
                del pushed[:-2]  # a name is the last two strings pushed (or fetched from the memo)
        except Exception:  # noqa: BLE001 — not (or no longer) a pickle: what was read so far is the answer
            break
    return found


def _allowed_globals() -> tuple[set[str], tuple[str, ...]]:
    """(names, prefixes) torch's weights-only unpickler loads (its own list, private, when this torch has it; else
    anything of torch's own) and our extras."""
    names = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_EXTRA_GLOBALS}
    for g in torch.serialization.get_safe_globals():
        g = g[0] if isinstance(g, tuple) else g
        names.add(f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', getattr(g, '__name__', ''))}")
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        names.update(_get_allowed_globals())
    except (ImportError, AttributeError):  # another torch: anything of torch's own counts as allowed
        return names | {"collections.OrderedDict"}, ("torch.",)
    return names, ()
