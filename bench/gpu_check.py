"""The GPU proof in one command: every row of issue 9's table (ComfyUI's memory paths, weight
formats, attention flags, small cards) trained on the full Anima architecture with random weights
and the real comfy_aimdo, each row in its own process started with the server's own flags.

    COMFYUI_PATH=path/to/ComfyUI python bench/gpu_check.py              # a CUDA machine
    COMFYUI_PATH=path/to/ComfyUI python bench/gpu_check.py --dry-run    # a CPU: what can run there

Per row: ok or the error, the tokens' gradient against a reference (cosine similarity and relative
error against the same weights as plain float32 tensors, fully resident, no DynamicVRAM), the
training step time, peak VRAM (torch's allocator, and the device as a whole: comfy_aimdo's vbar
memory is outside torch's allocator), the seconds from the node's start to its first step (encode,
load, prepare) and the UNETLoader load time; then the context is applied and the same MODEL sampled
with ComfyUI's sampler (the context changes the latent, strength 0 gives the plain latent exactly,
the MODEL samples the same afterwards; two contexts with left and right masks leave every block's
cross-attention as without them outside the masks and as unmasked inside). The ``masked_apply`` row also
times a sampling step with masked against unmasked contexts (``bench/bench_apply.py``). Then
``bench/bench_train.py --full`` at 512 and 1024 px.

How a row runs: the child process parses the row's server flags exactly as ``main.py`` does
(``comfy.options.enable_args_parsing``, ``cuda_malloc``, ``comfy_aimdo.control.init`` and
``init_devices``) before torch touches the GPU, loads the checkpoint as UNETLoader does (with its
``weight_dtype``), then runs the train node's glue (``train_reference_context``) with the CLIP and
VAE stand-ins of the tests (the DiT path is what is checked; the text encoder is not loaded). The
first thing the glue's optimisation does is one forward and backward at fixed inputs (``probe``),
recorded for the gradient check, before the timed steps. The reference process loads the same file
with the row's weight values (fp8-rounded, or dequantised) as float32 tensors and computes the
gradient at the same inputs.

``--dry-run`` (or no CUDA): rows that need no GPU run on the CPU with the small random-weight Anima
(256 wide, 10 blocks) at 64 px; the others are listed with what they need; then the full
architecture's memory figures (``bench/memory.py``) instead of the benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
# A row is "ok" when its gradient matches the float32 reference this well (bf16 compute and fp8
# weights stay far above; a weight overwritten between forward and backward falls far below).
MIN_COSINE, MAX_RELATIVE_ERROR = 0.99, 0.2
PROBE_SEED = 1234


@dataclass(frozen=True)
class Row:
    name: str
    title: str  # the wording of the issue's table
    flags: tuple[str, ...] = ()
    weights: str = "bf16"  # bf16, fp8_e4m3fn, fp8_e4m3fn_fast (UNETLoader weight_dtype) or comfy_quant (file)
    prelude: str = ""  # sample, pressure, evict, small_card: what happens around training
    needs_gpu: str = ""  # why the row means nothing on a CPU; empty: it runs in --dry-run
    module: str = ""  # a package the row needs (flash_attn, sageattention)
    size: int = 0  # training size override (px); 0: --size
    refs: int = 0  # references override; 0: --refs
    checkpointing: str = "auto"


ROWS = [
    Row("dynamic_fresh", "DynamicVRAM, fresh load, train first"),
    Row("checkpointing_on", "the same with activation checkpointing on every block (step time vs. the row above)",
        checkpointing="on"),
    Row("sampled_then_trained", "DynamicVRAM, the same MODEL sampled before training", prelude="sample"),
    Row("vram_pressure", "DynamicVRAM under VRAM pressure", prelude="pressure", checkpointing="on",
        needs_gpu="VRAM pressure: weights cast into the per-stream buffers"),
    Row("page_evicted", "DynamicVRAM, a page evicted between forward and backward", prelude="evict",
        needs_gpu="comfy_aimdo's vbar pages"),
    Row("fp8_weight_dtype", "DynamicVRAM + UNETLoader weight_dtype fp8", weights="fp8_e4m3fn"),
    Row("fp8_comfy_quant", "fp8-quantized (comfy_quant) checkpoint", weights="comfy_quant"),
    Row("fp8_fast", "fp8_e4m3fn_fast", weights="fp8_e4m3fn_fast"),
    Row("flash_attention", "--use-flash-attention", flags=("--use-flash-attention",), module="flash_attn",
        needs_gpu="the flash_attn package (CUDA)"),
    Row("sage_attention", "--use-sage-attention", flags=("--use-sage-attention",), module="sageattention",
        needs_gpu="the sageattention package (CUDA)"),
    Row("novram", "--novram --disable-cuda-malloc", flags=("--novram", "--disable-cuda-malloc"),
        needs_gpu="per-op casting to a GPU through shared cast buffers"),
    Row("lowvram_small_card", "--lowvram, a 12 GB card, 1024 px, 3 references", flags=("--lowvram",),
        prelude="small_card", size=1024, refs=3, needs_gpu="a card with 12 GB free (the rest is filled)"),
    Row("masked_apply", "Apply Context with a mask: a sampling step against the unmasked apply (two contexts too)",
        prelude="masked", size=1024),
]
ROW_BY_NAME = {row.name: row for row in ROWS}
REFERENCE_FLAGS = ("--highvram", "--disable-dynamic-vram")


# ----------------------------------------------------------------------------- child processes


def start_comfy(flags: list[str]) -> bool:
    """ComfyUI's start-up as ``main.py`` does it, with these server flags, before torch touches
    the GPU. Returns whether DynamicVRAM (comfy_aimdo) is on."""
    root = os.environ["COMFYUI_PATH"]
    sys.path[:0] = [root, str(REPO), str(REPO / "tests"), str(REPO / "bench")]
    sys.argv = [sys.argv[0], *flags]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy_aimdo.control
    import cuda_malloc  # noqa: F401  (ComfyUI's: picks the CUDA allocator from the flags)
    from comfy.cli_args import args, enables_dynamic_vram

    if enables_dynamic_vram():
        try:
            comfy_aimdo.control.init(simple_vram_headroom=None if args.reserve_vram is None else int(args.reserve_vram * GIB))
        except TypeError:  # comfy-aimdo 0.4.9
            comfy_aimdo.control.init()
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher

    dynamic = False
    if args.enable_dynamic_vram or (enables_dynamic_vram() and mm.is_nvidia() and not mm.is_wsl()):
        if mm.torch_version_numeric >= (2, 8):
            devices = mm.get_all_torch_devices()
            try:
                ready = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * GIB)) for d in devices)
            except TypeError:
                ready = comfy_aimdo.control.init_devices(d.index for d in devices)
            if ready:
                comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
                comfy.memory_management.aimdo_enabled = True
                dynamic = True
    return dynamic


def child_write(args) -> None:
    """The random-weight checkpoints: bf16 (what UNETLoader reads for every row but one) and an
    fp8 comfy_quant file (every 2-D weight of the blocks per-tensor scaled to float8_e4m3fn)."""
    start_comfy(["--cpu"])
    import torch
    from comfy_anima import fp8_comfy_quant_state_dict, random_anima_state_dict
    from safetensors.torch import save_file

    state = random_anima_state_dict(args.width, seed=0)
    folder = Path(args.dir)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(folder / "anima_bf16.safetensors"))
    quant, _ = fp8_comfy_quant_state_dict({k: v.to(torch.bfloat16).float() for k, v in state.items()})
    quant = {k: v if v.dtype in (torch.float8_e4m3fn, torch.uint8) or k.endswith("weight_scale") else v.to(torch.bfloat16)
             for k, v in quant.items()}
    save_file({k: v.contiguous() for k, v in quant.items()}, str(folder / "anima_comfy_quant.safetensors"))


def _checkpoint_file(folder: Path, weights: str) -> Path:
    return folder / ("anima_comfy_quant.safetensors" if weights == "comfy_quant" else "anima_bf16.safetensors")


def _unet_options(weights: str) -> dict:
    """UNETLoader's model_options for its weight_dtype (ComfyUI's nodes.py)."""
    import torch

    if weights in ("fp8_e4m3fn", "fp8_e4m3fn_fast"):
        return {"dtype": torch.float8_e4m3fn, "fp8_optimizations": weights == "fp8_e4m3fn_fast"}
    return {}


def _device_used() -> int:
    import torch

    if not torch.cuda.is_available():
        return 0
    free, total = torch.cuda.mem_get_info()
    return total - free


def _fill_to(free_target: int):
    """A tensor that leaves about ``free_target`` bytes of the card free (None if it already is)."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    extra = free - free_target
    return torch.empty(extra, dtype=torch.uint8, device="cuda") if extra > 0 else None


