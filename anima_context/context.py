"""The trained context: per-block tokens plus what they were trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import IncompatibleModelError


@dataclass(frozen=True)
class ReferenceContext:
    """Per-block cross-attention tokens ``[num_blocks, num_tokens, width]`` (float32, CPU)
    and the metadata of the run that made them (steps, learning rate, losses, prompt, ...)."""

    tokens: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.tokens.ndim != 3:
            raise ValueError(f"context tokens must be [num_blocks, num_tokens, width], got {tuple(self.tokens.shape)}")

    @property
    def num_blocks(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def width(self) -> int:
        return int(self.tokens.shape[2])

    def check_compatible(self, num_blocks: int, width: int) -> None:
        """Refuse a model of another block count or context width than the one trained on."""
        if (num_blocks, width) != (self.num_blocks, self.width):
            raise IncompatibleModelError(
                f"this context was trained for a model with {self.num_blocks} blocks and context width "
                f"{self.width}, but the MODEL has {num_blocks} blocks and width {width}. "
                "Train a new context with this model, or connect the model it was trained on."
            )
