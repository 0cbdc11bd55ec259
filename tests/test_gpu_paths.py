"""The train node on ComfyUI's GPU memory paths, on a CPU (issue 9's table). ComfyUI's real
``ops.py``, ``model_patcher.py`` and ``model_management.py`` run on the small random-weight Anima;
``aimdo_standins`` replaces only what a CPU lacks (comfy_aimdo's raw memory, CUDA streams, a second
device). Each row trains through ``train_reference_context`` and compares the tokens' gradient of
its first forward/backward (captured inside the node's training context) with a reference: the
same weights as plain fp32 tensors, no ComfyUI memory tricks. Needs COMFYUI_PATH; skips without."""

from __future__ import annotations

import logging

import aimdo_standins
import pytest
import torch
from comfy_anima import FakeAnimaClip, FakeWanVae, fp8_comfy_quant_state_dict, load_anima_file, random_anima_state_dict

NUM_BLOCKS, NUM_TOKENS, WIDTH = 10, 4, 1024
TRAIN = dict(prompt="a girl with silver hair", seed=7, steps=1, learning_rate=0.05, image_size=64,
             num_tokens=NUM_TOKENS, init_std=0.5, dtype_name="float32")


@pytest.fixture(scope="module")
def state(comfyui):
    return random_anima_state_dict(256)


@pytest.fixture(autouse=True)
def _unload(comfyui):
    yield
    import comfy.model_management

    comfy.model_management.unload_all_models()


class GradientProbe:
    """Stands in for ``train_tokens`` inside ``train_reference_context``: one forward/backward of
    fixed tokens with the node's denoiser, options and weight path (``between`` runs after the
    forward), then the real ``train_tokens``."""

    def __init__(self, real_train_tokens, between=None, before=None, keep_background=None):
        self.real, self.between, self.before = real_train_tokens, between, before
        generator = torch.Generator().manual_seed(11)
        self.tokens = torch.randn(NUM_BLOCKS, NUM_TOKENS, WIDTH, generator=generator) * 0.5
        self.x = torch.randn(1, 16, 1, 8, 8, generator=generator)
        self.sigma = torch.tensor([0.7])
        self.gradient = self.context = None
        self.keep_background = keep_background  # a weight: the masked node's loss (with it, a forward without the tokens)
        self.noise = torch.randn(self.x.shape, generator=generator)
        self.mask = torch.zeros(1, 1, 1, 8, 8)
        self.mask[..., 2:6, 3:7] = 1.0

    def loss(self, denoiser, options, base_options):
        if self.keep_background is None:
            return denoiser.velocity(self.x, self.sigma, options).pow(2).mean()
        from anima_context.trainer import _anchored_flow_loss, normalized_loss_weights, outside_loss_weights

        return _anchored_flow_loss(denoiser, self.x, self.noise, self.sigma, options, base_options, torch.float32,
                                   normalized_loss_weights(self.mask, self.x), outside_loss_weights(self.mask, self.x),
                                   self.keep_background)

    def __call__(self, denoiser, latents, settings, transformer_options=None, **kwargs):
        from anima_context.patch import ContextTokenPatch

        tokens = self.tokens.clone().requires_grad_(True)
        options = dict(transformer_options or {})
        patches = dict(options.get("patches", {}))
        patches["attn2_patch"] = [*patches.get("attn2_patch", []), ContextTokenPatch(tokens)]
        options["patches"] = patches
        if self.before is not None:
            self.before()
        loss = self.loss(denoiser, options, dict(transformer_options or {}))
        if self.between is not None:
            self.between()
        loss.backward()
        self.gradient, self.context = tokens.grad.clone(), denoiser.context.detach().clone()
        return self.real(denoiser, latents, settings, transformer_options=transformer_options, **kwargs)


def _train(model, monkeypatch, between=None, before=None, keep_background=None):
    from anima_context.comfy_glue import training

    probe = GradientProbe(training.train_tokens, between, before, keep_background)
    monkeypatch.setattr(training, "train_tokens", probe)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():  # as in a prompt
        context, _, _ = training.train_reference_context(model, FakeAnimaClip(), FakeWanVae(),
                                                         {"reference_image": image}, **TRAIN)
    assert bool(torch.isfinite(context.tokens).all())
    return probe


def reference_gradient(weights: dict, probe: GradientProbe) -> torch.Tensor:
    """The probe's gradient with ``weights`` as plain fp32 tensors in a plain ModelPatcher."""
    import comfy.sd

    from anima_context.comfy_glue import ComfyAnimaDenoiser, _training_mode
    from anima_context.patch import ContextTokenPatch

    with torch.inference_mode(False):
        plain = comfy.sd.load_diffusion_model_state_dict({k: v.float() for k, v in weights.items()})
        tokens = probe.tokens.clone().requires_grad_(True)
        denoiser = ComfyAnimaDenoiser(plain, probe.context, NUM_BLOCKS, WIDTH)
        base = {"optimized_attention_override": _pytorch_attention}
        options = {"patches": {"attn2_patch": [ContextTokenPatch(tokens)]}, **base}
        with _training_mode():
            probe.loss(denoiser, options, base).backward()
    return tokens.grad


