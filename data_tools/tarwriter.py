"""Deterministic tar shards: fixed member metadata, exact sizes known before writing, atomic completion.

Every member has mtime 0, uid/gid 0, empty uname/gname and mode 0o644 (plain ustar headers), so a
shard's bytes depend only on its samples. Sizes are computed up front so
the packer can decide shard boundaries before writing a byte — which keeps boundaries a pure function of
the samples, the property that makes an interrupted build resumable to the identical result.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from pathlib import Path

from .samples import Sample

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: archives are padded to whole records, as tar(1) and tarfile do


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def sample_size(sample: Sample) -> int:
    """Bytes the sample occupies in a tar: a 512-byte header per member plus its data padded to 512."""
    return sum(BLOCK + _padded(len(data)) for _, data in sample.members)


def archive_size(payload: int) -> int:
    """File size of a tar holding `payload` member bytes: two zero end blocks, padded to a whole record."""
    return -(-(payload + 2 * BLOCK) // RECORD) * RECORD


# A ustar header is 512 bytes of fixed fields; only the name, the size and the checksum vary here. Built
# by hand (not `TarInfo.tobuf`) because it is 20× faster on the pass-through path and does not change
# with the Python version (tobuf's device fields did), which byte-identical rebuilds rely on.
_MODE_IDS = b"0000644\0" + b"0000000\0" + b"0000000\0"  # mode 0o644, uid 0, gid 0
_MTIME = b"00000000000\0"  # 1970-01-01
_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)  # type, link, magic, ...
_ZEROS = bytes(BLOCK)
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME) + 8 * 32 + sum(_TAIL)  # the checksum field counts as eight spaces


def _header(name: str, size: int) -> bytes:
    """The ustar header of a regular file `name` (ASCII, ≤ 100 bytes) of `size` bytes, metadata fixed.

    The checksum is the byte sum of the header; only the name and the size field vary, so the rest is summed once.
    """
    raw = name.encode("ascii")
    if len(raw) > 100 or size >= 8**11:
        raise ValueError(f"not representable in a ustar header: {name} ({size} bytes)")
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(raw) + sum(size_field)
    return b"".join((raw, bytes(100 - len(raw)), _MODE_IDS, size_field, _MTIME, b"%06o\0 " % checksum, _TAIL))


class ShardWriter:
    """Writes `final.tmp`, then fsyncs and renames it to `final`: a shard under its real name is complete."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.with_name(final.name + ".tmp")
        self._file = open(self.tmp, "wb", buffering=1 << 20)
        self._hash = hashlib.sha256()
        self.payload = 0
        self.count = 0

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    def add(self, sample: Sample) -> None:
        # One buffer per sample: a write and a hash update per member part cost more than the copy.
        parts = []
        for ext, data in sample.members:
            parts += (_header(f"{sample.key}.{ext}", len(data)), data, _ZEROS[:_padded(len(data)) - len(data)])
        self._write(b"".join(parts))
        self.payload += sample_size(sample)
        self.count += 1

    def flush(self) -> None:
        self._file.flush()

    def finish(self) -> tuple[str, int]:
        """Close the archive and publish it under its final name; returns (sha256 hex, size in bytes)."""
        size = archive_size(self.payload)
        self._write(bytes(size - self.payload))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.final)
        return self._hash.hexdigest(), size

    def abort(self) -> None:
        """Drop the partial shard. Closing flushes the buffer, which fails again on a full disk: the file goes
        either way, and the error that stopped the build is the one to report."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.tmp.unlink(missing_ok=True)
