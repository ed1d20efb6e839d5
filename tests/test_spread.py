"""Statistics over seeds (``spectral_jax.evaluation.spread``) against independent references.

The ``t`` quantile against its closed forms (1 and 2 degrees of freedom) and
``scipy.stats.t.ppf``; the spread against NumPy's mean and ``std(ddof=1)`` and
``scipy.stats.t.interval``; ranks and Spearman's rho against ``scipy.stats.rankdata`` and
``scipy.stats.spearmanr`` (with ties); the bootstrap against a loop that draws the same
indices and calls ``scipy.stats.spearmanr`` per resample, against
``scipy.stats.bootstrap`` (same method, other draws: statistical agreement) and against
the closed form of a monotone relation (every defined resample has rho = 1). The text of
these numbers in the reports (``experiments.report``) is checked where the values are.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from experiments.report import claim_verdict, format_spread, interval_side
from spectral_jax.evaluation import spread as spread_lib


@pytest.mark.parametrize("probability", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_closed_forms(probability):
    # Cauchy (1 dof): tan(pi (p - 1/2)); 2 dof: (2p - 1) / sqrt(2 p (1 - p)).
    expected_1 = math.tan(math.pi * (probability - 0.5))
    expected_2 = (2 * probability - 1) / math.sqrt(2 * probability * (1 - probability))
    np.testing.assert_allclose(spread_lib._student_t_quantile(probability, 1), expected_1, 1e-12)
    np.testing.assert_allclose(spread_lib._student_t_quantile(probability, 2), expected_2, 1e-12)


@pytest.mark.parametrize("dof", [1, 3, 7, 30])
def test_t_quantile_matches_scipy(dof):
    np.testing.assert_allclose(
        spread_lib._student_t_quantile(0.975, dof), scipy.stats.t.ppf(0.975, dof), rtol=1e-12
    )


@pytest.mark.parametrize("n", [2, 3, 4, 8, 25])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_spread_matches_numpy_and_scipy(rng, n, confidence):
    values = 0.8 + 0.02 * rng.normal(size=n)
    result = spread_lib.compute_spread(values, confidence=confidence)
    assert result.n == n and result.values == tuple(values)
    np.testing.assert_allclose(result.mean, np.mean(values), rtol=1e-14)
    np.testing.assert_allclose(result.std, np.std(values, ddof=1), rtol=1e-14)
    low, high = scipy.stats.t.interval(
        confidence, n - 1, loc=np.mean(values), scale=scipy.stats.sem(values)
    )
    np.testing.assert_allclose([result.low, result.high], [low, high], rtol=1e-12)
    assert result.columns("miou") == {
        "miou_mean": result.mean,
        "miou_std": result.std,
        "miou_ci_low": result.low,
        "miou_ci_high": result.high,
        "miou_n": n,
    }


def test_spread_two_values_closed_form():
    # n = 2: s = |a - b| / sqrt(2); half width = t_1(0.975) s / sqrt(2) = 12.706 |a - b| / 2.
    result = spread_lib.compute_spread([1.0, 3.0])
    assert result.mean == 2.0
    np.testing.assert_allclose(result.std, math.sqrt(2.0), rtol=1e-15)
    half = math.tan(math.pi * 0.475) * 1.0
    np.testing.assert_allclose([result.low, result.high], [2.0 - half, 2.0 + half], rtol=1e-12)


def test_spread_of_equal_values_has_zero_width():
    result = spread_lib.compute_spread([0.5, 0.5, 0.5])
    assert (result.std, result.low, result.high) == (0.0, 0.5, 0.5)


def test_one_seed_has_no_spread():
    result = spread_lib.compute_spread([0.815])
    assert result.mean == 0.815 and result.n == 1
    assert math.isnan(result.std) and math.isnan(result.low) and math.isnan(result.high)
    assert format_spread(result) == "0.815 (n=1, no spread)"
    assert interval_side(result, 0.0) == "across"
    assert claim_verdict(result, 1.0, expected="below") == "cannot decide"


@pytest.mark.parametrize(
    ("values", "match"),
    [([], "empty"), ([1.0, np.nan], "finite"), ([1.0, np.inf], "finite"), ([[1.0]], "one-dim")],
)
def test_spread_rejects_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        spread_lib.compute_spread(values)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95.0])
def test_spread_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError, match="confidence"):
        spread_lib.compute_spread([1.0, 2.0], confidence=confidence)


@pytest.mark.parametrize("n", [2, 5, 12, 31])
@pytest.mark.parametrize("ties", [False, True])
def test_rank_data_and_spearman_match_scipy(rng, n, ties):
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    if ties:
        x = np.round(x)  # many ties
        y[: n // 2] = y[0]
    np.testing.assert_array_equal(spread_lib._rank_data(x), scipy.stats.rankdata(x))
    expected = scipy.stats.spearmanr(x, y).statistic
    np.testing.assert_allclose(
        spread_lib.spearman_correlation(x, y), expected, rtol=1e-12, atol=1e-12
    )


def test_rank_data_of_rows_matches_scipy(rng):
    values = np.round(rng.normal(size=(6, 9)))
    np.testing.assert_array_equal(
        spread_lib._rank_data(values), scipy.stats.rankdata(values, axis=-1)
    )


def test_spearman_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        spread_lib.spearman_correlation([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2"):
        spread_lib.spearman_correlation([1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        spread_lib.spearman_correlation([1.0, np.nan], [1.0, 2.0])
    assert math.isnan(spread_lib.spearman_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def _loop_bootstrap(x, y, seed, resamples, confidence):
    """The percentile bootstrap with the same draws, one scipy.stats.spearmanr per resample."""
    indices = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    rhos = []
    for row in indices:
        xs, ys = x[row], y[row]
        if np.all(xs == xs[0]) or np.all(ys == ys[0]):
            continue  # rho undefined: left out
        rhos.append(scipy.stats.spearmanr(xs, ys).statistic)
    tail = 100 * (1 - confidence) / 2
    return np.percentile(rhos, [tail, 100 - tail]), len(rhos)


@pytest.mark.parametrize("n", [6, 18])
@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_matches_a_scipy_loop_with_the_same_draws(rng, n, ties):
    x = rng.normal(size=n)
    y = -0.7 * x + rng.normal(size=n)
    if ties:
        x = np.round(x * 2) / 2
    result = spread_lib.bootstrap_spearman(
        x, y, rng=np.random.default_rng(7), resamples=400, confidence=0.9
    )
    (low, high), defined = _loop_bootstrap(x, y, 7, 400, 0.9)
    np.testing.assert_allclose([result.low, result.high], [low, high], rtol=1e-12, atol=1e-12)
    assert (result.n, result.resamples, result.defined) == (n, 400, defined)
    np.testing.assert_allclose(result.rho, scipy.stats.spearmanr(x, y).statistic, rtol=1e-12)


def test_bootstrap_agrees_with_scipy_bootstrap(rng):
    # Other draws, same method: the interval ends agree to the Monte Carlo error.
    x = rng.normal(size=18)
    y = -0.6 * x + rng.normal(size=18)
    ours = spread_lib.bootstrap_spearman(x, y, rng=np.random.default_rng(1), resamples=20_000)
    theirs = scipy.stats.bootstrap(
        (x, y),
        lambda a, b: scipy.stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=20_000,
        method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    np.testing.assert_allclose([ours.low, ours.high], [theirs.low, theirs.high], atol=0.03)


def test_bootstrap_of_a_monotone_relation_is_one():
    x = np.arange(10.0)
    result = spread_lib.bootstrap_spearman(x, x**3, rng=np.random.default_rng(0), resamples=500)
    assert (result.rho, result.low, result.high) == (1.0, 1.0, 1.0)
    text = format_spread(result)
    assert text == "1.000 (95 % bootstrap CI 1.000 to 1.000, 10 points)"


def test_bootstrap_is_reproducible_and_rejects_bad_settings():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    first = spread_lib.bootstrap_spearman(x, y, rng=np.random.default_rng(3), resamples=50)
    second = spread_lib.bootstrap_spearman(x, y, rng=np.random.default_rng(3), resamples=50)
    assert first == second
    with pytest.raises(ValueError, match="resamples"):
        spread_lib.bootstrap_spearman(x, y, rng=np.random.default_rng(0), resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        spread_lib.bootstrap_spearman(x, y, rng=np.random.default_rng(0), confidence=1.5)


def test_bootstrap_with_mostly_undefined_resamples_has_no_interval():
    # x = [0, 0, 1], y = [0, 1, 1]: a resample has a constant side with probability
    # 15/27 (x from {0, 1} or {2} only, y from {0} or {1, 2} only; the three one-point
    # resamples counted twice): fewer than half are defined, and the interval is NaN,
    # not made up from the few.
    result = spread_lib.bootstrap_spearman(
        [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], rng=np.random.default_rng(0), resamples=2000
    )
    np.testing.assert_allclose(result.defined / 2000, 12 / 27, atol=0.04)
    assert math.isnan(result.low) and math.isnan(result.high)
    assert "nan to nan" in format_spread(result)