def _pytorch_attention(func, *args, **kwargs):
    import comfy.ldm.modules.attention

    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


def assert_same_gradient(gradient, reference, tolerance=1e-3):
    assert gradient is not None and bool(torch.isfinite(gradient).all()), "no finite gradient"
    error = float((gradient - reference).norm() / reference.norm())
    assert error < tolerance, f"relative gradient error {error:.3g}"
    per_block = gradient.abs().sum(dim=(1, 2))
    assert bool((per_block > 0).all()), per_block


def _sample(model, seed=3):
    import comfy.sample

    clip = FakeAnimaClip()
    positive, negative = clip.encode_from_tokens_scheduled("a girl"), clip.encode_from_tokens_scheduled("bad")
    latent = torch.zeros(1, 16, 1, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, 2, 3.0, "euler", "simple", positive, negative, latent,
                                   disable_pbar=True, seed=seed)


def _plain(state, model_options=None):
    """UNETLoader's MODEL without DynamicVRAM (a CPU load device: ComfyUI's own paths, no stand-ins)."""
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_diffusion_model_state_dict(dict(state), model_options=model_options or {})


def _dynamic(state, monkeypatch, model_options=None, **standins):
    import comfy.model_patcher

    aimdo_standins.install(monkeypatch, **standins)
    model = aimdo_standins.unet_loader(state, model_options)
    assert isinstance(model, comfy.model_patcher.ModelPatcherDynamic)
    return model


def test_dynamic_vram_sampled_then_trained_then_sampled_again(state, monkeypatch):
    """Weights made resident by an inference-mode sample are reused (``s._v_weight``) by the
    clone: they must not reach autograd. Sampling afterwards gives the same latent."""
    model = _dynamic(state, monkeypatch)
    before = _sample(model)
    assert any(vbar.pages for vbar in aimdo_standins.StandInVBAR.instances), "the vbar path was not taken"
    probe = _train(model, monkeypatch)
    assert_same_gradient(probe.gradient, reference_gradient(state, probe))
    assert torch.equal(_sample(model), before)


def test_dynamic_vram_under_pressure_reuses_cast_buffers(state, monkeypatch):
    """No vbar page fits: every weight is cast into the stream's buffer from offset 0, so block
    i's weight is overwritten by block i+2's before backward."""
    model = _dynamic(state, monkeypatch, pressure=True)
    probe = _train(model, monkeypatch)
    assert_same_gradient(probe.gradient, reference_gradient(state, probe))


def test_dynamic_vram_page_evicted_between_forward_and_backward(state, monkeypatch):
    model = _dynamic(state, monkeypatch)
    probe = _train(model, monkeypatch, between=aimdo_standins.evict_all)
    assert any(vbar.pages for vbar in aimdo_standins.StandInVBAR.instances), "the vbar path was not taken"
    assert_same_gradient(probe.gradient, reference_gradient(state, probe))


def test_dynamic_vram_under_pressure_keep_background_gradient(state, monkeypatch):
    """The masked node's keep_background runs the model once more, without the tokens, in every step: under
    pressure that forward also casts into the shared buffers. The gradient must still be the plain model's."""
    model = _dynamic(state, monkeypatch, pressure=True)
    probe = _train(model, monkeypatch, keep_background=1.0)
    reference = reference_gradient(state, probe)
    assert_same_gradient(probe.gradient, reference)
    # the term is in it: the same draw on the mask alone gives another gradient
    probe.keep_background = 0.0
    assert float((reference - reference_gradient(state, probe)).norm()) > 1e-3 * float(reference.norm())


def _fp8(weights: dict) -> dict:
    """The weights as ComfyUI holds them with ``weight_dtype`` fp8 (2-D and larger: the linears)."""
    return {k: v.to(torch.float8_e4m3fn).float() if v.ndim >= 2 else v for k, v in weights.items()}


