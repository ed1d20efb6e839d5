r"""One call: a segmentation model's spectral analysis over a data set.

:func:`analyze` runs the analyses of Chen, Chiu, Wu, "Spectral Analysis for Semantic
Segmentation with Applications on Feature Truncation and Weak Annotation"
(arXiv:2012.14123) on any Flax model and returns one :class:`Analysis`:

* the CE spectrum ``L_ce(nu)`` (Eq. 5) and its band profile, ``R(nu_max)`` (Eq. 14) for
  every band limit, the spectral IoU and mIoU (Eq. 8 on the arg-max), the Parseval error
  of the float32 decomposition, the mIoU and pixel accuracy of the confusion matrix;
* for each named layer (a module path, :mod:`spectral_jax.layers`): its feature
  spectrum profile (the band power of the layer's output) and the rows
  ``dL_ce(nu_i)/dx_hat(nu_j)`` of the CE spectral gradient at the layer (Eq. 11) at the
  paper's ``i = 0, M/4, M/2`` (Fig. 4; ``M`` the number of frequencies of the layer's
  map) and any rows the user names, with each row's diagonal energy fraction.

The data set is streamed once, through :class:`spectral_jax.evaluation.Evaluator` with
:class:`spectral_jax.SpectralStatistics`: the layers' feature profiles are further
per-example outputs of the predict function (summed by the evaluator), and the Jacobian
rows are computed on the first ``num_examples`` images that the evaluator keeps.
:meth:`Analysis.write_report` writes Markdown and figures (matplotlib, the ``plot``
extra); :meth:`Analysis.to_json` and :meth:`Analysis.from_json` round-trip the result.

Example:
  >>> import flax.linen as nn
  >>> class Net(nn.Module):
  ...     @nn.compact
  ...     def __call__(self, x):
  ...         x = nn.relu(nn.Conv(4, (3, 3), name="body")(x))
  ...         return nn.Conv(5, (1, 1), name="classify")(x)
  >>> rng = np.random.default_rng(0)
  >>> batches = [{"image": rng.normal(size=(2, 17, 17, 3)).astype(np.float32),
  ...             "label": rng.integers(0, 5, size=(2, 17, 17))}]
  >>> net = Net()
  >>> variables = net.init(jax.random.key(0), batches[0]["image"])
  >>> result = analyze(net.apply, variables, batches, num_classes=5, layers=["body"])
  >>> result.num_images, result.ce_spectrum.shape, result.relative_discrepancy_curve.shape
  (2, (17, 17), (9,))
  >>> result.layers[0].row_indices  # i = 0, M/4, M/2 of the 17 x 17 map
  array([  0,  72, 144])
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks, plotting
from spectral_jax import bands as bands_lib
from spectral_jax import frequencies as frequencies_lib
from spectral_jax import layers as layers_lib
from spectral_jax import spectral_gradient as sg_lib
from spectral_jax._checks import IGNORE_INDEX, DataFormat
from spectral_jax.evaluation.evaluator import REPORTED_BAND_LIMITS, Evaluator
from spectral_jax.loss_spectrum import IgnoreMode

_FEATURE_PREFIX = "feature_power/"


# ---------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass(frozen=True, eq=False)
class LayerAnalysis:
    """What :func:`analyze` measured at one layer.

    Attributes:
      name: the module path (``"decoder/aspp"``).
      shape: ``(h, w, c)`` of the layer's output for one image.
      feature_profile: ``[R_l]`` mean over the images of the band power of the layer's
        output, ``P(r) = (1 / (c M^2)) sum_c sum_{band(nu) = r} |x_hat_c(nu)|^2`` with
        ``M = h w``; it sums to the mean of ``x^2`` over pixels and channels (Parseval).
      row_indices: ``[K]`` flat indices ``nu_i`` of the rows on the image's (logits')
        frequency grid.
      row_frequencies: ``[K, 2]`` their signed frequencies ``(nu_h, nu_w)``.
      rows: ``[N, K, h w]`` complex ``dL_ce(nu_i)/dx_hat(nu_j)`` on the first ``N``
        images (:func:`spectral_jax.layer_spectral_gradient`, channels summed).
      diagonal_energy_fraction: ``[N, K]`` share of each row's energy at
        ``nu_j = nu_i`` (:func:`spectral_jax.diagonal_energy_fraction`).
    """

    name: str
    shape: tuple[int, int, int]
    feature_profile: np.ndarray
    row_indices: np.ndarray
    row_frequencies: np.ndarray
    rows: np.ndarray
    diagonal_energy_fraction: np.ndarray


#: The JSON key of each field of :class:`Analysis` whose key is not its name.
_JSON_KEYS = {"relative_discrepancy_curve": "relative_discrepancy"}


@dataclasses.dataclass(frozen=True, eq=False)
class Analysis:
    """The result of :func:`analyze` (plain NumPy and Python values).

    Attributes:
      num_classes: ``C``.
      image_shape: ``(H, W)`` of the logits and labels.
      num_images: images with at least one valid pixel (those the statistics count).
      radius: the band radius (:mod:`spectral_jax.bands`).
      band_limits: the band limits the report tabulates ``R(nu_max)`` at.
      mean_ce: mean over images of each image's mean CE (from the CE components).
      ce_spectrum: ``[H, W]`` mean over images of ``L_ce(nu)``, DFT layout (unshifted).
      band_profile: ``[R]`` mean over images of the band sums of ``L_ce``.
      relative_discrepancy_curve: ``[R]`` ``R(nu_max)`` for every band limit
        ``nu_max = 0 .. R - 1`` (Eq. 14, a ratio of means over the data set).
      spectral_iou: ``[C]`` IoU per class from the spectral terms of Eq. 8 (arg-max).
      spectral_mean_iou: their mean over the classes seen.
      mean_iou, pixel_accuracy: from the evaluator's confusion matrix.
      parseval_error: relative error of the CE decomposition (check it before reading
        small ``R`` values; use float64 where it is not small).
      layers: one :class:`LayerAnalysis` per named layer.
      ignore_mode: how ignored pixels entered the CE decomposition (``"labels"`` or
        ``"both"``).
    """

    num_classes: int
    image_shape: tuple[int, int]
    num_images: int
    radius: str
    band_limits: tuple[int, ...]
    mean_ce: float
    ce_spectrum: np.ndarray
    band_profile: np.ndarray
    relative_discrepancy_curve: np.ndarray
    spectral_iou: np.ndarray
    spectral_mean_iou: float
    mean_iou: float
    pixel_accuracy: float
    parseval_error: float
    layers: tuple[LayerAnalysis, ...] = ()
    ignore_mode: str = "labels"

    def layer(self, name: str) -> LayerAnalysis:
        """The :class:`LayerAnalysis` of the layer ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; analysed: {[layer.name for layer in self.layers]}.")

    def to_json(self) -> str:
        """The result as JSON (arrays with their dtype and shape; complex as real, imag).

        The curve ``relative_discrepancy_curve`` keeps its earlier key
        ``"relative_discrepancy"``, so that files written before read back.
        """
        fields = {
            _JSON_KEYS.get(key, key): value for key, value in dataclasses.asdict(self).items()
        }
        return json.dumps(_encode(fields), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Analysis:
        """The :class:`Analysis` that :meth:`to_json` wrote."""
        field_of_key = {key: field for field, key in _JSON_KEYS.items()}
        fields = {field_of_key.get(k, k): v for k, v in _decode(json.loads(text)).items()}
        layers = tuple(
            LayerAnalysis(**{**layer, "shape": tuple(layer["shape"])}) for layer in fields["layers"]
        )
        return cls(
            **{
                **fields,
                "image_shape": tuple(fields["image_shape"]),
                "band_limits": tuple(fields["band_limits"]),
                "layers": layers,
            }
        )

    def write_report(self, directory: str | pathlib.Path) -> pathlib.Path:
        """Writes ``report.md``, its figures (PNG) and ``analysis.json`` into ``directory``.

        Needs matplotlib (``pip install 'spectral_jax[plot]'``).

        Returns:
          The path of ``report.md``.
        """
        return _write_report(self, pathlib.Path(directory))


def _encode(value):
    if isinstance(value, np.ndarray):
        encoded = {"dtype": str(value.dtype), "shape": list(value.shape)}
        if np.iscomplexobj(value):
            return {
                **encoded,
                "real": value.real.ravel().tolist(),
                "imag": value.imag.ravel().tolist(),
            }
        return {**encoded, "data": value.ravel().tolist()}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value):
    if isinstance(value, dict) and "dtype" in value and "shape" in value:
        if "real" in value:
            data = np.asarray(value["real"]) + 1j * np.asarray(value["imag"])
        else:
            data = np.asarray(value["data"])
        return data.astype(value["dtype"]).reshape(value["shape"])
    if isinstance(value, dict):
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------
# The predict function the evaluator runs: logits and the layers' feature profiles.


