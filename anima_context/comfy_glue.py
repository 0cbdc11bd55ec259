"""The only module that imports ComfyUI. It adapts ComfyUI's Anima (ModelPatcher, VAE, CLIP)
to the plain-torch trainer and patch, the ComfyUI way: a ``model.clone()``,
``load_models_gpu``, ``ProgressBar``, ``throw_exception_if_processing_interrupted``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable

import comfy.ldm.anima.model
import comfy.model_management
import comfy.quant_ops
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import torch

from .context import ReferenceContext
from .context_file import confined_path, load_context, save_context
from .errors import IncompatibleModelError, InvalidSettingError
from .frozen_weights import autograd_safe_weights
from .images import prepare_references
from .loss_plot import training_plot_image
from .masks import mask_loss_weights
from .patch import ContextTokenPatch, parse_block_selection
from .report import format_info
from .trainer import COMPUTE_DTYPES, TrainSettings, train_tokens

log = logging.getLogger("AnimaFastTrain")



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


def encode_references(vae, images: list[torch.Tensor], base_model) -> torch.Tensor:
    """VAE-encode each [1, S, S, 3] image on its own (the Wan VAE reads a batch as video
    frames) and bring it into the DiT's latent space: [R, 16, 1, S/8, S/8]."""
    latents = [base_model.process_latent_in(vae.encode(image)) for image in images]
    return torch.cat(latents, dim=0)


def encode_prompt(clip, prompt: str, diffusion_model, device, dtype) -> torch.Tensor:
    """The cross-attention context [1, 512, width]: Qwen3 states through the DiT's LLM adapter,
    as ``model_base.Anima.extra_conds`` does while sampling. Does not depend on the tokens."""
    cond, extras = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0]
    ids = extras.get("t5xxl_ids")
    if ids is None:
        raise IncompatibleModelError(
            "the CLIP did not return Anima's t5xxl_ids: load the Qwen3-0.6B text encoder "
            "(qwen_3_06b_base.safetensors) with CLIPLoader, type stable_diffusion."
        )
    weights = extras.get("t5xxl_weights")
    if weights is not None:
        weights = weights.unsqueeze(0).unsqueeze(-1).to(device=device, dtype=dtype)
    return diffusion_model.preprocess_text_embeds(
        cond.to(device=device, dtype=dtype), ids.unsqueeze(0).to(device), t5xxl_weights=weights
    )


class ComfyAnimaDenoiser:
    """The trainer's ``Denoiser`` over a loaded ComfyUI Anima ModelPatcher."""

    def __init__(self, patcher, context: torch.Tensor, num_blocks: int, width: int):
        self.base = patcher.model
        self.model_sampling = patcher.get_model_object("model_sampling")
        self.context = context
        self.num_blocks, self.context_width = num_blocks, width
        self.device = context.device

    def sigmas(self, u: torch.Tensor) -> torch.Tensor:
        # Training time u runs from clean (0) to noise (1); percent runs the other way.
        return torch.tensor([float(self.model_sampling.percent_to_sigma(1.0 - float(x))) for x in u])

    def add_noise(self, x0, noise, sigma):
        return self.model_sampling.noise_scaling(sigma, noise, x0)

    def velocity(self, x_t, sigma, transformer_options):
        context = self.context.expand(x_t.shape[0], -1, -1)
        denoised = self.base.apply_model(x_t, sigma, c_crossattn=context, transformer_options=transformer_options)
        return (x_t - denoised) / sigma.view(-1, *([1] * (x_t.ndim - 1)))


class _KitchenWithBackward:
    """comfy_kitchen as ComfyUI's model code sees it, but with differentiable functions in
    place of fused kernels that have no autograd formula."""

    def __init__(self, kitchen, overrides: dict):
        self._kitchen, self._overrides = kitchen, overrides

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._kitchen, name)


def _differentiable_kitchen_functions() -> dict:
    """Anima's self-attention calls ``ck.rms_rope_split_half``, a custom op with no backward
    (on every backend); comfy_kitchen's eager backend implements it in plain torch."""
    try:
        from comfy_kitchen.backends.eager.rope import rms_rope_split_half
    except ImportError:  # an older or newer comfy_kitchen: use what ComfyUI uses
        return {}
    return {"rms_rope_split_half": rms_rope_split_half}


@contextlib.contextmanager
def _training_mode():
    """Differentiable kernels and ComfyUI's training flag for the optimisation only."""
    previous_flag = comfy.model_management.in_training
    kitchen = getattr(comfy.quant_ops, "ck", None)
    overrides = _differentiable_kitchen_functions() if kitchen is not None else {}
    comfy.model_management.in_training = True
    if overrides:
        comfy.quant_ops.ck = _KitchenWithBackward(kitchen, overrides)
    try:
        yield
    finally:
        comfy.model_management.in_training = previous_flag
        if overrides:
            comfy.quant_ops.ck = kitchen


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


