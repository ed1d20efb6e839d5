r"""The paper's analyses of a trained segmentation network, from its PyTorch checkpoint.

Launch from the repository root::

  python -m experiments.analyze --model torchvision_deeplabv3 --backbone resnet101 \
      --weights deeplabv3_resnet101_coco-586e9e4e.pth \
      --dataset voc_sbd --split validation --workdir runs/analyze_tv101
  python -m experiments.analyze --model pytorch_deeplab_xception --backbone resnet101 \
      --weights deeplab-resnet.pth.tar \
      --dataset voc_sbd --split validation --workdir runs/analyze_xception

``--model`` is a registry name of an imported PyTorch family
(:data:`spectral_jax.models.segmentation_checkpoints.LAYOUTS`); the checkpoint file is
read without running pickled code and checked against the model before anything is
written: a checkpoint of another network (missing or unexpected keys, another class
count, another backbone depth) stops the run with the differences named.

On the images of ``--split`` of the TFDS data set ``--dataset``, the script computes,
after Chen, Chiu, Wu, "Spectral Analysis for Semantic Segmentation with Applications on
Feature Truncation and Weak Annotation" (arXiv:2012.14123):

* Table 1's ``R(nu_max)`` (Eq. 14) under both conventions for ignored pixels
  (``ignore_mode="labels"``, the paper's Eq. 1, and ``"both"``), the CE band profiles
  (Figs. 1-2) and the mIoU, through :func:`spectral_jax.analyze`;
* the rows ``dL_ce(nu_i)/dx_hat(nu_j)`` of the CE spectral gradient at the ASPP's output
  (Fig. 4, layer ``aspp``; the FCN head has no ASPP and gets no rows) with each row's
  diagonal energy fraction;
* feature truncation (Table 2's baseline row, no pruning): the head's grid truncated to
  the paper's 129 / 65 / 33 at 513 input, scaled for other sizes as
  :func:`experiments.feature_truncation.decoder_grid` does, with the mIoU drop, the
  multiply-accumulates of one image (:func:`spectral_jax.flops.conv_macs`) and the FPI
  (G MACs per unit mIoU). A grid that is not smaller than the head's own (torchvision's
  DeepLab v3 runs its head at output stride 8: 65 at 513) is the untruncated model.

Inference is whole-image: every image is padded at the bottom and right to
``--input_size`` (the mean colour; the padded pixels carry the ignore label), so one
compiled shape serves the split (PASCAL VOC images are at most 500 x 500; 513 is the
paper's size). No sliding window and no multi-scale or flipped inputs.

Writes to ``--workdir``: ``report.md`` with ``band_profiles.png``, ``results.json``,
``analysis/`` (:meth:`spectral_jax.Analysis.write_report` of the ``"labels"`` pass:
its report, the CE spectrum, the ASPP's feature spectrum and rows), and ``stages/``
with one JSON file per finished stage. Progress goes to stderr. An interrupted run
resumes: rerunning with the same flags reads the finished stages back (``run.json``
records the settings; another model, checkpoint, data set or size in the same work
directory is an error).

With random weights on the embedded data (``--dataset synthetic_scenes/pascal_like``)
the script runs in the tests (``tests/test_experiment_analyze.py``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from experiments import ce_spectrum, cli, paper_values
from experiments import feature_truncation as truncation_lib
from experiments.report import Report, log, pyplot, write_csv
from spectral_jax import analysis as analysis_lib
from spectral_jax import flops
from spectral_jax.data import pipeline as pipeline_lib
from spectral_jax.evaluation import Evaluator, inference_apply_fn
from spectral_jax.models import create_model
from spectral_jax.models import segmentation_checkpoints as checkpoints_lib

#: The conventions for ignored pixels of the CE decomposition (:func:`spectral_jax.ce_spectrum`).
IGNORE_MODES = ("labels", "both")
IGNORE_MODE_TITLES = {"labels": "labels zeroed (Eq. 1)", "both": "both maps zeroed"}
#: The layer whose spectral gradient rows are computed (the ASPP's output).
ASPP_LAYER = "aspp"


# --------------------------------------------------------------------------------------
# Flags, model and checkpoint.


def define_flags(flag_values: flags.FlagValues) -> None:
    """The flags of ``python -m experiments.analyze`` besides ``--workdir``."""
    flags.DEFINE_enum(
        "model",
        None,
        list(checkpoints_lib.LAYOUTS),
        "Registry name of the checkpoint's network (its PyTorch layout).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "weights", None, "The PyTorch checkpoint file (torch.save).", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "backbone",
        "resnet101",
        ["resnet50", "resnet101"],
        "ResNet depth of the checkpoint's backbone.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "output_stride",
        None,
        "Output stride of the backbone; default: the layout's (8 for torchvision, 16 for "
        "pytorch-deeplab-xception and smp's DeepLab v3+).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "dataset", None, "TFDS name of the data set (e.g. voc_sbd).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "split",
        "validation",
        "The split to analyse (TFDS slicing allowed).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir", None, "TFDS data directory (default: TFDS's own).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "input_size",
        513,
        "Every image is padded at the bottom and right to input_size x input_size "
        "(whole-image inference); an image larger than that is an error.",
        lower_bound=8,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "batch_size", 8, "Images per batch.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "num_examples",
        1,
        "Images on which the ASPP's spectral gradient rows are computed.",
        lower_bound=1,
        flag_values=flag_values,
    )


def _model_config(flag_values: flags.FlagValues) -> ml_collections.ConfigDict:
    fields: dict[str, Any] = {"name": flag_values.model, "backbone": flag_values.backbone}
    if flag_values.output_stride is not None:
        fields["output_stride"] = flag_values.output_stride
    return ml_collections.ConfigDict(fields)


def _file_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(functools.partial(file.read, 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _settings(flag_values: flags.FlagValues, weights: pathlib.Path) -> dict[str, Any]:
    """What the results depend on: a rerun reads back stages of these settings only."""
    return {
        "model": flag_values.model,
        "backbone": flag_values.backbone,
        "output_stride": flag_values.output_stride,
        "weights": weights.name,
        "weights_sha256": _file_digest(weights),
        "dataset": flag_values.dataset,
        "split": flag_values.split,
        "input_size": flag_values.input_size,
        "num_examples": flag_values.num_examples,
    }


def _check_workdir(workdir: pathlib.Path, settings: dict[str, Any]) -> None:
    """Raises when ``workdir`` holds the results of other settings (nothing is written)."""
    path = workdir / "run.json"
    if not path.exists():
        return
    earlier = json.loads(path.read_text())
    differences = [
        f"{key}: {earlier.get(key)!r} there, {value!r} now"
        for key, value in settings.items()
        if earlier.get(key) != value
    ]
    if differences:
        raise app.UsageError(
            f"--workdir={workdir} holds the results of another run ({'; '.join(differences)}); "
            "use another work directory."
        )


# --------------------------------------------------------------------------------------
# Data: whole images padded to one size, with progress.


def _batches(source, info, flag_values: flags.FlagValues, what: str) -> Iterator[dict]:
    """The split's batches (:func:`spectral_jax.data.pipeline.eval_batches`), logged."""
    num_batches = -(-len(source) // flag_values.batch_size)
    batches = pipeline_lib.eval_batches(
        source,
        batch_size=flag_values.batch_size,
        crop_size=flag_values.input_size,
        mean=info.mean,
        std=info.std,
        ignore_index=info.ignore_index,
    )
    start = time.time()
    for index, batch in enumerate(batches):
        yield batch
        log(f"  {what}: batch {index + 1}/{num_batches} ({time.time() - start:.0f} s)")


# --------------------------------------------------------------------------------------
# Stages, each stored in workdir/stages/<name>.json once finished.


def _write_atomically(path: pathlib.Path, text: str) -> None:
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _stage(workdir: pathlib.Path, name: str, compute, encode=json.dumps, decode=json.loads):
    """``compute()``'s result, or the one stored by an earlier run (``stages/<name>.json``)."""
    path = workdir / "stages" / f"{name}.json"
    if path.exists():
        log(f"[{name}] finished earlier, reading {path.relative_to(workdir)}")
        return decode(path.read_text())
    log(f"[{name}] computing")
    start = time.time()
    text = encode(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, text)
    log(f"[{name}] done in {time.time() - start:.0f} s")
    # Read back as a resumed run reads it: both runs report the same values.
    return decode(text)


def _head_grid(model, variables, input_size: int) -> int:
    """Side of the untruncated grid of the model's head at ``input_size`` (shapes only)."""
    outputs = jax.eval_shape(
        functools.partial(model.apply, method="intermediates"),
        variables,
        jax.ShapeDtypeStruct((1, input_size, input_size, 3), np.float32),
    )
    return int(outputs["decoder_input"].shape[1])


def truncation_grids(model, variables, input_size: int) -> list[dict[str, Any]]:
    """Per paper size 129 / 65 / 33: the grid ``F`` and the model's ``feature_size``.

    ``F`` is :func:`experiments.feature_truncation.decoder_grid` at ``input_size``; the
    model's ``feature_size`` is ``None`` (untruncated) for 129 and wherever ``F`` is not
    smaller than the head's own grid ``G`` (from the shapes of ``variables`` and an
    ``input_size`` image; nothing is computed).

    Returns:
      Per paper size: ``paper_feature_size``, ``feature_size`` (``None`` or ``F``) and
      ``grid`` (the head's grid then, ``G`` or ``F``).
    """
    head_grid = _head_grid(model.clone(feature_size=None), variables, input_size)
    grids = []
    for paper_size in truncation_lib.PAPER_FEATURE_SIZES:
        grid = truncation_lib.decoder_grid(paper_size, input_size)
        truncated = paper_size != 129 and grid < head_grid
        grids.append(
            {
                "paper_feature_size": paper_size,
                "feature_size": grid if truncated else None,
                "grid": grid if truncated else head_grid,
            }
        )
    return grids


def _macs(model, input_size: int) -> float:
    return float(flops.conv_macs(flops.conv_layers(model, (1, input_size, input_size, 3))))


def truncation_rows(
    grids: Sequence[dict[str, Any]], evaluate_miou, macs_of, baseline_miou: float
) -> list[dict[str, Any]]:
    """Table 2's baseline row: mIoU, its drop, G MACs and FPI per truncated grid.

    Args:
      grids: :func:`truncation_grids`.
      evaluate_miou: ``feature_size -> mIoU`` (a fraction), called for truncated grids.
      macs_of: ``feature_size -> MACs of one image``.
      baseline_miou: the untruncated model's mIoU.
    """
    rows = []
    for grid in grids:
        size = grid["feature_size"]
        miou = baseline_miou if size is None else float(evaluate_miou(size))
        macs = float(macs_of(size))
        rows.append(
            {
                **grid,
                "mean_iou": miou,
                "mean_iou_drop_points": 100 * (baseline_miou - miou),
                "gmacs": macs / 1e9,
                "fpi_gmacs": flops.flops_per_iou(macs / 1e9, miou) if miou > 0 else None,
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# Report.


def _plot_band_profiles(analyses: dict[str, analysis_lib.Analysis]):
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, result in analyses.items():
        bands = np.arange(len(result.band_profile))
        left.plot(bands, result.band_profile, label=IGNORE_MODE_TITLES[mode])
        right.semilogy(
            bands, np.maximum(np.abs(result.relative_discrepancy_curve), 1e-12), label=mode
        )
    left.set(xlabel="band r (Chebyshev)", ylabel="mean CE in band", title="CE band profile")
    left.set_yscale("symlog", linthresh=1e-4)
    right.set(xlabel="nu_max", ylabel="R(nu_max)", title="relative discrepancy (Eq. 14)")
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def write_report(
    workdir: pathlib.Path,
    settings: dict[str, Any],
    analyses: dict[str, analysis_lib.Analysis],
    rows: Sequence[dict[str, Any]],
    command: str,
) -> pathlib.Path:
    """``report.md`` and ``band_profiles.png`` from the stages' results."""
    labels = analyses["labels"]
    size = settings["input_size"]
    report = Report(workdir, f"Spectral analysis of {settings['model']} ({settings['backbone']})")
    report.paragraph(
        'The analyses of Chen, Chiu, Wu, "Spectral Analysis for Semantic Segmentation with '
        'Applications on Feature Truncation and Weak Annotation" (arXiv:2012.14123) on the '
        f"checkpoint `{settings['weights']}` (sha256 {settings['weights_sha256'][:12]}...), "
        f"{labels.num_images} images of `{settings['dataset']}` `{settings['split']}`. "
        f"Whole-image inference: every image padded at the bottom and right to {size} x "
        f"{size} (mean colour; padded pixels ignored), no sliding window, one scale, no flip."
        f"\n\nCommand: `{command}`"
    )
    report.table(
        ["quantity", "value"],
        [
            ["mIoU (confusion matrix)", labels.mean_iou],
            ["pixel accuracy", labels.pixel_accuracy],
            ["spectral mIoU (Eq. 8, arg-max)", labels.spectral_mean_iou],
            *(
                [f"mean CE, {IGNORE_MODE_TITLES[mode]}", result.mean_ce]
                for mode, result in analyses.items()
            ),
            *(
                [f"Parseval error, {mode}", f"{result.parseval_error:.2e}"]
                for mode, result in analyses.items()
            ),
        ],
        digits=4,
    )

    report.heading("Table 1: R(nu_max)")
    num_bands = len(labels.relative_discrepancy_curve)
    columns = ce_spectrum.table_band_limits(num_bands)
    report.paragraph(
        f"R(nu_max) of the CE truncated to the bands up to nu_max (Eq. 14, ratio of means "
        f"over the images) on the {size} x {size} maps (bands 0..{num_bands - 1}; a band "
        "limit beyond the grid is its last band, where R = 0). `labels`: ignored pixels "
        "zeroed in the label maps only (the paper's Eq. 1), their log-probabilities "
        "still transformed; `both`: zeroed in both maps. The paper's row: its DeepLab v3+ "
        "(ResNet-101) on PASCAL VOC, 513 x 513."
    )
    header = ["ignore convention", *(f"R({paper})" for paper, _ in columns)]
    table = [
        [
            IGNORE_MODE_TITLES[mode],
            *(float(result.relative_discrepancy_curve[ours]) for _, ours in columns),
        ]
        for mode, result in analyses.items()
    ]
    table.append(
        [
            "paper, DeepLab v3+ PASCAL",
            *(paper_values.table1_relative_discrepancy("deeplab", "pascal", p) for p, _ in columns),
        ]
    )
    report.table(header, table, digits=4)
    report.figure(
        _plot_band_profiles(analyses),
        "band_profiles.png",
        "CE band profiles and R(nu_max) under both ignore conventions (Figs. 1-2)",
    )

    if labels.layers:
        layer = labels.layer(ASPP_LAYER)
        h, w, c = layer.shape
        report.heading("Spectral gradient at the ASPP output (Fig. 4)")
        report.paragraph(
            f"Rows dL_ce(nu_i)/dx_hat(nu_j) of the CE spectral gradient (Eq. 11) with respect "
            f"to the ASPP's output ({h} x {w} x {c}), channels summed, at the paper's "
            f"nu_i = 0, M/4, M/2 of the {h} x {w} grid, on the first "
            f"{layer.rows.shape[0]} image(s); the diagonal energy fraction is the share of "
            "a row's energy at nu_j = nu_i (1 for a layer that does not mix frequencies)."
        )
        report.table(
            ["nu_i (signed)", "flat index (image grid)", "diagonal energy fraction"],
            [
                [str(tuple(int(v) for v in frequency)), int(index), float(fraction)]
                for frequency, index, fraction in zip(
                    layer.row_frequencies,
                    layer.row_indices,
                    layer.diagonal_energy_fraction.mean(axis=0),
                    strict=True,
                )
            ],
            digits=4,
        )
        stem = ASPP_LAYER.replace("/", "-")
        report.paragraph(
            f"![rows](analysis/{stem}_rows.png)\n\n![feature spectrum](analysis/"
            f"{stem}_features.png)\n\nThe full analysis (CE spectrum, IoU per class): "
            "[analysis/report.md](analysis/report.md)."
        )
    else:
        report.paragraph("The FCN head has no ASPP: no spectral gradient rows.")

    report.heading("Feature truncation (Table 2's baseline row)")
    paper_miou = paper_values.TABLE2_MIOU[0.0]["pascal"]
    paper_flops = paper_values.TABLE2_FLOPS[0.0]
    report.paragraph(
        "The head's grid truncated to the paper's sizes (129 -> 65 -> 33 at 513 input, "
        f"here the same fractions of the band limit at {size}); the same weights at every "
        "grid, no fine-tuning, no pruning. G MACs: multiply-accumulates of one image "
        "(valid taps). FPI: G MACs per unit mIoU (the paper's: G FLOPs per unit mIoU, "
        "DeepLab v3+ ResNet-101 trained at each size, PASCAL VOC)."
    )
    report.table(
        [
            "paper's F",
            "grid here",
            "mIoU",
            "drop (points)",
            "G MACs",
            "FPI",
            "paper mIoU",
            "paper FPI",
        ],
        [
            [
                row["paper_feature_size"],
                f"{row['grid']}" + ("" if row["feature_size"] else " (untruncated)"),
                row["mean_iou"],
                row["mean_iou_drop_points"],
                row["gmacs"],
                row["fpi_gmacs"],
                paper_miou[index] / 100,
                flops.flops_per_iou(paper_flops[index], paper_miou[index] / 100),
            ]
            for index, row in enumerate(rows)
        ],
        digits=3,
    )
    return report.write()


def _results(settings, analyses, rows) -> dict[str, Any]:
    labels = analyses["labels"]
    columns = ce_spectrum.table_band_limits(len(labels.relative_discrepancy_curve))
    results: dict[str, Any] = {
        "settings": settings,
        "num_images": labels.num_images,
        "mean_iou": labels.mean_iou,
        "pixel_accuracy": labels.pixel_accuracy,
        "spectral_mean_iou": labels.spectral_mean_iou,
        "table1_band_limits": [paper for paper, _ in columns],
        "ignore_modes": {
            mode: {
                "relative_discrepancy_table1": [
                    float(result.relative_discrepancy_curve[ours]) for _, ours in columns
                ],
                "relative_discrepancy": result.relative_discrepancy_curve.tolist(),
                "band_profile": result.band_profile.tolist(),
                "mean_ce": result.mean_ce,
                "parseval_error": result.parseval_error,
            }
            for mode, result in analyses.items()
        },
        "truncation": list(rows),
    }
    if labels.layers:
        layer = labels.layer(ASPP_LAYER)
        results["aspp"] = {
            "shape": list(layer.shape),
            "row_frequencies": layer.row_frequencies.tolist(),
            "row_indices": layer.row_indices.tolist(),
            "diagonal_energy_fraction": layer.diagonal_energy_fraction.tolist(),
        }
    return results


# --------------------------------------------------------------------------------------
# Main.


def main(argv: Sequence[str]) -> pathlib.Path:
    """Analyses the checkpoint on the command line ``argv``; returns ``report.md``'s path."""
    flag_values = cli.parse(
        argv,
        name="analyze",
        doc=__doc__,
        define_flags=define_flags,
        config=None,
        required=("model", "weights", "dataset", "workdir"),
    )
    weights = pathlib.Path(flag_values.weights)
    if not weights.is_file():
        raise app.UsageError(f"--weights={weights}: no such file.")
    workdir = pathlib.Path(flag_values.workdir)
    info = pipeline_lib.dataset_info(flag_values.dataset)
    model = create_model(_model_config(flag_values), num_classes=info.num_classes)
    settings = _settings(flag_values, weights)
    _check_workdir(workdir, settings)
    # Read and checked before anything is written: a checkpoint of another network
    # raises here, naming what differs.
    log(f"reading {weights} into {flag_values.model} ({info.num_classes} classes)")
    variables = checkpoints_lib.load_segmentation_checkpoint(
        weights, model, layout=flag_values.model
    )
    source = pipeline_lib.load_split(
        flag_values.dataset, flag_values.split, data_dir=flag_values.data_dir
    )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.json").write_text(json.dumps(settings, indent=2))
    input_size = flag_values.input_size
    has_aspp = model.head != "fcn"
    apply_fn = inference_apply_fn(model)

    def run_analysis(mode: str) -> analysis_lib.Analysis:
        return analysis_lib.analyze(
            apply_fn,
            variables,
            _batches(source, info, flag_values, f"ignore_mode={mode}"),
            num_classes=info.num_classes,
            # The rows are the paper's (Eq. 1 convention); the other pass needs no rows.
            layers=(ASPP_LAYER,) if has_aspp and mode == "labels" else (),
            ignore_index=info.ignore_index,
            ignore_mode=mode,
            num_examples=flag_values.num_examples,
        )

    def encode(result: analysis_lib.Analysis) -> str:
        return result.to_json()

    analyses = {
        mode: _stage(
            workdir,
            f"analysis_{mode}",
            functools.partial(run_analysis, mode),
            encode=encode,
            decode=analysis_lib.Analysis.from_json,
        )
        for mode in IGNORE_MODES
    }
    analyses["labels"].write_report(workdir / "analysis")

    def evaluate_miou(feature_size: int) -> float:
        truncated = model.clone(feature_size=feature_size)
        evaluator = Evaluator(
            inference_apply_fn(truncated),
            num_classes=info.num_classes,
            ignore_index=info.ignore_index,
        )
        batches = _batches(source, info, flag_values, f"feature size {feature_size}")
        return float(evaluator(variables, batches).mean_iou)

    @functools.cache
    def macs_of(feature_size: int | None) -> float:
        return _macs(model.clone(feature_size=feature_size), input_size)

    rows = _stage(
        workdir,
        "truncation",
        lambda: truncation_rows(
            truncation_grids(model, variables, input_size),
            evaluate_miou,
            macs_of,
            analyses["labels"].mean_iou,
        ),
    )
    write_csv(workdir / "truncation.csv", rows)
    command = cli.command("analyze", argv)
    path = write_report(workdir, settings, analyses, rows, command)
    results = _results(settings, analyses, rows)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(path)
    return path


if __name__ == "__main__":
    cli.run(main)
