"""The embedded data set: procedurally generated segmentation scenes (TFDS ``synthetic_scenes``).

No download: every example is drawn from a NumPy ``Generator`` seeded with
``(config.seed, split, index)``, so it is the same on every machine and the builder only
renders and encodes (a few seconds for the default sizes). Each class has its own colour,
stripe texture (frequency, orientation, amplitude) and noise level, so a tiny model can
learn the classes; the *label maps* mimic the label spectra of the paper's three data sets:

* ``pascal_like`` (21 classes, VOC's names): one to three large, smooth, star-shaped objects
  (some with up to three narrow limbs) on a background, with a VOC-style ignore border:
  a contour ``ignore_border`` pixels wide along every boundary, label 255.
* ``cityscapes_like`` (19 classes, Cityscapes' train ids): a street scene, sky and skyline
  above a horizon, road and sidewalks below, and many small and thin structures: poles
  one or two pixels wide with traffic lights and signs, fences of thin slats, people,
  riders, vehicles and bicycles; the ego vehicle at the bottom is void (label 255).
* ``deepglobe_like`` (7 classes, DeepGlobe's land-cover names): one to three large land-cover
  regions, the arg-max of very smooth periodic random fields, sometimes an ``unknown`` patch, with ragged boundaries (a small
  amount of fine-scale noise added to the fields); no ignore pixels.

Label spectra, measured (:class:`spectral_jax.SpectralStatistics` over the 50 validation
scenes of 129 x 129 per preset, float64, as ``tests/test_synthetic_data.py`` does): the prediction is the ground truth blurred by a Gaussian
of 1 pixel and mixed with 10 % of the uniform distribution
(:func:`blurred_label_logits`), and ``R(nu_max)`` (Eq. 14, Chebyshev bands) of its CE is

================  ======  ======  ======  ======  ======
preset            R(2)    R(4)    R(8)    R(16)   R(32)
================  ======  ======  ======  ======  ======
cityscapes_like   6.242   2.904   1.119   0.213   0.014
pascal_like       4.537   2.018   0.502   0.056   0.028
deepglobe_like    2.570   1.134   0.349   0.028   0.008
================  ======  ======  ======  ======  ======

As in the paper's Table 1, up to ``nu_max = 16`` the street scenes keep the most of their
CE above the band limit (thin poles and small objects), the object scenes less, and the
land-cover scenes (few large regions) the least (Table 1, DeepLab, ``R(16)``: 0.668,
0.040 and 0.028 for Cityscapes, PASCAL and DeepGlobe). Near the Nyquist band the order
of the two first changes: at ``nu_max = 32`` the VOC-style one-pixel ignore contours of
``pascal_like`` carry more of the CE than the street scenes' thin structures (which the
1-pixel blur already smears). The absolute values depend on the chosen prediction (its
CE sits in a band about a pixel wide along the boundaries) and are not comparable with
Table 1's trained networks; the order is the point.
``tests/test_synthetic_data.py`` asserts the order at ``nu_max`` 4 and 8.

Example (a 33 x 33 variant with 2 + 1 scenes, built in about a second):
  >>> import tempfile
  >>> config = SyntheticScenesConfig(name="pascal_like_33", scene="pascal_like",
  ...                                image_size=33, num_train=2, num_validation=1)
  >>> data_dir = tempfile.mkdtemp()
  >>> SyntheticScenes(config=config, data_dir=data_dir).download_and_prepare(
  ...     file_format="array_record")
  Downloading and preparing dataset ...
  Dataset synthetic_scenes downloaded and prepared to .../pascal_like_33/1.0.0. ...
  >>> source = tfds.data_source("synthetic_scenes/pascal_like_33", data_dir=data_dir)
  >>> source["train"][0]["label"].shape, len(source["validation"])
  ((33, 33), 1)

Custom sizes: ``SyntheticScenes(config=SyntheticScenesConfig(name="pascal_like_513",
scene="pascal_like", image_size=513), data_dir=...)``.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
import PIL.Image
import scipy.ndimage
import tensorflow_datasets as tfds

from spectral_jax._checks import IGNORE_INDEX

SPLITS: tuple[str, ...] = ("train", "validation")
_SPLIT_CODES = {"train": 0, "validation": 1}
# Appearance (class colours and textures) is fixed per scene kind, not per config seed, so
# that configs differing only in size or seed share their classes' looks.
_APPEARANCE_SEED = 20240601

PASCAL_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
DEEPGLOBE_CLASSES: tuple[str, ...] = (
    "urban_land", "agriculture_land", "rangeland", "forest_land", "water", "barren_land",
    "unknown",
)  # fmt: skip
SCENE_CLASSES: dict[str, tuple[str, ...]] = {
    "pascal_like": PASCAL_CLASSES,
    "cityscapes_like": CITYSCAPES_CLASSES,
    "deepglobe_like": DEEPGLOBE_CLASSES,
}


@dataclasses.dataclass(eq=False)
class SyntheticScenesConfig(tfds.core.BuilderConfig):
    """A preset of :class:`SyntheticScenes`.

    Attributes:
      scene: scene kind, one of ``SCENE_CLASSES`` (sets the classes and the layout).
      image_size: side of the square images, pixels (lengths scale with it).
      num_train, num_validation: split sizes.
      seed: base seed; example ``i`` of a split is drawn from ``(seed, split, i)``.
      ignore_border: width in pixels of the ignore contour along object boundaries
        (``pascal_like`` only; 0: none). VOC's 5-pixel borders on ~500-pixel images are
        about 1 pixel at 129.
    """

    scene: str = "pascal_like"
    image_size: int = 129
    num_train: int = 300
    num_validation: int = 50
    seed: int = 0
    ignore_border: int = 1

    @property
    def class_names(self) -> tuple[str, ...]:
        return SCENE_CLASSES[self.scene]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __reduce__(self):
        # A preset unpickles to the preset object itself: TFDS refuses a config that is
        # named like a preset but is not it (identity), e.g. in grain's worker processes.
        if any(self is config for config in PRESETS):
            return preset, (self.name,)
        return super().__reduce__()


def _check_config(config: SyntheticScenesConfig) -> None:
    if config.scene not in SCENE_CLASSES:
        raise ValueError(f"scene must be one of {tuple(SCENE_CLASSES)}, got {config.scene!r}.")
    if config.image_size < 17:
        raise ValueError(f"image_size must be at least 17, got {config.image_size}.")
    if config.num_train < 1 or config.num_validation < 1:
        raise ValueError(
            "num_train and num_validation must be positive, got "
            f"{config.num_train} and {config.num_validation}."
        )
    if config.seed < 0 or config.ignore_border < 0:
        raise ValueError(
            f"seed and ignore_border must be non-negative, got {config.seed}, "
            f"{config.ignore_border}."
        )


PRESETS: tuple[SyntheticScenesConfig, ...] = (
    SyntheticScenesConfig(
        name="pascal_like",
        scene="pascal_like",
        description="Few large smooth objects with VOC-style ignore borders, 21 classes.",
    ),
    SyntheticScenesConfig(
        name="cityscapes_like",
        scene="cityscapes_like",
        description="Street scenes with many small and thin structures, 19 classes.",
    ),
    SyntheticScenesConfig(
        name="deepglobe_like",
        scene="deepglobe_like",
        description="Large land-cover regions with ragged boundaries, 7 classes.",
    ),
)


def preset(name: str) -> SyntheticScenesConfig:
    """The preset config called ``name`` (``pascal_like``, ``cityscapes_like``, ...)."""
    for config in PRESETS:
        if config.name == name:
            return config
    raise ValueError(f"name must be one of {[c.name for c in PRESETS]}, got {name!r}.")


# ---------------------------------------------------------------------------------------
# Appearance: colour, stripes and noise per class.


@dataclasses.dataclass(frozen=True)
class _Appearance:
    colour: np.ndarray  # [C + 1, 3]; the last row is the look of void pixels.
    stripe_amplitude: np.ndarray  # [C + 1]
    stripe_frequency: np.ndarray  # [C + 1, 2] cycles per image, (vertical, horizontal)
    stripe_phase: np.ndarray  # [C + 1]
    noise_amplitude: np.ndarray  # [C + 1]


@functools.cache
def _appearance(scene: str) -> _Appearance:
    count = len(SCENE_CLASSES[scene]) + 1
    rng = np.random.default_rng([_APPEARANCE_SEED, list(SCENE_CLASSES).index(scene)])
    # Colours spread over the RGB cube: a shuffled lattice, jittered.
    levels = np.array([40.0, 110.0, 180.0, 230.0])
    lattice = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    colour = lattice[rng.permutation(len(lattice))[:count]] + rng.uniform(-12, 12, (count, 3))
    angle = rng.uniform(0, np.pi, count)
    cycles = rng.uniform(3.0, 20.0, count)
    return _Appearance(
        colour=colour,
        stripe_amplitude=rng.uniform(8.0, 35.0, count),
        stripe_frequency=cycles[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1),
        stripe_phase=rng.uniform(0, 2 * np.pi, count),
        noise_amplitude=rng.uniform(4.0, 16.0, count),
    )


def render_image(
    classes: np.ndarray, scene: str, rng: np.random.Generator, *, void_mask: np.ndarray
) -> np.ndarray:
    """``[H, W, 3]`` uint8 image of a class map: class colour + stripes + noise, lit unevenly.

    Args:
      classes: ``[H, W]`` class of every pixel (what is seen, also under ignore borders).
      scene: scene kind (selects the class looks).
      rng: generator for the noise and the illumination.
      void_mask: ``[H, W]`` booleans, pixels drawn with the void look.
    """
    look = _appearance(scene)
    height, width = classes.shape
    index = np.where(void_mask, len(look.colour) - 1, classes)  # [H, W]
    v, u = np.meshgrid(
        np.arange(height) / height, np.arange(width) / width, indexing="ij"
    )  # [H, W] each
    frequency = look.stripe_frequency[index]  # [H, W, 2]
    stripes = look.stripe_amplitude[index] * np.sin(
        2 * np.pi * (frequency[..., 0] * v + frequency[..., 1] * u) + look.stripe_phase[index]
    )
    noise = rng.standard_normal((height, width, 3)) * look.noise_amplitude[index][..., None]
    gain_v, gain_u = rng.uniform(-0.15, 0.15, 2)
    illumination = 1.0 + gain_v * (v - 0.5) + gain_u * (u - 0.5)  # [H, W]
    image = (look.colour[index] + stripes[..., None] + noise) * illumination[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Layouts.


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Periodic white noise smoothed by a Gaussian of ``sigma`` pixels, unit std."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=shape)
    return (field - field.mean()) / max(field.std(), 1e-12)


def _boundary_band(classes: np.ndarray, width: int) -> np.ndarray:
    """A contour ``width`` pixels thick along the class boundaries (VOC's ignore border).

    Pixels whose class differs from the pixel below or to the right form a one-pixel
    contour; it is then thickened by ``width - 1`` pixels (Chebyshev dilation).
    """
    band = np.zeros(classes.shape, bool)
    if width == 0:
        return band
    vertical = classes[:-1, :] != classes[1:, :]  # [H - 1, W]
    horizontal = classes[:, :-1] != classes[:, 1:]  # [H, W - 1]
    band[:-1, :] |= vertical
    band[:, :-1] |= horizontal
    for _ in range(width - 1):
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:-1, :] |= band[1:, :]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        band = grown
    return band


def _pascal_layout(rng, size: int, num_classes: int, ignore_border: int):
    v, u = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    v, u = v / size, u / size
    classes = np.zeros((size, size), np.int64)
    count = rng.integers(1, 4)
    radii = np.sort(rng.uniform(0.15, 0.4, count))[::-1]  # large first, small in front
    for radius in radii:
        label = rng.integers(1, num_classes)
        cy, cx = rng.uniform(0.2, 0.8, 2)
        aspect = rng.uniform(0.6, 1.6)
        angle = rng.uniform(0, np.pi)
        dy, dx = v - cy, u - cx
        ry = np.cos(angle) * dy - np.sin(angle) * dx
        rx = (np.sin(angle) * dy + np.cos(angle) * dx) / aspect
        rho, theta = np.hypot(ry, rx), np.arctan2(ry, rx)
        # A smooth star shape: a few low angular harmonics on the radius.
        outline = np.ones_like(theta)
        for k in (2, 3, 4):
            outline += rng.uniform(0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        inside = rho <= radius * outline
        # Limbs (legs, wings, handles): up to three narrow ellipses reaching out of the body.
        for _ in range(rng.integers(0, 4)):
            direction = rng.uniform(0, 2 * np.pi)
            length = radius * rng.uniform(0.6, 1.1)
            width = radius * rng.uniform(0.08, 0.16)
            my = cy + np.sin(direction) * radius * 0.9
            mx = cx + np.cos(direction) * radius * 0.9
            along = np.sin(direction) * (v - my) + np.cos(direction) * (u - mx)
            across = np.cos(direction) * (v - my) - np.sin(direction) * (u - mx)
            inside |= (along / length) ** 2 + (across / width) ** 2 <= 1
        classes[inside] = label
    band = _boundary_band(classes, ignore_border)
    return classes, np.where(band, IGNORE_INDEX, classes), np.zeros_like(band)


def _cityscapes_layout(rng, size: int):
    (road, sidewalk, building, wall, fence, pole, light, sign, vegetation, terrain, sky,
     person, rider, car, truck, bus, train, motorcycle, bicycle) = range(19)  # fmt: skip
    scale = size / 129
    px = lambda n: max(1, int(round(n * scale)))  # lengths given in pixels at 129  # noqa: E731
    v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    classes = np.full((size, size), sky, np.int64)
    horizon = int(rng.uniform(0.38, 0.5) * size)

    # Skyline: buildings, walls and trees standing on the horizon.
    x = 0
    while x < size:
        width = int(rng.uniform(0.06, 0.2) * size) + 1
        top = int(horizon - rng.uniform(0.08, 0.35) * size)
        kind = rng.choice([building, building, wall, vegetation])
        if kind == vegetation:
            cy, cx, ry, rx = top + width / 2, x + width / 2, width * 0.7, width * 0.6
            inside = ((v - cy) / ry) ** 2 + ((u - cx) / rx) ** 2 <= 1
            classes[inside & (v < horizon)] = vegetation
        else:
            classes[max(top, 0) : horizon, x : x + width] = kind
        x += width

    # Ground: sidewalk, a road in perspective, terrain at the sides.
    ground = v >= horizon
    classes[ground] = sidewalk
    depth = np.clip((v - horizon) / max(size - horizon, 1), 0, 1)  # 0 at horizon, 1 at bottom
    vanish = rng.uniform(0.35, 0.65) * size
    half_width = (0.03 + rng.uniform(0.4, 0.6) * depth) * size
    classes[ground & (np.abs(u - vanish) <= half_width)] = road
    for side in (-1, 1):
        if rng.random() < 0.5:
            edge = vanish + side * (half_width + rng.uniform(0.1, 0.25) * size * depth)
            classes[ground & (side * (u - edge) > 0)] = terrain

    # Fence: thin slats and a rail along the horizon.
    if rng.random() < 0.7:
        x0, x1 = np.sort(rng.integers(0, size, 2))
        height = px(rng.uniform(6, 12))
        gap = px(rng.integers(3, 5))
        rows = slice(max(horizon - height, 0), horizon)
        slats = (u % gap == 0) & (u >= x0) & (u < x1)
        classes[rows][slats[rows]] = fence
        classes[max(horizon - height, 0) : max(horizon - height, 0) + px(1), x0:x1] = fence

    # Objects on the ground, far (small) to near (large).
    for _ in range(rng.integers(3, 10)):
        depth_obj = rng.uniform(0.05, 0.8)
        base = int(horizon + depth_obj * (size - horizon))
        extent = (0.3 + 2.5 * depth_obj) * scale  # apparent size grows with nearness
        cx = rng.uniform(0, size)
        kind = rng.choice([person, person, rider, car, car, truck, bus, train, motorcycle, bicycle])
        if kind in (person, rider):
            h, w = 9 * extent, 3 * extent
            inside = (((v - (base - h / 2)) / (h / 2)) ** 2 + ((u - cx) / (w / 2)) ** 2) <= 1
            classes[inside] = kind
            if kind == rider:  # on a bicycle
                classes[(np.abs(v - base) <= 2 * extent) & (np.abs(u - cx) <= 3 * extent)] = bicycle
        elif kind in (motorcycle, bicycle):
            wheels = (np.abs(v - (base - 2 * extent)) <= 2 * extent) & (
                np.abs(u - cx) <= 4 * extent
            )
            classes[wheels & ((u + v) % 2 == 0)] = kind  # spokes: a thin lattice
        else:
            w = {car: 10, truck: 14, bus: 18, train: 26}[kind] * extent
            h = {car: 5, truck: 9, bus: 9, train: 9}[kind] * extent
            classes[int(max(base - h, 0)) : base, int(max(cx - w / 2, 0)) : int(cx + w / 2)] = kind

    # Poles, one or two pixels wide, with traffic lights and signs on top.
    for _ in range(rng.integers(5, 13)):
        x = int(rng.integers(0, size))
        width = px(rng.choice([1, 1, 2]))
        bottom = int(horizon + rng.uniform(0.05, 0.6) * (size - horizon))
        top = int(horizon - rng.uniform(0.1, 0.35) * size)
        classes[max(top, 0) : bottom, x : x + width] = pole
        attachment = (None, light, sign)[rng.integers(0, 3)]
        if attachment is not None:
            h, w = (px(5), px(2)) if attachment == light else (px(3), px(4))
            t = max(top - h // 2, 0)
            classes[t : t + h, max(x - w // 2, 0) : x + width + w // 2] = attachment

    # Void: the ego vehicle's bonnet.
    hood = rng.uniform(0.05, 0.1) * size
    void = v >= size - hood * (1 - ((u - size / 2) / (size / 2)) ** 2)
    return classes, np.where(void, IGNORE_INDEX, classes), void


def _deepglobe_layout(rng, size: int):
    scale = size / 129
    count = rng.integers(1, 4)  # a 2448-pixel tile's crop often holds one land cover only
    land = rng.choice(6, count, replace=False)
    fields = np.stack(
        [
            _smooth_field(rng, (size, size), 18 * scale)
            + rng.uniform(-0.3, 0.3)
            # Ragged boundaries: a little fine-scale noise moves them by a few pixels.
            + 0.05 * _smooth_field(rng, (size, size), 1.5 * scale)
            for _ in range(count)
        ]
    )
    classes = land[np.argmax(fields, axis=0)]
    if rng.random() < 0.2:  # a patch of unknown land cover
        unknown = _smooth_field(rng, (size, size), 8 * scale) > 2.0
        classes = np.where(unknown, 6, classes)
    return classes, classes.copy(), np.zeros((size, size), bool)


def generate_example(
    config: SyntheticScenesConfig, split: str, index: int
) -> dict[str, np.ndarray]:
    """Example ``index`` of ``split``: ``{"image": uint8 [H, W, 3], "label": uint8 [H, W]}``.

    Deterministic: drawn from ``numpy.random.default_rng((config.seed, split_code, index))``.

    Raises:
      ValueError: for an unknown split or scene, or an index outside the split.
    """
    _check_config(config)
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    size = config.num_train if split == "train" else config.num_validation
    if not 0 <= index < size:
        raise ValueError(f"index must lie in [0, {size}) for split {split!r}, got {index}.")
    rng = np.random.default_rng([config.seed, _SPLIT_CODES[split], int(index)])
    if config.scene == "pascal_like":
        layout = _pascal_layout(rng, config.image_size, config.num_classes, config.ignore_border)
    elif config.scene == "cityscapes_like":
        layout = _cityscapes_layout(rng, config.image_size)
    else:
        layout = _deepglobe_layout(rng, config.image_size)
    classes, label, void = layout
    image = render_image(classes, config.scene, rng, void_mask=void)
    return {"image": image, "label": label.astype(np.uint8)}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
    """Procedural segmentation scenes (see the module docstring); name ``synthetic_scenes``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(PRESETS)

    def _info(self) -> tfds.core.DatasetInfo:
        _check_config(self.builder_config)
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(__doc__ or "").split("\n")[0],  # no docstring under `python -OO`
            features=tfds.features.FeaturesDict(
                {
                    # PNG bytes in, decoded by tfds.data_source without TensorFlow.
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    # Raw uint8 [H, W], zlib-compressed: decodes to [H, W] (an Image feature
                    # would give [H, W, 1]).
                    "label": tfds.features.Tensor(
                        shape=(size, size), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            # Keep the generation order, so that source[split][i] is generate_example(i).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        config = self.builder_config
        size = config.num_train if split == "train" else config.num_validation
        for index in range(size):
            example = generate_example(config, split, index)
            yield index, {"image": _png(example["image"]), "label": example["label"]}


# ---------------------------------------------------------------------------------------
# Measuring the presets' label spectra.


def blurred_label_logits(
    labels: np.ndarray,
    *,
    num_classes: int,
    sigma: float = 1.0,
    smoothing: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    r"""Log-probabilities of the ground truth seen through a Gaussian point spread (float64).

    The prediction's class probabilities are the one-hot labels blurred by a Gaussian of
    ``sigma`` pixels (a normalised convolution: ignored pixels have no one-hot and do not
    count), mixed with the uniform distribution:

    .. math::

       P(t, c) = (1 - \varepsilon) \frac{(G_\sigma * B_c)(t)}{\sum_{c'} (G_\sigma * B_{c'})(t)}
       + \frac{\varepsilon}{C}.

    A prediction that is right (probability ``1 - eps + eps / C``) away from boundaries and
    uncertain within about ``sigma`` pixels of them, whatever ``C``: its CE lives near the
    label boundaries, so its ``R(nu_max)`` compares the label maps' spectra. ``sigma = 1``
    at 129 pixels is about the blur of a stride-4 output bilinearly upsampled to 513.

    Args:
      labels: ``[B, H, W]`` integer labels.
      num_classes: ``C``.
      sigma: Gaussian standard deviation, pixels (reflecting at the image border).
      smoothing: ``eps`` in ``(0, 1]``, the weight of the uniform distribution.
      ignore_index: label of ignored pixels.

    Returns:
      ``[B, H, W, C]`` float64 logits (log-probabilities).

    Raises:
      ValueError: for labels of another rank, ``sigma < 0`` or ``smoothing`` outside (0, 1].
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape [B, H, W], got shape {labels.shape}.")
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}.")
    if not 0 < smoothing <= 1:
        raise ValueError(f"smoothing must lie in (0, 1], got {smoothing}.")
    one_hot = (labels[..., None] == np.arange(num_classes)) & (labels[..., None] != ignore_index)
    blurred = scipy.ndimage.gaussian_filter(
        one_hot.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="reflect"
    )  # [B, H, W, C]
    total = blurred.sum(-1, keepdims=True)
    probabilities = np.where(total > 0, blurred / np.maximum(total, 1e-300), 1.0 / num_classes)
    return np.log((1 - smoothing) * probabilities + smoothing / num_classes)
