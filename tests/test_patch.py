import pytest
import torch
from tiny_anima import make_tiny_setup

from anima_context.errors import InvalidSettingError
from anima_context.patch import AUTO_PLAIN_SCALE, ContextTokenPatch, parse_block_selection, resolve_apply_to


def _options(*patches, **extra):
    return {"patches": {"attn2_patch": list(patches)}, **extra}


def test_appends_the_blocks_own_tokens_to_keys_and_values():
    tokens = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)
    patch = ContextTokenPatch(tokens)
    k = torch.randn(2, 5, 4)
    out = patch(None, k, k, extra_options={"block_index": 1})
    assert out["k"].shape == (2, 7, 4)
    assert torch.equal(out["k"][:, :5], k)
    assert torch.equal(out["k"][0, 5:], tokens[1])
    assert torch.equal(out["v"][1, 5:], tokens[1])


def test_strength_scales_values_only_and_zero_returns_nothing():
    tokens = torch.randn(2, 3, 4)
    k = torch.randn(1, 5, 4)
    out = ContextTokenPatch(tokens, strength=0.5)(None, k, k, extra_options={"block_index": 0})
    assert torch.allclose(out["k"][0, 5:], tokens[0])
    assert torch.allclose(out["v"][0, 5:], 0.5 * tokens[0])
    assert ContextTokenPatch(tokens, strength=0.0)(None, k, k, extra_options={"block_index": 0}) == {}


@pytest.mark.parametrize(
    "apply_to, expected_rows",
    [("positive", [1, 1, 0, 0]), ("negative", [0, 0, 1, 1]), ("both", [1, 1, 1, 1])],
)
def test_apply_to_picks_rows_by_cond_or_uncond(apply_to, expected_rows):
    tokens = torch.ones(1, 2, 4)
    k = torch.zeros(4, 3, 4)  # two chunks (cond, uncond) of two rows each
    out = ContextTokenPatch(tokens, apply_to=apply_to)(None, k, k, extra_options={"block_index": 0, "cond_or_uncond": [0, 1]})
    got = out["k"][:, 3:].abs().sum(dim=(1, 2)).gt(0).int().tolist()
    assert got == expected_rows


@pytest.mark.parametrize(
    "metadata, scale",
    [({}, AUTO_PLAIN_SCALE),  # a context saved before these keys existed
     ({"masked": False, "keep_background": 0.0}, AUTO_PLAIN_SCALE),
     ({"masked": True, "keep_background": 0.0}, AUTO_PLAIN_SCALE),  # masked, but its tokens were free to learn the background
     ({"masked": True, "keep_background": 1.0}, 1.0)],
)
def test_auto_puts_the_tokens_in_the_positive_rows_at_less_pull_where_they_hold_the_background(metadata, scale):
    assert resolve_apply_to("auto", metadata) == ("positive", scale)
    assert 0 < AUTO_PLAIN_SCALE < 1
    for chosen in ("positive", "negative", "both"):  # a choice the user made stands, at the strength they chose
        assert resolve_apply_to(chosen, metadata) == (chosen, 1.0)
    with pytest.raises(InvalidSettingError, match="apply_to must be one of auto, positive"):
        resolve_apply_to("cond", metadata)


def test_to_follows_devices_and_ignores_dtypes():
    tokens = torch.randn(2, 3, 4)
    patch = ContextTokenPatch(tokens)
    assert patch.to(torch.float16) is patch and patch.tokens.dtype == torch.float32
    assert patch.to(torch.device("cpu")) is patch and patch.tokens.device.type == "cpu"


def test_strength_zero_matches_the_unpatched_model_and_one_changes_it():
    model, denoiser, latents = make_tiny_setup()
    x, sigma = latents, torch.full((latents.shape[0],), 0.6)
    tokens = torch.randn(model.num_blocks, 4, model.context_dim)
    with torch.no_grad():
        plain = denoiser.velocity(x, sigma, {})
        zero = denoiser.velocity(x, sigma, _options(ContextTokenPatch(tokens, strength=0.0)))
        one = denoiser.velocity(x, sigma, _options(ContextTokenPatch(tokens)))
    assert torch.equal(plain, zero)
    assert (one - plain).abs().max() > 1e-3


def test_every_block_sees_its_own_tokens():
    model, denoiser, latents = make_tiny_setup()
    seen = []

    class Recorder(ContextTokenPatch):
        def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
            seen.append(extra_options["block_index"])
            return super().__call__(q, k, v, pe=pe, attn_mask=attn_mask, extra_options=extra_options)

    tokens = torch.randn(model.num_blocks, 2, model.context_dim)
    with torch.no_grad():
        denoiser.velocity(latents, torch.full((2,), 0.5), _options(Recorder(tokens)))
    assert seen == list(range(model.num_blocks))


def test_two_chained_patches_both_act():
    model, denoiser, latents = make_tiny_setup()
    sigma = torch.full((2,), 0.5)
    first = ContextTokenPatch(torch.randn(model.num_blocks, 2, model.context_dim))
    second = ContextTokenPatch(torch.randn(model.num_blocks, 3, model.context_dim))
    with torch.no_grad():
        only_first = denoiser.velocity(latents, sigma, _options(first))
        both = denoiser.velocity(latents, sigma, _options(first, second))
    assert (both - only_first).abs().max() > 1e-4


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ContextTokenPatch(torch.randn(2, 3))
    with pytest.raises(ValueError):
        ContextTokenPatch(torch.randn(1, 2, 3), apply_to="sideways")


def test_sigma_range_limits_when_the_tokens_act():
    tokens = torch.randn(1, 2, 4)
    k = torch.randn(1, 3, 4)
    patch = ContextTokenPatch(tokens, sigma_range=(0.8, 0.3))
    for sigma, acts in [(0.9, False), (0.8, True), (0.5, True), (0.3, True), (0.1, False)]:
        out = patch(None, k, k, extra_options={"block_index": 0, "sigmas": torch.tensor([sigma])})
        assert ("k" in out) == acts, sigma
    assert "k" in patch(None, k, k, extra_options={"block_index": 0})  # training passes no sigmas


def test_block_weights_scale_each_blocks_values():
    tokens = torch.ones(3, 1, 4)
    k = torch.zeros(1, 2, 4)
    patch = ContextTokenPatch(tokens, strength=2.0, block_weights=[1.0, 0.0, 0.25])
    assert torch.allclose(patch(None, k, k, extra_options={"block_index": 0})["v"][0, 2:], torch.full((1, 4), 2.0))
    assert patch(None, k, k, extra_options={"block_index": 1}) == {}
    assert torch.allclose(patch(None, k, k, extra_options={"block_index": 2})["v"][0, 2:], torch.full((1, 4), 0.5))
    with pytest.raises(ValueError, match="block_weights"):
        ContextTokenPatch(tokens, block_weights=[1.0])


@pytest.mark.parametrize("text, expected", [
    ("all", None), ("", None), ("0-1", [1.0, 1.0, 0.0, 0.0]), ("0, 2-3", [1.0, 0.0, 1.0, 1.0]),
    ("1.0,0.5,0,2.0", [1.0, 0.5, 0.0, 2.0]),
])
def test_block_selection_parses_ranges_lists_and_weights(text, expected):
    assert parse_block_selection(text, 4) == expected


@pytest.mark.parametrize("text", ["0-9", "3-1", "x", "-1"])
def test_bad_block_selections_are_refused(text):
    with pytest.raises(ValueError):
        parse_block_selection(text, 4)
