"""Evaluation of ANY encoder (as MTEB does): retrieval metrics, harness, FAISS search, statistics, reports,
embedding cache.

The harness (:mod:`eval.harness`) takes an encoder object (``eval.harness.Encoder``: ``encode`` + a
``fingerprint``); :mod:`eval.encoders` wraps sentence-transformers models, ``unica.encoding.UniCAEncoder``
a UniCA model. Nothing here imports ``unica``.

Import the submodules you need (``from eval.metrics import compute_ranking_metrics``); this file
imports nothing so that ``from eval import ...`` of one part does not pull FAISS or matplotlib.
"""

# The public modules (each with its own __all__); nothing is imported here.
__all__ = ["cache", "encoders", "harness", "index", "metrics", "report", "stats"]
