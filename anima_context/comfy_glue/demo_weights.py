"""The tensor names and shapes of a small Anima model set, taken from ComfyUI's own classes (built on
the "meta" device: nothing is allocated), so that the files ``demo_models.py`` fills with random
numbers load with UNETLoader, CLIPLoader (type stable_diffusion) and VAELoader."""

from __future__ import annotations

import comfy.ldm.anima.model
import comfy.ldm.wan.vae
import comfy.model_detection
import comfy.ops
import comfy.text_encoders.llama
import torch


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def dit_shapes(model_channels: int) -> dict[str, tuple[int, ...]]:
    """Anima's DiT at this width, configured as ComfyUI's detection configures a file of that width
    (it reads the width from ``x_embedder.proj.1.weight``; below 2048 it keeps 10 blocks, 16 heads)."""
    probe = {
        "blocks.0.mlp.layer1.weight": torch.empty(4 * model_channels, model_channels, device="meta"),
        "llm_adapter.blocks.0.cross_attn.q_proj.weight": torch.empty(1024, 1024, device="meta"),
        "x_embedder.proj.1.weight": torch.empty(model_channels, (16 + 1) * 4, device="meta"),
    }
    config = dict(comfy.model_detection.detect_unet_config(probe, ""))
    if config.get("image_model") != "anima":
        raise RuntimeError(f"this ComfyUI does not detect an Anima model from its weights (it found {config.get('image_model')!r})")
    model = comfy.ldm.anima.model.Anima(**config, device="meta", dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    return _shapes(model)


def text_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """Qwen3-0.6B as ComfyUI builds it for Anima: its configuration is fixed, so the file is full size."""
    return _shapes(comfy.text_encoders.llama.Qwen3_06B({}, torch.float32, "meta", comfy.ops.disable_weight_init))


def vae_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    """The Wan 2.1 VAE; ComfyUI reads its base width from ``decoder.head.0.gamma`` (the real one is 96)."""
    with torch.device("meta"):
        vae = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                       temperal_downsample=[False, True, True], image_channels=3, conv_out_channels=3,
                                       dropout=0.0)
    return _shapes(vae)
