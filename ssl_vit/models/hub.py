"""`--push-to-hub REPO_ID`: an exported folder onto the Hugging Face Hub, through huggingface_hub's own calls.

    push_folder("exports/vit_b16_mpp", "me/vit-b16-mpp")   # create_repo(exist_ok=True), then upload_folder

huggingface_hub is an optional extra (`pip install 'ssl_vit[hub]'`); the token is huggingface_hub's usual one
(`hf auth login` or HF_TOKEN). Every failure — missing package, no token, no network, a refused repo — is one line.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError


class HubError(UserError):
    """Pushing to the Hugging Face Hub failed."""


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, commit_message: str | None = None) -> str:
    """Create `repo_id` (a model repository; kept if it exists) and upload `folder` into it; returns the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ModuleNotFoundError:
        raise HubError("--push-to-hub needs huggingface_hub: pip install 'ssl_vit[hub]'") from None
    folder = Path(folder)
    api = HfApi()
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message or f"Upload {folder.name} exported by ssl_vit")
    except Exception as err:  # noqa: BLE001 - HTTP, auth, validation and connection errors all mean: not pushed
        detail = " ".join(str(err).split())[:300] or type(err).__name__
        raise HubError(f"--push-to-hub {repo_id}: {type(err).__name__}: {detail}; the export is complete in "
                       f"{folder}; push it later with `hf upload {repo_id} {folder}`") from None
    return str(getattr(commit, "commit_url", commit))
