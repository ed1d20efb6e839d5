r"""The whole story in one command: train, decompose, sweep, differentiate, truncate, weaken.

Launch from the repository root (``make demo`` runs the first form)::

  python -m experiments.demo --workdir runs/demo           # 400 steps, 4 seeds, see below
  python -m experiments.demo --workdir runs/demo --num_seeds=1   # one seed
  python -m experiments.demo --workdir runs/demo --config.num_train_steps=1000   # longer
  python -m experiments.demo --workdir /tmp/demo \
      --config experiments/configs/demo.py:quick --nofull_size_flops   # the test's, ~1 min

On the embedded data set (``synthetic_scenes/pascal_like``: 300 training and 50 validation
scenes of 129 x 129 pixels, 21 classes with VOC's names, generated and built into TFDS on
first use, no download) the script composes the experiments' sections:

1. builds the data set (into ``<workdir>/tfds`` unless ``--config.data_dir`` is given)
   and shows a few scenes;
2. trains the tiny DeepLab v3+ of ``experiments/configs/demo.py`` (``tiny.py``'s model,
   65 x 65 crops, batch 8) for ``config.num_train_steps`` steps, 400 by default, with
   ``--num_seeds`` seeds (4 by default: ``config.seed + k``) into
   ``<workdir>/train/seed<seed>`` (:func:`experiments.runs.train_seeds`);
3. decomposes its cross-entropy on the validation scenes at initialisation and after
   training (:func:`experiments.ce_spectrum.model_section`: band profile, ``R(nu_max)``
   beside Table 1, magnitude profiles, of the first seed; ``R(nu_max)`` of every seed);
4. sweeps every band limit in one jitted, vmapped call over the first seed's
   predictions and the three presets' blurred ground truth
   (:func:`experiments.band_limit_sweep.sweep_section`);
5. computes exact spectral-Jacobian rows of the CE at the ASPP features and of the trained
   decoder's first convolution (first seed) (:func:`experiments.spectral_gradient.model_section`);
6. evaluates every seed's trained model with its decoder truncated to Table 2's grids, with MACs
   and FPI (:func:`experiments.feature_truncation.model_section`), and counts the
   full-size ResNet-101 DeepLab v3+ at 513 x 513 beside the paper's 139 / 107 / 98 G
   (:func:`experiments.flops_table.full_size_section`; ``--nofull_size_flops`` skips it);
7. trains the same model for the same steps and seeds on block-wise labels at the
   ``--block_band_limits`` (Table 3, :func:`experiments.blockwise_annotation.model_section`:
   relative mIoU paired by seed).

Every number that depends on the training is reported as mean ± std over the seeds with
the 95 % t interval of the mean (:mod:`spectral_jax.evaluation.spread`), and the report
says which of the paper's claims the intervals support, contradict or cannot decide. The
"Headline numbers" section gathers them with the CPU they were measured on: another CPU
gives other single-run numbers (XLA's kernels and float32 reduction order differ), which
the spread over seeds covers.

Everything lands in ``--workdir``: ``report.md`` (tables with the paper's numbers beside
ours, figures), ``results.json`` (every number of the report), the PNG figures, and one
trainer directory per trained model and seed. Rerunning skips the finished trainings
(:func:`experiments.runs.train_seeds`) and resumes an interrupted one from its
checkpoint; the analyses are recomputed (seconds). Progress goes to stderr, the report's
path to stdout. The report's "Run" section gives the wall and CPU time of the run.

Measured (``make timings``: ``make demo`` on a fresh clone, the data set built from
scratch, nothing else running; jax 0.10.2, 2-core CPU): 138 s wall, 211 s CPU
with the 4 default seeds and 400 steps.
"""

from __future__ import annotations

