"""Fig. 4-style panels of spectral-Jacobian rows (matplotlib, an optional extra).

matplotlib is imported when a function is called, not when ``spectral_jax`` is: install
it with ``pip install 'spectral_jax[plot]'``.
"""

from __future__ import annotations

import numpy as np

from spectral_jax import bands as bands_lib


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "spectral_jax.plotting needs matplotlib: pip install 'spectral_jax[plot]'."
        ) from error
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
      nu_i: ``[K]`` flat output-frequency indices of the rows (for the panel titles).
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
    nu_i = np.asarray(nu_i).reshape(-1)
    in_shape = tuple(in_shape)
    out_shape = tuple(out_shape or in_shape)
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
