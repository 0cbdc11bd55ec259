import math

import pytest
import torch

from anima_context import cli
from anima_context.context import ReferenceContext
from anima_context.errors import IncompatibleModelError
from anima_context.trainer import DEFAULT_KEEP_BACKGROUND

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
    assert list(spec["optional"]) == ["reference_image_2", "reference_image_3", "activation_checkpointing"]
    assert node.RETURN_TYPES == ("ANIMA_REFERENCE_CONTEXT", "STRING", "IMAGE")
    assert node.RETURN_NAMES == ("AnimaReferenceContext", "info", "loss_plot")
    assert len(node.OUTPUT_TOOLTIPS) == 3
    assert spec["hidden"] == {"unique_id": "UNIQUE_ID"}
    assert spec["required"]["training_image_size"][1]["step"] == 16
    # a seed the frontend randomises after each queue would retrain every time: ComfyUI caches on the inputs
    assert spec["required"]["seed"][1]["control_after_generate"] == "fixed"
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
    # and keep_background, last among the optional inputs so old workflows' widget values stay in place
    assert list(masked_spec["optional"]) == [*plain_spec["optional"], "keep_background"]
    assert {k: masked_spec["optional"][k] for k in plain_spec["optional"]} == plain_spec["optional"]
    assert masked_spec["optional"]["keep_background"][1]["default"] == DEFAULT_KEEP_BACKGROUND > 0
    assert masked_spec["hidden"] == plain_spec["hidden"]
    # fewer tokens than the plain node (README, The defaults, measured); the command line mirrors both nodes
    plain_tokens, masked_tokens = (spec["required"]["num_tokens"][1]["default"] for spec in (plain_spec, masked_spec))
    assert (plain_tokens, masked_tokens) == (32, 16)
    parse = cli.build_parser().parse_args
    assert cli.num_tokens_for(parse(["train", "--image", "a.png", "--out", "c"])) == plain_tokens
    assert cli.num_tokens_for(parse(["train", "--image", "a.png", "--mask", "m.png", "--out", "c"])) == masked_tokens
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
    assert calls["masks"] is None and calls["node_id"] == "12" and calls["keep_background"] == 0.0
    mask = torch.ones(1, 32, 32)
    pack.NODE_CLASS_MAPPINGS[MASKED]().train("m", "c", "v", image, "girl", 5, 10, 0.01, 256, 8, 0.1, "float32",
                                             training_mask=mask)
    # an API prompt without keep_background (from before it) gets the masked node's default
    assert calls["masks"] is mask and calls["keep_background"] == DEFAULT_KEEP_BACKGROUND
    pack.NODE_CLASS_MAPPINGS[MASKED]().train("m", "c", "v", image, "girl", 5, 10, 0.01, 256, 8, 0.1, "float32",
                                             training_mask=mask, keep_background=0.0)
    assert calls["keep_background"] == 0.0


def test_context_refuses_a_model_of_another_shape():
    context = ReferenceContext(torch.zeros(10, 4, 1024), {})
    context.check_compatible(10, 1024)
    with pytest.raises(IncompatibleModelError) as caught:
        context.check_compatible(28, 1024)
    assert str(caught.value).startswith("Incompatible model architecture")
    assert "10 blocks" in str(caught.value) and "28 blocks" in str(caught.value)


# The frontend's node search (comfyui_frontend_package, NodeSearchService): Fuse.js over name,
# display_name and every search alias, threshold 0.3, extended search (every word of the query must
# match in the same string), default location 0 and distance 100. An exact match of a word at
# index i scores i / 100: a word found within the first 30 characters of one string surely matches.
def _search_finds(query: str, strings: list[str]) -> bool:
    words = query.lower().split()
    return any(all(0 <= string.lower().find(word) <= 30 for word in words) for string in strings)


def _searchable(pack, name):
    return [name, pack.NODE_DISPLAY_NAME_MAPPINGS[name], *getattr(pack.NODE_CLASS_MAPPINGS[name], "SEARCH_ALIASES", [])]


SEARCH_WORDS = {
    TRAIN: ["train context tokens", "Train Context Tokens", "context tokens", "tokens", "character", "identity", "reference"],
    MASKED: ["mask train", "MaskTrain", "train context tokens", "context tokens", "character", "identity", "reference"],
    APPLY: ["apply context"],
    SAVE: ["save context"],
    LOAD: ["load context"],
}


@pytest.mark.parametrize("name", list(SEARCH_WORDS))
def test_the_node_search_finds_every_node_by_the_words_users_type(pack, name):
    strings = _searchable(pack, name)
    for query in SEARCH_WORDS[name]:
        assert _search_finds(query, strings), (query, strings)
    aliases = pack.NODE_CLASS_MAPPINGS[name].SEARCH_ALIASES
    assert aliases == [alias.lower() for alias in aliases] and len(set(aliases)) == len(aliases)


def test_the_search_model_reproduces_the_display_name_miss(pack):
    # without aliases, "tokens" sits at index 31 of "AnimaFastTrain - Train Context Tokens": no match
    assert not _search_finds("tokens", [TRAIN, pack.NODE_DISPLAY_NAME_MAPPINGS[TRAIN]])
    assert _search_finds("train context", [pack.NODE_DISPLAY_NAME_MAPPINGS[TRAIN]])
    assert not _search_finds("save context", _searchable(pack, TRAIN))


