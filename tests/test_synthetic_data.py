"""The embedded procedural data set: determinism, the TFDS build, and the label spectra."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import scipy.ndimage
import tensorflow_datasets as tfds

from spectral_jax.data import synthetic
from spectral_jax.statistics import SpectralStatistics

PRESET_NAMES = ["pascal_like", "cityscapes_like", "deepglobe_like"]


def _tiny(name: str, **changes) -> synthetic.SyntheticScenesConfig:
    base = synthetic.preset(name)
    fields = dict(
        name=f"{name}_tiny", scene=base.scene, image_size=33, num_train=5, num_validation=3
    )
    fields.update(changes)
    return synthetic.SyntheticScenesConfig(**fields)


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("size", [33, 64])
def test_examples_are_deterministic_valid_and_distinct(name, size):
    config = _tiny(name, image_size=size)
    first = synthetic.generate_example(config, "train", 2)
    again = synthetic.generate_example(config, "train", 2)
    other = synthetic.generate_example(config, "train", 3)
    validation = synthetic.generate_example(config, "validation", 2)
    for key in ("image", "label"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["label"], other["label"])
    assert not np.array_equal(first["image"], validation["image"])
    assert first["image"].shape == (size, size, 3) and first["image"].dtype == np.uint8
    assert first["label"].shape == (size, size) and first["label"].dtype == np.uint8
    label = first["label"]
    assert np.all((label < config.num_classes) | (label == 255))


def test_another_seed_gives_other_scenes():
    a = synthetic.generate_example(_tiny("pascal_like", seed=0), "train", 0)
    b = synthetic.generate_example(_tiny("pascal_like", seed=1), "train", 0)
    assert not np.array_equal(a["label"], b["label"])


def test_presets_have_the_papers_class_counts_and_ignore_kinds():
    assert [synthetic.preset(n).num_classes for n in PRESET_NAMES] == [21, 19, 7]
    counts = {}
    for name in PRESET_NAMES:
        config = _tiny(name, image_size=129, num_train=8)
        labels = np.stack(
            [synthetic.generate_example(config, "train", i)["label"] for i in range(8)]
        )
        counts[name] = (np.mean(labels == 255), len(np.unique(labels[labels != 255])))
    # VOC-style borders and Cityscapes' void ego vehicle: some ignore; DeepGlobe: none.
    assert 0.005 < counts["pascal_like"][0] < 0.2
    assert 0.005 < counts["cityscapes_like"][0] < 0.2
    assert counts["deepglobe_like"][0] == 0
    # Street scenes hold many classes at once.
    assert counts["cityscapes_like"][1] >= 12


def test_pascal_ignore_border_is_a_contour_of_the_given_width():
    config = _tiny("pascal_like", image_size=129, ignore_border=1)
    wide = _tiny("pascal_like", image_size=129, ignore_border=3)
    none = _tiny("pascal_like", image_size=129, ignore_border=0)
    thin = synthetic.generate_example(config, "train", 0)["label"]
    thick = synthetic.generate_example(wide, "train", 0)["label"]
    plain = synthetic.generate_example(none, "train", 0)["label"]
    assert not np.any(plain == 255)
    # The 1-pixel contour: exactly the pixels whose class differs below or to the right.
    contour = np.zeros(plain.shape, bool)
    contour[:-1] |= plain[:-1] != plain[1:]
    contour[:, :-1] |= plain[:, :-1] != plain[:, 1:]
    np.testing.assert_array_equal(thin == 255, contour)
    # Width 3: the contour dilated by 2 pixels (Chebyshev), computed with scipy.
    dilated = scipy.ndimage.binary_dilation(contour, np.ones((5, 5), bool))
    np.testing.assert_array_equal(thick == 255, dilated)
    np.testing.assert_array_equal(thin[~contour], plain[~contour])


def test_classes_are_separable_by_colour():
    """A nearest-class-mean rule on 5 x 5-averaged colours labels most pixels right."""
    for name in PRESET_NAMES:
        config = synthetic.preset(name)
        examples = [synthetic.generate_example(config, "train", i) for i in range(12)]
        colours, labels = [], []
        for example in examples:
            smooth = scipy.ndimage.uniform_filter(
                example["image"].astype(np.float64), size=(5, 5, 1)
            )
            colours.append(smooth.reshape(-1, 3))
            labels.append(example["label"].ravel())
        colours, labels = np.concatenate(colours), np.concatenate(labels)
        valid = labels != 255
        colours, labels = colours[valid], labels[valid]
        train = np.arange(len(labels)) < len(labels) // 2
        classes = np.unique(labels[train])
        means = np.stack([colours[train & (labels == c)].mean(0) for c in classes])
        distance = ((colours[~train, None, :] - means[None]) ** 2).sum(-1)
        accuracy = np.mean(classes[distance.argmin(-1)] == labels[~train])
        assert accuracy > 0.7, (name, accuracy)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_tfds_build_and_data_source_round_trip(tmp_path, name):
    config = _tiny(name)
    builder = synthetic.SyntheticScenes(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare(file_format="array_record")
    sources = builder.as_data_source()
    assert len(sources["train"]) == 5 and len(sources["validation"]) == 3
    for split, size in (("train", 5), ("validation", 3)):
        for index in range(size):
            got = sources[split][index]
            expected = synthetic.generate_example(config, split, index)
            assert got["image"].dtype == np.uint8 and got["label"].dtype == np.uint8
            np.testing.assert_array_equal(got["image"], expected["image"])  # PNG is lossless
            np.testing.assert_array_equal(got["label"], expected["label"])
    # Registered under its TFDS name, with the presets as configs.
    assert tfds.builder_cls("synthetic_scenes") is synthetic.SyntheticScenes
    assert [c.name for c in synthetic.SyntheticScenes.BUILDER_CONFIGS] == PRESET_NAMES


def test_info_without_module_docstring(monkeypatch, tmp_path):
    # `python -OO` strips docstrings; the description is the docstring's first line.
    config = _tiny(PRESET_NAMES[0])
    described = synthetic.SyntheticScenes(config=config, data_dir=str(tmp_path / "a")).info
    assert described.description == synthetic.__doc__.splitlines()[0]
    monkeypatch.setattr(synthetic, "__doc__", None)
    builder = synthetic.SyntheticScenes(config=config, data_dir=str(tmp_path / "b"))
    assert builder.info.description == ""


def test_bad_configs_and_indices_raise():
    with pytest.raises(ValueError, match="scene"):
        synthetic.generate_example(dataclasses.replace(_tiny("pascal_like"), scene="x"), "train", 0)
    with pytest.raises(ValueError, match="index"):
        synthetic.generate_example(_tiny("pascal_like"), "train", 5)
    with pytest.raises(ValueError, match="split"):
        synthetic.generate_example(_tiny("pascal_like"), "test", 0)
    with pytest.raises(ValueError, match="name"):
        synthetic.preset("voc")


@pytest.mark.parametrize("sigma", [0.0, 1.5])
@pytest.mark.parametrize("smoothing", [0.1, 1.0])
def test_blurred_label_logits_against_a_direct_convolution(rng, sigma, smoothing):
    labels = rng.integers(0, 3, (2, 9, 8))
    labels[0, 0, :3] = 255
    logits = synthetic.blurred_label_logits(labels, num_classes=3, sigma=sigma, smoothing=smoothing)
    probabilities = np.exp(logits)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-12)
    # Direct normalised convolution with a reflected, truncated (4 sigma) Gaussian.
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2)) if sigma > 0 else np.ones(1)
    kernel /= kernel.sum()
    padded = np.pad(labels, ((0, 0), (radius, radius), (radius, radius)), mode="symmetric")
    expected = np.zeros(labels.shape + (3,))
    for b in range(2):
        for i in range(9):
            for j in range(8):
                window = padded[b, i : i + 2 * radius + 1, j : j + 2 * radius + 1]
                weights = np.outer(kernel, kernel)
                votes = np.array([(weights * (window == c)).sum() for c in range(3)])
                expected[b, i, j] = votes / votes.sum() if votes.sum() > 0 else 1 / 3
    expected = (1 - smoothing) * expected + smoothing / 3
    np.testing.assert_allclose(probabilities, expected, rtol=1e-10, atol=1e-12)


def _preset_relative_discrepancy(
    config: synthetic.SyntheticScenesConfig | str,
    *,
    split: str = "validation",
    num_examples: int | None = None,
    sigma: float = 1.0,
    smoothing: float = 0.1,
    batch_size: int = 10,
) -> np.ndarray:
    """Data-set ``R(nu_max)`` of :func:`synthetic.blurred_label_logits` over a preset's scenes.

    Generates the examples directly (no build) and accumulates
    :class:`spectral_jax.SpectralStatistics` in float64 (Chebyshev bands).

    Args:
      config: a :class:`synthetic.SyntheticScenesConfig` or a preset name.
      split: split to measure.
      num_examples: first examples of the split to use (default: all).
      sigma, smoothing: the prediction, as in :func:`blurred_label_logits`.
      batch_size: images per statistics update.

    Returns:
      ``[R]`` float64 ``R(nu_max)`` for ``nu_max = 0 .. R - 1`` (``R = image_size // 2 + 1``).
    """
    if isinstance(config, str):
        config = synthetic.preset(config)
    total = config.num_train if split == "train" else config.num_validation
    count = total if num_examples is None else min(int(num_examples), total)
    size = config.image_size
    with jax.enable_x64(True):
        stats = SpectralStatistics.create(
            (size, size), config.num_classes, dtype=np.float64, ignore_index=synthetic.IGNORE_INDEX
        )
        update = jax.jit(SpectralStatistics.update)  # one compilation per batch shape
        for start in range(0, count, batch_size):
            labels = np.stack(
                [
                    synthetic.generate_example(config, split, i)["label"]
                    for i in range(start, min(start + batch_size, count))
                ]
            ).astype(np.int32)
            logits = synthetic.blurred_label_logits(
                labels, num_classes=config.num_classes, sigma=sigma, smoothing=smoothing
            )
            stats = update(stats, logits, labels)
        return np.asarray(stats.relative_discrepancy_curve())


def test_label_spectra_order_cityscapes_pascal_deepglobe():
    """R(nu_max) of the blurred ground truth: street > objects > land cover (Table 1's order)."""
    curves = {
        name: _preset_relative_discrepancy(name, num_examples=30, batch_size=15)
        for name in PRESET_NAMES
    }
    for band_limit in (4, 8):
        cityscapes, pascal, deepglobe = (
            curves[n][band_limit] for n in ("cityscapes_like", "pascal_like", "deepglobe_like")
        )
        assert cityscapes > 1.2 * pascal and pascal > 1.2 * deepglobe, (band_limit, curves)
    for curve in curves.values():
        assert curve[-1] == 0 and curve[0] > curve[8] > curve[32]