def test_dynamic_vram_fp8_weight_dtype(state, monkeypatch):
    """UNETLoader ``weight_dtype`` fp8 under DynamicVRAM: the file's tensors stay as they are and
    the vbar holds them in fp8, sized by the parameter's ``_model_dtype``. (This one also passes
    before the fix: the stand-in host parameters are a Parameter subclass, which the old aliasing
    skipped; the next test puts a plain parameter through it, as on a card.)"""
    model = _dynamic(state, monkeypatch, {"dtype": torch.float8_e4m3fn})
    probe = _train(model, monkeypatch)
    linear = model.model.diffusion_model.blocks[0].mlp.layer1
    assert linear.weight._model_dtype == torch.float8_e4m3fn and linear.weight.dtype == torch.float32
    assert_same_gradient(probe.gradient, reference_gradient(_fp8(state), probe))


def test_aliased_weights_keep_the_cast_geometry_dynamic_vram_sized(state, monkeypatch):
    """The vbar slot of an fp8 ``weight_dtype`` module is sized from ``_model_dtype``; the weight
    autograd may use must give ComfyUI the same geometry, or the cast fails with 'Buffer too small'.
    (The parameters in the other tests report the host device, so the old aliasing skipped them;
    on a card it aliased them. Here the plain parameters go through the real aliasing.)"""
    import comfy.memory_management

    from anima_context.frozen_weights import autograd_safe_weights

    model = _dynamic(state, monkeypatch, {"dtype": torch.float8_e4m3fn})
    with torch.inference_mode():
        model.patch_model(load_weights=False)
        model.load(aimdo_standins.LOAD_DEVICE)
    linear = model.model.diffusion_model.blocks[0].mlp.layer1
    with torch.inference_mode():  # a plain inference parameter, as on a card
        plain = torch.nn.Parameter(linear.weight.data.clone(), requires_grad=False)
    plain._model_dtype = linear.weight._model_dtype
    monkeypatch.setitem(linear._parameters, "weight", plain)
    slot = comfy.memory_management.vram_aligned_size(comfy.memory_management.tensors_to_geometries([linear.weight, linear.bias]))
    with torch.inference_mode(False), autograd_safe_weights(model.model.diffusion_model):
        geometry = comfy.memory_management.tensors_to_geometries([linear.weight, linear.bias])
        assert linear.weight is not plain  # aliased
        comfy.memory_management.interpret_gathered_like(geometry, torch.empty(slot, dtype=torch.uint8))
    assert linear.weight is plain


def test_fp8_comfy_quant_checkpoint_with_the_fp8_path_forced(state, monkeypatch, tmp_path):
    """On an fp8-capable card an input that requires grad goes to ``QuantLinearFunc``, which saves
    the quantized inference weight; training must take the dequantising path."""
    import comfy.model_management
    import comfy.quant_ops

    monkeypatch.setattr(comfy.model_management, "supports_fp8_compute", lambda *args, **kwargs: True)
    quantized, dequantized = fp8_comfy_quant_state_dict(state)
    model = load_anima_file(quantized, tmp_path / "anima_fp8_comfy_quant.safetensors")  # as UNETLoader
    linear = model.model.diffusion_model.blocks[0].mlp.layer1
    assert isinstance(linear.weight, comfy.quant_ops.QuantizedTensor) and not linear._full_precision_mm
    probe = _train(model, monkeypatch)
    assert_same_gradient(probe.gradient, reference_gradient(dequantized, probe))
    assert linear.__dict__.get("comfy_force_cast_weights", False) is False  # restored


def test_fp8_e4m3fn_fast_forced_trains_without_log_spam(state, monkeypatch, caplog):
    """``weight_dtype`` fp8_e4m3fn_fast on an fp8-capable card: ``fp8_linear`` clamps its input in
    place, which fails (and is logged, per op) on an input that requires grad."""
    import comfy.model_management

    monkeypatch.setattr(comfy.model_management, "supports_fp8_compute", lambda *args, **kwargs: True)
    model = _plain(state, {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True})
    assert type(model.model.diffusion_model.blocks[0].mlp.layer1).__qualname__.startswith("fp8_ops")
    with caplog.at_level(logging.INFO):
        probe = _train(model, monkeypatch, before=caplog.clear)
        spam = [r for r in caplog.records if "Exception during fp8 op" in r.getMessage()]
    assert not spam, f"{len(spam)} log lines, e.g. {spam[0].getMessage()}"
    assert_same_gradient(probe.gradient, reference_gradient(_fp8(state), probe))


@pytest.fixture
def flash_attention_without_backward(comfyui, monkeypatch):
    """The server's attention replaced by a kernel with no autograd formula, as
    ``--use-flash-attention`` does (a ``torch.library.custom_op``)."""
    import comfy.ldm.cosmos.predict2
    import comfy.ldm.modules.attention as attention

    @torch.library.custom_op("anima_context_tests::flash_standin", mutates_args=())
    def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    @flash.register_fake
    def _(q, k, v):
        return torch.empty_like(q)

    @attention.wrap_attn
    def attention_flash_standin(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                                skip_output_reshape=False, **kwargs):
        if not skip_reshape:
            q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = flash(q, k, v)
        return out if skip_output_reshape else out.transpose(1, 2).flatten(-2)

    monkeypatch.setattr(attention, "optimized_attention", attention_flash_standin)
    monkeypatch.setattr(comfy.ldm.cosmos.predict2, "optimized_attention", attention_flash_standin)
    return attention_flash_standin


