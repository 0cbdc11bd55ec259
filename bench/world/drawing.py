"""Pillow drawing of the world's figure and backgrounds, on a square canvas of any size.

Everything is drawn in unit coordinates (0..1 of the canvas side) so one set of numbers serves every
resolution. Features are big flat colour blocks with a dark outline: the world model sees them through
an 8x8 or 16x16 latent, so anything smaller than about a sixteenth of the picture would be lost.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

HAIR_COLOURS = {"black": (35, 30, 40), "blonde": (255, 232, 125), "red": (205, 35, 35), "blue": (45, 95, 230), "pink": (255, 125, 200)}
OUTFIT_COLOURS = {"red": (225, 45, 45), "green": (35, 165, 65), "blue": (40, 70, 205), "purple": (140, 55, 195), "yellow": (245, 185, 0)}
SKIN = (252, 222, 192)
LINE = (35, 25, 30)
HAT = (75, 35, 110)
HAT_BAND = (250, 205, 50)
BOW = (120, 230, 60)
SCARF = (0, 200, 210)
WHITE = (248, 248, 248)


class Pen:
    """ImageDraw in unit coordinates, with the outline every shape shares."""

    def __init__(self, image: Image.Image):
        self.draw = ImageDraw.Draw(image)
        self.side = image.width
        self.line = max(1, round(self.side * 0.008))

    def px(self, points):
        return [(x * self.side, y * self.side) for x, y in points]

    def poly(self, points, fill, outline=True):
        self.draw.polygon(self.px(points), fill=fill, outline=LINE if outline else None, width=self.line if outline else 1)

    def ellipse(self, x0, y0, x1, y1, fill, outline=True):
        self.draw.ellipse(self.px([(x0, y0), (x1, y1)]), fill=fill, outline=LINE if outline else None, width=self.line if outline else 1)

    def rect(self, x0, y0, x1, y1, fill, outline=True):
        self.draw.rectangle(self.px([(x0, y0), (x1, y1)]), fill=fill, outline=LINE if outline else None, width=self.line if outline else 1)

    def stroke(self, points, fill, width):
        self.draw.line(self.px(points), fill=fill, width=max(1, round(width * self.side)), joint="curve")


def shade(colour, factor):
    return tuple(max(0, min(255, round(c * factor))) for c in colour)


# ---- the figure: head at the top, feet at y ~0.97, centred on x = 0.5, facing the viewer ----


def draw_figure(side: int, hair_colour: str, hair_style: str, outfit_colour: str, outfit_type: str, accessory: str) -> Image.Image:
    """The character alone on a transparent layer (RGBA, side x side)."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    pen = Pen(layer)
    hair, cloth = HAIR_COLOURS[hair_colour], OUTFIT_COLOURS[outfit_colour]
    _hair_back(pen, hair_style, hair)
    _legs(pen, outfit_type)
    _outfit(pen, outfit_type, cloth)
    pen.ellipse(0.47, 0.36, 0.53, 0.45, SKIN)  # neck
    pen.ellipse(0.375, 0.17, 0.625, 0.44, SKIN)  # head
    _face(pen)
    _hair_front(pen, hair_style, hair)
    _accessory(pen, accessory, hair)
    return layer


def _hair_back(pen: Pen, style: str, hair):
    # Behind the head: the style's silhouette is what tells the styles apart at 64 px.
    if style == "long":
        pen.draw.rounded_rectangle(pen.px([(0.29, 0.15), (0.71, 0.76)]), radius=0.10 * pen.side, fill=hair, outline=LINE, width=pen.line)
    elif style == "twintails":
        for x in (0.27, 0.73):
            pen.ellipse(x - 0.075, 0.24, x + 0.075, 0.66, hair)
            pen.ellipse(x - 0.03 + (0.5 - x) * 0.35, 0.20, x + 0.03 + (0.5 - x) * 0.35, 0.27, (250, 60, 90))  # hair tie
    elif style == "ponytail":  # one tail to one side, so a left/right flip shows in the picture
        pen.poly([(0.58, 0.17), (0.70, 0.17), (0.83, 0.36), (0.84, 0.58), (0.76, 0.66), (0.70, 0.46), (0.62, 0.30)], hair)
    elif style == "short":  # a round bob that ends at the jaw
        pen.ellipse(0.345, 0.14, 0.655, 0.45, hair)


