"""Refusing early: every setting that can be checked without running is checked by the nodes'
VALIDATE_INPUTS, before ComfyUI runs any node, with the same rule the running code applies; and the
messages stay short, with a clean error type name."""

import asyncio
import inspect

import pytest
import torch
from safetensors.torch import save_file

from anima_context import errors
from anima_context.context_file import confined_path, load_context, numbered_name
from anima_context.errors import InvalidContextFileError, InvalidSettingError, InvalidTrainingMaskError
from anima_context.images import check_training_size
from anima_context.masks import mask_loss_weights
from anima_context.patch import block_weights, check_sampling_range

TRAIN, MASKED, APPLY = "AnimaFastTrainReferenceContext", "AnimaFastTrainMaskedReferenceContext", "AnimaFastTrainApplyContext"
SAVE = "AnimaFastTrainSaveContext"
WEIGHTS_28 = ",".join(["1.0"] * 14 + ["0.5"] * 14)


def _validate(pack, name, **values):
    return pack.NODE_CLASS_MAPPINGS[name].VALIDATE_INPUTS(**values)


@pytest.mark.parametrize("values, words", [
    ({"start_percent": 0.8, "end_percent": 0.2}, "start_percent (0.8) must not be above end_percent (0.2)"),
    ({"start_percent": 1.5}, "start_percent is 1.5, outside 0.0..1.0"),  # ComfyUI skips min/max for these inputs
    ({"end_percent": -0.1}, "end_percent is -0.1, outside 0.0..1.0"),
    ({"blocks": "x"}, "blocks 'x': 'x' is not a block number or range"),
    ({"blocks": "3-1"}, "block range '3-1' is outside"),
    ({"blocks": "0-40"}, "outside the blocks of any Anima (at most 36)"),
    ({"blocks": "1.0,abc"}, "'abc' is not a number"),
    ({"blocks": ",".join(["1.0"] * 40)}, "40 weights, more than any Anima has blocks"),
])
def test_apply_context_refuses_what_no_model_can_take(pack, values, words):
    answer = _validate(pack, APPLY, **values)
    assert isinstance(answer, str) and answer.startswith("Invalid setting") and words in answer, answer
    assert len(answer) < 300


@pytest.mark.parametrize("values", [
    {}, {"start_percent": 0.0, "end_percent": 1.0, "blocks": "all"}, {"start_percent": 0.3, "end_percent": 0.3},
    {"blocks": "0-13"}, {"blocks": "0,3,5-7"}, {"blocks": " 0 - 35 "}, {"blocks": WEIGHTS_28}, {"blocks": ""},
    # a linked input reaches VALIDATE_INPUTS as None: its value is checked when the node runs
    {"start_percent": None, "end_percent": 0.1}, {"blocks": None},
])
def test_apply_context_accepts_good_and_unknown_settings(pack, values):
    assert _validate(pack, APPLY, **values) is True


@pytest.mark.parametrize("prefix", ["../evil", "a/../../evil", "/tmp/evil", "bad\x00name"])
def test_save_context_refuses_a_prefix_that_leaves_the_folder(pack, prefix, tmp_path):
    answer = _validate(pack, SAVE, filename_prefix=prefix)
    assert isinstance(answer, str) and answer.startswith("Invalid context file") and "not allowed" in answer, answer
    # the same rule refuses it when the node runs
    with pytest.raises(InvalidContextFileError):
        confined_path(tmp_path, numbered_name(prefix, 1))


@pytest.mark.parametrize("prefix", ["character", "characters/hero", "", "a..b", None])
def test_save_context_accepts_plain_prefixes(pack, prefix, tmp_path):
    assert _validate(pack, SAVE, filename_prefix=prefix) is True
    if prefix is not None:
        assert confined_path(tmp_path, numbered_name(prefix, 1)).parent.is_relative_to(tmp_path.resolve())


@pytest.mark.parametrize("name", [TRAIN, MASKED])
@pytest.mark.parametrize("size, words", [(250, "must be a multiple of 16"), (48, "outside 64..2048"), (4096, "outside 64..2048")])
def test_train_nodes_refuse_a_training_size_that_is_not_a_multiple_of_16(pack, name, size, words):
    answer = _validate(pack, name, training_image_size=size)
    assert isinstance(answer, str) and answer.startswith("Invalid setting") and words in answer, answer


@pytest.mark.parametrize("name", [TRAIN, MASKED])
@pytest.mark.parametrize("size", [64, 256, 512, 2048, None])
def test_train_nodes_accept_multiples_of_16(pack, name, size):
    assert _validate(pack, name, training_image_size=size) is True


@pytest.mark.parametrize("name", [TRAIN, MASKED, APPLY, SAVE])
def test_validate_inputs_names_only_declared_inputs_each_with_a_default(pack, name):
    """ComfyUI passes a VALIDATE_INPUTS only the inputs it names (none it does not declare), leaves
    out optional inputs that are not set, and adds one error line per named input."""
    node = pack.NODE_CLASS_MAPPINGS[name]
    spec = node.INPUT_TYPES()
    declared = {**spec["required"], **spec.get("optional", {})}
    parameters = list(inspect.signature(node.VALIDATE_INPUTS).parameters.values())
    assert parameters and all(p.name in declared and p.default is not inspect.Parameter.empty for p in parameters)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)  # **kwargs would switch off ComfyUI's checks


def test_the_running_code_applies_the_same_rules():
    with pytest.raises(InvalidSettingError, match="start_percent"):
        check_sampling_range(0.8, 0.2)
    with pytest.raises(InvalidSettingError, match="multiple of 16"):
        check_training_size(250)
    with pytest.raises(InvalidSettingError, match="outside 0..9"):
        block_weights("0-13", 10)  # fine for some Anima, not for this 10-block one
    with pytest.raises(InvalidSettingError, match="28 weights for 10 blocks"):
        block_weights(WEIGHTS_28, 10)
    assert block_weights("0,3,5-7", 10) == [1.0, 0, 0, 1.0, 0, 1.0, 1.0, 1.0, 0, 0]
    assert block_weights(WEIGHTS_28, 28)[13:15] == [1.0, 0.5]


