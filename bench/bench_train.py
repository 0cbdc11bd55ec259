"""Training speed, memory and convergence of AnimaFastTrain, measured in one process.

    python bench/bench_train.py                  # CPU, test DiT (or ComfyUI's Anima with COMFYUI_PATH)
    COMFYUI_PATH=path/to/ComfyUI python bench/bench_train.py --size 256
    python bench/bench_train.py --full --size 512   # GPU: full Anima architecture (28 blocks, 2048 wide)

Prints one table and, last, machine-readable lines: step_over_floor=, checkpointed_over_plain=,
step_over_lora= (with COMFYUI_PATH), lift=, and with COMFYUI_PATH the autograd memory of the full
architecture with and without activation checkpointing (``bench/memory.py``, no GPU needed).
Figures are ratios taken in this one run (same model, size, references, dtype).
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
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from anima_context.activation_checkpoint import checkpointed_blocks  # noqa: E402
from anima_context.frozen_weights import autograd_safe_weights  # noqa: E402
from anima_context.patch import ContextTokenPatch  # noqa: E402
from anima_context.trainer import DEFAULT_NUM_TOKENS, TrainSettings, _merge_patch, train_tokens  # noqa: E402

DEFAULTS = dict(learning_rate=0.1, num_tokens=DEFAULT_NUM_TOKENS, init_std=0.5)  # the train node's defaults


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_memory(device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux
    except OSError:
        pass
    return rss_bytes("VmRSS")


def peak_memory(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return rss_bytes("VmHWM")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Setup:
    """A model, its trainer adapter, reference latents and what training needs around them."""

    def __init__(self, args):
        self.args = args
        self.comfy = bool(os.environ.get("COMFYUI_PATH"))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        generator = torch.Generator().manual_seed(0)
        latent = args.size // 8
        self.latents = torch.randn(args.refs, 16, 1, latent, latent, generator=generator).to(self.device)
        if self.comfy:
            self._comfy_model(generator)
        else:
            self._tiny_model()

    def _tiny_model(self):
        from tiny_anima import TinyAnimaDenoiser, TinyAnimaDiT, pad_context

        torch.manual_seed(0)
        dit = TinyAnimaDiT(dim=256, context_dim=1024, num_blocks=6, heads=4).to(self.device)
        context = pad_context(torch.randn(1, 12, 1024)).to(self.device)
        self.model_name = "test DiT (6 blocks, 256 wide)"
        self.denoiser = TinyAnimaDenoiser(dit, context)
        self.weights = dit
        self.weight_bytes = sum(p.numel() * p.element_size() for p in dit.parameters())
        self.training_scope = _null_scope

    def _comfy_model(self, generator):
        sys.path.insert(0, os.environ["COMFYUI_PATH"])
        import comfy.cli_args

        comfy.cli_args.args.cpu = self.device.type == "cpu"
        import tempfile

        import comfy.model_management
        from comfy_anima import load_anima_file, random_anima_state_dict

        from anima_context.comfy_glue import ComfyAnimaDenoiser, _training_mode

        width = 2048 if self.args.full else 256
        state = random_anima_state_dict(width)
        if self.device.type == "cuda":
            state = {k: v.to(torch.bfloat16) for k, v in state.items()}
        self._files = tempfile.TemporaryDirectory()
        self.patcher = load_anima_file(state, Path(self._files.name) / "anima_random.safetensors")
        del state
        with torch.inference_mode():  # as the train node loads it: ComfyUI runs nodes under inference mode
            comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        dm = self.patcher.model.diffusion_model
        blocks = len(dm.blocks)
        self.model_name = f"ComfyUI Anima ({blocks} blocks, {width} wide, random weights)"
        context = torch.randn(1, 512, 1024, generator=generator).to(self.device, self.patcher.model.get_dtype_inference())
        self.denoiser = ComfyAnimaDenoiser(self.patcher, context, blocks, 1024)
        self.weights = dm
        self.weight_bytes = sum(p.numel() * p.element_size() for p in dm.parameters())

        def scope():
            import contextlib

            stack = contextlib.ExitStack()
            stack.enter_context(autograd_safe_weights(dm))
            stack.enter_context(_training_mode())
            return stack

        self.training_scope = scope

    def settings(self, steps, **overrides):
        values = dict(DEFAULTS, steps=steps, seed=0, compute_dtype=self.dtype, draws_per_reference=self.args.draws)
        values.update(overrides)
        return TrainSettings(**values)


def _null_scope():
    import contextlib

    return contextlib.nullcontext()


class Floor:
    """One forward+backward of the frozen DiT with tokens attached through the pack's patch,
    on the same batch as a training step, and nothing else."""

    def __init__(self, setup: Setup):
        d = setup.denoiser
        self.setup, self.denoiser = setup, d
        x0 = setup.latents.repeat_interleave(setup.args.draws, dim=0)
        self.tokens = torch.nn.Parameter(
            torch.randn(d.num_blocks, DEFAULTS["num_tokens"], d.context_width, device=setup.device) * DEFAULTS["init_std"])
        self.options = _merge_patch({}, ContextTokenPatch(self.tokens))
        self.sigma = d.sigmas(torch.linspace(0.2, 0.8, x0.shape[0])).to(setup.device)
        self.x_t = d.add_noise(x0, torch.randn_like(x0), self.sigma)

    def once(self) -> float:
        setup = self.setup
        sync(setup.device)
        start = time.perf_counter()
        with torch.autocast(setup.device.type, dtype=setup.dtype, enabled=setup.dtype != torch.float32):
            out = self.denoiser.velocity(self.x_t, self.sigma, self.options)
        out.float().square().mean().backward()
        self.tokens.grad = None
        sync(setup.device)
        return time.perf_counter() - start


def time_step_and_floor(setup: Setup, steps: int) -> tuple[float, float, float]:
    """Median step time, median floor time and median step/floor ratio, the two interleaved:
    after every training step one floor pass runs, so each pair shares the machine's state."""
    floor = Floor(setup)
    step_times, floor_times = [], []
    marks = {}

    def on_step(step, loss):
        sync(setup.device)
        now = time.perf_counter()
        if "resume" in marks:
            step_times.append(now - marks["resume"])
        floor_times.append(floor.once())
        marks["resume"] = time.perf_counter()

    with setup.training_scope():
        floor.once()  # warm-up
        train_tokens(setup.denoiser, setup.latents, setup.settings(steps + 1), on_step=on_step)
    floor_times = floor_times[1:]  # pair each step with the floor pass right before it
    ratios = [s / f for s, f in zip(step_times, floor_times)]
    return statistics.median(step_times), statistics.median(floor_times), statistics.median(ratios)


