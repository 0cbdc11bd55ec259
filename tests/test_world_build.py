"""The world builder (bench/world/build.py) on ComfyUI's real classes: the compact prompt context it
trains with is the padded model's attention exactly, the VAE normalisation does what it says, and a
few-step smoke build produces a folder ComfyUI's loaders and the classifier read."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from comfy_anima import FakeAnimaClip

from anima_context.trainer import DEFAULT_KEEP_BACKGROUND
from bench.world import characters as world


@pytest.fixture(scope="module")
def comfy(comfyui):
    return comfyui


def _random_anima(width: int = 256):
    """ComfyUI's Anima with random weights everywhere (no identity blocks: cross-attention counts)."""
    from anima_context.comfy_glue import demo_weights
    from anima_context.demo_models import random_weights
    from bench.world import dit

    return dit.build_model(random_weights(demo_weights.dit_shapes(width), 3, torch.float32, small_init=False))


def test_compact_context_reproduces_the_padded_model(comfy):
    from bench.world import dit

    model = _random_anima()
    net = model.diffusion_model
    clip = FakeAnimaClip()
    padded = []
    for prompt in ("a short prompt", "a somewhat longer prompt with more words in it", ""):
        cond, extras = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0]
        with torch.no_grad():
            padded.append(net.preprocess_text_embeds(cond, extras["t5xxl_ids"].unsqueeze(0)))
    assert all(p.shape[1] == dit.PADDED_ROWS for p in padded)
    contexts = dit.CompactContexts(padded, image_tokens=16)
    assert contexts.rows < 64
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 1, 8, 8, generator=generator)
    sigma = torch.tensor([0.2, 0.6, 0.95])
    with torch.no_grad():
        full = dit.velocity(net, x, sigma, torch.cat(padded), {})
        compact = dit.velocity(net, x, sigma, contexts.contexts, {"optimized_attention_override": contexts.attention_override()})
        without_offset = dit.velocity(net, x, sigma, contexts.contexts, {})
        # ComfyUI's own path for a sampler: denoised = x - sigma * v
        denoised = model.apply_model(x, sigma, c_crossattn=torch.cat(padded))
    assert torch.allclose(compact, full, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(without_offset, full, atol=1e-3)  # the offset is what makes it exact
    assert torch.allclose(denoised, x - sigma.view(-1, 1, 1, 1, 1) * full, atol=1e-4)


def test_vae_normalisation_gives_unit_latents(comfy):
    from bench.world import vae

    module = vae.random_vae(8, seed=2)
    pictures = torch.stack([torch.from_numpy(__import__("numpy").array(
        world.render(c, b, seed=s, size=64))) for c in world.TRAINING[:4] for b in world.BACKGROUNDS[:3] for s in range(2)])
    images = pictures.float() / 255.0
    before = vae.latent_format().process_in(vae.encode(module, images))
    assert before.std(dim=(0, 2, 3, 4)).max() < 0.5  # a random encoder's latents barely vary
    vae.fold_normalisation(module, vae.encode(module, images))
    after = vae.latent_format().process_in(vae.encode(module, images))
    assert torch.allclose(after.mean(dim=(0, 2, 3, 4)), torch.zeros(16), atol=1e-3)
    assert torch.allclose(after.std(dim=(0, 2, 3, 4)), torch.ones(16), atol=1e-3)


def test_a_trained_encoder_learns_and_keeps_its_decoder_through_the_normalisation(comfy):
    from bench.world import vae

    pictures = torch.stack([torch.from_numpy(__import__("numpy").array(
        world.render(c, b, seed=s, size=64))) for c in world.TRAINING[:4] for b in world.BACKGROUNDS[:2] for s in range(2)])
    images = pictures.float() / 255.0
    targets = vae.pixels_to_input(images)
    module = vae.random_vae(8, seed=2)
    encoder_before = module.encoder.conv1.weight.clone()
    error_before = float((vae.pixels_to_input(vae.decode(module, vae.encode(module, images))) - targets).abs().mean())
    vae.train_autoencoder(module, pictures, 40, 8, 2e-3, 0, log=lambda _: None)
    assert not torch.equal(module.encoder.conv1.weight, encoder_before)  # the encoder trains too
    decoded = vae.decode(module, vae.encode(module, images))
    assert float((vae.pixels_to_input(decoded) - targets).abs().mean()) < 0.7 * error_before
    # the normalisation rescales the latents and gives the decoder the inverse: the same pictures come back
    vae.fold_normalisation(module, vae.encode(module, images), keep_decoder=True)
    latents = vae.latent_format().process_in(vae.encode(module, images))
    assert torch.allclose(latents.std(dim=(0, 2, 3, 4)), torch.ones(16), atol=1e-3)
    assert torch.allclose(vae.decode(module, vae.encode(module, images)), decoded, atol=1e-4)
    assert module.encoder.conv1.weight.requires_grad is False


def test_smoke_build_loads_in_comfyui(comfy, tmp_path):
    from bench.world import build, sampling
    from bench.world.classifier import load_classifier

    out = build.Builder(tmp_path / "world", build.SCALES["smoke"], log=lambda _: None).build()
    record = json.loads((out / "world.json").read_text())
    assert set(record["checks"]) >= {"vae_decoder_loss", "classifier_fresh", "plain_background_accuracy"}
    assert (out / "samples.png").is_file()
    contexts = torch.load(next((out / "data").glob("prompt_contexts_*.pt")))
    smoke = build.SCALES["smoke"]  # its tag_share: a tagged caption per character and background, after the 6 + empty
    assert len(contexts) == len(world.BACKGROUNDS) + 1 + (len(world.TRAINING) + smoke.extras) * len(world.BACKGROUNDS)
    model, clip, vae = sampling.load_world(out)
    latents = vae.encode(torch.rand(1, 64, 64, 3))
    assert latents.shape == (1, 16, 1, 8, 8)
    read = load_classifier(out).classify(latents)
    assert read["attributes"].shape == (1, 5) and read["background"].shape == (1,)
    # a second run finds every stage done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    build.Builder(out, build.SCALES["smoke"], log=lambda _: None).build()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_the_dit_also_trains_on_the_extras_and_a_brought_vae_encodes_the_pictures(comfy, tmp_path):
    """The extra combinations reach the DiT's data; a build given only another build's VAE, classifier and
    record (as a GPU build is) renders and encodes its training latents itself, as the VAE stage would have."""
    import shutil
    from dataclasses import replace

    from bench.world import build

    smoke = replace(build.SCALES["smoke"], tag_share=0.0)  # the tagged captions' encoding is the other smoke test's
    first = build.Builder(tmp_path / "a", smoke, log=lambda _: None).build()
    raw, labels = torch.load(first / "data" / "extra_latents.pt")
    extras = world.EXTRAS[:smoke.extras]
    assert len(raw) == len(labels) == smoke.extras * len(world.BACKGROUNDS) * smoke.extra_seeds
    assert {tuple(row[:5].tolist()) for row in labels} == {world.attribute_vector(x) for x in extras}

    second = tmp_path / "b"
    (second / "vae").mkdir(parents=True)
    shutil.copy(first / build.VAE_FILE, second / build.VAE_FILE)
    for name in ("classifier.pt", "world.json"):
        shutil.copy(first / name, second / name)
    lines = []
    build.Builder(second, replace(smoke, dit_steps=4), log=lines.append).build()
    assert "[vae]" not in lines and "[classifier]" not in lines and "[dit]" in lines
    assert torch.allclose(torch.load(second / "data" / "train_latents.pt")[0], torch.load(first / "data" / "train_latents.pt")[0], atol=1e-4)
    assert torch.equal(torch.load(second / "data" / "extra_latents.pt")[0], raw)
    assert (second / build.DIT_FILE).is_file()


def test_a_second_dit_round_goes_on_from_the_first_and_leaves_it_kept(comfy, tmp_path):
    """``dit_more_steps`` trains the first round's DiT further without redoing it; the first round's weights are
    kept (only while a second round replaces them), so changing the second round starts from them again, and 0
    gives the first round back."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from bench.world import build

    smoke = replace(build.SCALES["smoke"], tag_share=0.0, extras=0)
    out = build.Builder(tmp_path, smoke, log=lambda _: None).build()
    first = load_file(str(out / build.DIT_FILE))
    assert not (out / "data" / "dit_first_round.safetensors").exists()  # no second round: no copy of the DiT
    lines = []
    build.Builder(out, replace(smoke, dit_more_steps=2), log=lines.append).build()
    assert "[dit more]" in lines and "[dit]" not in lines and "[classifier]" not in lines and "[samples]" in lines
    second = load_file(str(out / build.DIT_FILE))
    trained = [k for k in second if not k.startswith("llm_adapter.")]
    assert any(not torch.equal(first[k], second[k]) for k in trained)
    assert all(torch.equal(first[k], second[k]) for k in second if k.startswith("llm_adapter."))
    assert all(torch.equal(first[k], v) for k, v in load_file(str(out / "data" / "dit_first_round.safetensors")).items())
    build.Builder(out, smoke, log=lambda _: None).build()
    assert all(torch.equal(first[k], v) for k, v in load_file(str(out / build.DIT_FILE)).items())
    assert not (out / "data" / "dit_first_round.safetensors").exists()


# (the round, the settings its smoke world starts with): each later round goes on from the one before it
LATER_ROUNDS = [("dit third", {"dit_more_steps": 2}),
                ("dit fourth", {"dit_more_steps": 2, "dit_third_steps": 2, "dit_third_batch": 2})]


@pytest.mark.parametrize("round_name,earlier_settings", LATER_ROUNDS, ids=[name for name, _ in LATER_ROUNDS])
def test_a_later_dit_round_goes_on_from_the_one_before_and_a_remade_earlier_round_restarts_it(comfy, tmp_path, round_name,
                                                                                              earlier_settings):
    """``dit_third_steps`` / ``dit_fourth_steps`` train the round before's DiT further at their own batch (a fresh
    optimiser), keeping that round's file; making that round again starts the later one from its new DiT (it once
    refused: the later round's record said it had trained, its start was gone), and 0 later steps gives it back."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from bench.world import build

    earlier = build.DIT_ROUNDS[build.DIT_ROUNDS.index(round_name) - 1]
    before_earlier = build.DIT_ROUNDS[build.DIT_ROUNDS.index(earlier) - 1]
    steps_field, earlier_steps_field = (f"{name.replace(' ', '_')}_steps" for name in (round_name, earlier))
    batch_field = f"{round_name.replace(' ', '_')}_batch"
    smoke = replace(build.SCALES["smoke"], tag_share=0.0, extras=0, **earlier_settings)
    out = build.Builder(tmp_path, smoke, log=lambda _: None).build()
    start = load_file(str(out / build.DIT_FILE))
    kept = out / "data" / build.ROUND_INPUTS[round_name]
    lines = []
    build.Builder(out, replace(smoke, **{steps_field: 2, batch_field: 2}), log=lines.append).build()
    assert f"[{round_name}]" in lines and f"[{earlier}]" not in lines and f"[{before_earlier}]" not in lines
    assert "[samples]" in lines
    trained = load_file(str(out / build.DIT_FILE))
    assert any(not torch.equal(start[k], trained[k]) for k in trained if not k.startswith("llm_adapter."))
    assert all(torch.equal(start[k], v) for k, v in load_file(str(kept)).items())
    record = out / "data" / f"{round_name.replace(' ', '_')}.json"
    assert json.loads(record.read_text()) == {"steps": 2, "lr": 2e-4, "batch": 2}

    lines = []
    build.Builder(out, replace(smoke, **{earlier_steps_field: 3, steps_field: 2, batch_field: 2}), log=lines.append).build()
    assert f"[{earlier}]" in lines and f"[{round_name}]" in lines and f"[{before_earlier}]" not in lines
    new_start = load_file(str(kept))
    assert any(not torch.equal(start[k], new_start[k]) for k in new_start if not k.startswith("llm_adapter."))
    build.Builder(out, replace(smoke, **{earlier_steps_field: 3}), log=lambda _: None).build()
    assert all(torch.equal(new_start[k], v) for k, v in load_file(str(out / build.DIT_FILE)).items())
    assert not kept.exists()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_world_packs_into_a_small_artifact_and_unpacks_to_the_same_files(comfy, tmp_path, dtype, git_repo):
    """The artifact keeps only what the build learnt; unpacking makes the random LLM adapter and text encoder
    again from their seeds, and the world it gives is the packed one tensor for tensor and byte for byte. A
    half-precision world (the tag world's) keeps its trained weights in float16 and its adapter in float32."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from bench.world import artifact, build, classifier

    config = replace(build.SCALES["smoke"], tag_share=0.0, extras=0, dit_save_dtype=dtype)
    out = build.Builder(tmp_path / "built", config, log=lambda _: None).build()
    packed = artifact.pack(out, tmp_path / "world.tar", say=lambda _: None)
    weights = sum((out / name).stat().st_size for name in (build.DIT_FILE, build.TEXT_ENCODER_FILE))
    assert packed.stat().st_size < weights / 3
    restored = artifact.unpack(packed, tmp_path / "restored", say=lambda _: None)
    original = load_file(str(out / build.DIT_FILE))
    assert {v.dtype for k, v in original.items() if k.startswith("llm_adapter.")} == {torch.float32}
    assert {v.dtype for k, v in original.items() if not k.startswith("llm_adapter.")} == {getattr(torch, dtype)}
    for name in (build.DIT_FILE, build.TEXT_ENCODER_FILE, build.VAE_FILE, "classifier.pt", "world.json"):
        assert (restored / name).read_bytes() == (out / name).read_bytes(), name
    classifier.load_classifier(restored)
    # kept in a branch's history (what survives a machine) and restored from a clone of it, the same world again
    artifact.store(out, git_repo / "world.json", say=lambda _: None, repo=git_repo)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--single-branch", str(git_repo), str(clone)], check=True)
    from_history = artifact.restore(tmp_path / "from_history", clone / "world.json", say=lambda _: None, repo=clone)
    for name in (build.DIT_FILE, build.TEXT_ENCODER_FILE, build.VAE_FILE, "classifier.pt", "world.json"):
        assert (from_history / name).read_bytes() == (out / name).read_bytes(), name
    # a packed world whose adapter its seed does not make is refused, not packed wrong
    broken = dict(original)
    name = next(k for k in broken if k.startswith("llm_adapter."))
    broken[name] = broken[name] + 1
    from safetensors.torch import save_file

    save_file(broken, str(out / build.DIT_FILE))
    with pytest.raises(RuntimeError, match="LLM adapter"):
        artifact.pack(out, tmp_path / "broken.tar", say=lambda _: None)


def test_a_world_built_before_a_setting_existed_is_not_rebuilt(tmp_path):
    """A folder recorded before per-stage records, and before ``extras`` existed, counts as built with the
    settings' defaults: adding a setting does not retrain a 45-minute DiT."""
    from dataclasses import asdict, replace

    from bench.world import build

    config = build.WorldConfig()
    old = {k: v for k, v in asdict(config).items() if k not in ("extras", "extra_seeds")}
    (tmp_path / "world.json").write_text(json.dumps({"config": old}))
    (tmp_path / "made.bin").write_bytes(b"")
    made = []
    builder = build.Builder(tmp_path, config, log=lambda _: None)
    builder._stage("dit", tmp_path / "made.bin", made.append)
    assert made == []
    changed = build.Builder(tmp_path, replace(config, extras=480), log=lambda _: None)
    changed._stage("dit", tmp_path / "made.bin", made.append)
    assert made == [tmp_path / "made.bin"]


