"""Mixed precision: bfloat16 models, float32 state and statistics, the core's dtype rule.

``config.model.dtype = "bfloat16"`` computes the convolutions in bfloat16 while the
parameters, the optimizer state, the BatchNorm statistics, the logits and the loss stay
float32 (spectral_jax.models.registry, resnet, deeplab); the spectral core computes
float16 and bfloat16 inputs in float32 and refuses float64 where there is none
(spectral_jax._checks, "Precision").
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

import spectral_jax as sj
from experiments.configs import default
from spectral_jax import _checks, probes
from spectral_jax.evaluation.metrics import cross_entropy_loss
from spectral_jax.models import registry
from spectral_jax.training import steps, train_state
from tests.helpers import references
from tests.helpers.models import TINY_DEEPLAB, random_variables
from tests.helpers.training import generated_example

FLOAT32 = jnp.dtype(jnp.float32)
BFLOAT16 = jnp.dtype(jnp.bfloat16)


def _model_config(dtype: str | None, **fields) -> ml_collections.ConfigDict:
    config = {"name": "deeplabv3plus", **TINY_DEEPLAB, **fields}
    del config["num_classes"]
    if dtype is not None:
        config["dtype"] = dtype
    return ml_collections.ConfigDict(config)


def _leaf_dtypes(tree) -> set:
    return {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(tree)}


# ---------------------------------------------------------------------------------------
# config.model.dtype.


def test_default_config_is_float32():
    config = default.get_config()
    assert config.model.dtype == "float32"
    assert registry.create_model(config.model, num_classes=3).dtype == FLOAT32


@pytest.mark.parametrize("name, expected", [("float32", FLOAT32), ("bfloat16", BFLOAT16)])
def test_config_dtype_becomes_the_model_dtype(name, expected):
    model = registry.create_model(_model_config(name), num_classes=3)
    assert jnp.dtype(model.dtype) == expected


def test_config_without_dtype_is_float32():
    assert registry.create_model(_model_config(None), num_classes=3).dtype == FLOAT32


@pytest.mark.parametrize("name", ["float8", "fp32", "float64", "half"])
def test_unknown_config_dtype_is_refused(name):
    with pytest.raises(ValueError, match=r"config\.model\.dtype must be one of .*bfloat16"):
        registry.create_model(_model_config(name), num_classes=3)


def test_float16_config_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"config\.model\.dtype='float16'.*loss scaling.*bfloat16"):
        registry.create_model(_model_config("float16"), num_classes=3)


# ---------------------------------------------------------------------------------------
# Inside the model: every convolution, forward and backward, runs in bfloat16.


def _conv_operand_dtypes(jaxpr) -> list[tuple]:
    """``(lhs dtype, rhs dtype)`` of every ``conv_general_dilated``, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            found.append(tuple(jnp.dtype(v.aval.dtype) for v in eqn.invars))
    for sub in jax_core.subjaxprs(jaxpr):
        found += _conv_operand_dtypes(sub)
    return found


MODEL_CONFIGS = {
    "deeplab": {},
    "deeplab_daf": {"downsample_filter": "daf"},
    "deeplab_freqmix": {"downsample_filter": "freqmix"},
    "dan": {"name": "dan"},  # the registry maps low_level_channels to DAN's projections
    "dct": {"name": "dct_deeplabv3plus", "gate": True, "gate_weight": 0.01},
}


def _model_and_input(case: str, dtype: str):
    """The tiny model of ``case`` through the registry, and its input shape ``[2, ...]``."""
    config = _model_config(dtype, **MODEL_CONFIGS[case])
    model = registry.create_model(config, num_classes=3)
    image_size = 64 if registry._is_dct_model(config) else 33
    return model, image_size, (2, *registry.input_shape(config, image_size=image_size))