def feature_band_power(features: jax.Array, *, radius: bands_lib.Radius = "chebyshev") -> jax.Array:
    r"""Band power of feature maps, averaged over channels.

    .. math::

       P(r) = \frac{1}{c M^2} \sum_c \sum_{\mathrm{band}(\nu) = r} |\hat x_c(\nu)|^2,
       \qquad \sum_r P(r) = \frac{1}{c M} \sum_{c, t} x_c(t)^2

    with ``x_hat`` the unnormalised 2-D DFT over the ``M = h w`` pixels (Parseval).

    Args:
      features: ``[B, h, w, c]`` real feature maps.
      radius: band radius, static.

    Returns:
      ``[B, R]`` float32, ``R = num_bands((h, w), radius=radius)``.
    """
    features = jnp.asarray(features, jnp.promote_types(features.dtype, jnp.float32))
    _, height, width, channels = features.shape
    spectrum = jnp.fft.fft2(features, axes=(1, 2))  # [B, h, w, c]
    power = jnp.sum(jnp.abs(spectrum) ** 2, axis=-1) / (channels * (height * width) ** 2)
    index = bands_lib.band_index((height, width), radius=radius).reshape(-1)  # [h w]
    num = bands_lib.num_bands((height, width), radius=radius)
    flat = power.reshape(power.shape[0], -1)  # [B, h w]
    return jax.vmap(lambda row: jax.ops.segment_sum(row, index, num_segments=num))(flat)


