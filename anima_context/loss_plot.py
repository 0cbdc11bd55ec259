"""The train nodes' picture: the loss curve and the reference fit over the steps, drawn with Pillow."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 400
MARGIN_LEFT, MARGIN_RIGHT = 60, 18
# ComfyUI's dark theme: a node-coloured background, light text, a bright thick average over a dim thin raw line.
BACKGROUND, AXIS, GRID, TEXT = (38, 38, 42), (150, 150, 158), (62, 62, 68), (230, 230, 235)
RAW_LOSS, SMOOTH_LOSS, LIFT = (118, 128, 150), (90, 175, 255), (255, 160, 60)


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


def padded_range(low: float, high: float) -> tuple[float, float]:
    """The axis range: the data plus a margin; one that does not cross zero is not padded across it (a loss is >= 0)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    pad = (high - low) * 0.06 if high - low >= 1e-12 else abs(high) * 0.1 or 1.0
    return (low - pad if low < 0 else max(0.0, low - pad)), high + pad


def nice_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Round tick values inside low..high (steps of 1, 2 or 5 times a power of ten): the finest such
    step that gives at most ``most`` ticks."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    for exponent in range(math.floor(math.log10((high - low) / most)) - 1, 400):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**exponent
            first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
            if last - first + 1 <= most:
                return [round(index * step, 12) for index in range(first, last + 1)]
    return [low, high]


def _tick_label(value: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


class _Canvas:
    """Pillow drawing that keeps every text's box, so that a test can show no two labels overlap."""

    def __init__(self, image: Image.Image):
        self.draw, self.text_boxes = ImageDraw.Draw(image), []

    def text(self, xy, text: str, size: int, fill=TEXT, anchor: str = "la") -> None:
        font = _font(size)
        self.text_boxes.append((text, self.draw.textbbox(xy, text, font=font, anchor=anchor)))
        self.draw.text(xy, text, fill=fill, font=font, anchor=anchor)


class _Panel:
    """One chart area mapping (step, value) to pixels, with a title and round ticks on both axes."""

    def __init__(self, canvas: _Canvas, box: tuple[int, int, int, int], steps: int, y_range: tuple[float, float],
                 title: str, unit: str = "", x_labels: bool = True):
        self.canvas, self.draw, self.box, self.steps = canvas, canvas.draw, box, max(steps, 1)
        self.low, self.high = padded_range(*y_range)
        y_ticks = nice_ticks(self.low, self.high, most=5)
        left, top, right, bottom = box
        canvas.text((left, top - 20), title, 14)
        for value in y_ticks:
            y = self.y(value)
            self.draw.line([(left, y), (right, y)], fill=GRID)
            canvas.text((left - 7, y), _tick_label(value, y_ticks) + unit, 12, fill=AXIS, anchor="rm")
        x_ticks = [int(step) for step in nice_ticks(0, self.steps, most=7) if step == int(step)]
        for step in x_ticks:
            x = self.x(step)
            self.draw.line([(x, top), (x, bottom)], fill=GRID)
            if x_labels:
                canvas.text((x, bottom + 5), str(step), 12, fill=AXIS, anchor="ma")
        self.draw.rectangle(box, outline=AXIS)

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
                self.draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)

    def legend(self, entries: list[tuple[str, tuple[int, int, int], int]]) -> None:
        """Line samples with their names, right-aligned on the title's row (never over the curves)."""
        _, top, right, _ = self.box
        widths = [self.draw.textlength(name, font=_font(12)) for name, _, _ in entries]
        x, y = right - sum(widths) - 34 * len(entries) - 14 * (len(entries) - 1), top - 12
        for (name, colour, width), text_width in zip(entries, widths):
            self.draw.line([(x, y), (x + 26, y)], fill=colour, width=width)
            self.canvas.text((x + 32, y), name, 12, anchor="lm")
            x += 34 + text_width + 14


def draw_training_plot(loss_curve: list[float], lift_curve: list[tuple[int, float]], title: str,
                       text_boxes: list | None = None) -> Image.Image:
    """Loss per step (raw and averaged) above the held-out reference fit in % at its measured steps.
    ``text_boxes``, when given, receives (text, box) for every label drawn."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    canvas = _Canvas(image)
    canvas.text((WIDTH // 2, 8), title, 15, anchor="ma")
    steps = len(loss_curve)
    right = WIDTH - MARGIN_RIGHT
    finite = [value for value in loss_curve if math.isfinite(value)] or [0.0]
    loss_panel = _Panel(canvas, (MARGIN_LEFT, 56, right, 178), steps, (min(finite), max(finite)),
                        "training loss", x_labels=False)
    window = max(1, steps // 10)
    loss_panel.line(list(enumerate(loss_curve, start=1)), RAW_LOSS, width=1)
    loss_panel.line(list(enumerate(smooth(loss_curve, window), start=1)), SMOOTH_LOSS, width=3)
    loss_panel.legend([("per step", RAW_LOSS, 1), (f"{window}-step average", SMOOTH_LOSS, 3)])
    lifts = [100.0 * lift for _, lift in lift_curve] or [0.0]
    lift_panel = _Panel(canvas, (MARGIN_LEFT, 222, right, 344), steps, (min(0.0, *lifts), max(0.0, *lifts)),
                        "reference fit on held-out draws", unit="%")
    zero = lift_panel.y(0.0)
    canvas.draw.line([(MARGIN_LEFT, zero), (right, zero)], fill=AXIS)
    lift_panel.line([(step, 100.0 * lift) for step, lift in lift_curve], LIFT, width=3, dots=True)
    canvas.text(((MARGIN_LEFT + right) // 2, 372), "step", 13, fill=AXIS, anchor="ma")
    if text_boxes is not None:
        text_boxes.extend(canvas.text_boxes)
    return image


def to_image_tensor(image: Image.Image) -> torch.Tensor:
    """A ComfyUI IMAGE: float32 [1, H, W, 3] in 0..1."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


def training_plot_image(metadata: dict) -> torch.Tensor:
    """The picture for a trained context's metadata, as an IMAGE."""
    lift_curve = [tuple(point) for point in metadata.get("lift_curve") or [(metadata["steps"], metadata["lift"])]]
    title = (f"{metadata['steps']} steps, lr {metadata['learning_rate']:g}: final loss {metadata['final_loss']:.4f}, "
             f"reference fit {metadata['lift'] * 100:.1f}%")
    return to_image_tensor(draw_training_plot(metadata["loss_curve"], lift_curve, title))