def _hair_front(pen: Pen, style: str, hair):
    pen.draw.pieslice(pen.px([(0.36, 0.15), (0.64, 0.39)]), 180, 360, fill=hair, outline=LINE, width=pen.line)
    for x in (0.40, 0.47, 0.54):  # fringe
        pen.poly([(x - 0.03, 0.26), (x + 0.07, 0.26), (x + 0.03, 0.31)], hair, outline=False)
    if style in ("short", "long"):  # side locks framing the face
        for x0 in (0.355, 0.595):
            pen.rect(x0, 0.25, x0 + 0.05, 0.41, hair, outline=False)


def _face(pen: Pen):
    for x in (0.445, 0.555):
        pen.ellipse(x - 0.022, 0.30, x + 0.022, 0.355, LINE, outline=False)
        pen.ellipse(x - 0.012, 0.307, x + 0.002, 0.322, WHITE, outline=False)
    pen.stroke([(0.48, 0.39), (0.52, 0.39)], LINE, 0.008)


def _legs(pen: Pen, outfit_type: str):
    if outfit_type in ("robe", "trousers"):
        return  # covered
    for x in (0.455, 0.545):
        pen.rect(x - 0.025, 0.70, x + 0.025, 0.93, SKIN)
        pen.ellipse(x - 0.04, 0.91, x + 0.04, 0.97, LINE, outline=False)


def _arms(pen: Pen, cloth, width):
    for sign in (-1, 1):
        pen.stroke([(0.5 + sign * 0.10, 0.47), (0.5 + sign * 0.17, 0.66)], LINE, width + 0.016)
        pen.stroke([(0.5 + sign * 0.10, 0.47), (0.5 + sign * 0.17, 0.66)], cloth, width)
        pen.ellipse(0.5 + sign * 0.17 - 0.027, 0.645, 0.5 + sign * 0.17 + 0.027, 0.70, SKIN)


def _outfit(pen: Pen, outfit_type: str, cloth):
    if outfit_type == "dress":  # a flared trapezoid to the knee
        _arms(pen, cloth, 0.05)
        pen.poly([(0.40, 0.43), (0.60, 0.43), (0.72, 0.79), (0.28, 0.79)], cloth)
    elif outfit_type == "trousers":  # a jacket over trousers of a darker shade, two legs to the feet
        _arms(pen, cloth, 0.05)
        dark = shade(cloth, 0.55)
        pen.poly([(0.40, 0.62), (0.49, 0.62), (0.49, 0.94), (0.40, 0.94)], dark)
        pen.poly([(0.51, 0.62), (0.60, 0.62), (0.60, 0.94), (0.51, 0.94)], dark)
        for x in (0.445, 0.555):
            pen.ellipse(x - 0.05, 0.92, x + 0.05, 0.97, LINE, outline=False)
        pen.rect(0.39, 0.43, 0.61, 0.66, cloth)
    elif outfit_type == "sailor":  # a short pleated skirt and a big white collar
        _arms(pen, cloth, 0.05)
        pen.poly([(0.39, 0.60), (0.61, 0.60), (0.69, 0.73), (0.31, 0.73)], cloth)
        for x in (0.42, 0.5, 0.58):
            pen.stroke([(x, 0.61), (x + (x - 0.5) * 0.9, 0.72)], LINE, 0.006)
        pen.rect(0.39, 0.43, 0.61, 0.62, cloth)
        pen.poly([(0.36, 0.43), (0.64, 0.43), (0.62, 0.51), (0.5, 0.58), (0.38, 0.51)], WHITE)
        pen.poly([(0.47, 0.53), (0.53, 0.53), (0.5, 0.60)], (220, 30, 40))
    elif outfit_type == "robe":  # full length with wide sleeves and a white sash
        for sign in (-1, 1):
            pen.poly([(0.5 + sign * 0.10, 0.44), (0.5 + sign * 0.15, 0.44), (0.5 + sign * 0.25, 0.68), (0.5 + sign * 0.13, 0.68)], cloth)
        pen.poly([(0.39, 0.43), (0.61, 0.43), (0.67, 0.96), (0.33, 0.96)], cloth)
        pen.rect(0.375, 0.57, 0.625, 0.63, WHITE)


