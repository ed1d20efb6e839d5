r"""The whole story in one command: train, decompose, sweep, differentiate, truncate, weaken.

Launch from the repository root (``make demo`` runs the first form)::

  python -m experiments.demo --workdir runs/demo                   # ~5 min on 2 CPU cores
  python -m experiments.demo --workdir runs/demo --steps 600       # a better-trained model
  python -m experiments.demo --workdir /tmp/demo --quick           # the test's setting, ~30 s

On the embedded data set (``synthetic_scenes/pascal_like``: 300 training and 50 validation
scenes of 129 x 129 pixels, 21 classes with VOC's names, generated and built into TFDS on
first use, no download) the script

1. builds the data set (into ``<workdir>/tfds`` unless ``--data-dir`` is given) and shows
   a few scenes;
2. trains the tiny DeepLab v3+ of ``experiments/configs/tiny.py`` (``resnet_tiny``
   backbone, 65 x 65 crops, batch 8) for ``--steps`` steps into ``<workdir>/train``;
3. decomposes its cross-entropy on the validation scenes at initialisation and after
   training (:class:`spectral_jax.SpectralStatistics`): band profile, ``R(nu_max)``
   beside the paper's Table 1, magnitude profiles (Fig. 1, Fig. 2);
4. sweeps every band limit with one ``vmap``-ped, once-compiled call of
   :func:`spectral_jax.relative_discrepancy` over the band limits and over four
   predictions: the trained model's and the blurred ground truth of the three presets
   (:func:`spectral_jax.data.blurred_label_logits`), a compact "data sets differ" panel;
5. computes exact spectral-Jacobian rows ``i = 0, M/4, M/2``: of the CE components with
   respect to the trained model's ASPP features (:func:`spectral_jax.ce_spectral_gradient`,
   Fig. 4 right) and of the trained decoder's first 3x3 convolution (with and without
   ReLU) on its own input (Fig. 4 left), with their diagonal energy fractions;
6. evaluates the trained model with its decoder truncated to about a half and a quarter
   of the untruncated grid's band limit (Table 2's feature sizes), with convolution
   FLOPs (:func:`spectral_jax.flops.conv_layers`) and FPI, and counts the full-size
   ResNet-101 DeepLab v3+ at 513 x 513 and decoder grids 129 / 65 / 33 (shapes only)
   beside the paper's 139 / 107 / 98 G;
7. trains the same model for the same steps on block-wise labels at two band limits
   (Table 3) and sets the relative mIoU beside ``R(nu_max)`` of the pixel-wise model.

Everything lands in ``--workdir``: ``report.md`` (tables with the paper's numbers beside
ours, figures), ``results.json`` (every number of the report), the PNG figures, and one
trainer directory per trained model. Rerunning skips the finished trainings
(:func:`experiments.common.train_once`) and resumes an interrupted one from its
checkpoint; the analyses are recomputed (seconds). Progress goes to stderr, the report's
path to stdout.

Budget. The default (``--steps 300``: the tiny config's; three trainings of 300 steps,
evaluation on the 50 validation scenes) was measured at about 5 minutes of CPU time on
the 2-core development machine (see the report's "Run" line for each run's wall and CPU
time); ``--quick`` (10 steps, 8 validation scenes, no full-size FLOPs) is what the test
runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import spectral_jax as sj
from experiments import common, paper_values
from spectral_jax import data as data_lib
from spectral_jax import flops, plotting, probes
from spectral_jax import training as training_lib
from spectral_jax.data import synthetic
from spectral_jax.models import DeepLabV3Plus

DATASET = "synthetic_scenes/pascal_like"
PRESETS = ("pascal_like", "deepglobe_like", "cityscapes_like")
PAPER_OF_PRESET = {"pascal_like": "pascal", "deepglobe_like": "deepglobe",
                   "cityscapes_like": "cityscapes"}  # fmt: skip
IMAGE_SIZE = 129  # The embedded scenes' side.
TABLE_BAND_LIMITS = (8, 16, 32)  # Table 1's band limits that the 129 grid holds.
# Fractions of the untruncated decoder grid's band limit (Table 2: 129 -> 65 -> 33).
TRUNCATION_FRACTIONS = (1.0, 0.5, 0.25)
PAPER_FEATURE_SIZES = (129, 65, 33)
# A padded class never wins the softmax: exp(PAD_LOGIT - max) is exactly 0 in float32.
PAD_LOGIT = -1e4
EVAL_BATCH = 10
# Three trainings of this many steps: about 3 min of CPU time in all (module docstring).
DEFAULT_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one demo run does (all static).

    Attributes:
      steps: training steps of every model.
      num_eval: validation scenes evaluated (the first ones of the split).
      block_band_limits: band limits of the block-wise labels on the training crops.
      full_size_flops: count the ResNet-101 model at 513 x 513 (shape-only, ~15 s).
      data_dir: TFDS data directory.
    """

    steps: int
    num_eval: int
    block_band_limits: tuple[int, ...]
    full_size_flops: bool
    data_dir: str


# ---------------------------------------------------------------------------------------
# Configs, data and evaluation.


def training_config(settings: Settings, *, block_band_limit: int | None = None):
    """The tiny config with the demo's steps, data directory and evaluation split."""
    steps = settings.steps
    return common.get_config(
        "tiny",
        **{
            "num_train_steps": steps,
            "data_dir": settings.data_dir,
            "eval_split": f"validation[:{settings.num_eval}]",
            "block_band_limit": block_band_limit,
            "eval_every_steps": -1,
            "checkpoint_every_steps": max(1, min(100, steps)),
            "log_every_steps": max(1, min(25, steps)),
            "tensorboard": False,
        },
    )


