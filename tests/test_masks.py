import pytest
import torch

from anima_context.errors import InvalidTrainingMaskError
from anima_context.masks import mask_loss_weights, validate_masks


def test_one_mask_for_all_or_one_per_reference_becomes_latent_weights():
    sizes = [(64, 48), (64, 48), (64, 48)]
    mask = torch.zeros(1, 48, 64)
    mask[:, :, 32:] = 1.0  # right half
    weights = mask_loss_weights(mask, sizes, 32, (4, 4))
    assert weights.shape == (3, 1, 1, 4, 4)
    # The 48x64 mask is resized to 32 px high and center-cropped to 32x32 (antialiased, so the edge is
    # soft): the right half stays the right half.
    assert float(weights[0, 0, 0, :, :2].max()) < 0.05 and float(weights[0, 0, 0, :, 2:].min()) > 0.9
    per_reference = torch.stack([mask[0], 1 - mask[0], torch.ones(48, 64)])
    weights = mask_loss_weights(per_reference, sizes, 32, (4, 4))
    assert torch.allclose(weights[1], 1 - weights[0]) and torch.allclose(weights[2], torch.ones(1, 1, 4, 4))


def test_soft_edges_average_over_each_latent_pixel():
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :4] = 1.0  # half of the first 8-px latent column
    weights = mask_loss_weights(mask, [(32, 32)], 32, (4, 4))
    assert torch.allclose(weights[0, 0, 0, :, 0], torch.full((4,), 0.5)) and float(weights[..., 1:].abs().max()) == 0.0


@pytest.mark.parametrize("mask, sizes, words", [
    (torch.ones(1, 40, 64), [(64, 48)], "size mismatch: the mask is 64x40 px but reference image 1 is 64x48"),
    (torch.ones(2, 48, 64), [(64, 48), (32, 32)], "size mismatch: mask 2 is 64x48 px but reference image 2 is 32x32"),
    (torch.zeros(1, 48, 64), [(64, 48)], "all zero (black)"),
    # Load Image's mask for a picture without alpha: all zero and 64x64, whatever the picture's size
    (torch.zeros(1, 64, 64), [(768, 768)], "all zero (black): nothing would be learnt (Load Image gives this for a picture "
                                           "without transparency). White (1) marks the character"),
    # ... and through Invert Mask: all white, still 64x64; the message says where such a mask comes from
    (torch.ones(1, 64, 64), [(768, 768)], "64x64 mask is what Load Image gives a picture without transparency"),
    (torch.ones(2, 48, 64), [(64, 48)] * 3, "2 masks for 3 reference images"),
    (torch.ones(1, 48, 64, 3), [(64, 48)], "looks like an IMAGE"),
    (torch.ones(1, 1, 48, 64, 1), [(64, 48)], "[batch, height, width]"),
    ("mask", [(64, 48)], "not a MASK"),
])
def test_bad_masks_are_refused_with_a_clear_message(mask, sizes, words):
    with pytest.raises(InvalidTrainingMaskError) as caught:
        mask_loss_weights(mask, sizes, 32, (4, 4))
    assert str(caught.value).startswith("Invalid training mask") and words in str(caught.value)


def test_a_mask_that_the_center_crop_cuts_away_is_refused():
    mask = torch.zeros(1, 32, 96)
    mask[:, :, :8] = 1.0  # only the far left of a wide image: outside the 32x32 center crop
    with pytest.raises(InvalidTrainingMaskError, match="inside the center crop"):
        mask_loss_weights(mask, [(96, 32)], 32, (4, 4))


def test_2d_8bit_and_nan_masks_are_cleaned():
    (eight_bit,) = validate_masks(torch.full((8, 8), 255, dtype=torch.uint8), 1)
    assert eight_bit.equal(torch.ones(8, 8))
    (cleaned,) = validate_masks(torch.tensor([[[float("nan"), 2.0, -1.0]]]), 1)
    assert cleaned.tolist() == [[0.0, 1.0, 0.0]]


def test_a_list_of_masks_serves_references_of_different_sizes():
    sizes = [(64, 48), (32, 32), (32, 32)]
    wide, square = torch.ones(1, 48, 64), torch.zeros(2, 32, 32)
    square[1, 8:24, 8:24] = 1.0
    square[0, :, :16] = 1.0
    weights = mask_loss_weights([wide, square], sizes, 32, (4, 4))
    assert weights.shape == (3, 1, 1, 4, 4)
    assert torch.allclose(weights[0], torch.ones(1, 1, 4, 4))
    assert weights[1, 0, 0, :, :2].min() == 1.0 and weights[1, 0, 0, :, 2:].max() == 0.0
    assert weights[2, 0, 0, 1:3, 1:3].min() == 1.0 and weights[2, 0, 0, 0].max() == 0.0
    with pytest.raises(InvalidTrainingMaskError, match="3 masks for 2 reference images"):
        mask_loss_weights([wide, square], sizes[:2], 32, (4, 4))