def test_a_stage_recorded_before_a_setting_existed_is_not_rebuilt(tmp_path):
    """A per-stage record made before ``tag_share`` existed counts as built with its default (0)."""
    from dataclasses import replace

    from bench.world import build

    config = build.WorldConfig()
    recorded = {k: v for k, v in build.Builder(tmp_path, config, log=lambda _: None).stage_settings("dit").items() if k != "tag_share"}
    (tmp_path / "world.json").write_text(json.dumps({"stage_settings": {"dit": recorded}}))
    (tmp_path / "made.bin").write_bytes(b"")
    made = []
    build.Builder(tmp_path, config, log=lambda _: None)._stage("dit", tmp_path / "made.bin", made.append)
    assert made == []
    build.Builder(tmp_path, replace(config, tag_share=0.5), log=lambda _: None)._stage("dit", tmp_path / "made.bin", made.append)
    assert made == [tmp_path / "made.bin"]


def test_tagged_captions_give_each_picture_its_own_characters_caption():
    from bench.world import build

    a, b = world.TRAINING[0], world.TRAINING[1]
    labels = torch.tensor([[*world.attribute_vector(a), 2], [*world.attribute_vector(b), 2], [*world.attribute_vector(a), 2],
                           [*world.attribute_vector(a), 4]])
    prompts, rows = build.tagged_captions(labels)
    first = len(world.BACKGROUNDS) + 1  # after the backgrounds' prompts and the empty one
    assert len(prompts) == 3 and rows[0] == rows[2] and len({int(r) for r in rows}) == 3
    assert prompts[int(rows[0]) - first] == world.tagged_prompt_for(a.values, world.BACKGROUNDS[2])
    assert prompts[int(rows[1]) - first] == world.tagged_prompt_for(b.values, world.BACKGROUNDS[2])
    assert prompts[int(rows[3]) - first] == world.tagged_prompt_for(a.values, world.BACKGROUNDS[4])


