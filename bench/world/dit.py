"""The world's Anima: ComfyUI's own class and checkpoint layout at a small width, trained with Anima's
flow-matching objective (shift 3, velocity target) on the world's latents.

Speed: a prompt's context is the LLM adapter's output for its n real tokens, zero-padded to 512 rows.
A zero row has k = v = 0 (no biases, RMSNorm(0) = 0), so it only adds exp(0) to each softmax
denominator. Training keeps the real rows plus one zero row whose logit gets the offset
log(512 - N + 1) (N rows kept in all): the same attention, at a fraction of the k/v projection work
that dominates a step at 64 px. ``tests/test_world_build.py`` checks it against the padded model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

PADDED_ROWS = 512  # comfy.ldm.anima.model.Anima.preprocess_text_embeds
FLOW_SHIFT = 3.0  # comfy.supported_models.Anima sampling_settings


def init_state(width: int, seed: int) -> dict[str, torch.Tensor]:
    """A fresh DiT to train: the demo set's random LLM adapter (kept fixed, as the issue allows), fan-in
    scaled weights elsewhere, and zero adaLN outputs and final layer so every block starts as identity."""
    from anima_context.comfy_glue import demo_weights
    from anima_context.demo_models import random_weights

    state = random_weights(demo_weights.dit_shapes(width), seed, torch.float32, small_init=False)
    for name, tensor in state.items():
        if name.startswith("llm_adapter."):
            continue
        if ".adaln_modulation" in name and name.endswith(".2.weight") or name == "final_layer.linear.weight":
            tensor.zero_()
    return state


def build_model(state: dict[str, torch.Tensor]):
    """ComfyUI's Anima (model_base) for this state dict, as UNETLoader configures it, trainable."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(state, "")
    if config is None or type(config).__name__ != "Anima":
        raise RuntimeError(f"ComfyUI does not detect this state dict as Anima (got {type(config).__name__})")
    model = config.get_model(state, "")
    model.diffusion_model.load_state_dict(state)
    return model.float()


def training_parameters(diffusion_model) -> list[torch.nn.Parameter]:
    """Everything but the LLM adapter (fixed random text features are enough to name 6 backgrounds)."""
    params = []
    for name, param in diffusion_model.named_parameters():
        trainable = not name.startswith("llm_adapter.")
        param.requires_grad_(trainable)
        if trainable:
            params.append(param)
    return params


# ---- compact prompt contexts ----


def real_rows(padded: torch.Tensor) -> int:
    """How many leading rows of a [1, 512, D] context are the prompt's (the rest are exactly zero)."""
    nonzero = (padded[0].abs().sum(dim=-1) > 0).nonzero()
    count = int(nonzero.max()) + 1 if len(nonzero) else 0
    if not bool((padded[0, count:] == 0).all()):
        raise RuntimeError("the prompt context has non-zero rows after its padding starts")
    return count


class CompactContexts:
    """The prompts' contexts cut to N rows (real rows, zeros after, the last row always zero) and the
    attention override that gives the last row the weight of all the padding it stands for."""

    def __init__(self, padded: list[torch.Tensor], image_tokens: int):
        counts = [real_rows(p) for p in padded]
        rows = max(counts) + 1
        if rows == image_tokens:  # the override tells cross- from self-attention by key length
            rows += 1
        self.rows = rows
        self.contexts = torch.cat([p[:, :rows] for p in padded]).float()  # [P, N, D]
        self.log_weight = math.log(PADDED_ROWS - rows + 1)

    def attention_override(self):
        log_weight, rows = self.log_weight, self.rows

        def override(func, q, k, v, heads, *args, skip_reshape=False, skip_output_reshape=False, **kwargs):
            if k.shape[-2] != rows or not skip_reshape:
                return func(q, k, v, heads, *args, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape, **kwargs)
            bias = torch.zeros(1, rows, device=q.device, dtype=q.dtype)
            bias[0, -1] = log_weight
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            if skip_output_reshape:
                return out
            b, h, s, d = out.shape
            return out.transpose(1, 2).reshape(b, s, h * d)

        return override