import functools
import json
import pathlib
import resource
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from experiments import (
    band_limit_sweep,
    blockwise_annotation,
    ce_spectrum,
    cli,
    feature_truncation,
    flops_table,
    paper_values,
    runs,
    spectral_gradient,
)
from experiments.report import Report, colour_labels, cpu_model, format_spread, log, pyplot
from spectral_jax import data
from spectral_jax.evaluation import compute_spread

DATASET = "synthetic_scenes/pascal_like"
#: Seeds of every training (``--num_seeds``): ``make demo`` stays under 5 minutes on 2
#: cores (see the module docstring for the measured time).
DEMO_NUM_SEEDS = 4
#: Scenes per batch of the demo's own evaluations (the trainer's: ``config.eval_batch_size``).
EVAL_BATCH_SIZE = 10


#: Why the headline numbers come with their spread over seeds.
CPU_NOTE = (
    "Another CPU gives other single-run numbers: XLA compiles its kernels for the CPU at "
    "hand (vector width, threads), which can change the order of float32 reductions and "
    "so the rounding of a training, and hundreds of SGD steps amplify such differences "
    "like another seed would (the same commit gave mIoU 0.815 on one "
    "2-core x86-64 machine and 0.871 on another, bit-identical between runs on each). "
    "The spread over seeds measures that variation; compare numbers by their intervals."
)


def training_config(
    config: ml_collections.ConfigDict, *, data_dir: str, block_band_limit: int | None = None
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the data directory, labels and checkpoint intervals set."""
    config = ml_collections.ConfigDict(config.to_dict())
    steps = int(config.num_train_steps)
    config.data_dir = data_dir
    config.block_band_limit = block_band_limit
    config.checkpoint_every_steps = max(1, min(100, steps))
    config.log_every_steps = max(1, min(25, steps))
    # The demo computes the spectra of the trained models itself (section 3): the
    # trainer's final evaluation gives the mIoU and pixel accuracy only.
    config.spectral_statistics = False
    config.boundary_metrics = False
    return config


def _cpu_seconds() -> float:
    """CPU time of this process and its children (all threads), seconds."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _progress(start: float, message: str) -> None:
    wall = time.perf_counter() - start
    log(f"[{wall:6.1f} s wall, {_cpu_seconds():6.1f} s CPU] {message}")


def data_section(report: Report, data_dir: str, num_eval: int) -> dict[str, Any]:
    """Adds a few validation scenes and their labels; returns the data's settings."""
    source = data.load_split(DATASET, "validation", data_dir=data_dir)
    info = data.dataset_info(DATASET)
    fig, axes = pyplot().subplots(2, 4, figsize=(9.6, 5), layout="constrained")
    for k in range(4):
        image, labels = np.asarray(source[k]["image"]), np.asarray(source[k]["label"])
        axes[0, k].imshow(image)
        axes[1, k].imshow(colour_labels(labels, info.num_classes))
        present = sorted({int(c) for c in np.unique(labels)} - {info.ignore_index})
        axes[1, k].set_title(", ".join(info.class_names[c] for c in present), fontsize=7)
        for ax in axes[:, k]:
            ax.set_axis_off()
    size = image.shape[0]
    report.heading("1. Data")
    report.paragraph(
        f"`{DATASET}`: procedurally generated scenes of {size} x {size} pixels "
        f"with PASCAL VOC's {info.num_classes} classes (one to three smooth objects with "
        "narrow limbs on a background, a one-pixel ignore contour along the boundaries as "
        "VOC's), 300 training and 50 validation scenes, built into TFDS at "
        f"`{data_dir}` on first use (no download). Each class has its own colour "
        f"and texture, so a tiny model can learn it. Evaluated here: the first "
        f"{num_eval} validation scenes."
    )
    report.figure(fig, "data_examples.png", "Validation scenes and their labels (white: ignored).")
    return {"dataset": DATASET, "data_dir": data_dir, "num_eval": num_eval}


def training_section(report: Report, config, seed_runs: runs.SeedRuns, trained) -> dict[str, Any]:
    """Adds the trained models' size and validation mIoU over seeds beside the paper's."""
    num_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(trained["params"]))
    paper_params = paper_values.ENCODER_MPARAMS + paper_values.DECODER_MPARAMS["deeplab"]
    steps = seed_runs.summaries[0]["steps"]
    report.heading("2. Training")
    report.paragraph(
        f"Tiny DeepLab v3+ (`experiments/configs/tiny.py`: `resnet_tiny` backbone, "
        f"{config.model.aspp_channels}-channel ASPP, {config.crop_size} x {config.crop_size} "
        f"crops, batch {config.batch_size}, SGD with the poly schedule from "
        f"{config.learning_rate}) trained from scratch for {steps} steps with "
        f"{seed_runs.num_seeds} seeds ({', '.join(map(str, seed_runs.seeds))}: initialisation, "
        f"data order) in `{seed_runs.workdir}`: {num_params / 1e6:.3f} M parameters against "
        f"the paper's {paper_params:.1f} M (ResNet-101 pretrained on ImageNet). mIoU and "
        "pixel accuracy: mean ± std over the seeds and the 95 % t interval of the mean."
    )
    miou, accuracy = seed_runs.spread("mean_iou"), seed_runs.spread("pixel_accuracy")
    ours = ["tiny DeepLab v3+ (ours)", DATASET, steps, format_spread(miou)]
    paper = ["DeepLab v3+ ResNet-101 (paper, Table 2)", "PASCAL VOC 2012 val", "100 epochs"]
    paper.append(paper_values.TABLE2_MIOU[0.0]["pascal"][0] / 100)
    report.table(
        ["model", "data", "steps", "mIoU", "pixel accuracy"],
        [[*ours, format_spread(accuracy)], [*paper, None]],
    )
    return {
        "num_params": num_params,
        "seeds": list(seed_runs.seeds),
        "mean_iou_per_seed": list(miou.values),
        "pixel_accuracy_per_seed": list(accuracy.values),
        **miou.columns("mean_iou"),
        **accuracy.columns("pixel_accuracy"),
        "steps": steps,
        "workdir": str(seed_runs.workdir),
    }


