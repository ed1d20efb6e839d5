"""``experiments.runs.train_seeds``: seed ``k`` of a setting is the standalone run with seed
``config.seed + k`` (same summary, same variables), finished seeds are read back, and a
rerun with more seeds trains only the new ones. The training test is ``slow`` (five
two-step trainings, about 2.5 min on 2 shared cores, most of it compilation)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import runs
from experiments.configs import tiny
from spectral_jax.training import load_variables


@pytest.fixture(scope="module")
def config(data_dir):
    config = tiny.get_config()
    config.update(num_train_steps=2, crop_size=33, batch_size=2, eval_batch_size=4, seed=5)
    config.update(eval_split="validation[:4]", data_dir=data_dir)
    return runs.experiment_config(config, model="deeplab", dataset="pascal", self_evaluated=True)


@pytest.mark.slow
def test_seeds_are_standalone_runs_and_resume(config, tmp_path):
    seed_runs = runs.train_seeds(config, tmp_path / "setting", num_seeds=2)
    assert seed_runs.seeds == (5, 6) and seed_runs.num_seeds == 2
    assert [p.name for p in sorted((tmp_path / "setting").iterdir())] == ["seed5", "seed6"]
    for k, seed in enumerate((5, 6)):
        standalone = runs.experiment_config(config, model="deeplab")
        standalone.seed = seed
        summary = runs.train_once(standalone, tmp_path / f"alone{seed}")
        assert seed_runs.summaries[k]["mean_iou"] == summary["mean_iou"]
        assert seed_runs.seed_config(k).seed == seed
        jax.tree.map(
            np.testing.assert_array_equal,
            seed_runs.variables(k),
            load_variables(tmp_path / f"alone{seed}"),
        )
        initial = seed_runs.initial_variables(k, runs.create_model(config))
        expected = runs.initial_variables(runs.create_model(standalone), standalone)
        jax.tree.map(np.testing.assert_array_equal, initial, expected)
    # The two seeds differ (other initialisation and data order).
    assert not np.array_equal(
        jax.tree.leaves(seed_runs.variables(0))[0], jax.tree.leaves(seed_runs.variables(1))[0]
    )
    spread = seed_runs.spread("mean_iou")
    assert spread.values == tuple(s["mean_iou"] for s in seed_runs.summaries)

    # Rerun with a third seed: the first two are read back, not retrained.
    stamps = {
        s: (tmp_path / "setting" / f"seed{s}" / "summary.json").stat().st_mtime_ns for s in (5, 6)
    }
    more = runs.train_seeds(config, tmp_path / "setting", num_seeds=3)
    assert more.summaries[:2] == seed_runs.summaries and more.seeds == (5, 6, 7)
    for seed, stamp in stamps.items():
        assert (tmp_path / "setting" / f"seed{seed}" / "summary.json").stat().st_mtime_ns == stamp


def test_num_seeds_defaults_and_checks(config):
    assert runs.num_seeds_of(None, config) == runs.DEFAULT_NUM_SEEDS
    assert runs.num_seeds_of(2, config) == 2
    paper = runs.experiment_config(config, model="deeplab")
    paper.dataset = "voc_sbd"
    assert runs.num_seeds_of(None, paper) == 1
    with pytest.raises(ValueError, match="num_seeds"):
        runs.train_seeds(config, "unused", num_seeds=0)
