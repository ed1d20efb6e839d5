"""Tests of spectral_jax.models.segmentation_checkpoints: trained PyTorch networks in.

Each reference is the PyTorch model itself (torchvision, segmentation_models_pytorch),
or, for the reference DeepLab v3+ repository, a ``torch.nn`` model written here from
its documented structure; all with random weights and random BatchNorm statistics, in
eval mode. The imported Flax model's logits are compared with the reference's at a
non-square input size (a square one too in the slow tests), the parameter counts are
compared, and the conversion back to a state dict must give the reference's tensors
exactly.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from spectral_jax.models import create_model, create_resnet
from spectral_jax.models import resnet as resnet_lib
from spectral_jax.models import segmentation_checkpoints as checkpoints
from spectral_jax.models.deeplab import resize_bilinear
from spectral_jax.models.pretrained import load_checkpoint
from tests.helpers.models import num_params, random_variables

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
smp = pytest.importorskip("segmentation_models_pytorch")
# The reference DeepLab v3+ repository's model, written in torch.nn from its structure.
_torch_deeplab = pytest.importorskip("benchmarks._torch_deeplab")
ReferenceDeepLab = _torch_deeplab.ReferenceRepositoryDeepLab
nn = torch.nn
functional = torch.nn.functional

# float32 Flax against float32 PyTorch: max |difference| / max |reference logit|.
TOLERANCE = 1e-4
# Sizes (square, non-square): odd ones where the reference takes any size;
# segmentation_models_pytorch refuses sizes that its output stride does not divide.
# The non-square size runs in the default tests: every strided layer's input is odd at
# both odd sizes (even at both even ones), so the two take the same padding and resize
# paths, and only the non-square one shows a height/width mix-up. The square one is slow.
ODD_SIZES = ((65, 65), (33, 49))
SMP_SIZES = ((64, 64), (32, 48))
NUM_CLASSES = 21


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {key: value.numpy().copy() for key, value in model.state_dict().items()}


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# ---------------------------------------------------------------------------------------
# The references and their imports, built once per module.

REFERENCES = {
    "torchvision_deeplabv3": lambda: torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=True
    ),
    "torchvision_fcn": lambda: torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, aux_loss=True
    ),
    "smp_deeplabv3plus": lambda: smp.DeepLabV3Plus(
        "resnet50", encoder_weights=None, classes=NUM_CLASSES
    ),
    "smp_deeplabv3": lambda: smp.DeepLabV3("resnet50", encoder_weights=None, classes=NUM_CLASSES),
    "pytorch_deeplab_xception": lambda: ReferenceDeepLab(),
}
SETTINGS = {
    "torchvision_deeplabv3": dict(backbone="resnet50", aux_head=True),
    "torchvision_fcn": dict(backbone="resnet50", aux_head=True),
    "smp_deeplabv3plus": dict(backbone="resnet50"),
    "smp_deeplabv3": dict(backbone="resnet50"),
    "pytorch_deeplab_xception": dict(backbone="resnet101"),
}
SIZES = {
    "torchvision_deeplabv3": ODD_SIZES,
    "torchvision_fcn": ODD_SIZES,
    "smp_deeplabv3plus": SMP_SIZES,
    "smp_deeplabv3": SMP_SIZES,
    "pytorch_deeplab_xception": ODD_SIZES,
}


class Imported:
    """A reference, its state dict, the registry model and the imported variables."""

    def __init__(self, layout, seed=0):
        torch.manual_seed(seed)
        self.layout = layout
        self.reference = _torch_deeplab.randomise_batch_norm(REFERENCES[layout](), seed)
        self.state_dict = numpy_state_dict(self.reference)
        config = ml_collections.ConfigDict({"name": layout, **SETTINGS[layout]})
        self.model = create_model(config, num_classes=NUM_CLASSES)
        images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        self.shapes = jax.eval_shape(self.model.init, jax.random.key(0), images)
        self.variables = checkpoints.torch_to_flax_variables(
            self.state_dict, self.shapes, layout=layout
        )
        self.apply = jax.jit(
            lambda variables, x: self.model.apply(variables, x, method=self.model.intermediates)
        )

    def reference_outputs(self, images):
        with torch.no_grad():
            out = self.reference(torch.from_numpy(images).permute(0, 3, 1, 2))
        if isinstance(out, dict):  # torchvision: {"out", "aux"}
            return {key: value.permute(0, 2, 3, 1).numpy() for key, value in out.items()}
        return {"out": out.permute(0, 2, 3, 1).numpy()}


@pytest.fixture(scope="module", params=list(REFERENCES))
def imported(request):
    return Imported(request.param)


def _assert_logits_match(imported, index):
    """Logits (and auxiliary logits) at size ``SIZES[layout][index]``, 2 random images."""
    size = SIZES[imported.layout][index]
    images = np.random.default_rng(index).normal(size=(2, *size, 3)).astype(np.float32)
    expected = imported.reference_outputs(images)
    actual = imported.apply(imported.variables, jnp.asarray(images))
    errors = [relative_error(actual["logits"], expected["out"])]
    if "aux" in expected:
        errors.append(relative_error(actual["aux_logits"], expected["aux"]))
    assert max(errors) <= TOLERANCE, (imported.layout, size, errors)
    print(f"{imported.layout} at {size}: worst relative error {max(errors):.2e}")


def test_logits_match_the_reference(imported):
    _assert_logits_match(imported, 1)  # non-square


@pytest.mark.slow
def test_logits_match_the_reference_at_a_square_size(imported):
    _assert_logits_match(imported, 0)


def test_parameter_counts_are_equal(imported):
    expected = sum(p.numel() for p in imported.reference.parameters())
    assert num_params(imported.variables["params"]) == expected


def test_round_trip_to_a_state_dict_is_exact(imported):
    back = checkpoints.flax_to_torch_state_dict(imported.variables, layout=imported.layout)
    expected = {
        k: v for k, v in imported.state_dict.items() if not k.endswith("num_batches_tracked")
    }
    assert list(back) == [k for k in back if k in expected] and set(back) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, strict=True, err_msg=key)
    # PyTorch takes it back as it stands (num_batches_tracked keeps the module's value).
    imported.reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in back.items()}, strict=True
    )


def test_imported_variables_keep_the_models_stacked_layout(imported):
    shapes = {c: imported.shapes[c] for c in ("params", "batch_stats")}
    assert jax.tree.structure(shapes) == jax.tree.structure(imported.variables)
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(jnp.shape, imported.variables)
    encoder = imported.variables["params"]["encoder"]
    stacked = {"resnet50": 5, "resnet101": 22}[SETTINGS[imported.layout]["backbone"]]
    assert encoder["layer3_blocks"]["conv1"]["kernel"].shape[0] == stacked


# ---------------------------------------------------------------------------------------
# The reference repository's checkpoint files.


@pytest.fixture(scope="module")
def xception_checkpoint(tmp_path_factory):
    """A training checkpoint as the reference repository writes it, of a small reference."""
    torch.manual_seed(3)
    reference = _torch_deeplab.randomise_batch_norm(ReferenceDeepLab(layers=(1, 1, 1, 3)), 3)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.007, momentum=0.9)
    for parameter in reference.parameters():  # a step without a forward pass: cheap
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # momentum buffers in the optimizer's state
    path = tmp_path_factory.mktemp("xception") / "deeplab-resnet.pth.tar"
    torch.save(
        {
            "epoch": 50,
            "state_dict": reference.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best_pred": np.float64(0.7843),  # the script stores NumPy's mIoU
        },
        path,
    )
    return reference, path


def test_reference_repository_key_names():
    with torch.device("meta"):  # names and shapes only, no memory
        reference = ReferenceDeepLab()
    keys = list(reference.state_dict())
    assert {key.split(".")[0] for key in keys} == {"backbone", "aspp", "decoder"}
    assert "aspp.global_avg_pool.1.weight" in keys and "aspp.aspp4.atrous_conv.weight" in keys
    assert "decoder.last_conv.8.bias" in keys and "backbone.layer4.2.conv2.weight" in keys
    # The multi-grid unit: dilations 2, 4, 8 at output stride 16.
    assert [block.conv2.dilation for block in reference.backbone.layer4] == [(2, 2), (4, 4), (8, 8)]
    model = checkpoints.create_layout_model("pytorch_deeplab_xception", num_classes=NUM_CLASSES)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    )
    table = checkpoints.torch_state_dict_shapes(shapes, layout="pytorch_deeplab_xception")
    expected = {
        key: tuple(value.shape)
        for key, value in reference.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    assert table == expected


def test_reference_repository_checkpoint_file(xception_checkpoint):
    reference, path = xception_checkpoint
    loaded = load_checkpoint(path, backend="numpy")  # the whole training checkpoint
    assert set(loaded) == {"epoch", "state_dict", "optimizer", "best_pred"}
    assert loaded["epoch"] == 50 and loaded["best_pred"] == np.float64(0.7843)
    assert set(loaded["optimizer"]) == {"state", "param_groups"}
    assert len(loaded["optimizer"]["state"]) == len(list(reference.parameters()))
    model = checkpoints.create_layout_model(
        "pytorch_deeplab_xception", num_classes=NUM_CLASSES, backbone="resnet_xception_test"
    )
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    )
    # "auto": torch.load(weights_only=True) refuses the NumPy scalar, and the module's
    # reader takes the file then; "numpy" reads it without torch. Both give the same.
    by_backend = {
        backend: checkpoints.load_segmentation_checkpoint(
            path, shapes, layout="pytorch_deeplab_xception", backend=backend
        )
        for backend in ("auto", "numpy")
    }
    jax.tree.map(np.testing.assert_array_equal, by_backend["auto"], by_backend["numpy"])
    images = np.random.default_rng(7).normal(size=(1, 33, 49, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    actual = jax.jit(model.apply)(by_backend["numpy"], jnp.asarray(images))
    assert relative_error(actual, expected.numpy()) <= TOLERANCE


@pytest.fixture(autouse=True)
def _xception_test_backbone(monkeypatch):
    """A one-block-per-stage ResNet with the standard widths and a 3-block last stage."""
    config = resnet_lib.ResNetConfig((1, 1, 1, 3))
    monkeypatch.setitem(resnet_lib.RESNET_CONFIGS, "resnet_xception_test", config)


# ---------------------------------------------------------------------------------------
# ResNet-101 variants by shape; bad checkpoints.

META_REFERENCES = {
    "torchvision_deeplabv3": lambda: torchvision.models.segmentation.deeplabv3_resnet101(
        weights=None, weights_backbone=None, aux_loss=True
    ),
    "torchvision_fcn": lambda: torchvision.models.segmentation.fcn_resnet101(
        weights=None, weights_backbone=None, aux_loss=True
    ),
    "smp_deeplabv3plus": lambda: smp.DeepLabV3Plus(
        "resnet101", encoder_weights=None, classes=NUM_CLASSES
    ),
    "smp_deeplabv3": lambda: smp.DeepLabV3("resnet101", encoder_weights=None, classes=NUM_CLASSES),
}


@pytest.mark.parametrize("layout", list(META_REFERENCES))
def test_resnet101_variants_have_the_references_keys_shapes_and_counts(layout):
    with torch.device("meta"):  # shapes only, no memory
        reference = META_REFERENCES[layout]()
    model = checkpoints.create_layout_model(
        layout, num_classes=NUM_CLASSES, backbone="resnet101", aux_head=layout.startswith("torchv")
    )
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    )
    expected = {
        key: tuple(value.shape)
        for key, value in reference.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    assert checkpoints.torch_state_dict_shapes(shapes, layout=layout) == expected
    assert num_params(shapes["params"]) == sum(p.numel() for p in reference.parameters())


def _tiny_state_dict(layout="torchvision_deeplabv3", backbone="resnet_tiny", num_classes=3):
    """A random state dict of a tiny model of ``layout``, and the model's variable shapes."""
    model = checkpoints.create_layout_model(layout, num_classes=num_classes, backbone=backbone)
    variables = random_variables(model, (1, 32, 32, 3))
    shapes = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), variables)
    return checkpoints.flax_to_torch_state_dict(variables, layout=layout), shapes


