"""Template thumbnails for ComfyUI's template browser: next to a custom node's ``example_workflows/<name>.json``
it shows ``<name>.jpg`` in a square frame about 250 px wide, under the title ``<name>``. A graph drawing is
unreadable at that size, so each thumbnail is a card: the template's title in large type above the steps of
its pipeline (read from the workflow's nodes), all cards the same size.

    python tools/workflow_picture.py example_workflows/*.json            # writes example_workflows/<name>.jpg
    python tools/workflow_picture.py --graph --out-dir docs FILE.json    # a drawing of the whole graph instead

Needs only Pillow. The pack's display names are read from nodes.py as text (no ComfyUI, no torch). Each card
carries a fingerprint of what it shows in its JPEG comment, so a test can tell a stale card on any machine.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]

TITLE_HEIGHT = 30  # LiteGraph's title bar sits above node["pos"]
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
SUPERSAMPLE = 2

BACKGROUND = (24, 24, 24)
GRID = (34, 34, 34)
NODE_BODY = (53, 53, 53)
NODE_TITLE = (34, 34, 34)
PACK_TITLE = (38, 84, 104)
NOTE_BODY = (102, 85, 51)
NOTE_TITLE = (68, 51, 34)
WIDGET = (34, 34, 34)
TEXT = (230, 230, 230)
DIM_TEXT = (170, 170, 170)
BYPASS_TINT = (150, 60, 170)

# ComfyUI's link colours by type (its default palette), and one for the pack's context type.
TYPE_COLOURS = {
    "MODEL": (179, 157, 219), "CLIP": (255, 213, 0), "VAE": (255, 110, 110), "IMAGE": (100, 181, 246),
    "MASK": (129, 199, 132), "LATENT": (255, 156, 249), "CONDITIONING": (255, 169, 49), "STRING": (134, 192, 134),
    "ANIMA_REFERENCE_CONTEXT": (38, 198, 218), "INT": (102, 187, 106), "FLOAT": (102, 187, 106),
}
DEFAULT_TYPE_COLOUR = (160, 170, 160)

# Display names of the core nodes the examples use (as ComfyUI shows them).
CORE_DISPLAY_NAMES = {
    "UNETLoader": "Load Diffusion Model", "CLIPLoader": "Load CLIP", "VAELoader": "Load VAE", "LoadImage": "Load Image",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)", "EmptyLatentImage": "Empty Latent Image", "KSampler": "KSampler",
    "VAEDecode": "VAE Decode", "SaveImage": "Save Image", "PreviewImage": "Preview Image", "PreviewAny": "Preview Any",
    "InvertMask": "Invert Mask", "SolidMask": "Create Solid Mask", "MaskComposite": "Combine Masks",
}
IMAGE_NODES = {"LoadImage", "SaveImage", "PreviewImage"}
NOTE_NODES = {"Note", "MarkdownNote"}
FONT_FILES = {
    False: ["DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"],
    True: ["DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "Arial Bold.ttf",
           "LiberationSans-Bold.ttf"],
}


def apply_defaults(patch_py: Path = REPO / "anima_context" / "patch.py") -> tuple[str, float]:
    """Apply Context's (DEFAULT_APPLY_TO, DEFAULT_START_PERCENT), read as literals from patch.py (no torch)."""
    for statement in ast.parse(patch_py.read_text(encoding="utf-8")).body:
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Tuple):
            names = [getattr(t, "id", None) for t in statement.targets[0].elts]
            if names == ["DEFAULT_APPLY_TO", "DEFAULT_START_PERCENT"]:
                return ast.literal_eval(statement.value)
    raise RuntimeError(f"{patch_py} has no DEFAULT_APPLY_TO, DEFAULT_START_PERCENT")


def pack_display_names(nodes_py: Path = REPO / "nodes.py") -> dict[str, str]:
    """NODE_DISPLAY_NAME_MAPPINGS from nodes.py, read as a literal (importing nodes.py would need torch)."""
    tree = ast.parse(nodes_py.read_text(encoding="utf-8"))
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == "NODE_DISPLAY_NAME_MAPPINGS" for t in statement.targets):
            return ast.literal_eval(statement.value)
    return {}


def _font(size: int, bold: bool = False):
    for name in FONT_FILES[bold]:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _blend(colour, other, amount):
    return tuple(round(a + (b - a) * amount) for a, b in zip(colour, other))


