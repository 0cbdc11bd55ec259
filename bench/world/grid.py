"""The benchmark's picture: per row, the references | plain samples | samples with the context, each
tile scaled up (nearest) and framed green where the classifier read the character, red where not."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SCALE = 2
REF_SLOTS = 3  # the train node takes at most three reference inputs
LABEL_WIDTH = 112
CAPTION = 12  # pixels of text under each sample tile
HEADER = 16
GAP = 8  # between the three groups
HIT, MISS, BACKGROUND = (40, 170, 60), (210, 40, 40), (255, 255, 255)


@dataclass
class GridRow:
    title: str  # e.g. "h00 refs=1"
    detail: list[str]  # further label lines (hit counts)
    references: list[Image.Image]
    plain: list[Image.Image]
    context: list[Image.Image]
    plain_hits: list[tuple[bool, bool]] = field(default_factory=list)  # (identity, background) per plain tile
    context_hits: list[tuple[bool, bool]] = field(default_factory=list)


def to_pictures(images) -> list[Image.Image]:
    """A decoded IMAGE batch [B, H, W, 3] (0..1) as PIL pictures."""
    pixels = np.clip(255.0 * images.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def _tile(picture: Image.Image, side: int) -> Image.Image:
    return picture.convert("RGB").resize((side, side), Image.NEAREST)


def make_grid(rows: list[GridRow], image_size: int, samples: int) -> Image.Image:
    side = image_size * SCALE
    columns = [("references", REF_SLOTS), ("plain model", samples), ("with the context", samples)]
    starts, x = [], LABEL_WIDTH
    for _, count in columns:
        starts.append(x)
        x += count * side + GAP
    row_height = side + CAPTION + 4
    sheet = Image.new("RGB", (x, HEADER + row_height * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for (name, _), start in zip(columns, starts):
        draw.text((start + 2, 2), name, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        top = HEADER + r * row_height
        draw.text((4, top + 2), row.title, fill=(0, 0, 0))
        for k, line in enumerate(row.detail):
            draw.text((4, top + 16 + 12 * k), line, fill=(60, 60, 60))
        for k, picture in enumerate(row.references[:REF_SLOTS]):
            sheet.paste(_tile(picture, side), (starts[0] + k * side, top))
        for group, pictures, hits in ((1, row.plain, row.plain_hits), (2, row.context, row.context_hits)):
            for k, picture in enumerate(pictures[:samples]):
                left = starts[group] + k * side
                sheet.paste(_tile(picture, side), (left, top))
                if k < len(hits):
                    identity, background = hits[k]
                    draw.rectangle((left, top, left + side - 1, top + side - 1), outline=HIT if identity else MISS, width=2)
                    draw.text((left + 2, top + side + 1), f"id{'+' if identity else '-'} bg{'+' if background else '-'}",
                              fill=HIT if identity else MISS)
    return sheet
