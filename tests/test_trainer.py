import math

import pytest
import torch
from tiny_anima import DenoiserWrapper, make_tiny_setup

from anima_context.errors import InvalidSettingError, TokenOptimizationError
from anima_context.trainer import (
    HeldOutSet,
    TrainSettings,
    _flow_loss,
    normalized_loss_weights,
    stratified_uniform,
    train_tokens,
)

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


@pytest.mark.parametrize("steps, every, points", [(9, 3, [0, 3, 6, 9]), (10, 4, [0, 4, 8, 10])])
def test_lift_curve_starts_at_the_init_and_ends_at_the_final_lift(steps, every, points):
    _, denoiser, latents = make_tiny_setup()
    calls = []

    class Counting(DenoiserWrapper):
        def velocity(self, x_t, sigma, options):
            calls.append(torch.is_grad_enabled())
            return self.inner.velocity(x_t, sigma, options)

    result = train_tokens(Counting(denoiser), latents, TrainSettings(**{**SETTINGS.__dict__, "steps": steps, "eval_every": every}))
    assert [step for step, _ in result.lift_curve] == points
    assert result.lift_curve[-1][1] == pytest.approx(result.lift)
    heldout = HeldOutSet(denoiser, latents, SETTINGS.eval_draws_per_reference, SETTINGS.seed, torch.float32)
    assert result.lift_curve[0][1] == pytest.approx(heldout.lift(result.initial_tokens)[1])
    # one pass without tokens, one per lift point (the final one closes the curve), one per step
    assert calls.count(False) == 1 + len(points) and calls.count(True) == steps


def test_all_ones_loss_weights_train_exactly_like_no_weights():
    _, denoiser, latents = make_tiny_setup()
    plain = train_tokens(denoiser, latents, SETTINGS)
    ones = train_tokens(denoiser, latents, SETTINGS, loss_weights=torch.ones(latents.shape[0], 1, 1, 8, 8))
    assert torch.allclose(ones.tokens, plain.tokens, atol=1e-5)
    assert ones.loss_curve == pytest.approx(plain.loss_curve, rel=1e-5)


def test_weighted_loss_is_the_mean_error_over_the_weighted_pixels_of_each_sample():
    _, denoiser, latents = make_tiny_setup()
    weights = torch.zeros(2, 1, 1, 8, 8)
    weights[0, ..., :4] = 1.0  # left half of reference 1
    weights[1, ..., 2, 3] = 1.0  # one latent pixel of reference 2
    noise, sigma = torch.randn(latents.shape), torch.tensor([0.3, 0.8])
    loss = _flow_loss(denoiser, latents, noise, sigma, {}, torch.float32, normalized_loss_weights(weights, latents))
    with torch.no_grad():
        error = (denoiser.velocity(denoiser.add_noise(latents, noise, sigma), sigma, {}) - (noise - latents)).square()
    expected = (error[0, ..., :4].mean() + error[1, :, :, 2, 3].mean()) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_masked_training_lowers_the_loss_where_the_mask_is_and_differs_from_plain_training():
    _, denoiser, latents = make_tiny_setup()
    weights = torch.zeros(2, 1, 1, 8, 8)
    weights[..., 2:6, 2:6] = 1.0
    masked = train_tokens(denoiser, latents, SETTINGS, loss_weights=weights)
    plain = train_tokens(denoiser, latents, SETTINGS)
    # the held-out set is weighted the same way: the lift is measured where the mask is
    heldout = HeldOutSet(denoiser, latents, SETTINGS.eval_draws_per_reference, SETTINGS.seed, torch.float32,
                         weights=normalized_loss_weights(weights, latents))
    assert masked.baseline_loss == pytest.approx(heldout.baseline) and masked.baseline_loss != pytest.approx(plain.baseline_loss)
    assert masked.context_loss < masked.baseline_loss
    assert not torch.allclose(masked.tokens, plain.tokens)


def test_an_all_zero_weight_for_one_reference_is_refused():
    _, denoiser, latents = make_tiny_setup()
    weights = torch.ones(2, 1, 1, 8, 8)
    weights[1] = 0.0
    with pytest.raises(InvalidSettingError, match="all zero"):
        train_tokens(denoiser, latents, SETTINGS, loss_weights=weights)


def test_probe_records_each_draw_and_agrees_with_the_held_out_loss():
    _, denoiser, latents = make_tiny_setup()
    result = train_tokens(denoiser, latents, TrainSettings(**{**SETTINGS.__dict__, "probe_draws": 4}))
    assert len(result.probe) == 4 * latents.shape[0]
    sigmas = [sigma for sigma, _, _ in result.probe]
    assert all(0 < s < 1 for s in sigmas) and len(set(sigmas)) == len(sigmas)
    without, with_tokens = sum(p[1] for p in result.probe), sum(p[2] for p in result.probe)
    assert with_tokens < without  # the trained tokens help on draws they never saw
    probe_set = HeldOutSet(denoiser, latents, 4, SETTINGS.seed + 1, torch.float32)
    assert float(probe_set.per_draw(result.tokens).mean()) == pytest.approx(probe_set.loss(result.tokens), rel=1e-5)
    assert train_tokens(denoiser, latents, SETTINGS).probe == []  # off by default: it costs forward passes


def test_keeping_outside_the_mask_holds_the_prediction_there_and_needs_a_mask():
    from anima_context.patch import ContextTokenPatch
    from anima_context.trainer import _merge_patch

    _, denoiser, latents = make_tiny_setup()
    weights = torch.zeros(2, 1, 1, 8, 8)
    weights[..., 2:6, 2:6] = 1.0
    noise, sigma = torch.randn_like(latents), denoiser.sigmas(torch.full((2,), 0.7))
    x_t = denoiser.add_noise(latents, noise, sigma)
    without = denoiser.velocity(x_t, sigma, {})

    def change(tokens):  # [inside, outside]: how far the tokens move the prediction
        moved = (denoiser.velocity(x_t, sigma, _merge_patch(None, ContextTokenPatch(tokens))) - without).square()
        return float((moved * weights).mean()), float((moved * (1 - weights)).mean())

    loose = train_tokens(denoiser, latents, SETTINGS, loss_weights=weights)
    kept = train_tokens(denoiser, latents, TrainSettings(**{**SETTINGS.__dict__, "keep_background": 20.0}),
                        loss_weights=weights)
    (loose_in, loose_out), (kept_in, kept_out) = change(loose.tokens), change(kept.tokens)
    assert kept_out < 0.5 * loose_out, (kept_out, loose_out)
    assert kept_in > 0.1 * loose_in and kept.context_loss < kept.baseline_loss  # the character is still learnt
    with pytest.raises(InvalidSettingError, match="needs a training mask"):
        train_tokens(denoiser, latents, TrainSettings(**{**SETTINGS.__dict__, "keep_background": 1.0}))
