"""The README's figure: where the segmentation cross-entropy lies in frequency.

Three panels on the embedded generated scenes (no data set build, no training; a few
seconds on a CPU): a ``pascal_like`` validation label map, the centred spectrum of its
cross-entropy ``L_ce(nu)`` (Eq. 5 of *Spectral Analysis for Semantic Segmentation with
Applications on Feature Truncation and Weak Annotation*, arXiv:2012.14123) for a
prediction equal to the labels blurred by one pixel, and ``R(nu_max)`` (Eq. 14) of the
three presets for that prediction, each from one call of
:func:`spectral_jax.band_limit_sweep`.

Usage::

  python -m experiments.overview_figure --output docs/images/overview.png
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

import spectral_jax as sj
from experiments.report import pyplot
from spectral_jax.data import synthetic

PRESETS = ("cityscapes_like", "pascal_like", "deepglobe_like")
NUM_IMAGES = 4  # validation scenes per preset
SIGMA = 1.0  # blur of the stand-in prediction, pixels
DEFAULT_OUTPUT = pathlib.Path("docs/images/overview.png")


def preset_curves(num_images: int = NUM_IMAGES, sigma: float = SIGMA) -> dict[str, dict]:
    """Per preset: ``labels [N, H, W]``, ``spectrum [N, H, W]`` and ``r [R]`` (float32)."""
    curves = {}
    for name in PRESETS:
        config = synthetic.preset(name)
        labels = np.stack(
            [
                synthetic.generate_example(config, "validation", i)["label"]
                for i in range(num_images)
            ]
        ).astype(np.int32)  # [N, H, W]
        logits = synthetic.blurred_label_logits(
            labels, num_classes=config.num_classes, sigma=sigma
        ).astype(np.float32)  # [N, H, W, C]
        curves[name] = {
            "labels": labels,
            "spectrum": np.asarray(sj.ce_spectrum(logits, labels)),
            "r": np.asarray(sj.band_limit_sweep(logits, labels)),
        }
    return curves


def draw(curves: dict[str, dict]):
    """The three-panel figure of :func:`preset_curves`'s result; returns the ``Figure``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2), layout="constrained")
    pascal = curves["pascal_like"]
    labels = np.ma.masked_equal(pascal["labels"][0], synthetic.IGNORE_INDEX)
    axes[0].imshow(labels, cmap="tab20", interpolation="nearest")
    axes[0].set(title="labels (pascal_like scene)", xticks=[], yticks=[])

    spectrum = np.asarray(sj.centered_spectrum(pascal["spectrum"][0]))  # [H, W]
    half = spectrum.shape[0] // 2
    image = axes[1].imshow(
        np.log10(np.abs(spectrum) + 1e-9),
        extent=(-half - 0.5, half + 0.5, half + 0.5, -half - 0.5),
        cmap="magma",
        vmin=-7,
    )
    axes[1].set(title=r"$\log_{10} |L_{ce}(\nu)|$", xlabel=r"$\nu_w$", ylabel=r"$\nu_h$")
    fig.colorbar(image, ax=axes[1], shrink=0.85)

    for name, curve in curves.items():
        band_limits = np.arange(curve["r"].shape[0])
        axes[2].semilogy(band_limits, np.where(curve["r"] > 0, curve["r"], np.nan), label=name)
    axes[2].set(title=r"$R(\nu_{max})$, one call each", xlabel=r"band limit $\nu_{max}$")
    axes[2].grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize="small")
    return fig


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Writes the figure to ``--output`` and returns its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    fig = draw(preset_curves())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi, metadata={"Software": None})
    pyplot().close(fig)
    return args.output


if __name__ == "__main__":
    print(main())
