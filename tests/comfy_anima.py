"""Small random-weight Anima built with ComfyUI's own classes and loader (COMFYUI_PATH tests
only), plus CLIP and VAE stand-ins that return exactly what ComfyUI's Anima CLIP and Wan VAE
return (DESIGN.md), so the DiT path is real and the fixtures stay small."""

from __future__ import annotations

import torch


def anima_dit_config(model_channels: int) -> dict:
    """The configuration ComfyUI's detection derives for an Anima state dict of this width
    (``comfy/model_detection.py``): 2048 wide is the released model, 28 blocks of 16 heads; any
    other width keeps MiniTrainDIT's defaults (10 blocks)."""
    config = dict(
        image_model="anima", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16,
        patch_spatial=2, patch_temporal=1, model_channels=model_channels, concat_padding_mask=True,
        crossattn_emb_channels=1024, pos_emb_cls="rope3d", pos_emb_learnable=True, pos_emb_interpolation="crop",
        min_fps=1, max_fps=30, use_adaln_lora=True, adaln_lora_dim=256, extra_per_block_abs_pos_emb=False,
        rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0,
    )
    if model_channels == 2048:
        config.update(num_blocks=28, num_heads=16)
    return config


def random_anima_state_dict(model_channels: int = 256, seed: int = 0) -> dict:
    import comfy.ldm.anima.model
    import comfy.ops

    config = {k: v for k, v in anima_dit_config(model_channels).items() if k != "image_model"}
    meta = comfy.ldm.anima.model.Anima(**config, device="meta", operations=comfy.ops.disable_weight_init)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in sorted(meta.state_dict().items()):
        if tensor.ndim == 1:
            state[name] = torch.zeros(tensor.shape) if name.endswith("bias") else torch.ones(tensor.shape)
        else:
            fan_in = tensor[0].numel() if tensor.ndim > 1 else 1
            state[name] = torch.randn(tensor.shape, generator=generator) / fan_in**0.5
    return state


def load_anima(state_dict: dict):
    """A MODEL (ModelPatcher) as UNETLoader makes it: loaded under inference mode."""
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_diffusion_model_state_dict(dict(state_dict))


def fp8_comfy_quant_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """An fp8-quantized checkpoint in ComfyUI's ``comfy_quant`` format (per-tensor scaled
    float8_e4m3fn for the DiT blocks' linear weights, as ``QUANTIZATION.md`` describes), and the
    weights it stands for as plain fp32 tensors."""
    import json

    quantized, dequantized = {}, dict(state_dict)
    marker = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    for key, value in state_dict.items():
        if key.startswith("blocks.") and key.endswith(".weight") and value.ndim == 2:
            prefix = key[: -len(".weight")]
            scale = value.abs().amax().float() / 448.0
            q = (value / scale).to(torch.float8_e4m3fn)
            quantized[key], quantized[f"{prefix}.weight_scale"] = q, scale
            quantized[f"{prefix}.comfy_quant"] = marker.clone()
            dequantized[key] = q.float() * scale
        else:
            quantized[key] = value
    return quantized, dequantized


class FakeAnimaClip:
    """Returns what ComfyUI's Anima CLIP returns: Qwen3 states [1, n, 1024] plus t5xxl ids/weights."""

    def tokenize(self, text: str):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        generator = torch.Generator().manual_seed(sum(map(ord, tokens)) + len(tokens))
        n = max(2, min(len(tokens.split()) + 2, 64))
        cond = torch.randn(1, n, 1024, generator=generator)
        ids = torch.randint(0, 32128, (n,), generator=generator)
        return [[cond, {"t5xxl_ids": ids, "t5xxl_weights": torch.ones(n), "attention_mask": torch.ones(1, n),
                        "pooled_output": None}]]


class FakeWanVae:
    """Returns what ComfyUI's Wan VAE returns for one image [1, H, W, 3]: [1, 16, 1, H/8, W/8]."""

    def __init__(self):
        self.projection = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))

    def encode(self, pixels):
        pooled = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)
        return torch.einsum("bchw,cd->bdhw", pooled * 2 - 1, self.projection).unsqueeze(2)


def load_anima_file(state_dict: dict, path):
    """Write the state dict and load it as UNETLoader does (ComfyUI's LoRA trainer reloads the
    model from its file, so it needs a MODEL that came from one)."""
    import comfy.sd
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    with torch.inference_mode():
        return comfy.sd.load_diffusion_model(str(path))
