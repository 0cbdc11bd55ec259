"""What Apply Context's mask costs per sampling step, measured in one process on ComfyUI's Anima.

    COMFYUI_PATH=path/to/ComfyUI python bench/bench_apply.py                       # CPU: 512 wide, 512 px
    COMFYUI_PATH=path/to/ComfyUI python bench/bench_apply.py --width 2048 --size 1024   # GPU: full Anima

One sampling step is one DiT forward of ComfyUI's sampler with CFG (cond and uncond in one batch). The
step is timed for the plain model, one unmasked context, one masked context, and two masked contexts
(left and right halves, as template 5) against two unmasked ones; interleaved rounds, medians. Prints a
table and, last, ``masked_over_unmasked=`` and ``two_masked_over_two_unmasked=`` (the issue's bound: 1.15).
The masked cross-attention always runs through ComfyUI's PyTorch attention (SDPA); ``--attention`` sets the
server's for everything else (on a CPU ComfyUI picks attention_sub_quad, slower than SDPA, so the masked step
can come out faster than the unmasked one there: ``--attention attention_pytorch`` compares like with like).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def halves(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1
    return left, left.flip(-1)


def step_timer(model, size: int, device):
    """A function timing one CFG sampling step (one DiT forward over cond + uncond) of ``model``."""
    import comfy.sample
    from comfy_anima import FakeAnimaClip

    clip = FakeAnimaClip()
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("2girls, side by side"))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize("worst quality"))
    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(1, 4, size // 8, size // 8))
    noise = comfy.sample.prepare_noise(latent, 0)

    def run() -> float:
        with torch.inference_mode():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            comfy.sample.sample(model, noise, 1, 4.0, "euler", "simple", positive, negative, latent,
                                denoise=1.0, disable_pbar=True, seed=0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started

    return run


def masked_step_costs(model, contexts: list, size: int, rounds: int) -> dict[str, float]:
    """Median seconds per CFG step for plain, one context unmasked / masked, two unmasked / two masked."""
    from anima_context.comfy_glue.sampling import apply_reference_context

    left, right = halves(size)
    first, second = contexts[0], contexts[-1]
    with torch.inference_mode():
        one = apply_reference_context(model, first, 1.0, "positive")
        one_masked = apply_reference_context(model, first, 1.0, "positive", mask=left)
        two = apply_reference_context(one, second, 1.0, "positive")
        two_masked = apply_reference_context(one_masked, second, 1.0, "positive", mask=right)
    variants = {"plain": model, "one unmasked": one, "one masked": one_masked, "two unmasked": two,
                "two masked": two_masked}
    device = model.load_device
    timers = {name: step_timer(patched, size, device) for name, patched in variants.items()}
    for timer in timers.values():  # warm-up: loading, first-call kernels, cached masks
        timer()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, timer in timers.items():
            times[name].append(timer())
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=512, help="DiT width (2048: the full 28-block Anima; default 512)")
    parser.add_argument("--size", type=int, default=512, help="picture size in px (default 512)")
    parser.add_argument("--tokens", type=int, default=16, help="context tokens per block (default 16, the train node's)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--attention", default="", help="the server's attention function, e.g. attention_pytorch "
                        "(default: what ComfyUI picked for this machine; on a CPU attention_sub_quad)")
    args = parser.parse_args()
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        print("bench/bench_apply.py needs COMFYUI_PATH: a ComfyUI checkout with Anima, and its Python.", file=sys.stderr)
        return 2
    sys.path.insert(0, root)
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.ldm.cosmos.predict2
    import comfy.ldm.modules.attention
    from comfy_anima import load_anima, random_anima_state_dict

    from anima_context.context import ReferenceContext

    if args.attention:  # what a server flag would pick (Anima's blocks call it through this name)
        comfy.ldm.cosmos.predict2.optimized_attention = getattr(comfy.ldm.modules.attention, args.attention)
    attention_name = comfy.ldm.cosmos.predict2.optimized_attention.__name__
    model = load_anima(random_anima_state_dict(args.width))
    blocks = len(model.model.diffusion_model.blocks)
    generator = torch.Generator().manual_seed(0)
    contexts = [ReferenceContext(torch.randn(blocks, args.tokens, 1024, generator=generator) * 0.5, {}) for _ in range(2)]
    costs = masked_step_costs(model, contexts, args.size, args.rounds)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"Anima {args.width} wide, {blocks} blocks, {args.size} px ({(args.size // 16) ** 2} image tokens), "
          f"{args.tokens} tokens per context, CFG step (cond + uncond), {device}, server attention {attention_name}, "
          f"median of {args.rounds} rounds")
    for name, seconds in costs.items():
        print(f"  {name:<14} {seconds * 1000:9.1f} ms   {seconds / costs['plain']:.3f}x plain")
    print(f"masked_over_unmasked={costs['one masked'] / costs['one unmasked']:.3f}")
    print(f"two_masked_over_two_unmasked={costs['two masked'] / costs['two unmasked']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
