"""The pack against ComfyUI's own Anima (a small random-weight one, loaded by ComfyUI's loader
under inference mode as in a prompt). Needs COMFYUI_PATH; skips without it."""

import json
from pathlib import Path

import pytest
import torch
from comfy_anima import FakeAnimaClip, FakeWanVae, load_anima, random_anima_state_dict
from conftest import REPO

TRAIN_ARGS = dict(training_prompt="a girl with silver hair", seed=7, training_steps=6, learning_rate=0.05,
                  training_image_size=64, num_tokens=4, init_std=0.5, training_dtype="float32")


@pytest.fixture(scope="module")
def anima(comfyui):
    return load_anima(random_anima_state_dict(256))


@pytest.fixture(scope="module")
def trained(pack, anima):
    generator = torch.Generator().manual_seed(0)
    images = dict(reference_image=torch.rand(1, 80, 64, 3, generator=generator),
                  reference_image_2=torch.rand(2, 64, 96, 3, generator=generator),
                  reference_image_3=torch.rand(1, 72, 72, 4, generator=generator))
    node = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainReferenceContext"]()
    with torch.inference_mode():  # every ComfyUI node runs in inference mode
        context, info, plot = node.train(anima, FakeAnimaClip(), FakeWanVae(), **images, **TRAIN_ARGS)
    return context, info, plot


def _snapshot(model):
    diffusion_model = model.model.diffusion_model
    return {
        "options": repr(model.model_options),
        "params": {name: (p, p.detach().clone(), p.requires_grad, p.is_inference())
                   for name, p in list(diffusion_model.named_parameters())[::25]},
    }


def test_training_reaches_every_block_and_lowers_the_heldout_loss(trained):
    context, info, plot = trained
    assert context.tokens.shape == (10, 4, 1024)
    # The trainer's init for this seed (a CPU generator, as in train_tokens); every block must have moved.
    initial = torch.randn((10, 4, 1024), generator=torch.Generator().manual_seed(TRAIN_ARGS["seed"])) * TRAIN_ARGS["init_std"]
    moved = (context.tokens - initial).abs().amax(dim=(1, 2))
    assert bool((moved > 1e-4).all()), moved
    meta = context.metadata
    assert meta["reference_count"] == 4 and meta["steps"] == 6 and len(meta["loss_curve"]) == 6
    assert meta["heldout_loss_with"] < meta["heldout_loss_without"]
    assert "reference fit" in info and "references: 4 (64x80, 96x64, 96x64, 72x72)" in info
    # the lift is measured at step 0, every ceil(6 / 4) = 2 steps and at the end; the picture is an IMAGE
    assert [step for step, _ in meta["lift_curve"]] == [0, 2, 4, 6] and meta["lift_curve"][-1][1] == meta["lift"]
    assert plot.shape == (1, 400, 640, 3) and plot.dtype == torch.float32 and float(plot.std()) > 0.05


def test_half_precision_falls_back_to_float32_on_the_cpu_with_a_note(pack, anima):
    node = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainReferenceContext"]()
    with torch.inference_mode():
        context, info, _ = node.train(anima, FakeAnimaClip(), FakeWanVae(), torch.rand(1, 64, 64, 3),
                                      **{**TRAIN_ARGS, "training_steps": 1, "training_dtype": "bfloat16"})
    assert context.metadata["dtype"] == "float32"
    assert "note: bfloat16 is slow on the CPU: trained in float32" in info


def test_every_blocks_tokens_get_a_gradient(pack, anima):
    from anima_context.comfy_glue import ComfyAnimaDenoiser, _training_mode
    from anima_context.frozen_weights import autograd_safe_weights
    from anima_context.patch import ContextTokenPatch

    with torch.inference_mode(False):
        tokens = torch.zeros(10, 2, 1024, requires_grad=True)
        denoiser = ComfyAnimaDenoiser(anima, torch.randn(1, 512, 1024), 10, 1024)
        x = torch.randn(1, 16, 1, 8, 8)
        options = {"patches": {"attn2_patch": [ContextTokenPatch(tokens)]}}
        with autograd_safe_weights(anima.model.diffusion_model), _training_mode():
            denoiser.velocity(x, torch.tensor([0.7]), options).pow(2).mean().backward()
    per_block = tokens.grad.abs().sum(dim=(1, 2))
    assert bool((per_block > 0).all()), per_block


