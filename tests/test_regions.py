"""Apply Context's mask on the tiny DiT (no ComfyUI): outside the mask every block's cross-attention
is exactly the model's without the context, inside exactly the unmasked context's; stacking, soft
edges, batches and CFG's cond/uncond rows; the mask's checks. The same checks on ComfyUI's own Anima
and attention functions are in test_comfyui_integration.py."""

import logging

import pytest
import torch
from region_check import CrossAttentionCalls, region_errors
from tiny_anima import make_tiny_setup

from anima_context.errors import InvalidContextMaskError
from anima_context.patch import ContextTokenPatch
from anima_context.regions import NEG_BIAS, ContextRegion, RegionAttention, RegionGridRecorder, RegionLedger

EXACT = 1e-6


def _masked_options(*patches, cond_or_uncond=None):
    options = {"patches": {"attn2_patch": list(patches), "post_input": [RegionGridRecorder()]},
               "optimized_attention_override": RegionAttention()}
    if cond_or_uncond is not None:
        options["cond_or_uncond"] = cond_or_uncond
    return options


def _half(side: str, size: int = 8, batch: int = 1) -> torch.Tensor:
    mask = torch.zeros(batch, size, size)
    if side == "left":
        mask[..., : size // 2] = 1
    else:
        mask[..., size // 2:] = 1
    return mask


def _run(model, denoiser, x, options):
    sigma = torch.full((x.shape[0],), 0.6)
    with CrossAttentionCalls(model) as calls, torch.no_grad():
        out = denoiser.velocity(x, sigma, options)
    return out, calls


def test_outside_the_mask_the_cross_attention_is_untouched_and_inside_it_is_the_unmasked_context():
    model, denoiser, latents = make_tiny_setup(latent_size=8)
    tokens = torch.randn(model.num_blocks, 4, model.context_dim) * 3
    patch = ContextTokenPatch(tokens, region=ContextRegion(_half("left")))
    _, calls = _run(model, denoiser, latents, _masked_options(patch))
    errors = region_errors(calls)
    assert errors["calls"] == model.num_blocks
    assert errors["outside_tokens"] > 0 and errors["inside_tokens"] > 0
    assert errors["outside"] <= EXACT and errors["inside"] <= EXACT, errors
    # and the context does act inside: the check would pass vacuously if the tokens changed nothing
    call = calls.calls[0]
    plain = calls.rerun(call, [])
    assert float((call[5] - plain).abs().max()) > 1e-2


def test_batched_cond_uncond_rows_with_one_mask_per_latent():
    model, denoiser, latents = make_tiny_setup(references=2, latent_size=8)
    x = torch.cat([latents, latents])  # CFG: cond chunk then uncond chunk, each the latent batch of 2
    tokens = torch.randn(model.num_blocks, 4, model.context_dim) * 3
    mask = torch.cat([_half("left"), _half("right")])  # latent 0 left, latent 1 right
    patch = ContextTokenPatch(tokens, apply_to="both", region=ContextRegion(mask))
    _, calls = _run(model, denoiser, x, _masked_options(patch, cond_or_uncond=[0, 1]))
    errors = region_errors(calls)
    assert errors["outside"] <= EXACT and errors["inside"] <= EXACT, errors
    # row 0 (latent 0) sees the tokens on the left, row 1 (latent 1) on the right, and CFG's rows repeat them
    weights = patch.region.row_weights(4, [0, 1], (1, 4, 4), "cpu").view(4, 4, 4)
    assert weights[0, :, :2].eq(1).all() and weights[0, :, 2:].eq(0).all()
    assert weights[1, :, 2:].eq(1).all() and torch.equal(weights[2], weights[0]) and torch.equal(weights[3], weights[1])


def test_two_stacked_contexts_each_in_its_region_overlap_gets_both_and_the_rest_is_untouched():
    model, denoiser, latents = make_tiny_setup(latent_size=16)
    left = torch.zeros(1, 16, 16)
    left[..., :10] = 1  # 16 px wide latent: tokens 0-4 left, 3-7 right: columns 3-4 are covered by both
    right = torch.zeros(1, 16, 16)
    right[..., 6:] = 1
    right[:, :4] = 0  # the top rows belong to neither: untouched
    first = ContextTokenPatch(torch.randn(model.num_blocks, 4, model.context_dim) * 3, region=ContextRegion(left))
    second = ContextTokenPatch(torch.randn(model.num_blocks, 3, model.context_dim) * 3, region=ContextRegion(right))
    _, calls = _run(model, denoiser, latents[:1], _masked_options(first, second))
    errors = region_errors(calls)
    assert errors["outside_tokens"] > 0 and errors["inside_tokens"] > 0
    assert errors["outside"] <= EXACT and errors["inside"] <= EXACT, errors


def test_all_ones_mask_is_the_unmasked_context_and_no_mask_is_bit_identical_to_before():
    model, denoiser, latents = make_tiny_setup(latent_size=8)
    tokens = torch.randn(model.num_blocks, 4, model.context_dim)
    sigma = torch.full((latents.shape[0],), 0.5)
    with torch.no_grad():
        unmasked = denoiser.velocity(latents, sigma, {"patches": {"attn2_patch": [ContextTokenPatch(tokens)]}})
        ones = denoiser.velocity(latents, sigma, _masked_options(ContextTokenPatch(tokens, region=ContextRegion(torch.ones(1, 8, 8)))))
        zeros = denoiser.velocity(latents, sigma, _masked_options(ContextTokenPatch(tokens, region=ContextRegion(torch.zeros(1, 8, 8)))))
        plain = denoiser.velocity(latents, sigma, {})
    assert (ones - unmasked).abs().max() <= 1e-5
    assert (zeros - plain).abs().max() <= 1e-5  # an empty mask: the whole model as without the context
    assert (unmasked - plain).abs().max() > 1e-2


def test_a_soft_edge_lies_between_outside_and_inside():
    model, denoiser, latents = make_tiny_setup(latent_size=8)
    tokens = torch.randn(model.num_blocks, 4, model.context_dim) * 3
    soft = ContextTokenPatch(tokens, region=ContextRegion(torch.full((1, 8, 8), 0.5)))
    _, calls = _run(model, denoiser, latents[:1], _masked_options(soft))
    call = calls.calls[0]
    plain, full = calls.rerun(call, []), calls.rerun(call, [ContextTokenPatch(tokens)])
    half = call[5]
    assert float((half - plain).abs().mean()) > 1e-3 and float((half - full).abs().mean()) > 1e-3
    # the tokens' share of attention falls with the weight: half-way is nearer the plain model than the full context
    assert float((half - plain).abs().mean()) < float((full - plain).abs().mean())


def test_mask_resizing_follows_regional_conditioning_and_averages_each_patch():
    region = ContextRegion(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # any size: bilinear to the latent grid
    weights = region.token_weights((1, 2, 2), "cpu")
    assert weights.shape == (1, 4)
    assert weights[0, 0] > weights[0, 1] > 0 and weights[0, 1] == weights[0, 2] and weights[0, 3] < weights[0, 1]
    frames = region.token_weights((2, 2, 2), "cpu")
    assert torch.equal(frames[:, :4], frames[:, 4:])


def test_the_bias_hides_keys_outside_and_keeps_the_prompt_keys():
    ledger = RegionLedger((1, 1, 3))
    from anima_context.regions import RegionKeys

    weights = torch.tensor([[1.0, 0.5, 0.0]])
    keys = [RegionKeys(5, 2, weights, ("region a", 1, ()))]
    bias = ledger.bias(keys, 3, 7, torch.float32, "cpu")
    assert bias.shape == (1, 1, 3, 7) and bias[..., :5].eq(0).all()
    assert bias[0, 0, 0, 5:].eq(0).all() and torch.allclose(bias[0, 0, 1, 5:], torch.log(torch.tensor(0.5)))
    assert bias[0, 0, 2, 5:].eq(NEG_BIAS).all()
    assert ledger.bias(keys, 3, 7, torch.float32, "cpu") is bias  # blocks with the same layout share one
    other = ledger.bias([RegionKeys(5, 2, weights.flip(-1), ("region b", 1, ()))], 3, 7, torch.float32, "cpu")
    assert other[0, 0, 2, 5:].eq(0).all()  # another region at the same keys is not served the first one's bias


def test_keys_are_taken_by_their_own_blocks_attention_only():
    ledger = RegionLedger((1, 1, 2))
    from anima_context.regions import RegionKeys

    assert ledger.take(2) == []  # block 2's self-attention, before its cross-attention recorded anything
    ledger.record(3, RegionKeys(0, 1, torch.ones(1, 2)))
    ledger.record(3, RegionKeys(1, 1, torch.ones(1, 2)))  # a second masked context in the same block
    assert len(ledger.take(3)) == 2 and ledger.take(3) == []  # taking clears
    ledger.record(5, RegionKeys(0, 1, torch.ones(1, 2)))
    with pytest.raises(RuntimeError, match="block 5's cross-attention ran without"):
        ledger.take(6)  # block 6's self-attention while block 5's keys were never masked


def test_a_replaced_attention_override_is_an_error_not_a_context_everywhere():
    model, denoiser, latents = make_tiny_setup(latent_size=8)
    patch = ContextTokenPatch(torch.randn(model.num_blocks, 2, model.context_dim), region=ContextRegion(_half("left")))
    options = _masked_options(patch)
    options["optimized_attention_override"] = lambda func, *args, **kwargs: func(*args, **kwargs)  # another node's
    with pytest.raises(RuntimeError, match="ran without Apply Context's mask"), torch.no_grad():
        denoiser.velocity(latents, torch.full((latents.shape[0],), 0.5), options)


def test_a_masked_patch_without_the_grid_refuses_rather_than_acting_everywhere():
    model, denoiser, latents = make_tiny_setup(latent_size=8)
    patch = ContextTokenPatch(torch.randn(model.num_blocks, 2, model.context_dim), region=ContextRegion(torch.ones(1, 8, 8)))
    with pytest.raises(RuntimeError, match="post_input"), torch.no_grad():
        denoiser.velocity(latents, torch.full((latents.shape[0],), 0.5), {"patches": {"attn2_patch": [patch]}})


def test_bad_masks_are_refused_and_odd_ones_are_noticed():
    with pytest.raises(InvalidContextMaskError, match="looks like an IMAGE"):
        ContextRegion(torch.rand(1, 8, 8, 3))
    with pytest.raises(InvalidContextMaskError, match=r"a MASK is \[batch, height, width\]"):
        ContextRegion(torch.rand(8))
    with pytest.raises(InvalidContextMaskError, match="not a MASK tensor"):
        ContextRegion([1, 2])
    region = ContextRegion(torch.ones(3, 64, 64))
    with pytest.raises(InvalidContextMaskError, match="3 masks for a latent batch of 2; connect one mask, or one per latent"):
        region.check_latent(2, 8, 8)
    assert region.check_latent(3, 8, 8) == ""
    notice = ContextRegion(torch.ones(1, 64, 128)).check_latent(1, 16, 16)
    assert "mask is 128x64 but the picture is 128x128" in notice and "\n" not in notice
    assert ContextRegion(torch.zeros(1, 4, 4)).is_empty() and not region.is_empty()
    nan = ContextRegion(torch.tensor([[[float("nan"), 2.0]]]))
    assert nan.mask.tolist() == [[[0.0, 1.0]]]
    logging.getLogger(__name__).debug("checked")
