"""The one injection path, for training and sampling: an ``attn2_patch`` that appends each
block's context tokens to the cross-attention keys and values.

Protocol (ComfyUI's Cosmos/Anima ``Attention.compute_qkv``): called as
``patch(q, k, v, pe=..., attn_mask=None, extra_options=...)`` with ``k`` and ``v`` the context
``[B, N, width]`` before the k/v projections; returns a dict that may replace ``"k"`` and ``"v"``.
``extra_options`` holds ``block_index`` and, while sampling, ``cond_or_uncond``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .errors import InvalidSettingError, shortened
from .regions import ContextRegion, RegionKeys, ledger_of

# ComfyUI's labels for the chunks of a sampling batch (comfy/samplers.py: COND = 0, UNCOND = 1).
COND, UNCOND = 0, 1
ROW_CHOICES = ("positive", "negative", "both")  # the rows a ContextTokenPatch can act on
APPLY_TO_CHOICES = ("auto", *ROW_CHOICES)  # Apply Context's apply_to: "auto" picks the rows from the context
# Apply Context's defaults (README, "The defaults, measured"), chosen on the tag world, whose model takes who to
# draw from its prompt as Anima does. "auto" puts the tokens in the positive prompt's rows, where guidance multiplies
# their pull as it multiplies the prompt's own words: the character's own tags there draw it in 86% of samples on
# the tuning set, in both prompts' rows 31%. A context trained without a mask also learnt the references' scene, so
# "auto" gives it half its values there (its full pull brings that scene: asked scene 9%): on the final set the
# character in the asked scene 31% -> 39% from one reference and 17% -> 33% from three, against both prompts' rows
# at full values. Tokens trained with a mask and keep_background, held off the background, act at their full values.
# From 10% of sampling on, so the prompt lays out the scene first.
DEFAULT_APPLY_TO, DEFAULT_START_PERCENT = "auto", 0.1
AUTO_PLAIN_SCALE = 0.5  # "auto"'s factor on the strength of a context whose tokens also hold the references' scene


def resolve_apply_to(apply_to: str, metadata: Mapping[str, Any]) -> tuple[str, float]:
    """The rows (``ROW_CHOICES``) that Apply Context's ``apply_to`` means for a context with this metadata, and
    the factor it puts on ``strength`` (1 for a row choice the user made)."""
    if apply_to not in APPLY_TO_CHOICES:
        raise InvalidSettingError(f"apply_to must be one of {', '.join(APPLY_TO_CHOICES)}, got {shortened(str(apply_to), 40)!r}.")
    if apply_to != "auto":
        return apply_to, 1.0
    held_off_background = metadata.get("masked") and float(metadata.get("keep_background") or 0.0) > 0.0
    return "positive", 1.0 if held_off_background else AUTO_PLAIN_SCALE


class ContextTokenPatch:
    """Holds tokens ``[num_blocks, num_tokens, width]``; block ``i`` attends to ``tokens[i]``.

    ``strength`` scales what the tokens contribute (their values); 0 leaves the model exactly
    as it was. ``apply_to`` picks the batch rows that get the tokens while sampling; rows that
    do not get them see zero tokens, which Anima treats like its own zero padding of the prompt.
    ``region`` (Apply Context's mask) limits which image tokens see the tokens at all (``regions.py``).
    """

    def __init__(self, tokens: torch.Tensor, strength: float = 1.0, apply_to: str = "positive",
                 sigma_range: tuple[float, float] | None = None, block_weights: list[float] | None = None,
                 region: ContextRegion | None = None):
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be [num_blocks, num_tokens, width], got {tuple(tokens.shape)}")
        if apply_to not in ROW_CHOICES:
            raise ValueError(f"apply_to must be one of {ROW_CHOICES}, got {apply_to!r}")
        if block_weights is not None and len(block_weights) != tokens.shape[0]:
            raise ValueError(f"block_weights needs {tokens.shape[0]} values, got {len(block_weights)}")
        self.tokens = tokens
        self.strength = float(strength)
        self.apply_to = apply_to
        self.sigma_range = sigma_range  # (sigma_start, sigma_end): acts while start >= sigma >= end
        self.block_weights = block_weights
        self.region = region

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
        extra_options = extra_options or {}
        block = extra_options["block_index"]
        if block >= self.tokens.shape[0]:
            return {}
        strength = self.strength * (self.block_weights[block] if self.block_weights is not None else 1.0)
        if strength == 0.0 or not self._active_at(extra_options.get("sigmas")):
            return {}
        tokens = self.tokens[block].to(device=k.device, dtype=k.dtype)
        batch = k.shape[0]
        token_k = tokens.unsqueeze(0).expand(batch, -1, -1)
        token_v = token_k * strength if strength != 1.0 else token_k
        rows = self._row_weights(extra_options.get("cond_or_uncond"), batch, k.device, k.dtype)
        if rows is not None:
            token_k = token_k * rows
            token_v = token_v * rows
        if self.region is not None:
            self._record_region(q, k, token_k.shape[1], extra_options)
        return {"k": torch.cat([k, token_k], dim=1), "v": torch.cat([v, token_v], dim=1)}

    def _record_region(self, q, k, count: int, extra_options: dict) -> None:
        """Tell the forward's ledger which keys are ours and how much each image token sees them."""
        ledger = ledger_of(extra_options)
        if ledger is None:
            # Without the ledger the mask would be silently ignored: the context would act everywhere.
            raise RuntimeError("AnimaFastTrain: Apply Context's mask needs a ComfyUI whose Anima calls post_input "
                               "patches (update ComfyUI), and its model patch in place.")
        cond_or_uncond = extra_options.get("cond_or_uncond")
        weights = self.region.row_weights(k.shape[0], cond_or_uncond, ledger.grid, k.device)
        if q is not None and weights.shape[1] != q.shape[1]:
            raise RuntimeError(f"AnimaFastTrain: the mask covers {weights.shape[1]} image tokens but the cross-attention "
                               f"has {q.shape[1]}.")
        # the region lives as long as this patch, so its id names it for the whole forward
        source = (id(self.region), k.shape[0], tuple(cond_or_uncond or ()))
        ledger.record(extra_options["block_index"], RegionKeys(k.shape[1], count, weights, source))

    def _active_at(self, sigmas) -> bool:
        """Within the sampling range set by start/end percent, as ComfyUI's control nodes do."""
        if self.sigma_range is None or sigmas is None:
            return True
        sigma = float(sigmas.max()) if torch.is_tensor(sigmas) else float(sigmas)
        start, end = self.sigma_range
        # Sampling sigmas are float32, the range is float64: keep its ends inclusive.
        return end - 1e-6 <= sigma <= start + 1e-6

    def _row_weights(self, cond_or_uncond, batch: int, device, dtype):
        """[B, 1, 1] of 1 for rows that get the tokens and 0 for the others; None for all rows."""
        if self.apply_to == "both" or not cond_or_uncond:
            return None
        wanted = COND if self.apply_to == "positive" else UNCOND
        per_chunk = batch // len(cond_or_uncond)
        flags = [float(label == wanted) for label in cond_or_uncond for _ in range(per_chunk)]
        if all(flags):
            return None
        return torch.tensor(flags, device=device, dtype=dtype).view(-1, 1, 1)

    def to(self, device_or_dtype):
        """ComfyUI calls ``.to(device)`` then ``.to(dtype)`` when it moves the model: follow the
        device, keep the tokens' own dtype (they are cast per call to the attention's dtype)."""
        if isinstance(device_or_dtype, (torch.device, str)):
            self.tokens = self.tokens.to(device_or_dtype)
        return self


# The most blocks any Anima has (comfy/model_detection.py: 28 at width 2048, 36 at 5120): before the
# model is known, a block number at or above it is wrong for every Anima.
MAX_ANIMA_BLOCKS = 36
BLOCKS_HELP = "use 'all', a range like 0-9, a list like 0,3,5-7, or one weight per block with decimal points"


def parse_block_selection(text: str, num_blocks: int | None) -> list[float] | None:
    """``all`` (None), a range ``4-12`` or list ``0,3,5-7`` of blocks (weight 1, others 0), or one
    weight per block ``1,1,0.5,...``. Raises ValueError with what is wrong. ``num_blocks`` None
    (the model not known yet) checks the syntax and the ranges any Anima allows, and returns None."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return None
    limit = MAX_ANIMA_BLOCKS if num_blocks is None else num_blocks
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if any("." in part for part in parts):
        weights = []
        for part in parts:
            try:
                weights.append(float(part))
            except ValueError:
                raise ValueError(f"{shortened(part, 40)!r} is not a number") from None
        if not all(math.isfinite(weight) for weight in weights):
            raise ValueError("block weights must be finite")
        if num_blocks is not None and len(weights) != num_blocks:
            raise ValueError(f"{len(weights)} weights for {num_blocks} blocks")
        if len(weights) > limit:
            raise ValueError(f"{len(weights)} weights, more than any Anima has blocks ({limit})")
        return weights if num_blocks is not None else None
    chosen = set()
    for part in parts:
        first, dash, last = (piece.strip() for piece in part.partition("-"))
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{shortened(part, 40)!r} is not a block number or range")
        low, high = (int(number) if len(number) < 6 else limit for number in (first, last or first))
        if not 0 <= low <= high < limit:
            where = f"0..{limit - 1}" if num_blocks is not None else f"the blocks of any Anima (at most {limit})"
            raise ValueError(f"block range {shortened(part, 40)!r} is outside {where}")
        chosen.update(range(low, high + 1))
    if num_blocks is None:
        return None
    return [1.0 if index in chosen else 0.0 for index in range(num_blocks)]


def block_weights(text: str, num_blocks: int | None) -> list[float] | None:
    """``parse_block_selection`` for the Apply Context node: a bad ``blocks`` is an Invalid setting."""
    try:
        return parse_block_selection(text, num_blocks)
    except ValueError as error:
        raise InvalidSettingError(f"blocks {shortened(text, 40)!r}: {error}; {BLOCKS_HELP}.") from None


def check_sampling_range(start_percent: float, end_percent: float) -> None:
    """Apply Context's start/end percent: both in 0..1, start not after end."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise InvalidSettingError(f"start_percent ({start_percent}) must not be above end_percent ({end_percent}), both in 0..1.")
