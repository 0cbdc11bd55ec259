"""The errors users search for. Each message starts with a fixed phrase and says how to fix it."""


# ComfyUI names an error by ``type.__module__ + "." + __qualname__`` (execution.py, full_type_name);
# a custom node's module is named after its folder path, so the UI would show that path.
TYPE_PREFIX = "AnimaFastTrain"


class AnimaFastTrainError(Exception):
    """Base class: every error this pack raises on purpose."""

    phrase = "AnimaFastTrain error"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = TYPE_PREFIX

    def __init__(self, detail: str):
        super().__init__(f"{self.phrase}: {detail}")
        self.detail = detail


AnimaFastTrainError.__module__ = TYPE_PREFIX


class InvalidReferenceImageError(AnimaFastTrainError, ValueError):
    phrase = "Invalid reference image shape"


class TokenOptimizationError(AnimaFastTrainError, RuntimeError):
    phrase = "Token optimization failed"


class IncompatibleModelError(AnimaFastTrainError, ValueError):
    phrase = "Incompatible model architecture"


class InvalidSettingError(AnimaFastTrainError, ValueError):
    phrase = "Invalid setting"


class TrainingOutOfMemoryError(AnimaFastTrainError, MemoryError):
    phrase = "Out of memory while training"


class InvalidContextFileError(AnimaFastTrainError, ValueError):
    phrase = "Invalid context file"


class InvalidTrainingMaskError(AnimaFastTrainError, ValueError):
    phrase = "Invalid training mask"


class InvalidContextMaskError(AnimaFastTrainError, ValueError):
    phrase = "Invalid context mask"


def shortened(text: str, limit: int = 60) -> str:
    """User text or names quoted in a message, cut so that a message stays a few hundred characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
