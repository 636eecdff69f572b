"""Retrieval ranking metrics for the toolkit.

The math lives once, in ``eval/retrieval_metrics/ranking.py``: that file is standard-library
Python so that the ``evaluate`` module beside it (``evaluate.load("eval/retrieval_metrics")``)
can import it relatively from its module cache, where the ``eval`` package is not importable.
This module re-exports it.

Example:
    >>> from eval.metrics import compute_ranking_metrics
    >>> compute_ranking_metrics([["d3", "d1"]], [["d1"]], k_values=[1])["mrr@1"]
    0.0
"""

from eval.retrieval_metrics.ranking import (
    METRIC_NAMES,
    NO_RELEVANT_POLICIES,
    compute_ranking_metrics,
    query_metrics,
)

__all__ = ["METRIC_NAMES", "NO_RELEVANT_POLICIES", "compute_ranking_metrics", "query_metrics"]