def test_bad_checkpoints_name_what_differs(deep_tiny_backbone):
    state_dict, model = _tiny_state_dict()
    checkpoints.torch_to_flax_variables(state_dict, model, layout="torchvision_deeplabv3")
    missing = dict(state_dict)
    del missing["classifier.0.project.1.running_var"]
    with pytest.raises(
        ValueError, match=r"missing keys \(1\): classifier\.0\.project\.1\.running_var"
    ):
        checkpoints.torch_to_flax_variables(missing, model, layout="torchvision_deeplabv3")
    wrong_classes, _ = _tiny_state_dict(num_classes=5)
    with pytest.raises(
        ValueError, match=r"number of classes differs: the checkpoint has 5 .*the model 3"
    ):
        checkpoints.torch_to_flax_variables(wrong_classes, model, layout="torchvision_deeplabv3")
    deeper, _ = _tiny_state_dict(backbone=deep_tiny_backbone)
    with pytest.raises(
        ValueError,
        match=r"backbone depth differs: the checkpoint has \(2, 3, 2, 2\).*the model \(1, 1, 1, 1\)",
    ):
        checkpoints.torch_to_flax_variables(deeper, model, layout="torchvision_deeplabv3")
    with pytest.raises(ValueError, match="unexpected keys"):
        checkpoints.torch_to_flax_variables(
            {**state_dict, "classifier.9.weight": np.zeros(3, np.float32)},
            model,
            layout="torchvision_deeplabv3",
        )
    with pytest.raises(ValueError, match="layout must be one of"):
        checkpoints.torch_to_flax_variables(state_dict, model, layout="torchvision_deeplabv4")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_checkpoint_with_code_is_refused_before_it_runs(tmp_path, backend):
    state_dict, model = _tiny_state_dict()
    marker = str(tmp_path / "code_ran")
    path = tmp_path / "evil.pth"
    tensors = {key: torch.from_numpy(value) for key, value in state_dict.items()}
    torch.save({"state_dict": tensors, "epoch": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"evil\.pth.*(makedirs|not allowed|Unsupported)"):
        checkpoints.load_segmentation_checkpoint(
            path, model, layout="torchvision_deeplabv3", backend=backend
        )
    assert not os.path.exists(marker)


def test_aux_head_keys_are_optional_and_module_prefix_is_removed():
    state_dict, model = _tiny_state_dict()
    with_aux_model = checkpoints.create_layout_model(
        "torchvision_deeplabv3", num_classes=3, backbone="resnet_tiny", aux_head=True
    )
    with_aux = checkpoints.flax_to_torch_state_dict(
        random_variables(with_aux_model, (1, 32, 32, 3)), layout="torchvision_deeplabv3"
    )
    assert any(key.startswith("aux_classifier.") for key in with_aux)
    # A checkpoint with the auxiliary head imports into a model without one ...
    variables = checkpoints.torch_to_flax_variables(with_aux, model, layout="torchvision_deeplabv3")
    assert "aux_decoder" not in variables["params"]
    # ... but not the other way round.
    with pytest.raises(ValueError, match="missing keys.*aux_classifier"):
        checkpoints.torch_to_flax_variables(
            state_dict, with_aux_model, layout="torchvision_deeplabv3"
        )
    wrapped = {f"module.{key}": value for key, value in state_dict.items()}
    unwrapped = checkpoints.torch_to_flax_variables(wrapped, model, layout="torchvision_deeplabv3")
    np.testing.assert_array_equal(
        unwrapped["params"]["decoder"]["classifier"]["bias"], state_dict["classifier.4.bias"]
    )


def test_reference_repository_earlier_decoder_numbering(deep_tiny_backbone):
    # Before its dropouts, the repository's decoder numbered last_conv 0 1 3 4 6.
    layout = "pytorch_deeplab_xception"
    model = checkpoints.create_layout_model(
        layout, num_classes=3, backbone=deep_tiny_backbone, multi_grid=(1, 2)
    )
    variables = random_variables(model, (1, 32, 32, 3))
    state_dict = checkpoints.flax_to_torch_state_dict(variables, layout=layout)
    earlier = {
        key.replace("last_conv.4.", "last_conv.3.")
        .replace("last_conv.5.", "last_conv.4.")
        .replace("last_conv.8.", "last_conv.6."): value
        for key, value in state_dict.items()
    }
    assert "decoder.last_conv.6.bias" in earlier and "decoder.last_conv.8.bias" not in earlier
    shapes = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), variables)
    imported = checkpoints.torch_to_flax_variables(earlier, shapes, layout=layout)
    jax.tree.map(np.testing.assert_array_equal, imported, variables)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    ("size_in", "size_out"), [((5, 9), (17, 33)), ((33, 17), (9, 5)), ((7, 1), (1, 4))]
)
def test_resize_bilinear_matches_torch_interpolate(align_corners, size_in, size_out):
    x = np.random.default_rng(0).normal(size=(2, *size_in, 3)).astype(np.float32)
    expected = functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        size=size_out,
        mode="bilinear",
        align_corners=align_corners,
    ).permute(0, 2, 3, 1)
    actual = resize_bilinear(jnp.asarray(x), size_out, align_corners=align_corners)
    # Down-sampling too: neither anti-aliases (two taps per output pixel).
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["pytorch_deeplab_xception", "torchvision_deeplabv3"])
def test_imported_models_truncate(layout, deep_tiny_backbone):
    """feature_size (the paper's truncation) on an imported layout: the untruncated grid
    gives the untruncated logits, a smaller one other logits of the same shape."""
    settings = dict(num_classes=3, backbone=deep_tiny_backbone, aspp_channels=8)
    settings |= dict(low_level_channels=4, decoder_channels=8)
    if layout == "pytorch_deeplab_xception":
        settings["multi_grid"] = (1, 2)
    model = checkpoints.create_layout_model(layout, **settings)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 33, 33, 3)), jnp.float32)
    variables = random_variables(model, x.shape)

    def run(feature_size):
        truncated = model.clone(feature_size=feature_size)
        return jax.jit(functools.partial(truncated.apply, method=truncated.intermediates))(
            variables, x
        )

    full = run(None)
    grid = full["decoder_logits"].shape[1]  # 9 (stride 4) or 5 (the ASPP grid, stride 8)
    np.testing.assert_array_equal(run(grid)["logits"], full["logits"])
    truncated = run(grid - 2)
    assert truncated["decoder_logits"].shape[1:3] == (grid - 2, grid - 2)
    assert truncated["logits"].shape == full["logits"].shape
    assert np.max(np.abs(truncated["logits"] - full["logits"])) > 1e-3


