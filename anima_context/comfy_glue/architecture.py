"""Which MODEL is Anima, and which compute dtype its device can train in."""

from __future__ import annotations

import comfy.ldm.anima.model
import torch

from ..errors import IncompatibleModelError, InvalidSettingError
from ..trainer import COMPUTE_DTYPES


def anima_geometry(model) -> tuple[int, int]:
    """(block count, context width) of a MODEL that is ComfyUI's Anima; refuse anything else."""
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(diffusion_model, comfy.ldm.anima.model.Anima):
        name = type(diffusion_model).__name__ if diffusion_model is not None else type(model).__name__
        raise IncompatibleModelError(
            f"the MODEL is {name}, not Anima. Load an Anima diffusion model (e.g. anima-base-v1.0.safetensors) "
            "with UNETLoader and connect it here."
        )
    blocks = diffusion_model.blocks
    return len(blocks), int(blocks[0].cross_attn.k_proj.weight.shape[1])


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The compute dtype asked for, or a supported one with a note saying why not."""
    if name not in COMPUTE_DTYPES:
        raise InvalidSettingError(f"training_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}.")
    dtype = COMPUTE_DTYPES[name]
    if device.type == "cpu" and dtype != torch.float32:
        # CPUs emulate half precision: a bfloat16 step measured 17x slower than float32 here.
        return torch.float32, f"{name} is slow on the CPU: trained in float32"
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.float16, "bfloat16 is not supported on this GPU: trained in float16"
    return dtype, ""