def headline_section(
    report: Report, results: dict[str, Any], num_seeds: int, cpu_name: str
) -> dict[str, str]:
    """Adds the headline numbers (each with its spread over seeds); returns their text."""
    training = results["training"]
    spreads = results["ce_spectrum"]["seeds"]["per_seed"]["trained"]
    lines = {
        "mIoU (pixel-wise labels)": format_spread(compute_spread(training["mean_iou_per_seed"])),
        **{
            f"R({nu}) trained": format_spread(compute_spread(values), 4)
            for nu, values in spreads.items()
        },
        **{
            f"relative mIoU, block-wise ν_max = {r['eval_band_limit']} (scene)": format_spread(
                compute_spread(r["relative_mean_iou_per_seed"])
            )
            for r in results["blockwise"]["records"]
        },
    }
    per_seed = results["truncation"]["per_seed"]  # [S][grids]
    for index, row in enumerate(results["truncation"]["rows"][1:], start=1):
        values = [records[index]["mean_iou"] for records in per_seed]
        lines[f"mIoU, decoder truncated to F = {row['feature_size']}"] = format_spread(
            compute_spread(values)
        )
    report.heading("Headline numbers")
    report.paragraph(
        f"Mean ± std over {num_seeds} seeds with the 95 % t interval of the mean, measured "
        f"on {cpu_name}. " + CPU_NOTE
    )
    report.table(["quantity", "value"], list(lines.items()))
    return lines


def define_flags(flag_values: flags.FlagValues) -> None:
    """The flags of ``python -m experiments.demo`` besides ``--config``, ``--workdir``."""
    cli.define_num_seeds(flag_values, DEMO_NUM_SEEDS)
    cli.define_list(
        flag_values,
        "block_band_limits",
        [4, 8],
        "Band limits of the block-wise labels on the training crops.",
        element=int,
    )
    flags.DEFINE_boolean(
        "full_size_flops",
        True,
        "Count the ResNet-101 DeepLab v3+ at 513 x 513 (shapes only, ~15 s).",
        flag_values=flag_values,
    )


