"""A small DiT written for the tests that follows ComfyUI's Anima protocol exactly where the
pack touches it (DESIGN.md, "The injection point"):

- latents are 5-D ``[B, 16, T=1, H, W]``, patched 2x2 into image tokens;
- the context is ``[B, 512, width]`` (prompt states zero-padded to 512 tokens);
- the forward sets ``transformer_options["block_index"]`` before each block;
- each block's cross-attention calls every ``transformer_options["patches"]["attn2_patch"]``
  as ``patch(q, k, v, pe=..., attn_mask=None, extra_options=...)`` with the context as k and v,
  before the q/k/v projections, with ``n_heads`` and ``dim_head`` added to a copy of the
  options, and RMS-normalises the projected keys;
- ``post_input`` patches get ``{"img": [B, T, H, W, D], "x": ..., "transformer_options": ...}`` once
  per forward, on a copy of the options with a fresh ``model_patch_data`` dict that every block shares;
- attention goes through ``optimized_attention(q, k, v, heads, skip_reshape=True, transformer_options=...)``,
  which hands the call to ``transformer_options["optimized_attention_override"]`` when there is one
  (ComfyUI's ``wrap_attn``), with q/k/v as ``[B, heads, tokens, dim]``;
- flow matching with shift 3: ``sigma = 3u / (1 + 2u)``, ``x_t = sigma * noise + (1 - sigma) * x0``,
  the model predicts the velocity ``noise - x0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONTEXT_TOKENS = 512
LATENT_CHANNELS = 16


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * self.weight.to(x.dtype)


def sdpa_attention(q, k, v, heads, mask=None, skip_reshape=True, **kwargs):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def optimized_attention(q, k, v, heads, **kwargs):
    override = (kwargs.get("transformer_options") or {}).get("optimized_attention_override")
    if override is not None:
        return override(sdpa_attention, q, k, v, heads, **kwargs)
    return sdpa_attention(q, k, v, heads, **kwargs)


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int | None, heads: int):
        super().__init__()
        self.is_selfattn = context_dim is None
        context_dim = dim if context_dim is None else context_dim
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.output_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, context=None, transformer_options=None):
        transformer_options = transformer_options or {}
        context = x if context is None else context
        q_in, k_in, v_in = x, context, context
        name = "attn1_patch" if self.is_selfattn else "attn2_patch"
        patches = transformer_options.get("patches", {})
        if name in patches:
            extra = transformer_options.copy()
            extra["n_heads"], extra["dim_head"] = self.heads, self.head_dim
            for patch in patches[name]:
                out = patch(q_in, k_in, v_in, pe=None, attn_mask=None, extra_options=extra)
                q_in, k_in, v_in = out.get("q", q_in), out.get("k", k_in), out.get("v", v_in)
        b = x.shape[0]
        q = self.q_norm(self.q_proj(q_in).view(b, -1, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(k_in).view(b, -1, self.heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(v_in).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        out = optimized_attention(q, k, v, self.heads, skip_reshape=True, transformer_options=transformer_options)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * self.head_dim)
        return self.output_proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.self_attn = Attention(dim, None, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.cross_attn = Attention(dim, context_dim, heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim, bias=False), nn.GELU(), nn.Linear(2 * dim, dim, bias=False))
        self.modulation = nn.Linear(dim, 6 * dim, bias=False)

    def forward(self, x, emb, context, transformer_options):
        s1, g1, s2, g2, s3, g3 = self.modulation(F.silu(emb)).unsqueeze(1).chunk(6, dim=-1)
        x = x + g1 * self.self_attn(self.norm1(x) * (1 + s1), transformer_options=transformer_options)
        x = x + g2 * self.cross_attn(self.norm2(x) * (1 + s2), context, transformer_options=transformer_options)
        return x + g3 * self.mlp(self.norm3(x) * (1 + s3))


class TinyAnimaDiT(nn.Module):
    def __init__(self, dim: int = 64, context_dim: int = 32, num_blocks: int = 3, heads: int = 2, gate_gain: float = 15.0):
        super().__init__()
        self.dim, self.context_dim, self.num_blocks = dim, context_dim, num_blocks
        self.x_embedder = nn.Linear(LATENT_CHANNELS * 4, dim, bias=False)
        self.t_embedder = nn.Sequential(nn.Linear(32, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([Block(dim, context_dim, heads) for _ in range(num_blocks)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.final = nn.Linear(dim, LATENT_CHANNELS * 4, bias=False)
        # Default init leaves the AdaLN gates near 0.05, so the context would barely matter;
        # a trained DiT listens to its context, so scale the gates up to about 1.
        with torch.no_grad():
            for block in self.blocks:
                block.modulation.weight.mul_(gate_gain)

    def timestep_embedding(self, sigma):
        freqs = torch.exp(-torch.arange(16, device=sigma.device, dtype=torch.float32) * (9.2 / 16))
        angles = sigma.float()[:, None] * 1000 * freqs[None]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)

    def forward(self, x, sigma, context, transformer_options=None):
        transformer_options = dict(transformer_options or {})
        b, c, t, h, w = x.shape
        tokens = x.view(b, c, t, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t * (h // 2) * (w // 2), c * 4)
        hidden = self.x_embedder(tokens.to(self.x_embedder.weight.dtype))
        post_input = transformer_options.get("patches", {}).get("post_input", [])
        if post_input:
            transformer_options["model_patch_data"] = {}
            image = hidden.view(b, t, h // 2, w // 2, -1)
            for patch in post_input:
                image = patch({"img": image, "x": x, "transformer_options": transformer_options})["img"]
            hidden = image.reshape(b, t * (h // 2) * (w // 2), -1)
        emb = self.t_embedder(self.timestep_embedding(sigma).to(hidden.dtype))
        for block_index, block in enumerate(self.blocks):
            transformer_options["block_index"] = block_index
            hidden = block(hidden, emb, context, transformer_options)
        out = self.final(self.final_norm(hidden))
        out = out.view(b, t, h // 2, w // 2, c, 2, 2).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, t, h, w)
        return out


def pad_context(states: torch.Tensor) -> torch.Tensor:
    """Zero-pad prompt states [1, n, width] to the 512 tokens Anima's adapter returns."""
    return F.pad(states, (0, 0, 0, CONTEXT_TOKENS - states.shape[1]))


