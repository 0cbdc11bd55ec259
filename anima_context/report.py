"""The ``info`` text: a few readable lines on what training did."""

from __future__ import annotations

import torch

from .context import ReferenceContext


def token_norm(tokens: torch.Tensor) -> float:
    """Mean L2 norm of one token."""
    return float(tokens.float().norm(dim=-1).mean())


def format_info(context: ReferenceContext, initial_tokens: torch.Tensor, timings: dict[str, float],
                notes: list[str] | None = None) -> str:
    meta = context.metadata
    curve = meta["loss_curve"]
    sizes = ", ".join(f"{w}x{h}" for w, h in meta["reference_sizes"])
    lines = [
        f"AnimaFastTrain: {meta['steps']} steps at learning rate {meta['learning_rate']:g} "
        f"({meta['dtype']}, {meta['image_size']} px, seed {meta['seed']})",
        f"loss: first {curve[0]:.4f}, final {curve[-1]:.4f}",
        f"reference fit: {meta['lift'] * 100:.1f}% (held-out loss {meta['heldout_loss_without']:.4f} without the "
        f"context, {meta['heldout_loss_with']:.4f} with it)",
        f"tokens: {context.num_blocks} blocks x {context.num_tokens} x {context.width}, mean norm "
        f"{token_norm(initial_tokens):.3f} before, {token_norm(context.tokens):.3f} after",
        f"references: {meta['reference_count']} ({sizes})" + (", loss weighted by the training mask" if meta.get("masked") else "")
        + (f", keep_background {meta['keep_background']:g}" if meta.get("masked") and meta.get("keep_background") else ""),
        "time: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items()),
        # On the identity benchmark this keeps the references' scene out of new ones (README).
        "for another scene: name the references' background in the negative prompt too",
    ]
    if "checkpointed_blocks" in meta:
        lines.append(checkpointing_line(meta["activation_checkpointing"], meta["checkpointed_blocks"], meta["num_blocks"]))
    lines += [f"note: {note}" for note in notes or []]
    return "\n".join(lines)


def checkpointing_line(setting: str, checkpointed: int, num_blocks: int) -> str:
    """Whether the DiT's activations were recomputed in backward (less memory, slower steps)."""
    state = "off" if checkpointed == 0 else ("on" if checkpointed == num_blocks else f"on for {checkpointed} of {num_blocks} blocks")
    return f"activation checkpointing: {state} ({setting})"