def _fit(draw, text, font, width):
    """The text, cut with an ellipsis to fit ``width`` pixels."""
    text = " ".join(str(text).split())
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def _shrink_to_fit(draw, text, font, width, smallest=0.72):
    """The text and a font of its family, as large as fits ``width`` down to ``smallest`` of its size, cut beyond that."""
    size = font.size
    smallest_size = font.size * smallest
    while size - 1 >= smallest_size and draw.textlength(text, font=font) > width:
        size -= 1
        try:
            font = font.font_variant(size=size)
        except (AttributeError, OSError):
            break
    return _fit(draw, text, font, width), font


def _wrap(draw, text, font, width):
    words, lines, line = str(text).split(), [], ""
    for word in words:
        if draw.textlength(word, font=font) > width:  # a path or a long name: cut it to the line
            word = _fit(draw, word, font, width)
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def _widget_text(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value.splitlines()[0] if value.strip() else "…"
    return json.dumps(value)


def _bounds(workflow):
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow.get("nodes", [])]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2], g["bounding"][1] + g["bounding"][3])
              for g in workflow.get("groups", [])]
    if not boxes:
        return 0, 0, 100, 100
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


class _Canvas:
    def __init__(self, workflow, longest_side):
        x0, y0, x1, y1 = _bounds(workflow)
        margin = 30
        self.x0, self.y0 = x0 - margin, y0 - margin
        width, height = x1 - x0 + 2 * margin, y1 - y0 + 2 * margin
        self.out_scale = longest_side / max(width, height)
        self.scale = self.out_scale * SUPERSAMPLE
        self.size_out = (max(1, round(width * self.out_scale)), max(1, round(height * self.out_scale)))
        self.image = Image.new("RGB", (self.size_out[0] * SUPERSAMPLE, self.size_out[1] * SUPERSAMPLE), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

        def px(units, minimum):  # a font size: graph units scaled, but never under ``minimum`` output pixels
            return round(max(units * self.out_scale, minimum) * SUPERSAMPLE)

        self.title_font = _font(px(15, 11), bold=True)
        self.slot_font = _font(px(12, 8.5))
        self.widget_font = _font(px(12, 8))
        self.group_font = _font(px(22, 13), bold=True)
        self.note_font = _font(px(12, 8))
        self.note_head_font = _font(px(15, 11), bold=True)

    def xy(self, x, y):
        return (x - self.x0) * self.scale, (y - self.y0) * self.scale

    def box(self, x, y, w, h):
        (a, b), (c, d) = self.xy(x, y), self.xy(x + w, y + h)
        return [a, b, c, d]

    def u(self, units):
        return units * self.scale


def _slot_pos(node, index, is_input):
    x, y = node["pos"]
    offset = SLOT_HEIGHT * 0.5
    slot_y = y + (index + 0.7) * SLOT_HEIGHT
    return (x + offset, slot_y) if is_input else (x + node["size"][0] + 1 - offset, slot_y)


def _draw_grid(c):
    step = 100
    x = math.floor(c.x0 / step) * step
    while (x - c.x0) * c.scale < c.image.width:
        c.draw.line([c.xy(x, c.y0), (c.xy(x, c.y0)[0], c.image.height)], fill=GRID, width=1)
        x += step
    y = math.floor(c.y0 / step) * step
    while (y - c.y0) * c.scale < c.image.height:
        c.draw.line([c.xy(c.x0, y), (c.image.width, c.xy(c.x0, y)[1])], fill=GRID, width=1)
        y += step


def _hex(colour, fallback):
    try:
        text = colour.lstrip("#")
        if len(text) == 3:
            text = "".join(ch * 2 for ch in text)
        return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
    except (AttributeError, ValueError):
        return fallback


def _draw_group(c, group):
    x, y, w, h = group["bounding"]
    colour = _hex(group.get("color"), (63, 120, 158))
    c.draw.rounded_rectangle(c.box(x, y, w, h), radius=c.u(8), fill=_blend(BACKGROUND, colour, 0.22),
                             outline=_blend(BACKGROUND, colour, 0.8), width=max(1, round(c.u(2))))
    tx, ty = c.xy(x + 10, y + 6)
    c.draw.text((tx, ty), _fit(c.draw, group.get("title", ""), c.group_font, c.u(w - 20)), font=c.group_font,
                fill=_blend(TEXT, colour, 0.25))


def _draw_link(c, by_id, link):
    _, source, slot, target, target_slot, link_type = link[:6]
    if source not in by_id or target not in by_id:
        return
    start = _slot_pos(by_id[source], slot, False)
    end = _slot_pos(by_id[target], target_slot, True)
    dist = math.dist(start, end) * 0.25
    control1, control2 = (start[0] + dist, start[1]), (end[0] - dist, end[1])
    points = []
    for i in range(41):
        t = i / 40
        a, b, cc, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
        points.append(c.xy(a * start[0] + b * control1[0] + cc * control2[0] + d * end[0],
                           a * start[1] + b * control1[1] + cc * control2[1] + d * end[1]))
    colour = TYPE_COLOURS.get(link_type, DEFAULT_TYPE_COLOUR)
    muted = by_id[source].get("mode", 0) == 2 or by_id[target].get("mode", 0) == 2
    if muted:
        colour = _blend(colour, BACKGROUND, 0.6)
    c.draw.line(points, fill=colour, width=max(2, round(c.u(3))), joint="curve")


def _node_title(node, display_names):
    return node.get("title") or display_names.get(node["type"]) or CORE_DISPLAY_NAMES.get(node["type"]) or node["type"]


def _draw_note(c, node, display_names, fade):
    x, y = node["pos"]
    w, h = node["size"]
    c.draw.rounded_rectangle(c.box(x, y - TITLE_HEIGHT, w, h + TITLE_HEIGHT), radius=c.u(8), fill=fade(NOTE_BODY))
    c.draw.rounded_rectangle(c.box(x, y - TITLE_HEIGHT, w, TITLE_HEIGHT), radius=c.u(8), fill=fade(NOTE_TITLE),
                             corners=(True, True, False, False))
    c.draw.text(c.xy(x + 10, y - TITLE_HEIGHT + 6), _fit(c.draw, _node_title(node, display_names), c.title_font, c.u(w - 20)),
                font=c.title_font, fill=fade(TEXT))
    text = (node.get("widgets_values") or [""])[0]
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return
    left, top = c.xy(x + 12, y + 10)
    width, bottom = c.u(w - 24), c.xy(x, y + h - 8)[1]
    head = lines[0].lstrip("#").strip()
    for line in _wrap(c.draw, head, c.note_head_font, width):
        c.draw.text((left, top), line, font=c.note_head_font, fill=fade(TEXT))
        top += c.note_head_font.size * 1.3
    top += c.note_font.size * 0.5
    for paragraph in lines[1:]:
        for line in _wrap(c.draw, paragraph.replace("*", "").replace("`", ""), c.note_font, width):
            if top + c.note_font.size > bottom:
                return
            c.draw.text((left, top), line, font=c.note_font, fill=fade(DIM_TEXT))
            top += c.note_font.size * 1.3


def _draw_node(c, node, display_names, pack_types):
    mode = node.get("mode", 0)

    def fade(colour):
        if mode == 2:  # muted ("never")
            return _blend(colour, BACKGROUND, 0.55)
        if mode == 4:  # bypassed
            return _blend(colour, BYPASS_TINT, 0.4)
        return colour

    if node["type"] in NOTE_NODES:
        _draw_note(c, node, display_names, fade)
        return
    x, y = node["pos"]
    w, h = node["size"]
    radius = c.u(8)
    title_colour = PACK_TITLE if node["type"] in pack_types else NODE_TITLE
    c.draw.rounded_rectangle(c.box(x, y - TITLE_HEIGHT, w, h + TITLE_HEIGHT), radius=radius, fill=fade(NODE_BODY),
                             outline=fade((20, 20, 20)), width=max(1, round(c.u(1.5))))
    c.draw.rounded_rectangle(c.box(x, y - TITLE_HEIGHT, w, TITLE_HEIGHT), radius=radius, fill=fade(title_colour),
                             corners=(True, True, False, False))
    full = _node_title(node, display_names)
    title, font = _shrink_to_fit(c.draw, full, c.title_font, c.u(w - 20))
    if title != full and " - " in full:  # "Pack - Long Node Name" too long: the node's own name tells more
        title, font = _shrink_to_fit(c.draw, full.split(" - ", 1)[1], c.title_font, c.u(w - 20))
    c.draw.text(c.xy(x + 10, y - TITLE_HEIGHT / 2), title, font=font, fill=fade(TEXT), anchor="lm")
    inputs, outputs = node.get("inputs", []), node.get("outputs", [])
    dot = c.u(5)
    for is_input, slots in ((True, inputs), (False, outputs)):
        for i, slot in enumerate(slots):
            sx, sy = c.xy(*_slot_pos(node, i, is_input))
            colour = fade(TYPE_COLOURS.get(slot.get("type"), DEFAULT_TYPE_COLOUR))
            connected = slot.get("link") is not None if is_input else bool(slot.get("links"))
            c.draw.ellipse([sx - dot, sy - dot, sx + dot, sy + dot], fill=colour if connected else None, outline=colour,
                           width=max(1, round(c.u(1.5))))
            facing = (outputs if is_input else inputs)[i] if i < len(outputs if is_input else inputs) else None
            facing_width = c.draw.textlength(facing.get("label") or facing.get("name", ""), font=c.slot_font) if facing else 0
            room = max(c.u(w / 2 - 14), c.u(w - 40) - min(facing_width, c.u(w / 2 - 14)))
            name = _fit(c.draw, slot.get("label") or slot.get("name", ""), c.slot_font, room)
            anchor = "lm" if is_input else "rm"
            c.draw.text((sx + (dot * 2 if is_input else -dot * 2), sy), name, font=c.slot_font, fill=fade(DIM_TEXT), anchor=anchor)
    top = y + max(len(inputs), len(outputs)) * SLOT_HEIGHT + 6
    for value in node.get("widgets_values") or []:
        if top + WIDGET_HEIGHT - 4 > y + h:
            break
        c.draw.rounded_rectangle(c.box(x + 12, top, w - 24, WIDGET_HEIGHT - 4), radius=c.u(8), fill=fade(WIDGET))
        text = _fit(c.draw, _widget_text(value), c.widget_font, c.u(w - 48))
        c.draw.text(c.xy(x + w / 2, top + (WIDGET_HEIGHT - 4) / 2), text, font=c.widget_font, fill=fade(DIM_TEXT), anchor="mm")
        top += WIDGET_HEIGHT
    if node["type"] in IMAGE_NODES and y + h - top > 60:
        frame = c.box(x + 14, top + 6, w - 28, y + h - top - 20)
        c.draw.rectangle(frame, outline=fade((90, 90, 90)), width=max(1, round(c.u(1.5))))
        # a small mountain-and-sun picture glyph
        cx, cy = (frame[0] + frame[2]) / 2, (frame[1] + frame[3]) / 2
        s = min(frame[2] - frame[0], frame[3] - frame[1]) * 0.18
        c.draw.polygon([(cx - 2 * s, cy + s), (cx - 0.6 * s, cy - 0.6 * s), (cx + 0.4 * s, cy + 0.3 * s), (cx + 0.9 * s, cy - 0.2 * s),
                        (cx + 2 * s, cy + s)], fill=fade((80, 80, 80)))
        c.draw.ellipse([cx + 0.8 * s, cy - 1.4 * s, cx + 1.4 * s, cy - 0.8 * s], fill=fade((95, 95, 95)))


def render(workflow: dict, longest_side: int = 1024, display_names: dict[str, str] | None = None) -> Image.Image:
    """The graph of ``workflow`` as an RGB picture whose longest side is ``longest_side`` pixels."""
    pack_names = pack_display_names() if display_names is None else display_names
    c = _Canvas(workflow, longest_side)
    _draw_grid(c)
    for group in workflow.get("groups", []):
        _draw_group(c, group)
    nodes = workflow.get("nodes", [])
    by_id = {node["id"]: node for node in nodes}
    for link in workflow.get("links", []):
        _draw_link(c, by_id, link)
    for node in sorted(nodes, key=lambda n: n.get("order", 0)):
        _draw_node(c, node, pack_names, set(pack_names))
    return c.image.resize(c.size_out, Image.LANCZOS)


# --- cards ----------------------------------------------------------------------------------------------------

CARD_SIZE = 512  # square: the template browser fits each thumbnail into a square frame
CARD_VERSION = "card-1"  # part of the fingerprint: bump it when the drawing changes
CARD_BACKGROUND, CARD_ACCENT, CARD_BOX, CARD_LATER = (30, 32, 38), (38, 198, 218), (54, 58, 68), (44, 46, 54)
TRAIN_TYPES = {"AnimaFastTrainReferenceContext": "Train Context Tokens",
               "AnimaFastTrainMaskedReferenceContext": "MaskTrain Context Tokens"}


def _active(workflow, kind):
    return [n for n in workflow.get("nodes", []) if n["type"] == kind and n.get("mode", 0) != 2]


def _muted(workflow, kind):
    return [n for n in workflow.get("nodes", []) if n["type"] == kind and n.get("mode", 0) == 2]


def pipeline(workflow: dict) -> list[tuple[str, bool]]:
    """The card's steps, read from the workflow: (text, whether it runs later, in a muted part)."""
    steps = []
    references = sum(1 for node in _active(workflow, "LoadImage"))
    if references:
        picture = "cut-out picture" if _active(workflow, "InvertMask") else "reference picture"
        steps.append((f"{references} {picture}{'s' if references > 1 else ''}" + (" + its mask" if _active(workflow, "InvertMask") else ""),
                      False))
    for kind, name in TRAIN_TYPES.items():
        trains = len(_active(workflow, kind))
        if trains:
            steps.append((name + (f" x{trains}" if trains > 1 else ""), False))
    if _active(workflow, "AnimaFastTrainSaveContext"):
        steps.append(("Save Context to a file", False))
    later = bool(_muted(workflow, "AnimaFastTrainLoadContext"))
    if later or _active(workflow, "AnimaFastTrainLoadContext"):
        steps.append(("Load Context" + (" (later)" if later else ""), later))
    applies = _active(workflow, "AnimaFastTrainApplyContext") + _muted(workflow, "AnimaFastTrainApplyContext")
    apply_to, default_start = apply_defaults()
    for node in applies:
        strength, _, start, end, blocks = (node.get("widgets_values") or [1.0, apply_to, default_start, 1.0, "all"])[:5]
        details = []
        if (start, end) != (default_start, 1.0):
            details.append(f"steps {start * 100:g}-{end * 100:g}%")
        if blocks != "all":
            details.append(f"blocks {blocks}")
        if any(entry["name"] == "mask" and entry.get("link") is not None for entry in node.get("inputs", [])):
            details.append("inside its mask")
        sampler = " + KSampler" if not details else ""
        steps.append(("Apply Context" + ("\n" + ", ".join(details) if details else sampler), node.get("mode", 0) == 2))
    return steps


def card_title(path: Path) -> str:
    """The title the template browser shows: the file name without its extension."""
    return Path(path).stem


def card_fingerprint(title: str, steps: list[tuple[str, bool]]) -> str:
    return CARD_VERSION + ":" + hashlib.sha256(json.dumps([title, steps]).encode()).hexdigest()[:16]


def _wrap_to(draw, text, bold, width, sizes, max_lines):
    """The largest of ``sizes`` at which ``text`` wraps into at most ``max_lines`` lines of ``width``."""
    for size in sizes:
        font = _font(size, bold=bold)
        lines = _wrap(draw, text, font, width)
        if len(lines) <= max_lines:
            return font, lines
    return font, lines[:max_lines]


def card(title: str, steps: list[tuple[str, bool]], size: int = CARD_SIZE) -> Image.Image:
    """A square card: a number badge and the title in large type, then the pipeline as boxes with arrows."""
    scale = SUPERSAMPLE * size / CARD_SIZE
    image = Image.new("RGB", (round(size * SUPERSAMPLE),) * 2, CARD_BACKGROUND)
    draw = ImageDraw.Draw(image)

    def u(value):
        return value * scale

    draw.rectangle([0, 0, image.width, u(8)], fill=CARD_ACCENT)
    number, _, text = title.partition(". ")
    if not (number.isdigit() and text):
        number, text = "", title
    left = u(28)
    if number:
        draw.ellipse([u(24), u(30), u(84), u(90)], fill=CARD_ACCENT)
        draw.text((u(54), u(60)), number, font=_font(round(u(36)), bold=True), fill=CARD_BACKGROUND, anchor="mm")
        left = u(100)
    font, lines = _wrap_to(draw, text, True, image.width - left - u(24), [round(u(s)) for s in (38, 34, 30, 27)], 3)
    top = u(28) if len(lines) > 1 else u(42)
    for line in lines:
        draw.text((left, top), line, font=font, fill=TEXT)
        top += font.size * 1.18
    draw.text((u(28), max(top, u(104)) + u(6)), "AnimaFastTrain", font=_font(round(u(19))), fill=CARD_ACCENT)
    area_top, area_bottom = max(top, u(104)) + u(44), image.height - u(24)
    count = max(1, len(steps))
    gap = u(22)
    height = min(u(64), (area_bottom - area_top - gap * (count - 1)) / count)
    y = area_top + max(0.0, (area_bottom - area_top) - (height * count + gap * (count - 1))) / 2
    for index, (label, later) in enumerate(steps):
        box = [u(28), y, image.width - u(28), y + height]
        pack_step = any(word in label for word in ("Context", "cut-out", "reference"))
        draw.rounded_rectangle(box, radius=u(12), fill=CARD_LATER if later else CARD_BOX,
                               outline=CARD_ACCENT if pack_step and not later else (90, 94, 104), width=max(1, round(u(2.5))))
        sizes = [round(u(s)) for s in (27, 24)]
        step_font, step_lines = _wrap_to(draw, label, True, box[2] - box[0] - u(28), sizes, 1)
        if "\n" in label:  # a name and its settings, on two lines at a size at which both fit
            step_lines = label.split("\n")
            step_font = next((f for f in (_font(round(u(z)), bold=True) for z in (23, 21, 19, 17))
                              if all(draw.textlength(line, font=f) <= box[2] - box[0] - u(28) for line in step_lines)), step_font)
        elif len(_wrap(draw, label, step_font, box[2] - box[0] - u(28))) > 1 and height >= u(60):  # two lines fit
            step_font, step_lines = _wrap_to(draw, label, True, box[2] - box[0] - u(28), [round(u(s)) for s in (24, 21)], 2)
        elif len(_wrap(draw, label, step_font, box[2] - box[0] - u(28))) > 1:
            step_font, step_lines = _wrap_to(draw, label, True, box[2] - box[0] - u(28), [round(u(s)) for s in (21, 18)], 1)
        line_height = step_font.size * 1.15
        centre = (box[1] + box[3]) / 2 - line_height * (len(step_lines) - 1) / 2
        for number_of_line, line in enumerate(step_lines):
            draw.text(((box[0] + box[2]) / 2, centre + number_of_line * line_height), line, font=step_font,
                      fill=DIM_TEXT if later else TEXT, anchor="mm")
        if index + 1 < len(steps):
            cx, ay = image.width / 2, y + height
            draw.polygon([(cx - u(10), ay + u(5)), (cx + u(10), ay + u(5)), (cx, ay + gap - u(4))], fill=(150, 154, 164))
        y += height + gap
    return image.resize((size, size), Image.LANCZOS)


def write_card(json_path: Path, out_path: Path | None = None, quality: int = 90) -> Path:
    workflow = json.loads(Path(json_path).read_text(encoding="utf-8"))
    out_path = Path(out_path) if out_path else Path(json_path).with_suffix(".jpg")
    title, steps = card_title(json_path), pipeline(workflow)
    card(title, steps).save(out_path, "JPEG", quality=quality, optimize=True,
                            comment=card_fingerprint(title, steps).encode())
    return out_path


def write_picture(json_path: Path, out_path: Path | None = None, longest_side: int = 1024, quality: int = 88) -> Path:
    """A drawing of the whole graph (``--graph``)."""
    workflow = json.loads(Path(json_path).read_text(encoding="utf-8"))
    out_path = Path(out_path) if out_path else Path(json_path).with_suffix(".jpg")
    picture = render(workflow, longest_side)
    if out_path.suffix.lower() in (".jpg", ".jpeg"):
        picture.save(out_path, "JPEG", quality=quality, optimize=True, progressive=True)
    else:
        picture.save(out_path)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflows", nargs="+", type=Path, help="UI-format workflow .json files")
    parser.add_argument("--graph", action="store_true", help="draw the whole graph instead of the template card")
    parser.add_argument("--size", type=int, default=1024, help="with --graph: longest side in pixels (default 1024)")
    parser.add_argument("--quality", type=int, default=88, help="JPEG quality (default 88)")
    parser.add_argument("--out-dir", type=Path, help="write the pictures here instead of next to each .json")
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg", help="with --graph: the file format")
    args = parser.parse_args(argv)
    for path in args.workflows:
        out = (args.out_dir / path.name if args.out_dir else path).with_suffix("." + (args.format if args.graph else "jpg"))
        written = write_picture(path, out, args.size, args.quality) if args.graph else write_card(path, out, args.quality)
        print(f"{written} ({written.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
