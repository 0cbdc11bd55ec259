"""Per-block activation checkpointing for the frozen DiT, and the memory estimate that decides
when it is needed. Plain torch: the glue hands in ComfyUI's blocks, the tests the small DiT's.

With checkpointing a block keeps only its input (the residual stream) for backward and
recomputes its forward once during backward: the autograd memory of a step falls from
``num_blocks`` blocks' activations to about one block's, for one more forward of the blocks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHECKPOINTING_CHOICES = ("auto", "on", "off")

# Autograd-saved bytes per latent token (after the DiT's 2x2 patching), per block and per batch
# row, measured on ComfyUI's full Anima (28 blocks, 2048 wide, bf16 weights, attention saving
# q/k/v/out/logsumexp as CUDA SDPA does) with ``bench/memory.py``: 85.7 KiB at 512 px (1024
# tokens) and 79.4 KiB at 1024 px (4096 tokens; the cross-attention's 528 context rows are a
# fixed part per row). About 21 width-sized bf16 values per token: q/k/v, the norms' and RoPE's
# float32 copies, the MLP's 4x-wide hidden state. The larger figure is used; it scales with the
# width and the compute dtype's size.
SAVED_BYTES_PER_TOKEN_PER_BLOCK = 86 * 1024
MEASURED_WIDTH, MEASURED_DTYPE_BYTES = 2048, 2
# A checkpointed block keeps its input residual: 4.1 KiB per token (one width-sized bf16 row);
# the DiT saves 4.1 KiB per token outside the blocks (patch embedding, final layer): same run.
CHECKPOINTED_BYTES_PER_TOKEN_PER_BLOCK = 4.2 * 1024
OUTSIDE_BLOCKS_BYTES_PER_TOKEN = 4.2 * 1024
# Gradients in flight, the attention backward's workspace and allocator slack while one block's
# backward runs, as a multiple of that block's saved bytes.
BACKWARD_HEADROOM = 1.5


def estimated_training_bytes(num_blocks: int, width: int, latent_tokens: int, batch: int,
                             dtype_bytes: int, checkpointed_blocks: int = 0, weight_copy_bytes_per_block: int = 0) -> int:
    """Autograd memory of one training step beyond the weights (bytes), from the measurement
    above, with ``checkpointed_blocks`` of the ``num_blocks`` blocks checkpointed;
    ``latent_tokens`` counts image tokens after patching ((H/16) * (W/16) for H x W px).
    ``weight_copy_bytes_per_block``: weights cast per op are copies autograd keeps per block
    (DynamicVRAM, partial loads); a checkpointed block keeps none of them."""
    scale = (width / MEASURED_WIDTH) * (dtype_bytes / MEASURED_DTYPE_BYTES) * latent_tokens * batch
    one_block = SAVED_BYTES_PER_TOKEN_PER_BLOCK * scale + weight_copy_bytes_per_block
    held = CHECKPOINTED_BYTES_PER_TOKEN_PER_BLOCK * scale
    plain = num_blocks - checkpointed_blocks
    return int(plain * one_block + checkpointed_blocks * held + OUTSIDE_BLOCKS_BYTES_PER_TOKEN * scale
               + one_block * BACKWARD_HEADROOM)


def blocks_to_checkpoint(choice: str, device, num_blocks: int, free_bytes: int | None, **geometry) -> int:
    """How many blocks to checkpoint: all (``on``), none (``off``), or for ``auto`` the fewest
    that make the estimate (``geometry``: the keywords of ``estimated_training_bytes``) fit
    ``free_bytes``, all when nothing fits. Each checkpointed block costs one more forward of it,
    so auto pays only for what the card lacks. A CPU trains in the host's memory: auto is off."""
    if choice not in CHECKPOINTING_CHOICES:
        raise ValueError(f"activation_checkpointing must be one of {CHECKPOINTING_CHOICES}, got {choice!r}")
    if choice != "auto":
        return num_blocks if choice == "on" else 0
    if torch.device(device).type == "cpu" or free_bytes is None:
        return 0
    for count in range(num_blocks + 1):
        if estimated_training_bytes(num_blocks, checkpointed_blocks=count, **geometry) <= free_bytes:
            return count
    return num_blocks


def _snapshot(value):
    # The DiT rewrites ``transformer_options["block_index"]`` in place before each block: the
    # recompute in backward must see the dict as it was when this block ran, not the last block's.
    return dict(value) if isinstance(value, dict) else value


# The whole block is recomputed, self-attention included. Keeping the self-attention's output
# instead (a selective policy: a Python dispatch mode that sees every op) cost more than it saved
# on an H100 with the full architecture: 3.76x / 2.64x a step without checkpointing at 512 / 1024
# px, against 2.15x / 1.55x for the plain recompute, which also holds less (0.21 / 0.83 GiB
# against 0.32 / 1.25 GiB).


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():  # held-out evaluation, sampling: nothing is saved anyway
            return forward(*args, **kwargs)
        args = tuple(_snapshot(a) for a in args)
        kwargs = {name: _snapshot(v) for name, v in kwargs.items()}
        # Non-reentrant: the tokens reach the block through the patch, not through its inputs,
        # and still get their gradient. The frozen blocks draw no random numbers (no dropout).
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    return run


@contextlib.contextmanager
def checkpointed_blocks(blocks: Iterable[nn.Module], enabled: bool = True) -> Iterator[None]:
    """While active, each block's forward runs under ``torch.utils.checkpoint`` when grad is
    enabled; every block's forward is restored on exit, also on error or cancel."""
    if not enabled:
        yield
        return
    wrapped: list[tuple[nn.Module, object]] = []
    try:
        for block in blocks:
            # An instance-level forward someone else installed stays as it was after us.
            previous = block.__dict__.get("forward")
            block.forward = _checkpointed(block.forward)
            wrapped.append((block, previous))
        yield
    finally:
        for block, previous in reversed(wrapped):
            if previous is None:
                del block.forward
            else:
                block.forward = previous
