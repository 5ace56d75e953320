"""A pickle that would run code is reported as code, naming what it calls (issue #24): through `torch.save`, a
plain `pickle.dump` at any protocol (which torch's weights-only reader stops on an opcode before reaching the
global, and which was reported as "not a readable PyTorch file; is it complete?"), or with the module's name
fetched from the pickle's memo. The file is read, never run: the command it carries leaves no trace."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from ssl_vit.errors import CheckpointError
from ssl_vit.safe_load import code_globals, load_weights_only


class Shell:
    """Unpickling this runs `touch MARKER` through os.system: a checkpoint that runs a command when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Cwd:
    def __reduce__(self):
        return (os.getcwd, ())


SAVERS = {
    "torch.save": lambda obj, path: torch.save(obj, path),
    **{f"pickle protocol {p}": (lambda p: lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=p)))(p)
       for p in (0, 2, 4, 5)},
}


@pytest.mark.parametrize("saver", SAVERS)
def test_a_pickle_that_calls_os_system_is_refused_as_code(saver: str, tmp_path: Path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    SAVERS[saver]({"weight": torch.zeros(2), "payload": Shell(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_weights_only(path, "If you trust the file, re-save its weights.")
    # pickle.dump stores a tensor through torch.storage._load_from_bytes, a full torch.load: code too, named after
    assert str(err.value).startswith(f"{path}: refusing to load: unpickling it would run code (posix.system")
    assert str(err.value).endswith(", and only tensors and plain containers are loaded (torch.load(weights_only="
                                   "True)). If you trust the file, re-save its weights.")
    assert "complete" not in str(err.value) and not marker.exists()


def test_every_global_is_found_also_through_the_memo(tmp_path: Path):
    """Protocol 4 names a global by two strings; the second global of a module fetches the module's name from
    the memo (BINGET) instead of writing it again."""
    path = tmp_path / "two.pkl"
    path.write_bytes(pickle.dumps([Shell(tmp_path / "ran"), Cwd(), Shell(tmp_path / "ran")], protocol=4))
    assert pickle.dumps("posix", protocol=4) and b"posix" in path.read_bytes()
    assert code_globals(path) == ["posix.system", "posix.getcwd"]
    assert not (tmp_path / "ran").exists()


def test_plain_data_is_not_called_code(tmp_path: Path):
    tensors = {"weight": torch.arange(4.0)}
    torch.save(tensors, tmp_path / "ok.pth")
    assert torch.equal(load_weights_only(tmp_path / "ok.pth")["weight"], tensors["weight"])
    assert code_globals(tmp_path / "ok.pth") == []
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"lr": [0.1, 0.2]}, protocol=4))  # not through torch.save
    with pytest.raises(CheckpointError, match="plain.pkl: a pickle that torch.load does not read weights-only"):
        load_weights_only(tmp_path / "plain.pkl")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "ok.pth").read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"cut.pth: not a readable PyTorch file .*is it complete\?"):
        load_weights_only(tmp_path / "cut.pth")