class TinyAnimaDenoiser:
    """The trainer's ``Denoiser`` protocol over ``TinyAnimaDiT`` with a fixed prompt context."""

    shift = 3.0

    def __init__(self, model: TinyAnimaDiT, context: torch.Tensor):
        self.model = model.requires_grad_(False)
        self.context = context
        self.num_blocks = model.num_blocks
        self.context_width = model.context_dim
        self.device = context.device

    def sigmas(self, u):
        return self.shift * u / (1 + (self.shift - 1) * u)

    def add_noise(self, x0, noise, sigma):
        sigma = sigma.view(-1, *([1] * (x0.ndim - 1)))
        return sigma * noise + (1 - sigma) * x0

    def velocity(self, x_t, sigma, transformer_options):
        context = self.context.expand(x_t.shape[0], -1, -1)
        return self.model(x_t, sigma, context, transformer_options)


def make_tiny_setup(seed: int = 0, references: int = 2, latent_size: int = 8, **dit_kwargs):
    """A seeded tiny DiT, its denoiser with a short padded prompt context, and reference latents."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyAnimaDiT(**dit_kwargs).eval()
    prompt = torch.randn(1, 7, model.context_dim, generator=generator)
    denoiser = TinyAnimaDenoiser(model, pad_context(prompt))
    latents = torch.randn(references, LATENT_CHANNELS, 1, latent_size, latent_size, generator=generator)
    return model, denoiser, latents


class DenoiserWrapper:
    """Base for test doubles that wrap a denoiser and change ``velocity``."""

    def __init__(self, inner):
        self.inner = inner
        self.num_blocks, self.context_width, self.device = inner.num_blocks, inner.context_width, inner.device
        self.sigmas, self.add_noise = inner.sigmas, inner.add_noise
