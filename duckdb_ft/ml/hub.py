"""Push an exported model folder to the Hugging Face Hub (``export ... --push-to-hub REPO_ID``), with
huggingface_hub (installed with transformers; ``pip install duckdb-ft[hub]`` names it).

:func:`prepare` does every check that needs no upload, in order, before anything is exported: the repository id's
form, offline mode (``HF_HUB_OFFLINE``), a token (``HF_TOKEN``, or one saved by ``hf auth login``), and the hub
itself (creating the repository, or finding it, is the first request: an unreachable hub fails it). So offline
or unreachable, the export fails with a :class:`RemoteError` that says to export a folder instead, and nothing is
written. :func:`upload` then sends the finished folder as one commit (the hub applies a commit whole or not at all).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, RemoteError

INSTEAD = ("export to a folder instead (duckdb-ft export DATABASE MODEL FOLDER, or export_model(con, name, folder)) "
           "and upload that folder where you are online (hf upload REPO_ID FOLDER)")


@dataclass
class Target:
    """A checked hub repository to upload to."""

    api: Any
    repo_id: str
    url: str
    repo_type: str = "model"


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    return constants.HF_HUB_OFFLINE if env is None else env.strip().upper() in ("1", "ON", "YES", "TRUE")


def prepare(repo_id: str, private: bool = True, repo_type: str = "model") -> Target:
    """Check that ``repo_id`` can be pushed to, and create it (``private``; a ``repo_type`` ``model`` or
    ``dataset`` repository) if it does not exist.

    Raises:
        InvalidArgument: the id is not ``user/name``; RemoteError: offline, no token, hub unreachable or refusing.
    """
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - transformers installs it
        raise RemoteError("push_to_hub needs huggingface_hub: pip install 'duckdb-ft[hub]'") from None
    if not isinstance(repo_id, str) or "/" not in repo_id:
        raise InvalidArgument(f"push_to_hub takes a repository id 'user/name' (or 'organization/name'), "
                              f"got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InvalidArgument(f"invalid hub repository id {repo_id!r}: {e}") from None
    if _offline():
        raise RemoteError(f"cannot push to the Hugging Face Hub: this machine is offline (HF_HUB_OFFLINE is set); "
                          f"{INSTEAD}. Nothing was written.")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN") or None)
    if not api.token and not _saved_token():
        raise RemoteError("cannot push to the Hugging Face Hub without a token: set HF_TOKEN to a token with write "
                          f"access (huggingface.co/settings/tokens), or {INSTEAD}. Nothing was written.")
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
    except Exception as e:  # connection refused, DNS, timeout, 401/403, ...
        raise RemoteError(f"cannot reach the Hugging Face Hub to create {repo_id} ({_reason(e)}): {INSTEAD}. "
                          "Nothing was written.") from None
    return Target(api, repo_id, str(url), repo_type)


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def upload(target: Target, folder: str, message: str) -> str:
    """Upload ``folder``'s files to the repository in one commit; the repository's URL."""
    try:
        target.api.upload_folder(repo_id=target.repo_id, folder_path=folder, commit_message=message,
                                 repo_type=target.repo_type)
    except Exception as e:
        raise RemoteError(f"uploading to the Hugging Face Hub repository {target.repo_id} failed ({_reason(e)}); "
                          f"no commit was made. {INSTEAD[0].upper()}{INSTEAD[1:]}.") from None
    return target.url
