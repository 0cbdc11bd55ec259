"""The identity benchmark's world (bench/world): deterministic jittered renders, characters that differ
where their attributes differ, a held-out split of new combinations, and prompts that never name who."""

import re
from dataclasses import replace

import numpy as np
import pytest

from bench.world.characters import (
    ATTRIBUTES,
    BACKGROUNDS,
    CHARACTERS,
    HELD_OUT,
    MIN_DISTANCE,
    SPLIT_SEED,
    TRAINING,
    Character,
    Jitter,
    attribute_names,
    attribute_vector,
    background_id,
    character_id,
    contact_sheet,
    distance,
    jitter_for,
    labels,
    make_cast,
    prompt_for,
    render,
    render_background,
    render_mask,
    tagged_prompt_for,
)

SIZE = 64


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def figure_mask(character, background, seed, size=SIZE, pose=None) -> np.ndarray:
    """Where the character touches the scene at all (pixels that differ from the empty scene)."""
    return (pixels(render(character, background, seed, size, pose)) != pixels(render_background(background, seed, size))).any(-1)


def test_same_arguments_give_the_same_bytes_and_the_requested_size():
    for size in (64, 128):
        first = render(TRAINING[0], "beach", 3, size)
        assert first.size == (size, size) and first.mode == "RGB"
        assert first.tobytes() == render(TRAINING[0], "beach", 3, size).tobytes()


def test_the_seed_moves_scales_and_flips_the_figure():
    masks = [figure_mask(TRAINING[4], "snow field", seed) for seed in range(8)]
    assert len({m.tobytes() for m in masks}) == 8
    rows = [np.nonzero(m.any(1))[0] for m in masks]
    columns = [np.nonzero(m.any(0))[0] for m in masks]
    centres = [c.mean() for c in columns]
    heights = [r[-1] - r[0] for r in rows]
    assert max(centres) - min(centres) > 6, centres  # pixels, at 64 px
    assert max(heights) - min(heights) > 4, heights
    assert {jitter_for(seed).flip for seed in range(8)} == {True, False}


def test_a_flip_mirrors_the_figure():
    upright = Jitter(scale=0.9, shift_x=0.0, shift_y=0.0, tilt=0.0, flip=False)
    plain = figure_mask(TRAINING[4], "beach", 0, pose=upright)  # t04 wears a ponytail on one side
    flipped = figure_mask(TRAINING[4], "beach", 0, pose=replace(upright, flip=True))

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    assert iou(flipped, plain[:, ::-1]) > 0.85 > iou(flipped, plain), (iou(flipped, plain[:, ::-1]), iou(flipped, plain))

@pytest.mark.parametrize("name", list(ATTRIBUTES))
def test_changing_one_attribute_changes_the_figure_and_nothing_else(name):
    base = TRAINING[0]
    index = list(ATTRIBUTES).index(name)
    for value in ATTRIBUTES[name]:
        if value == base.values[index]:
            continue
        other = Character("x", base.values[:index] + (value,) + base.values[index + 1 :])
        diff = np.abs(pixels(render(base, "forest", 5, SIZE)) - pixels(render(other, "forest", 5, SIZE))).sum(-1) > 30
        assert diff.sum() >= 15, (name, value, diff.sum())  # a visible patch, not a few edge pixels
        outside = ~(figure_mask(base, "forest", 5) | figure_mask(other, "forest", 5))
        assert not (diff & outside).any(), (name, value)


def test_every_character_looks_different():
    renders = {c.name: pixels(render(c, "classroom", 0, SIZE)) for c in CHARACTERS}
    names = list(renders)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (np.abs(renders[a] - renders[b]).sum(-1) > 30).sum() >= 15, (a, b)


def test_backgrounds_differ_from_each_other():
    means = np.array([pixels(render_background(b, 0, SIZE)).reshape(-1, 3).mean(0) for b in BACKGROUNDS])
    gaps = np.abs(means[:, None] - means[None]).sum(-1) + np.eye(len(BACKGROUNDS)) * 1e9
    assert gaps.min() > 40, gaps


def test_held_out_characters_are_new_combinations_of_seen_values():
    assert (len(TRAINING), len(HELD_OUT)) == (24, 6)
    assert len({c.name for c in CHARACTERS}) == len(CHARACTERS)
    seen = [{c.values[i] for c in TRAINING} for i in range(len(ATTRIBUTES))]
    assert seen == [set(values) for values in ATTRIBUTES.values()]  # every value is in some training character
    for h in HELD_OUT:
        assert h.held_out and all(v in seen[i] for i, v in enumerate(h.values))
        assert all(distance(h.values, t.values) >= MIN_DISTANCE for t in TRAINING), h
    for i, a in enumerate(CHARACTERS):
        assert all(distance(a.values, b.values) >= MIN_DISTANCE for b in CHARACTERS[i + 1 :]), a
    assert make_cast(SPLIT_SEED) == (TRAINING, HELD_OUT)  # the cast is fixed by its seed
    assert make_cast(SPLIT_SEED + 1) != (TRAINING, HELD_OUT)


