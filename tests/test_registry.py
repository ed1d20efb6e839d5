"""Tests of spectral_jax.models.registry: configs become models, and their inputs."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from experiments.configs import tiny
from spectral_jax.data import dct_pipeline
from spectral_jax.models import DAN, DCTDeepLabV3Plus, DeepLabV3Plus, registry
from spectral_jax.models.registry import create_model


# The paper's Sec. 3: crop 513, batch 8, ResNet-101, and per data set (lr, epochs).
@pytest.mark.parametrize(
    "name, dataset, learning_rate, epochs",
    [
        ("pascal", "voc_sbd", 0.0007, 100),
        ("deepglobe", "deepglobe_land_cover", 0.007, 600),
        ("cityscapes", "cityscapes", 0.001, 200),
    ],
)
def test_paper_configs(name, dataset, learning_rate, epochs):
    module = importlib.import_module(f"experiments.configs.{name}")
    config = module.get_config()
    assert (config.dataset, config.learning_rate, config.num_epochs) == (
        dataset,
        learning_rate,
        epochs,
    )
    assert (config.crop_size, config.batch_size, config.model.backbone) == (513, 8, "resnet101")
    assert (config.momentum, config.lr_power, config.weight_decay) == (0.9, 0.9, 1e-4)
    assert "python -m experiments.train" in module.__doc__ and "Expected" in module.__doc__
    model = create_model(config.model, num_classes=21)
    assert type(model).__name__ == "DeepLabV3Plus" and model.feature_size is None


def test_tiny_config_is_small():
    from experiments.configs import tiny

    config = tiny.get_config()
    assert 65 <= config.crop_size <= 129 and config.model.backbone == "resnet_tiny"
    assert config.num_train_steps > 0 and "mIoU" in tiny.__doc__


@pytest.mark.parametrize("config_name", ["tiny", "pascal"])
def test_any_config_builds_dan(config_name):
    """``--config.model.name=dan`` alone works: low_level_channels becomes DAN's width."""
    config = importlib.import_module(f"experiments.configs.{config_name}").get_config()
    config.model.name = "dan"
    model = create_model(config.model, num_classes=5)
    assert type(model).__name__ == "DAN"
    # The paper's configs keep the default 48 of both models.
    assert model.projection_channels == config.model.get("low_level_channels", 48)
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 65, 65, 5)
    config.model.low_level_channels = 8
    config.model.projection_channels = 16
    with pytest.raises(ValueError, match="both low_level_channels and projection_channels"):
        create_model(config.model, num_classes=5)


@pytest.mark.parametrize(
    ("name", "layout", "cls", "shape"),
    [
        ("deeplabv3plus", None, DeepLabV3Plus, (64, 64, 3)),
        ("dan", None, DAN, (64, 64, 3)),
        ("dct_deeplabv3plus", None, DCTDeepLabV3Plus, (16, 16, 192)),  # segmentation
        ("dct_deeplabv3plus", "segmentation", DCTDeepLabV3Plus, (16, 16, 192)),
        ("dct_deeplabv3plus", "classification", DCTDeepLabV3Plus, (8, 8, 192)),
    ],
)
def test_every_name_builds_its_class_and_input(name, layout, cls, shape):
    config = tiny.get_config().model
    config.name = name
    if layout is not None:
        config.layout = layout
    model = create_model(config, num_classes=4)
    assert type(model) is cls and model.num_classes == 4
    assert registry.input_shape(config, image_size=64) == shape
    assert registry._is_dct_model(config) == (name == "dct_deeplabv3plus")
    # The input the registry names initialises the model, which predicts at 64 x 64.
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 64, 64, 4)


def test_equal_configs_give_equal_models():
    """The trainer caches its compiled steps per model: equal configs must hash alike."""
    config = tiny.get_config().model
    config.downsample_filter = "freqmix"
    config.name = "deeplabv3plus"
    first, second = create_model(config, num_classes=3), create_model(config, num_classes=3)
    assert first == second and hash(first) == hash(second)


def test_lists_become_tuples():
    config = ml_collections.ConfigDict(
        {"name": "dct_deeplabv3plus", "backbone": "resnet_tiny", "channels": [0, 1, 2]}
    )
    assert create_model(config, num_classes=3).channels == (0, 1, 2)


def test_unknown_name_and_filter_are_rejected():
    config = tiny.get_config().model
    config.name = "unet"
    with pytest.raises(ValueError, match="config.model.name"):
        create_model(config, num_classes=3)
    with pytest.raises(ValueError, match="config.model.name"):
        registry.input_shape(config, image_size=64)
    config.name, config.layout = "dct_deeplabv3plus", "jpeg"
    with pytest.raises(ValueError, match="layout"):
        registry.input_shape(config, image_size=64)
    config = tiny.get_config().model
    config.downsample_filter = "blur"
    with pytest.raises(ValueError, match="downsample_filter"):
        create_model(config, num_classes=3)


def test_every_model_input_kind_has_a_run_pipeline():
    assert set(registry.INPUT_KINDS) == set(registry.MODELS)
    assert set(registry.INPUT_KINDS.values()) == set(dct_pipeline.RUN_INPUTS)
    assert dct_pipeline.RUN_INPUTS["dct"] is dct_pipeline.dct_run_pipeline
    pipeline = object()  # The RGB models take the run's pipeline as it is.
    assert dct_pipeline.RUN_INPUTS["rgb"](tiny.get_config(), pipeline, "/nonexistent") is pipeline
