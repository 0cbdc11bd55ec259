"""Autograd memory of one training step on the FULL Anima architecture, without a GPU.

    COMFYUI_PATH=path/to/ComfyUI python bench/memory.py [--sizes 512 1024] [--refs 1 3]

Builds ComfyUI's own ``comfy.ldm.anima.model.Anima`` with the configuration ComfyUI detects for
a full checkpoint (28 blocks, 2048 wide, 16 heads) on the ``meta`` device (no memory, no time),
with bf16 weights as ComfyUI loads Anima on a GPU, attaches trainable tokens through the pack's
``ContextTokenPatch`` (``attn2_patch``) and runs one forward under
``torch.autograd.graph.saved_tensors_hooks``. Every saved tensor is counted once per storage;
tensors that alias a (frozen) parameter or buffer are not activations and are left out.
Attention goes through the aten flash-attention op, which is what SDPA runs on a CUDA card in
bf16 (it saves q, k, v, the output and the log-sum-exp, no S x S matrix).

Figures per row: without checkpointing, the bytes saved for backward; with per-block
checkpointing (``anima_context/activation_checkpoint.py``), the bytes held through the step
(the blocks' inputs and self-attention outputs plus what is saved outside the blocks) and the peak while one block is
recomputed in backward (held + that block's saved bytes). Then weights + peak + tokens and
Adam state against the 10 GB target at 1024 px with 3 references.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from anima_context.activation_checkpoint import checkpointed_blocks  # noqa: E402
from anima_context.patch import ContextTokenPatch  # noqa: E402
from anima_context.trainer import _merge_patch  # noqa: E402

FULL_WIDTH, FULL_BLOCKS, FULL_HEADS = 2048, 28, 16
NUM_TOKENS, CONTEXT_WIDTH = 16, 1024  # the train node's default tokens per block; Anima's context width
TARGET_BYTES = 10 * 10**9


def import_comfy():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        sys.exit("bench/memory.py needs COMFYUI_PATH (a ComfyUI checkout with Anima) to build ComfyUI's own Anima class.")
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.ldm.anima.model
    import comfy.ops

    return comfy


def full_anima(device="meta", dtype=torch.bfloat16):
    """ComfyUI's Anima with the full checkpoint's detected configuration (model_detection.py:
    model_channels 2048 -> 28 blocks, 16 heads), frozen."""
    comfy = import_comfy()
    from comfy_anima import anima_dit_config

    config = {k: v for k, v in anima_dit_config(FULL_WIDTH).items() if k != "image_model"}
    assert (config["num_blocks"], config["num_heads"]) == (FULL_BLOCKS, FULL_HEADS)
    model = comfy.ldm.anima.model.Anima(**config, device=device, dtype=dtype, operations=comfy.ops.disable_weight_init)
    return model.requires_grad_(False)


def flash_like_attention(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                         skip_output_reshape=False, **kwargs):
    """ComfyUI's ``optimized_attention_override``: the aten op CUDA SDPA picks for bf16, head dim 128."""
    if not skip_reshape:
        b, _, inner = q.shape
        q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    result = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)
    out = result[0]
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])


def _storage_key(tensor: torch.Tensor):
    return tensor.untyped_storage()._cdata


@dataclass
class SavedBytes:
    total: int  # saved for backward (no checkpointing), or held through the step (checkpointing)
    per_block: list[int]  # saved inside each block (no checkpointing)
    outside: int  # saved outside the blocks
    peak: int  # the most held at once in backward, roughly: total, or held + the largest block

    @property
    def largest_block(self) -> int:
        return max(self.per_block) if self.per_block else 0


def _kernel_overrides():
    """The differentiable RMSNorm+RoPE the glue's training mode installs (no backward otherwise)."""
    import contextlib

    try:
        from anima_context.comfy_glue.training import _training_mode
    except ImportError:  # the glue moved it: ComfyUI's own kernels (their fake tensors run on meta)
        return contextlib.nullcontext()
    return _training_mode()


