"""A demo model set for trying the pack without the real Anima weights: a small random-weight Anima DiT,
a random-weight Qwen3-0.6B text encoder and a small random-weight Wan 2.1 VAE, in ComfyUI's folder
layout (``diffusion_models/``, ``text_encoders/``, ``vae/``) under a folder the user names, plus a
reference picture. The architecture is real, so every code path runs; the weights are random, so the
images they render are noise.

The text encoder is full size (~1.2 GB): ComfyUI builds Qwen3-0.6B from a fixed configuration, so
nothing smaller loads as Anima's encoder. The DiT (~0.3 GB, mostly the fixed-size LLM adapter) and the
VAE (~1 MB) are small. Same seed, same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

# (folder, file name) of each model in the demo set, by the CLI's model keys
DEMO_FILES = {
    "unet": ("diffusion_models", "anima_demo_dit.safetensors"),
    "clip": ("text_encoders", "anima_demo_qwen3_06b.safetensors"),
    "vae": ("vae", "anima_demo_vae.safetensors"),
}
DEMO_PICTURE = "example.png"  # ComfyUI's own input/example.png, copied next to the models
DIT_WIDTH, VAE_WIDTH = 256, 8  # the real ones: 2048 and 96
_DTYPES = {"unet": torch.bfloat16, "clip": torch.bfloat16, "vae": torch.float32}


def demo_paths(folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    return {key: folder / sub / name for key, (sub, name) in DEMO_FILES.items()}


def random_weights(shapes: Mapping[str, tuple[int, ...]], seed: int, dtype: torch.dtype, *, small_init: bool) -> dict[str, torch.Tensor]:
    """Sane random values for a state dict: zero biases, unit norm gains, fan-in scaled weights (0.02 for
    the text encoder, as its pretraining init), so that every activation stays finite."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith(".bias"):
            value = torch.zeros(shape)
        elif len(shape) <= 1 or name.endswith("gamma"):  # norm gains
            value = torch.ones(shape)
        else:
            std = 0.02 if small_init else 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
            value = torch.randn(shape, generator=generator) * std
        state[name] = value.to(dtype).contiguous()
    return state


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_demo_models(folder: str | Path, comfyui_root: Path, say: Callable[[str], None] = print, *, force: bool = False) -> dict[str, Path]:
    """Write the demo set into ``folder`` (files already there are kept unless ``force``). Needs ComfyUI
    imported (``cli.setup_comfyui``): the tensor shapes come from its classes."""
    from safetensors.torch import save_file

    from .comfy_glue import demo_weights

    paths = demo_paths(folder)
    makers = {
        "unet": (lambda: demo_weights.dit_shapes(DIT_WIDTH), 0, False, {"model_channels": DIT_WIDTH}),
        "clip": (demo_weights.text_encoder_shapes, 1, True, {}),
        "vae": (lambda: demo_weights.vae_shapes(VAE_WIDTH), 2, False, {"dim": VAE_WIDTH}),
    }
    for key, path in paths.items():
        if path.is_file() and not force:
            say(f"kept {path} (already there)")
            continue
        shapes, seed, small_init, extra = makers[key]
        state = random_weights(shapes(), seed, _DTYPES[key], small_init=small_init)
        path.parent.mkdir(parents=True, exist_ok=True)
        # one metadata key: safetensors writes several in arbitrary order, and the bytes should not change
        note = json.dumps({"generator": "AnimaFastTrain demo-models", "random_weights": True, "seed": seed, **extra}, sort_keys=True)
        partial = path.with_name(path.name + ".partial")  # an interrupted write leaves no file that looks whole
        save_file(state, str(partial), metadata={"anima_fasttrain_demo": note})
        partial.chmod(0o666 & ~_umask())  # safetensors writes 0600: let a ComfyUI server of another user read them
        partial.replace(path)
        count = sum(t.numel() for t in state.values())
        say(f"wrote {path}  ({count / 1e6:.1f}M random parameters, {path.stat().st_size / 2**20:.0f} MiB)")
        del state
    picture = Path(folder) / DEMO_PICTURE
    source = comfyui_root / "input" / DEMO_PICTURE
    if not picture.is_file() and source.is_file():
        shutil.copyfile(source, picture)
        say(f"copied {source} to {picture} (a reference picture to train on)")
    paths["picture"] = picture
    return paths
