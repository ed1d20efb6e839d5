"""Train or read back a run: the experiments' training configs, trained and initial models.

Every experiment trains its models in sub-directories of its work directory, each the
trainer's own work directory (:func:`spectral_jax.training.train_and_evaluate`): a killed
experiment resumes, finished trainings are read back from their ``summary.json``
(:func:`train_once`) and unfinished ones resume from their checkpoints.

A setting is trained with several seeds through :func:`train_seeds`, the one function
every experiment trains its settings with: seeds ``config.seed + k`` for ``k < S``, each
today a standalone run in ``<workdir>/seed<seed>``; it returns a :class:`SeedRuns` (the
per-seed summaries, each seed's variables, the :class:`spectral_jax.evaluation.Spread` of
a summary's number). ``--num_seeds`` (:func:`experiments.cli.define_num_seeds`) sets
``S``.

The paper's models and data sets have short names here: ``"deeplab"`` and ``"dan"``
(:data:`MODEL_NAMES`), ``"pascal"``, ``"deepglobe"`` and ``"cityscapes"``
(:data:`experiments.paper_values.DATASETS`). A config on the embedded data
(``synthetic_scenes/*``, e.g. ``experiments/configs/tiny.py``) runs any of the three
data sets as the preset that mimics it; a paper config (``pascal.py``, ...) names its
data set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import ml_collections

from experiments import paper_values
from experiments.configs import cityscapes, deepglobe, pascal
from experiments.report import log
from spectral_jax.data import create_input_pipeline, dataset_info
from spectral_jax.evaluation import (
    EvaluationResult,
    Evaluator,
    Spread,
    compute_spread,
    inference_apply_fn,
)
from spectral_jax.models import create_model as create_model_from_config
from spectral_jax.models import input_shape
from spectral_jax.training import load_variables, train_and_evaluate, train_state

#: The paper's two models: ``config.model.name`` and the title used in reports.
MODEL_NAMES = {"deeplab": "deeplabv3plus", "dan": "dan"}
MODEL_TITLES = {"deeplab": "DeepLab v3+", "dan": "DAN"}
DATASET_TITLES = {"pascal": "PASCAL", "deepglobe": "DeepGlobe", "cityscapes": "Cityscapes"}
#: The real data set of each paper config, and the paper's name for each data set.
_PAPER_DATASET = {
    module.get_config().dataset: name
    for name, module in (("pascal", pascal), ("deepglobe", deepglobe), ("cityscapes", cityscapes))
}
_PAPER_DATASET.update({preset: name for name, preset in paper_values.PRESET_OF_DATASET.items()})


def is_embedded(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` trains on the embedded, generated data (``synthetic_scenes/*``)."""
    return str(config.dataset).startswith("synthetic_scenes/")


def paper_dataset(config: ml_collections.ConfigDict) -> str:
    """The paper's data set that ``config.dataset`` is (or, for a preset, stands for).

    Raises:
      ValueError: for a data set that stands for none of the paper's.
    """
    if config.dataset not in _PAPER_DATASET:
        raise ValueError(
            f"{config.dataset} is none of the paper's data sets {paper_values.DATASETS}."
        )
    return _PAPER_DATASET[config.dataset]


def datasets_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The paper's data sets ``config`` can train on: all three for the embedded data, else its own."""
    return paper_values.DATASETS if is_embedded(config) else (paper_dataset(config),)


def experiment_config(
    config: ml_collections.ConfigDict,
    *,
    model: str,
    dataset: str | None = None,
    self_evaluated: bool = False,
) -> ml_collections.ConfigDict:
    """A copy of ``config`` training ``model`` on ``dataset``, for the paper's experiments.

    Args:
      config: a training config (``--config``, with its overrides).
      model: ``"deeplab"`` or ``"dan"``; DAN takes the config's low-level width as the
        width of its stage projections.
      dataset: ``"pascal"``, ``"deepglobe"`` or ``"cityscapes"``: the embedded preset
        that mimics it for a config on the embedded data; a paper config must name it
        already. None keeps the config's data set.
      self_evaluated: the experiment evaluates the trained models itself (hard-pruned,
        truncated, with its own statistics): the trainer then evaluates once, at the
        end, without spectral statistics.

    Raises:
      ValueError: for an unknown model or data set, or a paper config of another data set.
    """
    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {tuple(MODEL_NAMES)}, got {model!r}.")
    if dataset is not None and dataset not in paper_values.DATASETS:
        raise ValueError(f"dataset must be one of {paper_values.DATASETS}, got {dataset!r}.")
    config = ml_collections.ConfigDict(config.to_dict())
    if dataset is not None and is_embedded(config):
        config.dataset = paper_values.PRESET_OF_DATASET[dataset]
    elif dataset is not None and paper_dataset(config) != dataset:
        raise ValueError(
            f"the config trains on {config.dataset}, not {dataset}: run the experiment once "
            f"per data set with its config (experiments/configs/{dataset}.py)."
        )
    config.model.name = MODEL_NAMES[model]
    if self_evaluated:
        config.eval_every_steps = -1
        config.spectral_statistics = False
    config.progress_bar = False
    config.tensorboard = False
    return config


def create_model(config: ml_collections.ConfigDict):
    """The untrained model of ``config`` (its classes from the data set)."""
    return create_model_from_config(
        config.model, num_classes=dataset_info(config.dataset).num_classes
    )