def test_caption_rows_keep_the_untagged_worlds_draws_and_share_out_the_tags():
    from bench.world.dit import caption_rows

    drop = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    scene, tagged = torch.full((20_000,), 3), torch.full((20_000,), 40)
    untagged = caption_rows(drop, scene, tagged, 0.1, 0.0, 6)
    assert torch.equal(untagged, torch.where(drop < 0.1, torch.full_like(scene, 6), scene))  # the draws before tags existed
    assert torch.equal(caption_rows(drop, scene, None, 0.1, 0.5, 6), untagged)
    rows = caption_rows(drop, scene, tagged, 0.1, 0.5, 6)
    assert torch.equal(rows == 6, drop < 0.1)  # the empty prompt as often as without tags
    share = (rows == 40).float().sum() / (rows != 6).float().sum()
    assert abs(float(share) - 0.5) < 0.02


def test_the_tag_world_smoke_build_trains_on_tagged_captions_and_runs_its_oracle(comfy, tmp_path):
    """The tag world (issue 23) at smoke scale: the DiT's prompts are the scenes, the empty prompt and one tagged
    caption per training combination and scene; the oracle samples every held-out character from its own tags,
    records its rates per set, and a world below the targets says it is not ready."""
    from bench.world import build, tags

    smoke = build.SCALES["tags_smoke"]
    messages = []
    # a build told to stop after the DiT's rounds (the GPU's part) leaves the classifier and the oracle to a later run
    out = build.Builder(tmp_path / "tags", smoke, log=messages.append).build(stop_after="dit third")
    assert (out / build.DIT_FILE).is_file() and not (out / "classifier.pt").exists() and not (out / "oracle.png").exists()
    assert messages[-1].startswith("stopped after the dit third stage")
    with pytest.raises(ValueError, match="no stage"):
        build.Builder(tmp_path / "tags", smoke, log=messages.append).build(stop_after="oracles")
    messages.clear()
    out = build.Builder(tmp_path / "tags", smoke, log=messages.append).build()
    assert not any(m == "[dit]" for m in messages)  # the rounds already built are kept
    record = json.loads((out / "world.json").read_text())
    contexts = torch.load(next((out / "data").glob("prompt_contexts_*.pt")))
    assert len(contexts) == len(world.BACKGROUNDS) + 1 + smoke.combinations * len(world.BACKGROUNDS)
    _, labels = torch.load(out / "data" / "train_latents.pt")
    assert {tuple(row[:5].tolist()) for row in labels} == {world.attribute_vector(c) for c in tags.TRAINING[:smoke.combinations]}
    oracle = record["checks"]["oracle"]
    assert set(oracle) >= {"tuning", "final", "training", "held_out", "ready", "targets"}
    assert oracle["targets"] == tags.ORACLE_TARGETS and oracle["ready"] is False  # three DiT steps draw nobody
    assert any(m.startswith("world NOT ready") for m in messages) and not any(m.startswith("world ready") for m in messages)
    assert (out / "oracle.png").is_file()
    # the tag benchmark's mechanics on it (two training steps, two samples): every row is scored, the edits too
    from bench.world import tag_benchmark

    result = tag_benchmark.main(["--world", str(out), "--out", str(tmp_path / "bench"), "--split", "u00", "--refs", "1",
                                 "--seeds", "2", "--train-kwargs", '{"training_steps": 2}', "--threads", "1"])
    (row,) = result["rows"]
    for name in ("oracle", "plain", "context", "partial", "home"):
        assert {f"{name}_{k}" for k in tag_benchmark.SCORES} <= set(row)
    assert {"edit_outfit_asked", "edit_outfit_kept", "edit_accessory_asked", "edit_accessory_kept"} <= set(row)
    assert row["reference_background"] != row["target_background"]
    assert (tmp_path / "bench" / "results.json").is_file() and (tmp_path / "bench" / "grid.png").is_file()
    # each trained context's lift (what the info text shows) is kept, and ranked against the scores
    assert {"context_lift", "partial_lift"} <= set(row) and result["lift_tracking"]["trainings"] == 2
    assert row["context_masked"] is False
    # --rows screens a candidate with fewer rows: only the context is trained, sampled and scored; --masks trains
    # with the references' true character masks
    said = []
    screened = tag_benchmark.run(tag_benchmark.build_parser().parse_args(
        ["--world", str(out), "--out", str(tmp_path / "screen"), "--split", "u00", "--refs", "1", "--seeds", "2",
         "--train-kwargs", '{"training_steps": 2}', "--threads", "1", "--rows", "context", "--masks"]), say=said.append)
    (row,) = screened["rows"]
    assert row["context_masked"] is True and row["context_keep_background"] == DEFAULT_KEEP_BACKGROUND  # the masked node's
    assert {f"context_{k}" for k in tag_benchmark.SCORES} <= set(row)
    assert not any(key.startswith(("oracle_", "plain_", "partial_", "edit_", "home_")) for key in row)
    assert any(line.startswith("  context") for text in said for line in text.splitlines())
    assert not any(line.startswith("  oracle") for text in said for line in text.splitlines())
    with pytest.raises(SystemExit, match="--rows"):
        tag_benchmark.main(["--world", str(out), "--out", str(tmp_path / "x"), "--split", "u00", "--rows", "contxt"])
    # the steps curve: one training of three steps gives the one- and three-step rows, scored as the context row
    from bench.world import steps_curve

    curve = steps_curve.main(["--world", str(out), "--out", str(tmp_path / "curve"), "--split", "u00", "--refs", "1",
                              "--steps", "3,1", "--train-seeds", "0", "--seeds", "2", "--threads", "1"])
    assert list(curve["rows"]) == [1, 3] and all(len(rows) == 1 for rows in curve["rows"].values())
    assert {f"context_{k}" for k in tag_benchmark.SCORES} <= set(curve["rows"][3][0])
    assert (tmp_path / "curve" / "steps_curve.json").is_file()
