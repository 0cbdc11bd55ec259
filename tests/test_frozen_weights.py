import torch

from anima_context.frozen_weights import autograd_safe_weights


def _inference_model():
    with torch.inference_mode():
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
        model.register_buffer("scale", torch.full((2,), 3.0))
    return model


def test_inference_weights_fail_without_and_work_within_without_copying():
    model = _inference_model()
    x = torch.randn(3, 4, requires_grad=True)
    try:
        (model(x) * model.scale).sum().backward()
        raised = False
    except RuntimeError as error:
        raised = "Inference tensors" in str(error)
    assert raised

    originals = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    with autograd_safe_weights(model) as swapped:
        assert swapped == 7  # six parameters (three weight/bias pairs) and one buffer
        for name, p in model.named_parameters():
            assert p.data_ptr() == originals[name][1]  # an alias, not a copy
            assert not p.requires_grad and not p.is_inference()
        x.grad = None
        (model(x) * model.scale).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p is originals[name][0] and p.is_inference()  # the originals are back
    assert model.scale.is_inference()


def test_trainable_weights_are_frozen_for_the_block_and_restored():
    model = torch.nn.Linear(3, 3)
    with autograd_safe_weights(model):
        assert not model.weight.requires_grad
        x = torch.randn(2, 3, requires_grad=True)
        model(x).sum().backward()
        assert model.weight.grad is None
    assert model.weight.requires_grad and model.bias.requires_grad


def test_weights_are_restored_when_the_block_raises():
    model = _inference_model()
    before = [p for p in model.parameters()]
    try:
        with autograd_safe_weights(model):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert [p for p in model.parameters()] == before


def test_aliases_keep_every_attribute_of_the_original():
    # ComfyUI's DynamicVRAM reads ``_model_dtype`` from the parameter to size its cast of an fp8 weight.
    model = _inference_model()
    model[0].weight._model_dtype = torch.float8_e4m3fn
    model[0].weight.seed_key = "0.weight"
    model.scale._comfy_tag = "buffer"
    with autograd_safe_weights(model):
        assert not model[0].weight.is_inference()
        assert model[0].weight._model_dtype == torch.float8_e4m3fn and model[0].weight.seed_key == "0.weight"
        assert model.scale._comfy_tag == "buffer"
    assert model[0].weight._model_dtype == torch.float8_e4m3fn
