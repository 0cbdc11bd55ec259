import pytest
import torch

from anima_context.context import ReferenceContext
from anima_context.errors import IncompatibleModelError

TRAIN, APPLY = "AnimaFastTrainReferenceContext", "AnimaFastTrainApplyContext"
MASKED = "AnimaFastTrainMaskedReferenceContext"
SAVE, LOAD = "AnimaFastTrainSaveContext", "AnimaFastTrainLoadContext"


def _inputs(node_class):
    spec = node_class.INPUT_TYPES()
    return {**spec["required"], **spec.get("optional", {})}


def test_mappings_and_display_names(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == {TRAIN, MASKED, APPLY, SAVE, LOAD}
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert all(getattr(node, "DESCRIPTION", "") for node in pack.NODE_CLASS_MAPPINGS.values())
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[TRAIN] == "AnimaFastTrain - Train Context Tokens"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[APPLY] == "AnimaFastTrain - Apply Context"
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[MASKED] == "AnimaFastTrain - MaskTrain Context Tokens"


def test_train_node_declares_the_issue_inputs_and_outputs(pack):
    node = pack.NODE_CLASS_MAPPINGS[TRAIN]
    spec = node.INPUT_TYPES()
    assert list(spec["required"]) == ["model", "clip", "vae", "reference_image", "training_prompt", "seed",
                                      "training_steps", "learning_rate", "training_image_size", "num_tokens",
                                      "init_std", "training_dtype"]
    assert list(spec["optional"]) == ["reference_image_2", "reference_image_3"]
    assert node.RETURN_TYPES == ("ANIMA_REFERENCE_CONTEXT", "STRING", "IMAGE")
    assert node.RETURN_NAMES == ("AnimaReferenceContext", "info", "loss_plot")
    assert len(node.OUTPUT_TOOLTIPS) == 3
    assert spec["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert spec["required"]["training_image_size"][1]["step"] == 16
    assert spec["required"]["training_dtype"][0] == ["bfloat16", "float16", "float32"]
    assert spec["required"]["training_prompt"][1]["multiline"] is True
    assert node.CATEGORY == "AnimaFastTrain"


def test_masked_node_has_the_same_inputs_plus_a_mask_and_the_same_outputs(pack):
    plain, masked = pack.NODE_CLASS_MAPPINGS[TRAIN], pack.NODE_CLASS_MAPPINGS[MASKED]
    plain_spec, masked_spec = plain.INPUT_TYPES(), masked.INPUT_TYPES()
    names = list(masked_spec["required"])
    assert names.pop(names.index("training_mask")) == "training_mask"
    assert names == list(plain_spec["required"])
    assert masked_spec["required"]["training_mask"][0] == "MASK"
    assert masked_spec["optional"] == plain_spec["optional"] and masked_spec["hidden"] == plain_spec["hidden"]
    assert (masked.RETURN_TYPES, masked.RETURN_NAMES) == (plain.RETURN_TYPES, plain.RETURN_NAMES)
    assert masked.DESCRIPTION != plain.DESCRIPTION and "mask" in masked.DESCRIPTION


@pytest.mark.parametrize("name", [TRAIN, MASKED, APPLY, SAVE])  # Load lists ComfyUI's folder: integration tests
def test_every_input_has_a_tooltip_and_numbers_have_sane_ranges(pack, name):
    for input_name, entry in _inputs(pack.NODE_CLASS_MAPPINGS[name]).items():
        options = entry[1]
        assert options.get("tooltip"), input_name
        if entry[0] in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], input_name


def test_train_node_passes_parsed_inputs_to_the_core(pack, monkeypatch):
    calls = {}

    class FakeGlue:
        @staticmethod
        def train_reference_context(model, clip, vae, images, prompt, **kwargs):
            calls.update(images=images, prompt=prompt, **kwargs)
            return "CTX", "INFO", "PLOT"

    monkeypatch.setattr(pack.nodes, "_glue", lambda: FakeGlue)
    image = torch.rand(1, 32, 32, 3)
    out = pack.NODE_CLASS_MAPPINGS[TRAIN]().train("m", "c", "v", image, "girl", 5, 10, 0.01, 256, 8, 0.1, "float32",
                                                   reference_image_3=image, unique_id="12")
    assert out == ("CTX", "INFO", "PLOT")
    assert calls["images"]["reference_image"] is image and calls["images"]["reference_image_2"] is None
    assert calls["images"]["reference_image_3"] is image
    assert (calls["seed"], calls["steps"], calls["image_size"], calls["dtype_name"]) == (5, 10, 256, "float32")
    assert calls["masks"] is None and calls["node_id"] == "12"
    mask = torch.ones(1, 32, 32)
    pack.NODE_CLASS_MAPPINGS[MASKED]().train("m", "c", "v", image, "girl", 5, 10, 0.01, 256, 8, 0.1, "float32",
                                             training_mask=mask)
    assert calls["masks"] is mask


def test_context_refuses_a_model_of_another_shape():
    context = ReferenceContext(torch.zeros(10, 4, 1024), {})
    context.check_compatible(10, 1024)
    with pytest.raises(IncompatibleModelError) as caught:
        context.check_compatible(28, 1024)
    assert str(caught.value).startswith("Incompatible model architecture")
    assert "10 blocks" in str(caught.value) and "28 blocks" in str(caught.value)
