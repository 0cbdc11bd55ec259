import math

import pytest
import torch
from tiny_anima import DenoiserWrapper, make_tiny_setup

from anima_context.errors import InvalidSettingError, TokenOptimizationError
from anima_context.trainer import TrainSettings, stratified_uniform, train_tokens

SETTINGS = TrainSettings(steps=30, learning_rate=0.2, num_tokens=4, init_std=1.0, seed=3,
                         draws_per_reference=2, eval_draws_per_reference=8)


def test_heldout_loss_goes_down_with_the_trained_tokens():
    # Per-step losses are noisy (fresh noise and timesteps each step); the held-out draws are fixed.
    _, denoiser, latents = make_tiny_setup()
    result = train_tokens(denoiser, latents, SETTINGS)
    assert len(result.loss_curve) == SETTINGS.steps
    assert result.context_loss < result.baseline_loss
    assert result.lift > 0.002


def test_gradients_reach_every_blocks_tokens_and_weights_stay_frozen():
    model, denoiser, latents = make_tiny_setup()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train_tokens(denoiser, latents, TrainSettings(steps=2, learning_rate=0.1, num_tokens=3, init_std=0.5, seed=0))
    moved = (result.tokens - result.initial_tokens).abs().amax(dim=(1, 2))
    assert moved.shape == (model.num_blocks,)
    assert bool((moved > 0).all()), moved
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
        assert p.grad is None and not p.requires_grad


def test_same_seed_same_tokens_other_seed_other_tokens():
    _, denoiser, latents = make_tiny_setup()
    settings = TrainSettings(steps=3, learning_rate=0.05, num_tokens=2, init_std=0.5, seed=11)
    a = train_tokens(denoiser, latents, settings)
    b = train_tokens(denoiser, latents, settings)
    c = train_tokens(denoiser, latents, TrainSettings(**{**settings.__dict__, "seed": 12}))
    assert torch.equal(a.tokens, b.tokens)
    assert a.loss_curve == b.loss_curve
    assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_compute_trains_float32_tokens(dtype):
    _, denoiser, latents = make_tiny_setup()
    settings = TrainSettings(steps=3, learning_rate=0.05, num_tokens=2, init_std=0.5, seed=0, compute_dtype=dtype)
    result = train_tokens(denoiser, latents, settings)
    reference = train_tokens(denoiser, latents, TrainSettings(**{**settings.__dict__, "compute_dtype": torch.float32}))
    assert result.tokens.dtype == torch.float32
    assert all(math.isfinite(v) for v in result.loss_curve)
    # the same direction as float32 training: the loss scale does not change the Adam steps
    moved, moved_fp32 = result.tokens - result.initial_tokens, reference.tokens - reference.initial_tokens
    assert torch.nn.functional.cosine_similarity(moved.flatten(), moved_fp32.flatten(), dim=0) > 0.9


class _DivergingDenoiser(DenoiserWrapper):
    """Wraps a denoiser and returns NaN from the given training call (with grad) on."""

    def __init__(self, inner, nan_from_call):
        super().__init__(inner)
        self.nan_from_call, self.calls = nan_from_call, 0

    def velocity(self, x_t, sigma, options):
        self.calls += torch.is_grad_enabled()
        out = self.inner.velocity(x_t, sigma, options)
        return out * float("nan") if torch.is_grad_enabled() and self.calls >= self.nan_from_call else out


def test_diverging_loss_raises_token_optimization_failed_naming_the_step():
    _, denoiser, latents = make_tiny_setup()
    with pytest.raises(TokenOptimizationError) as caught:
        train_tokens(_DivergingDenoiser(denoiser, nan_from_call=4), latents,
                     TrainSettings(steps=6, learning_rate=0.05, num_tokens=2, init_std=0.5, seed=0, loss_readback_every=2))
    message = str(caught.value)
    assert message.startswith("Token optimization failed")
    assert "step 4 of 6" in message and "learning_rate" in message


def test_cancel_from_the_step_callback_propagates_and_stops_training():
    _, denoiser, latents = make_tiny_setup()
    steps_run = []

    class Interrupted(Exception):
        pass

    def on_step(step, loss):
        steps_run.append(step)
        if step == 1:
            raise Interrupted()

    with pytest.raises(Interrupted):
        train_tokens(denoiser, latents, TrainSettings(steps=50, learning_rate=0.05, num_tokens=2, init_std=0.5, seed=0),
                     on_step=on_step)
    assert steps_run == [0, 1]


def test_loss_is_reported_every_readback_and_at_the_end():
    _, denoiser, latents = make_tiny_setup()
    reports = []
    train_tokens(denoiser, latents, TrainSettings(steps=7, learning_rate=0.05, num_tokens=2, init_std=0.5, seed=0,
                                                  loss_readback_every=3),
                 on_step=lambda step, loss: reports.append(loss is not None))
    assert reports == [False, False, True, False, False, True, True]


@pytest.mark.parametrize("field, value", [("steps", 0), ("num_tokens", 0), ("learning_rate", 0.0),
                                          ("learning_rate", float("nan")), ("init_std", -1.0)])
def test_invalid_settings_are_refused_before_training(field, value):
    _, denoiser, latents = make_tiny_setup()
    settings = TrainSettings(**{**SETTINGS.__dict__, field: value})
    with pytest.raises(InvalidSettingError, match=field):
        train_tokens(denoiser, latents, settings)


def test_non_finite_latents_are_refused():
    _, denoiser, latents = make_tiny_setup()
    latents[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(TokenOptimizationError, match="latents"):
        train_tokens(denoiser, latents, SETTINGS)


def test_stratified_uniform_covers_every_stratum():
    u = stratified_uniform(8, torch.Generator().manual_seed(0))
    strata = sorted((u * 8).floor().int().tolist())
    assert strata == list(range(8))
    assert bool(((u > 0) & (u < 1)).all())


def test_lift_curve_is_recorded_every_eval_every_steps_and_ends_at_the_final_lift():
    _, denoiser, latents = make_tiny_setup()
    result = train_tokens(denoiser, latents, TrainSettings(**{**SETTINGS.__dict__, "steps": 9, "eval_every": 3}))
    assert [step for step, _ in result.lift_curve] == [3, 6, 9]
    assert result.lift_curve[-1][1] == pytest.approx(result.lift)
