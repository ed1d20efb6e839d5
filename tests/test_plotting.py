"""Tests for spectral_jax.plotting (matplotlib with the Agg backend): what each panel draws."""

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


def test_plot_spectral_rows_titles_signed_frequencies():
    """Rows given by signed frequency: the titles read them back (the 8-point Nyquist is -4)."""
    import matplotlib.pyplot as plt

    rows = np.ones((3, 4 * 4))
    figure = plotting.plot_spectral_rows(
        rows, [(1, -2), (4, 0), (-3, 7)], in_shape=(4, 4), out_shape=(8, 15)
    )
    try:
        titles = [ax.get_title() for ax in figure.axes if ax.get_title().startswith(r"$\nu_i$")]
        assert titles == [r"$\nu_i$ = (1, -2)", r"$\nu_i$ = (-4, 0)", r"$\nu_i$ = (-3, 7)"]
    finally:
        plt.close(figure)


def test_plot_spectral_rows_checks_shapes():
    with pytest.raises(ValueError, match=r"rows must have shape \[K, M_in\]"):
        plotting.plot_spectral_rows(np.ones((2, 10)), np.array([0, 1]), in_shape=(3, 3))


def test_plot_selection_heat_map(rng):
    import matplotlib.pyplot as plt

    heat_map = rng.uniform(size=(3, 8, 8))
    figure = plotting.plot_selection_heat_map(heat_map, title="gate")
    try:
        panels = [ax for ax in figure.axes if ax.get_title() in ("Y", "Cb", "Cr")]
        assert [ax.get_title() for ax in panels] == ["Y", "Cb", "Cr"]
        for ax, panel in zip(panels, heat_map, strict=True):
            np.testing.assert_allclose(ax.images[0].get_array(), panel)
        labels = {(t.get_position(), t.get_text()) for t in panels[0].texts}
        assert len(labels) == 64
        # Zig-zag labels: (u, v) = (0, 2) is the 6th coefficient of the scan, (2, 0) the 4th.
        assert ((2, 0), "5") in labels and ((0, 2), "3") in labels
    finally:
        plt.close(figure)
    with pytest.raises(ValueError, match=r"\[3, 8, 8\]"):
        plotting.plot_selection_heat_map(np.zeros((192,)))


def test_plot_frequency_cams_draws_the_maps(rng):
    import matplotlib.pyplot as plt

    cam_low = rng.uniform(size=(6, 7, 3))
    cam_high = rng.uniform(size=(6, 7, 3))
    image = rng.uniform(size=(6, 7, 3))
    figure = plotting.plot_frequency_cams(cam_low, cam_high, class_index=2, image=image, title="t")
    try:
        assert len(figure.axes) == 3
        np.testing.assert_array_equal(figure.axes[1].images[0].get_array(), cam_low[..., 2])
        np.testing.assert_array_equal(figure.axes[2].images[0].get_array(), cam_high[..., 2])
        with pytest.raises(ValueError, match="class_index"):
            plotting.plot_frequency_cams(cam_low, cam_high, class_index=3)
    finally:
        plt.close("all")
