import pytest
import torch
from tiny_anima import make_tiny_setup

from anima_context.activation_checkpoint import (
    blocks_to_checkpoint,
    checkpointed_blocks,
    estimated_training_bytes,
)
from anima_context.patch import ContextTokenPatch
from anima_context.trainer import _merge_patch


def _setup():
    model, denoiser, latents = make_tiny_setup(seed=5, references=2, latent_size=8, dim=64, context_dim=32, num_blocks=4)
    tokens = torch.nn.Parameter(torch.randn(model.num_blocks, 3, model.context_dim, generator=torch.Generator().manual_seed(1)))
    options = _merge_patch({}, ContextTokenPatch(tokens))
    sigma = denoiser.sigmas(torch.tensor([0.3, 0.7]))
    x_t = denoiser.add_noise(latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(2)), sigma)
    return model, denoiser, tokens, options, sigma, x_t


def _tokens_grad_and_saved_bytes(checkpointing: bool):
    """The tokens' gradient of one step, the bytes autograd saved outside the weights (as seen
    by the step's own saved-tensor hooks) and how often each block's forward ran."""
    model, denoiser, tokens, options, sigma, x_t = _setup()
    frozen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in frozen:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    calls = [0] * model.num_blocks
    handles = [block.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(model.blocks)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), checkpointed_blocks(model.blocks, checkpointing):
        loss = (denoiser.velocity(x_t, sigma, options) - x_t).square().mean()
        loss.backward()
    for handle in handles:
        handle.remove()
    return tokens.grad.clone(), sum(saved.values()), calls


def test_checkpointing_gives_the_same_token_gradients_and_saves_fewer_bytes():
    plain_grad, plain_bytes, plain_calls = _tokens_grad_and_saved_bytes(checkpointing=False)
    ckpt_grad, ckpt_bytes, ckpt_calls = _tokens_grad_and_saved_bytes(checkpointing=True)
    # Every block's tokens get a gradient, and the same one (the recompute must see its own
    # block_index, not the last block's).
    assert bool((plain_grad.abs().amax(dim=(1, 2)) > 0).all())
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=1e-5, atol=1e-7)
    assert plain_calls == [1] * 4
    assert ckpt_calls == [2] * 4, "each block runs once more in backward"
    assert ckpt_bytes < plain_bytes / 2, (ckpt_bytes, plain_bytes)


def test_forwards_are_restored_on_exit_and_on_error_and_a_foreign_wrapper_survives():
    model, *_ = _setup()
    foreign = model.blocks[1].forward  # an instance-level forward another tool installed
    model.blocks[1].forward = foreign
    with checkpointed_blocks(model.blocks):
        assert all("forward" in block.__dict__ for block in model.blocks)
        assert model.blocks[1].forward is not foreign
    assert "forward" not in model.blocks[0].__dict__
    assert model.blocks[1].forward is foreign
    with pytest.raises(RuntimeError, match="cancelled"):
        with checkpointed_blocks(model.blocks):
            raise RuntimeError("cancelled")
    assert "forward" not in model.blocks[0].__dict__ and model.blocks[1].forward is foreign


def test_without_grad_nothing_is_checkpointed_and_the_output_is_the_same():
    model, denoiser, tokens, options, sigma, x_t = _setup()
    with torch.no_grad():
        plain = denoiser.velocity(x_t, sigma, options)
        with checkpointed_blocks(model.blocks):
            checkpointed = denoiser.velocity(x_t, sigma, options)
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)