@pytest.mark.parametrize("case", list(MODEL_CONFIGS))
def test_every_convolution_of_a_training_step_computes_in_bfloat16(case):
    model, image_size, shape = _model_and_input(case, "bfloat16")
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert _leaf_dtypes(variables["params"]) == {FLOAT32}
    assert _leaf_dtypes(variables["batch_stats"]) == {FLOAT32}
    labels = jax.ShapeDtypeStruct((shape[0], image_size, image_size), jnp.int32)
    rngs = {"dropout": jax.random.key(1), "gumbel": jax.random.key(2)}

    def loss_fn(params, batch_stats, images, labels):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats", "losses", "metrics"],
            rngs=rngs,
        )
        return cross_entropy_loss(logits, labels)[0], (logits, updates["batch_stats"])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    # The output shapes from the same trace (an eval_shape would trace it again).
    closed, out_shapes = jax.make_jaxpr(grad_fn, return_shape=True)(
        variables["params"], variables["batch_stats"], x, labels
    )
    operands = _conv_operand_dtypes(closed.jaxpr)
    num_conv_modules = sum(
        1
        for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        if path[-1].key == "kernel" and len(_.shape) == 4
    )
    # Forward, input gradient and kernel gradient of every convolution (the first one,
    # on the images, needs no input gradient).
    assert len(operands) >= 3 * num_conv_modules - 1
    assert set(operands) == {(BFLOAT16, BFLOAT16)}, set(operands)
    (loss, (logits, batch_stats)), grads = out_shapes
    assert loss.dtype == FLOAT32 and logits.dtype == FLOAT32
    assert _leaf_dtypes(batch_stats) == {FLOAT32}
    assert _leaf_dtypes(grads) == {FLOAT32}
    # Activations between layers (BatchNorm and ReLU outputs) stay bfloat16.
    outputs = jax.eval_shape(functools.partial(model.apply, method="intermediates"), variables, x)
    activations = [outputs["aspp"], *jax.tree.leaves(outputs["low_level"])]  # DAN: 3 stages
    assert _leaf_dtypes(activations) == {BFLOAT16}
    assert outputs["decoder_logits"].dtype == FLOAT32 and outputs["logits"].dtype == FLOAT32


@pytest.mark.parametrize("case", ["deeplab", "dan"])
def test_float32_model_has_no_bfloat16(case):
    model, _, shape = _model_and_input(case, "float32")
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    closed = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x)
    assert set(_conv_operand_dtypes(closed.jaxpr)) == {(FLOAT32, FLOAT32)}


# ---------------------------------------------------------------------------------------
# Values: bfloat16 logits against a float64 run of the same model.