def test_model_options_are_checked():
    with pytest.raises(ValueError, match="multi_grid"):
        create_resnet("resnet50", multi_grid=(1, 2))
    with pytest.raises(ValueError, match="first_block_dilation"):
        create_resnet("resnet50", first_block_dilation="next")
    model = checkpoints.create_layout_model("torchvision_fcn", num_classes=3, head="fcm")
    with pytest.raises(ValueError, match="head must be one of"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------------------------------
# Slow: ResNet-101 references and other output strides, at full equality.

SLOW_CASES = {
    "torchvision_deeplabv3_r101": (
        "torchvision_deeplabv3",
        META_REFERENCES["torchvision_deeplabv3"],
        dict(backbone="resnet101", aux_head=True),
    ),
    "torchvision_fcn_r101": (
        "torchvision_fcn",
        META_REFERENCES["torchvision_fcn"],
        dict(backbone="resnet101", aux_head=True),
    ),
    "smp_deeplabv3plus_os8": (
        "smp_deeplabv3plus",
        lambda: smp.DeepLabV3Plus(
            "resnet50", encoder_weights=None, classes=NUM_CLASSES, encoder_output_stride=8
        ),
        dict(backbone="resnet50", output_stride=8),
    ),
    "smp_deeplabv3_os16": (
        "smp_deeplabv3",
        lambda: smp.DeepLabV3(
            "resnet101", encoder_weights=None, classes=NUM_CLASSES, encoder_output_stride=16
        ),
        dict(backbone="resnet101", output_stride=16),
    ),
    "pytorch_deeplab_xception_os8": (
        "pytorch_deeplab_xception",
        lambda: ReferenceDeepLab(output_stride=8),
        dict(backbone="resnet101", output_stride=8),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_slow_variants_match_the_reference(case):
    layout, build, settings = SLOW_CASES[case]
    torch.manual_seed(1)
    reference = _torch_deeplab.randomise_batch_norm(build(), 1)
    model = checkpoints.create_layout_model(layout, num_classes=NUM_CLASSES, **settings)
    variables = checkpoints.torch_to_flax_variables(
        numpy_state_dict(reference), model, layout=layout
    )
    images = np.random.default_rng(1).normal(size=(1, 64, 80, 3)).astype(np.float32)
    with torch.no_grad():
        out = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
    out = out["out"] if isinstance(out, dict) else out
    actual = jax.jit(model.apply)(variables, jnp.asarray(images))
    error = relative_error(actual, out.permute(0, 2, 3, 1).numpy())
    assert error <= TOLERANCE, error
    print(f"{case}: relative error {error:.2e}")
