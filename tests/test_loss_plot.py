import math

import torch

from anima_context.loss_plot import LIFT, SMOOTH_LOSS, draw_training_plot, smooth, training_plot_image


def _metadata(steps=50):
    loss = [0.5 * math.exp(-step / 20) + 0.05 * math.sin(step) for step in range(steps)]
    return {"steps": steps, "learning_rate": 0.1, "loss_curve": loss, "final_loss": loss[-1], "lift": 0.42,
            "lift_curve": [[0, -0.1], [13, 0.2], [26, 0.35], [39, 0.4], [50, 0.42]]}


def _has_colour(image: torch.Tensor, rgb) -> bool:
    target = torch.tensor(rgb, dtype=torch.float32) / 255
    return bool(((image[0] - target).abs().amax(dim=-1) < 0.02).any())


def test_the_picture_is_a_comfyui_image_with_both_curves():
    image = training_plot_image(_metadata())
    assert image.shape == (1, 400, 640, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert _has_colour(image, SMOOTH_LOSS) and _has_colour(image, LIFT)
    # the lift falls from the first to the last point: the orange line climbs (smaller y) to the right
    rows = ((image[0] - torch.tensor(LIFT) / 255).abs().amax(dim=-1) < 0.02).nonzero()
    left, right = rows[rows[:, 1] < 150], rows[rows[:, 1] > 550]
    assert float(left[:, 0].float().mean()) > float(right[:, 0].float().mean())


def test_odd_curves_still_draw():
    for loss, lift in ([0.3], [(1, 0.0)]), ([float("nan"), 0.2, float("inf")], []), ([0.1] * 5, [(5, 0.1)]):
        picture = draw_training_plot(loss, lift, "title")
        assert picture.size == (640, 400)


def test_smoothing_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
