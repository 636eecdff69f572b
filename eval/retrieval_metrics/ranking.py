"""Ranking metrics for retrieval: the one place where their math lives.

This file is plain Python (standard library only) so that it can be used from two places:

* ``retrieval_metrics.py`` beside it, the ``evaluate`` module, imports it with a relative
  import (``from .ranking import ...``); ``evaluate.load`` copies both files into its module
  cache, so the metric works where the ``eval`` package is not importable.
* ``eval.metrics`` re-exports it for the rest of the toolkit.

Conventions (also in the metric card, README.md):

* A prediction is a ranking: document ids, best first. Ties are not seen here: whoever made
  the ranking broke them, and the order given is the order scored.
* Relevant documents are the reference ids whose grade is > 0 (grade 1 when no grades are
  given). Grades only change nDCG; every other metric uses binary relevance.
* A ranking shorter than k counts as padded with non-relevant documents: recall, hit, MRR,
  nDCG and MAP use what is there, and precision@k still divides by k.
* A query without relevant documents is skipped by default (per-query value NaN, left out of
  the mean, counted in ``num_queries_without_relevant``), as trec_eval does for queries absent
  from the qrels; ``no_relevant="zero"`` scores it 0 (UniIR's ``compute_recall_at_k``) and
  ``no_relevant="error"`` raises.
* Duplicate ids inside one ranking are an error (a ranking lists each document once), in
  ``query_metrics`` as in ``compute_ranking_metrics``; so are unhashable ids, and grades that are
  not finite numbers.
* nDCG depends only on the ratios of the grades: gains are divided by the largest grade before
  summing, so very large grades (1e308) do not overflow.

Example:
    >>> scores = compute_ranking_metrics([["d3", "d1"]], [["d1"]], k_values=[1, 2])
    >>> scores["hit@1"], scores["hit@2"], scores["mrr@2"]
    (0.0, 1.0, 0.5)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

METRIC_NAMES: tuple[str, ...] = ("recall", "hit", "mrr", "ndcg", "map", "precision")
NO_RELEVANT_POLICIES: tuple[str, ...] = ("skip", "zero", "error")


def _check_k_values(k_values: Sequence[int]) -> list[int]:
    if isinstance(k_values, numbers.Integral):
        k_values = [k_values]
    if isinstance(k_values, (str, bytes)) or not _is_collection(k_values):
        raise ValueError(f"k_values must be a list of positive integers, got {k_values!r}")
    if not k_values:
        raise ValueError("k_values is empty; pass at least one cutoff, e.g. k_values=[1, 5, 10]")
    checked = []
    for k in k_values:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
            raise ValueError(f"k_values contains {k!r}; every cutoff must be a positive integer (k >= 1)")
        checked.append(int(k))
    return sorted(set(checked))


def _check_metrics(metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return list(METRIC_NAMES)
    if isinstance(metrics, str):
        metrics = [metrics]
    if not _is_collection(metrics):
        raise ValueError(f"metrics must be a list of names from {list(METRIC_NAMES)}, got {metrics!r}")
    unknown = [name for name in metrics if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"metrics contains unknown names {unknown}; choose from {list(METRIC_NAMES)}")
    if not metrics:
        raise ValueError(f"metrics is empty; pass None (all) or names from {list(METRIC_NAMES)}")
    return list(dict.fromkeys(metrics))


def _is_collection(value) -> bool:
    """Sized and iterable (a list, tuple, numpy array, ...): what a ranking or a list of ids must be."""
    return hasattr(value, "__len__") and hasattr(value, "__iter__")


def _check_ids(ids, what: str, ordered: bool = False) -> None:
    """``ids`` is a list of hashable ids (not a string; a list or tuple when ``ordered``, as a ranking
    must be); ``what`` names it in the error."""
    if isinstance(ids, (str, bytes)) or not _is_collection(ids):
        raise ValueError(f"{what} must be a list of ids, got {type(ids).__name__}")
    if ordered and isinstance(ids, (set, frozenset, dict)):
        raise ValueError(f"{what} is a {type(ids).__name__}; a ranking is ordered: pass a list, best first")
    for doc_id in ids:
        try:
            hash(doc_id)
        except TypeError:
            raise ValueError(f"{what} contains {doc_id!r}; ids must be strings (hashable values)") from None


def _check_unique(ranking, what: str) -> None:
    if len(set(ranking)) != len(ranking):
        seen: set = set()
        duplicate = next(doc_id for doc_id in ranking if doc_id in seen or seen.add(doc_id))
        raise ValueError(f"{what} lists id {duplicate!r} more than once; deduplicate the ranking")


def _grade(doc_id, grade) -> float:
    try:
        value = float(grade)
    except (TypeError, ValueError):
        raise ValueError(f"grade of reference id {doc_id!r} is {grade!r}; grades must be numbers") from None
    if math.isnan(value):
        raise ValueError(f"grade of reference id {doc_id!r} is NaN; grades must be numbers")
    if math.isinf(value):
        raise ValueError(f"grade of reference id {doc_id!r} is {value}; grades must be finite numbers")
    return value


def query_metrics(
    ranking: Sequence[str],
    relevant: Sequence[str],
    k_values: Sequence[int],
    grades: Sequence[float] | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Metrics of one query's ranking against its relevant ids, at every cutoff in ``k_values``.

    ``grades`` (parallel to ``relevant``) are graded relevance judgements for nDCG; ids with a
    grade of 0 or less count as not relevant. Returns NaN everywhere if no id is relevant.
    Raises ``ValueError`` for a ranking that lists an id twice, unhashable ids, and grades that
    are not finite numbers.

    Example:
        >>> query_metrics(["a", "b", "c"], ["b", "c"], [2])["recall@2"]
        0.5
    """
    k_values = _check_k_values(k_values)
    metrics = _check_metrics(metrics)
    _check_ids(ranking, "the ranking", ordered=True)
    _check_unique(ranking, "the ranking")
    return _query_metrics(ranking, relevant, k_values, grades, metrics)


