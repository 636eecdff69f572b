"""``unica app --export DIR``: a Space-ready folder that runs with ``python app.py``; and what that app runs.

The folder is self-contained (no Hub download, no install of UniCA itself):

* ``app.py`` (``unica/templates/space_app.py.tmpl``), ``README.md`` with the Space's YAML header (``sdk: gradio``,
  ``app_file: app.py``, ...), ``requirements.txt`` (the third-party packages the app imports, pinned to the
  versions installed when it was exported; torch from PyTorch's CPU index), ``space_config.json``,
  ``.gitattributes`` (Git LFS for weights, Parquet and embeddings);
* the UniCA code (``unica/``, ``eval/``, ``dataset_builders/``, ``modeling_unica/``, ``configuration_unica/``),
  copied: UniCA is not on PyPI;
* the checkpoint(s) under ``models/``, the evaluation folder under ``corpus/`` (copied, not Hub ids), and
  ``embedding-cache/`` with every model's candidate embeddings of every task, under the harness's keys (the
  copies have the same fingerprints), so the Space encodes nothing at start. The embeddings come from
  ``cache_dir`` when it holds them, else they are encoded once (and stored there too).

The folder is written to a temporary folder beside ``DIR`` and renamed into place
(``dataset_builders.atomic.atomic_directory``); an existing ``DIR`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from string import Template

from dataset_builders.atomic import atomic_directory
from eval.cache import EmbeddingCache
from eval.index import IndexSpec

from .defaults import (
    DEFAULT_HOST,
    DEFAULT_K,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_QUERY_PIXELS,
    DEFAULT_PORT,
    DEFAULT_TITLE,
)
from .search import SearchModel, candidate_embeddings, check_eval_folder, corpus_key, distinct_names

logger = logging.getLogger("unica.app")

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
# The import packages the app runs on, copied into the Space.
SPACE_PACKAGES = ("unica", "eval", "dataset_builders", "modeling_unica", "configuration_unica")
# The distributions those packages import on the app's path (requirements.txt pins the installed versions).
SPACE_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "pillow", "numpy",
                      "tqdm", "pyyaml", "datasets", "pyarrow", "faiss-cpu", "gradio")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CONFIG_FILE = "space_config.json"
GITATTRIBUTES = "\n".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text" for pattern in (
    "*.safetensors", "*.bin", "*.parquet", "*.arrow", "*.npy", "*.faiss", "*.png", "*.jpg", "*.jpeg", "*.webp",
)) + "\n"


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution).split("+")[0]  # 2.13.0+cpu -> 2.13.0
    except metadata.PackageNotFoundError:
        return None


def requirements_text() -> str:
    """``requirements.txt`` of a Space: :data:`SPACE_REQUIREMENTS` at the installed versions."""
    lines = ["# The packages the UniCA search Space imports, at the versions it was exported with.",
             "# torch's CPU build (a Space's CPU hardware needs no CUDA libraries):",
             f"--extra-index-url {TORCH_CPU_INDEX}"]
    for name in SPACE_REQUIREMENTS:
        version = _installed_version(name)
        lines.append(f"{name}=={version}" if version else name)
    return "\n".join(lines) + "\n"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _package_dir(name: str) -> Path:
    import importlib

    module = importlib.import_module(name)
    return Path(module.__file__).resolve().parent


def export_space(out: str | os.PathLike, checkpoints: Sequence[str | os.PathLike], corpus: str | os.PathLike,
                 cache_dir: str | os.PathLike | None = None, task: str | None = None, k: int = DEFAULT_K,
                 title: str = DEFAULT_TITLE, max_pixels: int = DEFAULT_MAX_QUERY_PIXELS,
                 max_file_size: str | int = DEFAULT_MAX_FILE_SIZE, index_spec: IndexSpec | None = None,
                 dtype: str = "fp32", batch_size: int = 32, split: str = "test", overwrite: bool = False,
                 show_progress: bool = True) -> Path:
    """Write the Space folder ``out`` (see the module's docstring); returns its path.

    Everything is checked before a model is loaded: ``out`` (``FileExistsError`` unless ``overwrite``), the
    checkpoints' files, the evaluation folder and ``task``.
    """
    from eval.harness import load_retrieval_tasks
    from unica.checkpoint import check_checkpoint_files

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--export folder {str(out)!r} already exists; choose another folder or pass --overwrite")
    tasks = check_eval_folder(corpus, task)
    checkpoints = [Path(c) for c in checkpoints]
    if not 1 <= len(checkpoints) <= 2:
        raise ValueError(f"export one checkpoint or two to compare, got {len(checkpoints)}")
    for checkpoint in checkpoints:
        check_checkpoint_files(checkpoint)
    spec = index_spec or IndexSpec()
    names = distinct_names(checkpoints)
    folders = []
    for name in names:
        folder = _safe_name(name)
        while folder in folders:
            folder += "-2"
        folders.append(folder)
    source_cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    with atomic_directory(out, overwrite=overwrite) as staging:
        for package in SPACE_PACKAGES:
            shutil.copytree(_package_dir(package), staging / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        for checkpoint, folder in zip(checkpoints, folders):
            shutil.copytree(checkpoint, staging / "models" / folder, ignore=shutil.ignore_patterns(".*"))
        shutil.copytree(corpus, staging / "corpus", ignore=shutil.ignore_patterns(".*"))
        # The Space's cache: the same keys as the originals' (a copy has the same model and data fingerprints).
        space_cache = EmbeddingCache(staging / "embedding-cache")
        loaded = load_retrieval_tasks(corpus, tasks, split=split)
        for checkpoint, name in zip(checkpoints, names):
            model = SearchModel(checkpoint, dtype=dtype, batch_size=batch_size, name=name)
            for retrieval_task in loaded:
                embeddings, _ = candidate_embeddings(model, retrieval_task, source_cache, show_progress)
                space_cache.put(model.candidate_key, corpus_key(retrieval_task), embeddings)
            del model
        for lock in (staging / "embedding-cache").rglob("*.lock"):  # the writers' lock files: not data
            lock.unlink()
        config = {"title": title, "models": [f"models/{folder}" for folder in folders], "names": names,
                  "corpus": "corpus", "cache_dir": "embedding-cache", "task": task or tasks[0], "k": k,
                  "max_pixels": max_pixels, "max_file_size": max_file_size, "dtype": dtype, "split": split,
                  "index": _spec_text(spec)}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        shutil.copyfile(TEMPLATES / "space_app.py.tmpl", staging / "app.py")
        (staging / "requirements.txt").write_text(requirements_text(), encoding="utf-8")
        (staging / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
        model_list = " vs ".join(f"`{name}`" for name in names)
        readme = Template((TEMPLATES / "space_README.md").read_text(encoding="utf-8")).substitute(
            title=title.replace(":", " -"), gradio_version=_installed_version("gradio") or "6.31.0",
            python_version=".".join(platform.python_version_tuple()[:2]), corpus_name=Path(corpus).resolve().name,
            model_list=model_list, compare_note=(" The two models answer the same query side by side; hits both "
                                                 "return are marked *shared*.") if len(names) > 1 else "",
            model_dirs=", ".join(f"`models/{folder}`" for folder in folders), tasks=", ".join(tasks))
        (staging / "README.md").write_text(readme, encoding="utf-8")
    logger.info("wrote the Space folder %s (%s; tasks %s); run it with `cd %s && python app.py`", out, model_list,
                ", ".join(tasks), out)
    return out


def _spec_text(spec: IndexSpec) -> str:
    """``IndexSpec.parse``'s form of ``spec`` (every field that differs from the default)."""
    default = IndexSpec(kind=spec.kind)
    parts = [spec.kind] + [f"{name}={getattr(spec, name)}" for name in spec.__dataclass_fields__
                           if name != "kind" and getattr(spec, name) != getattr(default, name)]
    return ",".join(parts)


def serve_space(folder: str | os.PathLike, host: str | None = None, port: int | None = None, block: bool = True):
    """Serve a folder written by :func:`export_space` (what its ``app.py`` calls); returns the page.

    Host: ``host``, else ``GRADIO_SERVER_NAME``, else 0.0.0.0 on a Space (``SPACE_ID`` set) and 127.0.0.1
    elsewhere; port: ``port``, else ``GRADIO_SERVER_PORT``, else 7860.
    """
    import unica

    from .search import SearchSession
    from .ui import build_app, launch

    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    host = host or os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SPACE_ID") else DEFAULT_HOST)
    port = port or int(os.environ.get("GRADIO_SERVER_PORT") or DEFAULT_PORT)
    logger.info("UniCA code from %s", Path(unica.__file__).resolve().parent)
    session = SearchSession([folder / path for path in config["models"]], folder / config["corpus"],
                            cache_dir=folder / config["cache_dir"], index_spec=IndexSpec.parse(config["index"]),
                            dtype=config["dtype"], split=config["split"], max_pixels=config["max_pixels"],
                            names=config["names"])
    page = build_app(session, task=config["task"], k=config["k"], title=config["title"])
    return launch(page, host=host, port=port, block=block, max_file_size=config["max_file_size"])
