"""The tag world's cast (bench/world/tags.py, issue 23): every attribute value has a word of its own and
no word names two attributes; the DiT's training set holds every combination but the held-out sixteen;
the tuning and final sets are disjoint and each covers every value; tagged captions name exactly the
character's values."""

import itertools
import re

import pytest

from bench.world import tags
from bench.world.characters import ATTRIBUTES, attribute_vector, tagged_prompt_for


def test_every_value_has_a_word_of_its_own_and_no_word_names_two_attributes():
    owner = {}
    for attribute, values in tags.TAG_VALUES.items():
        for value in values:
            word = value.split("_")[0]
            assert owner.setdefault(word, attribute) == attribute, (word, owner[word], attribute)
    for character in tags.ALL:
        words = tags.words(character.values)
        for value in character.values:
            assert value.split("_")[0] in words, (character, value)
        # the caption names nothing else: no other value's word appears
        others = {v.split("_")[0] for vs in tags.TAG_VALUES.values() for v in vs} - {v.split("_")[0] for v in character.values}
        assert not others & set(words), (character.values, others & set(words))


def test_the_split_holds_every_combination_once_and_keeps_the_held_out_from_the_dit():
    every = set(itertools.product(*tags.TAG_VALUES.values()))
    assert len(every) == 4 * 3 * 4 * 2 * 3 == 288
    training = {c.values for c in tags.TRAINING}
    tuning, final = {c.values for c in tags.TUNING}, {c.values for c in tags.FINAL}
    assert len(tuning) == len(final) == 8 and not tuning & final
    assert training == every - tuning - final and len(training) == 272
    for group in (tags.TUNING, tags.FINAL):
        for index, values in enumerate(tags.TAG_VALUES.values()):
            assert {c.values[index] for c in group} == set(values)  # every value is asked for in each set
    assert tags.make_split() == (tags.TRAINING, tags.TUNING, tags.FINAL)  # deterministic


def test_labels_index_the_scene_worlds_vocabulary_so_one_classifier_layout_reads_both():
    for character in tags.HELD_OUT:
        vector = attribute_vector(character)
        assert tuple(list(ATTRIBUTES[a])[i] for a, i in zip(ATTRIBUTES, vector)) == character.values


def test_a_tagged_caption_names_the_values_and_the_scene():
    character = tags.by_name("u00")
    caption = tagged_prompt_for(character.values, "beach")
    assert caption.startswith("1girl, solo, standing, full body, ") and caption.endswith(", beach background")
    for value in character.values:
        assert re.search(rf"\b{value.replace('_', ' ')}\b", caption), (value, caption)
    assert tags.pick("tuning") == list(tags.TUNING) and [c.name for c in tags.pick("f01,c000")] == ["f01", "c000"]


def test_the_classifier_meets_each_character_in_poses_of_its_own_and_keeps_them_across_scenes():
    """Shared poses let the tag world's first classifier learn its 32 poses by heart (100% on them, 23% identity
    on new ones); ``distinct_poses`` gives every character its own seeds while a character's seed k stays one
    pose on every background, as the split-background pictures (``same_pose_partners``) need."""
    import numpy as np
    import torch

    from bench.world.build import render_set
    from bench.world.characters import BACKGROUNDS, jitter_for, render
    from bench.world.classifier import same_pose_partners

    cast, seeds = tags.TRAINING[:3], range(8, 10)
    shared, _ = render_set(cast, seeds, 32, 1)
    distinct, labels = render_set(cast, seeds, 32, 1, distinct_poses=True)
    assert torch.equal(shared[:len(BACKGROUNDS) * len(seeds)], distinct[:len(BACKGROUNDS) * len(seeds)])  # the first keeps its seeds
    # character i draws seeds 8 + 2i, 9 + 2i: six different poses for three characters
    assert len({jitter_for(s + 2 * i) for i in range(3) for s in seeds}) == 6
    per_picture = distinct.view(len(cast), len(BACKGROUNDS), len(seeds), -1)
    assert not torch.equal(per_picture[0, 0, 0], per_picture[1, 0, 0])
    partners = same_pose_partners(len(cast), len(BACKGROUNDS), len(seeds))
    assert (labels[partners[:, 0], :5] == labels[:, :5]).all()  # a partner is the same character
    i, b, s = 2, 3, 1
    picture = distinct.view(len(cast), len(BACKGROUNDS), len(seeds), 32, 32, 3)[i, b, s]
    assert torch.equal(picture, torch.from_numpy(np.array(render(cast[i], BACKGROUNDS[b], 9 + 2 * i, size=32))))


def test_lift_tracking_ranks_every_trained_context_against_its_scores():
    """The tag benchmark's check of the info text's lift: one pair per trained context (context and partial rows),
    skipping a kind that was not trained, and Spearman ranks, so a lift that orders the contexts as identity does
    scores +1 and one that orders them backwards -1."""
    from bench.world.tag_benchmark import lift_tracking

    def row(context, partial=None):
        out = {"context_lift": context[0], "context_identity": context[1], "context_attributes": context[2],
               "context_both": context[1]}
        if partial is not None:
            out.update({"partial_lift": partial[0], "partial_identity": partial[1], "partial_attributes": partial[2],
                        "partial_both": partial[1]})
        return out

    rows = [row((0.1, 0.0, 0.9), (0.2, 0.1, 0.8)), row((0.3, 0.2, 0.7)), row((0.4, 0.5, 0.6), (0.5, 0.6, 0.5))]
    tracking = lift_tracking(rows)
    assert tracking["trainings"] == 5
    assert tracking["identity_spearman"] == pytest.approx(1.0) and tracking["both_spearman"] == pytest.approx(1.0)
    assert tracking["attributes_spearman"] == pytest.approx(-1.0)
    assert lift_tracking([row((0.1, 0.0, 0.9))])["identity_spearman"] is None  # too few to rank