def test_the_users_model_is_untouched(pack, anima):
    import comfy.model_management
    import comfy.quant_ops

    before = _snapshot(anima)
    kitchen = comfy.quant_ops.ck
    node = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainReferenceContext"]()
    with torch.inference_mode():
        node.train(anima, FakeAnimaClip(), FakeWanVae(), torch.rand(1, 64, 64, 3), **{**TRAIN_ARGS, "training_steps": 2})
    after = _snapshot(anima)
    assert after["options"] == before["options"]
    for name, (param, values, requires_grad, inference) in before["params"].items():
        now = after["params"][name]
        assert now[0] is param and torch.equal(now[1], values), name
        assert (now[2], now[3]) == (requires_grad, inference), name
    assert comfy.quant_ops.ck is kitchen and comfy.model_management.in_training is False


def _sample(model, cond, negative, seed=3):
    import comfy.sample

    latent = torch.zeros(1, 16, 1, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, 3, 3.0, "euler", "simple", cond, negative, latent,
                                   disable_pbar=True, seed=seed)


def test_applied_context_changes_the_sample_and_strength_zero_does_not(pack, anima, trained):
    context, _, _ = trained
    clip = FakeAnimaClip()
    positive = clip.encode_from_tokens_scheduled("a girl")
    negative = clip.encode_from_tokens_scheduled("worst quality")
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()
    with torch.inference_mode():
        (patched,) = apply.apply(anima, context, 1.0)
        (zero,) = apply.apply(anima, context, 0.0)
        (chained,) = apply.apply(patched, context, 1.0)
    plain = _sample(anima, positive, negative)
    assert torch.equal(_sample(zero, positive, negative), plain)
    with_context = _sample(patched, positive, negative)
    assert (with_context - plain).abs().max() > 1e-4
    assert (_sample(chained, positive, negative) - with_context).abs().max() > 1e-5
    assert "patches" not in anima.model_options.get("transformer_options", {})


def test_apply_refuses_other_models_and_mismatched_contexts(pack, anima, trained):
    from anima_context.context import ReferenceContext
    from anima_context.errors import IncompatibleModelError

    context, _, _ = trained
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()

    class NotAnima:
        model = type("BaseModel", (), {"diffusion_model": torch.nn.Linear(2, 2)})()

    with pytest.raises(IncompatibleModelError, match="not Anima"):
        apply.apply(NotAnima(), context, 1.0)
    with pytest.raises(IncompatibleModelError, match="28 blocks"):
        apply.apply(anima, ReferenceContext(torch.zeros(28, 4, 1024), {}), 1.0)


def _extra_nodes(*module_names):
    """Node classes of comfy_extras modules, old style (NODE_CLASS_MAPPINGS) or V3 (comfy_entrypoint)."""
    import asyncio
    import importlib

    found = {}
    for name in module_names:
        module = importlib.import_module(f"comfy_extras.{name}")
        if hasattr(module, "NODE_CLASS_MAPPINGS"):
            found.update(module.NODE_CLASS_MAPPINGS)
            continue
        extension = asyncio.run(module.comfy_entrypoint())
        found.update({node.GET_SCHEMA().node_id: node for node in asyncio.run(extension.get_node_list())})
    return found


def test_example_workflows_match_the_node_definitions(pack, comfyui):
    import nodes as comfy_nodes

    known = {**comfy_nodes.NODE_CLASS_MAPPINGS, **_extra_nodes("nodes_preview_any", "nodes_mask"), **pack.NODE_CLASS_MAPPINGS}
    workflows = sorted((REPO / "example_workflows").glob("*.json"))
    assert workflows
    for path in workflows:
        _check_workflow(json.loads(Path(path).read_text()), known, set(pack.NODE_CLASS_MAPPINGS), path.name)


