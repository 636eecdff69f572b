"""Uploading folders to the Hugging Face Hub: one place for repo-id checks and ``upload_folder``.

``push_dataset("./UMR-S10", "my-org/UMR-S10", dry_run=True)`` validates an exported dataset folder
(:func:`dataset_builders.export.validate_export`) and lists or uploads it.

Used by ``unica push`` (model checkpoints) and ``unica push-dataset`` (exported datasets); each
validates its own folder first and passes the list of files it checked.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: str) -> str:
    """Raise ``ValueError`` unless ``repo_id`` looks like ``org-or-user/name``."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"repo id {repo_id!r} must look like 'org-or-user/name'")
    return repo_id


def upload_validated_folder(
    folder: str | Path,
    repo_id: str,
    files: list[str],
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Create ``repo_id`` if needed and upload ``folder`` (already validated; ``files`` is what it holds).

    With ``dry_run`` nothing is sent: the files that would be uploaded are logged and returned.

    Example:

    ```python
    >>> upload_validated_folder("./unica-mini", "my-org/unica-mini", files, dry_run=True)
    ```
    """
    check_repo_id(repo_id)
    prefix = "datasets/" if repo_type == "dataset" else ""
    if dry_run:
        logger.info("dry run: would upload %d files from %s to %s%s:\n  %s", len(files), folder, prefix, repo_id,
                    "\n  ".join(files))
        return files
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise ConnectionError(
            f"cannot upload {folder} to {prefix}{repo_id}: HF_HUB_OFFLINE is set; unset it (and log in with "
            "`hf auth login`) to upload, or pass --dry-run to validate and list the files only"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(folder),
            allow_patterns=list(files),  # only what was validated: never checkpoint-N/, logs or stray files
            revision=revision,
            commit_message=commit_message or f"Upload {Path(folder).name} ({len(files)} files)",
        )
    except OSError as error:  # no network, DNS, refused, and HfHubHTTPError (401, 403, 404 ...) alike
        raise ConnectionError(
            f"could not upload {folder} to {prefix}{repo_id}: {str(error).splitlines()[0]}; check the network "
            "and your token (`hf auth login`), or pass --dry-run to validate only"
        ) from error
    logger.info("uploaded %d files to https://huggingface.co/%s%s", len(files), prefix, repo_id)
    return files


def push_dataset(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Validate ``folder`` and upload it as the dataset repo ``repo_id`` (created if needed).

    Returns the list of uploaded (or, with ``dry_run``, would-be uploaded) files.
    """
    from dataset_builders.export import validate_export

    check_repo_id(repo_id)
    files = validate_export(folder)
    return upload_validated_folder(folder, repo_id, files, repo_type="dataset", private=private, revision=revision,
                                   commit_message=commit_message, token=token, dry_run=dry_run)
