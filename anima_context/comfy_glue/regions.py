"""Apply Context's mask, wired into ComfyUI: the post_input patch that records the token grid, the
attention override that hides the tokens outside the mask, and the checks made before sampling."""

from __future__ import annotations

import logging

import comfy.ldm.modules.attention as attention
import comfy.patcher_extension

from ..regions import ContextRegion, RegionAttention, RegionGridRecorder


def _with_mask(func):
    """The masked cross-attention runs through ComfyUI's PyTorch attention (SDPA), whatever the server's:
    flash has no mask (it logs and retries), and the split / sub-quadratic ones expand the mask per head
    (measured 1.09x a CPU step against 1.0x with SDPA). Every other call keeps the server's attention."""
    return attention.attention_pytorch


def restrict_to_region(patched, region: ContextRegion) -> None:
    """Install, once per MODEL chain, what a masked ContextTokenPatch needs; add this mask's checks."""
    options = patched.model_options.setdefault("transformer_options", {})
    if not any(isinstance(patch, RegionGridRecorder) for patch in options.get("patches", {}).get("post_input", [])):
        patched.set_model_post_input_patch(RegionGridRecorder())
    current = options.get("optimized_attention_override")
    if not isinstance(current, RegionAttention):
        options["optimized_attention_override"] = RegionAttention(previous=current, with_mask=_with_mask)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, f"anima_fasttrain_mask_{id(region)}",
                                 _SamplingChecks(region))
    if region.is_empty():
        logging.warning("AnimaFastTrain: Apply Context's mask is empty (all black): this context does nothing.")


class _SamplingChecks:
    """OUTER_SAMPLE wrapper: runs before the sampler loads anything, when the latent is known."""

    def __init__(self, region: ContextRegion):
        self.region = region

    def __call__(self, executor, noise, latent_image, *args, **kwargs):
        batch, height, width = latent_image.shape[0], latent_image.shape[-2], latent_image.shape[-1]
        notice = self.region.check_latent(batch, height, width)
        if notice:
            logging.info(notice)
        return executor(noise, latent_image, *args, **kwargs)
