"""Paired bootstrap and seed summaries, checked with numbers."""

import math

import numpy as np
import pytest

from eval.stats import paired_bootstrap, summarize_seeds


def test_identical_systems_give_zero_delta():
    values = np.random.default_rng(1).random(300)
    result = paired_bootstrap(values, values.copy(), num_resamples=2000)
    assert result.delta == 0.0 and result.ci_low == 0.0 and result.ci_high == 0.0
    assert not result.excludes_zero and result.p_value == 1.0


def test_known_shift_gives_interval_excluding_zero():
    rng = np.random.default_rng(0)
    baseline = rng.integers(0, 2, size=400).astype(float)
    candidate = baseline.copy()
    candidate[rng.choice(np.flatnonzero(baseline == 0), size=40, replace=False)] = 1.0  # 40 more hits
    result = paired_bootstrap(baseline, candidate, num_resamples=5000, seed=0)
    assert result.delta == pytest.approx(40 / 400)
    # The paired differences are 0/1 with p = 0.1: the CI is about 0.1 ± 1.96 * sqrt(0.1 * 0.9 / 400) = ± 0.029.
    assert 0.06 < result.ci_low < 0.085 and 0.115 < result.ci_high < 0.14
    assert result.excludes_zero and result.p_value < 0.001
    assert result.format(3) == f"+0.100 [{result.ci_low:+.3f}, {result.ci_high:+.3f}]"


def test_noise_without_shift_gives_interval_covering_zero():
    rng = np.random.default_rng(3)
    baseline = rng.random(500)
    candidate = baseline + rng.normal(0, 0.1, size=500)
    candidate -= candidate.mean() - baseline.mean()  # no true difference
    result = paired_bootstrap(baseline, candidate, num_resamples=3000)
    assert abs(result.delta) < 1e-12 and result.ci_low < 0 < result.ci_high
    half_width = (result.ci_high - result.ci_low) / 2
    assert half_width == pytest.approx(1.96 * 0.1 / math.sqrt(500), rel=0.15)


def test_seeds_are_averaged_and_nan_queries_dropped():
    baseline = np.array([[0.0, 1.0, np.nan, 0.0], [0.0, 1.0, np.nan, 1.0]])
    candidate = np.array([[1.0, 1.0, np.nan, 1.0], [1.0, 1.0, np.nan, 1.0]])
    result = paired_bootstrap(baseline, candidate, num_resamples=1000)
    assert result.num_queries == 3
    assert result.delta == pytest.approx((1.0 + 0.0 + 0.5) / 3)


def test_bootstrap_bad_input():
    with pytest.raises(ValueError, match="baseline has 3 queries but candidate has 2"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1, 0], [1, 0], confidence=95)
    with pytest.raises(ValueError, match="no query has a value"):
        paired_bootstrap([np.nan], [1.0])


def test_summarize_seeds():
    summary = summarize_seeds([0.50, 0.52, 0.57])
    assert summary.mean == pytest.approx(0.53)
    assert summary.std == pytest.approx(math.sqrt(((0.03) ** 2 + (0.01) ** 2 + (0.04) ** 2) / 2))
    assert summary.format(3) == "0.530 ± 0.036"
    single = summarize_seeds([0.4])
    assert math.isnan(single.std) and single.format(2) == "0.40 (1 seed)" and single.to_dict()["std"] is None
    with pytest.raises(ValueError, match="non-empty"):
        summarize_seeds([])
