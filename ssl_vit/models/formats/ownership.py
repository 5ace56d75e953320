"""Whose files an export's destination holds: only a previous export's, proven, are replaced; the rest stay.

Every export records what it wrote, inside the file that says it is ours: an hf / timm folder in config.json's
`ssl_vit.files`, a single-file export in OUT.json's `files` ({name: {size, sha256}}; the weights by size, their
header proving them ours). So

    plan = plan_export(out, fmt, overwrite)   # reads only; one line when it refuses
    plan.removal.run()                        # a previous export's files this one does not write again
    ... write the export ...                  # replaces the previous export's files of the same names

- a destination that already holds files is refused, naming them, unless `--overwrite`;
- `--overwrite` replaces a file only when it is a previous export's: config.json / OUT.json ours by content,
  the weights by their safetensors header, the card and the preprocessor config by their recorded sha256 (a card
  edited since fails it: it is partly yours). A file the export would write that is not proven ours refuses the
  export, in one line, and stays; other files in a folder stay too and are named ("kept: …");
- exports of earlier versions record no files: their card is recognised by its front matter (the `ssl_vit` and
  `masked-patch-prediction` tags), their preprocessor config by its content, beside a config.json of ours.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...errors import UserError
from ...ownership import Removal, listing, matches
from .common import CONFIG_FILE, WEIGHTS_FILE
from .hf import PREPROCESSOR_FILE

BACKBONE_FORMAT = "ssl_vit.backbone"  # models/weights.py's single-file format
CARD_FILE = "README.md"
CARD_TAGS = {"ssl_vit", "masked-patch-prediction"}


@dataclass
class ExportPlan:
    """What an export writes where, what it replaces, and what of a previous export it deletes or keeps."""

    root: Path  # the folder, or the single file's directory
    writes: list[str]
    replaces: list[Path] = field(default_factory=list)
    removal: Removal | None = None

    def note(self) -> str:
        parts = [f"--overwrite: replacing {listing(self.replaces, self.root)}" if self.replaces else "",
                 f"deleting {listing(self.removal.delete, self.root)}" if self.removal and self.removal.delete else "",
                 self.removal.kept_line("a previous export's") if self.removal else ""]
        return "; ".join(p for p in parts if p)


def export_names(out: Path, fmt: str) -> tuple[Path, list[str]]:
    """(the directory the export writes into, the names it writes there)."""
    if fmt == "safetensors":
        return out.parent, [out.name, out.with_suffix(".json").name, out.with_suffix(".md").name]
    return out, [CONFIG_FILE, WEIGHTS_FILE, *([PREPROCESSOR_FILE] if fmt == "hf" else []), CARD_FILE]


def plan_export(out: Path, fmt: str, overwrite: bool) -> ExportPlan:
    """Decide whether an export may write `out` (reads only); raises `UserError` in one line when it may not."""
    root, names = export_names(out, fmt)
    if fmt == "safetensors":
        present = [root / n for n in names if (root / n).exists() or (root / n).is_symlink()]
    else:
        present = sorted(out.iterdir()) if out.is_dir() else []
    plan = ExportPlan(root, names)
    if not present:
        return plan
    where = out if fmt != "safetensors" else root
    if not overwrite:
        raise UserError(
            f"{where} already holds {listing(present, root)}; pass --overwrite to replace a previous export's files "
            f"(nothing else is touched), or export to {'another folder' if fmt != 'safetensors' else 'another name'}")
    proofs = _previous(root, out, fmt, present)
    blocking = [p for p in present if p.name in names and proofs.get(p.name)]
    if blocking:
        reasons = "; ".join(f"{p.name}: {proofs[p.name]}" for p in blocking)
        raise UserError(
            f"--overwrite: {listing(blocking, root)} in {root} {'is' if len(blocking) == 1 else 'are'} not a previous "
            f"export's ({reasons}); an export replaces only files an export wrote: move "
            f"{'it' if len(blocking) == 1 else 'them'} away, or export {'into another folder' if fmt != 'safetensors' else 'to another name'}")
    ours = [p for p in present if not proofs.get(p.name)]
    plan.replaces = [p for p in ours if p.name in names]
    plan.removal = Removal(root, delete=[p for p in ours if p.name not in names],
                           kept=[p for p in present if proofs.get(p.name)])
    Removal(root, delete=[*plan.replaces, *plan.removal.delete]).check()  # a rename over a file is a deletion too
    return plan


# ------------------------------------------------------------------------------------------------ proofs
def _previous(root: Path, out: Path, fmt: str, present: list[Path]) -> dict[str, str]:
    """{name: why it is not a previous export's} for each present file; "" for the ones proven ours."""
    single = fmt == "safetensors"
    config_name = out.with_suffix(".json").name if single else CONFIG_FILE
    config = _our_config(root / config_name, single)
    files = config.get("files") if isinstance(config, dict) else None
    verdict = {}
    for path in present:
        name = path.name
        if path.is_symlink() or not path.is_file():
            verdict[name] = "not a file an export writes"
        elif name == config_name:
            verdict[name] = "" if config is not None else "no ssl_vit export's config"
        elif path.suffix == ".safetensors":
            verdict[name] = "" if _our_weights(path, single) and _same_size(path, files) else "not weights ssl_vit exported"
        elif isinstance(files, dict) and name in files:
            verdict[name] = "" if matches(path, files[name]) else "changed since the export wrote it"
        elif config is not None and files is None and _legacy_ours(path, single, out):
            verdict[name] = ""  # an export of an earlier version, which recorded no files
        else:
            verdict[name] = "no export recorded it" if config is not None else "no ssl_vit export beside it"
    return verdict


def _our_config(path: Path, single: bool) -> dict | None:
    """The export's own record — OUT.json (format ssl_vit.backbone) or config.json's `ssl_vit` section — or None."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if single:
        return info if info.get("format") == BACKBONE_FORMAT else None
    section = info.get("ssl_vit")
    ours = isinstance(section, dict) and (info.get("model_type") == "vit" or "architecture" in info)
    return section if ours else None


def _our_weights(path: Path, single: bool) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return False
    return header.get("format") == BACKBONE_FORMAT if single else "ssl_vit_config" in header


def _same_size(path: Path, files: object) -> bool:
    record = files.get(path.name) if isinstance(files, dict) else None
    return record is None or matches(path, record)


def _legacy_ours(path: Path, single: bool, out: Path) -> bool:
    if path.name == (out.with_suffix(".md").name if single else CARD_FILE):
        return _is_our_card(path)
    if not single and path.name == PREPROCESSOR_FILE:
        try:
            return json.loads(path.read_text()).get("image_processor_type") == "BitImageProcessor"
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return False
    return False


def _is_our_card(path: Path) -> bool:
    """A model card ssl_vit wrote: YAML front matter whose tags include ssl_vit's."""
    try:
        text = path.read_text()
        front = yaml.safe_load(text.split("---\n")[1]) if text.startswith("---\n") else None
    except (OSError, UnicodeDecodeError, IndexError, yaml.YAMLError):
        return False
    return isinstance(front, dict) and CARD_TAGS <= set(front.get("tags") or [])