# Held-out lift points per run (plus step 0): each costs about one training step.
LIFT_POINTS = 4
VAE_DOWNSCALE = 8


def train_reference_context(model, clip, vae, images: dict, prompt: str, seed: int, steps: int,
                            learning_rate: float, image_size: int, num_tokens: int, init_std: float,
                            dtype_name: str, masks: torch.Tensor | list | None = None, node_id: str | None = None,
                            on_progress: Callable[[int, int, float | None], None] | None = None,
                            ) -> tuple[ReferenceContext, str, torch.Tensor]:
    """The train nodes' work, start to finish; the user's MODEL is never changed. ``masks`` (a
    MASK, one for all references or one each, or a list of MASKs for references of different
    sizes) weights the loss per latent pixel. Returns the context, the info text and the loss
    picture (IMAGE)."""
    started = time.perf_counter()
    num_blocks, width = anima_geometry(model)
    pixels, original_sizes = prepare_references(images, image_size)
    weights = None
    if masks is not None:
        latent_side = image_size // VAE_DOWNSCALE
        weights = mask_loss_weights(masks, original_sizes, image_size, (latent_side, latent_side))
    patcher = model.clone()
    device = patcher.load_device
    dtype, dtype_note = resolve_dtype(dtype_name, device)
    settings = TrainSettings(steps=steps, learning_rate=learning_rate, num_tokens=num_tokens,
                             init_std=init_std, seed=seed, compute_dtype=dtype,
                             eval_every=max(1, math.ceil(steps / LIFT_POINTS)))
    settings.validate()

    timings = {}
    mark = time.perf_counter()
    latents = encode_references(vae, pixels, patcher.model)
    timings["vae_encode"] = time.perf_counter() - mark
    mark = time.perf_counter()
    if patcher.model.get_dtype_inference() != dtype:
        patcher.set_model_compute_dtype(dtype)
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    text_dtype = patcher.model.get_dtype_inference()
    context = encode_prompt(clip, prompt, patcher.model.diffusion_model, device, text_dtype)
    timings["text_encode"] = time.perf_counter() - mark

    progress = comfy.utils.ProgressBar(steps, node_id=node_id)
    show_text = _progress_text_sender(node_id)

    def on_step(step: int, loss: float | None) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        progress.update(1)
        if loss is not None:  # read back every few steps only, so the GPU never waits
            show_text(f"step {step + 1}/{steps}\nloss {loss:.4f}")
        if on_progress is not None:
            on_progress(step + 1, steps, loss)

    with torch.inference_mode(False), torch.enable_grad():
        # Tensors made under inference mode may not be saved for backward: clone the inputs,
        # alias the frozen weights (no copy), leave the user's weights as they are.
        latents = latents.to(device=device, dtype=torch.float32).clone()
        context = context.clone()
        weights = None if weights is None else weights.to(device).clone()
        denoiser = ComfyAnimaDenoiser(patcher, context, num_blocks, width)
        options = _patches_on_device(patcher.model_options.get("transformer_options", {}), device)
        with autograd_safe_weights(patcher.model.diffusion_model), _training_mode():
            result = train_tokens(denoiser, latents, settings, transformer_options=options,
                                  loss_weights=weights, on_step=on_step)
    timings.update({f"train_{k}": v for k, v in result.timings.items()})
    timings["total"] = time.perf_counter() - started

    metadata = {
        "steps": steps,
        "learning_rate": learning_rate,
        "num_tokens": num_tokens,
        "init_std": init_std,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "image_size": image_size,
        "prompt": prompt,
        "reference_count": len(pixels),
        "reference_sizes": original_sizes,
        "masked": weights is not None,
        "loss_curve": result.loss_curve,
        "final_loss": result.final_loss,
        "heldout_loss_without": result.baseline_loss,
        "heldout_loss_with": result.context_loss,
        "lift": result.lift,
        "lift_curve": result.lift_curve,
        "num_blocks": num_blocks,
        "width": width,
        "model": type(patcher.model.diffusion_model).__name__,
        "seconds": timings["total"],
        "timings": timings,
    }
    context_out = ReferenceContext(tokens=result.tokens, metadata=metadata)
    info = format_info(context_out, result.initial_tokens, timings, notes=[dtype_note] if dtype_note else [])
    return context_out, info, training_plot_image(metadata)


def _progress_text_sender(node_id: str | None) -> Callable[[str], None]:
    """Text under the node's progress bar (the current loss), when a ComfyUI server runs it."""
    server = None
    if node_id is not None:
        try:
            from server import PromptServer

            server = getattr(PromptServer, "instance", None)
        except ImportError:  # a script or test without the server
            server = None
    if server is None or not hasattr(server, "send_progress_text"):
        return lambda text: None
    return lambda text: server.send_progress_text(text, node_id)