def _relative_error(a, reference):
    a, reference = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(a - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize(
    "downsample_filter", [None, pytest.param("freqmix", marks=pytest.mark.slow)]
)
def test_bfloat16_logits_are_close_to_float64(rng, downsample_filter, x64):
    shape = (2, 33, 33, 3)
    images = rng.standard_normal(shape)
    config = _model_config("float32", downsample_filter=downsample_filter)
    model32 = registry.create_model(config, num_classes=3)
    variables = random_variables(model32, shape)  # He-normal kernels: O(1) activations
    if downsample_filter == "freqmix":  # non-zero biases of the attention
        variables = jax.tree.map(lambda v: v + 0.1 if v.ndim == 1 else v, variables)
    logits = {}
    for name in ("float32", "bfloat16"):
        model = model32.clone(dtype=jnp.dtype(name))
        logits[name] = jax.jit(model.apply)(variables, images.astype(np.float32))
        assert logits[name].dtype == FLOAT32
    model64 = model32.clone(dtype=jnp.float64)
    variables64 = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
    reference = jax.jit(model64.apply)(variables64, images)
    assert reference.dtype == jnp.float64
    error32 = _relative_error(logits["float32"], reference)
    error16 = _relative_error(logits["bfloat16"], reference)
    # bfloat16 keeps 8 significant bits (unit roundoff 2**-9 = 2e-3); about 15 rounded
    # layers in a row give errors of a few 1e-3 each, growing like their square root
    # (measured: 0.009 without a filter, 0.020 with FreqMix; float32: 3e-7 and 7e-7).
    assert error16 < 3e-2, error16
    # float32 is ~1e-6 here: the bfloat16 run really rounds, and only as much as bfloat16.
    assert error32 < 1e-5 and error16 > 100 * error32, (error32, error16)


# ---------------------------------------------------------------------------------------
# Training: float32 parameters, optimizer state and statistics; the loss follows float32.


def _batch(size: int = 33, count: int = 4):
    pairs = [generated_example(7, i, size) for i in range(count)]
    return {"image": np.stack([p[0] for p in pairs]), "label": np.stack([p[1] for p in pairs])}


def _train(dtype: str, variables, batch, num_steps: int):
    model = registry.create_model(_model_config(dtype), num_classes=3)
    schedule = train_state.poly_schedule(0.05, total_steps=100)
    optimizer = train_state.create_optimizer(schedule)
    state = train_state.create_train_state(model, variables, optimizer)
    step = jax.jit(
        functools.partial(
            steps.train_step, learning_rate_fn=schedule, dropout_key=jax.random.key(0)
        )
    )
    history = []
    for _ in range(num_steps):
        state, metrics = step(state, batch)
        history.append(metrics)
    return state, history


@pytest.mark.slow  # two train steps compiled: about 30 s on 2 CPU cores
def test_bfloat16_training_keeps_float32_state_and_follows_float32():
    batch = _batch()
    model = registry.create_model(_model_config("float32"), num_classes=3)
    variables = random_variables(model, batch["image"].shape)
    # Two steps: the loss at the start and after one update. Later steps drift apart
    # (training in train-mode BatchNorm on 4 images amplifies any rounding difference).
    runs = {name: _train(name, variables, batch, num_steps=2) for name in ("float32", "bfloat16")}
    state, history = runs["bfloat16"]
    assert _leaf_dtypes(state.params) == {FLOAT32}
    assert _leaf_dtypes(state.batch_stats) == {FLOAT32}
    assert _leaf_dtypes(jax.tree.leaves(state.opt_state)) <= {FLOAT32, jnp.dtype(jnp.int32)}
    assert FLOAT32 in _leaf_dtypes(jax.tree.leaves(state.opt_state))  # the momentum
    assert all(m["loss"].dtype == FLOAT32 and m["grad_norm"].dtype == FLOAT32 for m in history)
    losses = {name: np.array([float(m["loss"]) for m in h]) for name, (_, h) in runs.items()}
    assert losses["bfloat16"][1] < losses["bfloat16"][0], losses
    # bfloat16 rounding of ~15 layers: about 1e-2 of the loss (measured 2e-3 and 1e-2).
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=3e-2)
    grad_norms = [float(runs[name][1][0]["grad_norm"]) for name in ("bfloat16", "float32")]
    np.testing.assert_allclose(*grad_norms, rtol=3e-2)
    # BatchNorm statistics reduced in float32 from bfloat16 activations: the variances
    # within a few 1e-2 (measured at most 0.031), the means within a few 1e-2 of the
    # standard deviation (measured at most 0.019; a mean near 0 has no relative scale).
    ours = traverse_util.flatten_dict(jax.device_get(state.batch_stats), sep="/")
    theirs = traverse_util.flatten_dict(jax.device_get(runs["float32"][0].batch_stats), sep="/")
    for path, value in ours.items():
        if path.endswith("var"):
            assert _relative_error(value, theirs[path]) < 5e-2, path
        else:
            scale = np.sqrt(theirs[path[: -len("mean")] + "var"])
            assert np.max(np.abs(value - theirs[path]) / scale) < 5e-2, path


# ---------------------------------------------------------------------------------------
# The spectral core: float16 and bfloat16 are computed in float32; float64 where it exists.


def _logits_and_labels(seed=0):
    rng = np.random.default_rng(seed)
    logits, labels = references.make_batch(rng, 2, 6, 7, 3, ignore_fraction=0.1)
    return logits.astype(np.float32), labels


def _statistics_update(logits, labels):
    stats = sj.SpectralStatistics.create((6, 7), num_classes=3)
    return stats.update(logits, labels)


_KERNEL = np.random.default_rng(1).standard_normal((3, 3, 2, 2)).astype(np.float32) / 3
_CONV = functools.partial(probes.conv, kernel=_KERNEL, padding="circular")


def _head(features):  # [H, W, 2] -> [H, W, 3] logits
    return jnp.concatenate([features, features[..., :1] ** 2], axis=-1)


def _features():
    return np.random.default_rng(2).standard_normal((5, 6, 2)).astype(np.float32)