def test_a_foreign_safetensors_is_refused_without_listing_its_tensors(tmp_path):
    path = tmp_path / "some_lora.safetensors"
    names = [f"diffusion_model.blocks.{i}.cross_attn.k_proj.lora_down.weight" for i in range(200)]
    save_file({name: torch.zeros(1) for name in names}, str(path))
    with pytest.raises(InvalidContextFileError) as caught:
        load_context(path)
    message = str(caught.value)
    assert message.startswith("Invalid context file: some_lora.safetensors holds 200 tensors")
    assert "not an AnimaFastTrain context" in message and "Save Context" in message
    assert len(message) < 400 and sum(name in message for name in names) <= 3, message


def test_long_user_text_is_shortened_in_messages(tmp_path):
    with pytest.raises(InvalidContextFileError) as caught:
        confined_path(tmp_path, "../" + "x" * 5000)
    assert len(str(caught.value)) < 300
    with pytest.raises(InvalidSettingError) as caught:
        block_weights("0-" + "9" * 5000, 28)
    assert len(str(caught.value)) < 300


def test_the_all_zero_mask_message_says_what_works():
    # Load Image's mask for a picture without transparency: 64x64 zeros (Invert Mask would make it all ones)
    with pytest.raises(InvalidTrainingMaskError) as caught:
        mask_loss_weights(torch.zeros(1, 64, 64), [(768, 768)], 32, (4, 4))
    message = str(caught.value)
    assert "all zero" in message and "without transparency" in message
    assert "cut-out PNG with a transparent background" in message and "mask editor" in message
    assert "plain Train Context Tokens node" in message and len(message) < 500


ERROR_CLASSES = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]


@pytest.mark.parametrize("error_class", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_types_have_a_clean_name_in_the_ui(error_class):
    # ComfyUI's execution.full_type_name: module + "." + qualname (a custom node's module is its folder path)
    assert f"{error_class.__module__}.{error_class.__qualname__}" == f"AnimaFastTrain.{error_class.__name__}"
    assert issubclass(error_class, errors.AnimaFastTrainError)


def test_comfyui_names_the_error_cleanly_and_refuses_the_prompt_before_running(pack, comfyui, monkeypatch):
    """ComfyUI's own validation of a prompt calls the pack's VALIDATE_INPUTS: a bad Apply Context or
    Save Context refuses the prompt with the message; linked settings and good ones pass."""
    import execution

    import nodes

    assert execution.full_type_name(InvalidSettingError) == "AnimaFastTrain.InvalidSettingError"

    class Source:  # stands for the loaders, Load Image and the train node
        RETURN_TYPES = ("MODEL", "ANIMA_REFERENCE_CONTEXT", "STRING", "CLIP", "VAE", "IMAGE")
        FUNCTION = "run"
        CATEGORY = "test"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "AnimaTestSource", Source)
    for name, node in pack.NODE_CLASS_MAPPINGS.items():
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, name, node)

    def validate(class_type, **inputs):
        prompt = {"1": {"class_type": "AnimaTestSource", "inputs": {}},
                  "2": {"class_type": class_type, "inputs": inputs}}
        return asyncio.run(execution.validate_inputs("p", prompt, "2", {}))

    apply = dict(model=["1", 0], context=["1", 1], strength=1.0, apply_to="positive")
    valid, problems, _ = validate(APPLY, **apply, start_percent=0.8, end_percent=0.2, blocks="all")
    assert not valid and {p["type"] for p in problems} == {"custom_validation_failed"}
    assert "start_percent - Invalid setting: start_percent (0.8) must not be above end_percent (0.2)" in problems[0]["details"]
    valid, problems, _ = validate(APPLY, **apply, start_percent=0.0, end_percent=1.0, blocks="0-40")
    assert not valid and "outside the blocks of any Anima" in problems[0]["details"]
    valid, problems, _ = validate(APPLY, **apply, start_percent=1.5, end_percent=1.0, blocks="all")
    assert not valid and "start_percent is 1.5, outside 0.0..1.0" in problems[0]["details"]
    assert validate(APPLY, **apply, start_percent=0.1, end_percent=0.9, blocks="0-13")[:2] == (True, [])
    assert validate(APPLY, **apply, start_percent=0.1, end_percent=0.9, blocks=["1", 2])[:2] == (True, [])  # linked
    assert validate(APPLY, **apply)[:2] == (True, [])  # optional inputs left out
    save = dict(context=["1", 1], destination="anima_contexts")
    valid, problems, _ = validate(SAVE, **save, filename_prefix="../evil")
    assert not valid and "Invalid context file" in problems[0]["details"] and len(problems) == 1
    assert validate(SAVE, **save, filename_prefix="character")[:2] == (True, [])
    train = dict(model=["1", 0], clip=["1", 3], vae=["1", 4], reference_image=["1", 5], training_prompt="girl", seed=0,
                 training_steps=10, learning_rate=0.1, num_tokens=4, init_std=0.5, training_dtype="float32")
    valid, problems, _ = validate(TRAIN, **train, training_image_size=250)
    assert not valid and "multiple of 16" in problems[0]["details"]
    # ComfyUI's own checks still apply to the inputs VALIDATE_INPUTS does not name
    valid, problems, _ = validate(TRAIN, **{**train, "training_steps": 0}, training_image_size=256)
    assert not valid and [p["type"] for p in problems] == ["value_smaller_than_min"]
