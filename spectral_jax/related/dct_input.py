"""JPEG-style frequency-domain input (Xu et al., "Learning in the Frequency Domain", 2020).

The pre-processing of the paper's Sec. 3.1 (Fig. 2), as pure JAX functions on
channels-last batches (jit them where they are called; every shape-setting argument is
a keyword-only Python value):

1. **Colour**: RGB to YCbCr with the JPEG (JFIF) full-range ITU-R BT.601 matrix
   :data:`RGB_TO_YCBCR` plus the offsets ``(0, 128, 128)``::

       Y  =  0.299    R + 0.587    G + 0.114    B
       Cb = -0.168736 R - 0.331264 G + 0.5      B + 128
       Cr =  0.5      R - 0.418688 G - 0.081312 B + 128

   Every plane is then level-shifted by ``-128`` as JPEG does before its DCT (this only
   moves the DC channels, which the per-channel normalisation centres anyway).
2. **Block DCT**: each plane is cut into ``8 x 8`` blocks and every block gets the
   orthonormal 2-D DCT-II (``scipy.fft.dctn(block, norm="ortho")``).
3. **DCT reshape**: the coefficient ``(u, v)`` (``u`` vertical, ``v`` horizontal
   frequency) of every block goes to channel ``u * 8 + v`` (row-major, the natural order
   in which libjpeg stores a block and the authors' channel indices count), so a plane of
   ``h' x w'`` samples becomes ``[h' / 8, w' / 8, 64]``; the three planes are concatenated
   as ``Y | Cb | Cr``, channels ``0..63``, ``64..127``, ``128..191`` (192 in all).

Layout (``layout=`` in :func:`images_to_dct`). The authors encode up-scaled copies of the
image, with OpenCV's bilinear ``cv2.resize`` (``INTER_LINEAR``: half-pixel centres,
edge samples replicated), JPEG 4:2:0 chroma (a 2 x 2 mean per chroma sample), and take
luma and chroma from different copies so that they share one grid. Their two pipelines
differ:

* ``"segmentation"`` (:data:`DEFAULT_LAYOUT`; ``ToDCTUpscaledStatic`` of their
  segmentation/detection code, ``segmentation/mmdet/datasets/pipelines/transformsDCT.py``,
  and the only one behind their segmentation results): luma from the image up-scaled
  2x (``2H x 2W``), chroma from the image up-scaled 4x (4:2:0 chroma ``2H x 2W``), giving
  ``[H / 4, W / 4, 192]`` (H, W multiples of 4), one position per 4 x 4 pixels: the
  stride of a ResNet after its stem. Here: bilinear 2x up-scaling of the image
  (:func:`bilinear_upscale_2x`), YCbCr, block DCT of all three planes. That is exactly
  their chroma too, because bilinear 4x up-scaling followed by the 2 x 2 mean is bilinear
  2x up-scaling: along an axis the 4x samples around input sample ``i`` lie at offsets
  ``-3/8, -1/8, 1/8, 3/8``; a mean of two linear interpolations on the same interval is
  the interpolation at their mean offset, ``-1/4`` and ``+1/4``, the two 2x samples
  (``3/4 x[i] + 1/4 x[i -+ 1]``); at the edges all of them clamp to the edge sample. So
  ``chroma`` makes no difference in this layout; every chroma sample is at full
  resolution of the 2x image (4:4:4 there).
* ``"classification"`` (``Upscale`` + ``TransformUpscaledDCT`` of their ImageNet
  pipeline, and the paper's Sec. 3.1 description): luma from the image itself, chroma
  from the 2x up-scaled copy, whose 4:2:0 chroma is back at ``H x W``: ``[H / 8, W / 8,
  192]`` (H, W multiples of 8). ``chroma="upscaled"`` (default) gives the same chroma:
  bilinear 2x up-scaling of the RGB image, YCbCr, 2 x 2 mean (libjpeg's h2v2
  down-sampling without its rounding bias), block DCT. Because every step is linear,
  this equals full-resolution chroma smoothed separably by ``[1/8, 3/4, 1/8]`` (edges
  replicated): bilinear 2x gives ``3/4 x[i] + 1/4 x[i -+ 1]`` at the two half-pixels
  and their mean is ``3/4 x[i] + 1/8 (x[i - 1] + x[i + 1])``; :func:`upscaled_chroma`
  computes this closed form (the tests compare it with the literal up-scale and
  down-sample). The luma is that of the image itself, untouched. The alternatives:

  * ``chroma="full"`` (4:4:4): the DCT of the unsmoothed full-resolution chroma, i.e.
    the upscaled variant without its mild chroma low-pass; the inverse transform returns
    the image exactly.
  * plain 4:2:0 (:func:`images_to_dct_420`): luma ``[H / 8, W / 8, 64]`` and chroma
    ``[H / 16, W / 16, 128]`` apart (H, W multiples of 16); a model must then merge two
    grids, e.g. by resizing the chroma coefficient maps (the authors' unused
    ``UpScaleDCT``), which interpolates coefficients of different blocks.

:data:`LAYOUT_STRIDES` gives the image pixels per DCT position of each layout (4 and 8).

Deviations from the authors' pipeline: no JPEG quantisation and no rounding. Their
coefficients come from libjpeg-turbo encoding at a finite quality, read back with
``jpeg2dct``: the quantised levels ``round(X[u, v] / Q[u, v])`` of the JPEG standard's
8 x 8 forward DCT, which is this orthonormal DCT-II. ``1 / Q[u, v]`` is a per-channel
factor that the per-channel normalisation (:class:`ChannelStatistics`) removes, so after
normalisation the inputs differ only by the quantisation noise. (At their quality 100,
``Q = 1``: the levels are the coefficients rounded.) OpenCV also rounds the up-scaled
image to uint8 before encoding; we keep it in float.

Static selection (Sec. 3.3, Table 1): :func:`selection_pattern` gives the indices into
the 192 channels of the square (``"S"``) and triangle (``"T"``) patterns DCT-6, 24, 32,
48 and 64 (and 192, all channels); :func:`select_channels` applies them.

Input size: H and W must be multiples of 4 (segmentation layout) or 8 (classification;
16 for :func:`images_to_dct_420`). A 513 x 513 crop is neither; the DCT models use
512 x 512 crops (see :mod:`spectral_jax.models.dct_deeplab`).

Example:
  >>> images = jnp.full((2, 16, 24, 3), 130, jnp.uint8)  # a flat grey
  >>> coefficients = jax.jit(images_to_dct)(images)  # the segmentation layout
  >>> coefficients.shape  # [B, H / 4, W / 4, 192]
  (2, 4, 6, 192)
  >>> float(coefficients[0, 0, 0, 0])  # luma DC of an 8 x 8 block: 8 * (130 - 128)
  16.0
  >>> images_to_dct(images, layout="classification").shape  # [B, H / 8, W / 8, 192]
  (2, 2, 3, 192)
  >>> select_channels(coefficients, selection_pattern(24, shape="square")).shape
  (2, 4, 6, 24)
"""

