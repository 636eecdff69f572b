"""Making every UniCA checkpoint folder a sentence-transformers model.

The folder gets ``modules.json`` naming one module, ``st_unica.UniCAEmbedder`` (the file ships in
the folder, so ``SentenceTransformer(path, trust_remote_code=True)`` needs no unica install),
``config_sentence_transformers.json`` (prompts, similarity function) and the module's config.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# Copied, not imported: st_unica imports sentence-transformers, which writing a checkpoint must not need.
ST_MODULE_FILE = Path(__file__).with_name("st_unica.py")

DEFAULT_PROMPTS = {"query": "", "document": ""}


def write_sentence_transformers_files(folder: str | os.PathLike, prompts: dict[str, str] | None = None) -> None:
    """Write the sentence-transformers files into a checkpoint folder (the weights are shared with transformers).

    ``prompts`` maps prompt names to prefixes (``encode_query`` uses ``"query"``, ``encode_document``
    ``"document"``); existing prompts in the folder are kept unless given.

    Example:

    ```python
    >>> write_sentence_transformers_files("./unica-mini", prompts={"query": "Represent this query: "})
    ```
    """
    folder = Path(folder)
    shutil.copyfile(ST_MODULE_FILE, folder / "st_unica.py")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "st_unica.UniCAEmbedder"}]
    _write_json(folder / "modules.json", modules)
    config_path = folder / "config_sentence_transformers.json"
    existing = json.loads(config_path.read_text()) if config_path.is_file() else {}
    merged_prompts = {**DEFAULT_PROMPTS, **existing.get("prompts", {}), **(prompts or {})}
    for name, value in merged_prompts.items():
        if not isinstance(value, str):
            raise ValueError(f"prompt {name!r} must be a string, got {type(value).__name__}")
    _write_json(config_path, {
        "model_type": "SentenceTransformer",
        "prompts": merged_prompts,
        "default_prompt_name": existing.get("default_prompt_name"),
        "similarity_fn_name": "cosine",
    })


def read_prompts(folder: str | os.PathLike) -> dict[str, str]:
    """The ``prompts`` of a checkpoint folder's ``config_sentence_transformers.json`` ({} when it has none).

    ``"query"`` goes before query texts, ``"document"`` before candidate texts: the processor applies them
    (``UniCAProcessor.process_items(prompt=...)``) for sentence-transformers, MTEB, ``unica evaluate`` and training.

    Example:
        >>> read_prompts("/nonexistent")
        {}
    """
    path = Path(folder) / "config_sentence_transformers.json"
    if not path.is_file():
        return {}
    try:
        prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{path} is not a sentence-transformers config ({error}); re-save the checkpoint") from error
    bad = [name for name, value in prompts.items() if not isinstance(value, str)]
    if bad:
        raise ValueError(f"{path}: prompts {bad} are not strings")
    return dict(prompts)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