def sigmas_for(u: torch.Tensor, shift: float = FLOW_SHIFT) -> torch.Tensor:
    """Anima's flow time shift: sigma = shift t / (1 + (shift - 1) t)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def velocity(diffusion_model, x_t, sigma, context, options) -> torch.Tensor:
    """The network's output: Anima's model_sampling has multiplier 1 (timestep = sigma) and an
    identity input scaling, so this is what ``apply_model`` turns into ``x_t - sigma * v``."""
    return diffusion_model(x_t, sigma, context, transformer_options=options)


def caption_rows(drop: torch.Tensor, scene_rows: torch.Tensor, tagged_rows: torch.Tensor | None, dropout: float,
                 tag_share: float, empty_prompt: int) -> torch.Tensor:
    """Each draw's prompt row: the empty prompt when ``drop`` < ``dropout``, the tagged caption for the next
    ``tag_share`` of the rest, else the scene-only caption. One uniform number per draw decides, so a world
    without tags draws exactly the numbers it drew before tags existed."""
    rows = scene_rows
    if tagged_rows is not None and tag_share > 0:
        rows = torch.where(drop < dropout + tag_share * (1.0 - dropout), tagged_rows, rows)
    return torch.where(drop < dropout, torch.full_like(rows, empty_prompt), rows)


def train(model, latents: torch.Tensor, prompt_index: torch.Tensor, contexts: CompactContexts, empty_prompt: int,
          steps: int, batch: int, lr: float, seed: int, checkpoint: Path, log=print, dropout: float = 0.1,
          ema_decay: float = 0.999, save_every: int = 250, tagged_index: torch.Tensor | None = None,
          tag_share: float = 0.0) -> dict[str, torch.Tensor]:
    """Train on DiT-space latents [N, 16, 1, h, w] with their prompt rows, on the latents' device (the
    model, prompt indices and contexts are there too); returns the EMA weights on the CPU.
    ``tagged_index`` (each latent's tagged caption) is drawn in ``tag_share`` of the non-empty draws.
    Resumes from ``checkpoint`` (written every ``save_every`` steps)."""
    net = model.diffusion_model
    params = training_parameters(net)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    start, losses = 0, []
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=latents.device, weights_only=True)
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        ema = saved["ema"]
        start, losses = saved["step"], saved["losses"]
        log(f"  resumed the world DiT at step {start}")
    generator = torch.Generator().manual_seed(seed)
    for _ in range(start):  # the same draws as an uninterrupted run
        _draw(generator, len(latents), batch, latents.shape)
    options = {"optimized_attention_override": contexts.attention_override()}
    warmup = max(1, min(200, steps // 10))
    started = time.perf_counter()
    net.train()
    device = latents.device  # the draws come from a CPU generator, so a GPU build draws the same numbers
    for step in range(start, steps):
        index, u, noise, drop = (t.to(device) for t in _draw(generator, len(latents), batch, latents.shape))
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1.0 + math.cos(math.pi * step / steps)))
        x0 = latents[index]
        sigma = sigmas_for(u)
        x_t = (1.0 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
        rows = caption_rows(drop, prompt_index[index], None if tagged_index is None else tagged_index[index], dropout,
                            tag_share, empty_prompt)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            predicted = velocity(net, x_t, sigma, contexts.contexts[rows], options)
        loss = torch.nn.functional.mse_loss(predicted.float(), noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        losses.append(loss.item())
        done = step + 1
        if done % 50 == 0 or done == steps:
            elapsed = time.perf_counter() - started
            log(f"  world DiT step {done}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                f"({elapsed:.0f} s, {elapsed / (done - start):.2f} s/step)")
        if done % save_every == 0 or done == steps:
            partial = checkpoint.with_suffix(".partial")
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema,
                        "step": done, "losses": losses}, partial)
            partial.replace(checkpoint)
    net.eval()
    state = {name: tensor.detach().cpu() for name, tensor in net.state_dict().items()}
    trainable = [name for name, param in net.named_parameters() if param.requires_grad]
    for name, value in zip(trainable, ema):
        state[name] = value.cpu()
    return state


def _draw(generator, count, batch, shape):
    index = torch.randint(0, count, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator)
    noise = torch.randn((batch, *shape[1:]), generator=generator)
    drop = torch.rand(batch, generator=generator)
    return index, u, noise, drop
