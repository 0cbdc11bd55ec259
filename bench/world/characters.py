"""The world's cast: characters as fixed combinations of visual attributes, the training / held-out
split, labels for the classifier, prompts, and jittered renders on a named background.

    python -m bench.world.characters                     # print the cast
    python -m bench.world.characters --out DIR --grid    # contact sheets DIR/grid_64.png, DIR/grid_128.png

A prompt names only the background; who is in the picture must come from the context (issue 10).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from bench.world.drawing import HAIR_COLOURS, OUTFIT_COLOURS, draw_background, draw_figure

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_style": ("short", "long", "twintails", "ponytail"),
    "outfit_colour": tuple(OUTFIT_COLOURS),
    "outfit_type": ("dress", "trousers", "sailor", "robe"),
    "accessory": ("none", "hat", "cat_ears", "bow", "scarf"),
}
BACKGROUNDS: tuple[str, ...] = ("beach", "forest", "city at night", "snow field", "classroom", "sunset sky")
PROMPT_TEMPLATE = "1girl, solo, standing, full body, {background} background"
# A caption that also names the character's attributes as tags, as Anima's training captions do (build.py's
# tag_share); the benchmark's prompts never name them.
TAGGED_TEMPLATE = "1girl, solo, standing, full body, {tags}, {background} background"

SPLIT_SEED = 10  # issue 10; changing it changes the whole cast
N_TRAINING, N_HELD_OUT = 24, 6
FRESH_SEEDS = 1_000_000  # the world model trains on seeds below this; references and checks use seeds from it up
MIN_DISTANCE = 2  # any two characters differ in at least this many attributes, so one misread attribute never swaps identities


@dataclass(frozen=True)
class Character:
    name: str  # "t03" training, "h01" held out
    values: tuple[str, ...]  # one value per attribute, in ATTRIBUTES order

    @property
    def attributes(self) -> dict[str, str]:
        return dict(zip(ATTRIBUTES, self.values))

    @property
    def held_out(self) -> bool:
        return self.name.startswith("h")


def distance(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    return sum(x != y for x, y in zip(a, b))


def _far_from(combo, others) -> bool:
    return all(distance(combo, other) >= MIN_DISTANCE for other in others)


def make_cast(seed: int = SPLIT_SEED) -> tuple[tuple[Character, ...], tuple[Character, ...]]:
    """Training characters that use every attribute value about equally often, and held-out characters
    that are new combinations of those values, at least MIN_DISTANCE from every other character."""
    rng = random.Random(seed)
    training = _balanced_rows(rng, N_TRAINING, [])
    held = _balanced_rows(rng, N_HELD_OUT, training)
    return tuple(Character(f"t{i:02d}", c) for i, c in enumerate(training)), tuple(Character(f"h{i:02d}", c) for i, c in enumerate(held))


def _balanced_rows(rng: random.Random, n: int, others: list) -> list:
    """n combinations whose columns use each attribute's values about equally often (every value when
    n allows), reshuffled until every row is far enough from the others and from each other."""
    while True:  # a few tries
        columns = []
        for values in ATTRIBUTES.values():
            column = list(values) * math.ceil(n / len(values))
            rng.shuffle(column)
            columns.append(column[:n])
        rows = list(zip(*columns))
        covers = all(len(set(column)) == min(n, len(values)) for column, values in zip(columns, ATTRIBUTES.values()))
        if covers and all(_far_from(row, others + rows[:i]) for i, row in enumerate(rows)):
            return rows


TRAINING, HELD_OUT = make_cast()
CHARACTERS = TRAINING + HELD_OUT

N_EXTRAS = 480
EXTRAS_SEED = SPLIT_SEED + 1


def make_extras(n: int = N_EXTRAS, seed: int = EXTRAS_SEED) -> tuple[Character, ...]:
    """Combinations the world model also trains on ("x000", ...; build.py), so that, like a large model, it
    learns to draw each attribute value in any company rather than 24 fixed characters. None is within
    MIN_DISTANCE of a held-out character (those stay new combinations) or equal to a training character."""
    combos = [c for c in itertools.product(*ATTRIBUTES.values())
              if _far_from(c, [h.values for h in HELD_OUT]) and c not in {t.values for t in TRAINING}]
    chosen = random.Random(seed).sample(combos, n)
    return tuple(Character(f"x{i:03d}", c) for i, c in enumerate(chosen))


EXTRAS = make_extras()


# ---- labels the classifier and the benchmark share ----


def attribute_names() -> tuple[str, ...]:
    return tuple(ATTRIBUTES)


def attribute_vector(character: Character) -> tuple[int, ...]:
    """Each attribute's value as an index into ATTRIBUTES[name]."""
    return tuple(values.index(v) for values, v in zip(ATTRIBUTES.values(), character.values))


def character_id(character: Character) -> int:
    """Index into CHARACTERS (training first, then held out)."""
    return CHARACTERS.index(character)


def character_by_name(name: str) -> Character:
    return next(c for c in CHARACTERS + EXTRAS if c.name == name)


def background_id(background: str) -> int:
    return BACKGROUNDS.index(background)


def labels(character: Character, background: str) -> dict:
    """What a classifier predicts for a picture, as indices."""
    return {"character": character_id(character), "attributes": attribute_vector(character), "background": background_id(background)}


def prompt_for(background: str) -> str:
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; one of {BACKGROUNDS}")
    return PROMPT_TEMPLATE.format(background=background)


