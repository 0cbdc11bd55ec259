"""Where a context acts: Apply Context's MASK as a weight per image token, and the attention bias
that hides a context's tokens from the image tokens outside it.

How it reaches the attention (ComfyUI's Cosmos/Anima forward, ``comfy/ldm/cosmos/predict2.py``):
- a ``post_input`` patch runs once per forward, sees the patched image ``[B, T, H, W, D]`` and a fresh
  ``transformer_options["model_patch_data"]`` that every block's options share; ``RegionGridRecorder``
  puts a ``RegionLedger`` there with the token grid;
- each masked ``ContextTokenPatch`` appends its tokens as every patch does (one injection path) and
  records in the ledger which keys are its own and how much each image token may see them;
- the cross-attention's next call of the attention function reaches ``RegionAttention`` through
  ``transformer_options["optimized_attention_override"]``, which turns the records into an additive
  mask: 0 where a token sees the keys fully, ``log(weight)`` where a soft mask edge lets it see them
  partly, and ``NEG_BIAS`` (nothing) outside. Outside every mask the softmax gives the context's keys
  exactly zero weight: the block computes what it computes without the context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidContextMaskError
from .masks import mask_batch

LEDGER_KEY = "anima_fasttrain_regions"
# Far below any cross-attention logit (RMS-normalised queries and keys keep them within tens), so exp()
# gives exactly 0 in float32, bfloat16 and float16; finite, so a chunked softmax whose chunk holds only
# hidden keys (ComfyUI's sub-quadratic attention) subtracts a finite maximum instead of making NaN.
NEG_BIAS = -1.0e4
PATCH_SIZE = 2  # Anima patches the latent 2x2 into image tokens
ASPECT_TOLERANCE = 0.02
MASK_BATCH_HELP = "connect one mask, or one per latent in the batch"


class ContextRegion:
    """Apply Context's ``mask`` (a MASK ``[N, H, W]`` or ``[H, W]`` in 0..1, any size), as weights per
    image token for the latent grids it is sampled on."""

    def __init__(self, mask):
        self.mask = mask_batch(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, "mask", InvalidContextMaskError)
        self._weights: dict[tuple, torch.Tensor] = {}

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])

    def is_empty(self) -> bool:
        return not bool((self.mask > 0).any())

    def check_latent(self, latent_batch: int, latent_height: int, latent_width: int) -> str:
        """Before sampling: refuse a mask batch that fits neither one nor every latent; returns a one-line
        notice when the mask's aspect ratio differs from the latent's (it is stretched), else ''."""
        if self.batch not in (1, latent_batch):
            raise InvalidContextMaskError(f"{self.batch} masks for a latent batch of {latent_batch}; {MASK_BATCH_HELP}.")
        height, width = self.mask.shape[-2:]
        mask_aspect, latent_aspect = width / height, latent_width / latent_height
        if abs(math.log(mask_aspect / latent_aspect)) > ASPECT_TOLERANCE:
            return (f"AnimaFastTrain: Apply Context's mask is {width}x{height} but the picture is "
                    f"{latent_width * 8}x{latent_height * 8}; the mask is stretched to fit.")
        return ""

    def token_weights(self, grid: tuple[int, int, int], device) -> torch.Tensor:
        """[N, T*H*W] for a token grid (T, H, W): the mask resized to the latent grid (2H x 2W) with
        bilinear filtering, as ComfyUI's regional conditioning resizes its masks, then averaged over
        each 2x2 patch. Cached per grid and device."""
        key = (tuple(grid), str(device))
        if key not in self._weights:
            frames, height, width = grid
            latent = F.interpolate(self.mask.unsqueeze(1), size=(height * PATCH_SIZE, width * PATCH_SIZE), mode="bilinear",
                                   align_corners=False)
            per_token = F.avg_pool2d(latent, PATCH_SIZE).clamp(0.0, 1.0).flatten(1)  # [N, H*W], row-major as the DiT
            self._weights[key] = per_token.repeat(1, frames).to(device)
        return self._weights[key]

    def row_weights(self, batch: int, cond_or_uncond, grid, device) -> torch.Tensor:
        """[batch, tokens]: each row of the DiT's batch gets the mask of its latent. CFG stacks one
        chunk per prompt (``cond_or_uncond``), each chunk the whole latent batch."""
        weights = self.token_weights(grid, device)
        chunks = len(cond_or_uncond) if cond_or_uncond else 1
        per_chunk = batch // chunks
        if self.batch == 1:
            return weights.expand(batch, -1)
        if self.batch != per_chunk or per_chunk * chunks != batch:
            raise InvalidContextMaskError(f"{self.batch} masks for a latent batch of {per_chunk}; {MASK_BATCH_HELP}.")
        return weights.repeat(chunks, 1)


@dataclass(frozen=True)
class RegionKeys:
    """Keys ``start .. start + count`` of one cross-attention call, seen by image token j of row b with
    ``weights[b, j]``; ``source`` names where the weights came from (the region and the batch layout),
    so that blocks with the same layout share one bias."""

    start: int
    count: int
    weights: torch.Tensor
    source: tuple = ()


class RegionLedger:
    """One forward's token grid, and the masked keys recorded for the cross-attention being prepared."""

    def __init__(self, grid: tuple[int, int, int]):
        self.grid = grid
        self._block = None
        self._keys: list[RegionKeys] = []
        self._biases: dict[tuple, torch.Tensor] = {}

    def record(self, block: int, keys: RegionKeys) -> None:
        if block != self._block:
            self._check_nothing_left()
            self._block = block
        self._keys.append(keys)

    def take(self, block) -> list[RegionKeys]:
        """The keys recorded for this block's cross-attention, once; an attention call of a later block
        while keys are left means the cross-attention ran without its mask."""
        if block != self._block:
            self._check_nothing_left()
            return []
        keys, self._block, self._keys = self._keys, None, []
        return keys

    def _check_nothing_left(self) -> None:
        if self._keys:  # that block's attention never asked for its mask: the context acted everywhere
            raise RuntimeError(
                f"AnimaFastTrain: block {self._block}'s cross-attention ran without Apply Context's mask: another "
                "node replaced the attention function (optimized_attention_override) after Apply Context. "
                "Connect that node before the Apply Context nodes.")

    def bias(self, keys: list[RegionKeys], queries: int, total_keys: int, dtype, device) -> torch.Tensor:
        """The additive attention mask [B, 1, queries, total_keys]; blocks with the same key layout share one
        (keys without a ``source`` never share)."""
        cache_key = (tuple((k.start, k.count, k.source) for k in keys), queries, total_keys, dtype, str(device))
        if any(not k.source for k in keys) or cache_key not in self._biases:
            batch = keys[0].weights.shape[0]
            bias = torch.zeros(batch, 1, queries, total_keys, dtype=dtype, device=device)
            for region in keys:
                if region.weights.shape != (batch, queries) or region.start + region.count > total_keys:
                    raise RuntimeError(
                        f"AnimaFastTrain: a masked context expected {queries} image tokens and keys up to "
                        f"{region.start + region.count}, but the cross-attention has {queries} x {total_keys} "
                        f"(weights {tuple(region.weights.shape)}); this ComfyUI's Anima differs from the one the pack supports.")
                weights = region.weights.to(device=device, dtype=torch.float32)
                log_weights = torch.where(weights > 0, weights.clamp_min(1e-30).log(), NEG_BIAS).clamp_min(NEG_BIAS)
                bias[:, 0, :, region.start:region.start + region.count] = log_weights.to(dtype).unsqueeze(-1)
            self._biases[cache_key] = bias
        return self._biases[cache_key]


