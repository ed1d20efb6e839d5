"""The reports' text of a spread over seeds and of a claim's verdict (``experiments.report``).

The expected strings are written out from the closed form of Student's ``t`` interval
(``scipy.stats.t.ppf``) and NumPy's ``std(ddof=1)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from experiments.report import claim_line, claim_verdict, format_spread, interval_side
from spectral_jax.evaluation import compute_spread


def test_format_spread():
    result = compute_spread([0.80, 0.82, 0.81, 0.83])
    half = scipy.stats.t.ppf(0.975, 3) * np.std([0.80, 0.82, 0.81, 0.83], ddof=1) / 2
    expected = f"0.815 ± 0.013 (95 % CI {0.815 - half:.3f} to {0.815 + half:.3f}, n=4)"
    assert format_spread(result) == expected
    negative = compute_spread([-0.5, -0.25])
    assert format_spread(negative, digits=2).startswith("−0.38 ± 0.18 (95 % CI −")


@pytest.mark.parametrize(
    ("values", "reference", "side", "verdict_below"),
    [
        ([0.9, 0.91, 0.92], 1.0, "below", "supports"),
        ([1.1, 1.12, 1.11], 1.0, "above", "contradicts"),
        ([0.9, 1.1, 1.0], 1.0, "across", "cannot decide"),
    ],
)
def test_interval_side_and_verdict(values, reference, side, verdict_below):
    result = compute_spread(values)
    assert interval_side(result, reference) == side
    assert claim_verdict(result, reference, expected="below") == verdict_below
    with pytest.raises(ValueError, match="expected"):
        claim_verdict(result, reference, expected="equal")


def test_claim_line():
    result = compute_spread([0.9, 0.91, 0.92])
    half = scipy.stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3)
    expected = (
        f"- relative mIoU below 1: 0.910 ± 0.010 (95 % CI {0.91 - half:.3f} to "
        f"{0.91 + half:.3f}, n=3): **supports**."
    )
    assert claim_line("relative mIoU below 1", result, reference=1.0, expected="below") == expected
