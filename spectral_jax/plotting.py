"""Every figure of the library (matplotlib, an optional extra).

* :func:`plot_spectral_rows`: Fig. 4-style panels of spectral-Jacobian rows.
* :func:`plot_frequency_cams`: low- and high-frequency CAMs (FFR, CVPR 2025, supplementary).
* :func:`plot_selection_heat_map`: the DCT channel gate's selection frequency (Xu et al., CVPR
  2020, Fig. 5).

matplotlib is imported when a function is called, not when ``spectral_jax`` is: install
it with ``pip install 'spectral_jax[plot]'``. This module is the presentation layer above
the core and :mod:`spectral_jax.related`; nothing in the library imports it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from spectral_jax import bands as bands_lib
from spectral_jax import frequencies as frequencies_lib
from spectral_jax.related import dct_input


def _pyplot(user: str = "spectral_jax.plotting"):
    """``matplotlib.pyplot`` (the ``plot`` extra); the error names ``user`` when it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"{user} needs matplotlib: pip install 'spectral_jax[plot]'.") from error
    return plt


def plot_spectral_rows(
    rows,
    nu_i,
    *,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...] | None = None,
    title: str | None = None,
    log_scale: bool = True,
    axes=None,
):
    """One panel per row ``|J[nu_i, :]|`` over all input frequencies, zero frequency centred.

    The paper's Fig. 4 plots rows ``i = 0, M/4, M/2`` of each operation's spectral
    Jacobian; a delta response shows as a single bright pixel at ``nu_j = nu_i``.

    Args:
      rows: ``[K, M_in]`` complex rows (:func:`spectral_jax.spectral_jacobian_rows`).
      nu_i: ``[K]`` flat output-frequency indices of the rows, or ``[K, d]`` signed
        frequencies (:mod:`spectral_jax.frequencies`), for the panel titles.
      in_shape: input spatial shape ``(H, W)`` or ``(L,)``.
      out_shape: output spatial shape, for the titles (default ``in_shape``).
      title: optional title above the panels.
      log_scale: plot ``log10(|J| + tiny)`` instead of ``|J|``.
      axes: optional sequence of ``K`` matplotlib axes to draw into.

    Returns:
      The matplotlib ``Figure``.
    """
    plt = _pyplot()
    rows = np.asarray(rows)
    in_shape = tuple(in_shape)
    out_shape = tuple(out_shape or in_shape)
    nu_i = np.reshape(nu_i, -1) if np.ndim(nu_i) == 0 else nu_i  # one row's index
    nu_i = np.asarray(frequencies_lib.flat_frequency_indices(nu_i, out_shape, name="nu_i"))
    if rows.ndim != 2 or rows.shape != (nu_i.size, int(np.prod(in_shape))):
        raise ValueError(
            f"rows must have shape [K, M_in] = {(nu_i.size, int(np.prod(in_shape)))}, "
            f"got {rows.shape}."
        )
    if axes is None:
        figure, axes = plt.subplots(
            1, len(nu_i), figsize=(3.2 * len(nu_i), 3.0), squeeze=False, layout="constrained"
        )
        axes = axes[0]
    else:
        figure = axes[0].figure
    magnitude = np.abs(rows)
    if log_scale:
        magnitude = np.log10(magnitude + 1e-12 * max(magnitude.max(), 1e-30))
    for ax, row, index in zip(axes, magnitude, nu_i, strict=True):
        coords = np.unravel_index(index, out_shape)
        nu = tuple(
            int(bands_lib.signed_frequencies(n)[c]) for c, n in zip(coords, out_shape, strict=True)
        )
        panel = np.fft.fftshift(row.reshape(in_shape))
        if len(in_shape) == 2:
            h, w = (bands_lib.centered_frequencies(n) for n in in_shape)
            image = ax.imshow(
                panel, origin="lower", extent=(w[0] - 0.5, w[-1] + 0.5, h[0] - 0.5, h[-1] + 0.5)
            )
            ax.set_xlabel(r"$\nu_j$ (W)")
            ax.set_ylabel(r"$\nu_j$ (H)")
            figure.colorbar(image, ax=ax, shrink=0.8)
        else:
            ax.plot(bands_lib.centered_frequencies(in_shape[0]), panel)
            ax.set_xlabel(r"$\nu_j$")
        ax.set_title(rf"$\nu_i$ = {nu if len(nu) > 1 else nu[0]}")
    if title:
        figure.suptitle(title + (" (log10 |J|)" if log_scale else " (|J|)"))
    return figure


