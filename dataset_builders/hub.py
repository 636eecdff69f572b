"""Push an exported dataset folder to the Hugging Face Hub (``huggingface_hub.upload_folder``).

Example::

    files = push_dataset("./UMR-S10", "my-org/UMR-S10", dry_run=True)   # validate, list, upload nothing
    push_dataset("./UMR-S10", "my-org/UMR-S10", private=True)
"""

from __future__ import annotations

import logging
from pathlib import Path

from .export import COMPLETE_MARKER, read_card_metadata

logger = logging.getLogger(__name__)


def validate_export(folder: str | Path) -> list[str]:
    """Check that ``folder`` is a complete export; return the files an upload would send (sorted, relative).

    Complete: a ``README.md`` whose YAML ``configs`` point at Parquet files that exist, and no leftover
    staging folders or stray files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder; pass the --out folder of build-dataset")
    if folder.name.startswith(".") and ".partial-" in folder.name:
        raise ValueError(f"{folder} is an unfinished export (a staging folder); build it again")
    metadata = read_card_metadata(folder)
    if not metadata.get("configs"):
        raise ValueError(
            f"{folder / COMPLETE_MARKER} is missing or has no YAML 'configs'; is {folder} a build-dataset output "
            "(an M-BEIR root must be exported first, e.g. build-dataset umr-s10)?"
        )
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    for config in metadata["configs"]:
        for data_file in config.get("data_files", []):
            pattern = data_file["path"]
            if not list(folder.glob(pattern)):
                raise ValueError(f"{folder}: config {config['config_name']!r} names {pattern!r} but no file matches it")
    stray = [f for f in files if f != COMPLETE_MARKER and not (f.startswith("data/") and f.endswith(".parquet"))]
    if stray:
        raise ValueError(f"{folder} holds files that are not part of the export, e.g. {stray[:3]}; remove them")
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
    from unica.hub import check_repo_id, upload_validated_folder

    check_repo_id(repo_id)
    files = validate_export(folder)
    return upload_validated_folder(folder, repo_id, files, repo_type="dataset", private=private, revision=revision,
                                   commit_message=commit_message, token=token, dry_run=dry_run)
