"""The train nodes' picture: the loss curve and the identity lift over the steps, drawn with Pillow."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 400
MARGIN_LEFT, MARGIN_RIGHT = 64, 16
BACKGROUND, AXIS, GRID, TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (20, 20, 20)
RAW_LOSS, SMOOTH_LOSS, LIFT = (170, 190, 220), (30, 90, 200), (220, 110, 20)


def _font(size: int):
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: per-step losses are noisy (fresh noise and timesteps each step)."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def _nice_range(low: float, high: float) -> tuple[float, float]:
    """A padded range; one that does not cross zero is not padded across it (a loss is >= 0)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    pad = (high - low) * 0.08 if high - low >= 1e-12 else abs(high) * 0.1 or 1.0
    padded_low = low - pad if low < 0 else max(0.0, low - pad)
    return padded_low, high + pad


class _Panel:
    """One chart area mapping (step, value) to pixels, with a title, y ticks and x ticks."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], steps: int,
                 y_range: tuple[float, float], title: str, y_format: str):
        self.draw, self.box, self.steps = draw, box, max(steps, 1)
        self.low, self.high = _nice_range(*y_range)
        left, top, right, bottom = box
        small = _font(12)
        draw.text((left, top - 18), title, fill=TEXT, font=_font(14))
        for fraction in (0.0, 0.5, 1.0):
            value = self.low + (self.high - self.low) * fraction
            y = self.y(value)
            draw.line([(left, y), (right, y)], fill=GRID)
            draw.text((left - 6, y), format(value, y_format), fill=AXIS, font=small, anchor="rm")
        for step in (0, self.steps // 2, self.steps):
            x = self.x(step)
            draw.text((x, bottom + 4), str(step), fill=AXIS, font=small, anchor="ma")
        draw.rectangle(box, outline=AXIS)

    def x(self, step: float) -> float:
        left, _, right, _ = self.box
        return left + (right - left) * step / self.steps

    def y(self, value: float) -> float:
        _, top, _, bottom = self.box
        return bottom - (bottom - top) * (value - self.low) / (self.high - self.low)

    def line(self, points: list[tuple[float, float]], colour, width: int = 2, dots: bool = False) -> None:
        pixels = [(self.x(step), self.y(value)) for step, value in points if math.isfinite(value)]
        if len(pixels) > 1:
            self.draw.line(pixels, fill=colour, width=width, joint="curve")
        if dots:
            for x, y in pixels:
                self.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def draw_training_plot(loss_curve: list[float], lift_curve: list[tuple[int, float]], title: str) -> Image.Image:
    """Loss per step (raw and smoothed) above the held-out identity lift in % at its measured steps."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((WIDTH // 2, 8), title, fill=TEXT, font=_font(15), anchor="ma")
    steps = len(loss_curve)
    right = WIDTH - MARGIN_RIGHT
    finite = [value for value in loss_curve if math.isfinite(value)] or [0.0]
    loss_panel = _Panel(draw, (MARGIN_LEFT, 54, right, 190), steps, (min(finite), max(finite)),
                        "training loss (light: per step, dark: moving average)", ".3g")
    raw = list(enumerate(loss_curve, start=1))
    loss_panel.line(raw, RAW_LOSS, width=1)
    loss_panel.line(list(enumerate(smooth(loss_curve, max(1, steps // 10)), start=1)), SMOOTH_LOSS)
    lifts = [100.0 * lift for _, lift in lift_curve] or [0.0]
    lift_panel = _Panel(draw, (MARGIN_LEFT, 240, right, 372), steps, (min(0.0, *lifts), max(0.0, *lifts)),
                        "identity lift on held-out draws (%)", ".1f")
    zero = lift_panel.y(0.0)
    draw.line([(MARGIN_LEFT, zero), (right, zero)], fill=AXIS)
    lift_panel.line([(step, 100.0 * lift) for step, lift in lift_curve], LIFT, dots=True)
    draw.text((MARGIN_LEFT - 6, 376), "step", fill=AXIS, font=_font(12), anchor="ra")
    return image


def to_image_tensor(image: Image.Image) -> torch.Tensor:
    """A ComfyUI IMAGE: float32 [1, H, W, 3] in 0..1."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


def training_plot_image(metadata: dict) -> torch.Tensor:
    """The picture for a trained context's metadata, as an IMAGE."""
    lift_curve = [tuple(point) for point in metadata.get("lift_curve") or [(metadata["steps"], metadata["lift"])]]
    title = (f"{metadata['steps']} steps, lr {metadata['learning_rate']:g}: final loss {metadata['final_loss']:.4f}, "
             f"identity lift {metadata['lift'] * 100:.1f}%")
    return to_image_tensor(draw_training_plot(metadata["loss_curve"], lift_curve, title))
