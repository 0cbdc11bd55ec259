"""Optimise per-block context tokens against the flow-matching loss of a frozen denoiser.

Pure torch: the denoiser is any object that follows ``Denoiser`` (ComfyUI's Anima through the
glue module, or the small test DiT). The tokens reach the model only through
``ContextTokenPatch``, the same patch the apply node installs for sampling.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .errors import InvalidSettingError, TokenOptimizationError, TrainingOutOfMemoryError
from .patch import ContextTokenPatch


class Denoiser(Protocol):
    """What the trainer needs of a model. ``velocity`` must route ``transformer_options``
    (with ``patches.attn2_patch``) to every block's cross-attention."""

    num_blocks: int
    context_width: int
    device: torch.device

    def sigmas(self, u: torch.Tensor) -> torch.Tensor:
        """Map training time u in (0, 1) to the model's sigma (Anima: flow shift 3)."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_t for clean latents x0, noise and sigma [B]."""

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """The frozen model's velocity prediction (target: noise - x0)."""


# The training_dtype choices, by name (the node's combo, the command line, the glue).
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# The masked train node's keep_background (bench/world/README.md, seventh session): with the loss inside the mask
# alone the tokens still redraw the references' scene; held to the model outside it they keep the asked one.
DEFAULT_KEEP_BACKGROUND = 1.0
# Tokens per block (bench/world/README.md, tenth session): on the tag world 32 put the character in the asked scene
# more often than 16 at the same training time (tuning set 18% -> 27% from one reference, 30% -> 47% from three;
# final set 19% -> 31% and 17% -> 17%); 64 let the references' scene back in.
DEFAULT_NUM_TOKENS = 32
# The masked train node keeps 16 (eleventh session): with a mask and keep_background, 32 tokens let the references'
# scene back in (tuning set, one reference: asked scene 82% -> 63%, the character in it 23% -> 18%).
DEFAULT_MASKED_NUM_TOKENS = 16


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    learning_rate: float
    num_tokens: int
    init_std: float
    seed: int
    compute_dtype: torch.dtype = torch.float32
    draws_per_reference: int = 1
    eval_draws_per_reference: int = 2
    loss_readback_every: int = 10
    eval_every: int = 0  # held-out lift at step 0, every N steps and at the end (0: only at the end)
    probe_draws: int = 0  # > 0: after training, record each of this many draws per reference (TrainResult.probe)
    # > 0 with a loss mask: also pull the prediction outside the mask toward the model's own without the tokens
    keep_background: float = 0.0

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"training_steps must be at least 1, got {self.steps}"),
            (self.num_tokens >= 1, f"num_tokens must be at least 1, got {self.num_tokens}"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0, f"learning_rate must be above 0, got {self.learning_rate}"),
            (math.isfinite(self.init_std) and self.init_std >= 0, f"init_std must be 0 or more, got {self.init_std}"),
            (self.draws_per_reference >= 1, f"draws_per_reference must be at least 1, got {self.draws_per_reference}"),
            (math.isfinite(self.keep_background) and self.keep_background >= 0,
             f"keep_background must be 0 or more, got {self.keep_background}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidSettingError(message + ".")


@dataclass
class TrainResult:
    tokens: torch.Tensor  # [num_blocks, num_tokens, width], float32, CPU
    initial_tokens: torch.Tensor
    loss_curve: list[float]
    baseline_loss: float  # held-out loss without the tokens
    context_loss: float  # held-out loss with the trained tokens
    lift_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, lift) every eval_every steps
    probe: list[tuple[float, float, float]] = field(default_factory=list)  # (sigma, loss without, loss with) per draw
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return self.loss_curve[-1]

    @property
    def lift(self) -> float:
        """Reference fit: 1 - loss(with context) / loss(without), on held-out draws."""
        return 1.0 - self.context_loss / self.baseline_loss if self.baseline_loss > 0 else 0.0


