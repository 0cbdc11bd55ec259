"""Headless loading (``python -m anima_context``), as ComfyUI's loader nodes do."""

from __future__ import annotations

import comfy.sd
import comfy.utils


def load_diffusion_model(path: str):
    """As UNETLoader (weight_dtype default)."""
    return comfy.sd.load_diffusion_model(path)


def load_text_encoder(path: str, embedding_directory: list[str]):
    """As CLIPLoader with type stable_diffusion, which detects Anima's Qwen3 encoder from its weights."""
    return comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=embedding_directory,
                              clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)


def load_vae(path: str):
    """As VAELoader."""
    state_dict, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    vae = comfy.sd.VAE(sd=state_dict, metadata=metadata)
    vae.throw_exception_if_invalid()
    return vae
