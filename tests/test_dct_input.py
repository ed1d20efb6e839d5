"""Tests for spectral_jax.related.dct_input: the JPEG-style block DCT against scipy per block
(float64), Parseval and inverse round trips, the up-scaled chroma against its closed
form, the segmentation layout against a NumPy re-enactment of the authors' pipeline
(OpenCV-style bilinear resizes, 4:2:0 chroma), the static selection patterns against the
authors' index lists and the streaming channel statistics.

Tolerances: float64 1e-9 relative to the coefficient scale; float32 (uint8 input,
coefficients up to ~1e3) 2e-3 absolute.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from spectral_jax.related import dct_input

# The authors' square patterns, row-major u * 8 + v, per component (Y, Cb, Cr): DCT-6 from
# their classification code (classification/main/__init__.py, subset_channel_index), the
# others from their segmentation code (mmdet/datasets/pipelines/dct_channel_index.py).
AUTHORS_DCT24_Y = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
AUTHORS_DCT24_C = [0, 1, 8, 9]
AUTHORS_SQUARES = {
    6: ([0, 1, 8, 9], [0]),
    24: (AUTHORS_DCT24_Y, AUTHORS_DCT24_C),
    32: ([0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 16, 17, 18, 19, 20, 24, 25, 26, 27, 32, 33, 34],
         [0, 1, 2, 8, 9]),
    48: ([0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18, 19, 20, 21, 24, 25, 26, 27, 28,
          29, 32, 33, 34, 35, 40, 41, 42, 43],
         [0, 1, 2, 8, 9, 10, 16, 17]),
    64: ([0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 24, 25, 26,
          27, 28, 29, 32, 33, 34, 35, 36, 37, 40, 41, 42, 43, 44, 45, 48, 49, 50, 51, 52, 53],
         [0, 1, 2, 8, 9, 10, 16, 17, 24, 25]),
}  # fmt: skip


def _numpy_ycbcr(images):
    images = np.asarray(images, np.float64)
    y = 0.299 * images[..., 0] + 0.587 * images[..., 1] + 0.114 * images[..., 2]
    cb = 128 - 0.168736 * images[..., 0] - 0.331264 * images[..., 1] + 0.5 * images[..., 2]
    cr = 128 + 0.5 * images[..., 0] - 0.418688 * images[..., 1] - 0.081312 * images[..., 2]
    return np.stack([y, cb, cr], axis=-1)


def _numpy_block_dct(plane):
    """``[H, W] -> [H / 8, W / 8, 64]`` by scipy's dctn on every block."""
    h, w = plane.shape[0] // 8, plane.shape[1] // 8
    out = np.empty((h, w, 64))
    for i in range(h):
        for j in range(w):
            block = plane[8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
            out[i, j] = scipy.fft.dctn(block, norm="ortho").reshape(64)
    return out


def _numpy_dct_input(ycbcr):
    """``[B, H, W, 3]`` YCbCr -> ``[B, H / 8, W / 8, 192]``."""
    return np.stack(
        [
            np.concatenate([_numpy_block_dct(image[..., c] - 128.0) for c in range(3)], axis=-1)
            for image in ycbcr
        ]
    )


def _opencv_linear_matrix(n, scale):
    """``[scale n, n]``: ``cv2.resize(..., INTER_LINEAR)`` by an integer ``scale`` along an axis.

    OpenCV's mapping: output sample ``j`` reads input coordinate ``(j + 1/2) / scale - 1/2``
    (half-pixel centres), clamped to ``[0, n - 1]`` (replicated border), interpolated
    linearly between its two neighbours.
    """
    assert n >= 2
    coordinate = np.clip((np.arange(scale * n) + 0.5) / scale - 0.5, 0, n - 1)
    left = np.minimum(np.floor(coordinate).astype(int), n - 2)  # [scale n]
    fraction = coordinate - left
    matrix = np.zeros((scale * n, n))
    matrix[np.arange(scale * n), left] = 1 - fraction
    matrix[np.arange(scale * n), left + 1] = fraction
    return matrix


def _opencv_resize(images, scale):
    """``[B, H, W, 3] -> [B, scale H, scale W, 3]``, float64, without OpenCV's rounding."""
    _, h, w, _ = images.shape
    rows, columns = _opencv_linear_matrix(h, scale), _opencv_linear_matrix(w, scale)
    return np.einsum("ih,bhwc,jw->bijc", rows, np.asarray(images, np.float64), columns)


def _authors_segmentation_input(images):
    """Their ``ToDCTUpscaledStatic``: Y from the 2x image, 4:2:0 Cb, Cr from the 4x image."""
    luma = _numpy_ycbcr(_opencv_resize(images, 2))[..., 0]  # [B, 2H, 2W]
    chroma = _numpy_ycbcr(_opencv_resize(images, 4))[..., 1:]  # [B, 4H, 4W, 2]
    b, h4, w4, _ = chroma.shape
    chroma = chroma.reshape(b, h4 // 2, 2, w4 // 2, 2, 2).mean(axis=(2, 4))  # h2v2
    return _numpy_dct_input(np.concatenate([luma[..., None], chroma], axis=-1))


def _smooth_1_6_1(x, axis):
    """``[1/8, 3/4, 1/8]`` along ``axis`` with replicated edges."""
    n = x.shape[axis]
    padded = np.concatenate([np.take(x, [0], axis), x, np.take(x, [n - 1], axis)], axis)
    left, centre, right = (np.take(padded, np.arange(k, k + n), axis) for k in range(3))
    return 0.75 * centre + 0.125 * (left + right)


@pytest.mark.parametrize("batch, height, width", [(1, 8, 8), (2, 16, 24), (1, 40, 16)])
def test_block_dct_matches_scipy_per_block(x64, rng, batch, height, width):
    planes = rng.normal(scale=50.0, size=(batch, height, width))
    got = np.asarray(dct_input.block_dct(planes))
    assert got.dtype == np.float64
    want = np.stack([_numpy_block_dct(p) for p in planes])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("height, width", [(8, 16), (24, 8)])
def test_block_dct_parseval_and_inverse(x64, rng, height, width):
    planes = rng.uniform(-128, 128, size=(2, height, width))
    coefficients = np.asarray(dct_input.block_dct(planes))
    blocks = planes.reshape(2, height // 8, 8, width // 8, 8).transpose(0, 1, 3, 2, 4)
    # Orthonormal DCT: the energy of every block is preserved.
    np.testing.assert_allclose(
        np.sum(coefficients**2, axis=-1), np.sum(blocks**2, axis=(-2, -1)), rtol=1e-12
    )
    np.testing.assert_allclose(dct_input.block_idct(coefficients), planes, atol=1e-10)


def test_dct_matrix_is_orthonormal_dct_ii():
    d = dct_input.dct_matrix()
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-14)
    np.testing.assert_allclose(d, scipy.fft.dct(np.eye(8), norm="ortho", axis=0), atol=1e-14)


def test_rgb_to_ycbcr_matrix_and_inverse(x64, rng):
    images = rng.uniform(0, 255, size=(2, 5, 3, 3))
    np.testing.assert_allclose(dct_input.rgb_to_ycbcr(images), _numpy_ycbcr(images), atol=1e-10)
    np.testing.assert_allclose(
        dct_input.ycbcr_to_rgb(dct_input.rgb_to_ycbcr(images)), images, atol=1e-10
    )
    # Grey has no chroma; white is (255, 128, 128).
    np.testing.assert_allclose(
        dct_input.rgb_to_ycbcr(np.full((1, 3), 255.0)), [[255.0, 128.0, 128.0]], atol=1e-10
    )


@pytest.mark.parametrize("batch, height, width", [(1, 8, 16), (2, 24, 16)])
def test_full_chroma_matches_numpy_and_round_trips(x64, rng, batch, height, width):
    images = rng.uniform(0, 255, size=(batch, height, width, 3))
    got = np.asarray(dct_input.images_to_dct(images, layout="classification", chroma="full"))
    assert got.shape == (batch, height // 8, width // 8, 192)
    want = _numpy_dct_input(_numpy_ycbcr(images))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())
    # Channel 64 c + 8 u + v is frequency (u, v) of component c: the DC of Y of the first
    # block is 8 x its mean, level-shifted.
    y = _numpy_ycbcr(images)[0, :8, :8, 0]
    np.testing.assert_allclose(got[0, 0, 0, 0], 8 * (y.mean() - 128), rtol=1e-12)
    rgb = dct_input.ycbcr_to_rgb(dct_input.dct_to_ycbcr(got))
    np.testing.assert_allclose(rgb, images, atol=1e-9)


@pytest.mark.parametrize("batch, height, width", [(1, 8, 8), (2, 16, 24)])
def test_upscaled_chroma_equals_smoothed_chroma(x64, rng, batch, height, width):
    images = rng.uniform(0, 255, size=(batch, height, width, 3))
    ycbcr = _numpy_ycbcr(images)
    smoothed = _smooth_1_6_1(_smooth_1_6_1(ycbcr[..., 1:], 1), 2)
    np.testing.assert_allclose(dct_input.upscaled_chroma(images), smoothed, atol=1e-10)
    # The literal pipeline: bilinear 2x up-scaling (half-pixel centres), YCbCr, 2 x 2 mean.
    upscaled = jax.image.resize(images, (batch, 2 * height, 2 * width, 3), method="linear")
    literal = np.asarray(dct_input.rgb_to_ycbcr(upscaled))[..., 1:]
    literal = literal.reshape(batch, height, 2, width, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(dct_input.upscaled_chroma(images), literal, atol=1e-10)
    got = np.asarray(dct_input.images_to_dct(images, layout="classification"))  # "upscaled"
    want = _numpy_dct_input(np.concatenate([ycbcr[..., :1], smoothed], axis=-1))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())
    # Luma is untouched: the Y channels equal those of the 4:4:4 transform.
    full = np.asarray(dct_input.images_to_dct(images, layout="classification", chroma="full"))
    np.testing.assert_array_equal(got[..., :64], full[..., :64])


def test_uint8_input_in_float32(rng):
    images = rng.integers(0, 256, size=(2, 16, 8, 3), dtype=np.uint8)
    got = dct_input.images_to_dct(images, layout="classification")
    assert got.dtype == jnp.float32
    ycbcr = _numpy_ycbcr(images)
    smoothed = _smooth_1_6_1(_smooth_1_6_1(ycbcr[..., 1:], 1), 2)
    want = _numpy_dct_input(np.concatenate([ycbcr[..., :1], smoothed], axis=-1))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
    got = dct_input.images_to_dct(images)  # segmentation layout
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, _authors_segmentation_input(images), rtol=0, atol=2e-3)


def test_opencv_reference_matrix():
    """The reference's OpenCV resize on known values (cv2 is not a dependency)."""
    # 2x: 3/4 and 1/4 of the neighbours, edges replicated.
    np.testing.assert_allclose(_opencv_linear_matrix(3, 2) @ [0.0, 4.0, 8.0], [0, 1, 3, 5, 7, 8])
    # 4x: offsets -3/8, -1/8, 1/8, 3/8 around every input sample.
    np.testing.assert_allclose(_opencv_linear_matrix(2, 4) @ [0.0, 8.0], [0, 0, 1, 3, 5, 7, 8, 8])


@pytest.mark.parametrize("chroma", ["upscaled", "full"])
@pytest.mark.parametrize("batch, height, width", [(1, 4, 4), (2, 12, 8), (1, 8, 20)])
def test_segmentation_layout_matches_the_authors_pipeline(x64, rng, chroma, batch, height, width):
    """Y of the 2x image, 4:2:0 chroma of the 4x image: ``[B, H / 4, W / 4, 192]``."""
    images = rng.uniform(0, 255, size=(batch, height, width, 3))
    got = np.asarray(dct_input.images_to_dct(images, layout="segmentation", chroma=chroma))
    assert got.shape == (batch, height // 4, width // 4, 192)
    want = _authors_segmentation_input(images)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())
    np.testing.assert_array_equal(got, dct_input.images_to_dct(images))  # the default
    # The inverse gives the YCbCr of the 2x image.
    np.testing.assert_allclose(
        dct_input.dct_to_ycbcr(got), _numpy_ycbcr(_opencv_resize(images, 2)), atol=1e-9
    )
    np.testing.assert_allclose(
        dct_input.bilinear_upscale_2x(images), _opencv_resize(images, 2), atol=1e-10
    )


def test_images_to_dct_420(x64, rng):
    images = rng.uniform(0, 255, size=(2, 32, 16, 3))
    luma, chroma = dct_input.images_to_dct_420(images)
    assert luma.shape == (2, 4, 2, 64) and chroma.shape == (2, 2, 1, 128)
    ycbcr = _numpy_ycbcr(images)
    pooled = ycbcr.reshape(2, 16, 2, 8, 2, 3).mean(axis=(2, 4))
    want_chroma = np.stack(
        [
            np.concatenate([_numpy_block_dct(p[..., c] - 128.0) for c in (1, 2)], axis=-1)
            for p in pooled
        ]
    )
    np.testing.assert_allclose(chroma, want_chroma, atol=1e-9)
    full = dct_input.images_to_dct(images, layout="classification", chroma="full")
    np.testing.assert_allclose(luma, full[..., :64], atol=1e-12)


def test_transform_is_jittable_without_retracing(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def transform(images):
        return dct_input.images_to_dct(images)

    first = transform(jnp.asarray(rng.uniform(0, 255, (1, 16, 16, 3)), jnp.float32))
    second_images = rng.uniform(0, 255, (1, 16, 16, 3))
    second = transform(jnp.asarray(second_images, jnp.float32))
    assert first.shape == second.shape == (1, 4, 4, 192)
    np.testing.assert_allclose(
        second, dct_input.images_to_dct(jnp.asarray(second_images, jnp.float32)), atol=1e-3
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dct_input.images_to_dct(np.zeros((1, 10, 8, 3))), "multiples of 4"),
        (
            lambda: dct_input.images_to_dct(np.zeros((1, 12, 8, 3)), layout="classification"),
            "multiples of 8",
        ),
        (lambda: dct_input.images_to_dct(np.zeros((1, 8, 8, 3)), layout="jpeg"), "layout"),
        (lambda: dct_input.images_to_dct(np.zeros((1, 8, 8))), r"\[B, H, W, 3\]"),
        (lambda: dct_input.images_to_dct(np.zeros((1, 8, 8, 4))), r"\[B, H, W, 3\]"),
        (lambda: dct_input.images_to_dct(np.zeros((1, 8, 8, 3)), chroma="420"), "chroma"),
        (lambda: dct_input.images_to_dct_420(np.zeros((1, 8, 16, 3))), "multiples of 16"),
        (lambda: dct_input.block_dct(np.zeros((1, 8, 4))), "multiples of 8"),
        (lambda: dct_input.selection_pattern(12), "num_channels"),
        (lambda: dct_input.selection_pattern(24, shape="circle"), "shape"),
        (lambda: dct_input.select_channels(np.zeros((1, 2, 2, 64)), [0]), "192"),
    ],
)
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------
# Selection patterns.


