"""The ``evaluate`` module folder for retrieval metrics (load it with ``evaluate.load(path)``).

The math lives in :mod:`eval.retrieval_metrics.ranking`; import it through :mod:`eval.metrics`.
This file stays empty so that importing the math does not import ``evaluate``.
"""