def _check_workflow(workflow, known, ours, name):
    widget_types = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
    for node in workflow["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        assert node["type"] in known, f"{name}: unknown node {node['type']}"
        spec = known[node["type"]].INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        for entry in node.get("inputs", []):
            assert entry["name"] in declared, f"{name}: {node['type']} has no input {entry['name']}"
        widgets = [k for k, v in declared.items()
                   if isinstance(v[0], list) or v[0] in widget_types]
        if node["type"] in ours:
            assert len(node.get("widgets_values", [])) == len(widgets) + _control_widgets(declared), (name, node["type"])
            outputs = [out["type"] for out in node.get("outputs", [])]
            assert tuple(outputs) == known[node["type"]].RETURN_TYPES


    by_id = {node["id"]: node for node in workflow["nodes"]}
    for link_id, source, slot, target, target_slot, link_type in workflow["links"]:
        assert by_id[source]["outputs"][slot]["type"] == link_type, (name, link_id)
        assert by_id[target]["inputs"][target_slot]["link"] == link_id, (name, link_id)


def _control_widgets(declared):
    # The frontend adds a 'control after generate' widget value after every seed input.
    return sum(1 for k, v in declared.items() if k in ("seed", "noise_seed") and v[0] == "INT")


def test_save_then_load_samples_the_same_latent_and_nothing_lands_outside(pack, anima, trained, tmp_path, monkeypatch):
    import folder_paths

    from anima_context.errors import InvalidContextFileError

    contexts = tmp_path / "models" / "anima_contexts"
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "anima_contexts", ([str(contexts)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path / "output"))
    context, _, _ = trained
    save = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainSaveContext"]()
    ui = save.save(context, "hero", "anima_contexts")
    save.save(context, "hero", "output")
    assert sorted(p.name for p in contexts.iterdir()) == ["hero_00001.safetensors"]
    assert (tmp_path / "output" / "hero_00001.safetensors").is_file() and "hero_00001" in ui["ui"]["text"][0]
    load = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainLoadContext"]
    assert "hero_00001.safetensors" in load.INPUT_TYPES()["required"]["context_name"][0]
    loaded, info = load().load("hero_00001.safetensors")
    assert torch.equal(loaded.tokens, context.tokens) and "10 blocks" in info
    with pytest.raises(InvalidContextFileError):
        save.save(context, "../escape", "anima_contexts")
    with pytest.raises(InvalidContextFileError):
        load().load("../../secrets")
    assert not list(tmp_path.glob("**/escape*"))

    clip = FakeAnimaClip()
    positive, negative = clip.encode_from_tokens_scheduled("a girl"), clip.encode_from_tokens_scheduled("bad")
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()
    with torch.inference_mode():
        (in_memory,) = apply.apply(anima, context, 1.0)
        (from_file,) = apply.apply(anima, loaded, 1.0)
    assert torch.equal(_sample(in_memory, positive, negative), _sample(from_file, positive, negative))


@pytest.fixture(scope="module")
def real_clip(comfyui):
    import os

    path = os.environ.get("ANIMA_TEXT_ENCODER")
    if not path:
        pytest.skip("ANIMA_TEXT_ENCODER is not set: point it at a Qwen3-0.6B text encoder .safetensors to run the real-CLIP tests")
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_clip([path], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)


@pytest.mark.parametrize("prompt", ["", "silver hair, " * 385, "銀髪の少女、微笑み", "(silver hair:1.3), [smile], (red eyes:0.8)"],
                         ids=["empty", "5000-chars", "non-latin", "weighted"])
def test_odd_prompts_encode_to_a_finite_context_and_train(pack, anima, real_clip, prompt):
    from anima_context import comfy_glue

    dm = anima.model.diffusion_model
    with torch.inference_mode():
        context = comfy_glue.encode_prompt(real_clip, prompt, dm, torch.device("cpu"), torch.float32)
    assert context.shape[0] == 1 and context.shape[1] >= 512 and context.shape[2] == 1024
    assert bool(torch.isfinite(context).all())
    node = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainReferenceContext"]()
    with torch.inference_mode():
        trained, _, _ = node.train(anima, real_clip, FakeWanVae(), torch.rand(1, 64, 64, 3),
                                   **{**TRAIN_ARGS, "training_prompt": prompt, "training_steps": 1})
    assert bool(torch.isfinite(trained.tokens).all()) and trained.metadata["prompt"] == prompt


def test_dtype_fallbacks_on_devices_that_lack_the_dtype(comfyui, monkeypatch):
    from anima_context import comfy_glue
    from anima_context.errors import InvalidSettingError

    assert comfy_glue.resolve_dtype("float16", torch.device("cpu")) == (torch.float32, "float16 is slow on the CPU: trained in float32")
    assert comfy_glue.resolve_dtype("float32", torch.device("cpu")) == (torch.float32, "")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    dtype, note = comfy_glue.resolve_dtype("bfloat16", torch.device("cuda"))
    assert dtype == torch.float16 and "not supported on this GPU" in note
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert comfy_glue.resolve_dtype("bfloat16", torch.device("cuda")) == (torch.bfloat16, "")
    with pytest.raises(InvalidSettingError, match="training_dtype"):
        comfy_glue.resolve_dtype("int8", torch.device("cpu"))


def test_apply_to_auto_follows_how_the_context_was_trained(pack, anima, trained):
    """The default: the positive rows from 10% of sampling, at half the tokens' values for a plain context (they
    also hold the references' scene) and at full values for one trained with a mask and keep_background, through
    the sampler with CFG."""
    from anima_context.patch import AUTO_PLAIN_SCALE

    context, _, _ = trained
    held_off = type(context)(context.tokens, {**context.metadata, "masked": True, "keep_background": 1.0})
    clip = FakeAnimaClip()
    positive, negative = clip.encode_from_tokens_scheduled("a girl"), clip.encode_from_tokens_scheduled("bad")
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()
    with torch.inference_mode():
        (plain_default,) = apply.apply(anima, context, 1.0)
        (plain_scaled,) = apply.apply(anima, context, AUTO_PLAIN_SCALE, "positive", 0.1)
        (plain_full,) = apply.apply(anima, context, 1.0, "positive", 0.1)
        (held_default,) = apply.apply(anima, held_off, 1.0)
        (held_positive,) = apply.apply(anima, held_off, 1.0, "positive", 0.1)
        (held_strength,) = apply.apply(anima, held_off, 0.7)
        (held_strength_positive,) = apply.apply(anima, held_off, 0.7, "positive", 0.1)
        (plain_strength,) = apply.apply(anima, context, 0.6)  # the user's strength multiplies auto's factor
        (plain_strength_positive,) = apply.apply(anima, context, 0.6 * AUTO_PLAIN_SCALE, "positive", 0.1)
    scaled_rows, full_rows = _sample(plain_scaled, positive, negative), _sample(held_positive, positive, negative)
    assert torch.equal(_sample(plain_default, positive, negative), scaled_rows)
    assert torch.equal(_sample(held_default, positive, negative), full_rows)
    assert torch.equal(_sample(held_strength, positive, negative), _sample(held_strength_positive, positive, negative))
    assert torch.equal(_sample(plain_strength, positive, negative), _sample(plain_strength_positive, positive, negative))
    assert (_sample(plain_strength, positive, negative) - scaled_rows).abs().max() > 1e-5
    assert torch.equal(_sample(plain_full, positive, negative), full_rows)  # the same tokens: only the scale differs
    assert (scaled_rows - full_rows).abs().max() > 1e-5


def test_percent_range_and_block_selection_steer_the_context(pack, anima, trained):
    from anima_context.errors import InvalidSettingError

    context, _, _ = trained
    clip = FakeAnimaClip()
    positive, negative = clip.encode_from_tokens_scheduled("a girl"), clip.encode_from_tokens_scheduled("bad")
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()
    with torch.inference_mode():
        (never,) = apply.apply(anima, context, 1.0, "positive", 1.0, 1.0, "all")
        (no_blocks,) = apply.apply(anima, context, 1.0, "positive", 0.0, 1.0, ",".join(["0.0"] * 10))
        (some_blocks,) = apply.apply(anima, context, 1.0, "positive", 0.0, 1.0, "0-4")
        (everything,) = apply.apply(anima, context, 1.0, "positive", 0.0, 1.0, "all")
        (first_half,) = apply.apply(anima, context, 1.0, "positive", 0.0, 0.5, "all")
    plain = _sample(anima, positive, negative)
    assert torch.equal(_sample(never, positive, negative), plain)
    assert torch.equal(_sample(no_blocks, positive, negative), plain)
    full = _sample(everything, positive, negative)
    for steered in (some_blocks, first_half):
        sample = _sample(steered, positive, negative)
        assert (sample - plain).abs().max() > 1e-5 and (sample - full).abs().max() > 1e-5
    with pytest.raises(InvalidSettingError, match="blocks"):
        apply.apply(anima, context, 1.0, "positive", 0.0, 1.0, "0-40")
    with pytest.raises(InvalidSettingError, match="start_percent"):
        apply.apply(anima, context, 1.0, "positive", 0.8, 0.2, "all")


def test_masked_node_trains_weights_the_loss_and_shows_the_loss_under_the_progress_bar(pack, anima, monkeypatch):
    import sys
    import types

    import comfy.utils

    from anima_context.errors import InvalidTrainingMaskError

    sent, bar = [], []

    class FakePromptServer:
        instance = types.SimpleNamespace(send_progress_text=lambda text, node_id: sent.append((node_id, text)))

    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=FakePromptServer))
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: bar.append((value, total, node_id)))
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 80, 64, 3, generator=generator)
    mask = torch.zeros(1, 80, 64)
    mask[:, 16:64, 16:48] = 1.0
    node = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainMaskedReferenceContext"]()
    args = {**TRAIN_ARGS, "training_steps": 10}
    with torch.inference_mode():
        masked, info, plot = node.train(anima, FakeAnimaClip(), FakeWanVae(), image, training_mask=mask, unique_id="42", **args)
        plain, _, _ = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainReferenceContext"]().train(
            anima, FakeAnimaClip(), FakeWanVae(), image, **args)
    assert masked.metadata["masked"] is True and plain.metadata["masked"] is False
    assert "loss weighted by the training mask" in info and plot.shape == (1, 400, 640, 3)
    # the held-out loss is measured where the mask is: another baseline than the unmasked one, and lowered
    assert masked.metadata["heldout_loss_without"] != pytest.approx(plain.metadata["heldout_loss_without"])
    assert masked.metadata["heldout_loss_with"] < masked.metadata["heldout_loss_without"]
    assert not torch.allclose(masked.tokens, plain.tokens)
    final = masked.metadata["final_loss"]  # every step's text, the loss when read back (step 10), then done
    assert sent[:11] == [("42", "preparing: step 0/10")] + [("42", f"step {k}/10") for k in range(1, 10)] + [
        ("42", f"step 10/10\nloss {final:.4f}")]
    assert len(sent) == 12 and sent[11][1].startswith(f"done: 10 steps\nloss {final:.4f}, reference fit ")
    assert (10, 10, "42") in bar and (10, 10, None) in bar
    # the masked node holds the model outside the mask by default (keep_background); 0 trains on the mask alone
    from anima_context.trainer import DEFAULT_KEEP_BACKGROUND

    assert masked.metadata["keep_background"] == DEFAULT_KEEP_BACKGROUND and plain.metadata["keep_background"] == 0.0
    assert f"keep_background {DEFAULT_KEEP_BACKGROUND:g}" in info
    with torch.inference_mode():
        loose, loose_info, _ = node.train(anima, FakeAnimaClip(), FakeWanVae(), image, training_mask=mask,
                                          keep_background=0.0, **args)
    assert loose.metadata["keep_background"] == 0.0 and "keep_background" not in loose_info
    assert not torch.allclose(loose.tokens, masked.tokens)
    with pytest.raises(InvalidTrainingMaskError, match="all zero"), torch.inference_mode():
        node.train(anima, FakeAnimaClip(), FakeWanVae(), image, training_mask=torch.zeros(1, 80, 64), **args)
    with pytest.raises(InvalidTrainingMaskError, match="size mismatch"), torch.inference_mode():
        node.train(anima, FakeAnimaClip(), FakeWanVae(), image, training_mask=torch.ones(1, 64, 64), **args)