@pytest.mark.parametrize("num_channels", sorted(AUTHORS_SQUARES))
def test_squares_are_the_authors_patterns(num_channels):
    luma, chroma = AUTHORS_SQUARES[num_channels]
    want = luma + [64 + i for i in chroma] + [128 + i for i in chroma]
    assert len(want) == num_channels
    np.testing.assert_array_equal(dct_input.selection_pattern(num_channels, shape="square"), want)


@pytest.mark.parametrize("num_channels", [6, 24, 32, 48, 64, 192])
@pytest.mark.parametrize("shape", ["square", "triangle"])
def test_patterns_are_upper_left_sets_with_the_papers_counts(num_channels, shape):
    channels = dct_input.selection_pattern(num_channels, shape=shape)
    assert channels.dtype == np.int32 and np.all(np.diff(channels) > 0)
    mask = dct_input.selection_mask(channels)  # [3, 8, 8]
    counts = tuple(int(m.sum()) for m in mask)
    assert counts == dct_input.PATTERN_COUNTS[num_channels] and sum(counts) == num_channels
    # Down-closed: keeping (u, v) keeps every lower frequency (u - 1, v) and (u, v - 1).
    assert np.all(mask[:, 1:, :] <= mask[:, :-1, :])
    assert np.all(mask[:, :, 1:] <= mask[:, :, :-1])
    # Cb and Cr always keep the same frequencies.
    np.testing.assert_array_equal(mask[1], mask[2])


