"""Sampling with a context: Apply Context's patched clone, and headless rendering as ComfyUI's nodes do."""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_management
import comfy.sample
import comfy.samplers
import torch

from ..context import ReferenceContext
from ..errors import InvalidSettingError
from ..patch import ContextTokenPatch, block_weights, check_sampling_range, resolve_apply_to
from ..regions import ContextRegion
from .architecture import anima_geometry
from .regions import restrict_to_region
from .training import VAE_DOWNSCALE


def apply_reference_context(model, context: ReferenceContext, strength: float, apply_to: str,
                            start_percent: float = 0.0, end_percent: float = 1.0, blocks: str = "all", mask=None):
    """A clone of ``model`` whose cross-attention also attends to the context's tokens, in the
    sampling range and blocks chosen, and with a ``mask`` only from the image tokens inside it."""
    if not isinstance(context, ReferenceContext):
        raise InvalidSettingError(f"context must come from the Train Context Tokens node, got {type(context).__name__}.")
    num_blocks, width = anima_geometry(model)
    context.check_compatible(num_blocks, width)
    check_sampling_range(start_percent, end_percent)
    weights = block_weights(blocks, num_blocks)
    region = ContextRegion(mask) if mask is not None else None
    sigma_range = None
    if (start_percent, end_percent) != (0.0, 1.0):
        sampling = model.get_model_object("model_sampling")
        sigma_range = (float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)))
    patched = model.clone()
    rows, scale = resolve_apply_to(apply_to, context.metadata)
    patched.set_model_attn2_patch(ContextTokenPatch(context.tokens, strength=strength * scale, apply_to=rows,
                                                    sigma_range=sigma_range, block_weights=weights, region=region))
    if region is not None:
        restrict_to_region(patched, region)
    return patched


SAMPLER_NAMES, SCHEDULER_NAMES = comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS


def render(model, clip, vae, prompt: str, negative: str, width: int, height: int, steps: int, cfg: float,
           sampler: str, scheduler: str, seed: int, on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """CLIP Text Encode x2, Empty Latent Image, KSampler and VAE Decode: an IMAGE [1, H, W, 3]."""
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    negative_cond = clip.encode_from_tokens_scheduled(clip.tokenize(negative))
    latent = torch.zeros([1, 4, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE],
                         device=comfy.model_management.intermediate_device(), dtype=comfy.model_management.intermediate_dtype())
    # as KSampler does: the empty latent becomes Anima's [1, 16, 1, h, w] (Wan 2.1 format)
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)

    def callback(step, x0, x, total_steps):
        if on_step is not None:
            on_step(step + 1, total_steps)

    samples = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative_cond, latent,
                                  denoise=1.0, callback=callback, disable_pbar=True, seed=seed)
    images = vae.decode(samples)
    if images.ndim == 5:  # a video VAE: frames into the batch, as VAE Decode does
        images = images.reshape(-1, *images.shape[-3:])
    return images[:1]