def main(argv: Sequence[str]) -> pathlib.Path:
    """Runs the demo on the command line ``argv``; returns the path of ``report.md``."""
    flag_values = cli.parse(
        argv,
        name="demo",
        doc=__doc__,
        define_flags=define_flags,
        config="demo.py",
        config_help="Default: the tiny DeepLab v3+ trained for 400 steps.",
    )
    start = time.perf_counter()
    progress = functools.partial(_progress, start)
    workdir = pathlib.Path(flag_values.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = str(flag_values.config.data_dir or workdir / "tfds")
    config = training_config(flag_values.config, data_dir=data_dir)
    analysis = config.copy_and_resolve_references()  # the config of the demo's evaluations
    analysis.eval_batch_size = EVAL_BATCH_SIZE
    num_eval = len(data.load_split(DATASET, config.eval_split, data_dir=data_dir))
    settings = {  # What this run does; results.json records it.
        "steps": int(config.num_train_steps),
        "num_eval": num_eval,  # the first validation scenes
        "block_band_limits": flag_values.block_band_limits,  # on the training crops
        "full_size_flops": flag_values.full_size_flops,
        "data_dir": data_dir,
    }
    log(f"demo: {settings}; JAX {jax.__version__} on {jax.default_backend()}")
    results: dict[str, Any] = {"settings": settings}
    report = Report(
        workdir, "spectral_jax demo: the spectral analysis of a segmentation network, end to end"
    )
    report.paragraph(
        "Chen, Chiu, Wu, *Spectral Analysis for Semantic Segmentation with Applications on "
        "Feature Truncation and Weak Annotation*, redone at toy scale on the embedded data "
        "set with a tiny DeepLab v3+ on CPU. The paper's numbers (ResNet-101 DeepLab v3+, "
        "PASCAL VOC 2012, 513 x 513, 100 epochs on GPUs) stand beside ours for orientation: "
        "the model (section 2), the data (generated 129 x 129 scenes) "
        "and the training (minutes of CPU) all differ, so compare trends, not values."
    )
    progress("[1/7] data")
    results["data"] = data_section(report, data_dir, num_eval)

    num_seeds = int(flag_values.num_seeds)
    progress(
        f"[2/7] training the tiny DeepLab v3+ for {settings['steps']} steps, {num_seeds} seeds"
    )
    seed_runs = runs.train_seeds(config, workdir / "train", num_seeds=num_seeds)
    model = runs.create_model(config)
    variables = [seed_runs.variables(k) for k in range(num_seeds)]
    trained = variables[0]
    results["training"] = training_section(report, config, seed_runs, trained)

    progress("[3/7] CE spectrum at initialisation and after training, every seed")
    spectra_per_seed = [
        {
            "init": ce_spectrum.evaluate_spectra(
                model, seed_runs.initial_variables(k, model), analysis
            ),
            "trained": ce_spectrum.evaluate_spectra(model, variables[k], analysis),
        }
        for k in range(num_seeds)
    ]
    spectra = ce_spectrum.ModelSpectra(spectra_per_seed)
    heading = "3. The spectrum of the CE (Fig. 1, Fig. 2, Table 1)"
    title = f"tiny DeepLab v3+ (seed {seed_runs.seeds[0]})"
    ce_spectrum.model_section(
        report,
        spectra,
        heading=heading,
        title=title,
        model="deeplab",
        dataset="pascal",
        figure="ce_spectrum.png",
    )
    results["ce_spectrum"] = spectra.to_json()

    progress("[4/7] band-limit sweep: one vmap over predictions and band limits (first seed)")
    images, labels = band_limit_sweep.evaluation_batch(config, num_eval)
    logits = band_limit_sweep.predict(model, trained, images, EVAL_BATCH_SIZE)
    sweep = band_limit_sweep.preset_sweep(
        logits, labels, name="tiny DeepLab v3+ (trained), pascal_like"
    )
    heading = "4. Band-limit sweep in one vmap (data sets differ)"
    band_limit_sweep.sweep_section(
        report,
        sweep,
        heading=heading,
        intro=band_limit_sweep.preset_intro(sweep, num_images=num_eval),
        paper=[("deeplab", dataset) for dataset in paper_values.DATASETS],
        figure="band_limit_sweep.png",
    )
    results["sweep"] = sweep.to_json()

    progress("[5/7] spectral Jacobians of the trained model (first seed)")
    jacobians = spectral_gradient.model_jacobians(model, trained, images[:1], labels[0])
    heading = "5. Spectral Jacobians (Fig. 4)"
    spectral_gradient.model_section(report, jacobians, heading=heading)
    results["spectral_gradient"] = jacobians.to_json()

    progress("[6/7] truncated feature sizes, every seed")
    heading = "6. Feature truncation (Table 2, no pruning)"
    per_seed = [
        feature_truncation.truncated_model_rows(model, variables[k], analysis)
        for k in range(num_seeds)
    ]
    model_truncation = feature_truncation.ModelTruncation(per_seed, int(analysis.eval_crop_size))
    feature_truncation.model_section(report, model_truncation, heading=heading)
    truncation = model_truncation.to_json()
    if flag_values.full_size_flops:
        progress("      full-size ResNet-101 FLOPs at 513 x 513 (shapes only)")
        truncation["full_size"] = flops_table.full_size_section(report)
    results["truncation"] = truncation

    progress("[7/7] block-wise annotation")
    weak_mean_iou = {}
    for band_limit in flag_values.block_band_limits:
        weak = training_config(config, data_dir=data_dir, block_band_limit=band_limit)
        weak_runs = runs.train_seeds(
            weak, workdir / f"train_blockwise_nu{band_limit}", num_seeds=num_seeds
        )
        weak_mean_iou[band_limit] = [s["mean_iou"] for s in weak_runs.summaries]
    blockwise = blockwise_annotation.model_blockwise(
        weak_mean_iou,
        [s["mean_iou"] for s in seed_runs.summaries],
        [s["trained"]["relative_discrepancy"] for s in spectra_per_seed],
        crop_size=int(config.crop_size),
        eval_size=labels.shape[1],
    )
    blockwise_annotation.model_section(
        report,
        blockwise,
        labels[0],
        heading="7. Block-wise annotation (Table 3, Fig. 6, Fig. 7)",
        num_classes=logits.shape[-1],
    )
    results["blockwise"] = blockwise.to_json()

    cpu, wall = _cpu_seconds(), time.perf_counter() - start
    cpu_name = cpu_model()
    results["headline"] = headline_section(report, results, num_seeds, cpu_name)
    results["time"] = {"wall_s": wall, "cpu_s": cpu, "cpu_model": cpu_name}
    report.heading("Run")
    report.paragraph(
        f"`{cli.command('demo', argv)}`: {wall:.0f} s wall clock, {cpu:.0f} s CPU time (this "
        "process and its children; a run that resumed finished trainings is shorter), JAX "
        f"{jax.__version__} on {jax.default_backend()}, CPU: {cpu_name}."
    )
    report.paragraph(
        "What this run trades for time: "
        f"{settings['steps']} training steps per model (the default, 400, keeps the demo "
        "within 5 minutes on 2 cores; the training has not converged there, and 1000 steps "
        "give a clearly better model: `--config.num_train_steps=1000`), "
        f"{num_seeds} seeds (`--num_seeds`: the intervals narrow with more) and the first "
        f"{num_eval} validation scenes (`--config.eval_split`)."
    )
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    path = report.write()
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    cli.run(main)
