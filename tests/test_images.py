import pytest
import torch

from anima_context.errors import InvalidReferenceImageError, InvalidSettingError
from anima_context.images import fit_to_square, prepare_references, validate_reference


@pytest.mark.parametrize(
    "image, words",
    [
        (torch.rand(1, 64, 64), "MASK"),
        (torch.rand(64, 64), "4-D"),
        (torch.rand(0, 64, 64, 3), "empty"),
        (torch.rand(1, 64, 64, 2), "2 channels"),
        (torch.rand(1, 8, 8, 3), "smaller"),
        ("not an image", "not an IMAGE"),
    ],
)
def test_bad_images_are_refused_with_the_searchable_phrase(image, words):
    with pytest.raises(InvalidReferenceImageError) as caught:
        validate_reference(image, "reference_image")
    message = str(caught.value)
    assert message.startswith("Invalid reference image shape")
    assert "reference_image" in message and words in message


def test_grayscale_and_rgba_become_rgb_and_bad_pixels_are_cleaned():
    gray = validate_reference(torch.full((1, 32, 32, 1), 0.25), "g")
    assert gray.shape == (1, 32, 32, 3) and torch.allclose(gray, torch.full_like(gray, 0.25))
    rgba = torch.rand(1, 32, 32, 4)
    assert torch.equal(validate_reference(rgba, "r"), rgba[..., :3])
    dirty = torch.tensor([float("nan"), 2.0, -1.0]).view(1, 1, 1, 3).expand(1, 32, 32, 3)
    clean = validate_reference(dirty, "d")
    assert clean[0, 0, 0].tolist() == [0.0, 1.0, 0.0]


def test_fit_to_square_keeps_the_center():
    image = torch.zeros(1, 64, 128, 3)
    image[:, :, 32:96] = 1.0  # the center half of a wide image is white
    out = fit_to_square(image, 32)
    assert out.shape == (1, 32, 32, 3)
    assert out.mean() > 0.95


def test_batches_and_inputs_of_different_sizes_become_one_list():
    images = {"reference_image": torch.rand(2, 100, 60, 3), "reference_image_2": None,
              "reference_image_3": torch.rand(1, 48, 200, 4)}
    prepared, sizes = prepare_references(images, 64)
    assert [p.shape for p in prepared] == [(1, 64, 64, 3)] * 3
    assert sizes == [(60, 100), (60, 100), (200, 48)]


def test_no_image_and_a_bad_size_are_refused():
    with pytest.raises(InvalidReferenceImageError, match="no reference image"):
        prepare_references({"reference_image": None}, 64)
    with pytest.raises(InvalidSettingError, match="multiple of 16"):
        prepare_references({"reference_image": torch.rand(1, 64, 64, 3)}, 100)
