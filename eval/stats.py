"""Statistics for ablations: paired bootstrap confidence intervals and mean ± std over seeds.

Example:
    >>> from eval.stats import paired_bootstrap, summarize_seeds
    >>> baseline = [0.0, 1.0, 0.0, 1.0] * 50
    >>> better = [1.0, 1.0, 0.0, 1.0] * 50
    >>> result = paired_bootstrap(baseline, better, seed=0)
    >>> result.delta, result.ci_low > 0
    (0.25, True)
    >>> summarize_seeds([0.50, 0.52, 0.54]).format(2)
    '0.52 ± 0.02'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of ``mean(candidate) - mean(baseline)`` over queries.

    ``p_value`` is two-sided: twice the smaller share of resampled deltas on either side of 0
    (at most 1); with identical systems it is 1.
    """

    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    num_queries: int
    num_resamples: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole confidence interval lies on one side of 0."""
        return self.ci_low > 0 or self.ci_high < 0

    def format(self, digits: int = 4) -> str:
        """``"+0.0250 [+0.0120, +0.0380]"``."""
        return f"{self.delta:+.{digits}f} [{self.ci_low:+.{digits}f}, {self.ci_high:+.{digits}f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def _per_query_matrix(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must be per-query values: a 1-D list, or 2-D (seeds, queries); got shape {array.shape}"
        )
    return array


def paired_bootstrap(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    num_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile bootstrap CI of ``mean(candidate) - mean(baseline)``, resampling queries in pairs.

    Each input is per-query metric values in the same query order, either 1-D or 2-D
    ``(seeds, queries)``; with several seeds each query's value is first averaged over seeds, so
    the interval reflects the choice of queries (the seeds' spread is reported by
    :func:`summarize_seeds`). Queries whose value is NaN in either system (queries without
    relevant documents, see ``eval.metrics``) are left out.

    Example:
        >>> paired_bootstrap([0.2, 0.4, 0.6], [0.2, 0.4, 0.6]).delta
        0.0
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95")
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 100:
        raise ValueError(f"num_resamples={num_resamples!r} must be an integer >= 100 (10000 is usual)")
    base = _per_query_matrix(baseline, "baseline").mean(axis=0)
    cand = _per_query_matrix(candidate, "candidate").mean(axis=0)
    if base.shape != cand.shape:
        raise ValueError(
            f"baseline has {base.shape[0]} queries but candidate has {cand.shape[0]}; "
            "a paired bootstrap needs the same queries in the same order"
        )
    keep = ~(np.isnan(base) | np.isnan(cand))
    differences = cand[keep] - base[keep]
    n = differences.size
    if n == 0:
        raise ValueError("no query has a value in both systems (all NaN); nothing to compare")
    rng = np.random.default_rng(seed)
    deltas = np.empty(num_resamples)
    # Resample in blocks to bound memory (num_resamples x n indices at once can be large).
    block = max(1, 2_000_000 // n)
    for start in range(0, num_resamples, block):
        stop = min(start + block, num_resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        deltas[start:stop] = differences[indices].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    delta = float(differences.mean())
    p_value = min(1.0, 2 * min(float((deltas <= 0).mean()), float((deltas >= 0).mean())))
    return BootstrapResult(
        delta=delta,
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        p_value=p_value,
        num_queries=int(n),
        num_resamples=num_resamples,
    )


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation (ddof=1) of one metric over seeds; std is NaN for one seed."""

    mean: float
    std: float
    num_seeds: int

    def format(self, digits: int = 4) -> str:
        """``"0.5120 ± 0.0100"``, or ``"0.5120 (1 seed)"`` when there is no spread to report."""
        if self.num_seeds < 2:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": None if math.isnan(self.std) else self.std, "num_seeds": self.num_seeds}


def summarize_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean ± sample std of a metric over seeds.

    Example:
        >>> round(summarize_seeds([0.4, 0.6]).std, 6)
        0.141421
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"values must be a non-empty 1-D list of per-seed metric values, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("values contains NaN; a seed produced no metric (check its evaluation)")
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return SeedSummary(mean=float(array.mean()), std=std, num_seeds=int(array.size))
