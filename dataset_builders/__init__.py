"""Dataset builders: M-BEIR reader, UMR-S10 sampler, evaluation sets, synthetic scenes, OpenClipart.

Everything exports to Parquet with a dataset card, so ``datasets.load_dataset(folder)`` reads it.
See the modules: :mod:`.mbeir`, :mod:`.umr`, :mod:`.evaluation`, :mod:`.scenes`, :mod:`.openclipart`,
:mod:`.export`, :mod:`.hub`.
"""

from .mbeir import DATASET_IDS, MBEIR_TASKS, MBEIRLayout
from .rows import CANDIDATE_FEATURES, QRELS_FEATURES, QUERY_FEATURES, TRAINING_FEATURES
from .scenes import generate_scenes, load_scenes
from .umr import UMRS10, build_umr_s10, load_training_rows, stratified_sample

__all__ = [
    "CANDIDATE_FEATURES",
    "DATASET_IDS",
    "MBEIR_TASKS",
    "MBEIRLayout",
    "QRELS_FEATURES",
    "QUERY_FEATURES",
    "TRAINING_FEATURES",
    "UMRS10",
    "build_umr_s10",
    "generate_scenes",
    "load_scenes",
    "load_training_rows",
    "stratified_sample",
]