def stratified_uniform(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` draws in (0, 1), one in each of ``count`` equal strata, in random order:
    every step sees the whole noise range, which steadies the loss."""
    offsets = torch.rand(count, generator=generator, dtype=torch.float64)
    u = (torch.arange(count, dtype=torch.float64) + offsets) / count
    u = u[torch.randperm(count, generator=generator)]
    return u.clamp(1e-4, 1 - 1e-4).float()


def _squared_error(denoiser: Denoiser, x0, noise, sigma, options, compute_dtype) -> torch.Tensor:
    """The frozen model's squared velocity error per element, float32."""
    x_t = denoiser.add_noise(x0, noise, sigma)
    with torch.autocast(x0.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        prediction = denoiser.velocity(x_t, sigma, options)
    return (prediction.float() - (noise - x0).float()).square()


def _flow_loss(denoiser: Denoiser, x0, noise, sigma, options, compute_dtype, weights=None) -> torch.Tensor:
    """Flow-matching MSE; ``weights`` (from ``normalized_loss_weights``) make it a per-sample
    weighted mean over the latent pixels that count."""
    error = _squared_error(denoiser, x0, noise, sigma, options, compute_dtype)
    if weights is None:
        return error.mean()
    return (error * weights).sum() / x0.shape[0]


def _anchored_flow_loss(denoiser: Denoiser, x0, noise, sigma, options, base_options, compute_dtype, inside, outside,
                        keep: float) -> torch.Tensor:
    """The flow loss inside the mask, plus ``keep`` x the squared change the tokens make to the
    prediction outside it (against the frozen model without them): the tokens learn the character
    and are taught not to redraw the rest. The forward without them runs first: as in plain training, the
    forward that is backpropagated is the last one before its backward."""
    x_t = denoiser.add_noise(x0, noise, sigma)
    with torch.autocast(x0.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        with torch.no_grad():
            without = denoiser.velocity(x_t, sigma, base_options).float()
        prediction = denoiser.velocity(x_t, sigma, options).float()
    fit = ((prediction - (noise - x0).float()).square() * inside).sum()
    drift = ((prediction - without).square() * outside).sum()
    return (fit + keep * drift) / x0.shape[0]


def outside_loss_weights(weights: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """``normalized_loss_weights`` of the complement of a mask; a sample with nothing outside weighs 0."""
    outside = (1.0 - weights.to(device=latents.device, dtype=torch.float32)).clamp(min=0.0)
    outside = outside.expand(latents.shape[0], 1, *latents.shape[2:])
    per_sample = outside.sum(dim=tuple(range(1, outside.ndim)), keepdim=True) * latents.shape[1]
    return (outside / per_sample.clamp(min=1e-12)).contiguous()


def normalized_loss_weights(weights: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor | None:
    """Per-latent-pixel weights [R, 1, T, h, w] (or broadcastable) scaled so that each sample's
    weights sum to 1 over all its elements: with all-ones weights the loss is exactly the MSE."""
    if weights is None:
        return None
    weights = weights.to(device=latents.device, dtype=torch.float32).expand(latents.shape[0], 1, *latents.shape[2:])
    per_sample = weights.sum(dim=tuple(range(1, weights.ndim)), keepdim=True) * latents.shape[1]
    if not bool((per_sample > 0).all()):
        raise InvalidSettingError("a loss mask is all zero for one of the references: nothing would be learnt from it.")
    return (weights / per_sample).contiguous()


def _merge_patch(transformer_options: dict | None, patch: ContextTokenPatch) -> dict:
    options = dict(transformer_options or {})
    patches = {name: list(entries) for name, entries in options.get("patches", {}).items()}
    patches["attn2_patch"] = patches.get("attn2_patch", []) + [patch]
    options["patches"] = patches
    return options


class HeldOutSet:
    """Fixed noise and timestep draws on the reference latents, seeded apart from training, to
    measure the reference fit. The loss without tokens is computed once: it cannot change."""

    def __init__(self, denoiser: Denoiser, latents: torch.Tensor, draws: int, seed: int,
                 compute_dtype: torch.dtype, transformer_options: dict | None = None,
                 weights: torch.Tensor | None = None):
        generator = torch.Generator().manual_seed(seed + 0x5EED)
        self.denoiser, self.compute_dtype = denoiser, compute_dtype
        self.options = dict(transformer_options or {})
        self.x0 = latents.repeat_interleave(draws, dim=0)
        self.weights = None if weights is None else weights.repeat_interleave(draws, dim=0)
        u = stratified_uniform(self.x0.shape[0], generator)
        self.noise = torch.randn(self.x0.shape, generator=generator).to(latents.device, latents.dtype)
        self.sigma = denoiser.sigmas(u).to(latents.device, latents.dtype)
        self.baseline = self.loss(None)

    def loss(self, tokens: torch.Tensor | None) -> float:
        options = self.options if tokens is None else _merge_patch(self.options, ContextTokenPatch(tokens))
        with torch.no_grad():
            return float(_flow_loss(self.denoiser, self.x0, self.noise, self.sigma, options, self.compute_dtype, self.weights))

    def per_draw(self, tokens: torch.Tensor | None) -> torch.Tensor:
        """Each draw's own (weighted) loss [draws]."""
        options = self.options if tokens is None else _merge_patch(self.options, ContextTokenPatch(tokens))
        with torch.no_grad():
            error = _squared_error(self.denoiser, self.x0, self.noise, self.sigma, options, self.compute_dtype)
            if self.weights is None:
                return error.flatten(1).mean(dim=1)
            return (error * self.weights).flatten(1).sum(dim=1)

    def lift(self, tokens: torch.Tensor) -> tuple[float, float]:
        """(loss with tokens, reference fit)."""
        with_tokens = self.loss(tokens)
        return with_tokens, 1.0 - with_tokens / self.baseline if self.baseline > 0 else 0.0


def train_tokens(
    denoiser: Denoiser,
    latents: torch.Tensor,
    settings: TrainSettings,
    *,
    transformer_options: dict | None = None,
    loss_weights: torch.Tensor | None = None,
    on_step: Callable[[int, float | None], None] | None = None,
) -> TrainResult:
    """Train ``settings.num_tokens`` tokens per block on ``latents`` [R, C, T, h, w].

    ``loss_weights`` [R, 1, T, h, w] (a mask at latent resolution) weights the loss per latent
    pixel, so the tokens learn what is weighted (the character) and not the rest.
    ``on_step(step, loss_or_None)`` runs after every step (progress, cancel); the loss is
    only read back every ``loss_readback_every`` steps so a GPU never waits on the host.
    """
    settings.validate()
    started = time.perf_counter()
    device = latents.device
    if not bool(torch.isfinite(latents).all()):
        raise TokenOptimizationError("the reference latents contain NaN or infinite values; check the VAE and the images.")

    cpu_generator = torch.Generator().manual_seed(settings.seed)
    shape = (denoiser.num_blocks, settings.num_tokens, denoiser.context_width)
    initial = torch.randn(shape, generator=cpu_generator) * settings.init_std
    tokens = torch.nn.Parameter(initial.to(device, copy=True))
    patch = ContextTokenPatch(tokens)
    options = _merge_patch(transformer_options, patch)
    optimizer = torch.optim.Adam([tokens], lr=settings.learning_rate, **_fused_if_possible(device))
    # float16 gradients underflow in the backward; Adam ignores a constant gradient scale.
    loss_scale = 1024.0 if settings.compute_dtype == torch.float16 else 1.0

    noise_generator = torch.Generator(device=device).manual_seed(settings.seed)
    x0 = latents.repeat_interleave(settings.draws_per_reference, dim=0)
    weights = normalized_loss_weights(loss_weights, latents)
    step_weights = None if weights is None else weights.repeat_interleave(settings.draws_per_reference, dim=0)
    if settings.keep_background and loss_weights is None:
        raise InvalidSettingError("keep_background needs a training mask: it keeps the model as it was outside it.")
    outside = None
    if settings.keep_background:
        outside = outside_loss_weights(loss_weights, latents).repeat_interleave(settings.draws_per_reference, dim=0)
    batch = x0.shape[0]
    # Every timestep of the run is drawn up front on the CPU: no host work or sync per step.
    all_sigmas = denoiser.sigmas(
        torch.cat([stratified_uniform(batch, cpu_generator) for _ in range(settings.steps)])
    ).to(device=device, dtype=latents.dtype).view(settings.steps, batch)
    losses = torch.zeros(settings.steps, device=device)
    loss_curve: list[float] = []
    lift_curve: list[tuple[int, float]] = []
    timings = {"prepare": time.perf_counter() - started}
    eval_started = time.perf_counter()
    heldout = HeldOutSet(denoiser, latents, settings.eval_draws_per_reference, settings.seed,
                         settings.compute_dtype, transformer_options, weights)
    if settings.eval_every:
        lift_curve.append((0, heldout.lift(tokens.detach())[1]))
    timings["evaluate"] = time.perf_counter() - eval_started
    loop_started, evaluate_before_loop = time.perf_counter(), timings["evaluate"]
    try:
        for step in range(settings.steps):
            noise = torch.randn(x0.shape, generator=noise_generator, device=device, dtype=x0.dtype)
            if outside is None:
                loss = _flow_loss(denoiser, x0, noise, all_sigmas[step], options, settings.compute_dtype, step_weights)
            else:
                loss = _anchored_flow_loss(denoiser, x0, noise, all_sigmas[step], options, transformer_options or {},
                                           settings.compute_dtype, step_weights, outside, settings.keep_background)
            (loss * loss_scale).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[step] = loss.detach()
            reported = None
            if (step + 1) % settings.loss_readback_every == 0 or step + 1 == settings.steps:
                first_new = len(loss_curve)
                loss_curve.extend(losses[first_new : step + 1].tolist())
                _raise_if_diverged(loss_curve, first_new, settings)
                reported = loss_curve[-1]
            if settings.eval_every and (step + 1) % settings.eval_every == 0 and step + 1 < settings.steps:
                eval_started = time.perf_counter()
                lift_curve.append((step + 1, heldout.lift(tokens.detach())[1]))
                timings["evaluate"] += time.perf_counter() - eval_started
            if on_step is not None:
                on_step(step, reported)
        # The loop's time without the lift evaluations inside it (those count as "evaluate").
        timings["loop"] = time.perf_counter() - loop_started - (timings["evaluate"] - evaluate_before_loop)
        trained = tokens.detach().float().cpu()
        if not bool(torch.isfinite(trained).all()):
            raise TokenOptimizationError(
                f"the tokens became NaN or infinite. Lower learning_rate (now {settings.learning_rate:g}) "
                "or use training_dtype float32."
            )
        eval_started = time.perf_counter()
        with_context, final_lift = heldout.lift(tokens.detach())
        timings["evaluate"] += time.perf_counter() - eval_started
        if settings.eval_every:  # the final evaluation closes the curve: no extra pass
            lift_curve.append((settings.steps, final_lift))
        probe = []
        if settings.probe_draws:
            eval_started = time.perf_counter()
            probe_set = HeldOutSet(denoiser, latents, settings.probe_draws, settings.seed + 1, settings.compute_dtype,
                                   transformer_options, weights)
            probe = list(zip(probe_set.sigma.float().tolist(), probe_set.per_draw(None).tolist(),
                             probe_set.per_draw(tokens.detach()).tolist()))
            timings["evaluate"] += time.perf_counter() - eval_started
    except torch.OutOfMemoryError as error:
        _release_frames(error)
        raise TrainingOutOfMemoryError(
            f"the {device.type.upper()} ran out of memory while training ({str(error).splitlines()[0][:160]}). "
            f"Lower training_image_size (each halving needs about a quarter of the memory), use fewer "
            f"reference images or fewer num_tokens (now {settings.num_tokens}), or close other models."
        ) from None
    except BaseException as error:
        # ComfyUI keeps a failed node's exception; its traceback must not keep the graph alive.
        _release_frames(error)
        raise
    finally:
        # Drop the optimiser state, the graph and the batch now, also on cancel or error.
        optimizer.state.clear()
        tokens.grad = None
        loss = noise = x0 = all_sigmas = step_weights = None  # noqa: F841
    return TrainResult(
        tokens=trained,
        initial_tokens=initial,
        loss_curve=loss_curve,
        baseline_loss=heldout.baseline,
        context_loss=with_context,
        lift_curve=lift_curve,
        timings=timings,
        probe=probe,
    )


def _release_frames(error: BaseException) -> None:
    """Clear the locals of the finished frames in the traceback (the model's activations);
    the traceback itself, and so the error report, stay intact."""
    traceback.clear_frames(error.__traceback__)


def _raise_if_diverged(loss_curve: list[float], first_new: int, settings: TrainSettings) -> None:
    for index in range(first_new, len(loss_curve)):
        value = loss_curve[index]
        if not math.isfinite(value):
            raise TokenOptimizationError(
                f"the loss became {value} at step {index + 1} of {settings.steps}. Lower learning_rate "
                f"(now {settings.learning_rate:g}) or use another training_dtype (float32 is the safest)."
            )


def _fused_if_possible(device: torch.device) -> dict:
    return {"fused": True} if device.type == "cuda" else {}