@pytest.mark.parametrize("shape", ["square", "triangle"])
def test_patterns_are_nested(shape):
    masks = [
        dct_input.selection_mask(dct_input.selection_pattern(k, shape=shape))
        for k in (6, 24, 32, 48, 64, 192)
    ]
    for small, large in zip(masks[:-1], masks[1:], strict=True):
        assert np.all(small <= large)


def test_triangle_is_the_zigzag_prefix():
    zigzag = dct_input.zigzag_order()
    np.testing.assert_array_equal(zigzag[:10], [0, 1, 8, 16, 9, 2, 3, 10, 17, 24])
    np.testing.assert_array_equal(np.sort(zigzag), np.arange(64))
    u, v = np.divmod(zigzag, 8)
    assert np.all(np.diff(u + v) >= 0)  # anti-diagonals in order
    channels = dct_input.selection_pattern(48, shape="triangle")
    np.testing.assert_array_equal(channels[:32], np.sort(zigzag[:32]))
    np.testing.assert_array_equal(channels[32:40], 64 + np.sort(zigzag[:8]))


def test_select_channels(rng):
    coefficients = rng.normal(size=(2, 3, 2, 192)).astype(np.float32)
    channels = dct_input.selection_pattern(48, shape="triangle")
    np.testing.assert_array_equal(
        dct_input.select_channels(coefficients, channels), coefficients[..., channels]
    )


