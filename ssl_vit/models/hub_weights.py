"""Weights on the Hugging Face Hub: `model.init_from` and `ssl-vit eval --checkpoint` (so a fine-tuning recipe's
`model.init_from` too) may name a model repository, which huggingface_hub brings into its cache; the snapshot is
then read like any local Hugging Face ViT or timm folder (`folder_kind`, `read_folder`).

    hub = hub_id("hf-hub:timm/vit_base_patch16_224.augreg_in21k", "model.init_from")   # HubId(repo, None)
    folder = fetch(hub, "model.init_from")   # …/models--timm--vit_…/snapshots/<commit>/: config.json + weights

The spellings:
  - `hf-hub:ORG/NAME` (timm's spelling; `hf-hub:NAME` for the few repos without an organisation), optionally
    `@REVISION` (a branch, tag or commit): always the Hub, whatever exists locally. Malformed, it is one line.
  - `ORG/NAME[@REVISION]`, e.g. `timm/vit_base_patch16_224.augreg_in21k`: the Hub only when nothing of that name
    exists here (a local path wins) and NAME does not end like a file (`.pth`, `.safetensors`, …): a missing
    `runs/x.pth` stays a missing file. Anything else (absolute, `./…`, three parts) is a local path.
What is fetched: `config.json`, then the first weights file of `WEIGHT_NAMES` the repository has (timm's and
transformers' order), at the commit config.json came from — never the whole repository (its TF, Flax or ONNX
copies). huggingface_hub decides where its cache is (HF_HUB_CACHE, HF_HOME) and whether it may use the network
(HF_HUB_OFFLINE=1: the cache only); ssl_vit reads neither. Every failure is one CheckpointError line: no
huggingface_hub (`pip install 'ssl_vit[hub]'`), a malformed id, a repository or revision the Hub does not have
(or gated / private: log in), not cached while offline or unreachable (with the `hf download` that fetches it),
no weights file, a config.json that is no ViT.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .formats.common import CONFIG_FILE, WEIGHT_NAMES, folder_kind, read_json

HUB_PREFIX = "hf-hub:"
INSTALL = "pip install 'ssl_vit[hub]'"
# huggingface_hub's rule (utils/_validators.py: validate_repo_id): word characters, '-', '.'; no '--' or '..';
# starting and ending with a word character; at most 96 characters; not ending in '.git'.
_PART = r"\w(?:[\w.-]*\w)?"
_REPO = re.compile(rf"(?:{_PART}/)?{_PART}")
_REVISION = re.compile(r"[\w.][\w./-]*")
# What a bare ORG/NAME ending like this names is a file (missing, else it would have won): never a Hub id.
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar", ".npz", ".json", ".yaml", ".yml", ".ckpt")


@dataclass(frozen=True)
class HubId:
    """A model repository on the Hub, the revision asked for (None: its default branch), and whether it was
    spelled `hf-hub:` (else it was a bare ORG/NAME that no local path has, which messages say)."""

    repo_id: str
    revision: str | None = None
    prefixed: bool = True

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.name}"

    @property
    def name(self) -> str:
        """The repository without the prefix, `ORG/NAME[@REVISION]`: a label for tables and logs."""
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    @property
    def spelled(self) -> str:
        """How messages name it: as written, and for a bare id why it is read as one."""
        return str(self) if self.prefixed else f"{self.name} (no such local path, so a Hugging Face Hub id)"


def hub_id(text: str, where: str) -> HubId | None:
    """The Hub repository `text` names, or None when it names a local path (the rules of the module docstring).
    An `hf-hub:` id that is not well formed raises one line, prefixed by `where` (the recipe key or flag)."""
    if text.startswith(HUB_PREFIX):
        found = _parse(text[len(HUB_PREFIX):])
        if found is None:
            raise CheckpointError(
                f"{where} {text}: not a Hugging Face Hub model id; write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION "
                "(letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters), e.g. "
                "hf-hub:timm/vit_base_patch16_224.augreg_in21k")
        return found
    if text.partition("@")[0].count("/") != 1 or Path(text).exists():
        return None
    found = _parse(text, prefixed=False)
    if found is None or found.repo_id.lower().endswith(_FILE_SUFFIXES):
        return None
    return found


def _parse(text: str, prefixed: bool = True) -> HubId | None:
    repo, at, revision = text.partition("@")
    if not _REPO.fullmatch(repo) or len(repo) > 96 or "--" in repo or ".." in repo or repo.endswith(".git"):
        return None
    if at and not _REVISION.fullmatch(revision):
        return None
    return HubId(repo, revision or None, prefixed)


def fetch(hub: HubId, where: str) -> Path:
    """The local snapshot folder (named by its commit) holding `hub`'s config.json and weights, downloaded into
    huggingface_hub's cache unless already there; checked to be a folder ssl_vit reads."""
    said = f"{where} {hub.spelled}"
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # not installed, or older than the extra's floor (no huggingface_hub.errors names)
        raise CheckpointError(f"{said}: reading weights from the Hugging Face Hub needs huggingface_hub >= 2.4: "
                              f"{INSTALL}") from None

    def get(filename: str, revision: str | None) -> Path:
        return Path(hf_hub_download(hub.repo_id, filename, revision=revision, library_name="ssl_vit"))

    fetch_hint = (f"fetch it where the Hub is reachable with `hf download {hub.repo_id} {CONFIG_FILE} "
                  f"{WEIGHT_NAMES[0]}{'' if hub.revision is None else f' --revision {hub.revision}'}` "
                  f"({WEIGHT_NAMES[1]} for a repository without safetensors) into the same cache")
    try:
        config = get(CONFIG_FILE, hub.revision)
        commit = config.parent.name  # snapshots/<commit>/config.json: the weights must come from the same commit
        missing = []
        for filename in WEIGHT_NAMES:
            try:
                get(filename, commit)
                break
            except RemoteEntryNotFoundError:
                continue  # the repository has no such file: try the next kind
            except LocalEntryNotFoundError as err:
                missing.append(err)  # not cached, and the Hub unreachable or not to be asked
        else:
            if missing:
                raise missing[0]
            raise CheckpointError(f"{said}: the repository has none of {', '.join(WEIGHT_NAMES)} beside its "
                                  f"{CONFIG_FILE} (sharded weights are not read); pick one with a single weights file")
    except GatedRepoError:
        raise CheckpointError(f"{said}: the repository is gated; accept its terms on https://huggingface.co/"
                              f"{hub.repo_id} and log in (`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{said}: no such model repository on the Hugging Face Hub (or it is private: log in "
                              "with `hf auth login` or HF_TOKEN); check the spelling ORG/NAME") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{said}: the repository has no revision {hub.revision!r}; name a branch, tag or "
                              "commit it has") from None
    except RemoteEntryNotFoundError:
        raise CheckpointError(f"{said}: the repository has no {CONFIG_FILE}, so it is no transformers or timm model "
                              "that ssl_vit reads") from None
    except LocalEntryNotFoundError as err:
        cache = constants.HF_HUB_CACHE
        if constants.is_offline_mode():
            raise CheckpointError(f"{said}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
                                  f"{fetch_hint}, or unset HF_HUB_OFFLINE") from None
        raise CheckpointError(f"{said}: the Hub is unreachable ({_short(err.__cause__ or err)}) and the files are "
                              f"not in the cache ({cache}); check the connection, or {fetch_hint}") from None
    except (HfHubHTTPError, OSError, ValueError) as err:  # HTTP, disk and validation errors: not fetched
        raise CheckpointError(f"{said}: {type(err).__name__}: {_short(err)}") from None
    folder = config.parent
    if folder_kind(folder) is None:
        info = read_json(config)
        names = f"model_type {info['model_type']!r}" if "model_type" in info else "no model_type or architecture"
        raise CheckpointError(f"{said}: its {CONFIG_FILE} names {names}; ssl_vit reads transformers ViT repositories "
                              "(model_type 'vit') and timm ones (an architecture with ViT weights)")
    return folder


def fetched_name(hub: HubId, folder: Path) -> str:
    """How logs name weights fetched from the Hub: the id as asked and the commit read (the snapshot's name)."""
    return f"{hub} (commit {folder.name})"


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__