# name -> (argument name, float32 input, function of that argument)
CORE_FUNCTIONS = {
    "ce_spectrum": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: sj.ce_spectrum(x, _logits_and_labels()[1]),
    ),
    "ce_half_spectrum": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: sj.ce_half_spectrum(x, _logits_and_labels()[1]),
    ),
    "band_profile": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: sj.band_profile(x, _logits_and_labels()[1]),
    ),
    "truncated_ce": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: sj.truncated_ce(x, _logits_and_labels()[1], 1),
    ),
    "relative_discrepancy": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: sj.relative_discrepancy(x, _logits_and_labels()[1], 1),
    ),
    "band_limit_sweep": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: sj.band_limit_sweep(x, _logits_and_labels()[1]),
    ),
    "magnitude_profiles": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: sj.magnitude_profiles(x, _logits_and_labels()[1]),
    ),
    "sweep_from_band_profile": (
        "profile",
        lambda: np.abs(_logits_and_labels()[0][:, 0, :4, 0]),
        sj.sweep_from_band_profile,
    ),
    "spectral_iou": (
        "probs",
        lambda: np.asarray(jax.nn.softmax(_logits_and_labels()[0], axis=-1)),
        lambda x: sj.spectral_iou(x, _logits_and_labels()[1]),
    ),
    "spectral_iou_terms": (
        "probs",
        lambda: np.asarray(jax.nn.softmax(_logits_and_labels()[0], axis=-1)),
        lambda x: sj.spectral_iou_terms(x, _logits_and_labels()[1]),
    ),
    "iou_from_terms": (
        "terms",
        lambda: np.abs(_logits_and_labels()[0][:, 0, :3, :]) + 1,
        lambda x: sj.iou_from_terms(sj.IoUTerms(x / 4, x, x)),
    ),
    "SpectralStatistics.update": (
        "logits",
        lambda: _logits_and_labels()[0],
        lambda x: _statistics_update(x, _logits_and_labels()[1]),
    ),
    "spectral_jacobian": ("x", _features, lambda x: sj.spectral_jacobian(_CONV, x)),
    "spectral_jacobian_rows": (
        "x",
        _features,
        lambda x: sj.spectral_jacobian_rows(_CONV, x, np.array([0, 7])),
    ),
    "spectral_jacobian_columns": (
        "x",
        _features,
        lambda x: sj.spectral_jacobian_columns(_CONV, x, np.array([1, 5])),
    ),
    "spectral_jacobian_band_energy": (
        "x",
        _features,
        lambda x: sj.spectral_jacobian_band_energy(_CONV, x),
    ),
    "ce_spectral_gradient": (
        "features",
        _features,
        lambda x: sj.ce_spectral_gradient(
            _head, x, _logits_and_labels()[1][0, :5, :6].clip(0, 2), nu_i=np.array([0, 3])
        ),
    ),
    "spectral_resize": ("x", lambda: _features()[None], lambda x: sj.spectral_resize(x, 3)),
    "resize_features_spectral": (
        "x",
        lambda: _features()[None],
        lambda x: sj.resize_features(x, 3, method="spectral"),
    ),
}

# Resampling is a model layer: its output keeps the input's dtype (computed in float32).
_KEEPS_INPUT_DTYPE = {"spectral_resize", "resize_features_spectral"}


# Both low precisions take one path (the inputs' check upcasts every dtype of
# _checks.LOW_PRECISION_DTYPES): every function in bfloat16, and in float16 one function
# of each kind (statistics, Jacobian, resampling) in the default suite, the rest slow.
FLOAT16_DEFAULT = {
    "ce_spectrum",
    "SpectralStatistics.update",
    "spectral_jacobian",
    "spectral_resize",
}


@pytest.mark.parametrize(
    "name, dtype",
    [(name, "bfloat16") for name in CORE_FUNCTIONS]
    + [
        pytest.param(name, "float16", marks=() if name in FLOAT16_DEFAULT else pytest.mark.slow)
        for name in CORE_FUNCTIONS
    ],
)
def test_core_computes_low_precision_inputs_in_float32(name, dtype):
    _, make_input, fn = CORE_FUNCTIONS[name]
    low = jnp.asarray(make_input(), dtype)
    result = fn(low)
    expected = fn(low.astype(jnp.float32))  # the exact upcast: the same values
    for ours, theirs in zip(jax.tree.leaves(result), jax.tree.leaves(expected), strict=True):
        if name in _KEEPS_INPUT_DTYPE:
            assert ours.dtype == low.dtype
            theirs = theirs.astype(low.dtype)
        elif jnp.issubdtype(theirs.dtype, jnp.inexact):
            assert ours.dtype == theirs.dtype
            assert ours.dtype in (FLOAT32, jnp.dtype(jnp.complex64)), ours.dtype
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