def test_save_context_returns_the_file_name_and_shows_it(pack, monkeypatch):
    calls = []

    class FakeGlue:
        @staticmethod
        def save_reference_context(context, prefix, destination):
            calls.append((context, prefix, destination))
            return "character_00003.safetensors"

    monkeypatch.setattr(pack.nodes, "_glue", lambda: FakeGlue)
    node = pack.NODE_CLASS_MAPPINGS[SAVE]
    assert node.OUTPUT_NODE is True and node.RETURN_TYPES == ("STRING",) and node.RETURN_NAMES == ("filename",)
    out = node().save("CTX", "character", "anima_contexts")
    assert out == {"ui": {"text": ["saved character_00003.safetensors in models/anima_contexts"]},
                   "result": ("character_00003.safetensors",)}
    assert node().save("CTX", "x", "output")["ui"]["text"] == ["saved character_00003.safetensors in the output folder"]
    assert calls[0] == ("CTX", "character", "anima_contexts")


def test_the_web_extension_shows_save_contexts_text(pack):
    from conftest import REPO

    assert pack.WEB_DIRECTORY == "./web"
    (script,) = (REPO / "web").glob("*.js")
    source = script.read_text()
    # registered for Save Context, drawn when the node has run, read-only and not saved with the workflow
    for words in ('"AnimaFastTrainSaveContext"', "onExecuted", "message?.text", "readOnly = true", "serialize: false",
                  'from "../../scripts/app.js"'):
        assert words in source, words


def _frontend_precision(step: float) -> int:
    # useFloatWidget: decimals shown = max(0, -floor(log10(step))); an arrow click adds one step
    return max(0, -math.floor(math.log10(step)))


def test_learning_rate_shows_sensible_decimals_and_steps(pack):
    options = _inputs(pack.NODE_CLASS_MAPPINGS[TRAIN])["learning_rate"][1]
    decimals = _frontend_precision(options["step"])
    assert f"{options['default']:.{decimals}f}" == "0.100"
    assert 0.01 <= options["step"] / options["default"] <= 0.1  # one click: a change that matters, not a jump
    # the value is rounded to "round", then cut to the shown decimals: a finer round would be lost
    assert options["round"] >= 10 ** -decimals and f"{options['min']:.{decimals}f}" != "0.000"


@pytest.mark.parametrize("name", [TRAIN, MASKED, APPLY, SAVE])
def test_number_inputs_show_their_ends_and_default_exactly(pack, name):
    for input_name, entry in _inputs(pack.NODE_CLASS_MAPPINGS[name]).items():
        if entry[0] != "FLOAT":
            continue
        options = entry[1]
        decimals = _frontend_precision(options["step"])
        for value in (options["min"], options["default"], options["max"]):
            assert float(f"{value:.{decimals}f}") == value, (input_name, value)


def test_training_size_range_is_valid_at_both_ends(pack):
    from anima_context.context_file import LIMITS
    from anima_context.images import check_training_size

    spec = _inputs(pack.NODE_CLASS_MAPPINGS[TRAIN])
    size = spec["training_image_size"][1]
    assert check_training_size(size["min"]) and check_training_size(size["max"]) and size["step"] == 16
    assert spec["num_tokens"][1]["max"] <= LIMITS["num_tokens"]  # a context Load Context can read back


def test_progress_text_counts_every_step_and_ends_with_cancelled_or_done(pack, comfyui, monkeypatch):
    """The text under the bar: replaced as soon as a run starts, `step k/N` at every step with the last
    loss read back (every 10 steps), then "cancelled" (the interruption) or "done"."""
    import sys
    import types

    import comfy.model_management
    from comfy_anima import FakeAnimaClip, FakeWanVae, load_anima, random_anima_state_dict

    sent = []

    class FakePromptServer:
        instance = types.SimpleNamespace(send_progress_text=lambda text, node_id: sent.append((node_id, text)))

    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=FakePromptServer))
    anima, glue = load_anima(random_anima_state_dict(256)), pack.nodes._glue()
    images = {"reference_image": torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))}
    args = dict(seed=1, steps=12, learning_rate=0.05, image_size=64, num_tokens=4, init_std=0.5, dtype_name="float32",
                node_id="7")

    def cancel_after_step_3(done, total, loss):
        if done == 3:  # as the server's interrupt does; the next step's check raises
            comfy.model_management.interrupt_current_processing(True)

    with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
        glue.train_reference_context(anima, FakeAnimaClip(), FakeWanVae(), images, "girl", on_progress=cancel_after_step_3, **args)
    assert sent == [("7", text) for text in ["preparing: step 0/12", "step 1/12", "step 2/12", "step 3/12", "cancelled at step 3/12"]]
    sent.clear()
    with torch.inference_mode():
        context, _, _ = glue.train_reference_context(anima, FakeAnimaClip(), FakeWanVae(), images, "girl", **args)
    texts = [text for node_id, text in sent if node_id == "7"]
    tenth, final = context.metadata["loss_curve"][9], context.metadata["final_loss"]
    assert texts[:10] == ["preparing: step 0/12"] + [f"step {k}/12" for k in range(1, 10)]
    assert texts[10:13] == [f"step 10/12\nloss {tenth:.4f}", f"step 11/12\nloss {tenth:.4f} (at step 10)", f"step 12/12\nloss {final:.4f}"]
    assert texts[13:] == [f"done: 12 steps\nloss {final:.4f}, reference fit {context.metadata['lift'] * 100:.1f}%"]
    sent.clear()

    class VaeCancelledWhileEncoding(FakeWanVae):
        def encode(self, pixels):  # a cancel before the first step: encoding or loading
            comfy.model_management.interrupt_current_processing(True)
            comfy.model_management.throw_exception_if_processing_interrupted()

    with torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
        glue.train_reference_context(anima, FakeAnimaClip(), VaeCancelledWhileEncoding(), images, "girl", **args)
    assert sent == [("7", "preparing: step 0/12"), ("7", "cancelled at step 0/12")]