def initial_variables(model, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The variables the trainer starts from (same key and initialiser, no pretraining).

    :func:`spectral_jax.training.train_and_evaluate` initialises with the first key of
    :func:`spectral_jax.training.run_keys` on a zero batch of the model's input
    (:func:`spectral_jax.models.input_shape` at ``crop_size``).
    """
    init_key, _ = train_state.run_keys(int(config.seed))
    size, _, channels = input_shape(config.model, image_size=int(config.crop_size))
    return train_state.init_variables(model, init_key, image_size=size, channels=channels)


def train_once(config: ml_collections.ConfigDict, workdir: os.PathLike | str) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` unless a finished run is there; returns its summary.

    A run without ``summary.json`` resumes from its latest checkpoint
    (:func:`spectral_jax.training.train_and_evaluate`).
    """
    workdir = pathlib.Path(workdir)
    summary_path = workdir / "summary.json"
    if summary_path.exists():
        log(f"  {workdir}: finished earlier, reading {summary_path.name}")
        return json.loads(summary_path.read_text())
    log(f"  {workdir}: training ({config.model.name}, {config.dataset})")
    return train_and_evaluate(config, workdir)


def restore_trained(config: ml_collections.ConfigDict, workdir: os.PathLike | str):
    """``(model, variables)`` of the latest checkpoint of a run trained with ``config``."""
    return create_model(config), load_variables(workdir)


def evaluate_model(
    model, variables, config: ml_collections.ConfigDict, **options: Any
) -> EvaluationResult:
    """``model``'s evaluation over ``config.eval_split`` (:class:`spectral_jax.evaluation.
    Evaluator`): mIoU, IoU, loss, and what ``options`` ask for.

    Args:
      model: a Flax segmentation model ``[B, H, W, 3] -> [B, H, W, C]``.
      variables: its variables.
      config: gives the data set, split, evaluation crop and batch size.
      **options: of the evaluator: ``spectral_statistics``, ``with_magnitudes``,
        ``boundary_metrics``, ``num_examples`` (keep the first images, labels and
        predictions).
    """
    pipeline = create_input_pipeline(config)
    evaluator = Evaluator(
        inference_apply_fn(model),
        num_classes=pipeline.num_classes,
        ignore_index=pipeline.ignore_index,
        **options,
    )
    return evaluator(variables, pipeline.eval_batches(int(config.eval_batch_size), 0, 1))


# --------------------------------------------------------------------------------------
# Several seeds of one setting.

#: Seeds per setting on the embedded data when ``--num_seeds`` is not given
#: (:func:`experiments.cli.define_num_seeds`); a paper config trains one unless asked.
DEFAULT_NUM_SEEDS = 3


def num_seeds_of(num_seeds: int | None, config: ml_collections.ConfigDict) -> int:
    """``num_seeds`` (``--num_seeds``), or :data:`DEFAULT_NUM_SEEDS` on the embedded data and
    1 with a paper config when None."""
    if num_seeds is not None:
        return int(num_seeds)
    return DEFAULT_NUM_SEEDS if is_embedded(config) else 1


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """A copy of ``config`` that trains one replica with ``seed``."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.seed = int(seed)
    if "num_seeds" in config:  # the trainer's replica count: one per run here
        config.num_seeds = 1
    return config


@dataclasses.dataclass(frozen=True)
class SeedRuns:
    """The trainings of one setting with seeds ``config.seed + k``, ``k < num_seeds``.

    Attributes:
      config: the setting's config (its ``seed`` the first seed's).
      workdir: the setting's directory (today one run per seed in ``seed<seed>``).
      summaries: the trainer's summary of each seed, in seed order.
    """

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    summaries: tuple[dict[str, Any], ...]

    @property
    def num_seeds(self) -> int:
        return len(self.summaries)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds, ``config.seed + k``."""
        return tuple(int(self.config.seed) + k for k in range(self.num_seeds))

    def seed_config(self, k: int) -> ml_collections.ConfigDict:
        """The config of seed ``k`` (``seed = config.seed + k``)."""
        return seed_config(self.config, self.seeds[k])

    def seed_workdir(self, k: int) -> pathlib.Path:
        """The trainer's work directory of seed ``k``."""
        return self.workdir / f"seed{self.seeds[k]}"

    def variables(self, k: int) -> dict[str, Any]:
        """The trained variables of seed ``k`` (its latest checkpoint)."""
        return load_variables(self.seed_workdir(k))

    def initial_variables(self, k: int, model) -> dict[str, Any]:
        """The variables seed ``k`` started from (:func:`initial_variables`)."""
        return initial_variables(model, self.seed_config(k))

    def spread(self, key: str) -> Spread:
        """The :class:`spectral_jax.evaluation.Spread` over seeds of ``summaries[k][key]``."""
        return compute_spread([float(summary[key]) for summary in self.summaries])


def train_seeds(
    config: ml_collections.ConfigDict, workdir: os.PathLike | str, *, num_seeds: int
) -> SeedRuns:
    """Trains ``config`` with seeds ``config.seed + k``, ``k < num_seeds``, in ``workdir``.

    Each seed is the standalone run of :func:`train_once` with ``config.seed + k`` in
    ``<workdir>/seed<seed>``: finished seeds are read back, an interrupted one resumes,
    and a rerun with more seeds trains only the new ones. The seeds run one after the
    other, not as the trainer's vmapped replicas (``config.num_seeds``): on the CPU the
    vmapped step does half the replica-steps per second (``benchmarks/bench_seeds.py``),
    and a replica equals the standalone run of its seed anyway.

    Args:
      config: the setting's training config.
      workdir: the setting's directory.
      num_seeds: ``S >= 1``.

    Returns:
      The :class:`SeedRuns` (per-seed summaries, variables and spreads).

    Raises:
      ValueError: if ``num_seeds < 1``.
    """
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}.")
    config = seed_config(config, int(config.seed))
    workdir = pathlib.Path(workdir)
    summaries = []
    for k in range(num_seeds):
        seed = int(config.seed) + k
        summaries.append(train_once(seed_config(config, seed), workdir / f"seed{seed}"))
    return SeedRuns(config, workdir, tuple(summaries))