def _patches_on_device(transformer_options: dict, device) -> dict:
    """Other patches already on the MODEL (a previous apply node) follow it to the device,
    as ComfyUI's sampler does before sampling."""
    options = dict(transformer_options)
    patches = {}
    for name, entries in options.get("patches", {}).items():
        patches[name] = [entry.to(device) if hasattr(entry, "to") else entry for entry in entries]
    if patches:
        options["patches"] = patches
    return options


def apply_reference_context(model, context: ReferenceContext, strength: float, apply_to: str,
                            start_percent: float = 0.0, end_percent: float = 1.0, blocks: str = "all"):
    """A clone of ``model`` whose cross-attention also attends to the context's tokens, in the
    sampling range and blocks chosen."""
    if not isinstance(context, ReferenceContext):
        raise InvalidSettingError(f"context must come from the Train Context Tokens node, got {type(context).__name__}.")
    num_blocks, width = anima_geometry(model)
    context.check_compatible(num_blocks, width)
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise InvalidSettingError(f"start_percent ({start_percent}) must not be above end_percent ({end_percent}), both in 0..1.")
    try:
        block_weights = parse_block_selection(blocks, num_blocks)
    except ValueError as error:
        raise InvalidSettingError(f"blocks {blocks!r}: {error}. Use 'all', a range like 0-9, a list like 0,3,5-7, "
                                  f"or {num_blocks} weights with decimal points.") from None
    sigma_range = None
    if (start_percent, end_percent) != (0.0, 1.0):
        sampling = model.get_model_object("model_sampling")
        sigma_range = (float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)))
    patched = model.clone()
    patched.set_model_attn2_patch(ContextTokenPatch(context.tokens, strength=strength, apply_to=apply_to,
                                                    sigma_range=sigma_range, block_weights=block_weights))
    return patched


CONTEXT_FOLDER = "anima_contexts"


def register_context_folder() -> str:
    """``models/anima_contexts``, registered with folder_paths so Load Context lists its files."""
    import folder_paths

    if CONTEXT_FOLDER not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, CONTEXT_FOLDER)
        folder_paths.folder_names_and_paths[CONTEXT_FOLDER] = ([path], {".safetensors"})
    return folder_paths.get_folder_paths(CONTEXT_FOLDER)[0]


def list_saved_contexts() -> list[str]:
    import folder_paths

    register_context_folder()
    return folder_paths.get_filename_list(CONTEXT_FOLDER)


def save_reference_context(context: ReferenceContext, filename_prefix: str, destination: str) -> str:
    """Write the context under models/anima_contexts or ComfyUI's output folder, as
    ``<prefix>_00001.safetensors`` (the next free number); returns the file name."""
    import folder_paths

    if not isinstance(context, ReferenceContext):
        raise InvalidSettingError(f"context must come from a Train or Load Context node, got {type(context).__name__}.")
    folder = folder_paths.get_output_directory() if destination == "output" else register_context_folder()
    counter = 1
    while True:
        path = confined_path(folder, f"{filename_prefix}_{counter:05d}")
        if not path.exists():
            break
        counter += 1
    save_context(context, path)
    return os.path.relpath(path, folder)


def load_reference_context(name: str) -> ReferenceContext:
    return load_context(confined_path(register_context_folder(), name))


# Headless use (``python -m anima_context``): load and sample as ComfyUI's own nodes do.


def load_diffusion_model(path: str):
    """As UNETLoader (weight_dtype default)."""
    return comfy.sd.load_diffusion_model(path)


def load_text_encoder(path: str, embedding_directory: list[str]):
    """As CLIPLoader with type stable_diffusion, which detects Anima's Qwen3 encoder from its weights."""
    return comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=embedding_directory,
                              clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)


def load_vae(path: str):
    """As VAELoader."""
    state_dict, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    vae = comfy.sd.VAE(sd=state_dict, metadata=metadata)
    vae.throw_exception_if_invalid()
    return vae


SAMPLER_NAMES, SCHEDULER_NAMES = comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS


def render(model, clip, vae, prompt: str, negative: str, width: int, height: int, steps: int, cfg: float,
           sampler: str, scheduler: str, seed: int, on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """CLIP Text Encode x2, Empty Latent Image, KSampler and VAE Decode: an IMAGE [1, H, W, 3]."""
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    negative_cond = clip.encode_from_tokens_scheduled(clip.tokenize(negative))
    latent = torch.zeros([1, 4, height // VAE_DOWNSCALE, width // VAE_DOWNSCALE],
                         device=comfy.model_management.intermediate_device(), dtype=comfy.model_management.intermediate_dtype())
    # as KSampler does: the empty latent becomes Anima's [1, 16, 1, h, w] (Wan 2.1 format)
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)

    def callback(step, x0, x, total_steps):
        if on_step is not None:
            on_step(step + 1, total_steps)

    samples = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative_cond, latent,
                                  denoise=1.0, callback=callback, disable_pbar=True, seed=seed)
    images = vae.decode(samples)
    if images.ndim == 5:  # a video VAE: frames into the batch, as VAE Decode does
        images = images.reshape(-1, *images.shape[-3:])
    return images[:1]
