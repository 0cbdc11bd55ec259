"""Faults a long-running ComfyUI server meets: odd inputs, cancel, out of memory, repetition.
Each test asserts the outcome. The table in tests/README.md maps each fault to its test."""

import gc
import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_anima import DenoiserWrapper, make_tiny_setup

from anima_context.errors import InvalidReferenceImageError, TrainingOutOfMemoryError
from anima_context.images import fit_to_square, prepare_references, validate_reference
from anima_context.trainer import TrainSettings, train_tokens

QUICK = TrainSettings(steps=3, learning_rate=0.05, num_tokens=2, init_std=0.5, seed=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(0, 3), height=st.integers(0, 70), width=st.integers(0, 70), channels=st.integers(0, 5),
    low=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([float("nan"), float("inf"), float("-inf")])),
    high=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([float("nan"), float("inf"), float("-inf")])),
)
def test_any_image_shape_and_values_give_a_clean_rgb_square_or_the_named_error(batch, height, width, channels, low, high):
    image = torch.linspace(0, 1, max(batch * height * width * channels, 1))[: batch * height * width * channels]
    image = (image * (high - low) + low).view(batch, height, width, channels) if image.numel() else torch.zeros(batch, height, width, channels)
    try:
        checked = validate_reference(image, "reference_image")
    except InvalidReferenceImageError as error:
        assert str(error).startswith("Invalid reference image shape")
        assert batch == 0 or height < 16 or width < 16 or channels not in (1, 3, 4)
        return
    assert checked.shape == (batch, height, width, 3)
    assert bool(torch.isfinite(checked).all()) and checked.min() >= 0 and checked.max() <= 1
    square = fit_to_square(checked[:1], 32)
    assert square.shape == (1, 32, 32, 3) and bool(torch.isfinite(square).all())


def test_a_batch_of_eight_counts_as_eight_references():
    prepared, sizes = prepare_references({"reference_image": torch.rand(8, 40, 30, 3)}, 32)
    assert len(prepared) == 8 and sizes == [(30, 40)] * 8


def test_an_8192_px_image_is_resized_to_the_training_size():
    image = torch.rand(1, 8192, 8192, 3)  # 805 MB in float32
    out = fit_to_square(validate_reference(image, "reference_image"), 512)
    assert out.shape == (1, 512, 512, 3)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_a_flat_black_or_white_reference_trains(fill):
    _, denoiser, _ = make_tiny_setup()
    latents = torch.full((1, 16, 1, 8, 8), fill * 2 - 1)
    result = train_tokens(denoiser, latents, QUICK)
    assert bool(torch.isfinite(result.tokens).all())


def test_one_step_zero_init_and_many_tokens_train():
    _, denoiser, latents = make_tiny_setup()
    one = train_tokens(denoiser, latents, TrainSettings(steps=1, learning_rate=0.05, num_tokens=256, init_std=0.0, seed=0))
    assert one.tokens.shape[1] == 256 and len(one.loss_curve) == 1
    assert one.initial_tokens.abs().max() == 0 and one.tokens.abs().max() > 0  # zero init still moves


class _Recording(DenoiserWrapper):
    """Wraps a denoiser, keeps a weak reference to every prediction (they hold the graph)."""

    def __init__(self, inner, fail_at=None, error=None):
        super().__init__(inner)
        self.fail_at, self.error, self.calls, self.outputs = fail_at, error, 0, []

    def velocity(self, x_t, sigma, options):
        out = self.inner.velocity(x_t, sigma, options)
        if torch.is_grad_enabled():
            self.calls += 1
            self.outputs.append(weakref.ref(out))
            if self.calls == self.fail_at:
                raise self.error
        return out


@pytest.mark.parametrize("cancel_at", [0, 4])
def test_cancel_at_the_first_or_a_late_step_releases_the_graph_while_the_error_is_kept(cancel_at):
    _, denoiser, latents = make_tiny_setup()
    recording = _Recording(denoiser)

    class Interrupted(Exception):
        pass

    def on_step(step, loss):
        if step == cancel_at:
            raise Interrupted()

    kept = None
    try:
        train_tokens(recording, latents, TrainSettings(**{**QUICK.__dict__, "steps": 10}), on_step=on_step)
    except Interrupted as error:
        kept = error  # ComfyUI keeps the exception (and its traceback) to report it
    assert kept is not None and recording.calls == cancel_at + 1
    gc.collect()
    assert all(ref() is None for ref in recording.outputs)
    again = train_tokens(denoiser, latents, QUICK)  # the next queue trains normally
    assert len(again.loss_curve) == QUICK.steps


def test_out_of_memory_gives_the_fix_and_frees_the_graph():
    _, denoiser, latents = make_tiny_setup()
    recording = _Recording(denoiser, fail_at=2, error=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(TrainingOutOfMemoryError) as caught:
        train_tokens(recording, latents, QUICK)
    message = str(caught.value)
    assert message.startswith("Out of memory while training") and "training_image_size" in message and "num_tokens" in message
    gc.collect()
    assert all(ref() is None for ref in recording.outputs)


def _rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_twenty_runs_do_not_grow_memory_beyond_the_first_plus_a_margin():
    _, denoiser, latents = make_tiny_setup()
    settings = TrainSettings(steps=4, learning_rate=0.05, num_tokens=8, init_std=0.5, seed=0)
    train_tokens(denoiser, latents, settings)
    gc.collect()
    after_first = _rss_mib()
    for seed in range(20):
        train_tokens(denoiser, latents, TrainSettings(**{**settings.__dict__, "seed": seed}))
    gc.collect()
    growth = _rss_mib() - after_first
    assert growth < 20, f"memory grew {growth:.1f} MiB over 20 runs"


def test_two_trainers_in_one_process_do_not_interfere():
    _, denoiser, latents = make_tiny_setup()
    alone_a = train_tokens(denoiser, latents[:1], TrainSettings(**{**QUICK.__dict__, "seed": 1}))
    alone_b = train_tokens(denoiser, latents[1:], TrainSettings(**{**QUICK.__dict__, "seed": 2}))
    again_a = train_tokens(denoiser, latents[:1], TrainSettings(**{**QUICK.__dict__, "seed": 1}))
    assert torch.equal(alone_a.tokens, again_a.tokens)
    assert not torch.equal(alone_a.tokens, alone_b.tokens)
