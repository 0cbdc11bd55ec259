"""The exactness check of masked contexts, shared by the tests and ``bench/gpu_check.py``.

While a model runs with masked contexts, every block's cross-attention call is recorded (its inputs,
options and output). Each call is then run again on the same inputs: with no context, and with each
combination of the contexts without their masks. An image token outside every mask must get the
no-context output; one fully inside some masks must get the output of exactly those contexts unmasked.
Tokens on a soft mask edge are not compared.
"""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager

import torch

from anima_context.patch import ContextTokenPatch
from anima_context.regions import RegionAttention, ledger_of


class CrossAttentionCalls:
    """Records every block's cross-attention call while active: (block, module, args, kwargs, options, output)."""

    def __init__(self, diffusion_model):
        self.blocks = diffusion_model.blocks
        self.calls: list[tuple] = []
        self._paused = False

    def __enter__(self):
        self._handles = [block.cross_attn.register_forward_hook(self._hook(index), with_kwargs=True)
                         for index, block in enumerate(self.blocks)]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()

    def _hook(self, index):
        def hook(module, args, kwargs, output):
            if not self._paused:
                # the DiT reuses one options dict for all blocks (block_index changes): keep a copy
                options = dict(kwargs.get("transformer_options") or {})
                self.calls.append((index, module, args, dict(kwargs), options, output.detach().clone()))
        return hook

    @contextmanager
    def paused(self):
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def rerun(self, call, attn2_patches: list) -> torch.Tensor:
        """The same call with these attn2 patches, no ledger and the server's own attention."""
        _, module, args, kwargs, options, _ = call
        options = dict(options)
        options["patches"] = {**options.get("patches", {}), "attn2_patch": list(attn2_patches)}
        options.pop("model_patch_data", None)
        override = options.get("optimized_attention_override")
        if isinstance(override, RegionAttention):
            if override.previous is None:
                options.pop("optimized_attention_override")
            else:
                options["optimized_attention_override"] = override.previous
        with self.paused(), torch.no_grad():
            return module(*args, **{**kwargs, "transformer_options": options})


def unmasked(patch: ContextTokenPatch) -> ContextTokenPatch:
    twin = copy.copy(patch)
    twin.region = None
    return twin


def region_errors(recorder: CrossAttentionCalls) -> dict:
    """Largest |difference| outside every mask (against no context) and inside (against the same
    contexts unmasked), over every recorded call, with how many tokens each side had, the largest
    |output| (``scale``) and the outputs' dtype."""
    worst = {"outside": 0.0, "inside": 0.0, "outside_tokens": 0, "inside_tokens": 0, "calls": 0, "scale": 0.0,
             "dtype": None}
    for call in recorder.calls:
        options, output = call[4], call[5]
        patches = options.get("patches", {}).get("attn2_patch", [])
        masked = [p for p in patches if isinstance(p, ContextTokenPatch) and p.region is not None]
        if not masked:
            continue
        others = [p for p in patches if p not in masked]
        ledger = ledger_of(options)
        weights = torch.stack([p.region.row_weights(output.shape[0], options.get("cond_or_uncond"), ledger.grid,
                                                    output.device) for p in masked])  # [patches, B, S]
        exact = ((weights == 0) | (weights == 1)).all(dim=0)  # [B, S]
        worst["calls"] += 1
        worst["scale"] = max(worst["scale"], float(output.abs().max()))
        worst["dtype"] = str(output.dtype)
        for inside in itertools.product((False, True), repeat=len(masked)):
            chosen = torch.tensor(inside, device=weights.device).view(-1, 1, 1)
            tokens = exact & ((weights == 1) == chosen).all(dim=0)
            if not bool(tokens.any()):
                continue
            reference = recorder.rerun(call, others + [unmasked(p) for p, take in zip(masked, inside) if take])
            error = float((output - reference).abs()[tokens].max())
            side = "inside" if any(inside) else "outside"
            worst[side] = max(worst[side], error)
            worst[f"{side}_tokens"] += int(tokens.sum())
    return worst
