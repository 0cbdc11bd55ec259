"""AnimaFastTrain core: per-block context tokens for Anima's cross-attention.

Importing this package does not import ComfyUI; only the ``comfy_glue`` package does.
"""

from .context import ReferenceContext
from .errors import (
    AnimaFastTrainError,
    IncompatibleModelError,
    InvalidContextFileError,
    InvalidReferenceImageError,
    InvalidSettingError,
    TokenOptimizationError,
    TrainingOutOfMemoryError,
)
from .patch import APPLY_TO_CHOICES, ContextTokenPatch
from .trainer import TrainResult, TrainSettings, train_tokens

__all__ = [
    "APPLY_TO_CHOICES",
    "AnimaFastTrainError",
    "ContextTokenPatch",
    "IncompatibleModelError",
    "InvalidContextFileError",
    "InvalidReferenceImageError",
    "InvalidSettingError",
    "ReferenceContext",
    "TokenOptimizationError",
    "TrainResult",
    "TrainingOutOfMemoryError",
    "TrainSettings",
    "train_tokens",
]