@pytest.mark.parametrize("name", list(CORE_FUNCTIONS))
def test_core_refuses_float64_on_tpu(monkeypatch, name, x64):
    argument, make_input, fn = CORE_FUNCTIONS[name]
    x = np.asarray(make_input(), np.float64)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.raises(
        ValueError, match=rf"{argument} is float64.*TPU.*cast {argument} to float32.*CPU"
    ):
        fn(x)


@pytest.mark.parametrize(
    "name", ["ce_spectrum", "spectral_iou", "spectral_jacobian", "spectral_resize"]
)
def test_core_keeps_float64_where_it_exists(name, x64):
    _, make_input, fn = CORE_FUNCTIONS[name]
    result = jax.tree.leaves(fn(np.asarray(make_input(), np.float64)))[0]
    assert result.dtype in (jnp.float64, jnp.complex128)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.int32, "complex64"])
def test_statistics_refuse_a_low_precision_accumulator(dtype):
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        sj.SpectralStatistics.create((6, 7), num_classes=3, dtype=dtype)


def test_statistics_float64_accumulator_needs_x64():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="dtype asks for float64, but jax_enable_x64 is off"):
            sj.SpectralStatistics.create((6, 7), num_classes=3, dtype=jnp.float64)
    with jax.enable_x64(True):
        stats = sj.SpectralStatistics.create((6, 7), num_classes=3, dtype=jnp.float64)
        assert stats.band_ce.dtype == jnp.float64


def test_statistics_float64_accumulator_is_refused_on_tpu(monkeypatch, x64):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.raises(ValueError, match="dtype is float64.*TPU"):
        sj.SpectralStatistics.create((6, 7), num_classes=3, dtype=jnp.float64)


# The once-per-process warning of a float64 input with x64 off, matched in full.
X64_WARNING = (
    r"logits is float64 but jax_enable_x64 is off, so it is computed in float32\. For "
    r'float64 results call jax\.config\.update\("jax_enable_x64", True\)'
)


def test_float64_numpy_input_without_x64_is_computed_in_float32_and_warns_once(monkeypatch):
    monkeypatch.setattr(_checks, "_float64_warned", False)  # as in a fresh process
    logits, labels = _logits_and_labels()
    with jax.enable_x64(False):
        with pytest.warns(UserWarning, match=X64_WARNING):
            spectrum = sj.ce_spectrum(logits.astype(np.float64), labels)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: the second float64 call is silent
            again = sj.band_profile(logits.astype(np.float64), labels)
    assert spectrum.dtype == FLOAT32 and again.dtype == FLOAT32
    np.testing.assert_array_equal(spectrum, sj.ce_spectrum(logits, labels))
    np.testing.assert_array_equal(again, sj.band_profile(logits, labels))


def _probs64():
    logits, labels = _logits_and_labels()
    return np.asarray(jax.nn.softmax(logits), np.float64), labels


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("probs", lambda: sj.spectral_iou(*_probs64())),
        ("logits", lambda: sj.SpectralStatistics.create((6, 7), num_classes=3).update(*_probs64())),
        ("x", lambda: sj.spectral_jacobian_rows(_CONV, _features().astype(np.float64), [0])),
    ],
)
def test_float64_without_x64_warns_naming_the_argument(monkeypatch, name, call):
    monkeypatch.setattr(_checks, "_float64_warned", False)
    with jax.enable_x64(False), pytest.warns(UserWarning, match=f"^{name} is float64 .*x64"):
        call()


def test_float64_torch_tensor_without_x64_warns(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(_checks, "_float64_warned", False)
    logits, labels = _logits_and_labels()
    with jax.enable_x64(False), pytest.warns(UserWarning, match=X64_WARNING):
        spectrum = sj.ce_spectrum(torch.from_numpy(np.asarray(logits, np.float64)), labels)
    np.testing.assert_array_equal(spectrum, sj.ce_spectrum(logits, labels))


def test_float64_with_x64_does_not_warn(monkeypatch, x64):
    monkeypatch.setattr(_checks, "_float64_warned", False)
    logits, labels = _logits_and_labels()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sj.ce_spectrum(np.asarray(logits, np.float64), labels).dtype == jnp.float64
