"""Several seeds in one compiled program (``config.num_seeds``): replica k is the run with
seed ``config.seed + k``."""

from __future__ import annotations

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats

from spectral_jax import parallel
from spectral_jax.models import create_model
from spectral_jax.models import pruning as pruning_lib
from spectral_jax.training import (
    checkpointing,
    load_variables,
    steps,
    train,
    train_and_evaluate,
    train_state,
)
from tests.helpers.training import generated_pipeline, tiny_test_config

STEPS = 4
SEEDS = (3, 4)
# At the tiny config's learning rate (0.05) a relative change of 1e-7 in the initial
# parameters (the size of a float32 rounding) grows to 1e-3 in four steps, and the
# vmapped convolutions sum in another order than the plain ones: at 1e-3 the
# replicas' and the plain runs' parameters agree to the float32 rounding itself.
LEARNING_RATE = 1e-3


def _config(*, num_seeds: int, seed: int):
    config = tiny_test_config(steps=STEPS)
    config.learning_rate = LEARNING_RATE
    config.num_seeds = num_seeds
    config.seed = seed
    return config


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory):
    """One run of ``len(SEEDS)`` replicas and one plain run per seed."""
    pipeline = generated_pipeline(crop_size=33)
    root = tmp_path_factory.mktemp("seeds")
    config = _config(num_seeds=len(SEEDS), seed=SEEDS[0])
    replicas = (
        root / "replicas",
        train_and_evaluate(config, root / "replicas", input_pipeline=pipeline),
    )
    plain = {
        seed: (
            root / f"seed{seed}",
            train_and_evaluate(
                _config(num_seeds=1, seed=seed), root / f"seed{seed}", input_pipeline=pipeline
            ),
        )
        for seed in SEEDS
    }
    return pipeline, replicas, plain


def _max_difference(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in leaves)


@pytest.mark.parametrize("replica", range(len(SEEDS)))
def test_replica_equals_the_run_with_its_seed(seeded_runs, replica):
    _, (workdir, summary), plain = seeded_runs
    plain_workdir, plain_summary = plain[SEEDS[replica]]
    got = load_variables(workdir, replica=replica)
    want = load_variables(plain_workdir)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert _max_difference(got, want) < 1e-5
    # Not the same model whatever the seed: the other replica is far away.
    other = load_variables(workdir, replica=1 - replica)
    assert _max_difference(other, want) > 0.1
    numbers = summary["replicas"][replica]
    assert numbers["seed"] == SEEDS[replica]
    assert numbers["mean_iou"] == pytest.approx(plain_summary["mean_iou"], abs=1e-3)
    assert numbers["mean_ce"] == pytest.approx(plain_summary["mean_ce"], rel=1e-4)
    assert numbers["relative_discrepancy"]["8"] == pytest.approx(
        plain_summary["relative_discrepancy"]["8"], rel=1e-3
    )


def test_summary_and_metrics_of_the_replicas(seeded_runs):
    _, (workdir, summary), _ = seeded_runs
    assert json.loads((workdir / "summary.json").read_text()) == summary
    assert summary["seeds"] == list(SEEDS)
    per_replica = [r["mean_iou"] for r in summary["replicas"]]
    assert summary["mean_iou"] == pytest.approx(np.mean(per_replica), rel=1e-12)
    assert summary["iou"]["disk"] == pytest.approx(
        np.mean([r["iou"]["disk"] for r in summary["replicas"]]), rel=1e-12
    )
    # The spread: sample std and the Student-t 95 % interval of the mean (scipy).
    for name in ("mean_iou", "eval_loss", "relative_discrepancy/8"):
        group, _, key = name.partition("/")
        values = np.array(
            [r[group][key] if key else r[group] for r in summary["replicas"]], np.float64
        )
        spread = summary["spread"][name]
        half = scipy.stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1)
        half /= np.sqrt(len(values))
        assert spread["n"] == len(SEEDS)
        np.testing.assert_allclose(spread["mean"], values.mean(), rtol=1e-12)
        np.testing.assert_allclose(spread["std"], values.std(ddof=1), rtol=1e-12)
        np.testing.assert_allclose(
            spread["ci95"], [values.mean() - half, values.mean() + half], rtol=1e-9
        )
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if "eval/mean_iou" in r][-1]
    for k, value in enumerate(per_replica):
        assert last_eval[f"eval/replica{k}/mean_iou"] == pytest.approx(value)
    train_log = [r for r in records if "train/loss" in r][-1]
    assert train_log["train/loss"] == pytest.approx(
        np.mean([train_log[f"train/replica{k}/loss"] for k in range(len(SEEDS))]), rel=1e-6
    )