def ledger_of(options: dict | None) -> RegionLedger | None:
    data = (options or {}).get("model_patch_data")
    return data.get(LEDGER_KEY) if isinstance(data, dict) else None


class RegionGridRecorder:
    """``post_input`` patch: starts each forward's ledger with the token grid of the patched image."""

    def __call__(self, args: dict) -> dict:
        image = args["img"]  # [B, T, H, W, D]
        data = args["transformer_options"].get("model_patch_data")
        if isinstance(data, dict):
            data[LEDGER_KEY] = RegionLedger(tuple(int(n) for n in image.shape[1:4]))
        return args

    def to(self, *args, **kwargs):  # ComfyUI moves model patches with the model
        return self


class RegionAttention:
    """``optimized_attention_override``: adds the masked contexts' bias to the cross-attention that
    their patches just prepared; every other attention call passes through unchanged (to ``previous``,
    an override that was there before, or to the server's attention).

    ``with_mask(func)`` picks the attention function that takes the mask (the server's, unless it has
    no mask support). ComfyUI calls an override as ``override(func, q, k, v, heads, **kwargs)``.
    """

    def __init__(self, previous: Callable | None = None, with_mask: Callable[[Callable], Callable] = lambda func: func):
        self.previous = previous
        self.with_mask = with_mask

    def __call__(self, func, *args, **kwargs):
        options = kwargs.get("transformer_options")
        ledger = ledger_of(options)
        keys = ledger.take(options.get("block_index")) if ledger is not None else []
        if keys:
            q, k = args[0], args[1]
            if kwargs.get("skip_reshape"):  # [B, heads, tokens, dim]
                queries, total_keys = q.shape[-2], k.shape[-2]
            else:  # [B, tokens, heads * dim]
                queries, total_keys = q.shape[1], k.shape[1]
            bias = ledger.bias(keys, queries, total_keys, q.dtype, q.device)
            if kwargs.get("mask") is not None:
                bias = bias + kwargs["mask"]
            kwargs = {**kwargs, "mask": bias}
            func = self.with_mask(func)
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)
