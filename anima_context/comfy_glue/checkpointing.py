"""Whether (and on how many blocks) the frozen DiT trains with activation checkpointing: the
``activation_checkpointing`` setting against the device's free memory after the DiT is loaded."""

from __future__ import annotations

import comfy.model_management
import torch

from ..activation_checkpoint import blocks_to_checkpoint

PATCH_SIZE = 16  # pixels per image token: the VAE's 8x and the DiT's 2x2 patching


def _casts_weights_per_op(patcher) -> bool:
    """DynamicVRAM or a partial load: weights reach each op as a per-call copy, which autograd
    keeps until backward (a checkpointed block keeps none: it casts them again)."""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if callable(is_dynamic) and is_dynamic():
        return True
    try:
        return patcher.loaded_size() < patcher.model_size()
    except (AttributeError, TypeError):
        return False


def checkpoint_plan(choice: str, patcher, device: torch.device, dtype: torch.dtype, image_size: int,
                    batch: int) -> int:
    """The number of DiT blocks to checkpoint (0: none) for ``choice`` ("auto", "on", "off")."""
    diffusion_model = patcher.model.diffusion_model
    blocks = diffusion_model.blocks
    free = None if device.type == "cpu" else comfy.model_management.get_free_memory(device)
    copied = 0
    if _casts_weights_per_op(patcher):
        copied = sum(p.numel() for p in blocks[0].parameters()) * dtype.itemsize
    return blocks_to_checkpoint(
        choice, device, len(blocks), free, width=int(diffusion_model.model_channels),
        latent_tokens=(image_size // PATCH_SIZE) ** 2, batch=batch, dtype_bytes=dtype.itemsize,
        weight_copy_bytes_per_block=copied)