def attribute_tags(values: tuple[str, ...]) -> str:
    """A character's attributes as tags: "red hair, twintails, blue dress, cat ears" (no tag for no accessory)."""
    a = dict(zip(ATTRIBUTES, values))
    style = f"{a['hair_style']} hair" if a["hair_style"] in ("short", "long") else a["hair_style"]
    tags = [f"{a['hair_colour']} hair", style, f"{a['outfit_colour']} {a['outfit_type']}"]
    if a["accessory"] != "none":
        tags.append(a["accessory"].replace("_", " "))
    return ", ".join(tags)


def tagged_prompt_for(values: tuple[str, ...], background: str) -> str:
    """The caption of a picture of the character with these attribute values on ``background``, tags included."""
    prompt_for(background)  # the same check of the background
    return TAGGED_TEMPLATE.format(tags=attribute_tags(values), background=background)


# ---- rendering ----


@dataclass(frozen=True)
class Jitter:
    scale: float  # figure height as a fraction of the picture
    shift_x: float  # figure centre offset, fraction of the picture
    shift_y: float  # feet offset, fraction of the picture
    tilt: float  # degrees
    flip: bool


def jitter_for(seed: int) -> Jitter:
    """The pose of one picture; it depends on the seed only, so the same seed shows every character
    (and every size) in the same place, which keeps comparisons paired."""
    rng = random.Random(f"pose/{seed}")
    return Jitter(rng.uniform(0.78, 0.96), rng.uniform(-0.15, 0.15), rng.uniform(-0.03, 0.03), rng.uniform(-8, 8), rng.random() < 0.5)


def canvas_side(size: int) -> int:
    # Drawn at 2-4x and reduced, so the outlines and edges are antialiased at 64 px.
    return max(256, 2 * size)


def _scene(background: str, seed: int, side: int) -> Image.Image:
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; one of {BACKGROUNDS}")
    return draw_background(side, background, random.Random(f"background/{background}/{seed}"))


def render_background(background: str, seed: int, size: int = 128) -> Image.Image:
    """The scene render() draws the character on, without the character."""
    return _scene(background, seed, canvas_side(size)).resize((size, size), Image.LANCZOS)


def _placed_figure(character: Character, side: int, pose: Jitter) -> tuple[Image.Image, tuple[int, int]]:
    """The figure (RGBA) as posed, and where its top-left corner goes on a side x side canvas."""
    figure = draw_figure(side, **character.attributes)
    if pose.flip:
        figure = figure.transpose(Image.FLIP_LEFT_RIGHT)
    layer = max(1, round(side * pose.scale / 0.95))  # the figure spans ~0.02..0.97 of its layer
    figure = figure.resize((layer, layer), Image.LANCZOS).rotate(pose.tilt, resample=Image.BICUBIC, expand=True)
    centre_x = side * (0.5 + pose.shift_x)
    centre_y = side * (1.0 + pose.shift_y) - layer * 0.47  # puts the feet near the bottom edge
    return figure, (round(centre_x - figure.width / 2), round(centre_y - figure.height / 2))


def render(character: Character, background: str, seed: int, size: int = 128, pose: Jitter | None = None) -> Image.Image:
    """One RGB picture (size x size) of the character on the background, jittered by the seed
    (or placed by ``pose``, which overrides the seed's pose but not its background layout)."""
    side = canvas_side(size)
    scene = _scene(background, seed, side)
    figure, corner = _placed_figure(character, side, pose or jitter_for(seed))
    scene.paste(figure, corner, figure)
    return scene.resize((size, size), Image.LANCZOS)


def render_mask(character: Character, seed: int, size: int = 128, pose: Jitter | None = None) -> Image.Image:
    """The character's silhouette in ``render``'s picture for the same seed (or pose): an "L"
    picture, 255 on the character and 0 on the background (a cut-out's alpha)."""
    side = canvas_side(size)
    figure, corner = _placed_figure(character, side, pose or jitter_for(seed))
    mask = Image.new("L", (side, side), 0)
    mask.paste(figure.getchannel("A"), corner)
    return mask.resize((size, size), Image.LANCZOS)


# ---- contact sheet ----


def contact_sheet(characters, size: int, seeds_per_background: int = 1, label_width: int = 40) -> Image.Image:
    """Rows are characters, columns are every background (seeds 0, 1, ...) with different jitter."""
    columns = [(b, s * len(BACKGROUNDS) + i) for s in range(seeds_per_background) for i, b in enumerate(BACKGROUNDS)]
    sheet = Image.new("RGB", (label_width + size * len(columns), size * len(characters)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, character in enumerate(characters):
        draw.text((4, row * size + 4), character.name, fill=(200, 0, 0) if character.held_out else (0, 0, 0))
        for col, (background, seed) in enumerate(columns):
            sheet.paste(render(character, background, seed, size), (label_width + col * size, row * size))
    return sheet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the contact sheets")
    parser.add_argument("--grid", action="store_true", help="write grid_<size>.png: rows characters, columns backgrounds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--seeds-per-background", type=int, default=1)
    args = parser.parse_args(argv)
    for c in CHARACTERS:
        print(c.name, "held-out" if c.held_out else "training", " ".join(f"{k}={v}" for k, v in c.attributes.items()))
    if args.grid:
        if args.out is None:
            parser.error("--grid needs --out")
        args.out.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            path = args.out / f"grid_{size}.png"
            contact_sheet(CHARACTERS, size, args.seeds_per_background).save(path)
            print("wrote", path)


if __name__ == "__main__":
    main()
