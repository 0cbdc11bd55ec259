"""The tag world's cast (issue 23): a model that, like Anima, learns from tag captions who to draw.

Five attributes of 4/3/4/2/3 values (288 combinations), each value with a word of its own and no word
shared by two attributes ("red" names only a hair colour, "blue" only an outfit colour). The world's DiT
trains on every combination but sixteen held out, under captions that name the attributes as tags
("1girl, solo, standing, full body, red hair, twintails, blue dress, bow, beach background") in 70% of
draws, the scene alone in 20% and nothing in 10%. The held-out sixteen are never drawn for the DiT:
eight form the **tuning** set (method choices are made on them) and eight the **final** set (touched
only for the final table).

Labels stay indices into ``characters.ATTRIBUTES`` (these values are a subset of its), so the classifier
and the benchmark's scoring read both worlds the same way.

    python -m bench.world.tags       # print the vocabulary and the split
"""

from __future__ import annotations

import itertools
import random

from bench.world.characters import ATTRIBUTES, Character, attribute_tags

TAG_VALUES: dict[str, tuple[str, ...]] = {
    "hair_colour": ("black", "blonde", "pink", "red"),
    "hair_style": ("short", "long", "twintails"),
    "outfit_colour": ("green", "blue", "purple", "yellow"),
    "outfit_type": ("dress", "trousers"),
    "accessory": ("hat", "cat_ears", "bow"),
}
assert list(TAG_VALUES) == list(ATTRIBUTES) and all(set(v) <= set(ATTRIBUTES[k]) for k, v in TAG_VALUES.items())

SPLIT_SEED = 23  # issue 23; changing it changes the split
N_TUNING, N_FINAL = 8, 8


def _balanced(rng: random.Random, n: int, taken: set) -> list[tuple[str, ...]]:
    """n new combinations whose columns use each value about equally often."""
    while True:
        columns = []
        for values in TAG_VALUES.values():
            column = list(values) * -(-n // len(values))
            rng.shuffle(column)
            columns.append(column[:n])
        rows = list(zip(*columns))
        if len(set(rows)) == n and not set(rows) & taken:
            return rows


def make_split(seed: int = SPLIT_SEED) -> tuple[tuple[Character, ...], tuple[Character, ...], tuple[Character, ...]]:
    """(training, tuning, final): every combination once; tuning and final each cover every value."""
    rng = random.Random(seed)
    tuning = _balanced(rng, N_TUNING, set())
    final = _balanced(rng, N_FINAL, set(tuning))
    held = set(tuning) | set(final)
    training = [c for c in itertools.product(*TAG_VALUES.values()) if c not in held]
    return (tuple(Character(f"c{i:03d}", c) for i, c in enumerate(training)),
            tuple(Character(f"u{i:02d}", c) for i, c in enumerate(tuning)),
            tuple(Character(f"f{i:02d}", c) for i, c in enumerate(final)))


TRAINING, TUNING, FINAL = make_split()
HELD_OUT = TUNING + FINAL
ALL = TRAINING + HELD_OUT
SPLITS = {"tuning": TUNING, "final": FINAL}
# what the oracle (held-out characters sampled from their own tags) must reach before the world calls itself ready
ORACLE_TARGETS = {"identity": 0.60, "attributes": 0.90, "background": 0.95}


def by_name(name: str) -> Character:
    for character in ALL:
        if character.name == name:
            return character
    raise KeyError(f"no tag-world character {name!r}")


def pick(text: str) -> list[Character]:
    """'tuning', 'final', 'held_out', or names (u00,f03,c010)."""
    named = {"tuning": TUNING, "final": FINAL, "held_out": HELD_OUT}
    if text in named:
        return list(named[text])
    return [by_name(name.strip()) for name in text.split(",") if name.strip()]


def words(values: tuple[str, ...]) -> list[str]:
    """The value words of a character's tags (no attribute shares one with another)."""
    return attribute_tags(values).replace(",", " ").split()


def main() -> None:
    for name, values in TAG_VALUES.items():
        print(f"{name}: {', '.join(values)}")
    print(f"{len(TRAINING)} training combinations, tuning {len(TUNING)}, final {len(FINAL)}")
    for character in HELD_OUT:
        print(character.name, attribute_tags(character.values))


if __name__ == "__main__":
    main()