from __future__ import annotations

from typing import Literal, cast

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax._checks import compute_dtype

BLOCK_SIZE = 8
NUM_FREQUENCIES = BLOCK_SIZE * BLOCK_SIZE  # 64 channels per colour component
COMPONENTS: tuple[str, ...] = ("Y", "Cb", "Cr")
NUM_DCT_CHANNELS = len(COMPONENTS) * NUM_FREQUENCIES  # 192

# JPEG / JFIF full-range ITU-R BT.601: rows Y, Cb, Cr; columns R, G, B.
RGB_TO_YCBCR = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
YCBCR_OFFSET = np.array([0.0, 128.0, 128.0])
# JPEG subtracts 128 from every sample before the DCT.
LEVEL_SHIFT = 128.0

DCTLayout = Literal["segmentation", "classification"]
DCT_LAYOUTS: tuple[str, ...] = ("segmentation", "classification")
#: The layout of the authors' segmentation results, the DCT models' default.
DEFAULT_LAYOUT: DCTLayout = "segmentation"
#: Image pixels per DCT position (per side) of each layout: blocks of 8 on the 2x
#: up-scaled image, or on the image itself.
LAYOUT_STRIDES: dict[str, int] = {"segmentation": BLOCK_SIZE // 2, "classification": BLOCK_SIZE}

ChromaMode = Literal["upscaled", "full"]
CHROMA_MODES: tuple[str, ...] = ("upscaled", "full")
SelectionShape = Literal["square", "triangle"]
SELECTION_SHAPES: tuple[str, ...] = ("square", "triangle")


# ---------------------------------------------------------------------------------------
# Colour and block transform.


def _check_images(images, *, multiple: int, name: str = "images") -> jax.Array:
    if jnp.ndim(images) != 4 or jnp.shape(images)[-1] != 3:
        raise ValueError(f"{name} must have shape [B, H, W, 3], got {jnp.shape(images)}.")
    height, width = jnp.shape(images)[1:3]
    if height % multiple or width % multiple:
        raise ValueError(
            f"{name} height and width must be multiples of {multiple}, got {height} x {width}."
        )
    dtype = jnp.result_type(images)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{name} must be uint8 or float in [0, 255], got dtype {dtype}.")
    return jnp.asarray(images, compute_dtype(dtype))


def rgb_to_ycbcr(images: chex.Array) -> jax.Array:
    """JPEG full-range YCbCr of RGB images (module docstring, step 1).

    Args:
      images: ``[..., 3]`` RGB in ``[0, 255]`` (uint8 or float).

    Returns:
      ``[..., 3]`` ``(Y, Cb, Cr)`` in ``[0, 255]``, float32 (float64 for float64 input).
    """
    x = jnp.asarray(images, compute_dtype(jnp.result_type(images)))
    matrix = jnp.asarray(RGB_TO_YCBCR, x.dtype)
    return x @ matrix.T + jnp.asarray(YCBCR_OFFSET, x.dtype)


def ycbcr_to_rgb(ycbcr: chex.Array) -> jax.Array:
    """Inverse of :func:`rgb_to_ycbcr`: ``[..., 3]`` YCbCr to ``[..., 3]`` RGB (unclipped)."""
    x = jnp.asarray(ycbcr, compute_dtype(jnp.result_type(ycbcr)))
    inverse = jnp.asarray(np.linalg.inv(RGB_TO_YCBCR), x.dtype)
    return (x - jnp.asarray(YCBCR_OFFSET, x.dtype)) @ inverse.T


def dct_matrix(size: int = BLOCK_SIZE) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D [size, size]`` (float64): ``dct(x, norm="ortho") = D x``.

    .. math::
        D_{k n} = \\alpha_k \\cos\\left(\\frac{\\pi (2 n + 1) k}{2 N}\\right), \\quad
        \\alpha_0 = \\sqrt{1 / N}, \\; \\alpha_{k > 0} = \\sqrt{2 / N}.
    """
    n = np.arange(size)
    matrix = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size))
    matrix *= np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def block_dct(planes: chex.Array) -> jax.Array:
    """8 x 8 block DCT-II (orthonormal) with same-frequency coefficients grouped as channels.

    .. math::
        X_{b, i, j, 8 u + v} = \\sum_{m, n = 0}^{7} D_{u m} D_{v n}\\, x_{b, 8 i + m, 8 j + n}

    Args:
      planes: ``[B, H, W]`` with H and W multiples of 8.

    Returns:
      ``[B, H / 8, W / 8, 64]``; channel ``8 u + v`` holds frequency ``(u, v)`` of every
      block (``u`` vertical).

    Raises:
      ValueError: for another rank or H, W not multiples of 8.
    """
    if jnp.ndim(planes) != 3:
        raise ValueError(f"planes must have shape [B, H, W], got {jnp.shape(planes)}.")
    batch, height, width = jnp.shape(planes)
    if height % BLOCK_SIZE or width % BLOCK_SIZE:
        raise ValueError(f"planes height and width must be multiples of 8, got {height} x {width}.")
    x = jnp.asarray(planes, compute_dtype(jnp.result_type(planes)))
    d = jnp.asarray(dct_matrix(), x.dtype)
    blocks = x.reshape(batch, height // 8, 8, width // 8, 8)  # [B, i, m, j, n]
    coefficients = jnp.einsum(
        "um,vn,bimjn->bijuv", d, d, blocks, precision=jax.lax.Precision.HIGHEST
    )
    return coefficients.reshape(batch, height // 8, width // 8, NUM_FREQUENCIES)


def block_idct(coefficients: chex.Array) -> jax.Array:
    """Inverse of :func:`block_dct`: ``[B, h, w, 64] -> [B, 8 h, 8 w]``."""
    if jnp.ndim(coefficients) != 4 or jnp.shape(coefficients)[-1] != NUM_FREQUENCIES:
        raise ValueError(
            f"coefficients must have shape [B, h, w, 64], got {jnp.shape(coefficients)}."
        )
    batch, h, w, _ = jnp.shape(coefficients)
    x = jnp.asarray(coefficients, compute_dtype(jnp.result_type(coefficients)))
    d = jnp.asarray(dct_matrix(), x.dtype)
    x = x.reshape(batch, h, w, 8, 8)  # [B, i, j, u, v]
    blocks = jnp.einsum("um,vn,bijuv->bimjn", d, d, x, precision=jax.lax.Precision.HIGHEST)
    return blocks.reshape(batch, 8 * h, 8 * w)


def _mean_pool_2x2(x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


def _neighbours(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """``(x[i - 1], x[i + 1])`` along ``axis``, edge samples replicated."""
    n = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, n - 1, n, axis=axis)
    padded = jnp.concatenate([first, x, last], axis=axis)  # [..., n + 2, ...]
    return (
        jax.lax.slice_in_dim(padded, 0, n, axis=axis),
        jax.lax.slice_in_dim(padded, 2, n + 2, axis=axis),
    )


def _smooth_half_pixel(x: jax.Array, axis: int) -> jax.Array:
    """``3/4 x[i] + 1/8 (x[i - 1] + x[i + 1])`` along ``axis``, edge samples replicated."""
    left, right = _neighbours(x, axis)
    return 0.75 * x + 0.125 * (left + right)


def upscaled_chroma(images: chex.Array) -> jax.Array:
    """Cb and Cr of the 2x up-scaled image after 4:2:0 down-sampling (the authors' chroma).

    Bilinear 2x up-scaling (half-pixel centres, edges replicated), YCbCr, 2 x 2 mean: the
    chroma ends at the input's resolution. Computed in closed form, as the full-resolution
    chroma smoothed separably by ``[1/8, 3/4, 1/8]`` with replicated edges (module
    docstring); the tests check it against the literal up-scale and down-sample, which
    is several times slower (``jax.image.resize`` of a 4x larger image).

    Args:
      images: ``[B, H, W, 3]`` RGB in ``[0, 255]``.

    Returns:
      ``[B, H, W, 2]`` ``(Cb, Cr)`` in ``[0, 255]``.
    """
    x = _check_images(images, multiple=1)
    chroma = rgb_to_ycbcr(x)[..., 1:]  # [B, H, W, 2]
    return _smooth_half_pixel(_smooth_half_pixel(chroma, 1), 2)


def _planes_to_channels(planes: jax.Array) -> jax.Array:
    """``[B, H, W, P]`` level-shifted planes -> ``[B, H / 8, W / 8, 64 P]`` (plane-major)."""
    coefficients = [block_dct(planes[..., p] - LEVEL_SHIFT) for p in range(planes.shape[-1])]
    return jnp.concatenate(coefficients, axis=-1)


def check_layout(layout) -> DCTLayout:
    """``layout`` if it is one of :data:`DCT_LAYOUTS`.

    Raises:
      ValueError: naming ``layout`` otherwise.
    """
    if not isinstance(layout, str) or layout not in DCT_LAYOUTS:
        raise ValueError(f"layout must be one of {DCT_LAYOUTS}, got {layout!r}.")
    return cast(DCTLayout, layout)  # one of DCT_LAYOUTS


def _upscale_axis_2x(x: jax.Array, axis: int) -> jax.Array:
    """Bilinear 2x along ``axis``: samples ``2i, 2i + 1`` are ``3/4 x[i] + 1/4 x[i -+ 1]``."""
    left, right = _neighbours(x, axis)
    pairs = jnp.stack([0.75 * x + 0.25 * left, 0.75 * x + 0.25 * right], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] *= 2
    return pairs.reshape(shape)  # [..., n, 2, ...] -> [..., 2 n, ...]: 2i, 2i + 1 interleaved


def bilinear_upscale_2x(images: chex.Array) -> jax.Array:
    """Bilinear 2x up-scaling with half-pixel centres, as OpenCV's ``INTER_LINEAR``.

    Output sample ``j`` of an axis sits at input coordinate ``(j + 1/2) / 2 - 1/2``, i.e.
    at ``i -+ 1/4`` for ``j = 2i, 2i + 1``; coordinates outside ``[0, n - 1]`` clamp to
    the edge sample (OpenCV's replicated border; ``jax.image.resize(..., "linear")``
    agrees)::

        out[2i]     = 3/4 x[i] + 1/4 x[max(i - 1, 0)]
        out[2i + 1] = 3/4 x[i] + 1/4 x[min(i + 1, n - 1)]

    applied to H and then W. OpenCV rounds uint8 results; this does not.

    Args:
      images: ``[B, H, W, C]``.

    Returns:
      ``[B, 2 H, 2 W, C]``, float32 (float64 for float64 input).
    """
    chex.assert_rank(images, 4)
    x = jnp.asarray(images, compute_dtype(jnp.result_type(images)))
    return _upscale_axis_2x(_upscale_axis_2x(x, 1), 2)


def images_to_dct(
    images: chex.Array, *, layout: DCTLayout = DEFAULT_LAYOUT, chroma: ChromaMode = "upscaled"
) -> jax.Array:
    """JPEG-style DCT input ``[B, H / s, W / s, 192]`` of RGB images (paper Sec. 3.1).

    ``s = LAYOUT_STRIDES[layout]``: 4 for ``"segmentation"`` (the block DCT of the
    bilinear 2x up-scaled image, luma and chroma), 8 for ``"classification"`` (luma of
    the image, chroma per ``chroma``); see the module docstring.

    Args:
      images: ``[B, H, W, 3]`` RGB, uint8 or float in ``[0, 255]``; H, W multiples of
        ``s``.
      layout: ``"segmentation"`` (default) or ``"classification"``.
      chroma: ``"upscaled"`` (the authors' variant) or ``"full"`` (4:4:4); the two are
        the same in the segmentation layout (module docstring).

    Returns:
      ``[B, H / s, W / s, 192]``: channels ``Y 0..63 | Cb 64..127 | Cr 128..191``,
      channel ``64 c + 8 u + v`` the DCT coefficient ``(u, v)`` of component ``c``;
      float32 (float64 for float64 input).

    Raises:
      ValueError: for a bad shape, H or W not a multiple of ``s``, or an unknown
        ``layout`` or ``chroma``.
    """
    check_layout(layout)
    if chroma not in CHROMA_MODES:
        raise ValueError(f"chroma must be one of {CHROMA_MODES}, got {chroma!r}.")
    x = _check_images(images, multiple=LAYOUT_STRIDES[layout])
    if layout == "segmentation":
        # The interpolation weights sum to one, so it commutes with the affine YCbCr:
        # the planes are up-scaled instead of the RGB image (the same cost).
        return _planes_to_channels(bilinear_upscale_2x(rgb_to_ycbcr(x)))
    ycbcr = rgb_to_ycbcr(x)
    if chroma == "upscaled":
        ycbcr = jnp.concatenate([ycbcr[..., :1], upscaled_chroma(x)], axis=-1)
    return _planes_to_channels(ycbcr)


def images_to_dct_420(images: chex.Array) -> tuple[jax.Array, jax.Array]:
    """Plain JPEG 4:2:0 layout: luma and 2 x 2-mean chroma coefficients on their own grids.

    Args:
      images: ``[B, H, W, 3]`` RGB in ``[0, 255]``; H, W multiples of 16.

    Returns:
      ``(luma [B, H / 8, W / 8, 64], chroma [B, H / 16, W / 16, 128])``, chroma
      channels ``Cb 0..63 | Cr 64..127``.

    Raises:
      ValueError: for a bad shape or H, W not multiples of 16.
    """
    x = _check_images(images, multiple=2 * BLOCK_SIZE)
    ycbcr = rgb_to_ycbcr(x)
    return _planes_to_channels(ycbcr[..., :1]), _planes_to_channels(_mean_pool_2x2(ycbcr[..., 1:]))


def dct_to_ycbcr(coefficients: chex.Array) -> jax.Array:
    """Inverse of the transform: ``[B, h, w, 192] -> [B, 8 h, 8 w, 3]`` YCbCr in ``[0, 255]``.

    For classification-layout coefficients with ``chroma="full"``, ``ycbcr_to_rgb`` of
    the result is the image; with ``"upscaled"`` the chroma is the smoothed chroma of
    :func:`upscaled_chroma`. For the segmentation layout it is the YCbCr of the 2x
    up-scaled image (:func:`bilinear_upscale_2x`), ``[B, 2 H, 2 W, 3]``.
    """
    if jnp.ndim(coefficients) != 4 or jnp.shape(coefficients)[-1] != NUM_DCT_CHANNELS:
        raise ValueError(
            f"coefficients must have shape [B, h, w, 192], got {jnp.shape(coefficients)}."
        )
    planes = [
        block_idct(coefficients[..., c * NUM_FREQUENCIES : (c + 1) * NUM_FREQUENCIES])
        for c in range(len(COMPONENTS))
    ]
    return jnp.stack(planes, axis=-1) + LEVEL_SHIFT


# ---------------------------------------------------------------------------------------
# Static channel selection (Sec. 3.3, Table 1).

# Coefficients kept per component (Y, Cb, Cr) by DCT-K, from the paper: DCT-24 (16, 4, 4),
# "top (32, 8, 8) channels for DCT-48S/T and top (44, 10, 10) channels for DCT-64S/T";
# DCT-6 (4, 1, 1) and DCT-32 (22, 5, 5) as in the authors' code (DCT-6 is in their
# classification code's subset_channel_index: Y {0, 1, 8, 9}, Cb {0}, Cr {0}).
PATTERN_COUNTS: dict[int, tuple[int, int, int]] = {
    6: (4, 1, 1),
    24: (16, 4, 4),
    32: (22, 5, 5),
    48: (32, 8, 8),
    64: (44, 10, 10),
    192: (64, 64, 64),
}

# Square patterns as "staircases": entry r is how many of the lowest horizontal
# frequencies v = 0, 1, ... row u = r keeps. The authors' index lists (their
# dct_channel_index.py) have exactly these shapes: DCT-24S a 4 x 4 luma and 2 x 2 chroma
# square, the larger ones "close to upper-left squares (some lower right channels may be
# missing)": DCT-48S a 6 x 6 luma square without its lower-right 2 x 2 and a 3 x 3 chroma
# square without (2, 2).
_SQUARE_ROWS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    6: ((2, 2), (1,)),
    24: ((4, 4, 4, 4), (2, 2)),
    32: ((5, 5, 5, 4, 3), (3, 2)),
    48: ((6, 6, 6, 6, 4, 4), (3, 3, 2)),
    64: ((7, 7, 6, 6, 6, 6, 6), (3, 3, 2, 2)),
    192: ((8,) * 8, (8,) * 8),
}


def zigzag_order() -> np.ndarray:
    """The JPEG zig-zag scan: ``[64]`` row-major indices ``8 u + v`` in scan order.

    Anti-diagonals ``u + v = s`` in increasing ``s``, walked towards larger ``u`` for odd
    ``s`` and towards smaller ``u`` for even ``s``: ``0, 1, 8, 16, 9, 2, 3, 10, ...``.
    """
    order: list[int] = []
    for s in range(2 * BLOCK_SIZE - 1):
        rows = range(max(0, s - 7), min(s, 7) + 1)
        order.extend(8 * u + (s - u) for u in (rows if s % 2 else reversed(rows)))
    return np.asarray(order)


def selection_pattern(num_channels: int, *, shape: SelectionShape = "square") -> np.ndarray:
    """Indices into the 192 DCT channels of the static pattern DCT-``num_channels`` S/T.

    Each component ``c`` (Y, Cb, Cr) keeps ``PATTERN_COUNTS[num_channels][c]`` of its 64
    frequencies:

    * ``"square"`` (S): the authors' near-square upper-left patterns (``_SQUARE_ROWS``),
      e.g. DCT-24S = Y ``{0-3, 8-11, 16-19, 24-27}``, Cb and Cr ``{0, 1, 8, 9}``;
      DCT-6S = Y ``{0, 1, 8, 9}``, Cb and Cr ``{0}`` (the DC only).
    * ``"triangle"`` (T): the first ``n`` frequencies of the JPEG zig-zag scan
      (:func:`zigzag_order`), the upper-left triangle ``u + v <= s`` completed along the
      next anti-diagonal in scan order; e.g. DCT-24T = Y zig-zag 0-15 (``u + v <= 4`` and
      ``(0, 5)``), Cb and Cr ``{0, 1, 8, 16}``. The authors' code does not list T
      patterns; the paper defines them only as "close to upper-left triangles" with the
      same counts.

    Args:
      num_channels: 6, 24, 32, 48, 64 or 192.
      shape: ``"square"`` or ``"triangle"``.

    Returns:
      ``[num_channels]`` sorted int32 indices ``64 c + 8 u + v``.

    Raises:
      ValueError: for another count or shape.
    """
    if num_channels not in PATTERN_COUNTS:
        raise ValueError(
            f"num_channels must be one of {tuple(PATTERN_COUNTS)}, got {num_channels!r}."
        )
    if shape not in SELECTION_SHAPES:
        raise ValueError(f"shape must be one of {SELECTION_SHAPES}, got {shape!r}.")
    indices = []
    for component, count in enumerate(PATTERN_COUNTS[num_channels]):
        if shape == "triangle":
            frequencies = np.sort(zigzag_order()[:count])
        else:
            rows = _SQUARE_ROWS[num_channels][min(component, 1)]
            frequencies = np.asarray([8 * u + v for u, n in enumerate(rows) for v in range(n)])
        indices.append(component * NUM_FREQUENCIES + frequencies)
    return np.concatenate(indices).astype(np.int32)


def selection_mask(channels: chex.Array) -> np.ndarray:
    """``[3, 8, 8]`` booleans (component, u, v): which frequencies ``channels`` keeps."""
    channels = np.asarray(channels).reshape(-1)
    if channels.size and (channels.min() < 0 or channels.max() >= NUM_DCT_CHANNELS):
        raise ValueError(f"channels must lie in [0, 192), got {channels.min()}..{channels.max()}.")
    mask = np.zeros(NUM_DCT_CHANNELS, bool)
    mask[channels] = True
    return mask.reshape(len(COMPONENTS), BLOCK_SIZE, BLOCK_SIZE)


def select_channels(coefficients: chex.Array, channels: chex.Array) -> jax.Array:
    """``coefficients [B, h, w, 192]`` -> ``[B, h, w, K]`` at the ``K`` given channel indices."""
    if jnp.ndim(coefficients) != 4 or jnp.shape(coefficients)[-1] != NUM_DCT_CHANNELS:
        raise ValueError(
            f"coefficients must have shape [B, h, w, 192], got {jnp.shape(coefficients)}."
        )
    return jnp.take(coefficients, jnp.asarray(channels), axis=-1)


# ---------------------------------------------------------------------------------------
# Per-channel normalisation statistics.


@flax.struct.dataclass
class ChannelStatistics:
    """Streaming per-channel mean and variance of DCT inputs over a data set (a pytree).

    The paper normalises "every frequency channel ... by the mean and variance calculated
    from the training dataset" (Sec. 3.1, 4.1). Batches are merged with Chan et al.'s
    pairwise update of ``(count, mean, M2)``, which, unlike running sums of squares, keeps
    float32 accurate for the large DC means::

        n = n_a + n_b,  delta = mean_b - mean_a,
        mean = mean_a + delta n_b / n,  M2 = M2_a + M2_b + delta^2 n_a n_b / n.

    Attributes:
      count: ``[]`` number of values seen per channel (``B h w`` summed over batches).
      mean: ``[K]`` running mean.
      sum_squared_deviations: ``[K]`` ``M2``, the sum of squared deviations from the mean.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> images = rng.integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
      >>> coefficients = jax.jit(images_to_dct)(images)  # [B, h, w, 192]
      >>> stats = ChannelStatistics.create(192)
      >>> update = jax.jit(ChannelStatistics.update)
      >>> for batch in (coefficients[:2], coefficients[2:]):  # a data set in two batches
      ...     stats = update(stats, batch)
      >>> stats.count  # 4 images of 4 x 4 positions (segmentation layout)
      Array(64., dtype=float32)
      >>> x = normalize_channels(coefficients, stats.mean, stats.std())
      >>> bool(jnp.allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5))
      True
      >>> bool(jnp.allclose(x.std(axis=(0, 1, 2)), 1.0, atol=1e-5))
      True
    """

    count: jax.Array
    mean: jax.Array
    sum_squared_deviations: jax.Array

    @classmethod
    def create(cls, num_channels: int = NUM_DCT_CHANNELS, *, dtype=jnp.float32):
        """Empty statistics for ``num_channels`` channels (float64 needs x64)."""
        if num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {num_channels}.")
        zeros = jnp.zeros((num_channels,), dtype)
        return cls(count=jnp.zeros((), dtype), mean=zeros, sum_squared_deviations=zeros)

    def merge(self, other: ChannelStatistics) -> ChannelStatistics:
        """Statistics of the union of the two data sets (Chan's update)."""
        count = self.count + other.count
        safe = jnp.maximum(count, 1)
        delta = other.mean - self.mean
        return ChannelStatistics(
            count=count,
            mean=self.mean + delta * (other.count / safe),
            sum_squared_deviations=self.sum_squared_deviations
            + other.sum_squared_deviations
            + delta**2 * (self.count * other.count / safe),
        )

    def update(self, coefficients: chex.Array) -> ChannelStatistics:
        """Adds a batch ``coefficients [B, h, w, K]``.

        Raises:
          ValueError: if ``K`` differs from the statistics' channel count.
        """
        if jnp.ndim(coefficients) != 4 or jnp.shape(coefficients)[-1] != self.mean.shape[0]:
            raise ValueError(
                f"coefficients must have shape [B, h, w, {self.mean.shape[0]}], "
                f"got {jnp.shape(coefficients)}."
            )
        x = jnp.asarray(coefficients, self.mean.dtype)
        count = x.shape[0] * x.shape[1] * x.shape[2]
        mean = jnp.mean(x, axis=(0, 1, 2)) if count else jnp.zeros_like(self.mean)
        batch = ChannelStatistics(
            count=jnp.asarray(count, self.count.dtype),
            mean=mean,
            sum_squared_deviations=jnp.sum((x - mean) ** 2, axis=(0, 1, 2)),
        )
        return self.merge(batch)

    def variance(self) -> jax.Array:
        """``[K]`` population variance (``M2 / count``)."""
        return self.sum_squared_deviations / jnp.maximum(self.count, 1)

    def std(self) -> jax.Array:
        """``[K]`` population standard deviation."""
        return jnp.sqrt(self.variance())


def normalize_channels(
    coefficients: chex.Array, mean: chex.Array, std: chex.Array, *, epsilon: float = 1e-6
) -> jax.Array:
    """``(coefficients - mean) / max(std, epsilon)`` per channel, ``[B, h, w, K]``.

    Args:
      coefficients: ``[B, h, w, K]``.
      mean: ``[K]``.
      std: ``[K]``; channels of zero spread are divided by ``epsilon``, not by zero.
      epsilon: floor of the standard deviation.
    """
    chex.assert_rank(coefficients, 4)
    chex.assert_shape([mean, std], (jnp.shape(coefficients)[-1],))
    return (coefficients - mean) / jnp.maximum(std, epsilon)
