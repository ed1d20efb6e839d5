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

The experiments' reports write these numbers and judge the paper's claims by them
(``experiments/report.py``).

Example:
  >>> s = compute_spread([0.80, 0.82, 0.81, 0.83])
  >>> s.n, round(s.mean, 3), round(s.std, 4)
  (4, 0.815, 0.0129)
  >>> round(s.low, 3), round(s.high, 3)
  (0.794, 0.836)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

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


def _student_t_quantile(probability: float, degrees_of_freedom: int) -> float:
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
        half_width = _student_t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half_width, mean + half_width
    return Spread(mean, std, low, high, n, confidence, tuple(float(v) for v in array))


def _rank_data(values: npt.ArrayLike) -> np.ndarray:
    r"""Ranks ``1..n`` along the last axis, tied values sharing the mean of their ranks.

    .. math::

       r_i = \#\{j : x_j < x_i\} + \frac{\#\{j : x_j = x_i\} + 1}{2}

    Args:
      values: ``[..., n]`` values (not NaN).

    Returns:
      ``[..., n]`` float64 ranks.

    Example:
      >>> _rank_data([0.5, 0.1, 0.5]).tolist()
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
    rx = _rank_data(x)
    ry = _rank_data(y)
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

    with ``r``, ``s`` the ranks of ``x``, ``y`` (:func:`_rank_data`).

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
