"""The train nodes' work on ComfyUI's Anima: encode, load the ComfyUI way on a ``model.clone()``,
optimise the tokens with the plain-torch trainer, restore everything."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import comfy.model_management
import comfy.quant_ops
import comfy.utils
import torch

from ..activation_checkpoint import CHECKPOINTING_CHOICES, checkpointed_blocks
from ..context import ReferenceContext
from ..errors import IncompatibleModelError, InvalidSettingError
from ..images import prepare_references
from ..loss_plot import training_plot_image
from ..masks import mask_loss_weights
from ..report import format_info
from ..trainer import TrainSettings, train_tokens
from .architecture import anima_geometry, resolve_dtype
from .checkpointing import checkpoint_plan
from .progress import TrainingProgressText
from .training_weights import training_transformer_options, training_weights


def encode_references(vae, images: list[torch.Tensor], base_model) -> torch.Tensor:
    """VAE-encode each [1, S, S, 3] image on its own (the Wan VAE reads a batch as video
    frames) and bring it into the DiT's latent space: [R, 16, 1, S/8, S/8]."""
    latents = [base_model.process_latent_in(vae.encode(image)) for image in images]
    return torch.cat(latents, dim=0)


def encode_text(clip, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Qwen3 states [1, n, 1024], t5xxl ids and weights. Runs the text encoder: call it before the
    DiT is loaded, so a small card does not unload the DiT to make room for it."""
    cond, extras = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0]
    ids = extras.get("t5xxl_ids")
    if ids is None:
        raise IncompatibleModelError(
            "the CLIP did not return Anima's t5xxl_ids: load the Qwen3-0.6B text encoder "
            "(qwen_3_06b_base.safetensors) with CLIPLoader, type stable_diffusion."
        )
    return cond, ids, extras.get("t5xxl_weights")


def text_context(encoded, diffusion_model, device, dtype) -> torch.Tensor:
    """The cross-attention context [1, 512, width]: the encoded prompt through the DiT's LLM adapter,
    as ``model_base.Anima.extra_conds`` does while sampling. Does not depend on the tokens."""
    cond, ids, weights = encoded
    if weights is not None:
        weights = weights.unsqueeze(0).unsqueeze(-1).to(device=device, dtype=dtype)
    return diffusion_model.preprocess_text_embeds(
        cond.to(device=device, dtype=dtype), ids.unsqueeze(0).to(device), t5xxl_weights=weights
    )


def encode_prompt(clip, prompt: str, diffusion_model, device, dtype) -> torch.Tensor:
    """``text_context`` of ``encode_text``: the prompt's cross-attention context in one call."""
    return text_context(encode_text(clip, prompt), diffusion_model, device, dtype)


class ComfyAnimaDenoiser:
    """The trainer's ``Denoiser`` over a loaded ComfyUI Anima ModelPatcher."""

    def __init__(self, patcher, context: torch.Tensor, num_blocks: int, width: int):
        self.base = patcher.model
        self.model_sampling = patcher.get_model_object("model_sampling")
        self.context = context
        self.num_blocks, self.context_width = num_blocks, width
        self.device = context.device
        self.model_dtype = patcher.model.get_dtype_inference()

    def sigmas(self, u: torch.Tensor) -> torch.Tensor:
        # Training time u runs from clean (0) to noise (1); percent runs the other way.
        return torch.tensor([float(self.model_sampling.percent_to_sigma(1.0 - float(x))) for x in u])

    def add_noise(self, x0, noise, sigma):
        return self.model_sampling.noise_scaling(sigma, noise, x0)

    def velocity(self, x_t, sigma, transformer_options):
        context = self.context.expand(x_t.shape[0], -1, -1)
        # ComfyUI casts inputs and weights to the model's compute dtype itself: autocast on top
        # would only add casts (and fp32 matmuls where it prefers them) when that is the same dtype.
        autocast = torch.is_autocast_enabled(self.device.type) and (
            torch.get_autocast_dtype(self.device.type) != self.model_dtype)
        with torch.autocast(self.device.type, enabled=autocast):
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


# Held-out lift points per run (plus step 0): each costs about one training step.
LIFT_POINTS = 4
VAE_DOWNSCALE = 8


def train_reference_context(model, clip, vae, images: dict, prompt: str, seed: int, steps: int,
                            learning_rate: float, image_size: int, num_tokens: int, init_std: float,
                            dtype_name: str, masks: torch.Tensor | list | None = None, node_id: str | None = None,
                            on_progress: Callable[[int, int, float | None], None] | None = None,
                            activation_checkpointing: str = "auto", probe_draws: int = 0,
                            keep_background: float = 0.0,
                            ) -> tuple[ReferenceContext, str, torch.Tensor]:
    """The train nodes' work, start to finish; the user's MODEL is never changed. ``masks`` (a
    MASK, one for all references or one each, or a list of MASKs for references of different
    sizes) weights the loss per latent pixel. Returns the context, the info text and the loss
    picture (IMAGE). ``activation_checkpointing`` ("auto", "on", "off"): recompute the DiT blocks'
    activations in backward instead of keeping them; auto does it, on as many blocks as needed,
    when the step would not fit the device's free memory."""
    if activation_checkpointing not in CHECKPOINTING_CHOICES:
        raise InvalidSettingError(
            f"activation_checkpointing must be one of {', '.join(CHECKPOINTING_CHOICES)}, got {activation_checkpointing!r}.")
    started = time.perf_counter()
    status = TrainingProgressText(node_id, steps)
    status.starting()  # replaces the last run's text at once, before the slow encoding and loading
    # a cancel while encoding or loading says so too, not only one during the steps
    with status.reporting_cancel():
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
                                 eval_every=max(1, math.ceil(steps / LIFT_POINTS)),
                                 probe_draws=probe_draws, keep_background=keep_background)
        settings.validate()

        timings = {}
        mark = time.perf_counter()
        latents = encode_references(vae, pixels, patcher.model)
        timings["vae_encode"] = time.perf_counter() - mark
        mark = time.perf_counter()
        encoded_prompt = encode_text(clip, prompt)  # the text encoder before the DiT: see encode_text
        if patcher.model.get_dtype_inference() != dtype:
            patcher.set_model_compute_dtype(dtype)
        # Attention with a backward (SDPA) whatever the server's flag, on the clone only.
        patcher.model_options["transformer_options"] = training_transformer_options(
            patcher.model_options.get("transformer_options", {}))
        # No force_full_load: a partial load is what a small card without DynamicVRAM needs, and
        # training_weights makes the modules it casts per op safe for autograd.
        comfy.model_management.load_models_gpu([patcher])
        text_dtype = patcher.model.get_dtype_inference()
        context = text_context(encoded_prompt, patcher.model.diffusion_model, device, text_dtype)
        timings["text_encode"] = time.perf_counter() - mark
        checkpointed = checkpoint_plan(activation_checkpointing, patcher, device, dtype, image_size,
                                       len(pixels) * settings.draws_per_reference)

        progress = comfy.utils.ProgressBar(steps, node_id=node_id)

        def on_step(step: int, loss: float | None) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            progress.update(1)
            status.stepped(step + 1, loss)  # the loss is read back every few steps only, so the GPU never waits
            if on_progress is not None:
                on_progress(step + 1, steps, loss)

        with torch.inference_mode(False), torch.enable_grad():
            # Tensors made under inference mode may not be saved for backward: clone the inputs; the
            # frozen weights take training_weights' path (an alias or the op's own copy).
            latents = latents.to(device=device, dtype=torch.float32).clone()
            context = context.clone()
            weights = None if weights is None else weights.to(device).clone()
            denoiser = ComfyAnimaDenoiser(patcher, context, num_blocks, width)
            options = _patches_on_device(patcher.model_options["transformer_options"], device)
            blocks = list(patcher.model.diffusion_model.blocks)[:checkpointed]
            with training_weights(patcher.model.diffusion_model), _training_mode(), checkpointed_blocks(blocks, checkpointed > 0):
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
            "keep_background": keep_background,
            "loss_curve": result.loss_curve,
            "final_loss": result.final_loss,
            "heldout_loss_without": result.baseline_loss,
            "heldout_loss_with": result.context_loss,
            "lift": result.lift,
            "lift_curve": result.lift_curve,
            "probe": result.probe,
            "num_blocks": num_blocks,
            "width": width,
            "model": type(patcher.model.diffusion_model).__name__,
            "activation_checkpointing": activation_checkpointing,
            "checkpointed_blocks": checkpointed,
            "seconds": timings["total"],
            "timings": timings,
        }
        context_out = ReferenceContext(tokens=result.tokens, metadata=metadata)
        info = format_info(context_out, result.initial_tokens, timings, notes=[dtype_note] if dtype_note else [])
        plot = training_plot_image(metadata)
        status.done(result.final_loss, result.lift)
        return context_out, info, plot


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