def test_auto_checkpoints_only_on_an_accelerator_short_of_memory_and_only_as_many_blocks_as_needed():
    gib = 2**30
    full = dict(width=2048, latent_tokens=(1024 // 16) ** 2, batch=3, dtype_bytes=2)  # 1024 px, 3 references
    assert blocks_to_checkpoint("on", "cpu", 28, None, **full) == 28
    assert blocks_to_checkpoint("off", "cuda", 28, gib, **full) == 0
    assert blocks_to_checkpoint("auto", "cpu", 28, gib, **full) == 0
    assert blocks_to_checkpoint("auto", "cuda", 28, 80 * gib, **full) == 0
    assert blocks_to_checkpoint("auto", "cuda", 28, gib, **full) == 28  # nothing fits: all
    some = blocks_to_checkpoint("auto", "cuda", 28, 16 * gib, **full)
    assert 0 < some < 28
    assert estimated_training_bytes(28, checkpointed_blocks=some, **full) <= 16 * gib
    assert estimated_training_bytes(28, checkpointed_blocks=some - 1, **full) > 16 * gib
    with pytest.raises(ValueError, match="activation_checkpointing"):
        blocks_to_checkpoint("sometimes", "cpu", 28, None, **full)


def test_the_estimate_fits_a_12_gb_card_at_1024_px_with_3_references_only_with_checkpointing():
    # Full Anima: 28 blocks, 2048 wide, bf16; 1024 px -> 64 x 64 latent tokens; weights ~4.2 GB.
    weights = 4.2e9
    full = dict(width=2048, latent_tokens=(1024 // 16) ** 2, batch=3, dtype_bytes=2)
    without = estimated_training_bytes(28, **full)
    with_ckpt = estimated_training_bytes(28, checkpointed_blocks=28, **full)
    assert weights + with_ckpt <= 10e9 < weights + without
    assert estimated_training_bytes(28, **{**full, "latent_tokens": 32 * 32}) < without


def test_the_recompute_redoes_each_blocks_attention_once_in_backward():
    # The whole block is recomputed: a selective policy that kept the self-attention's output ran
    # every op through a Python dispatch mode and was slower on a GPU (activation_checkpoint.py).
    from torch.utils._python_dispatch import TorchDispatchMode

    attention_ops = tuple(getattr(torch.ops.aten, name).default for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
        if hasattr(torch.ops.aten, name))

    class CountAttention(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.self_attention = self.cross_attention = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in attention_ops:
                if args[0].shape[-2] == args[1].shape[-2]:
                    self.self_attention += 1
                else:
                    self.cross_attention += 1
            return func(*args, **(kwargs or {}))

    model, denoiser, tokens, options, sigma, x_t = _setup()
    for enabled, expected in ((False, 0), (True, model.num_blocks)):
        with checkpointed_blocks(model.blocks, enabled):
            loss = denoiser.velocity(x_t, sigma, options).square().mean()
            with CountAttention() as backward:
                loss.backward()
        assert (backward.self_attention, backward.cross_attention) == (expected, expected)


def test_the_train_node_on_comfyuis_anima_trains_the_same_tokens_with_checkpointing_and_says_so(pack, comfyui):
    from comfy_anima import FakeAnimaClip, FakeWanVae, load_anima, random_anima_state_dict

    anima = load_anima(random_anima_state_dict(256))
    node = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainReferenceContext"]()
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    args = dict(training_prompt="1girl", seed=3, training_steps=2, learning_rate=0.05, training_image_size=64,
                num_tokens=4, init_std=0.5, training_dtype="float32")
    results = {}
    for setting in ("off", "on", "auto"):
        with torch.inference_mode():
            results[setting] = node.train(anima, FakeAnimaClip(), FakeWanVae(), image, **args,
                                          activation_checkpointing=setting)
    blocks = len(anima.model.diffusion_model.blocks)
    assert [results[s][0].metadata["checkpointed_blocks"] for s in ("off", "on", "auto")] == [0, blocks, 0]  # auto: CPU
    assert "activation checkpointing: on (on)" in results["on"][1]
    assert "activation checkpointing: off (auto)" in results["auto"][1]
    torch.testing.assert_close(results["on"][0].tokens, results["off"][0].tokens, rtol=1e-4, atol=1e-6)
    assert "forward" not in anima.model.diffusion_model.blocks[0].__dict__
