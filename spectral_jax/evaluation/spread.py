r"""Statistics over seeds: mean, spread and intervals of the experiments' numbers.

A number measured on one trained model (an mIoU, ``R(nu_max)``, an FPI) is one draw of
the training's randomness (initialisation, data order, dropout). Training ``n`` seeds
gives ``n`` draws ``x_1..x_n``; :func:`compute_spread` summarises them as a
:class:`Spread`:

.. math::

   \bar x = \frac{1}{n} \sum_k x_k, \qquad
   s = \sqrt{\frac{1}{n - 1} \sum_k (x_k - \bar x)^2}, \qquad
   \bar x \pm t_{n-1}\!\left(\tfrac{1 + c}{2}\right) \frac{s}{\sqrt n},

the sample mean, the sample standard deviation and Student's ``t`` interval of the mean
at confidence ``c`` (95 % by default; it assumes the draws are independent and roughly
normal, which is what a handful of seeds allows). With one seed there is no spread:
``std`` and the interval are NaN, never a made-up width.

Rank correlations (the paper's Fig. 6 relates ``R(nu_max)`` to the relative mIoU of
block-wise training) are Spearman's :func:`spearman_correlation`, with a percentile
bootstrap interval over the paired points (:func:`bootstrap_spearman`).

:func:`format_spread` is the one way the reports write these numbers, e.g.
``0.815 ± 0.012 (95 % CI 0.785 to 0.845, n=4)``; :func:`interval_side` says whether an
interval lies above, below or across a reference value, which is how the reports decide
whether a claim is supported.

Example:
  >>> s = compute_spread([0.80, 0.82, 0.81, 0.83])
  >>> s.n, round(s.mean, 3), round(s.std, 4)
  (4, 0.815, 0.0129)
  >>> format_spread(s)
  '0.815 ± 0.013 (95 % CI 0.794 to 0.836, n=4)'
  >>> interval_side(s, 0.79)
  'above'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.special

#: The confidence of every interval in the reports.
CONFIDENCE = 0.95


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")


def _finite_vector(values: Sequence[float], name: str) -> np.ndarray:
    """``values`` as a float64 ``[n]`` array, ``n >= 1``, every value finite."""
    array = np.asarray(values, np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional [n], got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty: a spread needs at least one value.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}.")
    return array


@dataclasses.dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and ``t`` interval of ``n`` values over seeds.

    Attributes:
      mean: the sample mean.
      std: the sample standard deviation (``ddof = 1``); NaN for ``n = 1``.
      low, high: the Student-``t`` interval of the mean at ``confidence``; NaN for
        ``n = 1``.
      n: the number of values (seeds).
      confidence: of the interval (0.95).
      values: the values, in seed order.
    """

    mean: float
    std: float
    low: float
    high: float
    n: int
    confidence: float
    values: tuple[float, ...]

    def columns(self, name: str) -> dict[str, float | int]:
        """CSV/JSON columns ``{name}_mean``, ``_std``, ``_ci_low``, ``_ci_high``, ``_n``."""
        return {
            f"{name}_mean": self.mean,
            f"{name}_std": self.std,
            f"{name}_ci_low": self.low,
            f"{name}_ci_high": self.high,
            f"{name}_n": self.n,
        }


def student_t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The ``probability`` quantile of Student's ``t`` with ``degrees_of_freedom``.

    Raises:
      ValueError: for a probability outside ``(0, 1)`` or fewer than 1 degree of freedom.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}.")
    if degrees_of_freedom < 1:
        raise ValueError(f"degrees_of_freedom must be >= 1, got {degrees_of_freedom}.")
    return float(scipy.special.stdtrit(degrees_of_freedom, probability))


def compute_spread(values: Sequence[float], *, confidence: float = CONFIDENCE) -> Spread:
    r"""The :class:`Spread` of ``values`` (one per seed; see the module's equations).

    Args:
      values: ``[n]`` finite values, ``n >= 1``.
      confidence: of the interval, in ``(0, 1)``.

    Returns:
      The spread; with ``n = 1`` its ``std``, ``low`` and ``high`` are NaN (one value
      says nothing about the spread).

    Raises:
      ValueError: for an empty, non-finite or not one-dimensional ``values``, or a
        ``confidence`` outside ``(0, 1)``.
    """
    _check_confidence(confidence)
    array = _finite_vector(values, "values")
    n = array.size
    mean = float(np.mean(array))
    if n == 1:
        std = low = high = float("nan")
    else:
        std = float(np.std(array, ddof=1))
        half_width = student_t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
    return Spread(mean, std, low, high, n, confidence, tuple(float(v) for v in array))


