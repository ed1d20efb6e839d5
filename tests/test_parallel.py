"""Tests of spectral_jax.parallel: the sharded steps equal the single-device ones.

The main test process has already initialised JAX with one CPU device, so the
four-device runs happen in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; it writes its results to an
``.npz`` file that the test compares.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from spectral_jax import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The subprocess: one train step and one eval step of a small conv + BatchNorm model on a
# batch of 8, once on a single device and once over a 4-device "data" mesh; then the
# evaluator over two batches (the second short, padded), without and with the mesh.
_SCRIPT = textwrap.dedent(
    """
    import functools, sys
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from spectral_jax import parallel
    from spectral_jax.evaluation import Evaluator, eval_step, inference_apply_fn
    from spectral_jax.statistics import SpectralStatistics
    from spectral_jax.training import steps, train_state

    assert jax.device_count() == 4, jax.devices()

    class Small(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(6, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
            x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
            return nn.Conv(3, (1, 1))(x)

    def compare(size):
        rng = np.random.default_rng(0)
        batch = {
            "image": rng.standard_normal((8, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, 3, size=(8, size, size)).astype(np.int32),
        }
        batch["label"][1, :3] = 255
        model = Small()
        variables = model.init(jax.random.key(0), jnp.asarray(batch["image"][:1]))
        schedule = train_state.poly_schedule(0.1, total_steps=10)
        optimizer = train_state.create_optimizer(schedule, weight_decay=1e-3)
        state = train_state.create_train_state(model, variables, optimizer)
        step = functools.partial(
            steps.train_step, learning_rate_fn=schedule, dropout_key=jax.random.key(3)
        )
        evaluate = functools.partial(
            eval_step, apply_fn=inference_apply_fn(model), num_classes=3, boundary_metrics=True
        )
        stats = SpectralStatistics.create((size, size), 3)

        def run(state, batch, step_fn, eval_fn, stats):
            out = {}
            for i in range(2):
                state, metrics = step_fn(state, batch)
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            sums, stats, _ = eval_fn(variables, batch, stats)
            for prefix, tree in (("params", state.params), ("batch_stats", state.batch_stats),
                                 ("metrics", metrics), ("sums", sums)):
                for path, leaf in jax.tree.leaves_with_path(tree):
                    out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
            out["band_ce"] = np.asarray(stats.band_ce)
            return out

        single = run(state, batch, jax.jit(step), jax.jit(evaluate), stats)

        mesh = parallel.create_mesh()
        replicated = parallel.replicated_sharding(mesh)
        shardings = {"image": parallel.batch_sharding(mesh), "label": parallel.batch_sharding(mesh)}
        sharded_step = jax.jit(step, in_shardings=(replicated, shardings),
                               out_shardings=(replicated, replicated), donate_argnums=0)
        sharded_eval = jax.jit(evaluate, in_shardings=(replicated, shardings, replicated),
                               out_shardings=(replicated, replicated, shardings["label"]))
        global_batch = parallel.shard_batch(batch, mesh)
        assert len(global_batch["image"].sharding.device_set) == 4
        assert global_batch["image"].addressable_shards[0].data.shape == (2, size, size, 3)
        multi = run(parallel.replicate(state, mesh), global_batch, sharded_step, sharded_eval,
                    parallel.replicate(stats, mesh))
        np.savez(f"{sys.argv[1]}/{size}.npz", **{"single/" + k: v for k, v in single.items()},
                 **{"multi/" + k: v for k, v in multi.items()})

        # The evaluator: a batch of 8 and a short one of 6 (padded to 8 with ignored
        # examples), on one device and split over the mesh.
        batches = [batch, {k: v[:6] for k, v in batch.items()}]
        variables = model.init(jax.random.key(1), jnp.asarray(batch["image"][:1]))  # Not donated.
        settings = dict(num_classes=3, spectral_statistics=True, boundary_metrics=True,
                        num_examples=10)
        results = {
            "single": Evaluator(inference_apply_fn(model), **settings)(variables, batches),
            "multi": Evaluator(inference_apply_fn(model), mesh=mesh, batch_size=8, **settings)(
                parallel.replicate(variables, mesh), batches
            ),
        }
        arrays = {}
        for name, result in results.items():
            arrays[f"{name}/confusion"] = result.confusion
            arrays[f"{name}/loss"] = np.asarray(result.loss)
            arrays[f"{name}/num_evaluated"] = np.asarray(result.num_evaluated)
            arrays[f"{name}/band_ce"] = np.asarray(result.statistics.band_ce)
            arrays[f"{name}/biou"] = np.asarray(result.boundary["biou"])
            arrays[f"{name}/prediction"] = result.examples["prediction"]
        np.savez(f"{sys.argv[1]}/evaluator{size}.npz", **arrays)

    for size in map(int, sys.argv[2].split(",")):
        compare(size)

    # Prefetched batches are split over the 4 devices, in order, with their values.
    mesh = parallel.create_mesh()
    stream = [{"image": np.full((8, 2), i, np.float32)} for i in range(3)]
    placed = list(parallel.prefetch_to_device(iter(stream), mesh, size=2))
    assert [np.asarray(b["image"]).tolist() for b in placed] == [
        b["image"].tolist() for b in stream
    ]
    for batch in placed:
        assert batch["image"].sharding == parallel.batch_sharding(mesh)
        assert [s.data.shape for s in batch["image"].addressable_shards] == [(2, 2)] * 4
    """
)


# 9 x 9 (odd: no Nyquist frequency) by default; 8 x 8 in the slow tests. The mesh splits
# the batch, never the image: a second size would only repeat the comparison (and the
# subprocess's compilations) in the default suite.
SIZES = (9, pytest.param(8, marks=pytest.mark.slow))


def _four_device_results(tmp_path_factory, size: int):
    """Runs the subprocess for ``size``; returns the directory of its ``.npz``."""
    out = tmp_path_factory.mktemp("sharding")
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _SCRIPT, str(out), str(size)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def four_device_results(tmp_path_factory):
    """``results(size)``: the directory of the subprocess's ``.npz`` files for ``size``,
    run at most once per size."""
    directories = {}

    def results(size: int):
        if size not in directories:
            directories[size] = _four_device_results(tmp_path_factory, size)
        return directories[size]

    return results


@pytest.mark.parametrize("size", SIZES)
def test_sharded_step_equals_single_device(four_device_results, size):
    """Two train steps and one eval step over 4 devices equal those on 1 device.

    Tolerance: the sharded program sums the gradient, the loss and the BatchNorm
    statistics over the batch in another order (per device, then across devices), so
    float32 values agree to reduction-order rounding, ``rtol=1e-5, atol=1e-6``; the
    confusion matrix (integer counts) agrees exactly.
    """
    data = np.load(four_device_results(size) / f"{size}.npz")
    single = {k.removeprefix("single/"): data[k] for k in data.files if k.startswith("single/")}
    multi = {k.removeprefix("multi/"): data[k] for k in data.files if k.startswith("multi/")}
    assert single.keys() == multi.keys() and len(single) > 8
    np.testing.assert_array_equal(multi["sums['confusion']"], single["sums['confusion']"])
    assert single["sums['confusion']"].sum() == 8 * size * size - 3 * size
    for name in single:
        np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # The step moved the parameters: the comparison is not between two initial states.
    assert abs(float(single["metrics['grad_norm']"])) > 0


@pytest.mark.parametrize("size", SIZES)
def test_sharded_evaluator_equals_single_device(four_device_results, size):
    """The evaluator over the 4-device mesh (short batch padded) equals the 1-device one.

    Counts (confusion matrix, boundary metrics, kept predictions) agree exactly; the
    float32 loss and spectral sums to reduction-order rounding, ``rtol=1e-5``.
    """
    data = np.load(four_device_results(size) / f"evaluator{size}.npz")
    for name in ("confusion", "num_evaluated", "biou", "prediction"):
        np.testing.assert_array_equal(data[f"multi/{name}"], data[f"single/{name}"], name)
    assert int(data["single/num_evaluated"]) == 14
    assert data["single/prediction"].shape == (10, size, size)
    assert data["single/confusion"].sum() == 14 * size * size - 3 * size * 2
    for name in ("loss", "band_ce"):
        np.testing.assert_allclose(data[f"multi/{name}"], data[f"single/{name}"], rtol=1e-5)


def test_mesh_and_shardings_in_process():
    mesh = parallel.create_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
    batch = {"label": np.arange(2 * 3 * 3, dtype=np.int32).reshape(2, 3, 3)}
    sharded = parallel.shard_batch(batch, mesh)
    np.testing.assert_array_equal(np.asarray(sharded["label"]), batch["label"])
    assert sharded["label"].sharding == parallel.batch_sharding(mesh)
    assert parallel.local_batch_size(8, mesh) == 8 // jax.process_count()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_prefetch_to_device_reads_size_minus_one_ahead(size):
    """Batches come out placed and in order; the source is read ``size - 1`` ahead."""
    mesh = parallel.create_mesh()
    read = []

    def source():
        for index in range(5):
            read.append(index)
            yield {"label": np.full((2, 3), index, np.int32), "image": np.ones((2, 4), np.float32)}

    placed = parallel.prefetch_to_device(source(), mesh, size=size)
    for index in range(5):
        batch = next(placed)
        assert len(read) == min(index + size, 5)  # The batches placed so far.
        assert batch["label"].sharding == parallel.batch_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(batch["label"]), np.full((2, 3), index))
        assert batch["image"].dtype == np.float32
    assert next(placed, None) is None


def test_prefetch_to_device_size_must_be_positive():
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        next(parallel.prefetch_to_device(iter([]), parallel.create_mesh(), size=0))


def test_batch_size_must_divide_devices():
    mesh = parallel.create_mesh(jax.devices() * 3)  # Three "devices" for the check only.
    with pytest.raises(ValueError, match="batch_size=4"):
        parallel.local_batch_size(4, mesh)


_LOOP_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from spectral_jax.training import load_checkpoint, train_and_evaluate
    from tests.helpers.training import generated_pipeline, tiny_test_config

    config = tiny_test_config(steps=4)
    summary = train_and_evaluate(
        config, sys.argv[1], input_pipeline=generated_pipeline(crop_size=config.crop_size)
    )
    assert summary["num_devices"] == jax.device_count(), summary
    tree, _ = load_checkpoint(sys.argv[1])
    leaves = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(tree)}
    leaves["mean_iou"] = np.asarray(summary["mean_iou"])
    leaves["mean_ce"] = np.asarray(summary["mean_ce"])
    np.savez(sys.argv[1] + ".npz", **leaves)
    """
)


@pytest.mark.slow
def test_training_loop_on_four_devices_equals_one(tmp_path):
    """train_and_evaluate over 4 CPU devices ends where the 1-device run ends.

    Reduction order differs (as above); through four steps of SGD with BatchNorm on a
    batch of 4 the float32 rounding differences grow, mostly in the gradients: each
    array must agree to ``1e-3`` of its largest entry (measured: 1.1e-4 at most).
    """
    runs = {}
    for count in (1, 4):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
        env = dict(os.environ, XLA_FLAGS=flags.strip())
        env["JAX_PLATFORMS"] = "cpu"
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        runs[count] = subprocess.Popen(
            [sys.executable, "-c", _LOOP_SCRIPT, str(tmp_path / f"run{count}")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    for process in runs.values():
        _, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-4000:]
    one = np.load(tmp_path / "run1.npz")
    four = np.load(tmp_path / "run4.npz")
    assert sorted(one.files) == sorted(four.files) and len(one.files) > 10
    worst = 0.0
    for name in one.files:
        scale = max(float(np.max(np.abs(one[name]))), 1e-6)
        error = float(np.max(np.abs(four[name] - one[name]))) / scale
        assert error <= 1e-3, (name, error)
        worst = max(worst, error)
    print(f"largest difference relative to the array's largest entry: {worst:.2e}")