def test_flash_attention_without_backward_as_the_servers_attention(state, monkeypatch, flash_attention_without_backward):
    model = _plain(state)
    before = _sample(model)  # sampling uses the server's attention
    probe = _train(model, monkeypatch)
    assert_same_gradient(probe.gradient, reference_gradient(state, probe))
    assert torch.equal(_sample(model), before)


def test_novram_per_op_casting_into_shared_cast_buffers(state, monkeypatch):
    """``--novram --disable-cuda-malloc``: no DynamicVRAM, every weight cast per op into a view of
    the offload stream's shared cast buffer (ComfyUI's ``get_cast_buffer``). Before the fix the
    gradient came out silently wrong here (on a GPU the issue saw "modified by an inplace
    operation"): either way the weight autograd saved was overwritten by a later op's."""
    import comfy.cli_args
    import comfy.model_management as mm
    import comfy.sd

    aimdo_standins.install(monkeypatch)
    monkeypatch.setattr(comfy.cli_args.args, "cuda_malloc", False)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    real_is_cpu = mm.is_device_cpu
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False if device == aimdo_standins.LOAD_DEVICE else real_is_cpu(device))
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model_state_dict(
            dict(state), model_options={"load_device": aimdo_standins.LOAD_DEVICE, "offload_device": aimdo_standins.HOST},
            disable_dynamic=True)
    aimdo_standins.offload_to_host(model)
    probe = _train(model, monkeypatch)
    assert mm.STREAM_CAST_BUFFERS, "the shared cast buffers were not used"
    assert_same_gradient(probe.gradient, reference_gradient(state, probe))


def test_small_card_the_prompt_is_encoded_before_the_dit_is_loaded(state, monkeypatch):
    """On a small card, loading the text encoder after the DiT may unload part of the DiT."""
    import comfy.model_management

    events = []
    real_load = comfy.model_management.load_models_gpu

    def load_models_gpu(models, *args, **kwargs):
        events.append(("load", type(models[0].model).__name__))
        return real_load(models, *args, **kwargs)

    class RecordingClip(FakeAnimaClip):
        def encode_from_tokens_scheduled(self, tokens):
            events.append(("text encoder", None))
            return super().encode_from_tokens_scheduled(tokens)

    from anima_context.comfy_glue import training

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", load_models_gpu)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        training.train_reference_context(_plain(state), RecordingClip(), FakeWanVae(), {"reference_image": image},
                                         **{**TRAIN, "steps": 1})
    assert events.index(("text encoder", None)) < events.index(("load", "Anima")), events


@pytest.mark.parametrize("pressure", [False, True], ids=["vbar", "cast_buffers"])
def test_masked_contexts_are_exact_under_dynamic_vram(state, monkeypatch, pressure):
    """Two masked contexts sampled by ComfyUI's sampler on the DynamicVRAM path (weights in vbar pages, or
    every weight cast into the stream's buffer): every block's cross-attention is the model's without them
    outside both masks and theirs unmasked inside."""
    from region_check import CrossAttentionCalls, region_errors

    from anima_context.comfy_glue.sampling import apply_reference_context
    from anima_context.context import ReferenceContext

    model = _dynamic(state, monkeypatch, pressure=pressure)
    generator = torch.Generator().manual_seed(5)
    first, second = (ReferenceContext(torch.randn(NUM_BLOCKS, NUM_TOKENS, WIDTH, generator=generator) * 2, {}) for _ in range(2))
    left = torch.zeros(1, 64, 64)
    left[:, 32:, :32] = 1  # the lower half's left and right quarters; the upper half belongs to neither
    with torch.inference_mode():
        both = apply_reference_context(apply_reference_context(model, first, 1.0, "positive", mask=left),
                                       second, 1.0, "positive", mask=left.flip(-1))
    with CrossAttentionCalls(model.model.diffusion_model) as calls:
        _sample(both)
        errors = region_errors(calls)
    if not pressure:
        assert any(vbar.pages for vbar in aimdo_standins.StandInVBAR.instances), "the vbar path was not taken"
    assert errors["calls"] == 2 * NUM_BLOCKS and errors["outside_tokens"] > 0 and errors["inside_tokens"] > 0
    assert errors["outside"] <= 1e-6 * max(1.0, errors["scale"]) and errors["inside"] <= 1e-6 * max(1.0, errors["scale"]), errors