def rank_data(values: npt.ArrayLike) -> np.ndarray:
    r"""Ranks ``1..n`` along the last axis, tied values sharing the mean of their ranks.

    .. math::

       r_i = \#\{j : x_j < x_i\} + \frac{\#\{j : x_j = x_i\} + 1}{2}

    Args:
      values: ``[..., n]`` values (not NaN).

    Returns:
      ``[..., n]`` float64 ranks.

    Example:
      >>> rank_data([0.5, 0.1, 0.5]).tolist()
      [2.5, 1.0, 2.5]
    """
    values = np.asarray(values, np.float64)
    if values.ndim < 1:
        raise ValueError(f"values must have at least one axis, got shape {values.shape}.")
    if np.any(np.isnan(values)):
        raise ValueError("values must not contain NaN.")
    below = np.sum(values[..., None, :] < values[..., :, None], axis=-1)  # [..., n]
    equal = np.sum(values[..., None, :] == values[..., :, None], axis=-1)  # [..., n]
    return below + (equal + 1) / 2


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[...]`` Spearman's rho of each row of ``x``, ``y`` ``[..., n]`` (NaN: a constant row)."""
    rx = rank_data(x)
    ry = rank_data(y)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt(np.sum(rx * rx, axis=-1) * np.sum(ry * ry, axis=-1))
    numerator = np.sum(rx * ry, axis=-1)
    safe = np.where(denominator > 0, denominator, 1.0)  # a constant row: no correlation
    return np.where(denominator > 0, numerator / safe, np.nan)