def time_checkpointing(setup: Setup, pairs: int) -> float:
    """Median cost of a forward+backward with every block checkpointed over one without, the two
    interleaved (the training step's other work is the same with and without)."""
    floor = Floor(setup)
    ratios = []
    with setup.training_scope():
        floor.once()  # warm-up
        for _ in range(pairs):
            plain = floor.once()
            with checkpointed_blocks(setup.weights.blocks):
                ratios.append(floor.once() / plain)
    return statistics.median(ratios)


def memory_figures() -> list[str]:
    """bench/memory.py's table for the full architecture (COMFYUI_PATH: ComfyUI's own class)."""
    import memory

    lines = []
    memory.report(out=lines.append)
    return lines


def time_lora_step(setup: Setup, same_dtype: bool) -> float | None:
    """ComfyUI's own LoRA trainer, default settings, on the same model and resolution (per draw);
    with ``same_dtype`` its training_dtype is set to the one measured here (its default is bf16,
    which a CPU emulates slowly)."""
    if not setup.comfy:
        return None
    from comfy_anima import FakeAnimaClip
    from comfy_extras import nodes_train

    from anima_context.comfy_glue import _training_mode

    positive = FakeAnimaClip().encode_from_tokens_scheduled("1girl, solo, anime illustration")
    latent = setup.latents[:1].cpu()
    schema = nodes_train.TrainLoraNode.define_schema()
    defaults = {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}

    def run(steps):
        args = {k: [v] for k, v in defaults.items()}
        args.update(model=[setup.patcher], latents=[{"samples": latent}], positive=[positive], steps=[steps],
                    existing_lora=["[None]"])
        if same_dtype:
            args["training_dtype"] = [{"float32": "fp32", "bfloat16": "bf16"}.get(setup.args.dtype, "none")]
        start = time.perf_counter()
        # On this ComfyUI the LoRA trainer cannot backpropagate through Anima's fused RMSNorm+RoPE
        # kernel either; it gets the same differentiable substitute as the pack's trainer.
        with torch.inference_mode(), _training_mode():
            nodes_train.TrainLoraNode.execute(**args)
        return time.perf_counter() - start

    run(1)  # warm-up
    few, many = run(2), run(6)
    return (many - few) / 4


