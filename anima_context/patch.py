"""The one injection path, for training and sampling: an ``attn2_patch`` that appends each
block's context tokens to the cross-attention keys and values.

Protocol (ComfyUI's Cosmos/Anima ``Attention.compute_qkv``): called as
``patch(q, k, v, pe=..., attn_mask=None, extra_options=...)`` with ``k`` and ``v`` the context
``[B, N, width]`` before the k/v projections; returns a dict that may replace ``"k"`` and ``"v"``.
``extra_options`` holds ``block_index`` and, while sampling, ``cond_or_uncond``.
"""

from __future__ import annotations

import torch

# ComfyUI's labels for the chunks of a sampling batch (comfy/samplers.py: COND = 0, UNCOND = 1).
COND, UNCOND = 0, 1
APPLY_TO_CHOICES = ("positive", "negative", "both")


class ContextTokenPatch:
    """Holds tokens ``[num_blocks, num_tokens, width]``; block ``i`` attends to ``tokens[i]``.

    ``strength`` scales what the tokens contribute (their values); 0 leaves the model exactly
    as it was. ``apply_to`` picks the batch rows that get the tokens while sampling; rows that
    do not get them see zero tokens, which Anima treats like its own zero padding of the prompt.
    """

    def __init__(self, tokens: torch.Tensor, strength: float = 1.0, apply_to: str = "positive",
                 sigma_range: tuple[float, float] | None = None, block_weights: list[float] | None = None):
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be [num_blocks, num_tokens, width], got {tuple(tokens.shape)}")
        if apply_to not in APPLY_TO_CHOICES:
            raise ValueError(f"apply_to must be one of {APPLY_TO_CHOICES}, got {apply_to!r}")
        if block_weights is not None and len(block_weights) != tokens.shape[0]:
            raise ValueError(f"block_weights needs {tokens.shape[0]} values, got {len(block_weights)}")
        self.tokens = tokens
        self.strength = float(strength)
        self.apply_to = apply_to
        self.sigma_range = sigma_range  # (sigma_start, sigma_end): acts while start >= sigma >= end
        self.block_weights = block_weights

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
        return {"k": torch.cat([k, token_k], dim=1), "v": torch.cat([v, token_v], dim=1)}

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


def parse_block_selection(text: str, num_blocks: int) -> list[float] | None:
    """``all`` (None), a range ``4-12`` or list ``0,3,5-7`` of blocks (weight 1, others 0), or one
    weight per block ``1,1,0.5,...``. Raises ValueError with what is wrong."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return None
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) == num_blocks and any("." in part for part in parts):
        weights = [float(part) for part in parts]
        return weights
    chosen = set()
    for part in parts:
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if not 0 <= low <= high < num_blocks:
            raise ValueError(f"block range {part!r} is outside 0..{num_blocks - 1}")
        chosen.update(range(low, high + 1))
    return [1.0 if index in chosen else 0.0 for index in range(num_blocks)]
