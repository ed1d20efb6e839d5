"""Smoke tests for spectral_jax.plotting (matplotlib with the Agg backend)."""

from __future__ import annotations

import numpy as np
import pytest

from spectral_jax import plotting

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.mark.parametrize("in_shape", [(6, 5), (8,)])
def test_plot_spectral_rows_draws_one_panel_per_row(rng, in_shape):
    import matplotlib.pyplot as plt

    m = int(np.prod(in_shape))
    rows = rng.normal(size=(3, m)) + 1j * rng.normal(size=(3, m))
    figure = plotting.plot_spectral_rows(rows, np.array([0, 1, m - 1]), in_shape=in_shape)
    try:
        panels = [ax for ax in figure.axes if ax.get_title().startswith(r"$\nu_i$")]
        assert len(panels) == 3
        if len(in_shape) == 2:  # centred image: zero frequency in the middle
            image = panels[0].images[0].get_array()
            np.testing.assert_allclose(
                image,
                np.fft.fftshift(
                    np.log10(np.abs(rows[0]) + 1e-12 * np.abs(rows).max()).reshape(in_shape)
                ),
            )
    finally:
        plt.close(figure)


def test_plot_spectral_rows_checks_shapes():
    with pytest.raises(ValueError, match=r"rows must have shape \[K, M_in\]"):
        plotting.plot_spectral_rows(np.ones((2, 10)), np.array([0, 1]), in_shape=(3, 3))