def _query_metrics(
    ranking: Sequence[str],
    relevant: Sequence[str],
    k_values: list[int],
    grades: Sequence[float] | None,
    metrics: list[str],
) -> dict[str, float]:
    """``query_metrics`` after its checks of ``k_values``, ``metrics`` and ``ranking``."""
    _check_ids(relevant, "the reference")
    if grades is None:
        grades = [1.0] * len(relevant)
    elif isinstance(grades, (str, bytes)) or not _is_collection(grades):
        raise ValueError(f"grades must be a list of numbers, one per reference id, got {type(grades).__name__}")
    elif len(grades) != len(relevant):
        raise ValueError(
            f"grades has {len(grades)} entries but the reference has {len(relevant)} ids; "
            "pass one grade per reference id"
        )
    gain = {}
    for doc_id, grade in zip(relevant, grades):
        # A reference id listed twice keeps its highest grade.
        gain[doc_id] = max(gain.get(doc_id, 0.0), _grade(doc_id, grade))
    gain = {doc_id: grade for doc_id, grade in gain.items() if grade > 0}
    num_relevant = len(gain)
    if num_relevant == 0:
        return {f"{name}@{k}": math.nan for name in metrics for k in k_values}
    # nDCG is a ratio: dividing every gain by the largest keeps the sums finite for any finite grades.
    top_grade = max(gain.values())
    gain = {doc_id: grade / top_grade for doc_id, grade in gain.items()}

    ideal_gains = sorted(gain.values(), reverse=True)
    max_k = k_values[-1]
    top = list(ranking[:max_k])
    out: dict[str, float] = {}
    hits = 0  # relevant documents seen so far
    first_hit_rank = 0  # rank (1-based) of the first relevant document, 0 = none yet
    dcg = 0.0
    idcg = 0.0
    precision_sum = 0.0  # sum of precision@i over the ranks i holding a relevant document
    k_iter = iter(k_values)
    next_k = next(k_iter)
    for rank in range(1, max_k + 1):
        if rank <= len(top):
            doc_gain = gain.get(top[rank - 1], 0.0)
            if doc_gain > 0:
                hits += 1
                precision_sum += hits / rank
                dcg += doc_gain / math.log2(rank + 1)
                if first_hit_rank == 0:
                    first_hit_rank = rank
        if rank <= len(ideal_gains):
            idcg += ideal_gains[rank - 1] / math.log2(rank + 1)
        if rank == next_k:
            values = {
                "recall": hits / num_relevant,
                "hit": 1.0 if hits else 0.0,
                "mrr": 1.0 / first_hit_rank if first_hit_rank else 0.0,
                "ndcg": min(1.0, dcg / idcg),  # min: rounding only
                "map": precision_sum / num_relevant,
                "precision": hits / rank,
            }
            for name in metrics:
                out[f"{name}@{rank}"] = values[name]
            next_k = next(k_iter, None)
    return out


