"""Evaluation: the one evaluation loop, the segmentation metrics, the boundary counts and
the statistics over seeds (:mod:`spectral_jax.evaluation.spread`).

:class:`Evaluator` is what the trainer and every experiment evaluate with
(:mod:`spectral_jax.evaluation.evaluator`).
"""

from spectral_jax.evaluation.boundary import BOUNDARY_SCORES as BOUNDARY_SCORES
from spectral_jax.evaluation.boundary import (
    valid_region_boundary_statistics as valid_region_boundary_statistics,
)
from spectral_jax.evaluation.evaluator import REPORTED_BAND_LIMITS as REPORTED_BAND_LIMITS
from spectral_jax.evaluation.evaluator import EvaluationResult as EvaluationResult
from spectral_jax.evaluation.evaluator import Evaluator as Evaluator
from spectral_jax.evaluation.evaluator import eval_step as eval_step
from spectral_jax.evaluation.evaluator import inference_apply_fn as inference_apply_fn
from spectral_jax.evaluation.metrics import confusion_matrix as confusion_matrix
from spectral_jax.evaluation.metrics import cross_entropy_loss as cross_entropy_loss
from spectral_jax.evaluation.metrics import iou_from_confusion as iou_from_confusion
from spectral_jax.evaluation.metrics import mean_iou as mean_iou
from spectral_jax.evaluation.metrics import pixel_accuracy as pixel_accuracy
from spectral_jax.evaluation.spread import CONFIDENCE as CONFIDENCE
from spectral_jax.evaluation.spread import RankCorrelation as RankCorrelation
from spectral_jax.evaluation.spread import Spread as Spread
from spectral_jax.evaluation.spread import bootstrap_spearman as bootstrap_spearman
from spectral_jax.evaluation.spread import compute_spread as compute_spread
from spectral_jax.evaluation.spread import spearman_correlation as spearman_correlation

__all__ = [
    "BOUNDARY_SCORES",
    "CONFIDENCE",
    "EvaluationResult",
    "Evaluator",
    "REPORTED_BAND_LIMITS",
    "RankCorrelation",
    "Spread",
    "bootstrap_spearman",
    "compute_spread",
    "confusion_matrix",
    "cross_entropy_loss",
    "eval_step",
    "inference_apply_fn",
    "iou_from_confusion",
    "mean_iou",
    "pixel_accuracy",
    "spearman_correlation",
    "valid_region_boundary_statistics",
]