def _paired_points(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be [n] of one length, got {x.shape} and {y.shape}.")
    if len(x) < 2:
        raise ValueError(f"need at least 2 paired points, got {len(x)}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite.")
    return x, y


def spearman_correlation(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    r"""Spearman's rank correlation: Pearson's correlation of the ranks (ties averaged).

    .. math::

       \rho = \frac{\sum_i (r_i - \bar r)(s_i - \bar s)}
                   {\sqrt{\sum_i (r_i - \bar r)^2 \sum_i (s_i - \bar s)^2}}

    with ``r``, ``s`` the ranks of ``x``, ``y`` (:func:`rank_data`).

    Args:
      x, y: ``[n]`` finite paired values, ``n >= 2``.

    Returns:
      ``rho`` in ``[-1, 1]``; NaN when either is constant.

    Raises:
      ValueError: for different lengths, fewer than 2 points or non-finite values.
    """
    x, y = _paired_points(x, y)
    return float(_spearman_rows(x, y))


@dataclasses.dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho of ``n`` paired points with its percentile bootstrap interval.

    Attributes:
      rho: Spearman's rho of the points (NaN if either side is constant).
      low, high: the percentile bootstrap interval at ``confidence`` (NaN when fewer than
        half of the resamples have a defined rho).
      n: the number of points.
      confidence: of the interval.
      resamples: the number of bootstrap resamples drawn.
      defined: how many resamples had a defined rho (a resample of points with one
        constant side has none and is left out).
    """

    rho: float
    low: float
    high: float
    n: int
    confidence: float
    resamples: int
    defined: int

    def columns(self, name: str) -> dict[str, float | int]:
        """CSV/JSON columns ``{name}``, ``_ci_low``, ``_ci_high``, ``_points``, ``_resamples``."""
        return {
            name: self.rho,
            f"{name}_ci_low": self.low,
            f"{name}_ci_high": self.high,
            f"{name}_points": self.n,
            f"{name}_resamples": self.resamples,
        }


def bootstrap_spearman(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    resamples: int = 10_000,
    confidence: float = CONFIDENCE,
) -> RankCorrelation:
    r"""Spearman's rho of paired points with a percentile bootstrap interval.

    Each resample draws ``n`` of the ``n`` pairs ``(x_i, y_i)`` with replacement
    (``rng.integers(0, n, size=(resamples, n))``, one row per resample) and computes
    rho; the interval is the ``(1 - c) / 2`` and ``(1 + c) / 2`` percentiles (NumPy's
    linear interpolation) of the resamples whose rho is defined. The bootstrap treats
    the points as exchangeable draws; with few points (fewer than ~10) the interval is
    wide and its coverage poor.

    Args:
      x, y: ``[n]`` finite paired values, ``n >= 2``.
      rng: the NumPy generator of the resampling (seeded by the caller).
      resamples: the number of bootstrap resamples, ``>= 1``.
      confidence: of the interval, in ``(0, 1)``.

    Returns:
      The :class:`RankCorrelation`.

    Raises:
      ValueError: for bad points, ``resamples < 1`` or a confidence outside ``(0, 1)``.
    """
    x, y = _paired_points(x, y)
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}.")
    n = len(x)
    indices = rng.integers(0, n, size=(resamples, n))  # [resamples, n]
    rhos = _spearman_rows(x[indices], y[indices])  # [resamples]
    defined = rhos[np.isfinite(rhos)]
    low = high = float("nan")
    if 2 * defined.size >= resamples:
        tail = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.percentile(defined, [tail, 100 - tail]))
    return RankCorrelation(
        rho=float(_spearman_rows(x, y)),
        low=low,
        high=high,
        n=n,
        confidence=confidence,
        resamples=resamples,
        defined=int(defined.size),
    )


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".replace("-", "−") if math.isfinite(value) else "nan"


def format_spread(estimate: Spread | RankCorrelation, digits: int = 3) -> str:
    """The reports' one text form of a :class:`Spread` or a :class:`RankCorrelation`.

    ``0.815 ± 0.013 (95 % CI 0.794 to 0.836, n=4)`` for a spread over seeds,
    ``0.815 (n=1, no spread)`` for a single seed, and ``−0.600 (95 % bootstrap CI
    −0.886 to −0.143, 18 points)`` for a rank correlation.

    Args:
      estimate: the spread or the correlation.
      digits: decimals of every number.
    """
    if digits < 0:
        raise ValueError(f"digits must be non-negative, got {digits}.")
    percent = f"{100 * estimate.confidence:g} %"
    if isinstance(estimate, RankCorrelation):
        interval = f"{_number(estimate.low, digits)} to {_number(estimate.high, digits)}"
        return (
            f"{_number(estimate.rho, digits)} ({percent} bootstrap CI {interval}, "
            f"{estimate.n} points)"
        )
    if estimate.n == 1:
        return f"{_number(estimate.mean, digits)} (n=1, no spread)"
    interval = f"{_number(estimate.low, digits)} to {_number(estimate.high, digits)}"
    return (
        f"{_number(estimate.mean, digits)} ± {_number(estimate.std, digits)} "
        f"({percent} CI {interval}, n={estimate.n})"
    )


def interval_side(
    estimate: Spread | RankCorrelation, reference: float
) -> Literal["above", "below", "across"]:
    """Where the interval of ``estimate`` lies relative to ``reference``.

    Returns:
      ``"above"`` if the whole interval is above ``reference``, ``"below"`` if below,
      ``"across"`` if it contains ``reference`` or is undefined (one seed, too few
      defined resamples): the data cannot decide.
    """
    low, high = estimate.low, estimate.high
    if not (math.isfinite(low) and math.isfinite(high)):
        return "across"
    if low > reference:
        return "above"
    if high < reference:
        return "below"
    return "across"


def claim_verdict(
    estimate: Spread | RankCorrelation,
    reference: float,
    *,
    expected: Literal["above", "below"],
) -> Literal["supports", "contradicts", "cannot decide"]:
    """What the interval of ``estimate`` says of a claim "the value is ``expected`` ``reference``".

    Example: the paper's claim that block-wise labels cost mIoU is "relative mIoU below
    1": an interval wholly below 1 ``"supports"`` it, wholly above ``"contradicts"`` it,
    one containing 1 (or undefined) ``"cannot decide"``.

    Raises:
      ValueError: for ``expected`` other than ``"above"`` or ``"below"``.
    """
    if expected not in ("above", "below"):
        raise ValueError(f"expected must be 'above' or 'below', got {expected!r}.")
    side = interval_side(estimate, reference)
    if side == "across":
        return "cannot decide"
    return "supports" if side == expected else "contradicts"
