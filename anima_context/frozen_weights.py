"""Let autograd use frozen weights that ComfyUI loaded under ``torch.inference_mode``.

Autograd refuses to save inference tensors for backward, and the frozen weights must be saved
to backpropagate to the tokens. ComfyUI's LoRA trainer deep-copies the model for this (double
the weight memory). Here each inference parameter and buffer is swapped, for the duration of
the block, for a normal tensor that aliases the same memory: no copy, and the originals are
put back in ``finally``. The alias carries every Python attribute of the original (ComfyUI reads
some, e.g. DynamicVRAM's ``_model_dtype``, which sizes the cast of an fp8 weight).
"""

from __future__ import annotations

import contextlib

import torch


def _alias(tensor: torch.Tensor) -> torch.Tensor:
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    return alias


def _with_attributes(alias: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    alias.__dict__.update(original.__dict__)
    return alias


def _needs_alias(tensor) -> bool:
    # Tensor subclasses (ComfyUI's quantized weights) are dequantised into fresh tensors per call.
    return tensor is not None and type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.is_inference()


@contextlib.contextmanager
def autograd_safe_weights(module: torch.nn.Module):
    """Within the block every parameter and buffer of ``module`` is usable by autograd and
    frozen (``requires_grad=False``); afterwards the module holds its original objects again."""
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    unfrozen: list[torch.nn.Parameter] = []
    try:
        with torch.inference_mode(False):
            for sub in module.modules():
                for name, param in list(sub._parameters.items()):
                    if _needs_alias(param):
                        swapped.append((sub._parameters, name, param))
                        sub._parameters[name] = _with_attributes(
                            torch.nn.Parameter(_alias(param), requires_grad=False), param)
                    elif param is not None and param.requires_grad:
                        # A trainable weight would cost weight-gradient work and collect .grad.
                        unfrozen.append(param)
                        param.requires_grad_(False)
                for name, buffer in list(sub._buffers.items()):
                    if _needs_alias(buffer):
                        swapped.append((sub._buffers, name, buffer))
                        sub._buffers[name] = _with_attributes(_alias(buffer), buffer)
        yield len(swapped)
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original
        for param in unfrozen:
            param.requires_grad_(True)
