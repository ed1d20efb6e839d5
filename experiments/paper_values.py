"""The main paper's published numbers (Chen, Chiu, Wu), for the reports to set beside ours.

Transcribed from *Spectral Analysis for Semantic Segmentation with Applications on Feature
Truncation and Weak Annotation* (Chen, Chiu, Wu; arXiv:2012.14123), its Tables 1-4 and
Sec. 3.2. Keys: model ``"deeplab"`` or ``"dan"``, data set ``"pascal"``, ``"deepglobe"``
or ``"cityscapes"``; our embedded presets stand in for them as ``PRESET_OF_DATASET`` says.
"""

from __future__ import annotations

DATASETS = ("pascal", "deepglobe", "cityscapes")
MODELS = ("deeplab", "dan")
# The embedded data set's preset that mimics each of the paper's data sets.
PRESET_OF_DATASET = {
    "pascal": "synthetic_scenes/pascal_like",
    "deepglobe": "synthetic_scenes/deepglobe_like",
    "cityscapes": "synthetic_scenes/cityscapes_like",
}

# Table 1: R(nu_max) of the trained models, at 513 x 513.
TABLE1_BAND_LIMITS = (8, 16, 32, 64, 256)
TABLE1_RELATIVE_DISCREPANCY = {
    "deeplab": {
        "pascal": (0.275, 0.040, 0.018, 0.010, 0.0),
        "deepglobe": (0.102, 0.028, 0.010, 0.005, 0.0),
        "cityscapes": (2.152, 0.668, 0.146, 0.017, 0.0),
    },
    "dan": {
        "pascal": (0.248, 0.035, 0.019, 0.009, 0.0),
        "deepglobe": (0.081, 0.021, 0.008, 0.004, 0.0),
        "cityscapes": (1.307, 0.255, 0.029, 0.012, 0.0),
    },
}


# Tables 2 (DeepLab v3+) and 4 (DAN): mIoU by encoder pruning rate and feature size.
# FLOPs (1e9) and "pruned FLOPs" are the same columns in both tables (Table 4's FLOPs
# column repeats Table 2's, although the text gives DAN's decoder 11.1 G, not 43.4 G).
PRUNING_RATES = (0.0, 0.2, 0.4, 0.6)
FEATURE_SIZES = (129, 65, 33)
TABLE2_FLOPS = {
    0.0: (139, 107, 98),
    0.2: (100, 76, 70),
    0.4: (77, 53, 47),
    0.6: (59, 35, 29),
}
TABLE2_PRUNED_FLOPS_PERCENT = {
    0.0: (0.0, 23.3, 29.2),
    0.2: (28.2, 45.6, 49.6),
    0.4: (44.7, 61.8, 66.1),
    0.6: (57.7, 74.8, 79.1),
}
TABLE2_MIOU = {  # deeplab; per pruning rate: {dataset: (129, 65, 33)}
    0.0: {
        "pascal": (78.6, 78.1, 75.6),
        "deepglobe": (53.9, 53.6, 53.1),
        "cityscapes": (67.8, 62.7, 53.3),
    },
    0.2: {
        "pascal": (76.6, 76.0, 73.2),
        "deepglobe": (53.7, 53.4, 52.7),
        "cityscapes": (67.2, 62.4, 53.4),
    },
    0.4: {
        "pascal": (74.4, 73.9, 72.1),
        "deepglobe": (53.0, 52.7, 52.0),
        "cityscapes": (66.1, 61.5, 52.8),
    },
    0.6: {
        "pascal": (65.1, 64.7, 63.3),
        "deepglobe": (50.1, 49.9, 49.4),
        "cityscapes": (58.6, 54.8, 47.4),
    },
}
TABLE4_MIOU = {  # dan
    0.0: {
        "pascal": (78.7, 77.9, 74.5),
        "deepglobe": (53.6, 53.3, 52.7),
        "cityscapes": (66.4, 61.0, 50.0),
    },
    0.2: {
        "pascal": (76.8, 75.9, 72.8),
        "deepglobe": (53.6, 53.2, 52.4),
        "cityscapes": (65.8, 60.3, 49.0),
    },
    0.4: {
        "pascal": (74.6, 73.8, 71.3),
        "deepglobe": (52.3, 51.9, 50.7),
        "cityscapes": (65.1, 59.8, 48.9),
    },
    0.6: {
        "pascal": (65.6, 65.1, 63.0),
        "deepglobe": (49.5, 49.4, 48.9),
        "cityscapes": (57.0, 52.4, 42.8),
    },
}
MIOU_BY_MODEL = {"deeplab": TABLE2_MIOU, "dan": TABLE4_MIOU}
# Sec. 3.2: encoder / decoder FLOPs (1e9) and parameters (1e6) at 513 x 513.
ENCODER_GFLOPS = 95.6
DECODER_GFLOPS = {"deeplab": 43.4, "dan": 11.1}
ENCODER_MPARAMS = 60.1
DECODER_MPARAMS = {"deeplab": 1.3, "dan": 0.4}

# Table 3: block-wise annotation, mIoU (a) and relative mIoU (b) by band limit.
TABLE3_BAND_LIMITS = (8, 16, 32, 256)
TABLE3_MIOU = {
    "deeplab": {
        "pascal": (0.682, 0.746, 0.775, 0.786),
        "deepglobe": (0.514, 0.535, 0.536, 0.539),
        "cityscapes": (0.385, 0.500, 0.593, 0.678),
    },
    "dan": {
        "pascal": (0.687, 0.746, 0.777, 0.787),
        "deepglobe": (0.500, 0.522, 0.533, 0.536),
        "cityscapes": (0.384, 0.501, 0.585, 0.664),
    },
}
TABLE3_RELATIVE_MIOU = {
    "deeplab": {
        "pascal": (0.868, 0.949, 0.986, 1.0),
        "deepglobe": (0.954, 0.993, 0.994, 1.0),
        "cityscapes": (0.568, 0.737, 0.875, 1.0),
    },
    "dan": {
        "pascal": (0.873, 0.948, 0.987, 1.0),
        "deepglobe": (0.933, 0.974, 0.993, 1.0),
        "cityscapes": (0.578, 0.755, 0.882, 1.0),
    },
}


def table1_relative_discrepancy(model: str, dataset: str, band_limit: int) -> float:
    """Table 1: ``R(band_limit)`` of the trained ``model`` on ``dataset`` (513 x 513 maps).

    ``band_limit`` is one of :data:`TABLE1_BAND_LIMITS`.
    """
    return TABLE1_RELATIVE_DISCREPANCY[model][dataset][TABLE1_BAND_LIMITS.index(band_limit)]


def table3_relative_miou(model: str, dataset: str, band_limit: int) -> float:
    """Table 3 (b): relative mIoU of ``model`` trained on block-wise labels at ``band_limit``.

    ``band_limit`` is one of :data:`TABLE3_BAND_LIMITS`.
    """
    return TABLE3_RELATIVE_MIOU[model][dataset][TABLE3_BAND_LIMITS.index(band_limit)]