def compute_ranking_metrics(
    predictions: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    k_values: Sequence[int] = (1, 5, 10),
    reference_grades: Sequence[Sequence[float]] | None = None,
    metrics: Sequence[str] | None = None,
    no_relevant: str = "skip",
    return_per_query: bool = False,
) -> dict:
    """Mean ranking metrics over queries (and, on request, the per-query values).

    Args:
        predictions: one ranking per query, document ids best first.
        references: one list of relevant document ids per query.
        k_values: cutoffs; every metric is reported at each.
        reference_grades: optional graded relevance, parallel to ``references`` (used by nDCG).
        metrics: subset of ``METRIC_NAMES``; all by default.
        no_relevant: what to do with a query without relevant ids: "skip", "zero" or "error".
        return_per_query: add ``"per_query": {"recall@1": [...], ...}`` (NaN for skipped queries),
            aligned with the input order, for paired bootstrap.

    Returns:
        ``{"recall@1": ..., "hit@1": ..., ..., "num_queries": n, "num_queries_without_relevant": m}``;
        a mean is NaN when every query was skipped.

    Example:
        >>> out = compute_ranking_metrics([["d3", "d1"], ["d2"]], [["d1"], ["d2"]], k_values=[1])
        >>> out["hit@1"], out["mrr@1"], out["num_queries"]
        (0.5, 0.5, 2)
    """
    k_values = _check_k_values(k_values)
    metrics = _check_metrics(metrics)
    if no_relevant not in NO_RELEVANT_POLICIES:
        raise ValueError(f"no_relevant={no_relevant!r}; choose one of {list(NO_RELEVANT_POLICIES)}")
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, (str, bytes)) or not _is_collection(value):
            raise ValueError(f"{name} must be a list of id lists, one list per query, got {type(value).__name__}")
    if reference_grades is not None and (
        isinstance(reference_grades, (str, bytes)) or not _is_collection(reference_grades)
    ):
        raise ValueError(
            f"reference_grades must be a list of grade lists, one per query, got {type(reference_grades).__name__}"
        )
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions has {len(predictions)} rankings but references has {len(references)} id lists; "
            "pass exactly one of each per query"
        )
    if len(predictions) == 0:
        raise ValueError("predictions is empty; pass at least one query's ranking")
    if reference_grades is not None and len(reference_grades) != len(references):
        raise ValueError(
            f"reference_grades has {len(reference_grades)} entries but references has {len(references)}; "
            "pass one grade list per query, parallel to its reference ids"
        )

    names = [f"{name}@{k}" for name in metrics for k in k_values]
    per_query: dict[str, list[float]] = {name: [] for name in names}
    without_relevant = 0
    for index, (ranking, relevant) in enumerate(zip(predictions, references)):
        if isinstance(ranking, str) or isinstance(relevant, str):
            raise ValueError(f"query {index}: a ranking and a reference must be lists of ids, got a string")
        _check_ids(ranking, f"predictions[{index}]", ordered=True)
        if len(ranking) == 0:
            raise ValueError(f"predictions[{index}] is an empty ranking; every query needs at least one retrieved id")
        _check_unique(ranking, f"predictions[{index}]")
        grades = None if reference_grades is None else reference_grades[index]
        try:
            values = _query_metrics(ranking, relevant, k_values, grades, metrics)
        except ValueError as error:
            raise ValueError(f"query {index}: {error}") from None
        if math.isnan(values[names[0]]):
            without_relevant += 1
            if no_relevant == "error":
                raise ValueError(
                    f"references[{index}] has no relevant id (empty, or all grades <= 0); "
                    "drop the query or pass no_relevant='skip' or 'zero'"
                )
            if no_relevant == "zero":
                values = {name: 0.0 for name in names}
        for name in names:
            per_query[name].append(values[name])

    result: dict = {}
    for name in names:
        scored = [value for value in per_query[name] if not math.isnan(value)]
        result[name] = math.fsum(scored) / len(scored) if scored else math.nan
    result["num_queries"] = len(predictions)
    result["num_queries_without_relevant"] = without_relevant
    if return_per_query:
        result["per_query"] = per_query
    return result