# ---------------------------------------------------------------------------------------
# Channel statistics.


def test_streaming_statistics_match_numpy(rng):
    # DCT-like channels: a large DC offset and a small spread, in float32.
    offsets = np.concatenate([[-800.0], np.zeros(4), [300.0]])
    scales = np.array([200.0, 1.0, 0.1, 5.0, 0.01, 50.0])
    batches = [
        (offsets + scales * rng.normal(size=(b, h, w, 6))).astype(np.float32)
        for b, h, w in [(2, 3, 4), (1, 5, 2), (3, 2, 2), (1, 1, 1)]
    ]
    update = jax.jit(dct_input.ChannelStatistics.update)
    stats = dct_input.ChannelStatistics.create(6)
    for batch in batches:
        stats = update(stats, batch)
    values = np.concatenate([b.reshape(-1, 6) for b in batches]).astype(np.float64)
    assert float(stats.count) == values.shape[0]
    # Mean errors relative to each channel's spread (the offsets are far larger).
    np.testing.assert_array_less(np.abs(stats.mean - values.mean(0)), 1e-5 * scales)
    np.testing.assert_allclose(stats.std(), values.std(0), rtol=1e-4)
    # Merging two halves gives the same statistics as streaming.
    left = dct_input.ChannelStatistics.create(6).update(batches[0]).update(batches[1])
    right = dct_input.ChannelStatistics.create(6).update(batches[2]).update(batches[3])
    merged = left.merge(right)
    np.testing.assert_array_less(np.abs(merged.mean - stats.mean), 1e-5 * scales)
    np.testing.assert_allclose(merged.std(), stats.std(), rtol=1e-5)
    normalized = dct_input.normalize_channels(values[None, :, None], stats.mean, stats.std())
    np.testing.assert_allclose(np.mean(normalized, (0, 1, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.std(normalized, (0, 1, 2)), 1.0, rtol=1e-3)


def test_statistics_check_channels():
    with pytest.raises(ValueError, match=r"\[B, h, w, 192\]"):
        dct_input.ChannelStatistics.create().update(np.zeros((1, 2, 2, 24)))


def test_normalize_channels_floors_the_spread_of_constant_channels():
    # A constant channel has std 0: without the floor it would become 0 / 0 = NaN.
    coefficients = np.stack(
        [np.full((2, 3, 4), 5.0), np.arange(24.0).reshape(2, 3, 4), np.full((2, 3, 4), -1.0)],
        axis=-1,
    ).astype(np.float32)
    mean = np.array([5.0, 11.5, -1.0 - 2e-7], np.float32)
    std = np.array([0.0, 6.9, 1e-9], np.float32)
    got = np.asarray(dct_input.normalize_channels(coefficients, mean, std, epsilon=1e-6))
    expected = (coefficients.astype(np.float64) - mean) / np.maximum(std, 1e-6)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[..., 0], 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