def time_to_context(setup: Setup, steps: int) -> tuple[float, dict, object]:
    """From the node's inputs to the finished context (COMFYUI_PATH: the whole node, with a CLIP and
    VAE that return ComfyUI's formats; otherwise the trainer alone)."""
    start = time.perf_counter()
    if setup.comfy:
        from comfy_anima import FakeAnimaClip, FakeWanVae

        from anima_context import comfy_glue

        image = torch.rand(1, setup.args.size, setup.args.size, 3)
        with torch.inference_mode():
            context, _, _ = comfy_glue.train_reference_context(
                setup.patcher, FakeAnimaClip(), FakeWanVae(), {"reference_image": image}, "1girl", seed=0, steps=steps,
                image_size=setup.args.size, dtype_name=setup.args.dtype, **DEFAULTS)
        meta = context.metadata
        return time.perf_counter() - start, meta.get("timings", {}), meta["lift"]
    with setup.training_scope():
        result = train_tokens(setup.denoiser, setup.latents[:1], setup.settings(steps, draws_per_reference=1))
    return time.perf_counter() - start, result.timings, result.lift


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="training image size in px")
    parser.add_argument("--refs", type=int, default=1, help="reference images")
    parser.add_argument("--draws", type=int, default=1, help="noise draws per reference per step")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=10, help="training steps timed for 'step' (each paired with a floor pass)")
    parser.add_argument("--context-steps", type=int, default=50, help="steps of the time-to-context run")
    parser.add_argument("--full", action="store_true", help="full Anima architecture (needs COMFYUI_PATH; a GPU)")
    args = parser.parse_args()
    torch.manual_seed(0)

    setup = Setup(args)
    draws = args.refs * args.draws
    before = reset_peak_memory(setup.device)
    step, floor, ratio = time_step_and_floor(setup, args.steps)
    peak = peak_memory(setup.device)
    checkpointed_ratio = time_checkpointing(setup, args.steps)
    lora = time_lora_step(setup, same_dtype=True)
    lora_default = time_lora_step(setup, same_dtype=False) if setup.args.dtype != "bfloat16" and lora else None
    total, split, lift = time_to_context(setup, args.context_steps)

    rows = [
        ("model", setup.model_name),
        ("device / dtype", f"{setup.device.type} / {args.dtype}"),
        ("batch", f"{args.refs} refs x {args.draws} draws at {args.size} px = {draws} draws/step"),
        ("floor (fwd+bwd)", f"{floor * 1000:.1f} ms"),
        ("step", f"{step * 1000:.1f} ms"),
        ("step / floor (median of interleaved pairs)", f"{ratio:.3f}"),
        ("step per draw", f"{step / draws * 1000:.1f} ms"),
        ("fwd+bwd with activation checkpointing / without", f"{checkpointed_ratio:.3f}"),
    ]
    if lora is not None:
        rows += [(f"LoRA trainer step per draw ({args.dtype})", f"{lora * 1000:.1f} ms"),
                 ("step / LoRA (per draw)", f"{step / draws / lora:.3f}")]
    if lora_default is not None:
        rows += [("LoRA trainer step per draw (its default bf16)", f"{lora_default * 1000:.1f} ms")]
    rows += [
        (f"time to context ({args.context_steps} steps)", f"{total:.2f} s"),
        ("  split", ", ".join(f"{k} {v:.2f}s" for k, v in split.items())),
        ("peak memory while training", f"{peak / 2**20:.0f} MiB ({(peak - before) / 2**20:+.0f} MiB over the start)"),
        ("model weights", f"{setup.weight_bytes / 2**20:.0f} MiB"),
        ("peak / weights", f"{peak / setup.weight_bytes:.2f}"),
        ("reference fit (time-to-context run)", f"{lift * 100:.2f}%"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if setup.comfy:
        print("\nautograd memory per step, full Anima architecture (bench/memory.py):")
        for line in memory_figures():
            print("  " + line)
    print(f"step_over_floor={ratio:.4f}")
    print(f"checkpointed_over_plain={checkpointed_ratio:.4f}")
    if lora is not None:
        print(f"step_over_lora={step / draws / lora:.4f}")
    print(f"lift={lift:.4f}")


if __name__ == "__main__":
    main()
