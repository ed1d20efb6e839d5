"""Tests for spectral_jax.iou: the spectral form of the IoU (Eq. 6-8).

The reference is the spatial IoU in float64 NumPy (tests/helpers/references.py): the soft IoU
``sum B S / (sum B + sum S - sum B S)`` and, for ``binarize=True``, the hard IoU from
pixel sets of the arg-max prediction. The library computes the overlap in the frequency
domain, so agreement checks Parseval's identity as well.

Tolerances: IoU and overlap relative 1e-5 in float32 (observed ~1e-7), 1e-12 in float64.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax as sj
from tests.helpers import compile_counting, references

RTOL = {"float32": 1e-5, "float64": 1e-12}
DTYPES = ["float32", "float64"]

spectral_iou = jax.jit(sj.spectral_iou, static_argnames=("ignore_index", "binarize"))
spectral_iou_terms = jax.jit(sj.spectral_iou_terms, static_argnames=("ignore_index", "binarize"))


@functools.partial(jax.jit, static_argnames="binarize")
def _iou_and_terms(probs, labels, binarize):
    return (
        sj.spectral_iou(probs, labels, binarize=binarize),
        sj.spectral_iou_terms(probs, labels, binarize=binarize),
    )


def iou_and_terms(probs, labels, *, binarize=False):
    """``spectral_iou`` and ``spectral_iou_terms`` as NumPy, from one compilation."""
    iou, terms = _iou_and_terms(probs, labels, binarize)
    assert isinstance(terms, sj.IoUTerms)
    return np.asarray(iou), jax.tree.map(np.asarray, terms)


# (B, H, W, C, ignored fraction)
CASES = [(2, 7, 9, 5, 0.2), (2, 8, 8, 21, 0.1), (3, 16, 12, 2, 0.3), (2, 1, 6, 3, 0.0)]
CASE_IDS = [f"B{b}-{h}x{w}-C{c}-ign{f}" for b, h, w, c, f in CASES]
# Every case in float32, half of them in float64.
CASES_AND_DTYPES = [
    pytest.param(case, dtype, id=f"{case_id}-{dtype}")
    for case, case_id in zip(CASES, CASE_IDS, strict=True)
    for dtype in DTYPES
    if dtype == "float32" or case[1] != 8
]


def make_probs(rng, case, dtype):
    batch, height, width, num_classes, ignore_fraction = case
    logits, labels = references.make_batch(
        rng, batch, height, width, num_classes, ignore_fraction=ignore_fraction
    )
    probs = np.exp(references.log_softmax(logits)).astype(dtype)
    return probs, labels


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize(("case", "dtype"), CASES_AND_DTYPES)
def test_soft_iou_matches_spatial_reference(rng, case, dtype):
    probs, labels = make_probs(rng, case, dtype)
    overlap, prediction_mass, label_mass = references.soft_iou_terms(probs, labels)
    with jax.enable_x64(dtype == "float64"):
        iou, terms = iou_and_terms(probs, labels)
    assert iou.shape == overlap.shape == (case[0], case[3])
    assert iou.dtype == dtype and terms.overlap.dtype == dtype
    rtol = RTOL[dtype]
    np.testing.assert_allclose(terms.overlap, overlap, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(terms.prediction_mass, prediction_mass, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(terms.label_mass, label_mass, rtol=rtol)
    expected = references.iou_from_sums(overlap, prediction_mass, label_mass)
    np.testing.assert_allclose(iou, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize(("case", "dtype"), CASES_AND_DTYPES)
def test_binarized_iou_is_the_hard_iou_of_the_argmax(rng, case, dtype):
    probs, labels = make_probs(rng, case, dtype)
    intersection, union = references.hard_iou_counts(probs, labels)
    with jax.enable_x64(dtype == "float64"):
        iou, terms = iou_and_terms(probs, labels, binarize=True)
    # Masses are pixel counts; the overlap is a count up to FFT rounding.
    np.testing.assert_allclose(terms.overlap, intersection, rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        terms.prediction_mass + terms.label_mass - terms.overlap, union, atol=1e-4
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(union == 0, np.nan, intersection / union)
    np.testing.assert_allclose(iou, expected, rtol=RTOL[dtype], atol=RTOL[dtype])


def test_iou_is_eq_8(rng):
    # IoU = 1 / ((s(0) + b(0)) / O - 1), the paper's form, wherever O > 0.
    probs, labels = make_probs(rng, CASES[0], "float32")
    terms = to_numpy(spectral_iou_terms(probs, labels))
    eq_8 = 1.0 / ((terms.prediction_mass + terms.label_mass) / terms.overlap - 1.0)
    np.testing.assert_allclose(spectral_iou(probs, labels), eq_8, rtol=1e-5)


def test_perfect_and_disjoint_predictions():
    labels = np.array([[[0, 0, 1], [0, 2, 1]]])  # [1, 2, 3], class 3 absent
    perfect = np.eye(4, dtype=np.float32)[labels]  # one-hot of the labels
    iou = np.asarray(spectral_iou(perfect, labels))
    np.testing.assert_allclose(iou[0, :3], 1.0, rtol=1e-6)
    assert np.isnan(iou[0, 3])  # in neither map: union 0
    # Shift every label by one class: no overlap for any class.
    disjoint = np.eye(4, dtype=np.float32)[(labels + 1) % 4]
    iou = np.asarray(spectral_iou(disjoint, labels))
    np.testing.assert_allclose(iou, 0.0, atol=1e-6)
    np.testing.assert_allclose(spectral_iou(disjoint, labels, binarize=True), 0.0, atol=1e-6)


def test_ignored_pixels_are_removed_from_both_maps(rng):
    probs, labels = make_probs(rng, CASES[0], "float32")
    ignored = labels == 255
    assert ignored.any()
    changed = np.where(ignored[..., None], np.float32(1.0), probs)  # mass only where ignored
    for binarize in [False, True]:
        np.testing.assert_array_equal(
            spectral_iou(changed, labels, binarize=binarize),
            spectral_iou(probs, labels, binarize=binarize),
        )
    # A class seen only at ignored pixels is absent: NaN.
    all_ignored = np.full_like(labels, 255)
    assert np.all(np.isnan(spectral_iou(probs, all_ignored)))
    terms = spectral_iou_terms(probs, all_ignored)
    for term in terms:
        np.testing.assert_array_equal(term, 0.0)


@pytest.mark.parametrize("ignore_index", [-1, 5, 1000])
def test_custom_ignore_index(rng, ignore_index):
    logits, labels = references.make_batch(
        rng, 2, 6, 7, 5, ignore_fraction=0.3, ignore_index=ignore_index
    )
    probs = np.exp(references.log_softmax(logits)).astype(np.float32)
    expected = references.iou_from_sums(
        *references.soft_iou_terms(probs, labels, ignore_index=ignore_index)
    )
    iou = spectral_iou(probs, labels, ignore_index=ignore_index)
    np.testing.assert_allclose(iou, expected, rtol=1e-5)


def test_terms_sum_over_images_to_the_data_set_iou(rng):
    # mIoU convention: sum intersections and unions over images, then divide.
    probs, labels = make_probs(rng, CASES[0], "float32")
    terms = spectral_iou_terms(probs, labels)
    summed = sj.IoUTerms(*(term.sum(axis=0) for term in terms))  # [C]
    sums = [term.sum(axis=0) for term in references.soft_iou_terms(probs, labels)]
    np.testing.assert_allclose(
        sj.iou_from_terms(summed), references.iou_from_sums(*sums), rtol=1e-5
    )
    # Any leading shape [..., C].
    stacked = sj.IoUTerms(*(jnp.stack([term, term]) for term in terms))  # [2, B, C]
    np.testing.assert_allclose(sj.iou_from_terms(stacked)[1], spectral_iou(probs, labels))


def test_iou_from_terms_nan_only_where_union_is_zero():
    terms = sj.IoUTerms(
        overlap=jnp.array([0.0, 0.0, 2.0, 1.0]),
        prediction_mass=jnp.array([0.0, 3.0, 2.0, 4.0]),
        label_mass=jnp.array([0.0, 0.0, 2.0, 2.0]),
    )
    iou = np.asarray(sj.iou_from_terms(terms))
    assert np.isnan(iou[0])
    np.testing.assert_allclose(iou[1:], [0.0, 1.0, 0.2])


def test_bfloat16_probs_are_computed_in_float32(rng):
    probs, labels = make_probs(rng, CASES[0], "float32")
    low = jnp.asarray(probs, jnp.bfloat16)
    iou = spectral_iou(low, labels)
    assert iou.dtype == jnp.float32
    exact = np.asarray(low.astype(jnp.float32), np.float64)
    expected = references.iou_from_sums(*references.soft_iou_terms(exact, labels))
    np.testing.assert_allclose(iou, expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Input errors.

FUNCTIONS = {
    "spectral_iou": sj.spectral_iou,
    "spectral_iou_terms": sj.spectral_iou_terms,
    "spectral_iou_binarized": functools.partial(sj.spectral_iou, binarize=True),
}


@pytest.fixture
def small_batch(rng):
    return make_probs(rng, (3, 5, 6, 4, 0.2), "float32")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_shape_and_dtype_errors(small_batch, name):
    fn = FUNCTIONS[name]
    probs, labels = small_batch
    with pytest.raises(ValueError, match="probs"):
        fn(probs[0], labels)
    with pytest.raises(ValueError, match="labels"):
        fn(probs, labels[0])
    with pytest.raises(ValueError, match="disagree"):
        fn(probs, labels[:, 1:])
    with pytest.raises(TypeError, match="probs"):
        fn(probs.astype(np.int32), labels)
    with pytest.raises(TypeError, match="labels"):
        fn(probs, labels.astype(np.float32))
    with pytest.raises(ValueError, match="ignore_index"):
        fn(probs, np.minimum(labels, 3), ignore_index=2)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("bad_label", [4, -1])
def test_out_of_range_label_raises_eagerly(small_batch, name, bad_label):
    probs, labels = small_batch
    labels = labels.copy()
    labels[2, 0, 0] = bad_label
    with pytest.raises(ValueError, match="labels must lie in"):
        FUNCTIONS[name](probs, labels)


@pytest.mark.parametrize("binarize", [False, True])
def test_out_of_range_label_under_jit_poisons_only_its_image(small_batch, binarize):
    probs, labels = small_batch
    bad = labels.copy()
    bad[2, 0, 0] = 9
    iou = np.asarray(spectral_iou(probs, bad, binarize=binarize))
    assert np.all(np.isnan(iou[2]))
    expected = np.asarray(spectral_iou(probs, labels, binarize=binarize))
    np.testing.assert_array_equal(iou[:2], expected[:2])
    for term in to_numpy(spectral_iou_terms(probs, bad, binarize=binarize)):
        assert np.all(np.isnan(term[2])) and not np.any(np.isnan(term[:2]))


SOFT_FUNCTIONS = {name: fn for name, fn in FUNCTIONS.items() if "binarized" not in name}


@pytest.mark.parametrize("name", SOFT_FUNCTIONS)
@pytest.mark.parametrize("offset", [-0.5, 1.5])
def test_values_outside_the_unit_interval_raise_for_the_soft_iou(small_batch, name, offset):
    # Logits passed for probabilities gave a negative "IoU" before.
    probs, labels = small_batch
    labels = labels.copy()
    labels[1, 0, 0] = 2
    bad = probs.copy()
    bad[1, 0, 0, 2] = offset
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\]"):
        SOFT_FUNCTIONS[name](bad, labels)
    logits = np.log(probs + 1e-3) - 3.0  # all negative: raw scores, not probabilities
    with pytest.raises(ValueError, match="probs must be probabilities"):
        SOFT_FUNCTIONS[name](logits, labels)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_nan_probability_raises_eagerly(small_batch, name):
    probs, labels = small_batch
    labels = labels.copy()
    labels[1, 0, 0] = 0
    bad = probs.copy()
    bad[1, 0, 0, 3] = np.nan
    with pytest.raises(ValueError, match="probs holds 1 NaN"):
        FUNCTIONS[name](bad, labels)


def test_values_at_ignored_pixels_are_not_checked(small_batch):
    probs, labels = small_batch
    labels = labels.copy()
    labels[0, 0, 0] = 255
    bad = probs.copy()
    bad[0, 0, 0] = [np.nan, -3.0, 7.0, 0.5]
    np.testing.assert_array_equal(spectral_iou(bad, labels), spectral_iou(probs, labels))


@pytest.mark.parametrize("binarize", [False, True])
def test_invalid_probabilities_under_jit_poison_only_their_image(small_batch, binarize):
    probs, labels = small_batch
    labels = labels.copy()
    labels[2, 1, 1] = 1
    bad = probs.copy()
    bad[2, 1, 1, 0] = np.nan  # argmax would have taken the NaN as a class
    jitted = jax.jit(functools.partial(sj.spectral_iou, binarize=binarize))
    iou = np.asarray(jitted(bad, labels))
    assert np.all(np.isnan(iou[2]))
    np.testing.assert_array_equal(iou[:2], np.asarray(jitted(probs, labels))[:2])
    if not binarize:
        bad = probs.copy()
        bad[2, 1, 1, 0] = -0.25
        assert np.all(np.isnan(np.asarray(jitted(bad, labels))[2]))


def test_hard_iou_accepts_logits(small_batch):
    # The hard IoU reads only the arg-max: logits and their softmax give the same IoU.
    probs, labels = small_batch
    logits = np.log(probs + 1e-3) * 4.0 - 2.0
    softmax = np.asarray(jax.nn.softmax(logits, axis=-1))
    np.testing.assert_array_equal(
        sj.spectral_iou(logits, labels, binarize=True),
        sj.spectral_iou(softmax, labels, binarize=True),
    )


@pytest.mark.parametrize("name", FUNCTIONS)
def test_repeated_eager_calls_compile_once_per_shape(rng, name):
    first = make_probs(rng, (3, 10, 11, 4, 0.2), "float32")
    same_shapes = (first[0][::-1].copy(), first[1])
    new_shapes = make_probs(rng, (2, 10, 11, 4, 0.2), "float32")
    compile_counting.assert_compiles_once_per_shape(FUNCTIONS[name], first, same_shapes, new_shapes)