@dataclasses.dataclass(frozen=True)
class _ApplyWithFeatures:
    """``{"logits": ..., "feature_power/<layer>": [B, R_l]}`` from one forward pass."""

    apply_fn: Callable
    layers: tuple[str, ...]
    radius: bands_lib.Radius

    def __call__(self, variables, images):
        logits, outputs = layers_lib.layer_outputs(self.apply_fn, variables, images, self.layers)
        powers = {
            _FEATURE_PREFIX + name: feature_band_power(out, radius=self.radius)
            for name, out in outputs.items()
        }
        return {"logits": logits, **powers}


# ---------------------------------------------------------------------------------------
# Rows of the paper's Fig. 4.


def _layer_row_frequencies(rows, layer_shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Signed frequencies of the paper's rows ``0, M/4, M/2`` and the user's rows."""
    m = math.prod(layer_shape)
    frequencies = [tuple(nu) for nu in frequencies_lib.fig4_frequencies(layer_shape).tolist()]
    for row in rows or ():
        if isinstance(row, int | np.integer) and not isinstance(row, bool):
            if not 0 <= row < m:
                raise ValueError(
                    f"rows must be flat indices in [0, {m}) of the layer's {layer_shape} "
                    f"grid or signed frequencies (nu_h, nu_w); got {row}."
                )
            (signed,) = frequencies_lib.unravel_frequencies([row], layer_shape).tolist()
            frequencies.append(tuple(signed))
        elif (
            isinstance(row, tuple | list)
            and len(row) == 2
            and all(isinstance(v, int | np.integer) for v in row)
        ):
            for nu, n in zip(row, layer_shape, strict=True):
                if not -(n // 2) <= nu <= (n - 1) // 2:
                    raise ValueError(
                        f"rows: signed frequency {tuple(row)} is outside the layer's "
                        f"{layer_shape} grid (|nu| <= n // 2 per axis)."
                    )
            frequencies.append((int(row[0]), int(row[1])))
        else:
            raise TypeError(
                f"rows must hold flat indices (int) or signed frequencies (nu_h, nu_w); got "
                f"{row!r}."
            )
    return list(dict.fromkeys(frequencies))


# ---------------------------------------------------------------------------------------
# The one call.


def _check_layers(layers) -> tuple[str, ...]:
    if isinstance(layers, str):
        return (layers,)
    if not isinstance(layers, Sequence) or not all(isinstance(name, str) for name in layers):
        raise TypeError(
            f"layers must be a sequence of module paths such as ('decoder/aspp',), got {layers!r}."
        )
    return tuple(layers)


def _counted(batches: Iterable[Mapping[str, Any]], data_format: str):
    """``batches`` as a generator that counts what it yields (``counter[0]``).

    Array-likes (CPU PyTorch tensors) are read as arrays, and ``[B, Ci, H, W]`` images
    (``"NCHW"``) moved channels last on the host, where the evaluator pads them.
    """
    counter = [0]

    def generate():
        for batch in batches:
            counter[0] += 1
            batch = {key: _checks.as_array(value, key) for key, value in batch.items()}
            if data_format == "NCHW" and "image" in batch:
                batch["image"] = np.moveaxis(np.asarray(batch["image"]), 1, -1)
            yield batch

    return generate(), counter


def analyze(
    apply_fn: Callable[[Any, jax.Array], Any],
    variables: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    num_classes: int,
    layers: Sequence[str] = (),
    band_limits: Sequence[int] | None = None,
    rows: Sequence[int | tuple[int, int]] | None = None,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = "labels",
    num_examples: int = 1,
    chunk_size: int = 64,
    data_format: DataFormat = "NHWC",
) -> Analysis:
    """A model's spectral analysis over a data set, streamed once (module docstring).

    Args:
      apply_fn: ``apply_fn(variables, images [B, H, W, Ci]) -> logits [B, H, W, C]`` (or
        a dict with ``"logits"``), such as ``model.apply`` or
        ``functools.partial(model.apply, train=False)``.
      variables: the model's variables.
      batches: an iterable of ``{"image": [B, H, W, Ci], "label": [B, H, W]}`` (optionally
        ``"mask"`` ``[B]``), iterated once; every batch has the same ``H, W``. JAX or
        NumPy arrays or CPU PyTorch tensors.
      num_classes: ``C``.
      layers: module paths to analyse (:func:`spectral_jax.layer_paths`), each the output
        ``[B, h, w, c]`` of a module called once per forward pass.
      band_limits: band limits at which the report tabulates ``R(nu_max)``; default the
        ones of the paper's Table 1 (8, 16, 32, 64) the grid holds. The result holds
        ``R`` at every band limit either way.
      rows: further Jacobian rows, each a flat index into the layer's ``h x w`` DFT grid
        or a signed frequency ``(nu_h, nu_w)``, besides the paper's ``0, M/4, M/2``;
        each row is taken at the same signed frequency of the image's grid.
      ignore_index: label of ignored pixels.
      ignore_mode: how ignored pixels enter the CE decomposition of the spectrum, ``R``
        and the Jacobian rows: ``"labels"`` (the paper's Eq. 1) or ``"both"``
        (:func:`spectral_jax.ce_spectrum`).
      num_examples: the Jacobian rows are computed on the first ``num_examples`` images.
      chunk_size: rows per vectorised step of the spectral gradient.
      data_format: the layout of the images: ``"NHWC"`` or ``"NCHW"`` (``[B, Ci, H, W]``,
        PyTorch's; moved channels last before the model, which gets ``[B, H, W, Ci]``).

    Returns:
      :class:`Analysis`.

    Raises:
      ValueError: no batch; a layer no forward pass reaches (the message lists the
        nearest valid paths); band limits or rows outside the grid; ``num_examples < 1``
        with layers; as :class:`spectral_jax.evaluation.Evaluator`.
      TypeError: ``layers`` or ``rows`` of the wrong kind.
    """
    layer_names = _check_layers(layers)
    _checks.check_data_format(data_format)
    if layer_names and (isinstance(num_examples, bool) or num_examples < 1):
        raise ValueError(f"num_examples must be at least 1 with layers, got {num_examples}.")
    if band_limits is not None and not all(
        isinstance(nu, int | np.integer) and not isinstance(nu, bool) for nu in band_limits
    ):
        raise TypeError(f"band_limits must be ints, got {band_limits!r}.")
    # A partial of hashable arguments compared by value: equal ones share compilations.
    apply_fn = layers_lib._static_apply(apply_fn)
    radius: bands_lib.Radius = "chebyshev"
    predict = _ApplyWithFeatures(apply_fn, layer_names, radius) if layer_names else apply_fn
    evaluator = Evaluator(
        predict,
        num_classes=num_classes,
        ignore_index=ignore_index,
        spectral_statistics=True,
        ignore_mode=ignore_mode,
        num_examples=num_examples if layer_names else 0,
    )
    stream, counter = _counted(batches, data_format)
    result = evaluator(variables, stream)
    if counter[0] == 0:
        raise ValueError("batches yielded no batch: nothing to analyse.")
    statistics = result.statistics
    assert statistics is not None  # spectral_statistics=True
    image_shape = (int(statistics.shape[0]), int(statistics.shape[1]))
    discrepancy = np.asarray(statistics.relative_discrepancy_curve(), np.float64)
    num_bands = len(discrepancy)
    if band_limits is None:
        band_limits = tuple(nu for nu in REPORTED_BAND_LIMITS if nu < num_bands)
    band_limits = tuple(int(nu) for nu in band_limits)
    if any(not 0 <= nu < num_bands for nu in band_limits):
        raise ValueError(
            f"band_limits must lie in [0, {num_bands}) for {image_shape} images, got {band_limits}."
        )

    layer_results = []
    for name in layer_names:
        profile = result.output_sums[_FEATURE_PREFIX + name] / max(result.num_evaluated, 1)
        images = result.examples["image"]
        labels = result.examples["label"]
        features = jax.eval_shape(  # [1, h, w, c], nothing compiled
            lambda v, x, name=name: layers_lib.layer_output(apply_fn, v, x, name),
            variables,
            images[:1],
        )
        _, height, width, channels = (int(n) for n in features.shape)
        layer_shape = (height, width)
        frequencies = _layer_row_frequencies(rows, layer_shape)
        nu_i = frequencies_lib.ravel_frequencies(frequencies, image_shape)
        gradient = layers_lib.layer_spectral_gradient(
            apply_fn,
            variables,
            images,
            labels,
            name,
            nu_i=nu_i,
            ignore_index=ignore_index,
            ignore_mode=ignore_mode,
            chunk_size=chunk_size,
        )  # [N, K, h w]
        diagonal = np.stack(
            [
                np.asarray(
                    sg_lib.diagonal_energy_fraction(
                        one, nu_i, out_shape=image_shape, in_shape=layer_shape
                    )
                )
                for one in gradient
            ]
        )
        layer_results.append(
            LayerAnalysis(
                name=name,
                shape=(height, width, channels),
                feature_profile=np.asarray(profile, np.float64),
                row_indices=np.asarray(nu_i, np.int64),
                row_frequencies=np.asarray(frequencies, np.int64),
                rows=np.asarray(gradient),
                diagonal_energy_fraction=diagonal.astype(np.float64),
            )
        )

    return Analysis(
        num_classes=int(num_classes),
        image_shape=image_shape,
        num_images=int(statistics.num_images),
        radius=radius,
        band_limits=band_limits,
        mean_ce=float(statistics.mean_ce()),
        ce_spectrum=np.asarray(statistics.ce_spectrum(), np.float64),
        band_profile=np.asarray(statistics.band_profile(), np.float64),
        relative_discrepancy_curve=discrepancy,
        spectral_iou=np.asarray(statistics.iou(), np.float64),
        spectral_mean_iou=float(statistics.mean_iou()),
        mean_iou=float(result.mean_iou),
        pixel_accuracy=float(result.pixel_accuracy),
        parseval_error=float(statistics.parseval_error()),
        layers=tuple(layer_results),
        ignore_mode=ignore_mode,
    )


# ---------------------------------------------------------------------------------------
# The report.


def _file_name(layer: str) -> str:
    return layer.replace("/", "-")


def _write_report(analysis: Analysis, directory: pathlib.Path) -> pathlib.Path:
    plt = plotting._pyplot("Analysis.write_report")
    directory.mkdir(parents=True, exist_ok=True)
    height, width = analysis.image_shape
    lines = [
        "# Spectral analysis",
        "",
        'The analyses of Chen, Chiu, Wu, "Spectral Analysis for Semantic Segmentation with '
        'Applications on Feature Truncation and Weak Annotation" (arXiv:2012.14123) on '
        f"{analysis.num_images} images of {height} x {width}, {analysis.num_classes} classes; "
        f"ignored pixels: `ignore_mode={analysis.ignore_mode!r}` (`labels`: zeroed in the "
        "label maps, Eq. 1; `both`: in the label and log-probability maps).",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| mean CE (sum of the CE components) | {analysis.mean_ce:.6g} |",
        f"| Parseval error of the decomposition | {analysis.parseval_error:.3g} |",
        f"| mIoU (confusion matrix) | {analysis.mean_iou:.4f} |",
        f"| spectral mIoU (Eq. 8, arg-max) | {analysis.spectral_mean_iou:.4f} |",
        f"| pixel accuracy | {analysis.pixel_accuracy:.4f} |",
        "",
        "## R(nu_max), Eq. 14",
        "",
        "| nu_max | R(nu_max) |",
        "|---:|---:|",
        *(
            f"| {nu} | {analysis.relative_discrepancy_curve[nu]:.6g} |"
            for nu in analysis.band_limits
        ),
        "",
        "![CE band profile and R](ce_bands.png)",
        "",
        "![CE spectrum](ce_spectrum.png)",
        "",
        "## IoU per class",
        "",
        "| class | spectral IoU |",
        "|---:|---:|",
        *(f"| {c} | {iou:.4f} |" for c, iou in enumerate(analysis.spectral_iou)),
    ]

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.bar(np.arange(len(analysis.band_profile)), analysis.band_profile)
    left.set(xlabel="band r", ylabel="mean CE in band", title="CE band profile")
    right.semilogy(np.maximum(analysis.relative_discrepancy_curve, 1e-12))
    right.set(xlabel="nu_max", ylabel="R(nu_max)", title="relative discrepancy")
    figure.tight_layout()
    figure.savefig(directory / "ce_bands.png", dpi=80)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(4, 3.5))
    centred = np.fft.fftshift(analysis.ce_spectrum)
    image = axis.imshow(np.log10(np.abs(centred) + 1e-12), cmap="magma")
    axis.set(title="log10 |L_ce(nu)|, zero frequency centred")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(directory / "ce_spectrum.png", dpi=80)
    plt.close(figure)

    for layer in analysis.layers:
        stem = _file_name(layer.name)
        h, w, c = layer.shape
        lines += [
            "",
            f"## Layer `{layer.name}` ({h} x {w} x {c})",
            "",
            "Feature spectrum: mean band power of the layer's output.",
            "",
            f"![feature profile]({stem}_features.png)",
            "",
            "Rows dL_ce(nu_i)/dx(nu_j) of the CE spectral gradient at the layer (Eq. 11, "
            "channels summed), mean over the analysed images:",
            "",
            "| nu_i (signed) | image index | diagonal energy fraction |",
            "|---|---:|---:|",
            *(
                f"| {tuple(int(v) for v in frequency)} | {index} | {fraction:.4f} |"
                for frequency, index, fraction in zip(
                    layer.row_frequencies,
                    layer.row_indices,
                    layer.diagonal_energy_fraction.mean(axis=0),
                    strict=True,
                )
            ),
            "",
            f"![rows]({stem}_rows.png)",
        ]
        figure, axis = plt.subplots(figsize=(4.5, 3))
        axis.semilogy(np.maximum(layer.feature_profile, 1e-30), marker="o")
        axis.set(xlabel="band r", ylabel="power", title=f"{layer.name}: feature spectrum")
        figure.tight_layout()
        figure.savefig(directory / f"{stem}_features.png", dpi=80)
        plt.close(figure)
        figure = plotting.plot_spectral_rows(
            layer.rows[0],
            layer.row_indices,
            in_shape=(h, w),
            out_shape=analysis.image_shape,
            title=f"{layer.name}: dL_ce(nu_i)/dx(nu_j), first image",
        )
        figure.savefig(directory / f"{stem}_rows.png", dpi=80)
        plt.close(figure)

    (directory / "analysis.json").write_text(analysis.to_json())
    report = directory / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