def test_prompts_name_the_background_and_never_the_character():
    words = {w for values in ATTRIBUTES.values() for v in values for w in v.split("_")} | {c.name for c in CHARACTERS}
    for background in BACKGROUNDS:
        prompt = prompt_for(background)
        assert background in prompt
        assert not words & set(re.findall(r"[a-z0-9]+", prompt.lower())), prompt
    with pytest.raises(ValueError, match="unknown background"):
        prompt_for("moon")


def test_tagged_captions_name_each_attribute_value_and_the_background_but_never_the_name():
    captions = {tagged_prompt_for(c.values, "beach") for c in CHARACTERS}
    assert len(captions) == len(CHARACTERS)  # every character has its own caption
    h = HELD_OUT[0]
    caption = tagged_prompt_for(h.values, "snow field")
    assert caption.startswith("1girl, solo, standing, full body, ") and caption.endswith(", snow field background")
    a = h.attributes
    assert f"{a['hair_colour']} hair" in caption and f"{a['outfit_colour']} {a['outfit_type']}" in caption
    assert a["hair_style"] in caption and h.name not in caption
    bare, eared = (tagged_prompt_for((*h.values[:4], accessory), "beach") for accessory in ("none", "cat_ears"))
    assert "none" not in bare and bare.count(",") == eared.count(",") - 1 and ", cat ears, " in eared
    with pytest.raises(ValueError, match="unknown background"):
        tagged_prompt_for(h.values, "moon")


def test_labels_index_the_cast():
    assert attribute_names() == tuple(ATTRIBUTES)
    assert [character_id(c) for c in CHARACTERS] == list(range(len(CHARACTERS)))
    assert [background_id(b) for b in BACKGROUNDS] == list(range(len(BACKGROUNDS)))
    for c in CHARACTERS:
        assert tuple(ATTRIBUTES[n][i] for n, i in zip(ATTRIBUTES, attribute_vector(c))) == c.values
    assert labels(HELD_OUT[1], "forest") == {"character": len(TRAINING) + 1, "attributes": attribute_vector(HELD_OUT[1]), "background": 1}


def test_the_contact_sheet_has_a_row_per_character_and_a_column_per_background_and_seed():
    sheet = contact_sheet(HELD_OUT[:2], SIZE, seeds_per_background=2, label_width=40)
    assert sheet.size == (40 + SIZE * 2 * len(BACKGROUNDS), SIZE * 2)
    cell = pixels(sheet.crop((40 + SIZE * 7, SIZE, 40 + SIZE * 8, SIZE * 2)))  # second row, forest, second seed
    assert (cell == pixels(render(HELD_OUT[1], "forest", len(BACKGROUNDS) + 1, SIZE))).all()


def test_render_mask_covers_exactly_what_the_character_changes_in_the_picture():
    character = HELD_OUT[0]
    picture = np.asarray(render(character, "beach", 7, size=64), dtype=np.int16)
    scene = np.asarray(render_background("beach", 7, size=64), dtype=np.int16)
    mask = np.asarray(render_mask(character, 7, size=64))
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    changed = np.abs(picture - scene).max(axis=-1) > 12
    assert 0.1 < (mask > 127).mean() < 0.6
    assert (mask[changed] > 0).mean() > 0.97  # the character's pixels are in the mask
    assert changed[mask > 250].mean() > 0.9  # and the mask's solid part is the character
    assert mask[~changed & (mask > 0)].mean() < mask[changed].mean()  # edges are soft, not spread


def test_extras_are_new_combinations_that_keep_the_held_out_characters_unseen():
    from bench.world import characters as world

    extras = world.make_extras()
    assert extras == world.EXTRAS  # deterministic
    combos = [x.values for x in extras]
    assert len(set(combos)) == len(combos) == world.N_EXTRAS
    assert not set(combos) & {t.values for t in world.TRAINING}
    assert min(world.distance(x, h.values) for x in combos for h in world.HELD_OUT) >= world.MIN_DISTANCE
    for i, values in enumerate(world.ATTRIBUTES.values()):  # every value drawn in many companies
        assert {x[i] for x in combos} == set(values)
    assert world.character_by_name(extras[7].name) == extras[7]
    assert not extras[7].held_out
