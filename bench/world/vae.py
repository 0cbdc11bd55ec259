"""The world's VAE: ComfyUI's Wan 2.1 VAE class at a small width, with a fixed random encoder whose
latents are normalised per channel (the affine folded into its last 1x1 conv) and a decoder trained
on those latents, so that samples can be looked at; or (the tag world) encoder and decoder trained together, whose
latent keeps what a random encoder blurs away (``train_autoencoder``).

A random encoder keeps the pictures' colour blocks but its latents barely vary between pictures
(~0.1 per element after ``process_latent_in``); without the normalisation a DiT trained on them sees
almost the same latent for every character.
"""

from __future__ import annotations

import time

import torch

# Anima's latent format (comfy.latent_formats.Wan21): the DiT sees (latent - mean) / std per channel.
LATENT_CHANNELS = 16


def vae_module(dim: int):
    """The Wan 2.1 VAE as ComfyUI's VAE class builds it for a file of this base width."""
    import comfy.ldm.wan.vae

    return comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=LATENT_CHANNELS, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                    temperal_downsample=[False, True, True], image_channels=3, conv_out_channels=3,
                                    dropout=0.0)


def random_vae(dim: int, seed: int):
    """A Wan VAE with the demo set's random weights (fan-in scaled, unit norms)."""
    from anima_context.comfy_glue import demo_weights
    from anima_context.demo_models import random_weights

    module = vae_module(dim)
    module.load_state_dict(random_weights(demo_weights.vae_shapes(dim), seed, torch.float32, small_init=False))
    return module.eval().requires_grad_(False)


def pixels_to_input(pixels: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in 0..1 (a ComfyUI IMAGE) to the VAE's single-frame input [B, 3, 1, H, W] in -1..1,
    as ``comfy.sd.VAE.encode`` does for each picture of the pack's references."""
    return (pixels.movedim(-1, 1) * 2.0 - 1.0).unsqueeze(2)


def output_to_pixels(decoded: torch.Tensor) -> torch.Tensor:
    """The decoder's [B, 3, 1, H, W] to an IMAGE [B, H, W, 3] in 0..1, as ``VAE.decode``."""
    return ((decoded[:, :, 0].movedim(1, -1) + 1.0) / 2.0).clamp(0.0, 1.0)


def encode(module, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Raw latents [B, 16, 1, h, w] (what ``VAE.encode`` returns for each picture)."""
    with torch.no_grad():
        return torch.cat([module.encode(pixels_to_input(pixels[i:i + batch])) for i in range(0, len(pixels), batch)])


def latent_format():
    import comfy.latent_formats

    return comfy.latent_formats.Wan21()


def fold_normalisation(module, raw_latents: torch.Tensor, keep_decoder: bool = False) -> torch.Tensor:
    """Rescale the encoder's mean output so that ``process_latent_in(encode(x))`` has mean 0 and
    std 1 per channel over ``raw_latents`` (encodings of the world's pictures); returns those latents
    as the rescaled encoder gives them (the change is an affine of the output: no second encode).
    ``keep_decoder``: a decoder already trained on the old latents gets the inverse affine in its input conv."""
    fmt = latent_format()
    mean, std = fmt.latents_mean.view(-1), fmt.latents_std.view(-1)
    dit_space = (raw_latents - fmt.latents_mean) * fmt.scale_factor / fmt.latents_std
    a = dit_space.mean(dim=(0, 2, 3, 4))
    b = dit_space.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)
    # new raw = mean + std * ((raw - mean) / std - a) / b, as an affine of the old raw output
    scale = 1.0 / b
    shift = mean + std * (-a / b) - mean / b
    conv = module.conv1
    with torch.no_grad():
        conv.weight[:LATENT_CHANNELS] *= scale.view(-1, *([1] * (conv.weight.ndim - 1)))
        conv.bias[:LATENT_CHANNELS] = conv.bias[:LATENT_CHANNELS] * scale + shift
        if keep_decoder:  # conv2(old) = conv2((new - shift) / scale)
            entry = module.conv2
            entry.bias -= (entry.weight * (shift / scale).view(1, -1, *([1] * (entry.weight.ndim - 2)))).sum(dim=tuple(range(1, entry.weight.ndim)))
            entry.weight /= scale.view(1, -1, *([1] * (entry.weight.ndim - 2)))
    return raw_latents * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1)


def train_decoder(module, raw_latents: torch.Tensor, pixels: torch.Tensor, steps: int, batch: int, lr: float,
                  seed: int, log=print) -> list[float]:
    """Fit the decoder (and its 1x1 input conv) to map the fixed encoder's latents back to the
    pictures: L1 + MSE in -1..1. The encoder is untouched, so the DiT's latent space stays put."""
    decoder_params = list(module.conv2.parameters()) + list(module.decoder.parameters())
    for param in decoder_params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(decoder_params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    targets = pixels_to_input(pixels)
    losses, started = [], time.perf_counter()
    module.train()
    for step in range(steps):
        index = torch.randint(0, len(raw_latents), (batch,), generator=generator)
        decoded = module.decode(raw_latents[index])
        target = targets[index]
        loss = (decoded - target).abs().mean() + (decoded - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss))
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"  vae decoder step {step + 1}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    module.eval().requires_grad_(False)
    return losses


def train_autoencoder(module, pixels: torch.Tensor, steps: int, batch: int, lr: float, seed: int, log=print,
                      latent_noise: float = 0.1) -> list[float]:
    """Fit the encoder and decoder together (L1 + MSE in -1..1), so the latent keeps what a random encoder
    blurs away (a bow, cat ears, the hair's colour under the decoder). Gaussian noise of ``latent_noise`` times
    each channel's spread is added to the latent before decoding: the scale cannot grow to beat it, and nearby
    latents decode alike, as a DiT's samples need. ``pixels`` are uint8 [N, S, S, 3]."""
    params = [param for param in module.parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    losses, started = [], time.perf_counter()
    module.train()
    for step in range(steps):
        index = torch.randint(0, len(pixels), (batch,), generator=generator)
        target = pixels_to_input(pixels[index].float() / 255.0)
        latent = module.encode(target)
        spread = latent.detach().std(dim=(0, 2, 3, 4), keepdim=True)
        noise = torch.randn(latent.shape, generator=generator) * latent_noise
        decoded = module.decode(latent + spread * noise)
        loss = (decoded - target).abs().mean() + (decoded - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"  vae step {step + 1}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    module.eval().requires_grad_(False)
    return losses


def decode(module, raw_latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([output_to_pixels(module.decode(raw_latents[i:i + batch])) for i in range(0, len(raw_latents), batch)])