@pytest.mark.parametrize("width", [256, 2048])
def test_the_random_checkpoints_have_every_weight_comfyuis_detection_expects(comfyui, width):
    # The GPU check and the full-size benchmark load random_anima_state_dict(2048) through
    # UNETLoader: a block the detected model has and the file lacks stays uninitialised (NaN).
    import comfy.ldm.anima.model
    import comfy.model_detection
    import comfy.ops
    from comfy_anima import anima_dit_config

    config = {k: v for k, v in anima_dit_config(width).items() if k != "image_model"}
    meta = comfy.ldm.anima.model.Anima(**config, device="meta", operations=comfy.ops.disable_weight_init)
    state = meta.state_dict()
    detected = comfy.model_detection.detect_unet_config(state, "")
    assert detected["image_model"] == "anima"
    assert {k: detected.get(k, config.get(k)) for k in config} == config
    rebuilt = comfy.ldm.anima.model.Anima(**{k: v for k, v in detected.items() if k != "image_model"},
                                          device="meta", operations=comfy.ops.disable_weight_init)
    assert set(rebuilt.state_dict()) == set(state)


def _two_character_masks(size: int):
    """Latent 0: context A on the left; latent 1: A on the right. B on the right half below the top rows
    (overlapping A's right half in latent 1, untouched top rows)."""
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1
    right = left.flip(-1)
    lower_right = right.clone()
    lower_right[:, : size // 4] = 0
    return torch.cat([left, right]), lower_right


@pytest.mark.parametrize("attention_name", ["attention_pytorch", "attention_basic", "attention_sub_quad",
                                            "attention_split", "attention_flash"])
def test_masked_contexts_are_exact_on_comfyuis_attention_through_the_sampler(pack, anima, trained, monkeypatch, caplog,
                                                                             attention_name):
    """Two chained Apply Context nodes with masks, a latent batch of 2 and CFG (cond and uncond rows in
    one batch), sampled by ComfyUI's sampler with each of its attention functions as the server's:
    every block's cross-attention is, token by token, the model's without the contexts outside both
    masks and the unmasked contexts' inside (float32, 1e-6)."""
    import comfy.ldm.cosmos.predict2
    import comfy.ldm.modules.attention as attention
    import comfy.sample
    from region_check import CrossAttentionCalls, region_errors

    monkeypatch.setattr(comfy.ldm.cosmos.predict2, "optimized_attention", getattr(attention, attention_name))
    context, _, _ = trained
    strong = type(context)(context.tokens * 4, context.metadata)  # so that "inside" differs clearly from "outside"
    clip = FakeAnimaClip()
    positive = clip.encode_from_tokens_scheduled("2girls")
    negative = clip.encode_from_tokens_scheduled("worst quality")
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()
    mask_a, mask_b = _two_character_masks(64)
    with torch.inference_mode():
        # from the first step, whatever the defaults: the one sampling step below is the first
        (first,) = apply.apply(anima, strong, 1.0, apply_to="both", start_percent=0.0, mask=mask_a)
        (both,) = apply.apply(first, context, 1.0, apply_to="positive", start_percent=0.0, mask=mask_b)
    latent = torch.zeros(2, 16, 1, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    with CrossAttentionCalls(anima.model.diffusion_model) as calls, torch.inference_mode(), caplog.at_level("WARNING"):
        out = comfy.sample.sample(both, noise, 1, 3.0, "euler", "simple", positive, negative, latent, disable_pbar=True, seed=5)
        errors = region_errors(calls)
    assert torch.isfinite(out).all()
    batch_rows = {call[5].shape[0] for call in calls.calls}
    assert batch_rows == {4}, batch_rows  # cond and uncond of both latents in one batch
    assert errors["calls"] == 10 and errors["outside_tokens"] > 0 and errors["inside_tokens"] > 0, errors
    assert errors["outside"] <= 1e-6 and errors["inside"] <= 1e-6, errors
    # inside differs from outside: the contexts act
    call = calls.calls[-1]
    assert float((call[5] - calls.rerun(call, [])).abs().max()) > 1e-3
    # a server attention without masks (flash) is not handed one: the masked calls go through SDPA
    assert not [r for r in caplog.records if "Mask must not be set" in r.getMessage()]


def test_masked_apply_leaves_the_users_model_and_checks_the_mask_before_sampling(pack, anima, trained, caplog):

    context, _, _ = trained
    clip = FakeAnimaClip()
    positive = clip.encode_from_tokens_scheduled("a girl")
    negative = clip.encode_from_tokens_scheduled("")
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()
    before = repr(anima.model_options)
    with torch.inference_mode(), caplog.at_level("INFO"):
        (empty,) = apply.apply(anima, context, 1.0, mask=torch.zeros(1, 64, 64))
        (wide,) = apply.apply(anima, context, 1.0, mask=torch.ones(1, 32, 96))
        (three,) = apply.apply(anima, context, 1.0, mask=torch.ones(3, 64, 64))
    assert repr(anima.model_options) == before
    assert any("mask is empty" in r.getMessage() and "does nothing" in r.getMessage() for r in caplog.records)
    plain = _sample(anima, positive, negative)
    # an empty mask: as without the context (the masked cross-attention runs through SDPA, the server's is
    # sub-quadratic here: float32 rounding through ten blocks and three steps)
    assert (_sample(empty, positive, negative) - plain).abs().max() <= 1e-5 * plain.abs().max()
    caplog.clear()
    with caplog.at_level("INFO"):
        _sample(wide, positive, negative)
    notices = [r.getMessage() for r in caplog.records if "stretched" in r.getMessage()]
    assert notices == ["AnimaFastTrain: Apply Context's mask is 96x32 but the picture is 64x64; the mask is stretched to fit."]
    forwards = []
    handle = anima.model.diffusion_model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(ValueError, match="Invalid context mask: 3 masks for a latent batch of 1"):
            _sample(three, positive, negative)
    finally:
        handle.remove()
    assert forwards == []  # refused before the model ran


def test_no_mask_is_bit_identical_to_the_unmasked_apply(pack, anima, trained):
    context, _, _ = trained
    clip = FakeAnimaClip()
    positive = clip.encode_from_tokens_scheduled("a girl")
    negative = clip.encode_from_tokens_scheduled("")
    apply = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"]()
    with torch.inference_mode():
        # the settings the patch below was built with before masks existed, whatever today's defaults
        (unmasked,) = apply.apply(anima, context, 1.0, apply_to="positive", start_percent=0.0)
        (ones,) = apply.apply(anima, context, 1.0, apply_to="positive", start_percent=0.0, mask=torch.ones(1, 64, 64))
    options = unmasked.model_options["transformer_options"]
    assert "optimized_attention_override" not in options and "post_input" not in options["patches"]
    # the patch as Apply Context built it before masks existed: the same sample, bit for bit
    from anima_context.patch import ContextTokenPatch

    before = anima.clone()
    before.set_model_attn2_patch(ContextTokenPatch(context.tokens, strength=1.0, apply_to="positive"))
    assert torch.equal(_sample(unmasked, positive, negative), _sample(before, positive, negative))
    with_context = _sample(unmasked, positive, negative)
    assert (_sample(ones, positive, negative) - with_context).abs().max() <= 1e-5 * with_context.abs().max()
