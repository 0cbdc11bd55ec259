"""The world classifier's split-background pictures (bench/world/classifier.py) and how the benchmark
scores a blend of two scenes: plain torch, no ComfyUI needed."""

from __future__ import annotations

import torch

from bench.world import characters as world
from bench.world.benchmark import AS_PROMPTED_SHARE, LEAK_SHARE, score
from bench.world.build import render_set
from bench.world.classifier import same_pose_partners, split_backgrounds, train_classifier


def test_partners_are_the_same_character_and_pose_on_each_background():
    cast, seeds = world.CHARACTERS[:3], range(3)
    pictures, labels = render_set(cast, seeds, 64, 1)
    partners = same_pose_partners(len(cast), len(world.BACKGROUNDS), len(seeds), offset=5)
    assert partners.shape == (len(pictures), len(world.BACKGROUNDS))
    for i in range(len(pictures)):
        for b in range(len(world.BACKGROUNDS)):
            j = int(partners[i, b]) - 5
            assert int(labels[j, 5]) == b and torch.equal(labels[j, :5], labels[i, :5])
            assert j % len(seeds) == i % len(seeds)  # the same seed: the same pose (characters.jitter_for)


def test_split_pictures_take_each_row_from_the_picture_its_label_says():
    generator = torch.Generator().manual_seed(0)
    flat = torch.randn(12, 16, 8, 8, generator=generator)
    partners = same_pose_partners(1, len(world.BACKGROUNDS), 2)
    index = torch.arange(12)
    background = torch.tensor([b for b in range(len(world.BACKGROUNDS)) for _ in range(2)])
    joined, soft = split_backgrounds(flat[index], background, partners[index], flat, 1.0, generator)
    assert torch.allclose(soft.sum(dim=1), torch.ones(12))
    for k in range(12):
        own_rows = (joined[k] == flat[k]).all(dim=(0, 2))
        other = [b for b in range(len(world.BACKGROUNDS)) if b != int(background[k]) and soft[k, b] > 0]
        assert len(other) == 1  # one other scene, never the picture's own
        partner_rows = (joined[k] == flat[int(partners[k, other[0]])]).all(dim=(0, 2))
        assert bool((own_rows | partner_rows).all()) and 0 < int(own_rows.sum()) < 8
        assert float(soft[k, int(background[k])]) == own_rows.float().mean().item()
        # one band each: the rows of a scene are contiguous, at the top or at the bottom
        first_own = own_rows.int().argmax().item()
        assert own_rows[first_own:first_own + int(own_rows.sum())].all() and (first_own == 0 or own_rows[-1])

    untouched, hard = split_backgrounds(flat[index], background, partners[index], flat, 0.0, generator)
    assert torch.equal(untouched, flat) and torch.equal(hard.argmax(dim=1), background) and hard.max() == 1


def test_training_on_split_pictures_reads_each_scenes_share():
    """Six 'scenes' that differ in their latents: a classifier trained with split pictures gives a
    half-and-half picture about half to each scene, and a pure one nearly all to its own."""
    generator = torch.Generator().manual_seed(1)
    backgrounds, seeds = len(world.BACKGROUNDS), 20
    scene = torch.randn(backgrounds, 16, 1, 1, generator=generator) * 2
    latents = scene.repeat_interleave(seeds, 0).expand(-1, 16, 8, 8) + 0.3 * torch.randn(backgrounds * seeds, 16, 8, 8, generator=generator)
    latents = latents[:, :, None]
    targets = torch.zeros(backgrounds * seeds, 6, dtype=torch.long)
    targets[:, 5] = torch.arange(backgrounds).repeat_interleave(seeds)
    model = train_classifier(latents, targets, steps=300, seed=0, log=lambda *_: None, batch=64, width=16,
                             partners=same_pose_partners(1, backgrounds, seeds), split_share=0.5)
    pure = model.classify(latents[::seeds])["background_shares"]
    assert (pure.diagonal() > 0.85).all()
    half = latents[0:1].clone()
    half[..., 4:, :] = latents[seeds:seeds + 1][..., 4:, :]
    shares = model.classify(half)["background_shares"][0]
    assert 0.25 < float(shares[0]) < 0.75 and 0.25 < float(shares[1]) < 0.75


class _Reads:
    """A classifier stand-in that reads every latent as the given attributes and scene shares."""

    def __init__(self, attributes, shares):
        self.attributes, self.shares = torch.tensor(attributes), torch.tensor(shares)

    def classify(self, latents):
        return {"attributes": self.attributes, "background": self.shares.argmax(dim=1), "background_shares": self.shares}


