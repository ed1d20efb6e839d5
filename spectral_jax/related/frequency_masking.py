"""Low- and high-frequency parts of feature maps, and their class activation maps.

One split serves two papers: the de-aliasing filter and FreqMix of *When Semantic
Segmentation Meets Frequency Aliasing* (ICLR 2024, :mod:`spectral_jax.related.aliasing`) and the
frequency masking of *FFR: Frequency Feature Rectification* (CVPR 2025, supplementary
Sec. 4-5), which splits a feature map at a masking ratio ``mu`` and draws the class
activation maps (CAMs) of the two parts.

The mask. Maps are channels-last ``[B, H, W, C]``; the 2-D DFT runs over the spatial
axes only. With signed frequency indices ``nu_h, nu_w`` (:func:`spectral_jax.signed_frequencies`)
and a ``cutoff`` in cycles per sample, ``0 < cutoff <= 1/2``, the low-frequency region is

.. math::

   \\mathcal{L} = \\{(\\nu_h, \\nu_w) :
   |\\nu_h| < \\mathrm{cutoff} \\cdot H \\ \\text{and}\\ |\\nu_w| < \\mathrm{cutoff} \\cdot W\\},

the centred square of the ``fftshift``-ed spectrum (:func:`spectral_jax.centered_spectrum`)
in normalised frequency (a rectangle of indices when ``H != W``); the high-frequency
region is its complement. The inequality is strict, so a frequency exactly at the
cutoff is high: for a stride-2 down-sampling (Nyquist frequency 1/4) the pair
``nu = +-N/4`` folds onto one bin and aliases. The region is symmetric under
``nu -> -nu``, so both parts of a real map are real, and the two parts are orthogonal
projections: ``low + high = x`` and ``||low||^2 + ||high||^2 = ||x||^2`` (Parseval).

The authors' PyTorch code selects rows ``round(H/2 - H c) .. round(H/2 + H c) - 1`` (and
likewise columns) of the shifted spectrum instead, a window ``M``. For an even size ``n``
it spans the signed frequencies ``-k .. k - 1``, ``k = round(n c)``, one bin longer on the
negative side; taking the real part of the inverse FFT applies the symmetrised
multiplier ``(M(nu) + M(-nu)) / 2``. Per axis that keeps the unpaired bin ``+-k`` at half
weight. In 2-D, ``M`` is a product of the two windows but its symmetrisation is not:
inside ``|nu_h| < k_h, |nu_w| < k_w`` it is 1; on the ring ``|nu_h| = k_h, |nu_w| <= k_w``
or ``|nu_w| = k_w, |nu_h| <= k_h`` it is 1/2, except at the two anti-diagonal corners
``(k_h, -k_w)`` and ``(-k_h, k_w)``, where it is 0 (``M`` holds neither of them, whereas
it holds ``(-k_h, -k_w)``, the mirror of ``(k_h, k_w)``); beyond the ring it is 0. Our
mask keeps an axis's ring frequencies ``+-k`` fully where ``k < n c`` and not at all
where ``k >= n c``. So at ``64 x 64`` and the cutoff 0.35
(``k = 22 < 22.4``: theirs ``-22 .. 21``, ours ``|nu| <= 22``) the filters differ on
exactly the 176 bins of the ring ``max(|nu_h|, |nu_w|) = 22``: ours keeps them all, theirs
keeps 174 at half weight and drops ``(22, -22)`` and ``(-22, 22)`` entirely. For odd
sizes the window can be symmetric; at ``9 x 7`` and 0.35 it equals our mask. (The tests
compute their filter in NumPy and check these statements.)

FFR's masking ratio ``mu`` is the side of the low-frequency square relative to the side of
the spectrum (``mu = 1`` keeps every frequency but an even axis's Nyquist bin), i.e.
``cutoff = mu / 2``; the low region then holds about ``mu**2`` of the frequencies. The
supplementary does not say whether ``mu`` is a side or an area fraction; we read it as a
side fraction because it "controls the low-frequency regions" of a centred spectrum whose
side it scales.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import bands as bands_lib


def _check_cutoff(cutoff) -> float:
    if isinstance(cutoff, bool) or not isinstance(cutoff, int | float | np.floating):
        raise ValueError(f"cutoff must be a Python float in (0, 0.5], got {cutoff!r}.")
    if not 0.0 < float(cutoff) <= 0.5:
        raise ValueError(f"cutoff must lie in (0, 0.5] cycles per sample, got {cutoff}.")
    return float(cutoff)


def _check_maps(x, name: str = "x") -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(f"{name} must have shape [B, H, W, C], got shape {jnp.shape(x)}.")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be a floating array, got dtype {jnp.result_type(x)}.")


def _fft_dtypes(dtype) -> tuple[jnp.dtype, jnp.dtype]:
    """(real, complex) computation dtypes: float64 stays, anything else runs in float32."""
    if jnp.dtype(dtype) == jnp.float64:
        return jnp.float64, jnp.complex128
    return jnp.float32, jnp.complex64


@functools.lru_cache(maxsize=128)
def _axis_mask(n: int, cutoff: float) -> np.ndarray:
    # The 1e-9 guard makes an exact tie |nu| = cutoff * n count as high whatever the
    # rounding of the product (e.g. 0.35 * 20).
    return np.abs(bands_lib.signed_frequencies(n)) < cutoff * n - 1e-9


def low_frequency_mask(shape: tuple[int, int], *, cutoff: float) -> np.ndarray:
    """The low-frequency region of an ``H x W`` DFT, in DFT (unshifted) order.

    Args:
      shape: spatial shape ``(H, W)``.
      cutoff: cycles per sample in ``(0, 0.5]``; a frequency is low when
        ``|nu_h| < cutoff * H`` and ``|nu_w| < cutoff * W`` (module docstring).

    Returns:
      Boolean array ``[H, W]``; ``jnp.fft.fftshift`` of it is a centred rectangle.

    Raises:
      ValueError: for a bad ``shape`` or ``cutoff``.

    Example:
      >>> low_frequency_mask((8, 8), cutoff=0.25)[:, 0].astype(int)
      array([1, 1, 0, 0, 0, 0, 0, 1])
    """
    cutoff = _check_cutoff(cutoff)
    if len(shape) != 2 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be two positive sizes (H, W), got {shape!r}.")
    h, w = int(shape[0]), int(shape[1])
    return _axis_mask(h, cutoff)[:, None] & _axis_mask(w, cutoff)[None, :]


def cutoff_of_masking_ratio(mu: float) -> float:
    """FFR's masking ratio ``mu`` (side of the low square / side of the spectrum) as a cutoff.

    Args:
      mu: masking ratio in ``(0, 1]`` (FFR uses 0.4).

    Returns:
      ``mu / 2`` cycles per sample.

    Raises:
      ValueError: for ``mu`` outside ``(0, 1]``.
    """
    if isinstance(mu, bool) or not isinstance(mu, int | float | np.floating) or not 0 < mu <= 1:
        raise ValueError(f"mu must be a Python float in (0, 1], got {mu!r}.")
    return float(mu) / 2


def _half_mask(shape: tuple[int, int], cutoff: float) -> np.ndarray:
    h, w = shape
    return low_frequency_mask((h, w), cutoff=cutoff)[:, : w // 2 + 1]  # [H, Kw]


def split_frequencies(x: chex.Array, *, cutoff: float) -> tuple[jax.Array, jax.Array]:
    """Splits maps into their low- and high-frequency parts at ``cutoff``.

    .. math::

       x_{low} = \\mathcal{F}^{-1}\\left[\\mathbb{1}_{\\mathcal{L}} \\, \\mathcal{F}x\\right],
       \\qquad x_{high} = x - x_{low},

    with :math:`\\mathcal{F}` the 2-D DFT over ``(H, W)`` of each image and channel and
    :math:`\\mathcal{L}` the region of :func:`low_frequency_mask`.

    Args:
      x: real maps ``[B, H, W, C]``.
      cutoff: static cycles per sample in ``(0, 0.5]``.

    Returns:
      ``(low, high)``, each ``[B, H, W, C]`` in the dtype of ``x`` (computed in float32,
      or float64 for float64 input), with ``low + high == x`` up to rounding.

    Raises:
      ValueError: for a bad shape or ``cutoff``.

    Example:
      >>> x = jnp.ones((1, 6, 6, 2))
      >>> low, high = split_frequencies(x, cutoff=0.25)
      >>> bool(jnp.allclose(low, 1.0)), bool(jnp.allclose(high, 0.0, atol=1e-6))
      (True, True)
    """
    _check_maps(x)
    cutoff = _check_cutoff(cutoff)
    dtype = jnp.result_type(x)
    real_dtype, complex_dtype = _fft_dtypes(dtype)
    _, h, w, _ = x.shape
    xr = x.astype(real_dtype)
    spectrum = jnp.fft.rfft2(xr, axes=(1, 2))  # [B, H, Kw, C]
    mask = jnp.asarray(_half_mask((h, w), cutoff)[None, :, :, None], complex_dtype)
    low = jnp.fft.irfft2(spectrum * mask, s=(h, w), axes=(1, 2)).astype(real_dtype)
    return low.astype(dtype), (xr - low).astype(dtype)


def split_by_masking_ratio(x: chex.Array, *, mu: float = 0.4) -> tuple[jax.Array, jax.Array]:
    """FFR's frequency masking: :func:`split_frequencies` at ``cutoff = mu / 2``.

    Args:
      x: real maps ``[B, H, W, C]``.
      mu: static masking ratio in ``(0, 1]``, the side of the low-frequency square over
        the side of the spectrum (FFR's best value, 0.4, is the default).

    Returns:
      ``(low, high)``, each ``[B, H, W, C]``.
    """
    return split_frequencies(x, cutoff=cutoff_of_masking_ratio(mu))


def band_energies(x: chex.Array, *, cutoff: float) -> tuple[jax.Array, jax.Array]:
    """Energy of each map below and above ``cutoff``, normalised as in Parseval's theorem.

    .. math::

       E_{low}[b, c] = \\frac{1}{HW} \\sum_{\\nu \\in \\mathcal{L}} |X_{b,c}(\\nu)|^2,
       \\qquad
       E_{high}[b, c] = \\frac{1}{HW} \\sum_{\\nu \\notin \\mathcal{L}} |X_{b,c}(\\nu)|^2,

    so that ``E_low + E_high = sum over (H, W) of x**2``. Both sums run over the full
    ``H x W`` spectrum (computed from ``rfft2`` with the mirror weights of
    :func:`spectral_jax.half_spectrum_weights`); the zero frequency is low.

    Args:
      x: real maps ``[B, H, W, C]``.
      cutoff: static cycles per sample in ``(0, 0.5]``.

    Returns:
      ``(low_energy, high_energy)``, each ``[B, C]`` in float32 (float64 for float64 input).
    """
    _check_maps(x)
    cutoff = _check_cutoff(cutoff)
    real_dtype, _ = _fft_dtypes(jnp.result_type(x))
    _, h, w, _ = x.shape
    spectrum = jnp.fft.rfft2(x.astype(real_dtype), axes=(1, 2))  # [B, H, Kw, C]
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    weights = bands_lib.half_spectrum_weights((h, w)) / (h * w)  # [Kw]
    low_mask = _half_mask((h, w), cutoff)
    low_weights = jnp.asarray(np.where(low_mask, weights, 0.0)[None, :, :, None], real_dtype)
    high_weights = jnp.asarray(np.where(low_mask, 0.0, weights)[None, :, :, None], real_dtype)
    low = jnp.sum(power * low_weights, axis=(1, 2))
    high = jnp.sum(power * high_weights, axis=(1, 2))
    return low, high


def _classifier_weight(weight) -> jax.Array:
    if jnp.ndim(weight) == 4:
        if jnp.shape(weight)[:2] != (1, 1):
            raise ValueError(
                f"weight must be [K, C] or a 1x1 convolution kernel [1, 1, K, C], "
                f"got shape {jnp.shape(weight)}."
            )
        weight = weight[0, 0]
    if jnp.ndim(weight) != 2:
        raise ValueError(
            f"weight must be [K, C] or a 1x1 convolution kernel [1, 1, K, C], "
            f"got shape {jnp.shape(weight)}."
        )
    return jnp.asarray(weight)


def _normalize_cams(scores: jax.Array) -> jax.Array:
    cams = jax.nn.relu(scores)
    peak = jnp.max(cams, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    return jnp.where(peak > 0, cams / jnp.where(peak > 0, peak, 1), 0)


def class_activation_maps(
    features: chex.Array, weight: chex.Array, *, bias: chex.Array | None = None, normalize=True
) -> jax.Array:
    """Class activation maps of a linear (1x1 convolution) classifier on feature maps.

    .. math::

       s_c[b, i, j] = \\sum_k f_k[b, i, j] \\, w_{k c} + \\beta_c, \\qquad
       \\mathrm{CAM}_c = \\frac{\\max(s_c, 0)}{\\max_{i, j} \\max(s_c, 0)}

    (Zhou et al. 2016), with ``CAM_c = 0`` where ``s_c <= 0`` everywhere.

    Args:
      features: ``[B, H, W, K]``.
      weight: classifier ``[K, C]``, or the ``[1, 1, K, C]`` kernel of a 1x1
        ``nn.Conv`` (such as the DeepLab decoder's ``classifier``).
      bias: optional ``[C]``.
      normalize: ReLU and divide by the per-image, per-class maximum; ``False`` returns
        the raw scores ``s``.

    Returns:
      ``[B, H, W, C]``.

    Raises:
      ValueError: for shapes that do not fit.
    """
    _check_maps(features, "features")
    weight = _classifier_weight(weight)
    if weight.shape[0] != features.shape[-1]:
        raise ValueError(
            f"weight [K, C] and features [B, H, W, K] disagree on K: weight shape "
            f"{weight.shape}, features shape {features.shape}."
        )
    scores = jnp.einsum("bhwk,kc->bhwc", features, weight.astype(features.dtype))
    if bias is not None:
        chex.assert_shape(bias, (weight.shape[1],))
        scores = scores + bias.astype(features.dtype)
    return _normalize_cams(scores) if normalize else scores


def frequency_class_activation_maps(
    features: chex.Array,
    weight: chex.Array,
    *,
    mu: float = 0.4,
    bias: chex.Array | None = None,
    normalize: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """CAMs of the low- and high-frequency parts of features (FFR supplementary, Fig. 2).

    The features are split by :func:`split_by_masking_ratio`; each part goes through the
    linear classifier. The bias is a constant map, i.e. a pure zero-frequency term, so it
    goes with the low part; hence the raw scores add up to the full model's:
    ``s_low + s_high = s`` (``normalize=False``).

    Args:
      features: ``[B, H, W, K]``.
      weight: classifier ``[K, C]`` or a 1x1 convolution kernel ``[1, 1, K, C]``.
      mu: static masking ratio in ``(0, 1]`` (module docstring).
      bias: optional ``[C]``.
      normalize: as in :func:`class_activation_maps`.

    Returns:
      ``(cam_low, cam_high)``, each ``[B, H, W, C]``.
    """
    low, high = split_by_masking_ratio(features, mu=mu)
    cam_low = class_activation_maps(low, weight, bias=bias, normalize=normalize)
    cam_high = class_activation_maps(high, weight, normalize=normalize)
    return cam_low, cam_high


def classifier_inputs(
    model: nn.Module,
    variables,
    images: chex.Array,
    *,
    classifier_path: str = "decoder/classifier",
    method=None,
    **apply_kwargs,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The input features and the parameters of a model's classifier convolution.

    Runs ``model.apply(variables, images, method=method, **apply_kwargs)`` under a method
    interceptor and captures the input of the ``nn.Conv`` at ``classifier_path``.
    Jittable (close over ``model``).

    Args:
      model: a Flax module with a convolution classifier.
      variables: its variables.
      images: ``[B, H, W, 3]``.
      classifier_path: ``/``-joined path of the classifier module.
      method: the model method to run (default ``__call__``).
      **apply_kwargs: passed on to ``model.apply``.

    Returns:
      ``(features [B, Fh, Fw, K], params)``: ``params`` holds the ``"kernel"``
      ``[kh, kw, K, C]`` and, with a bias, the ``"bias"`` ``[C]``.

    Raises:
      ValueError: if no ``nn.Conv`` runs at ``classifier_path``.
    """
    found = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name == "__call__"
            and isinstance(module, nn.Conv)
            and "/".join(module.path) == classifier_path
        ):
            found["features"] = args[0]
            found["params"] = module.variables["params"]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(variables, images, method=method, **apply_kwargs)
    if not found:
        raise ValueError(f"classifier_path {classifier_path!r}: no nn.Conv ran at that path.")
    return found["features"], found["params"]


def classifier_frequency_cams(
    model: nn.Module,
    variables,
    images: chex.Array,
    *,
    mu: float = 0.4,
    classifier_path: str = "decoder/classifier",
    normalize: bool = True,
    method=None,
    **apply_kwargs,
) -> tuple[jax.Array, jax.Array]:
    """Low- and high-frequency CAMs of a model's 1x1 convolution classifier, in one pass.

    Runs ``model.apply(variables, images, method=method, **apply_kwargs)`` and takes the
    input features ``[B, Fh, Fw, K]`` and the kernel ``[1, 1, K, C]`` and bias of the
    ``nn.Conv`` at ``classifier_path`` (for :class:`spectral_jax.models.DeepLabV3Plus`,
    the decoder's classifier on the ``F x F`` grid, after ``fuse2``), then applies
    :func:`frequency_class_activation_maps`. Jittable (close over ``model``).

    Args:
      model: a Flax module with a 1x1 convolution classifier.
      variables: its variables.
      images: ``[B, H, W, 3]``.
      mu: static masking ratio in ``(0, 1]``.
      classifier_path: ``/``-joined path of the classifier module.
      normalize: as in :func:`class_activation_maps`; ``False`` gives raw scores, whose
        sum is the classifier's output (the model's ``decoder_logits``).
      method: the model method to run (default ``__call__``).
      **apply_kwargs: passed on to ``model.apply``.

    Returns:
      ``(cam_low, cam_high)``, each ``[B, Fh, Fw, C]``.

    Raises:
      ValueError: if no 1x1 ``nn.Conv`` runs at ``classifier_path``.
    """
    features, params = classifier_inputs(
        model, variables, images, classifier_path=classifier_path, method=method, **apply_kwargs
    )
    return frequency_class_activation_maps(
        features, params["kernel"], mu=mu, bias=params.get("bias"), normalize=normalize
    )
