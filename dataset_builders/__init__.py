"""Dataset builders: M-BEIR reader, UMR-S10 sampler, evaluation sets, synthetic scenes, OpenClipart.

Everything exports to Parquet with a dataset card, so ``datasets.load_dataset(folder)`` reads it.
See the modules: :mod:`.mbeir`, :mod:`.umr`, :mod:`.evaluation`, :mod:`.scenes`, :mod:`.openclipart`,
:mod:`.export`, :mod:`.jsonl`, :mod:`.atomic`. Data only: no model, no upload (the ``unica
build-dataset`` / ``push-dataset`` commands live in :mod:`unica.apps`).

Names are imported lazily, so importing the package needs neither ``datasets`` nor ``pyarrow``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DATASET_IDS": "mbeir",
    "MBEIR_TASKS": "mbeir",
    "MBEIRLayout": "mbeir",
    "CANDIDATE_FEATURES": "rows",
    "QRELS_FEATURES": "rows",
    "QUERY_FEATURES": "rows",
    "TRAINING_FEATURES": "rows",
    "UMRS10": "umr",
    "build_umr_s10": "umr",
    "load_training_rows": "umr",
    "stratified_sample": "umr",
    "build_evaluation_sets": "evaluation",
    "generate_scenes": "scenes",
    "load_scenes": "scenes",
    "build_openclipart": "openclipart",
    "validate_export": "export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dataset_builders' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