def plot_frequency_cams(
    cam_low,
    cam_high,
    *,
    class_index: int,
    image=None,
    title: str | None = None,
    axes=None,
):
    """Panels of one image's low- and high-frequency CAMs of one class (matplotlib).

    matplotlib is imported on call (``pip install 'spectral_jax[plot]'``).

    Args:
      cam_low: ``[H, W, C]`` CAMs of one image (from :func:`spectral_jax.related.frequency_masking.frequency_class_activation_maps`).
      cam_high: ``[H, W, C]``.
      class_index: the class to show.
      image: optional ``[Hi, Wi, 3]`` image in ``[0, 1]`` drawn in a first panel.
      title: optional figure title.
      axes: optional sequence of 2 (3 with ``image``) matplotlib axes to draw into.

    Returns:
      The matplotlib ``Figure``.

    Raises:
      ValueError: for CAMs that are not ``[H, W, C]`` of equal shape, or a bad class.
    """
    plt = _pyplot()
    cam_low = np.asarray(cam_low)
    cam_high = np.asarray(cam_high)
    if cam_low.ndim != 3 or cam_low.shape != cam_high.shape:
        raise ValueError(
            f"cam_low and cam_high must both be [H, W, C], got {cam_low.shape} and "
            f"{cam_high.shape}."
        )
    if not 0 <= class_index < cam_low.shape[-1]:
        raise ValueError(f"class_index must lie in [0, {cam_low.shape[-1]}), got {class_index}.")
    panels: list[tuple[str, Any, str | None]]
    panels = [] if image is None else [("image", np.asarray(image), None)]
    panels += [
        ("low-frequency CAM", cam_low[..., class_index], "jet"),
        ("high-frequency CAM", cam_high[..., class_index], "jet"),
    ]
    if axes is None:
        figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    else:
        figure = axes[0].figure
    if len(axes) != len(panels):
        raise ValueError(f"axes must hold {len(panels)} axes, got {len(axes)}.")
    for ax, (name, data, cmap) in zip(axes, panels, strict=True):
        ax.imshow(data, cmap=cmap, vmin=None if cmap is None else 0.0)
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure


def plot_selection_heat_map(
    heat_map,
    *,
    index_labels: Literal["zigzag", "row_major", "none"] = "zigzag",
    title: str | None = None,
    cmap: str = "viridis",
    axes=None,
):
    """Fig. 5: one ``8 x 8`` panel per component (Y, Cb, Cr) of the selection frequency.

    Args:
      heat_map: ``[3, 8, 8]`` from :func:`spectral_jax.models.dct_gate.selection_heat_map` (values in ``[0, 1]``).
      index_labels: number written in each box: the JPEG zig-zag index (as the paper's
        figure, low index = low frequency), the row-major channel index ``8 u + v`` used
        by the channel layout, or none.
      title: optional title above the panels.
      cmap: matplotlib colour map (shared ``[0, 1]`` scale).
      axes: optional three matplotlib axes to draw into.

    Returns:
      The matplotlib ``Figure``.
    """
    plt = _pyplot()
    heat_map = np.asarray(heat_map, np.float64)
    if heat_map.shape != (len(dct_input.COMPONENTS), dct_input.BLOCK_SIZE, dct_input.BLOCK_SIZE):
        raise ValueError(f"heat_map must have shape [3, 8, 8], got {heat_map.shape}.")
    if index_labels not in ("zigzag", "row_major", "none"):
        raise ValueError(
            f"index_labels must be 'zigzag', 'row_major' or 'none', got {index_labels!r}."
        )
    if axes is None:
        figure, axes = plt.subplots(1, 3, figsize=(9.6, 3.4), squeeze=False, layout="constrained")
        axes = axes[0]
    else:
        figure = axes[0].figure
    labels = np.arange(64).reshape(8, 8)
    if index_labels == "zigzag":
        labels = np.argsort(dct_input.zigzag_order()).reshape(8, 8)
    for ax, panel, name in zip(axes, heat_map, dct_input.COMPONENTS, strict=True):
        image = ax.imshow(panel, vmin=0.0, vmax=1.0, cmap=cmap)
        if index_labels != "none":
            for u in range(dct_input.BLOCK_SIZE):
                for v in range(dct_input.BLOCK_SIZE):
                    ax.text(v, u, str(labels[u, v]), ha="center", va="center", fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("v (horizontal frequency)")
        ax.set_ylabel("u (vertical frequency)")
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="selection frequency")
    if title:
        figure.suptitle(title)
    return figure