def _evict_pages() -> int:
    """Evict every resident page of comfy_aimdo's vbars (what memory pressure from another model
    does between forward and backward), and make the torch allocator ask for memory."""
    import gc

    import torch

    evicted = 0
    try:
        from comfy_aimdo.model_vbar import ModelVBAR
    except ImportError:
        return 0
    for vbar in [o for o in gc.get_objects() if isinstance(o, ModelVBAR)]:
        size = vbar.loaded_size()
        if size:
            vbar.free_memory(size)
            evicted += size
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        filler = torch.empty(max(0, free - GIB), dtype=torch.uint8, device="cuda")
        filler.fill_(0xA5)  # overwrite what the evicted pages held
        del filler
        torch.cuda.synchronize()
    return evicted


def probe_inputs(num_blocks: int, width: int, latents, seed: int = PROBE_SEED) -> dict:
    """Fixed noise, timesteps and tokens for the gradient check (CPU float32)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batch = latents.shape[0]
    return {
        "x0": latents.detach().float().cpu(),
        "noise": torch.randn(latents.shape, generator=generator),
        "u": torch.linspace(0.3, 0.7, batch),
        "tokens": torch.randn(num_blocks, 16, width, generator=generator) * 0.5,
    }


def token_gradient(denoiser, inputs: dict, options: dict, compute_dtype, between=None):
    """One forward and backward at ``inputs``; (the tokens' gradient, the loss)."""
    import torch

    from anima_context.patch import ContextTokenPatch
    from anima_context.trainer import _flow_loss, _merge_patch

    device = denoiser.device
    tokens = torch.nn.Parameter(inputs["tokens"].to(device))
    x0, noise = inputs["x0"].to(device), inputs["noise"].to(device)
    sigma = denoiser.sigmas(inputs["u"]).to(device=device, dtype=x0.dtype)
    loss = _flow_loss(denoiser, x0, noise, sigma, _merge_patch(options, ContextTokenPatch(tokens)), compute_dtype)
    if between is not None:
        between()
    loss.backward()
    return tokens.grad.detach().float().cpu(), float(loss)


class _CountLogs:
    """How many log records training emits (fp8_e4m3fn_fast logged ~200 lines per forward)."""

    def __init__(self):
        import logging

        self.count = 0
        self.handler = logging.Handler(level=logging.WARNING)
        self.handler.emit = self._emit
        logging.getLogger().addHandler(self.handler)

    def _emit(self, record):
        self.count += 1

    def close(self):
        import logging

        logging.getLogger().removeHandler(self.handler)


def child_row(args) -> None:
    row = ROW_BY_NAME[args.row]
    flags = list(row.flags) + (["--cpu"] if args.cpu else [])
    out = Path(args.dir) / f"{row.name}.json"
    result = {"row": row.name, "flags": flags}
    try:
        result["dynamic_vram"] = start_comfy(flags)
        _run_row(row, args, result)
        result["ok"] = True
    except BaseException as error:  # the row's outcome is what is reported, whatever it is
        import traceback

        result["ok"] = False
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        result["traceback"] = traceback.format_exc()[-3000:]
    out.write_text(json.dumps(result, default=str))


def _run_row(row: Row, args, result: dict) -> None:
    import torch

    if row.module:
        __import__(row.module)
    import comfy.model_management
    import comfy.sd
    from comfy_anima import FakeAnimaClip, FakeWanVae

    import anima_context.comfy_glue.training as glue
    from anima_context.trainer import DEFAULT_NUM_TOKENS

    folder = Path(args.dir)
    cuda = torch.cuda.is_available() and not args.cpu
    size = row.size if (row.size and not args.cpu) else args.size
    refs = row.refs if (row.refs and not args.cpu) else args.refs
    started = time.perf_counter()
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(_checkpoint_file(folder, row.weights)), model_options=_unet_options(row.weights))
    result["unet_load_s"] = time.perf_counter() - started
    result["patcher"] = type(model).__name__
    result["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    diffusion_model = model.model.diffusion_model
    num_blocks = len(diffusion_model.blocks)
    weight_bytes = sum(p.numel() * p.element_size() for p in diffusion_model.parameters())
    result.update(size=size, refs=refs, blocks=num_blocks, weight_gib=weight_bytes / GIB)

    keep = []  # fillers that stay allocated through training
    if row.prelude == "sample":
        # Sample with the MODEL first, as a graph that previews before training does.
        with torch.inference_mode():
            comfy.model_management.load_models_gpu([model])
            device = model.load_device
            x = torch.randn(1, 16, 1, size // 8, size // 8, device=device)
            context = torch.randn(1, 512, 1024, device=device)
            model.model.apply_model(x, torch.tensor([0.5], device=device), c_crossattn=context)
    if cuda and row.prelude == "pressure":
        keep.append(_fill_to(weight_bytes // 2 + 6 * GIB))  # half the weights fit, plus room for the step
    if cuda and row.prelude == "small_card":
        keep.append(_fill_to(12 * GIB))
    result["free_before_gib"] = (torch.cuda.mem_get_info()[0] / GIB) if cuda else None

    real_train_tokens = glue.train_tokens
    probe = {}

    def probing_train_tokens(denoiser, latents, settings, **kwargs):
        inputs = probe_inputs(denoiser.num_blocks, denoiser.context_width, latents)
        between = _evict_pages if row.prelude == "evict" else None
        probe["grad"], probe["loss"] = token_gradient(denoiser, inputs, kwargs.get("transformer_options") or {},
                                                      settings.compute_dtype, between)
        probe["inputs"] = {**inputs, "context": denoiser.context.detach().float().cpu()}
        probe["dtype"] = str(settings.compute_dtype)
        probe["setup_s"] = time.perf_counter() - node_started
        if cuda:
            torch.cuda.synchronize()
        return real_train_tokens(denoiser, latents, settings, **kwargs)

    peaks = [_device_used()]

    def on_progress(step, total, loss):
        peaks.append(_device_used())

    glue.train_tokens = probing_train_tokens
    logs = _CountLogs()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    generator = torch.Generator().manual_seed(0)
    images = {name: torch.rand(1, size, size, 3, generator=generator)
              for name in ("reference_image", "reference_image_2", "reference_image_3")[:refs]}
    try:
        node_started = time.perf_counter()
        with torch.inference_mode():  # as ComfyUI's executor runs a node
            context, info, _ = glue.train_reference_context(
                model, FakeAnimaClip(), FakeWanVae(), images, "1girl, solo", seed=0, steps=args.steps,
                learning_rate=0.1, image_size=size, num_tokens=DEFAULT_NUM_TOKENS, init_std=0.5,
                dtype_name="bfloat16" if cuda else "float32", on_progress=on_progress,
                activation_checkpointing=row.checkpointing)
        total_s = time.perf_counter() - node_started
    finally:
        glue.train_tokens = real_train_tokens
        logs.close()
    timings = context.metadata.get("timings", {})
    result.update(
        step_s=timings.get("train_loop", float("nan")) / args.steps,
        total_s=total_s,
        setup_s=probe.get("setup_s"),
        log_lines=logs.count,
        checkpointed_blocks=context.metadata.get("checkpointed_blocks"),
        peak_torch_gib=torch.cuda.max_memory_allocated() / GIB if cuda else None,
        peak_device_gib=max(peaks) / GIB if cuda else None,
        probe_loss=probe.get("loss"),
        compute_dtype=probe.get("dtype"),
        info=info,
    )
    torch.save({"grad": probe["grad"], "inputs": probe["inputs"]}, Path(args.dir) / f"{row.name}.probe.pt")
    result.update(_sample_checks(model, context, size))
    if row.prelude == "masked":
        from bench_apply import masked_step_costs

        costs = masked_step_costs(model, [context, type(context)(-context.tokens, context.metadata)], size, rounds=5)
        result.update(masked_step_ratio=costs["one masked"] / costs["one unmasked"],
                      two_masked_step_ratio=costs["two masked"] / costs["two unmasked"],
                      unmasked_step_s=costs["one unmasked"])
    del keep


SAMPLE_CHECKS = ("sample_finite", "sample_changed", "strength_zero_exact", "model_unchanged", "mask_exact")
# A masked context's cross-attention against the model's without it (outside the mask) and the unmasked
# context's (inside), relative to the largest output: float32 is exact up to rounding; in half precision
# the masked call runs SDPA with a mask while the reference runs the server's kernel without one.
MASK_TOLERANCE = {"torch.float32": 1e-5, "torch.bfloat16": 2e-2, "torch.float16": 1e-2}


def _sample_checks(model, context, size: int) -> dict:
    """The user's next step on the same path: Apply Context, then ComfyUI's sampler (4 steps). The
    context must change the latent, strength 0 must give the plain model's latent exactly, and the
    user's MODEL must sample the same after."""
    import comfy.sample
    import torch
    from comfy_anima import FakeAnimaClip

    from anima_context.comfy_glue.sampling import apply_reference_context

    clip = FakeAnimaClip()

    def sample(patcher):
        with torch.inference_mode():
            positive = clip.encode_from_tokens_scheduled(clip.tokenize("1girl, beach"))
            negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
            latent = comfy.sample.fix_empty_latent_channels(patcher, torch.zeros(1, 4, size // 8, size // 8))
            noise = comfy.sample.prepare_noise(latent, 3)
            return comfy.sample.sample(patcher, noise, 4, 4.0, "euler", "simple", positive, negative, latent,
                                       denoise=1.0, disable_pbar=True, seed=3).float().cpu()

    plain = sample(model)
    with torch.inference_mode():
        applied = sample(apply_reference_context(model, context, 1.0, "positive"))
        zero = sample(apply_reference_context(model, context, 0.0, "positive"))
    again = sample(model)
    change = float((applied - plain).abs().mean())
    return {"sample_finite": bool(torch.isfinite(plain).all() and torch.isfinite(applied).all()),
            "sample_change": change,
            "sample_changed": change > 1e-3 * float(plain.abs().mean()),
            "strength_zero_exact": torch.equal(zero, plain),
            "model_unchanged": torch.equal(again, plain),
            **_mask_checks(model, context, size, sample)}


def _mask_checks(model, context, size: int, sample) -> dict:
    """Two contexts with left / right masks, one CFG sampling step on this row's path: every block's
    cross-attention outside both masks against the model without them, inside against them unmasked."""
    import torch
    from bench_apply import halves
    from region_check import CrossAttentionCalls, region_errors

    from anima_context.comfy_glue.sampling import apply_reference_context

    try:
        left, right = halves(size)
        with torch.inference_mode():
            first = apply_reference_context(model, context, 1.0, "positive", mask=left)
            both = apply_reference_context(first, type(context)(-context.tokens, context.metadata), 1.0, "positive", mask=right)
        with CrossAttentionCalls(model.model.diffusion_model) as calls:
            sample(both)
            errors = region_errors(calls)
    except Exception as error:  # reported in the row, not hidden behind a crash
        return {"mask_exact": False, "mask_error": f"{type(error).__name__}: {str(error)[:200]}"}
    tolerance = MASK_TOLERANCE.get(errors["dtype"], 2e-2) * errors["scale"]
    return {"mask_exact": errors["calls"] > 0 and errors["outside"] <= tolerance and errors["inside"] <= tolerance,
            "mask_outside_rel": errors["outside"] / max(errors["scale"], 1e-12),
            "mask_inside_rel": errors["inside"] / max(errors["scale"], 1e-12),
            "mask_calls": errors["calls"], "mask_dtype": errors["dtype"]}


def _reference_state_dict(folder: Path, weights: str):
    """The row's weight values as float32 plain tensors: the bf16 file as it is, rounded to fp8
    where UNETLoader's weight_dtype stores fp8 (which tensors: asked of a real load), or the
    comfy_quant file dequantised."""
    import comfy.sd
    import comfy.utils
    import torch

    state = comfy.utils.load_torch_file(str(_checkpoint_file(folder, weights)))
    if weights == "comfy_quant":
        out = {}
        for name, tensor in state.items():
            if name.endswith(".comfy_quant") or name.endswith(".weight_scale"):
                continue
            scale = state.get(name[: -len("weight")] + "weight_scale") if name.endswith(".weight") else None
            out[name] = tensor.float() * scale.float() if scale is not None else tensor.float()
        return out
    if weights in ("fp8_e4m3fn", "fp8_e4m3fn_fast"):
        with torch.inference_mode():
            probe = comfy.sd.load_diffusion_model(str(_checkpoint_file(folder, weights)), model_options=_unet_options(weights))
        stored = {name: p.dtype for name, p in probe.model.diffusion_model.named_parameters()}
        del probe
        return {name: (t.to(stored[name]).float() if stored.get(name) == torch.float8_e4m3fn else t.float())
                for name, t in state.items()}
    return {name: t.float() for name, t in state.items()}


def child_reference(args) -> None:
    """The float32 plain-tensor gradient for each named row, at that row's probe inputs."""
    start_comfy(["--cpu"] if args.cpu else list(REFERENCE_FLAGS))
    import comfy.model_management
    import comfy.sd
    import torch

    from anima_context.activation_checkpoint import checkpointed_blocks
    from anima_context.comfy_glue.training import ComfyAnimaDenoiser, _training_mode

    folder = Path(args.dir)
    state = _reference_state_dict(folder, args.weights)
    # Outside inference mode: the parameters are ordinary tensors autograd may keep.
    model = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": torch.float32})
    del state
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    device = model.load_device
    blocks = len(model.model.diffusion_model.blocks)
    for name in args.rows:
        out = folder / f"{name}.reference.json"
        try:
            saved = torch.load(folder / f"{name}.probe.pt")
            inputs = saved["inputs"]
            denoiser = ComfyAnimaDenoiser(model, inputs["context"].to(device), blocks, inputs["tokens"].shape[-1])
            # Checkpointing gives the same gradient (tests/test_activation_checkpoint.py) and lets a
            # float32 model take 1024 px with three references on one card.
            with torch.inference_mode(False), torch.enable_grad(), _training_mode(), \
                    checkpointed_blocks(model.model.diffusion_model.blocks):
                reference, _ = token_gradient(denoiser, inputs, {}, torch.float32)
            grad = saved["grad"]
            cosine = float(torch.nn.functional.cosine_similarity(grad.flatten(), reference.flatten(), dim=0))
            relative = float((grad - reference).norm() / reference.norm().clamp(min=1e-30))
            out.write_text(json.dumps({"cosine": cosine, "relative_error": relative}))
        except Exception as error:  # reported in the table
            out.write_text(json.dumps({"error": f"{type(error).__name__}: {str(error)[:200]}"}))


# ----------------------------------------------------------------------------- the parent


def _child(mode: str, extra: list[str], timeout: float) -> tuple[int, str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, *extra]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f}s"
    return done.returncode, (done.stdout + done.stderr)[-2000:]


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def run_rows(rows: list[Row], folder: Path, args) -> list[dict]:
    common = ["--dir", str(folder), "--size", str(args.size), "--refs", str(args.refs), "--steps", str(args.steps)]
    if args.cpu:
        common.append("--cpu")
    results = []
    for row in rows:
        print(f"running {row.name} ({row.title}) ...", flush=True)
        code, tail = _child("row", ["--row", row.name, *common], args.row_timeout)
        path = folder / f"{row.name}.json"
        result = json.loads(path.read_text()) if path.exists() else {
            "row": row.name, "ok": False, "error": f"the row's process exited with {code}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
        if not result["ok"] and args.verbose:
            print(result.get("traceback", tail))
        results.append(result)
    by_weights: dict[str, list[str]] = {}
    for row, result in zip(rows, results):
        if result["ok"]:
            by_weights.setdefault(row.weights, []).append(row.name)
    for weights, names in by_weights.items():
        print(f"reference gradients ({weights} weights as float32 plain tensors) for {', '.join(names)} ...", flush=True)
        extra = ["--dir", str(folder), "--weights", weights, "--rows", *names] + (["--cpu"] if args.cpu else [])
        code, tail = _child("reference", extra, args.row_timeout)
        for name in names:
            path = folder / f"{name}.reference.json"
            reference = json.loads(path.read_text()) if path.exists() else {"error": f"reference exited with {code}: {tail[-200:]}"}
            result = next(r for r in results if r["row"] == name)
            result.update(reference)
    for result in results:
        if result["ok"] and "cosine" in result:
            result["agrees"] = result["cosine"] >= MIN_COSINE and result["relative_error"] <= MAX_RELATIVE_ERROR
            result["samples_ok"] = all(result.get(check) for check in SAMPLE_CHECKS)
    return results


def print_table(results: list[dict], skipped: list[tuple[Row, str]]) -> None:
    devices = sorted({r["device"] for r in results if r.get("device")})
    print(f"\ndevice: {', '.join(devices) or 'unknown'}")
    header = f"{'row':<22} {'result':<8} {'cosine':>8} {'rel.err':>8} {'step s':>8} {'peak torch':>10} {'peak dev':>9} " \
             f"{'setup s':>8} {'load s':>7} {'ckpt':>5} {'logs':>5}"
    print(header)
    print("-" * len(header))
    for r in results:
        if not r["ok"]:
            verdict = "ERROR"
        elif "error" in r:
            verdict = "no-ref"
        else:
            verdict = "ok" if r.get("agrees") and r.get("samples_ok") else "WRONG"
        print(f"{r['row']:<22} {verdict:<8} {_fmt(r.get('cosine'), '.5f'):>8} {_fmt(r.get('relative_error'), '.4f'):>8} "
              f"{_fmt(r.get('step_s'), '.3f'):>8} {_fmt(r.get('peak_torch_gib'), '.2f'):>8}G {_fmt(r.get('peak_device_gib'), '.2f'):>7}G "
              f"{_fmt(r.get('setup_s'), '.2f'):>8} {_fmt(r.get('unet_load_s'), '.2f'):>7} "
              f"{_fmt(r.get('checkpointed_blocks'), 'd'):>5} {_fmt(r.get('log_lines'), 'd'):>5}")
        if not r["ok"] or "error" in r:
            print(f"    {r.get('error')}")
        elif not r.get("samples_ok"):
            print(f"    sampling after training failed: {', '.join(c for c in SAMPLE_CHECKS if not r.get(c))}"
                  + (f" ({r['mask_error']})" if r.get("mask_error") else ""))
    for row, why in skipped:
        print(f"{row.name:<22} {'skipped':<8} {why}")
    masked = [r for r in results if r.get("mask_outside_rel") is not None]
    if masked:
        print("\nmasked contexts, every block's cross-attention against the reference, largest error / largest output:")
        for r in masked:
            print(f"  {r['row']:<22} outside {r['mask_outside_rel']:.1e}  inside {r['mask_inside_rel']:.1e}  "
                  f"({r['mask_dtype']}, {r['mask_calls']} calls) {'ok' if r['mask_exact'] else 'WRONG'}")
    for r in results:
        if r.get("masked_step_ratio") is not None:
            print(f"masked apply, sampling step / unmasked: {r['masked_step_ratio']:.3f} (two contexts: "
                  f"{r['two_masked_step_ratio']:.3f}; unmasked step {r['unmasked_step_s'] * 1000:.0f} ms) [{r['row']}]")
    print("\ncosine / rel.err: the tokens' gradient against float32 plain-tensor weights of the same values "
          f"(ok: cosine >= {MIN_COSINE}, relative error <= {MAX_RELATIVE_ERROR}); peak torch: torch's allocator; peak dev: "
          "the whole device (vbar memory included, sampled per step); setup s: node start to the first step (encode, "
          "load, prepare); load s: UNETLoader; ckpt: blocks with activation checkpointing; logs: warning lines while training. "
          "ok also needs the sampling after training: Apply Context changes the latent, strength 0 gives the plain "
          "latent exactly, the MODEL samples the same after.")


def run_benchmarks(args) -> None:
    env = os.environ.copy()
    for size in (512, 1024):
        command = [sys.executable, str(REPO / "bench" / "bench_train.py"), "--full", "--size", str(size),
                   "--dtype", "bfloat16", "--steps", "6", "--context-steps", "50"]
        print(f"\n$ {' '.join(command[1:])}", flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.row_timeout, env=env)
            print((done.stdout + (done.stderr[-1500:] if done.returncode else "")).rstrip())
        except subprocess.TimeoutExpired:
            print(f"timed out after {args.row_timeout}s")


def run_memory_figures() -> None:
    print("\n$ bench/memory.py  (full architecture on the meta device: no GPU needed)", flush=True)
    done = subprocess.run([sys.executable, str(REPO / "bench" / "memory.py")], capture_output=True, text=True,
                          timeout=900, env=os.environ.copy())
    print("\n".join(line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("WARNING")).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: the rows that can run there, small model")
    parser.add_argument("--rows", nargs="+", choices=[row.name for row in ROWS], help="only these rows")
    parser.add_argument("--size", type=int, default=None, help="training size in px (default: 512; dry run 64)")
    parser.add_argument("--refs", type=int, default=1, help="references (default: 1)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per row (default: 4)")
    parser.add_argument("--no-bench", action="store_true", help="skip bench_train.py --full at the end")
    parser.add_argument("--row-timeout", type=float, default=1200, help="seconds per child process")
    parser.add_argument("--keep", metavar="DIR", help="write checkpoints and results here and keep them")
    parser.add_argument("--verbose", action="store_true", help="print a failing row's traceback")
    # internal: the child processes
    parser.add_argument("--child", choices=["write", "row", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=2048, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not os.environ.get("COMFYUI_PATH"):
        print("bench/gpu_check.py needs COMFYUI_PATH: a ComfyUI checkout with Anima, and its Python.", file=sys.stderr)
        return 2
    if args.child:
        args.size = args.size or 512
        {"write": child_write, "row": child_row, "reference": child_reference}[args.child](args)
        return 0

    import torch  # the parent only asks whether there is a GPU; the children do the work

    has_cuda = torch.cuda.is_available()
    if not args.dry_run and not has_cuda:
        print("No CUDA device: running as --dry-run.", flush=True)
        args.dry_run = True
    args.cpu = args.dry_run
    args.size = args.size or (64 if args.dry_run else 512)
    rows = [ROW_BY_NAME[name] for name in args.rows] if args.rows else list(ROWS)

    def skip_reason(row: Row) -> str:
        if args.dry_run and row.needs_gpu:
            return f"needs a GPU: {row.needs_gpu}"
        if row.module and importlib.util.find_spec(row.module) is None:
            # ComfyUI exits at import when a flag's attention package is missing: say so instead.
            return f"the {row.module} package is not installed"
        return ""

    reasons = {row.name: skip_reason(row) for row in rows}
    runnable = [row for row in rows if not reasons[row.name]]
    skipped = [(row, reasons[row.name]) for row in rows if reasons[row.name]]
    width = 256 if args.dry_run else 2048
    # (no device query here: a CUDA context in this process would take VRAM from the rows)
    print(f"gpu_check: {'dry run on the CPU, small Anima (256 wide, 10 blocks)' if args.dry_run else 'CUDA, full Anima'}"
          f", {args.size} px, {args.refs} reference(s), {args.steps} steps per row", flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        code, tail = _child("write", ["--dir", str(folder), "--width", str(width)], args.row_timeout)
        if code != 0:
            print(f"writing the random-weight checkpoints failed:\n{tail}")
            return 1
        print(f"random-weight checkpoints written in {time.perf_counter() - started:.0f}s", flush=True)
        results = run_rows(runnable, folder, args)
    print_table(results, skipped)
    if args.dry_run:
        run_memory_figures()
        print("\nneeds a GPU: bench/bench_train.py --full --size 512 and --size 1024 (step/floor, time to a context, "
              "peak VRAM over weights)")
    elif not args.no_bench:
        run_benchmarks(args)
    by_row = {r["row"]: r for r in results}
    if by_row.get("dynamic_fresh", {}).get("step_s") and by_row.get("checkpointing_on", {}).get("step_s"):
        print(f"\nstep with activation checkpointing / without: "
              f"{by_row['checkpointing_on']['step_s'] / by_row['dynamic_fresh']['step_s']:.3f}")
    failed = [r["row"] for r in results if not (r["ok"] and r.get("agrees") and r.get("samples_ok"))]
    print(f"\n{len(results) - len(failed)} of {len(results)} rows ok" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 0 if args.dry_run or not failed else 1


if __name__ == "__main__":
    sys.exit(main())