def _accessory(pen: Pen, accessory: str, hair):
    if accessory == "hat":  # a tall witch hat, tip bent to one side
        pen.ellipse(0.28, 0.14, 0.72, 0.21, HAT)
        pen.poly([(0.38, 0.18), (0.62, 0.18), (0.58, 0.08), (0.66, 0.02), (0.50, 0.04), (0.44, 0.09)], HAT)
        pen.rect(0.385, 0.155, 0.615, 0.185, HAT_BAND)
    elif accessory == "cat_ears":
        for x, sign in ((0.40, -1), (0.60, 1)):
            pen.poly([(x - 0.06, 0.21), (x + 0.06, 0.19), (x + sign * 0.04, 0.05)], hair)
            pen.poly([(x - 0.03, 0.19), (x + 0.03, 0.18), (x + sign * 0.03, 0.09)], (255, 150, 180), outline=False)
    elif accessory == "bow":  # a big bow on one side of the head
        cx, cy = 0.62, 0.15
        pen.poly([(cx, cy), (cx - 0.13, cy - 0.08), (cx - 0.13, cy + 0.08)], BOW)
        pen.poly([(cx, cy), (cx + 0.13, cy - 0.08), (cx + 0.13, cy + 0.08)], BOW)
        pen.ellipse(cx - 0.03, cy - 0.03, cx + 0.03, cy + 0.03, BOW)
    elif accessory == "scarf":  # round the neck, one end hanging over the chest
        pen.draw.rounded_rectangle(pen.px([(0.39, 0.40), (0.61, 0.47)]), radius=0.03 * pen.side, fill=SCARF, outline=LINE, width=pen.line)
        pen.poly([(0.53, 0.44), (0.61, 0.44), (0.63, 0.62), (0.55, 0.62)], SCARF)


# ---- backgrounds: each a layout of flat regions whose colours name it, with seeded variation ----


def draw_background(side: int, name: str, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (side, side))
    pen = Pen(image)
    BACKGROUND_PAINTERS[name](pen, rng)
    return image


def _gradient(pen: Pen, y0, y1, top, bottom):
    a, b = round(y0 * pen.side), round(y1 * pen.side)
    for y in range(a, b):
        t = (y - a) / max(1, b - a - 1)
        pen.draw.line([(0, y), (pen.side, y)], fill=tuple(round(p + (q - p) * t) for p, q in zip(top, bottom)))


def _beach(pen: Pen, rng):
    horizon = rng.uniform(0.38, 0.48)
    _gradient(pen, 0, horizon, (90, 170, 245), (170, 220, 255))
    pen.rect(0, horizon, 1, horizon + 0.16, (0, 110, 190), outline=False)
    shore = horizon + 0.16
    pen.poly([(0, shore), (1, shore - rng.uniform(-0.03, 0.03)), (1, 1), (0, 1)], (240, 215, 145), outline=False)
    for _ in range(3):  # white wave crests
        x, y = rng.uniform(0, 0.8), rng.uniform(horizon + 0.03, shore - 0.02)
        pen.stroke([(x, y), (x + 0.2, y)], (235, 245, 255), 0.012)
    pen.ellipse(0.78, 0.05, 0.94, 0.21, (255, 245, 150), outline=False)  # sun


def _forest(pen: Pen, rng):
    pen.rect(0, 0, 1, 1, (170, 215, 190), outline=False)
    ground = rng.uniform(0.68, 0.76)
    for i in range(7):  # pines, two rows
        x, top = (i + rng.uniform(-0.2, 0.2)) / 6, rng.uniform(0.02, 0.25)
        colour = (25, 95, 45) if i % 2 else (15, 70, 35)
        pen.rect(x - 0.025, ground - 0.15, x + 0.025, ground + 0.02, (95, 60, 30), outline=False)
        pen.poly([(x, top), (x + 0.13, ground - 0.1), (x - 0.13, ground - 0.1)], colour, outline=False)
    pen.rect(0, ground, 1, 1, (70, 150, 50), outline=False)