def measure(model, latent_side: int, batch: int, checkpointing: bool, device="meta", dtype=torch.bfloat16,
            forward=None) -> SavedBytes:
    """One forward of ``model`` (a ComfyUI-style DiT with ``.blocks``) on ``batch`` latents
    [B, 16, 1, side, side] with tokens attached; counts what autograd keeps for backward.
    ``forward(model, x, sigma, context, options)`` runs the model (default: ComfyUI's Anima call)."""
    frozen = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    blocks = list(model.blocks)
    width = getattr(model, "context_dim", CONTEXT_WIDTH)
    tokens = torch.zeros(len(blocks), NUM_TOKENS, width, device=device, requires_grad=True)
    options = _merge_patch({"optimized_attention_override": flash_like_attention}, ContextTokenPatch(tokens))
    x = torch.zeros(batch, 16, 1, latent_side, latent_side, device=device, dtype=dtype)
    sigma = torch.full((batch,), 0.5, device=device, dtype=dtype)
    context = torch.zeros(1, 512, width, device=device, dtype=dtype).expand(batch, -1, -1)
    seen: dict = {}
    where = {"block": None}

    def pack(tensor):
        key = _storage_key(tensor)
        if key not in frozen and key not in seen:
            seen[key] = (tensor.untyped_storage().nbytes(), where["block"])
        return tensor

    def enter(index):
        def hook(module, args, kwargs):
            where["block"] = index
            if checkpointing:  # checkpoint keeps the block's tensor inputs for the recompute
                for value in list(args) + list(kwargs.values()):
                    if torch.is_tensor(value):
                        pack(value)
        return hook

    def leave(module, args, output):
        where["block"] = None

    handles = []
    for index, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(enter(index), with_kwargs=True))
        handles.append(block.register_forward_hook(leave))
    run = forward or (lambda m, x_, s, c, o: m(x_, s, c, transformer_options=o))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), checkpointed_blocks(blocks, checkpointing), \
                _kernel_overrides():
            out = run(model, x, sigma, context, options)
        assert out.requires_grad, "the tokens did not reach the output"
    finally:
        for handle in handles:
            handle.remove()
    per_block = [0] * len(blocks)
    outside = 0
    for nbytes, block in seen.values():
        if block is None:
            outside += nbytes
        else:
            per_block[block] += nbytes
    total = outside + sum(per_block)
    return SavedBytes(total=total, per_block=per_block, outside=outside, peak=total)


def step_memory(model, latent_side: int, batch: int, **kwargs) -> tuple[SavedBytes, SavedBytes]:
    """(without checkpointing, with checkpointing); the latter's peak adds the largest block's
    saved bytes, which exist only while that block is recomputed and backpropagated."""
    plain = measure(model, latent_side, batch, checkpointing=False, **kwargs)
    held = measure(model, latent_side, batch, checkpointing=True, **kwargs)
    held.peak = held.total + plain.largest_block
    held.per_block = plain.per_block
    return plain, held


def tokens_and_adam_bytes(num_blocks: int, width: int = CONTEXT_WIDTH, num_tokens: int = NUM_TOKENS) -> int:
    """float32 tokens, their gradient and Adam's two moments."""
    return 4 * num_blocks * num_tokens * width * 4


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(sizes=(512, 1024), refs=(1, 3), out=print) -> dict:
    """Prints the table; returns {(size, refs): (plain, checkpointed)} for other benchmarks."""
    model = full_anima()
    weights = weight_bytes(model)
    extra = tokens_and_adam_bytes(len(model.blocks))
    out(f"full Anima (ComfyUI's class): {len(model.blocks)} blocks, {FULL_WIDTH} wide, weights {gib(weights)} in bf16; "
        f"tokens + grad + Adam {extra / 2**20:.1f} MiB")
    out("size  refs  tokens  saved w/o ckpt  per block  held w/ ckpt  peak w/ ckpt  per token per block")
    results = {}
    for size in sizes:
        for count in refs:
            side = size // 8
            plain, ckpt = step_memory(model, side, count)
            tokens = (side // 2) ** 2
            per_token = plain.largest_block / (tokens * count)
            out(f"{size:>4}  {count:>4}  {tokens:>6}  {gib(plain.total):>14}  {plain.largest_block / 2**20:>6.0f} MiB"
                f"  {gib(ckpt.total):>12}  {gib(ckpt.peak):>12}  {per_token / 1024:.1f} KiB")
            results[(size, count)] = (plain, ckpt)
    for size, count in results:
        plain, ckpt = results[(size, count)]
        tokens = (size // 16) ** 2 * count
        out(f"saved_bytes size={size} refs={count} without_checkpointing={plain.total} with_checkpointing_held={ckpt.total} "
            f"with_checkpointing_peak={ckpt.peak} outside_blocks_per_token={plain.outside / tokens:.0f} "
            f"held_per_token_per_block={(ckpt.total - ckpt.outside) / tokens / len(model.blocks):.0f}")
    if (1024, 3) in results:
        plain, ckpt = results[(1024, 3)]
        with_ckpt = weights + ckpt.peak + extra
        without = weights + plain.peak + extra
        verdict = "meets" if with_ckpt <= TARGET_BYTES else "MISSES"
        out(f"1024 px, 3 references: weights + peak + tokens/Adam = {with_ckpt / 1e9:.2f} GB with checkpointing "
            f"({verdict} the 10 GB target), {without / 1e9:.2f} GB without")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="training image sizes in px")
    parser.add_argument("--refs", type=int, nargs="+", default=[1, 3], help="reference counts (batch rows)")
    args = parser.parse_args()
    report(tuple(args.sizes), tuple(args.refs))


if __name__ == "__main__":
    main()
