"""The example workflows (ComfyUI UI format) and their template thumbnails, checked without ComfyUI:
titles and order, links, model download links, default pictures, and the pack's own nodes against their
definitions."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from conftest import REPO
from PIL import Image

WORKFLOWS = REPO / "example_workflows"
# ComfyUI's template browser titles a custom node's template with its file name and lists them in the
# server's directory order: numbered titles read in the README's order whatever that order is.
BASIC, MASKED, SAVE_THEN_LOAD, STEERING, TWO_CHARACTERS = EXPECTED = (
    "1. Train and apply a character", "2. Train on a cut-out with a mask", "3. Save a context and load it later",
    "4. Three references and steering", "5. Two characters")
EVERY_INSTALL_HAS = "example.png"  # ComfyUI's own input/example.png
LOADERS = {"UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders", "VAELoader": "vae"}
NOTES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TITLE_HEIGHT = 30
PATHS = sorted(WORKFLOWS.glob("*.json"))


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _picture_tool():
    spec = importlib.util.spec_from_file_location("workflow_picture", REPO / "tools" / "workflow_picture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def node_specs(pack, monkeypatch):
    """INPUT_TYPES of the pack's nodes; Load Context lists ComfyUI's models folder, so its list is faked."""

    class FakeGlue:
        @staticmethod
        def list_saved_contexts():
            return ["character_00001.safetensors"]

    monkeypatch.setattr(pack.nodes, "_glue", lambda: FakeGlue)
    return {name: node.INPUT_TYPES() for name, node in pack.NODE_CLASS_MAPPINGS.items()}


def test_the_titles_are_numbered_in_the_readmes_order():
    assert [path.stem for path in PATHS] == list(EXPECTED)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    positions = [readme.find(f"| {title} |") for title in EXPECTED]
    assert -1 not in positions and positions == sorted(positions), "the README's table lists the templates in this order"
    for other in ("README.md", "tests/README.md", "tools/run_example_workflows.py"):  # no old names left behind
        text = (REPO / other).read_text(encoding="utf-8")
        assert "anima_fasttrain_basic" not in text and "three_references_steering" not in text, other


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_workflow_has_a_fresh_square_card_thumbnail(path):
    picture = path.with_suffix(".jpg")
    command = f'run: python tools/workflow_picture.py "{path.relative_to(REPO)}"'
    assert picture.is_file(), command
    assert picture.stat().st_size < 150_000
    tool = _picture_tool()
    with Image.open(picture) as image:
        assert image.format == "JPEG" and image.size == (tool.CARD_SIZE, tool.CARD_SIZE)  # one size, one aspect ratio
        # what the card shows (its title and the steps read from the workflow) is fingerprinted in the JPEG comment
        expected = tool.card_fingerprint(tool.card_title(path), tool.pipeline(_load(path)))
        assert image.info.get("comment", b"").decode() == expected, f"stale thumbnail; {command}"


def test_the_cards_show_each_pipeline():
    tool = _picture_tool()
    steps = {path.stem: [text for text, _ in tool.pipeline(_load(path))] for path in PATHS}
    assert steps[BASIC] == ["1 reference picture", "Train Context Tokens", "Apply Context + KSampler"]
    assert steps[MASKED][:2] == ["1 cut-out picture + its mask", "MaskTrain Context Tokens"]
    assert [later for _, later in tool.pipeline(_load(WORKFLOWS / f"{SAVE_THEN_LOAD}.json"))] == [False] * 3 + [True] * 2
    assert steps[STEERING][0] == "3 reference pictures" and "blocks 0-20" in steps[STEERING][-1]


def test_a_card_is_readable_at_card_size(tmp_path):
    tool = _picture_tool()
    image = tool.card("1. Train and apply a character", [("1 reference picture", False), ("Train Context Tokens", False)])
    assert image.size == (tool.CARD_SIZE, tool.CARD_SIZE)
    # large light text on a dark card: at the browser's ~256 px the title's strokes are still several pixels of light
    small = image.convert("L").resize((256, 256), Image.LANCZOS)
    title_band = small.crop((40, 10, 250, 45))
    assert sum(1 for value in title_band.tobytes() if value > 180) > 400
    assert small.getpixel((5, 250)) < 60


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_picture_input_opens_with_a_picture_every_install_has(path):
    loaders = [node for node in _load(path)["nodes"] if node["type"] == "LoadImage"]
    assert loaders and all(node["widgets_values"][0] == EVERY_INSTALL_HAS for node in loaders)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_the_info_preview_is_tall_enough_for_the_info_text(path):
    # the info text is about eight lines, some of which wrap; the frontend's text box needs ~300 px for it
    previews = [node for node in _load(path)["nodes"] if node["type"] == "PreviewAny" and node.get("title") == "Training info"]
    assert previews and all(node["size"][1] >= 300 for node in previews)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_links_ids_and_positions_are_consistent(path):
    workflow = _load(path)
    nodes = workflow["nodes"]
    by_id = {node["id"]: node for node in nodes}
    assert len(by_id) == len(nodes), "duplicate node ids"
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    assert workflow["last_node_id"] >= max(by_id)
    assert workflow["last_link_id"] >= max(link_ids, default=0)
    for link_id, source, slot, target, target_slot, link_type in workflow["links"]:
        output = by_id[source]["outputs"][slot]
        assert output["type"] == link_type, (link_id, output)
        assert link_id in output["links"], link_id
        target_input = by_id[target]["inputs"][target_slot]
        assert target_input["link"] == link_id, (link_id, target_input)
        assert target_input["type"] in (link_type, "*"), (link_id, target_input)
    listed = {link_id for node in nodes for output in node.get("outputs", []) for link_id in output.get("links") or []}
    listed |= {entry["link"] for node in nodes for entry in node.get("inputs", []) if entry.get("link") is not None}
    assert listed == set(link_ids), "a node names a link that the links table lacks, or the reverse"
    boxes = [(node["id"], node["pos"][0], node["pos"][1] - TITLE_HEIGHT, node["pos"][0] + node["size"][0],
              node["pos"][1] + node["size"][1]) for node in nodes]
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1:]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"nodes {a} and {b} overlap"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_model_loader_links_the_official_anima_file(path):
    loaders = [node for node in _load(path)["nodes"] if node["type"] in LOADERS]
    assert {node["type"] for node in loaders} == set(LOADERS)
    for node in loaders:
        (model,) = node["properties"]["models"]
        file_name = node["widgets_values"][0]
        assert model["name"] == file_name
        assert model["url"].startswith("https://huggingface.co/circlestone-labs/Anima/") and model["url"].endswith("/" + file_name)
        assert model["directory"] == LOADERS[node["type"]]


def _widget_names(declared):
    names = []
    for name, entry in declared.items():
        if isinstance(entry[0], list) or entry[0] in WIDGET_TYPES:
            names.append(name)
            if name in ("seed", "noise_seed") and entry[0] == "INT":
                names.append(None)  # the frontend's 'control after generate' value
    return names


def _check_value(name, entry, value):
    kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
    if isinstance(kind, list):
        assert value in kind, (name, value)
    elif kind == "INT":
        assert isinstance(value, int) and options.get("min", value) <= value <= options.get("max", value), (name, value)
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and options.get("min", value) <= value <= options.get("max", value), (name, value)
    elif kind == "STRING":
        assert isinstance(value, str), (name, value)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_the_packs_nodes_match_their_definitions(path, pack, node_specs):
    ours = [node for node in _load(path)["nodes"] if node["type"].startswith("AnimaFastTrain")]
    assert ours
    for node in ours:
        assert node["type"] in pack.NODE_CLASS_MAPPINGS, node["type"]
        spec = node_specs[node["type"]]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        widgets = _widget_names(declared)
        sockets = [name for name in declared if name not in widgets]
        # (a frontend that saves widgets as inputs too marks them with "widget")
        connectable = [entry for entry in node.get("inputs", []) if "widget" not in entry]
        assert [entry["name"] for entry in connectable] == sockets, node["type"]
        for entry in connectable:
            assert entry["type"] == declared[entry["name"]][0], (node["type"], entry)
        values = node.get("widgets_values", [])
        assert len(values) == len(widgets), (node["type"], values)
        for name, value in zip(widgets, values):
            if name is None:
                assert value in ("fixed", "increment", "decrement", "randomize"), value
            elif node["type"] != "AnimaFastTrainLoadContext":  # its list is the user's saved files
                _check_value(name, declared[name], value)
        outputs = node.get("outputs", [])
        node_class = pack.NODE_CLASS_MAPPINGS[node["type"]]
        assert tuple(output["type"] for output in outputs) == tuple(node_class.RETURN_TYPES), node["type"]
        names = getattr(node_class, "RETURN_NAMES", None) or node_class.RETURN_TYPES
        assert tuple(output["name"] for output in outputs) == tuple(names), node["type"]


TRAINING_WIDGETS = ("training_steps", "learning_rate", "training_image_size", "num_tokens", "init_std", "keep_background")


TRAIN_NODES = ("AnimaFastTrainReferenceContext", "AnimaFastTrainMaskedReferenceContext")


def test_every_train_node_trains_with_its_nodes_defaults(node_specs):
    """A template shows the measured defaults (README): each train node's settings are its own node's defaults."""
    checked = set()
    for path in PATHS:
        for node in _load(path)["nodes"]:
            if node["type"] not in TRAIN_NODES:
                continue
            spec = node_specs[node["type"]]
            declared = {**spec["required"], **spec.get("optional", {})}
            values = dict(zip(_widget_names(declared), node["widgets_values"]))
            for name in TRAINING_WIDGETS:
                if name in declared:
                    assert values[name] == declared[name][1]["default"], (path.stem, node["type"], name, values[name])
            checked.add(node["type"])
    assert checked == set(TRAIN_NODES)  # both train nodes appear in some template


def test_each_example_shows_what_it_is_about(pack):
    types = {path.stem: [node["type"] for node in _load(path)["nodes"]] for path in PATHS}
    basic, masked = types[BASIC], types[MASKED]
    assert "AnimaFastTrainReferenceContext" in basic and "PreviewImage" in basic
    assert {"AnimaFastTrainMaskedReferenceContext", "InvertMask", "MarkdownNote", "PreviewImage"} <= set(masked)
    assert {"AnimaFastTrainSaveContext", "AnimaFastTrainLoadContext"} <= set(types[SAVE_THEN_LOAD])
    steering = _load(WORKFLOWS / f"{STEERING}.json")
    (train,) = [n for n in steering["nodes"] if n["type"] == "AnimaFastTrainReferenceContext"]
    assert all(entry["link"] is not None for entry in train["inputs"])  # all three references connected
    (apply,) = [n for n in steering["nodes"] if n["type"] == "AnimaFastTrainApplyContext"]
    optional = pack.NODE_CLASS_MAPPINGS["AnimaFastTrainApplyContext"].INPUT_TYPES()["optional"]
    defaults = [optional[name][1]["default"] for name in ("start_percent", "end_percent", "blocks")]
    assert apply["widgets_values"][2:] != defaults  # steered: not the defaults


def test_an_apply_title_that_names_its_steps_and_blocks_says_what_its_widgets_hold():
    checked = []
    for path in PATHS:
        for node in _load(path)["nodes"]:
            if node["type"] != "AnimaFastTrainApplyContext":
                continue
            _, _, start, end, blocks = node["widgets_values"][:5]
            title = node.get("title", "")
            steps = re.search(r"steps (\d+)-(\d+)%", title)
            if steps:
                assert (int(steps[1]), int(steps[2])) == (round(start * 100), round(end * 100)), (path.stem, title)
                checked.append(title)
            named = re.search(r"blocks ([\d,-]+)", title)
            if named:
                assert named[1] == blocks, (path.stem, title)
    assert checked, "the steering template's Apply title names its steps"


def test_the_mask_templates_note_explains_each_input_the_masked_node_adds(node_specs):
    def inputs(name):
        spec = node_specs[name]
        return {**spec.get("required", {}), **spec.get("optional", {})}

    added = set(inputs("AnimaFastTrainMaskedReferenceContext")) - set(inputs("AnimaFastTrainReferenceContext"))
    assert {"training_mask", "keep_background"} <= added
    note = "\n".join(str(value) for node in _load(WORKFLOWS / f"{MASKED}.json")["nodes"] if node["type"] in NOTES
                     for value in node.get("widgets_values", []))
    assert [name for name in sorted(added) if f"`{name}`" not in note] == []


def test_two_characters_chains_two_masked_applies_with_left_and_right_masks_from_core_nodes():
    workflow = _load(WORKFLOWS / f"{TWO_CHARACTERS}.json")
    by_id = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(node, name):
        (entry,) = [e for e in node["inputs"] if e["name"] == name]
        return by_id[links[entry["link"]][1]]

    applies = [n for n in workflow["nodes"] if n["type"] == "AnimaFastTrainApplyContext"]
    trains = [n for n in workflow["nodes"] if n["type"] == "AnimaFastTrainReferenceContext"]
    assert len(applies) == 2 and len(trains) == 2
    first, second = sorted(applies, key=lambda n: source(n, "model")["type"] == "AnimaFastTrainApplyContext")
    assert source(first, "model")["type"] == "UNETLoader" and source(second, "model") is first  # chained
    (sampler,) = [n for n in workflow["nodes"] if n["type"] == "KSampler"]
    assert source(sampler, "model") is second
    assert {source(first, "context")["id"], source(second, "context")["id"]} == {t["id"] for t in trains}
    offsets = []
    for apply in (first, second):
        composite = source(apply, "mask")
        assert composite["type"] == "MaskComposite"
        canvas, half = source(composite, "destination"), source(composite, "source")
        assert canvas["type"] == half["type"] == "SolidMask"
        assert canvas["widgets_values"] == [0.0, 1024, 1024] and half["widgets_values"] == [1.0, 512, 1024]
        offsets.append(composite["widgets_values"][:3])
    assert offsets == [[0, 0, "add"], [512, 0, "add"]]  # left, then right
    (latent,) = [n for n in workflow["nodes"] if n["type"] == "EmptyLatentImage"]
    assert latent["widgets_values"][:2] == [1024, 1024]  # the masks' aspect ratio
    (positive,) = [n for n in workflow["nodes"] if n.get("title") == "Positive prompt"]
    assert positive["widgets_values"][0].startswith("2girls")


def test_every_train_node_shows_its_loss_plot():
    for path in PATHS:
        workflow = _load(path)
        by_id = {node["id"]: node for node in workflow["nodes"]}
        for node in workflow["nodes"]:
            if node["type"] in ("AnimaFastTrainReferenceContext", "AnimaFastTrainMaskedReferenceContext"):
                (link_id,) = node["outputs"][2]["links"]
                (target,) = [link[3] for link in workflow["links"] if link[0] == link_id]
                assert by_id[target]["type"] == "PreviewImage", path.name


def test_the_graph_renderer_draws_the_graph(tmp_path):
    tool = _picture_tool()
    source = WORKFLOWS / f"{BASIC}.json"
    out = tool.write_picture(source, tmp_path / "basic.jpg", longest_side=640)
    with Image.open(out) as image:
        assert image.format == "JPEG" and max(image.size) == 640
        pixels = image.convert("L")
        low, high = pixels.getextrema()
        assert high - low > 100  # not a blank canvas: boxes, text and links
        assert len(image.convert("RGB").resize((160, 100)).getcolors(16000)) > 200


def test_the_renderer_reads_the_packs_display_names_without_importing_it(pack):
    assert _picture_tool().pack_display_names() == pack.NODE_DISPLAY_NAME_MAPPINGS


def test_the_renderer_copes_with_an_empty_graph(tmp_path):
    image = _picture_tool().render({"nodes": [], "links": []}, longest_side=256, display_names={})
    assert max(image.size) == 256