def test_a_blend_of_the_asked_and_the_reference_scene_counts_as_a_leak_not_as_the_asked_background():
    character = world.HELD_OUT[0]
    truth = list(world.attribute_vector(character))
    asked, reference = world.BACKGROUNDS[3], world.BACKGROUNDS[0]
    shares = [[0.0] * len(world.BACKGROUNDS) for _ in range(3)]
    shares[0][3] = 1.0  # all the asked scene
    shares[1][3], shares[1][0] = 0.6, 0.4  # mostly asked, but the reference's scene shows: read as "asked" by argmax
    shares[2][3], shares[2][0] = AS_PROMPTED_SHARE, 1 - AS_PROMPTED_SHARE  # the edge: counts as asked and as a leak
    result = score(_Reads([truth] * 3, shares), torch.zeros(3, 16, 1, 8, 8), character, asked, reference)
    assert result["background_hits"] == [True, False, True]
    assert result["predicted_background"] == [3, 3, 3]
    assert result["leak"] == round(2 / 3, 4) and LEAK_SHARE <= 1 - AS_PROMPTED_SHARE
    assert result["identity"] == 1.0


def test_both_counts_only_the_character_in_the_asked_scene():
    # Identity and background are each right in half the samples, but never together: "both" is 0, not 0.25 or 0.5.
    character = world.HELD_OUT[0]
    truth = list(world.attribute_vector(character))
    wrong = [(v + 1) % len(world.ATTRIBUTES[name]) for v, name in zip(truth, world.ATTRIBUTES)]
    asked, reference = world.BACKGROUNDS[3], world.BACKGROUNDS[0]
    in_asked = [1.0 if b == 3 else 0.0 for b in range(len(world.BACKGROUNDS))]
    in_reference = [1.0 if b == 0 else 0.0 for b in range(len(world.BACKGROUNDS))]
    reads = _Reads([truth, wrong, truth, wrong], [in_reference, in_asked, in_reference, in_asked])
    result = score(reads, torch.zeros(4, 16, 1, 8, 8), character, asked, reference)
    assert (result["identity"], result["background"], result["both"]) == (0.5, 0.5, 0.0)
    result = score(_Reads([truth, wrong], [in_asked, in_asked]), torch.zeros(2, 16, 1, 8, 8), character, asked, reference)
    assert (result["identity"], result["background"], result["both"]) == (0.5, 1.0, 0.5)


def _blob_latents(values: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[N, 16, 1, 8, 8] noise with a 2x2 'figure' whose channel pattern says its attribute value, at row y."""
    patterns = torch.eye(16)[:3] * 3.0  # value v lights channel v
    latents = 0.3 * torch.randn(len(values), 16, 8, 8, generator=generator)
    for k, (v, y) in enumerate(zip(values.tolist(), rows.tolist())):
        latents[k, :, y:y + 2, 3:5] += patterns[v][:, None, None]
    return latents[:, :, None]


def test_the_pooled_reader_knows_a_figure_where_it_never_stood_and_the_flat_one_does_not():
    """The tag world draws every picture in a pose of its own: a reader must know a figure wherever it stands.
    Trained on figures in the top rows only, the pooled classifier reads them in the bottom rows; the flat
    one (a linear layer over every position) learnt the top rows' weights and guesses at the bottom. (Rows, not
    columns: training mirrors pictures left to right.)"""
    generator = torch.Generator().manual_seed(3)
    n = 240
    values = torch.randint(0, 3, (n,), generator=generator)
    targets = torch.zeros(n, 6, dtype=torch.long)
    targets[:, 0] = values
    top = _blob_latents(values, torch.randint(0, 3, (n,), generator=generator), generator)
    test_values = torch.arange(60) % 3
    bottom = _blob_latents(test_values, torch.randint(5, 7, (60,), generator=generator), generator)
    read = {}
    for pooled in (False, True):
        model = train_classifier(top, targets, steps=400, seed=0, log=lambda *_: None, batch=32, width=16, noise=0.0,
                                 pooled=pooled)
        assert (model.classify(top)["attributes"][:, 0] == values).float().mean() > 0.95  # both learn where they saw
        read[pooled] = float((model.classify(bottom)["attributes"][:, 0] == test_values).float().mean())
    assert read[True] > 0.95 and read[False] < 0.7, read


def test_encoding_a_set_in_chunks_keeps_each_characters_own_poses(monkeypatch):
    """``encode_set`` renders a few characters at a time; character i must still draw its own block of seeds, so
    the latents and labels match one ``render_set`` of the whole cast, row for row."""
    from bench.world import build, vae

    class Pooling:  # a stand-in encoder: 8x8 average pooling keeps each picture's own content
        def encode(self, x):
            return torch.nn.functional.avg_pool3d(x, (1, 8, 8))

    monkeypatch.setattr(vae, "encode", lambda module, pixels, batch=64: module.encode(vae.pixels_to_input(pixels)))
    cast, seeds = world.CHARACTERS[:5], range(8, 10)
    chunked, labels = build.encode_set(Pooling(), cast, seeds, 32, 1, distinct_poses=True, chunk=2)
    pictures, whole_labels = render_set(cast, seeds, 32, 1, distinct_poses=True)
    assert torch.equal(labels, whole_labels)
    assert torch.allclose(chunked, Pooling().encode(vae.pixels_to_input(build.to_image(pictures))))