def test_load_variables_names_the_replica(seeded_runs):
    _, (workdir, _), plain = seeded_runs
    with pytest.raises(ValueError, match="replica=k"):
        load_variables(workdir)
    with pytest.raises(ValueError, match="replica must lie"):
        load_variables(workdir, replica=len(SEEDS))
    plain_workdir, _ = plain[SEEDS[0]]
    assert jax.tree.structure(load_variables(plain_workdir, replica=0)) == jax.tree.structure(
        load_variables(plain_workdir)
    )
    with pytest.raises(ValueError, match="holds one model"):
        load_variables(plain_workdir, replica=1)


def test_replicas_resume_to_the_uninterrupted_state(seeded_runs, tmp_path):
    pipeline, (workdir, summary), _ = seeded_runs
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))
    config = _config(num_seeds=len(SEEDS), seed=SEEDS[0])
    summary_resumed = train_and_evaluate(config, resumed, input_pipeline=pipeline)
    assert summary_resumed["resumed_from_step"] == STEPS // 2
    want, _ = checkpointing.load_checkpoint(workdir)
    got, _ = checkpointing.load_checkpoint(resumed)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert summary_resumed["replicas"] == summary["replicas"]
    # Another number of seeds cannot resume from these checkpoints.
    other = _config(num_seeds=len(SEEDS) + 1, seed=SEEDS[0])
    with pytest.raises(checkpointing.CheckpointError, match="seeds"):
        train_and_evaluate(other, resumed, input_pipeline=pipeline)


@pytest.mark.parametrize("num_seeds", [0, -1, 1.5, True, "2"])
def test_bad_num_seeds_is_refused(num_seeds):
    config = ml_collections.ConfigDict({"seed": 0, "num_seeds": num_seeds})
    with pytest.raises(ValueError, match="num_seeds"):
        train.replica_seeds(config)


def test_replica_seeds_and_keys():
    config = tiny_test_config()
    config.seed, config.num_seeds = 7, 3
    assert train.replica_seeds(config) == (7, 8, 9)
    init_keys, dropout_keys = train.replica_keys((7, 8, 9))
    for k, seed in enumerate((7, 8, 9)):
        want_init, want_dropout = train_state.run_keys(seed)
        np.testing.assert_array_equal(
            jax.random.key_data(init_keys[k]), jax.random.key_data(want_init)
        )
        np.testing.assert_array_equal(
            jax.random.key_data(dropout_keys[k]), jax.random.key_data(want_dropout)
        )


@pytest.mark.slow
def test_soft_pruning_of_replicas_prunes_each_by_its_own_norms():
    config = tiny_test_config()
    model = create_model(config.model, num_classes=3)
    optimizer = train_state.create_optimizer(
        train_state.poly_schedule(0.01, total_steps=4), momentum=0.9, weight_decay=0.0
    )
    states = [
        train_state.create_train_state(
            model,
            train_state.init_variables(model, jax.random.key(seed), image_size=33),
            optimizer,
        )
        for seed in (0, 1)
    ]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    pruning = {"encoder": 0.5, "decoder": 0.25}
    prune_stacked = steps.create_soft_prune_fn(model, pruning, over_replicas=True)
    prune_one = steps.create_soft_prune_fn(model, pruning)
    want = [jax.device_get(prune_one(state).params) for state in states]
    got = jax.device_get(prune_stacked(stacked).params)
    for k in range(2):
        for a, b in zip(
            jax.tree.leaves(jax.tree.map(lambda leaf, k=k: leaf[k], got)),
            jax.tree.leaves(want[k]),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    # Different replicas lose different filters somewhere.
    differ = 0
    for conv in pruning_lib.pruning_plan(model, pruning_lib.PruningRates(**pruning)).convs:
        kernel = functools.reduce(lambda node, key: node[key], conv.path.split("/"), got)["kernel"]
        zero = np.all(kernel.reshape(2, -1, kernel.shape[-1]) == 0, axis=1)
        assert zero[0].sum() == zero[1].sum() > 0, conv.path
        differ += not np.array_equal(zero[0], zero[1])
    assert differ > 0


def test_replica_batches_are_split_along_their_second_axis():
    mesh = parallel.create_mesh()
    batch = {"label": np.arange(2 * 4 * 3, dtype=np.int32).reshape(2, 4, 3)}
    placed = parallel.shard_batch(batch, mesh, batch_axis=1)["label"]
    assert placed.shape == (2, 4, 3)
    assert placed.sharding.spec == jax.sharding.PartitionSpec(None, parallel.DATA_AXIS)
    np.testing.assert_array_equal(np.asarray(placed), batch["label"])
    with pytest.raises(ValueError, match="batch_axis"):
        parallel.batch_sharding(mesh, batch_axis=-1)