def validation_arrays(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_eval`` validation scenes, normalised: ``[N, H, W, 3]``, ``[N, H, W]``."""
    info = data_lib.dataset_info(DATASET)
    source = data_lib.load_split(
        DATASET, f"validation[:{settings.num_eval}]", data_dir=settings.data_dir
    )
    images, labels = [], []
    for batch in data_lib.eval_batches(
        source, batch_size=EVAL_BATCH, crop_size=IMAGE_SIZE, mean=info.mean, std=info.std
    ):
        images.append(batch["image"][batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    return np.concatenate(images), np.concatenate(labels)


@functools.cache
def _forward(model):
    return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def predict(model, variables, images: np.ndarray) -> np.ndarray:
    """Logits ``[N, H, W, C]`` (float32) of ``images [N, H, W, 3]``, in batches."""
    forward = _forward(model)
    out = []
    for start in range(0, len(images), EVAL_BATCH):
        chunk = images[start : start + EVAL_BATCH]
        pad = EVAL_BATCH - len(chunk)  # one compiled shape
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(forward(variables, chunk))[: EVAL_BATCH - pad])
    return np.concatenate(out)


def spectral_statistics(logits: np.ndarray, labels: np.ndarray) -> sj.SpectralStatistics:
    """:class:`spectral_jax.SpectralStatistics` (with magnitudes) of a whole split."""
    num_classes = logits.shape[-1]
    stats = sj.SpectralStatistics.create(labels.shape[1:], num_classes, with_magnitudes=True)
    update = jax.jit(sj.SpectralStatistics.update)
    for start in range(0, len(labels), EVAL_BATCH):
        stats = update(
            stats, logits[start : start + EVAL_BATCH], labels[start : start + EVAL_BATCH]
        )
    return jax.device_get(stats)


def mean_iou(logits: np.ndarray, labels: np.ndarray) -> float:
    """The trainer's mIoU (:mod:`spectral_jax.evaluation.metrics`) of arg-max predictions."""
    num_classes = logits.shape[-1]
    confusion = np.asarray(
        training_lib.confusion_matrix(
            jnp.argmax(logits, -1), jnp.asarray(labels), num_classes=num_classes
        ),
        np.int64,
    )
    return float(training_lib.mean_iou(confusion))


def initial_variables(model, config):
    """The variables the trainer starts from (same key and ``init_variables``, to ~1e-7)."""
    init_key, _ = jax.random.split(jax.random.key(int(config.seed)))
    from spectral_jax.training.train_state import init_variables

    # Compiled without XLA's backend optimisations: 4 s instead of 12 s (Flax's init runs
    # the forward pass); the parameters match the trainer's jitted init to ~1e-7.
    variables = run_compiled(
        functools.partial(init_variables, model, image_size=int(config.crop_size)), init_key
    )
    return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def run_compiled(fn, *args):
    """``fn(*args)`` compiled once without XLA's backend optimisations.

    For the one-off computations of the analyses (one image, a few Jacobian rows): they
    compile 3-10x faster than with the defaults and than eager op-by-op dispatch, and
    run in well under a second; results agree with the optimised build to rounding.
    """
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


def _r_row(discrepancy: np.ndarray) -> list[float]:
    """``R`` at :data:`TABLE_BAND_LIMITS` and at the last band (the Nyquist band)."""
    return [float(discrepancy[nu]) for nu in TABLE_BAND_LIMITS] + [float(discrepancy[-1])]


def _paper_r_row(dataset: str) -> list[float]:
    values = dict(
        zip(
            paper_values.TABLE1_BAND_LIMITS,
            paper_values.TABLE1_RELATIVE_DISCREPANCY["deeplab"][dataset],
            strict=True,
        )
    )
    return [values[nu] for nu in TABLE_BAND_LIMITS] + [values[256]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colour_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """RGB ``[..., 3]`` of labels; ignored pixels white."""
    plt = _pyplot()
    colours = plt.get_cmap("tab20", num_classes)(np.arange(num_classes))[:, :3]
    rgb = colours[np.clip(labels, 0, num_classes - 1)]
    rgb[labels >= num_classes] = 1.0
    return rgb


# ---------------------------------------------------------------------------------------
# The sections.


_CLOCK = {"start": time.perf_counter()}  # reset by main()


def _cpu_seconds() -> float:
    """CPU time of this process and its children (all threads), seconds."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _progress(message: str) -> None:
    wall = time.perf_counter() - _CLOCK["start"]
    common.log(f"[{wall:6.1f} s wall, {_cpu_seconds():6.1f} s CPU] {message}")


def section_data(report: common.Report, settings: Settings, results: dict) -> None:
    _progress("[1/7] data")
    source = data_lib.load_split(DATASET, "validation", data_dir=settings.data_dir)
    info = data_lib.dataset_info(DATASET)
    count = 4
    examples = [source[i] for i in range(count)]
    plt = _pyplot()
    fig, axes = plt.subplots(2, count, figsize=(2.4 * count, 5), layout="constrained")
    for k, example in enumerate(examples):
        axes[0, k].imshow(np.asarray(example["image"]))
        axes[1, k].imshow(_colour_labels(np.asarray(example["label"]), info.num_classes))
        present = sorted({int(c) for c in np.unique(example["label"])} - {255})
        axes[1, k].set_title(", ".join(info.class_names[c] for c in present), fontsize=7)
        for ax in axes[:, k]:
            ax.set_axis_off()
    results["data"] = {"dataset": DATASET, "data_dir": settings.data_dir,
                       "num_eval": settings.num_eval}  # fmt: skip
    report.heading("1. Data")
    report.paragraph(
        f"`{DATASET}`: procedurally generated scenes of {IMAGE_SIZE} x {IMAGE_SIZE} pixels "
        f"with PASCAL VOC's {info.num_classes} classes (one to three smooth objects with "
        "narrow limbs on a background, a one-pixel ignore contour along the boundaries as "
        "VOC's), 300 training and 50 validation scenes, built into TFDS at "
        f"`{settings.data_dir}` on first use (no download). Each class has its own colour "
        f"and texture, so a tiny model can learn it. Evaluated here: the first "
        f"{settings.num_eval} validation scenes."
    )
    report.figure(fig, "data_examples.png", "Validation scenes and their labels (white: ignored).")


def section_training(report, settings: Settings, results: dict, workdir: pathlib.Path):
    _progress(f"[2/7] training the tiny DeepLab v3+ for {settings.steps} steps")
    config = training_config(settings)
    summary = common.train_once(config, workdir / "train")
    model, trained = common.restore_trained(config, workdir / "train")
    num_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(trained["params"]))
    paper_params = paper_values.ENCODER_MPARAMS + paper_values.DECODER_MPARAMS["deeplab"]
    results["training"] = {
        "num_params": num_params,
        "mean_iou": summary["mean_iou"],
        "pixel_accuracy": summary["pixel_accuracy"],
        "steps": summary["steps"],
        "workdir": str(workdir / "train"),
    }
    report.heading("2. Training")
    report.paragraph(
        f"Tiny DeepLab v3+ (`experiments/configs/tiny.py`: `resnet_tiny` backbone, "
        f"{config.model.aspp_channels}-channel ASPP, 65 x 65 crops, batch "
        f"{config.batch_size}, SGD with the poly schedule from {config.learning_rate}) "
        f"trained from scratch for {summary['steps']} steps in `{workdir / 'train'}`: "
        f"{num_params / 1e6:.3f} M parameters against the paper's {paper_params:.1f} M "
        "(ResNet-101 pretrained on ImageNet)."
    )
    report.table(
        ["model", "data", "steps", "mIoU", "pixel accuracy"],
        [
            [
                "tiny DeepLab v3+ (ours)",
                DATASET,
                summary["steps"],
                summary["mean_iou"],
                summary["pixel_accuracy"],
            ],
            [
                "DeepLab v3+ ResNet-101 (paper, Table 2)",
                "PASCAL VOC 2012 val",
                "100 epochs",
                paper_values.TABLE2_MIOU[0.0]["pascal"][0] / 100,
                None,
            ],
        ],  # fmt: skip
    )
    return config, summary


def section_ce_spectrum(report, config, results, images, labels, workdir):
    _progress("[3/7] CE spectrum at initialisation and after training")
    model, trained = common.restore_trained(config, workdir / "train")
    initial = initial_variables(model, config)
    logits = {"init": predict(model, initial, images), "trained": predict(model, trained, images)}
    stats = {stage: spectral_statistics(lg, labels) for stage, lg in logits.items()}
    r = {stage: np.asarray(s.relative_discrepancy()) for stage, s in stats.items()}
    results["ce_spectrum"] = {
        stage: {
            "relative_discrepancy": r[stage].tolist(),
            "band_profile": np.asarray(s.band_profile()).tolist(),
            "mean_ce": float(s.mean_ce()),
            "parseval_error": float(s.parseval_error()),
            "table": dict(zip(["8", "16", "32", "64"], _r_row(r[stage]), strict=True)),
        }
        for stage, s in stats.items()
    }
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for k, (stage, s) in enumerate(stats.items()):
        profile = np.asarray(s.band_profile())
        bands = np.arange(profile.size)
        axes[0].semilogy(bands, np.abs(profile), color=f"C{k}", label=f"{stage} |P(r)|")
        negative = profile < 0
        axes[0].semilogy(bands[negative], -profile[negative], "x", color=f"C{k}", ms=4)
        shown = r[stage] > 0
        axes[1].semilogy(bands[shown], r[stage][shown], color=f"C{k}", label=stage)
        mags = s.magnitude_profiles()
        for name, curve, style in (("|b|", mags.labels, "-"), ("|ŷ|", mags.logits, "--")):
            curve = np.asarray(curve)
            axes[2].semilogy(bands, curve / curve.max(), style, color=f"C{k}",
                             label=f"{stage} {name}")  # fmt: skip
    paper = _paper_r_row("pascal")[:3]
    axes[1].semilogy(TABLE_BAND_LIMITS, paper, "o", mfc="none", color="k",
                     label="paper, PASCAL (Table 1)")  # fmt: skip
    axes[0].set(title="band profile (x: negative)", xlabel="band r", ylabel="|Σ L_ce| per band")
    axes[1].set(title="relative discrepancy R(ν_max)", xlabel="ν_max", ylabel="R")
    axes[2].set(title="magnitude profiles (÷ max)", xlabel="band r")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    report.heading("3. The spectrum of the CE (Fig. 1, Fig. 2, Table 1)")
    report.paragraph(
        "CE components L_ce(ν) (Eq. 5) summed per Chebyshev band r = max(|ν_h|, |ν_w|) and "
        "averaged over the validation scenes; R(ν_max) (Eq. 14) is a ratio of means over "
        "the scenes (Table 1's convention), from `SpectralStatistics`. Grids: the paper's "
        "maps are 513 x 513 (bands 0..256), ours 129 x 129 (bands 0..64). A band ν is ν "
        "cycles per image side on both grids and a 129 scene stands for a whole 513 crop "
        "of a VOC image, so ν_max = 8, 16, 32 compare the same frequencies; the highest "
        "band of each grid (paper 256, ours 64) holds the whole CE, R = 0 by definition. "
        f"The paper's R(64) = {_paper_r64():.3f} has no counterpart below our Nyquist band."
    )
    header = ["model", "mean CE", "R(8)", "R(16)", "R(32)", "R(Nyquist: 256 / 64)"]
    rows = [
        [f"tiny DeepLab v3+, {stage}", float(stats[stage].mean_ce()), *_r_row(r[stage])]
        for stage in stats
    ]
    rows.append(["DeepLab v3+ (paper, Table 1, PASCAL)", None, *_r_row_paper_pascal()])
    report.table(header, rows)
    report.paragraph(
        "Decomposition check: |Σ_ν L_ce(ν) − CE| / CE = "
        + ", ".join(f"{float(s.parseval_error()):.1e} ({k})" for k, s in stats.items())
        + ". "
        + _compare_with_paper(r["init"], r["trained"])
        + " "
        + _sign_sentence(np.asarray(stats["trained"].band_profile()), r["trained"])
    )
    report.figure(
        fig,
        "ce_spectrum.png",
        "Band profile, R(ν_max) (paper's PASCAL row as circles) and class-averaged |b(ν)|, "
        "|ŷ(ν)| at initialisation and after training.",
    )
    return model, trained, logits["trained"], stats["trained"]


def _r_row_paper_pascal() -> list[float]:
    return _paper_r_row("pascal")


def _sign_sentence(profile: np.ndarray, discrepancy: np.ndarray) -> str:
    """Where the trained band profile is negative, and where R(nu_max) has its minimum."""
    negative = np.flatnonzero(profile < 0)
    if negative.size == 0:
        return "Every band of the trained profile is positive, so R falls monotonically."
    # The dip: where the cumulative sum, pushed above the CE by the positive low bands,
    # is brought back across it by the negative ones.
    window = discrepancy[: min(int(negative.max()) + 2, discrepancy.size - 1)]
    low = int(np.argmin(window))
    return (
        f"{negative.size} bands of the trained profile are negative (x in the figure, "
        f"between bands {negative.min()} and {negative.max()}): the truncated CE overshoots "
        f"the CE at small ν_max and R(ν_max) is not monotone (it dips to "
        f"{discrepancy[low]:.4f} at ν_max = {low}, where the truncated CE crosses the CE)."
    )


def _paper_r64() -> float:
    limits = paper_values.TABLE1_BAND_LIMITS
    return paper_values.TABLE1_RELATIVE_DISCREPANCY["deeplab"]["pascal"][limits.index(64)]


def _compare_with_paper(initial: np.ndarray, trained: np.ndarray) -> str:
    """Sentences that read the R table: training's effect and the ratio to the paper."""
    paper = _paper_r_row("pascal")
    parts = []
    for k, nu in enumerate(TABLE_BAND_LIMITS):
        change = "fell" if trained[nu] < initial[nu] else "rose"
        ratio = trained[nu] / paper[k]
        parts.append(f"R({nu}) {change} from {initial[nu]:.3f} to {trained[nu]:.3f} in training "
                     f"({ratio:.2g} x the paper's {paper[k]:.3f})")  # fmt: skip
    return (
        "; ".join(parts) + ". At initialisation the logits hardly depend on the position, so "
        "the CE sits at the lowest bands and R is small; a model that learns the objects "
        "moves its remaining error to their boundaries, which are high frequencies. How far "
        "R moves depends on how well the model has learnt: a tiny model trained for minutes "
        f"on 129 x 129 scenes is far from the paper's ResNet-101 "
        f"({paper_values.TABLE2_MIOU[0.0]['pascal'][0]} % mIoU on PASCAL VOC)."
    )


def preset_predictions(num_images: int, num_classes: int):
    """Blurred-label log-probabilities of the presets, padded to ``num_classes``.

    Returns:
      ``(logits [3, N, H, W, C] float32, labels [3, N, H, W] int32)``.
    """
    all_logits, all_labels = [], []
    for name in PRESETS:
        config = synthetic.preset(name)
        labels = np.stack(
            [synthetic.generate_example(config, "validation", i)["label"]
             for i in range(num_images)]
        ).astype(np.int32)  # fmt: skip
        logits = data_lib.blurred_label_logits(labels, num_classes=config.num_classes)
        pad = np.full((*logits.shape[:-1], num_classes - config.num_classes), PAD_LOGIT)
        all_logits.append(np.concatenate([logits, pad], -1).astype(np.float32))
        all_labels.append(labels)
    return np.stack(all_logits), np.stack(all_labels)


def _order_sentence(preset_r: np.ndarray) -> str:
    """The presets ordered by R at 8 and 16, ours against Table 1's order."""
    sentences = []
    for nu in (8, 16):
        ours = [PRESETS[k] for k in np.argsort(-preset_r[:, nu])]
        paper = sorted(PRESETS, key=lambda p: -_paper_r_row(PAPER_OF_PRESET[p])[
            TABLE_BAND_LIMITS.index(nu)])  # fmt: skip
        verdict = "as in Table 1" if ours == paper else f"Table 1: {' > '.join(paper)}"
        sentences.append(f"R({nu}): {' > '.join(ours)} ({verdict})")
    return "Order of the presets, largest R first: " + "; ".join(sentences) + "."


def sweep_band_limits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """``R(nu_max)`` for every prediction and band limit, one compiled call.

    Args:
      logits: ``[P, N, H, W, C]``; labels: ``[P, N, H, W]``.

    Returns:
      ``([P, R] R values, number of compilations)``.
    """
    over_limits = jax.vmap(sj.relative_discrepancy, in_axes=(None, None, 0))
    over_predictions = jax.vmap(over_limits, in_axes=(0, 0, None))
    band_limits = jnp.arange(sj.num_bands(labels.shape[-2:]))
    compiled = jax.jit(over_predictions).lower(logits, labels, band_limits).compile()
    return np.asarray(compiled(logits, labels, band_limits)), 1


def section_sweep(report, results, trained_logits, labels):
    _progress("[4/7] band-limit sweep: one vmap over predictions and band limits")
    num_images = len(labels)
    num_classes = trained_logits.shape[-1]
    preset_logits, preset_labels = preset_predictions(num_images, num_classes)
    logits = np.concatenate([trained_logits[None], preset_logits])  # [P, N, H, W, C]
    all_labels = np.concatenate([labels[None], preset_labels])  # [P, N, H, W]
    start = time.perf_counter()
    r, compilations = sweep_band_limits(logits, all_labels)
    seconds = time.perf_counter() - start
    names = ["tiny DeepLab v3+ (trained), pascal_like"] + [
        f"blurred ground truth, {name}" for name in PRESETS
    ]
    results["sweep"] = {"names": names, "relative_discrepancy": r.tolist(),
                        "compilations": compilations, "seconds": seconds}  # fmt: skip
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for k, (name, curve) in enumerate(zip(names, r, strict=True)):
        shown = curve > 0
        ax.semilogy(np.arange(curve.size)[shown], curve[shown], color=f"C{k}", label=name)
    for k, name in enumerate(PRESETS):
        ax.semilogy(TABLE_BAND_LIMITS, _paper_r_row(PAPER_OF_PRESET[name])[:3], "o",
                    mfc="none", color=f"C{k + 1}",
                    label=f"paper DeepLab, {PAPER_OF_PRESET[name]}")  # fmt: skip
    ax.set(xlabel="ν_max", ylabel="R(ν_max)", title="one vmap over predictions x band limits")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small")
    report.heading("4. Band-limit sweep in one vmap (data sets differ)")
    report.paragraph(
        f"`jax.vmap(jax.vmap(relative_discrepancy, (None, None, 0)), (0, 0, None))` over "
        f"{len(names)} predictions x {r.shape[1]} band limits on {num_images} scenes each, "
        f"compiled once ({compilations} compilation, `jit(...).lower(...).compile()`) and "
        f"called once ({seconds:.1f} s including the compilation). The band limit only "
        "selects bands, so it is traced. The three presets' rows use the ground truth "
        "blurred by a 1-pixel Gaussian with 10 % uniform mixing (the presets' own yardstick, "
        "`spectral_jax.data.blurred_label_logits`), logits padded to 21 classes with "
        f"{PAD_LOGIT:g} (a padded class changes no component). " + _order_sentence(r[1:])
    )
    rows = [[name, *_r_row(curve)] for name, curve in zip(names, r, strict=True)]
    rows += [
        [f"paper DeepLab v3+, {PAPER_OF_PRESET[p]}", *_paper_r_row(PAPER_OF_PRESET[p])]
        for p in PRESETS
    ]
    report.table(["prediction", "R(8)", "R(16)", "R(32)", "R(Nyquist)"], rows)
    report.figure(fig, "band_limit_sweep.png", "R(ν_max) of four predictions, one vmapped call.")


def _matching_output_indices(in_shape, out_shape, fractions=(0.0, 0.25, 0.5)):
    """Rows ``i = 0, M/4, M/2`` (``M`` input frequencies) and the same signed frequency out."""
    m = int(np.prod(in_shape))
    nu_in = [int(f * m) for f in fractions]
    out = []
    for index in nu_in:
        coords = np.unravel_index(index, in_shape)
        signed = [int(sj.signed_frequencies(n)[c]) for c, n in zip(coords, in_shape, strict=True)]
        out.append(int(np.ravel_multi_index([s % n for s, n in zip(signed, out_shape,
                                                                     strict=True)], out_shape)))  # fmt: skip
    return np.asarray(nu_in), np.asarray(out)


def section_spectral_gradient(report, results, model, variables, images, labels):
    _progress("[5/7] spectral Jacobians of the trained model")
    x = jnp.asarray(images[:1])
    parts = run_compiled(
        functools.partial(model.apply, method=DeepLabV3Plus.intermediates), variables, x
    )
    aspp, low_level = parts["aspp"][0], parts["low_level"]
    image_size = tuple(x.shape[1:3])

    def head_fn(features):  # [h, w, Ca] -> [H, W, C]; the low-level features held fixed
        return model.apply(
            variables, features[None], low_level, image_size, method=DeepLabV3Plus.decode
        )["logits"][0]

    in_shape = tuple(aspp.shape[:2])
    _, out_index = _matching_output_indices(in_shape, image_size)
    rows = run_compiled(
        lambda f: sj.ce_spectral_gradient(head_fn, f, jnp.asarray(labels[0]), nu_i=out_index),
        aspp,
    )
    ce_diag = np.asarray(sj.diagonal_energy_fraction(rows, out_index, out_shape=image_size,
                                                     in_shape=in_shape))  # fmt: skip
    ce_near = np.asarray(sj.within_radius_energy_fraction(
        rows, out_index, out_shape=image_size, in_shape=in_shape, radius=1))  # fmt: skip

    # Layer probe: the trained decoder's first 3x3 convolution on its own input.
    decoder_input = parts["decoder_input"][0]  # [F, F, Cin]
    kernel = variables["params"]["decoder"]["fuse1_conv"]["kernel"]
    grid = tuple(decoder_input.shape[:2])
    probe_index, _ = _matching_output_indices(grid, grid)
    layer_fns = {
        "3x3 conv, circular padding": functools.partial(probes.conv, kernel=kernel,
                                                        padding="circular"),
        "3x3 conv, zero padding": functools.partial(probes.conv, kernel=kernel, padding="zero"),
        "3x3 conv + ReLU, zero padding": functools.partial(
            probes.conv_activation, kernel=kernel, activation="relu", padding="zero"),
    }  # fmt: skip
    layer_rows = {
        name: run_compiled(
            lambda x, fn=fn: sj.spectral_jacobian_rows(fn, x, probe_index), decoder_input
        )
        for name, fn in layer_fns.items()
    }
    layer_diag = {
        name: np.asarray(
            sj.diagonal_energy_fraction(lr, probe_index, out_shape=grid, in_shape=grid)
        )  # fmt: skip
        for name, lr in layer_rows.items()
    }
    results["spectral_gradient"] = {
        "aspp_shape": list(aspp.shape),
        "ce_rows_output_index": out_index.tolist(),
        "ce_diagonal_fraction": ce_diag.tolist(),
        "ce_within_1_fraction": ce_near.tolist(),
        "layer_grid": list(grid),
        "layer_rows_index": probe_index.tolist(),
        "layer_diagonal_fraction": {k: v.tolist() for k, v in layer_diag.items()},
    }
    report.heading("5. Spectral Jacobians (Fig. 4)")
    report.paragraph(
        f"Exact rows (two `jax.vjp` pullbacks each) of dL_ce(ν_i)/dx̂(ν_j) with x the "
        f"trained model's ASPP output ({in_shape[0]} x {in_shape[1]} x {aspp.shape[2]}) on "
        "validation scene 0, through the decoder and the bilinear up-sampling to the "
        f"{image_size[0]} x {image_size[1]} image (low-level features held fixed, channels "
        "summed: `in_projection` of ones). Rows i = 0, M/4, M/2 with M the number of input "
        "frequencies, taken at the same signed frequency of the CE grid. The diagonal "
        "fraction is the share of a row's |·|² at ν_j = ν_i (Eq. 12 says the rows "
        "concentrate there). The layer probe is the trained decoder's first 3x3 "
        f"convolution ({kernel.shape[2]} -> {kernel.shape[3]} channels, BatchNorm left "
        f"out) on its own {grid[0]} x {grid[1]} input: circular padding makes it exactly "
        "diagonal (Eq. 10), zero padding and ReLU spread the rows."
    )
    header = ["Jacobian", "i = 0", "i = M/4", "i = M/2"]
    table = [["dL_ce/dx̂, ASPP (diagonal)", *ce_diag.tolist()],
             ["dL_ce/dx̂, ASPP (|ν_i − ν_j| ≤ 1)", *ce_near.tolist()]]  # fmt: skip
    table += [[f"dŷ/dx̂, {name} (diagonal)", *v.tolist()] for name, v in layer_diag.items()]
    report.table(header, table)
    fig = plotting.plot_spectral_rows(rows, out_index, in_shape=in_shape, out_shape=image_size,
                                title="dL_ce(ν_i)/dx̂(ν_j), trained ASPP features")  # fmt: skip
    report.figure(fig, "ce_spectral_gradient.png", "Rows of the CE spectral gradient.")
    name = "3x3 conv + ReLU, zero padding"
    fig = plotting.plot_spectral_rows(layer_rows[name], probe_index, in_shape=grid,
                                title=f"dŷ/dx̂, {name}")  # fmt: skip
    report.figure(fig, "layer_spectral_rows.png", f"Rows of the spectral Jacobian, {name}.")


def truncated_feature_sizes(untruncated: int) -> list[int]:
    """``F = 2 floor(nu_L k) + 1`` for the fractions ``k`` of the band limit ``nu_L``."""
    nu = (untruncated - 1) // 2
    return [2 * int(np.floor(nu * k)) + 1 for k in TRUNCATION_FRACTIONS]


def model_macs(model, feature_size, input_shape=(1, IMAGE_SIZE, IMAGE_SIZE, 3)) -> int:
    """Convolution MACs of ``model`` with its decoder on ``feature_size``."""
    return flops.conv_macs(flops.conv_layers(model.clone(feature_size=feature_size), input_shape))


def full_size_rows() -> list[list[Any]]:
    """ResNet-101 DeepLab v3+ at 513 x 513: our G MACs and the paper-convention G FLOPs.

    The paper convention is ``experiments/flops_table.py``'s reconstruction: 2 x dense
    MACs with the encoder counted at output stride 32 and the decoder at stride 16.
    """
    shape = (1, 513, 513, 3)

    def make(feature_size, output_stride=16):
        return DeepLabV3Plus(num_classes=21, backbone="resnet101", output_stride=output_stride,
                             feature_size=feature_size)  # fmt: skip

    encoder32 = flops.conv_macs(
        flops.conv_layers(make(None, 32), shape, method="encode"), dense=True
    )
    encoder16 = flops.conv_layers(make(None), shape, method="encode")
    rows = []
    for feature_size, paper in zip((None, 65, 33), (139, 107, 98), strict=True):
        total = flops.conv_layers(make(feature_size), shape)
        decoder_dense = flops.conv_macs(total, dense=True) - flops.conv_macs(encoder16, dense=True)
        rows.append([feature_size or 129, flops.conv_macs(total) / 1e9,
                     2 * (encoder32 + decoder_dense) / 1e9, paper])  # fmt: skip
    return rows


def section_truncation(report, settings, results, model, variables, images, labels, summary):
    _progress("[6/7] truncated feature sizes")
    low_level = jax.eval_shape(
        functools.partial(model.apply, method=DeepLabV3Plus.encode), variables, images[:1]
    )[1]
    sizes = truncated_feature_sizes(int(low_level.shape[1]))
    rows, records = [], []
    base_macs = None
    for feature_size, paper_size in zip(sizes, PAPER_FEATURE_SIZES, strict=True):
        truncated = model.clone(feature_size=feature_size)
        miou = mean_iou(predict(truncated, variables, images), labels)
        macs = model_macs(model, feature_size)
        base_macs = base_macs or macs
        record = {"feature_size": feature_size, "paper_feature_size": paper_size,
                  "mean_iou": miou, "macs": macs,
                  "fpi": macs / 1e6 / miou if miou > 0 else None}  # fmt: skip
        records.append(record)
        paper_miou = paper_values.TABLE2_MIOU[0.0]["pascal"][PAPER_FEATURE_SIZES.index(paper_size)]
        paper_flops = paper_values.TABLE2_FLOPS[0.0][PAPER_FEATURE_SIZES.index(paper_size)]
        rows.append([f"{feature_size} (ν_max {(feature_size - 1) // 2})", paper_size, miou,
                     paper_miou / 100, macs / 1e6, 100 * (1 - macs / base_macs),
                     record["fpi"], paper_flops / (paper_miou / 100)])  # fmt: skip
    results["truncation"] = {"rows": records, "summary_mean_iou": summary["mean_iou"]}
    report.heading("6. Feature truncation (Table 2, no pruning)")
    report.paragraph(
        f"The trained model's decoder run on smaller grids: at 129 x 129 input the "
        f"untruncated decoder grid (stride 4) is {sizes[0]}, band limit "
        f"{(sizes[0] - 1) // 2}; a half and a quarter of that band limit give F = "
        f"{sizes[1]} and {sizes[2]} (F = 2ν_max + 1), as 129 -> 65 -> 33 in the paper at 513. "
        "The parameters do not depend on the grid, so the same weights are evaluated "
        "(no fine-tuning: the paper trains every size; `experiments/feature_truncation.py` "
        "does). FLOPs: multiply-accumulates of every convolution at one 129 x 129 image "
        "(`flops.conv_layers`, taps inside the unpadded input, as XLA counts); FPI = FLOPs / "
        "mIoU (M MACs per unit mIoU; the paper's G FLOPs per unit mIoU)."
    )
    report.table(
        ["decoder grid F", "paper's F", "mIoU", "paper mIoU", "M MACs", "saving %",
         "FPI (ours, M)", "FPI (paper, G)"],
        rows,
    )  # fmt: skip
    if settings.full_size_flops:
        _progress("      full-size ResNet-101 FLOPs at 513 x 513 (shapes only)")
        full = full_size_rows()
        results["truncation"]["full_size"] = [
            {"feature_size": r[0], "g_macs": r[1], "paper_convention_g_flops": r[2],
             "paper_g_flops": r[3]} for r in full
        ]  # fmt: skip
        report.paragraph(
            "The paper's architecture (ResNet-101, 21 classes, output stride 16, 513 x 513), "
            "counted from shapes alone. Our unit is G MACs in XLA's convention; the paper's "
            "numbers are reproduced by `experiments/flops_table.py`'s reconstruction "
            "(2 x dense MACs, the encoder counted at output stride 32, the decoder on the "
            "stride-4 grid), computed here the same way."
        )
        report.table(
            ["decoder grid", "G MACs (ours)", "paper convention (G FLOPs)", "paper (G FLOPs)"],
            full,
            digits=1,
        )


def _blockwise_sentence(records: list[dict]) -> str:
    """What the relative mIoU shows, against the paper's Table 3 (below 1 everywhere)."""
    above = [r for r in records if r["relative_mean_iou"] >= 1.0]
    if not above:
        values = ", ".join(f"{r['relative_mean_iou']:.3f}" for r in records)
        return (
            "As in Table 3, every block-wise run scored below the pixel-wise one "
            f"(relative mIoU {values})."
        )
    limits = ", ".join(str(r["eval_band_limit"]) for r in above)
    return (
        f"Unlike Table 3, block-wise labels at ν_max = {limits} (on the scene) scored at "
        "least as well as the pixel-wise ones here. The scenes' objects are large and "
        "smooth, so blocks of a few pixels change few labels (mostly the one-pixel ignore "
        "contours and narrow limbs), and with one seed per run a difference of a few mIoU "
        "points is within what another seed could give; the paper's PASCAL loss at ν_max = 8 "
        "(relative 0.868) comes from real object shapes at 513 x 513."
    )


def section_blockwise(report, settings, results, stats, summary, images_labels, workdir):
    _progress("[7/7] block-wise annotation")
    labels = images_labels
    crop = training_config(settings).crop_size
    records = []
    for band_limit in settings.block_band_limits:
        config = training_config(settings, block_band_limit=band_limit)
        run = common.train_once(config, workdir / f"train_blockwise_nu{band_limit}")
        eval_band = int(round(band_limit * IMAGE_SIZE / crop))
        r_value = float(np.asarray(stats.relative_discrepancy())[eval_band])
        records.append({
            "band_limit": band_limit, "eval_band_limit": eval_band,
            "mean_iou": run["mean_iou"], "pixelwise_mean_iou": summary["mean_iou"],
            "relative_mean_iou": run["mean_iou"] / summary["mean_iou"],
            "relative_discrepancy": r_value,
        })  # fmt: skip
    results["blockwise"] = records
    paper_limits = paper_values.TABLE3_BAND_LIMITS
    rows = []
    for rec in records:
        nu = rec["eval_band_limit"]
        paper_rel = (paper_values.TABLE3_RELATIVE_MIOU["deeplab"]["pascal"][paper_limits.index(nu)]
                     if nu in paper_limits else None)  # fmt: skip
        paper_r = dict(zip(paper_values.TABLE1_BAND_LIMITS,
                           paper_values.TABLE1_RELATIVE_DISCREPANCY["deeplab"]["pascal"],
                           strict=True)).get(nu)  # fmt: skip
        rows.append([rec["band_limit"], nu, rec["mean_iou"], rec["relative_mean_iou"],
                     paper_rel, rec["relative_discrepancy"], paper_r])  # fmt: skip
    rows.append(["pixel-wise", "-", summary["mean_iou"], 1.0, 1.0, None, None])
    plt = _pyplot()
    info = data_lib.dataset_info(DATASET)
    fig, axes = plt.subplots(1, 2 + len(records), figsize=(3 * (3 + len(records)), 3),
                             layout="constrained")  # fmt: skip
    axes[0].imshow(_colour_labels(labels[0], info.num_classes))
    axes[0].set_title("pixel-wise")
    for ax, rec in zip(axes[1:], records, strict=False):
        weak = sj.blockwise_annotation_numpy(labels[0], rec["eval_band_limit"],
                                             num_classes=info.num_classes)  # fmt: skip
        ax.imshow(_colour_labels(weak, info.num_classes))
        ax.set_title(f"block-wise, ν_max {rec['eval_band_limit']}")
    for ax in axes[:-1]:
        ax.set_axis_off()
    scatter = axes[-1]
    scatter.plot([r["relative_discrepancy"] for r in records],
                 [r["relative_mean_iou"] for r in records], "o", label="ours")  # fmt: skip
    paper_r = dict(
        zip(
            paper_values.TABLE1_BAND_LIMITS,
            paper_values.TABLE1_RELATIVE_DISCREPANCY["deeplab"]["pascal"],
            strict=True,
        )
    )
    paper_points = [
        (paper_r[nu], paper_values.TABLE3_RELATIVE_MIOU["deeplab"]["pascal"][k])
        for k, nu in enumerate(paper_limits)
        if nu in paper_r and nu < 256
    ]
    scatter.plot(*zip(*paper_points, strict=True), "s", mfc="none", label="paper, PASCAL")
    scatter.set(xscale="log", xlabel="R(ν_max)", ylabel="relative mIoU")
    scatter.xaxis.set_minor_formatter(plt.NullFormatter())
    scatter.legend(fontsize="small")
    scatter.grid(True, which="both", alpha=0.3)  # fmt: skip
    report.heading("7. Block-wise annotation (Table 3, Fig. 6, Fig. 7)")
    report.paragraph(
        f"The same model and steps trained on block-wise labels: every training crop "
        f"({crop} x {crop}) is replaced by the majority label of each block of a "
        "(2ν_max + 1)-sized grid (`config.block_band_limit`), evaluation on the pixel-wise "
        f"validation labels. A band limit ν on the {crop}-pixel crop makes blocks of the "
        f"size that ν x {IMAGE_SIZE}/{crop} makes on the {IMAGE_SIZE} scene; the latter, in "
        "cycles per image, is set beside the paper's ν_max. Relative mIoU = mIoU(ν_max) / "
        "mIoU(pixel-wise); R(ν_max) is the trained pixel-wise model's (section 3). The "
        "paper's relation (Fig. 6): the smaller R(ν_max), the less block-wise labels cost. "
        "One seed per setting: differences of a few mIoU points between short runs of a "
        "tiny model may be noise (not measured here), so read the relative mIoU as rough."
    )
    report.table(
        ["ν_max (crop)", "ν_max (scene)", "mIoU", "relative mIoU", "paper relative mIoU",
         "R(ν_max), ours", "R(ν_max), paper"],
        rows,
    )  # fmt: skip
    report.paragraph(_blockwise_sentence(records))
    report.figure(fig, "blockwise.png", "Block-wise labels of scene 0 and relative mIoU vs R.")


# ---------------------------------------------------------------------------------------
# Flags and main.


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/demo"))
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="training steps of every model (default 300; --quick: 10)",
    )
    parser.add_argument(
        "--num-eval",
        type=_positive_int,
        default=None,
        help="validation scenes evaluated (default 50; --quick: 8)",
    )
    parser.add_argument(
        "--block-band-limits",
        type=_positive_int,
        nargs="+",
        default=[4, 8],
        help="band limits of the block-wise labels on the 65-pixel crops",
    )
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data directory (default <workdir>/tfds)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smallest setting (10 steps, 8 scenes, no full-size FLOPs)",
    )
    parser.add_argument("--no-full-size-flops", action="store_true",
                        help="skip the ResNet-101 FLOPs at 513 x 513 (~15 s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.num_eval is not None and args.num_eval > 50:
        parser.error(f"--num-eval must be at most 50 (the validation split), got {args.num_eval}")
    return args


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the demo; returns the path of ``report.md``."""
    start = _CLOCK["start"] = time.perf_counter()
    args = parse_args(argv)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        steps=args.steps or (10 if args.quick else DEFAULT_STEPS),
        num_eval=args.num_eval or (8 if args.quick else 50),
        block_band_limits=tuple(args.block_band_limits),
        full_size_flops=not (args.quick or args.no_full_size_flops),
        data_dir=str(args.data_dir or (workdir / "tfds")),
    )
    common.log(f"demo: {settings}; JAX {jax.__version__} on {jax.default_backend()}")
    results: dict[str, Any] = {"settings": dataclasses.asdict(settings)}
    report = common.Report(workdir, "spectral_jax demo: the spectral analysis of a segmentation "
                           "network, end to end")  # fmt: skip
    report.paragraph(
        "Chen, Chiu, Wu, *Spectral Analysis for Semantic Segmentation with Applications on "
        "Feature Truncation and Weak Annotation*, redone at toy scale on the embedded data "
        "set with a tiny DeepLab v3+ on CPU. The paper's numbers (ResNet-101 DeepLab v3+, "
        "PASCAL VOC 2012, 513 x 513, 100 epochs on GPUs) stand beside ours for orientation: "
        "the model (section 2), the data (generated 129 x 129 scenes) "
        "and the training (minutes of CPU) all differ, so compare trends, not values."
    )
    section_data(report, settings, results)
    config, summary = section_training(report, settings, results, workdir)
    images, labels = validation_arrays(settings)
    model, trained, trained_logits, stats = section_ce_spectrum(
        report, config, results, images, labels, workdir
    )
    section_sweep(report, results, trained_logits, labels)
    section_spectral_gradient(report, results, model, trained, images, labels)
    section_truncation(report, settings, results, model, trained, images, labels, summary)
    section_blockwise(report, settings, results, stats, summary, labels, workdir)

    cpu = _cpu_seconds()
    wall = time.perf_counter() - start
    results["time"] = {"wall_s": wall, "cpu_s": cpu}
    report.heading("Run")
    command = "python -m experiments.demo " + " ".join(sys.argv[1:] if argv is None else argv)
    report.paragraph(
        f"`{command}`: {wall:.0f} s wall clock, {cpu:.0f} s CPU time (this process and its "
        f"children; a run that resumed finished trainings is shorter), JAX {jax.__version__} "
        f"on {jax.default_backend()}."
    )
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    path = report.write()
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    main()