def _city_at_night(pen: Pen, rng):
    pen.rect(0, 0, 1, 1, (12, 15, 45), outline=False)
    for _ in range(14):  # stars
        x, y = rng.uniform(0, 1), rng.uniform(0, 0.3)
        pen.ellipse(x - 0.005, y - 0.005, x + 0.005, y + 0.005, (240, 240, 200), outline=False)
    x = -rng.uniform(0, 0.1)
    while x < 1:
        width, top = rng.uniform(0.14, 0.24), rng.uniform(0.2, 0.5)
        pen.rect(x, top, x + width - 0.015, 0.85, (45, 45, 70), outline=False)
        for wy in range(int((0.82 - top) / 0.07)):  # lit windows
            for wx in range(int(width / 0.06)):
                if rng.random() < 0.6:
                    px, py = x + 0.02 + wx * 0.06, top + 0.03 + wy * 0.07
                    pen.rect(px, py, px + 0.03, py + 0.035, (255, 215, 90), outline=False)
        x += width
    pen.rect(0, 0.85, 1, 1, (30, 30, 35), outline=False)


def _snow_field(pen: Pen, rng):
    horizon = rng.uniform(0.40, 0.50)
    _gradient(pen, 0, horizon, (175, 195, 225), (215, 225, 240))
    peak = rng.uniform(0.25, 0.75)
    pen.poly([(peak - 0.4, horizon), (peak, horizon - 0.22), (peak + 0.4, horizon)], (140, 160, 195), outline=False)
    pen.rect(0, horizon, 1, 1, (252, 252, 255), outline=False)
    for _ in range(30):  # falling snow
        x, y, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.006, 0.012)
        pen.ellipse(x - r, y - r, x + r, y + r, (255, 255, 255), outline=False)


def _classroom(pen: Pen, rng):
    pen.rect(0, 0, 1, 1, (235, 222, 185), outline=False)
    left, top = rng.uniform(0.02, 0.2), rng.uniform(0.06, 0.14)
    pen.rect(left - 0.02, top - 0.02, left + 0.82, top + 0.42, (120, 75, 35), outline=False)  # board frame
    pen.rect(left, top, left + 0.80, top + 0.40, (35, 85, 60), outline=False)
    for _ in range(3):  # chalk lines
        x, y = left + rng.uniform(0.05, 0.4), top + rng.uniform(0.05, 0.35)
        pen.stroke([(x, y), (x + rng.uniform(0.15, 0.35), y)], (225, 235, 225), 0.01)
    floor = 0.74
    pen.rect(0, floor, 1, 1, (160, 105, 55), outline=False)
    for i in range(1, 5):
        pen.stroke([(0, floor + i * 0.06), (1, floor + i * 0.06)], (120, 75, 35), 0.006)


def _sunset_sky(pen: Pen, rng):
    horizon = rng.uniform(0.62, 0.72)
    _gradient(pen, 0, horizon, (85, 35, 120), (255, 130, 40))
    x = rng.uniform(0.15, 0.85)
    pen.ellipse(x - 0.15, horizon - 0.15, x + 0.15, horizon + 0.15, (255, 225, 110), outline=False)
    for _ in range(2):  # streaks of cloud
        cx, cy = rng.uniform(0, 0.7), rng.uniform(0.1, horizon - 0.2)
        pen.ellipse(cx, cy, cx + 0.3, cy + 0.04, (250, 150, 140), outline=False)
    pen.rect(0, horizon, 1, 1, (55, 25, 45), outline=False)


BACKGROUND_PAINTERS = {
    "beach": _beach,
    "forest": _forest,
    "city at night": _city_at_night,
    "snow field": _snow_field,
    "classroom": _classroom,
    "sunset sky": _sunset_sky,
}
