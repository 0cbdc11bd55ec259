"""Sampling the world's model as ComfyUI's KSampler does, and picture grids of the results."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

# The benchmark's sampler settings (a 64 px world converges in few steps).
SAMPLER, SCHEDULER, SAMPLE_STEPS, CFG = "euler", "simple", 12, 3.0
NEGATIVE_PROMPT = ""


def load_world(world: str | Path):
    """(MODEL, CLIP, VAE) as UNETLoader, CLIPLoader (stable_diffusion) and VAELoader load them."""
    from anima_context.comfy_glue.loading import load_diffusion_model, load_text_encoder, load_vae

    from .build import DIT_FILE, TEXT_ENCODER_FILE, VAE_FILE

    world = Path(world)
    return (load_diffusion_model(str(world / DIT_FILE)), load_text_encoder(str(world / TEXT_ENCODER_FILE), []),
            load_vae(str(world / VAE_FILE)))


def encode(clip, prompt: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))


def sample(model, positive, negative, count: int, seed: int, image_size: int, steps: int = SAMPLE_STEPS,
           cfg: float = CFG, sampler: str = SAMPLER, scheduler: str = SCHEDULER) -> torch.Tensor:
    """``count`` raw latents [count, 16, 1, h, w] from one KSampler call on a batch: each batch
    entry has its own noise (``prepare_noise`` of the batch)."""
    import comfy.model_management
    import comfy.sample

    side = image_size // 8
    latent = torch.zeros([count, 4, side, side], device=comfy.model_management.intermediate_device(),
                         dtype=comfy.model_management.intermediate_dtype())
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=1.0, disable_pbar=True, seed=seed).float()


def sample_plain(world: str | Path, prompts: list[str], per_prompt: int, seed: int, steps: int = SAMPLE_STEPS) -> torch.Tensor:
    import json

    model, clip, _ = load_world(world)
    image_size = json.loads((Path(world) / "world.json").read_text())["config"]["image_size"]
    negative = encode(clip, NEGATIVE_PROMPT)
    out = [sample(model, encode(clip, p), negative, per_prompt, seed + i, image_size, steps) for i, p in enumerate(prompts)]
    return torch.cat(out)


def to_pil(pixels: torch.Tensor, scale: int = 1) -> Image.Image:
    """One IMAGE [H, W, 3] in 0..1 as a PIL picture, scaled up by ``scale`` (nearest)."""
    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(array)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST) if scale > 1 else picture


def save_grid(pixels: torch.Tensor, rows: int, path: Path, scale: int = 1, gap: int = 2) -> None:
    """IMAGEs [N, H, W, 3] as a grid of ``rows`` rows, row by row."""
    columns = -(-len(pixels) // rows)
    h, w = pixels.shape[1] * scale, pixels.shape[2] * scale
    sheet = Image.new("RGB", (columns * (w + gap) + gap, rows * (h + gap) + gap), (24, 24, 24))
    for i, picture in enumerate(pixels):
        r, col = divmod(i, columns)
        sheet.paste(to_pil(picture, scale), (gap + col * (w + gap), gap + r * (h + gap)))
    sheet.save(path)
