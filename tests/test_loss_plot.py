import math
from itertools import combinations

import pytest
import torch

from anima_context.loss_plot import (
    BACKGROUND,
    LIFT,
    RAW_LOSS,
    SMOOTH_LOSS,
    TEXT,
    draw_training_plot,
    nice_ticks,
    smooth,
    training_plot_image,
)


def _metadata(steps=50):
    loss = [0.5 * math.exp(-step / 20) + 0.05 * math.sin(step) for step in range(steps)]
    return {"steps": steps, "learning_rate": 0.1, "loss_curve": loss, "final_loss": loss[-1], "lift": 0.42,
            "lift_curve": [[0, -0.1], [13, 0.2], [26, 0.35], [39, 0.4], [50, 0.42]]}


def _mask(image: torch.Tensor, rgb) -> torch.Tensor:
    return (image[0] - torch.tensor(rgb, dtype=torch.float32) / 255).abs().amax(dim=-1) < 0.02


def _luminance(rgb) -> float:
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def test_the_picture_is_a_comfyui_image_with_both_curves():
    image = training_plot_image(_metadata())
    assert image.shape == (1, 400, 640, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert _mask(image, SMOOTH_LOSS).any() and _mask(image, LIFT).any() and _mask(image, RAW_LOSS).any()
    # the lift falls from the first to the last point: the orange line climbs (smaller y) to the right
    rows = _mask(image, LIFT).nonzero()
    left, right = rows[rows[:, 1] < 150], rows[rows[:, 1] > 550]
    assert float(left[:, 0].float().mean()) > float(right[:, 0].float().mean())


def test_it_reads_on_comfyuis_dark_theme():
    image = training_plot_image(_metadata())
    # mostly the dark background, with light text on it
    assert float(_mask(image, BACKGROUND).float().mean()) > 0.5 and _luminance(BACKGROUND) < 60
    assert _luminance(TEXT) > 200 and _mask(image, TEXT).any()
    # the averaged loss is bright, the per-step loss dim, and both stand out from the background
    assert _luminance(SMOOTH_LOSS) - _luminance(RAW_LOSS) > 25 and _luminance(RAW_LOSS) - _luminance(BACKGROUND) > 60


def test_the_average_is_drawn_thicker_than_the_per_step_loss():
    # a flat loss: both lines on one row, the average on top; count its pixels in one column
    steps = 40
    image = training_plot_image({**_metadata(steps), "loss_curve": [1.0] * steps, "final_loss": 1.0})
    assert int(_mask(image[:, :, 320:321], SMOOTH_LOSS).sum()) >= 3
    # a rising loss: the per-step line runs ahead of the trailing average, one pixel thin
    rising = [float(step) for step in range(steps)]
    image = training_plot_image({**_metadata(steps), "loss_curve": rising, "final_loss": rising[-1]})
    assert 1 <= int(_mask(image[:, :, 320:321], RAW_LOSS).sum()) <= 2


@pytest.mark.parametrize("low, high, expected", [
    (0.909, 4.26, [1, 2, 3, 4]),  # the old picture's ticks were 0.909 / 2.58 / 4.26
    (-5.9, 78.1, [0, 20, 40, 60]),
    (0, 20, [0, 5, 10, 15, 20]),
    (0.0401, 0.0432, [0.041, 0.042, 0.043]),
])
def test_ticks_are_round_values(low, high, expected):
    assert nice_ticks(low, high, most=5) == pytest.approx(expected)


def test_ticks_step_by_one_two_or_five_and_stay_in_range():
    for low, high in ((0.0, 1.0), (0.3, 7.7), (-3.0, 250.0), (1e-4, 9e-4), (0, 10000)):
        ticks = nice_ticks(low, high)
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-6, (low, high, ticks)
        assert low <= ticks[0] and ticks[-1] <= high and 2 <= len(ticks) <= 5


@pytest.mark.parametrize("steps", [1, 7, 20, 50, 137, 1000])
def test_no_two_labels_overlap(steps):
    loss = [2.0 * math.exp(-step / 9) + 0.3 for step in range(steps)]
    boxes = []
    draw_training_plot(loss, [(0, -0.06), (steps, 0.72)], "title", text_boxes=boxes)
    assert any(text == "step" for text, _ in boxes) and any(text == "0" for text, _ in boxes)
    for (a, (al, at, ar, ab)), (b, (bl, bt, br, bb)) in combinations(boxes, 2):
        assert ar <= bl or br <= al or ab <= bt or bb <= at, f"{a!r} overlaps {b!r}"
    for text, (left, top, right, bottom) in boxes:
        assert 0 <= left and right <= 640 and 0 <= top and bottom <= 400, text


def test_odd_curves_still_draw():
    for loss, lift in ([0.3], [(1, 0.0)]), ([float("nan"), 0.2, float("inf")], []), ([0.1] * 5, [(5, 0.1)]):
        picture = draw_training_plot(loss, lift, "title")
        assert picture.size == (640, 400)


def test_smoothing_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
