"""The frozen DiT's weights while the tokens train, on every memory path of ComfyUI.

Autograd keeps every weight a linear layer uses until backward. That tensor must be memory nobody
else writes in between, and not an inference tensor. ComfyUI hands ops weights of three kinds:

* the module's own resident parameter (a plain ``ModelPatcher`` fully loaded: the CPU, --highvram).
  Safe to keep; it is an inference tensor when loaded in a prompt, so ``autograd_safe_weights``
  swaps in a zero-copy alias for the duration.
* a fresh tensor made by the cast itself (``weight.to(dtype)``, ``cast_to`` without a buffer,
  a dequantised weight). Safe.
* a view of memory ComfyUI reuses: DynamicVRAM's vbar pages (evicted under pressure, made resident
  during an inference-mode forward and reused as ``s._v_weight``), its per-stream cast buffers
  (reused from offset 0 for every op), or the shared cast buffers of --novram/--lowvram without
  cuda-malloc. Unsafe: a later op overwrites what autograd saved, silently for the raw-pointer
  views of comfy_aimdo, which have their own version counters.

The fix is one weight function, appended to ``weight_function``/``bias_function`` of every module
that casts its weights per op (after ``load_models_gpu`` has set that up, so it works for any
patcher), that hands autograd its own copy when the cast returned a view or an inference tensor
and the tensor itself otherwise. Resident modules get no function, so the CPU path stays
copy-free. A weight function also keeps ops off the kernels that cannot train: quantized layers
take the dequantising path and fp8_ops skip ``fp8_linear`` (whose ``clamp(out=input)`` fails on an
input that requires grad).

Why not ComfyUI's non-dynamic delegate (``clone(disable_dynamic=True)``): it re-reads the whole
checkpoint (seconds, and a second copy of the weights in RAM), works only for models from a core
loader (``cached_patcher_init``), and a partial load of it still casts offloaded modules through
shared cast buffers, so it would need this same function anyway. Why not ``add_weight_wrapper`` on
the clone: it puts the function on every module, and ComfyUI then copies the weight of resident
modules too, on every op (``cast_to(copy=True)``): a full weight copy per step on the CPU path for
nothing. The lists set here are the ones ComfyUI's load just built; they are put back in
``finally`` (and the next load rebuilds them anyway).

Measured on the CPU (the integration tests' 10-block, 256-wide Anima, a 16x16 latent, one thread,
CPU time per forward+backward, median of 5, three interleaved rounds): alias only (before)
243-259 ms, this path with resident weights 235-269 ms (no copy; SDPA also saves 20 MiB less than
the CPU's default attention), every op casting with its own copy (what DynamicVRAM costs)
255-270 ms and 54 MiB more saved per step: one copy of the weights the forward uses.
"""

from __future__ import annotations

import contextlib

import torch

from ..frozen_weights import autograd_safe_weights

_MISSING = object()


def own_weight(tensor):
    """The weight function: ``tensor`` if it is memory of its own, else a copy autograd may keep."""
    if tensor is None:
        return None
    if hasattr(tensor, "dequantize") and type(tensor) is not torch.Tensor:
        return tensor.dequantize()  # a QuantizedTensor: fresh plain memory
    if tensor._base is not None or tensor.is_inference():
        return tensor.clone()
    return tensor


def _casts_per_op(module) -> bool:
    return hasattr(module, "comfy_cast_weights") and bool(
        module.comfy_cast_weights or getattr(module, "weight_function", None) or getattr(module, "bias_function", None))


@contextlib.contextmanager
def _module_attributes(changes: list[tuple[torch.nn.Module, str, object]]):
    """Set instance attributes for the block; put back what each module had (or had not)."""
    saved = [(module, name, module.__dict__.get(name, _MISSING)) for module, name, _ in changes]
    try:
        for module, name, value in changes:
            setattr(module, name, value)
        yield
    finally:
        for module, name, old in reversed(saved):
            if old is _MISSING:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, old)


def _sdpa_attention(func, *args, **kwargs):
    """``optimized_attention_override``: ComfyUI calls it as ``override(func, *args, **kwargs)`` from
    ``wrap_attn``; PyTorch SDPA has a backward, flash/sage kernels may not."""
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def training_transformer_options(transformer_options: dict) -> dict:
    """The clone's transformer options with attention through SDPA, whatever the server flag."""
    return {**transformer_options, "optimized_attention_override": _sdpa_attention}


@contextlib.contextmanager
def training_weights(diffusion_model: torch.nn.Module):
    """Within the block every weight an op hands autograd is its own memory, and no weight requires
    grad; afterwards the modules are as ComfyUI loaded them. Enter after ``load_models_gpu`` and
    outside inference mode."""
    changes = []
    for module in diffusion_model.modules():
        if not hasattr(module, "comfy_cast_weights"):
            continue
        # Quantized layers: dequantise instead of QuantLinearFunc, which saves the quantized weight.
        changes.append((module, "comfy_force_cast_weights", True))
        if _casts_per_op(module):
            changes.append((module, "weight_function", [*module.weight_function, own_weight]))
            changes.append((module, "bias_function", [*module.bias_function, own_weight]))
    with _module_attributes(changes), autograd_safe_weights(diffusion_model) as swapped:
        yield swapped
