"""The tag world's cast (bench/world/tags.py, issue 23): every attribute value has a word of its own and
no word names two attributes; the DiT's training set holds every combination but the held-out sixteen;
the tuning and final sets are disjoint and each covers every value; tagged captions name exactly the
character's values."""

import itertools
import re

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
