"""Check the pack as a user sees it: a real ComfyUI server with the pack in custom_nodes, driven through
ComfyUI's real frontend in headless Chromium, with a screenshot of every check.

    COMFYUI_PATH=path/to/ComfyUI path/to/ComfyUI/venv/bin/python tools/check_frontend.py

  (a) every template (Templates -> the pack's category) opens without errors: no red node, no
      "errors found" banner, no error dialog, no unknown node type;
  (b) the node search (double-click the canvas) finds each node by the words users type;
  (c) the text under the train node's progress bar reads "step k/N" while it trains, "done" after it, and
      "cancelled" after the frontend's cancel button, never an earlier run's text once the node runs;
  (d) Save Context shows the name of the file it wrote on the node;
  (e) Apply Context with start_percent > end_percent is refused when queued, before the train node runs;
  (f) the template "5. Two characters" (two contexts, each Apply Context with its own mask) runs to the end
      from the templates dialog, shrunk for the demo models (3 training steps, 64 px, a 128 px picture).

It prints one line per check (ok / FAIL and why) and exits 1 when any check failed. Needs Playwright's
Python client in the Python that runs it (``pip install playwright``; no ``playwright install``: it uses
the system Chromium, ``--chromium``, default /usr/bin/chromium) and a ComfyUI checkout (``COMFYUI_PATH``)
whose requirements that Python has. The server runs on 127.0.0.1 with its own input/output/user folders
under ``--out`` (default ``.frontend_check/``, with the screenshots) and the pack linked into its own
custom_nodes folder; the browser reaches nothing but that server. Models: the random-weight demo set
(``python -m anima_context demo-models``, written once into ``--models-dir``, default ``demo/`` as in the
README's main job: ~1.5 GB, ~30 s), also under the official Anima file names that the templates load
(links to the demo files), so the templates open as they do for a user who has the models; your own
model folders are not touched. About 3.5 minutes on 2 CPU cores. Development only: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontend_page import Frontend, launch  # noqa: E402
from run_example_workflows import stop_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PACK_FOLDER = "ComfyUI-AnimaFastTrain"  # as the README's git clone names it; the Templates category shows it
TRAIN, MASKED, APPLY, SAVE, LOAD = ("AnimaFastTrainReferenceContext", "AnimaFastTrainMaskedReferenceContext",
                                    "AnimaFastTrainApplyContext", "AnimaFastTrainSaveContext",
                                    "AnimaFastTrainLoadContext")
# words a user types -> the nodes each must find (the rank is reported; past SEARCH_TOP one scrolls)
SEARCHES = {
    "train context tokens": [TRAIN],
    "context tokens": [TRAIN, MASKED],
    "character": [TRAIN],
    "identity": [TRAIN],
    "reference": [TRAIN],
    "apply context": [APPLY],
    "two characters": [APPLY],
    "save context": [SAVE],
    "load context": [LOAD],
    "mask train": [MASKED],
    "tokens": [TRAIN, MASKED],
}
SEARCH_TOP = 10  # about what the search box shows without scrolling
LOADER_FOLDERS = {"UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders", "VAELoader": "vae"}
DEMO_KINDS = {"diffusion_models": "unet", "text_encoders": "clip", "vae": "vae"}
STEP = re.compile(r"step (\d+)/(\d+)")
STALE_LIMIT = 2.0  # seconds an earlier run's text may stay once the train node runs (its first message is on the way)


# --- results ----------------------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.failed = 0

    def check(self, name: str, ok: bool, why: str) -> bool:
        self.failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {why}", flush=True)
        return ok

    def note(self, text: str) -> None:
        print(f"     {text}", flush=True)


# --- the server -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/system_stats", timeout=3) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def get_json(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=60) as response:
        return json.loads(response.read())


def demo_models(models_dir: Path, comfyui: Path, python: str) -> dict[str, Path]:
    """The pack's random-weight demo set, written by its own command (kept when already there)."""
    command = [python, "-m", "anima_context", "demo-models", str(models_dir), "--comfyui", str(comfyui)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    sys.path.insert(0, str(REPO))
    from anima_context.demo_models import demo_paths

    paths = demo_paths(models_dir)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"demo-models did not write {missing}")
    return paths


def official_name_links(folder: Path, demo: dict[str, Path]) -> None:
    """The model names the templates' loaders ask for, as links to the demo files, in a folder of our own."""
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text(encoding="utf-8")).get("nodes", []):
            sub = LOADER_FOLDERS.get(node.get("type"))
            if not sub or not node.get("widgets_values"):
                continue
            link = folder / sub / str(node["widgets_values"][0])
            if link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            target = demo[DEMO_KINDS[sub]]
            try:
                link.symlink_to(target)
            except OSError:  # no symlinks here (Windows without the right): a hard link, same disk
                os.link(target, link)


class Server:
    """ComfyUI on 127.0.0.1 with only this pack, and its own folders under ``work``."""

    def __init__(self, comfyui: Path, python: str, work: Path, port: int, models: list[Path]):
        self.comfyui, self.python, self.work, self.port, self.models = comfyui, python, work, port, models
        self.base = f"http://{HOST}:{port}"
        self.process = None
        self.log_path = work / "server.log"

    def start(self, timeout: float = 300) -> None:
        if answers(self.base):
            raise SystemExit(f"something already answers on {self.base}; pick another --port")
        if self.work.exists():
            shutil.rmtree(self.work)  # a fresh user: settings, queue history and saved files from no earlier run
        for sub in ("custom_nodes", "input", "output", "temp", "user", "anima_contexts"):
            (self.work / sub).mkdir(parents=True)
        try:
            (self.work / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
        except OSError:  # no symlinks here (Windows without the right): a copy of the pack's files
            shutil.copytree(REPO, self.work / "custom_nodes" / PACK_FOLDER,
                            ignore=shutil.ignore_patterns(".git", ".venv", "demo", ".frontend_check", "__pycache__"))
        picture = self.comfyui / "input" / "example.png"  # every ComfyUI has it; the templates open with it
        if picture.is_file():
            shutil.copy(picture, self.work / "input" / "example.png")
        lines = []
        for i, folder in enumerate(self.models):
            lines += [f"check_models_{i}:", f"    base_path: {json.dumps(str(folder))}"]
            lines += [f"    {sub}: {sub}" for sub in LOADER_FOLDERS.values()]
        lines += ["check_pack:", f"    custom_nodes: {json.dumps(str(self.work / 'custom_nodes'))}",
                  f"    anima_contexts: {json.dumps(str(self.work / 'anima_contexts'))}"]
        config = self.work / "extra_model_paths.yaml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        command = [self.python, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
                   "--extra-model-paths-config", str(config), "--disable-all-custom-nodes",
                   "--whitelist-custom-nodes", PACK_FOLDER, "--input-directory", str(self.work / "input"),
                   "--output-directory", str(self.work / "output"), "--temp-directory", str(self.work / "temp"),
                   "--user-directory", str(self.work / "user"), "--database-url", "sqlite:///:memory:"]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=self.comfyui, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"ComfyUI exited with {self.process.returncode} while starting; see {self.log_path}")
            if answers(self.base):
                return
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"ComfyUI did not answer in {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)
        link = self.work / "custom_nodes" / PACK_FOLDER
        if link.is_symlink():
            link.unlink()


# --- (a) templates ----------------------------------------------------------------------------------------

def check_templates(ui: Frontend, report: Report) -> None:
    expected = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    dialog = ui.open_templates(PACK_FOLDER)
    titles = ui.template_cards(dialog)
    ui.shot("a_templates_dialog")
    missing = [t for t in expected if t not in titles]
    report.check("(a) templates listed", not missing and len(titles) == len(expected),
                 f"{len(titles)} cards: {titles}" + (f"; missing {missing}" if missing else ""))
    if titles != sorted(titles):
        report.note(f"the cards are not in file-name order (ComfyUI lists them in directory order): {titles}")
    for i, title in enumerate(titles):
        if i:
            dialog = ui.open_templates(PACK_FOLDER)
        ui.open_template(dialog, title)
        found = ui.errors()
        shot = ui.shot(f"a_template_{i + 1}")
        problems = []
        if found["marked"]:
            problems.append(f"red nodes {found['marked']}")
        if found["unknown"]:
            problems.append(f"unknown node types {found['unknown']}")
        if found["banners"]:
            problems.append(f"banner {found['banners']}")
        problems += [f"dialog '{d}'" for d in found["dialogs"]]
        problems += [f"toast '{t}'" for t in found["toasts"] if re.search(r"error|missing|fail", t, re.I)]
        if problems:
            details = ui.error_details()
            if details:
                ui.shot(f"a_template_{i + 1}_errors")
                problems.append(f"error panel: {details[:400]}")
            ui.close_panel()
        report.check(f"(a) template '{title}' opens", not problems,
                     "; ".join(problems) or f"{found['count']} nodes, no error marks ({shot.name})")
        ui.close_dialogs()


# --- (b) search -------------------------------------------------------------------------------------------

def check_search(ui: Frontend, report: Report, names: dict[str, str]) -> None:
    ui.new_blank_workflow()
    by_title = {title: kind for kind, title in names.items()}
    for words, wanted in SEARCHES.items():
        try:
            titles = ui.search(words)
        except Exception as error:  # the box did not open: report it and go on
            ui.shot(f"b_search_{words.replace(' ', '_')}")
            report.check(f"(b) search '{words}'", False, f"{type(error).__name__}: {str(error).splitlines()[0]}")
            ui.close_dialogs()
            continue
        ui.shot(f"b_search_{words.replace(' ', '_')}")
        kinds = [by_title.get(t, t) for t in titles]
        ranks = {kind: (kinds.index(kind) + 1 if kind in kinds else None) for kind in wanted}
        missing = [names[k] for k, r in ranks.items() if r is None]
        found = ", ".join(f"{names[k]} #{r}" + (" (below the fold: scroll)" if r > SEARCH_TOP else "")
                          for k, r in ranks.items() if r)
        report.check(f"(b) search '{words}'", not missing,
                     (f"not among the results: {missing}; " if missing else "") +
                     (f"found {found}; " if found else "") + f"{len(titles)} results, first: {titles[:3]}")
        ui.page.keyboard.press("Escape")
        time.sleep(0.3)
        ui.close_dialogs()


# --- (c), (d), (e): runs ----------------------------------------------------------------------------------

def loaders(demo: dict[str, Path]):
    return [
        ("unet", "UNETLoader", {"unet_name": demo["unet"].name}),
        ("clip", "CLIPLoader", {"clip_name": demo["clip"].name, "type": "stable_diffusion"}),
        ("vae", "VAELoader", {"vae_name": demo["vae"].name}),
        ("image", "LoadImage", {"image": "example.png"}),
    ]


def train_node(steps: int, seed: int):
    return ("train", TRAIN, {"training_steps": steps, "training_image_size": 64, "num_tokens": 4, "seed": seed,
                             "training_dtype": "float32", "training_prompt": "1girl, solo"})


TRAIN_LINKS = [("unet", "MODEL", "train", "model"), ("clip", "CLIP", "train", "clip"), ("vae", "VAE", "train", "vae"),
               ("image", "IMAGE", "train", "reference_image")]


def run_and_watch(ui: Frontend, train_id: int, cancel_at: int | None, timeout: float, shot_name: str):
    """Queue, watch the train node's progress text; cancel once it shows step ``cancel_at``. Returns
    (status, prompt id, texts seen while the node ran, the text before the run, start time, cancel note)."""
    before = ui.progress_text(train_id)
    ui.watch_text(train_id)
    since = ui.now()
    status, answer = ui.queue()
    if status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
        return f"refused: HTTP {status} {json.dumps(answer)[:600]}", None, [], before, since, ""
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + timeout
    shot_taken, cancelled_by = False, ""
    while time.monotonic() < deadline:
        text = ui.progress_text(train_id)
        match = STEP.search(text)
        if match and 0 < int(match.group(1)) < int(match.group(2)):
            if not shot_taken:
                ui.frame([train_id])
                ui.shot(shot_name)
                shot_taken = True
            if cancel_at is not None and not cancelled_by and int(match.group(1)) >= cancel_at:
                cancelled_by = ui.cancel()
        events, _ = ui.records(since)
        ends = [e["type"] for e in events if e["type"] in ("execution_success", "execution_error", "execution_interrupted")
                and (e["detail"] or {}).get("prompt_id") == prompt_id]
        if ends:
            break
        time.sleep(0.1)
    time.sleep(1.0)  # the last progress text and the node's outputs arrive with or just after the end event
    events, texts = ui.records(since)
    ends = [e for e in events if e["type"] in ("execution_success", "execution_error", "execution_interrupted")
            and (e["detail"] or {}).get("prompt_id") == prompt_id]
    status = ends[0]["type"] if ends else "timeout"
    if status == "execution_error":
        detail = ends[0]["detail"]
        status += f": {detail.get('exception_type')}: {str(detail.get('exception_message'))[:300]}"
    started = [e["t"] for e in events if e["type"] == "executing" and executing_node(e) == str(train_id)]
    start = started[0] if started else None
    return status, prompt_id, texts, before, start, cancelled_by


def executing_node(event: dict) -> str | None:
    """The node of an 'executing' event: the frontend passes on the node id alone, or the server's dict."""
    detail = event["detail"]
    return str(detail.get("node") if isinstance(detail, dict) else detail)


def fresh_start(texts: list[dict], before: str, start: float | None) -> tuple[bool, str]:
    """Once the node runs, an earlier run's text may show only until the node sends its first own text."""
    if start is None:
        return False, "the train node never reported that it started"
    after = [t for t in texts if t["t"] >= start - 50]
    fresh = [t for t in after if t["v"] and t["v"] != before]
    if not fresh:
        return False, f"no new text after the node started (still '{before[:60]}')"
    first = fresh[0]
    lag = (first["t"] - start) / 1000
    old = before.splitlines()[0][:60] if before else ""
    if before and lag > STALE_LIMIT:
        return False, f"the earlier run's text '{old}' stayed {lag:.1f}s after the node started"
    if before and any(t["v"] == before and t["t"] > first["t"] for t in after):
        return False, f"the earlier run's text '{old}' came back during the run"
    return True, f"'{first['v'].splitlines()[0]}' replaced '{old}' {lag:.2f}s after the node started"


def step_problem(texts: list[dict], start: float | None, total: int) -> tuple[str, list[int]]:
    steps = [int(m.group(1)) for t in texts if (start is None or t["t"] >= start) and (m := STEP.search(t["v"] or ""))
             and int(m.group(2)) == total]
    during = [s for s in steps if 0 < s < total]
    if not during:
        return f"never showed 'step k/{total}' with 0 < k < {total} (saw {[t['v'] for t in texts][:6]})", steps
    if during != sorted(during):
        return f"steps out of order: {during[:20]}", steps
    return "", steps


def check_runs(ui: Frontend, report: Report, demo: dict[str, Path], work: Path, timeout: float) -> None:
    ui.new_blank_workflow()
    ids = ui.build([*loaders(demo), train_node(12, 101), ("save", SAVE, {"filename_prefix": "frontend_check"})],
                   [*TRAIN_LINKS, ("train", 0, "save", "context")])
    train_id, save_id = ids["train"], ids["save"]
    ui.frame(list(ids.values()))
    ui.shot("c_graph")

    # 1: a short run to the end
    total = 12
    status, _, texts, before, start, _ = run_and_watch(ui, train_id, None, timeout, "c_progress_during_run1")
    final = ui.progress_text(train_id)
    ui.frame([train_id, save_id])
    ui.shot("c_progress_done")
    problem, steps = step_problem(texts, start, total)
    report.check("(c) progress text during a run", status == "execution_success" and not problem,
                 problem or (f"run: {status}" if status != "execution_success" else f"showed steps {steps[:3]}...{steps[-2:]}"))
    report.check("(c) progress text after the run", status == "execution_success" and "done" in final.lower(),
                 f"'{final[:120]}'".replace("\n", " | "))

    # (d) Save Context shows what it wrote
    saved = sorted(p.name for p in (work / "anima_contexts").glob("*.safetensors"))
    shown = " | ".join(v for k, v in ui.widget_values(save_id).items() if ".safetensors" in v) or ui.node_dom_text(save_id)
    ui.frame([save_id])
    shot = ui.shot("d_save_context")
    if not saved:
        report.check("(d) Save Context shows its file name", False, f"no file in {work / 'anima_contexts'} (run: {status})")
    else:
        report.check("(d) Save Context shows its file name", any(name in shown for name in saved),
                     f"wrote {saved}; the node shows '{shown.strip()[:160]}' ({shot.name})".replace("\n", " | "))

    # 2: a long run, cancelled with the frontend's button
    total = 400
    ui.set_widget(train_id, "training_steps", total)
    ui.set_widget(train_id, "seed", 202)
    ui.frame([train_id])
    status, _, texts, before, start, how = run_and_watch(ui, train_id, 3, timeout, "c_progress_during_run2")
    final = ui.progress_text(train_id)
    ui.frame([train_id])
    ui.shot("c_progress_cancelled")
    fresh, why = fresh_start(texts, before, start)
    report.check("(c) a new run does not show the last run's text", fresh, why)
    report.check("(c) progress text after a cancel", status == "execution_interrupted" and "cancel" in final.lower(),
                 f"{how or 'not cancelled'} -> {status}; shows '{final[:120]}'".replace("\n", " | "))

    # 3: a run after the cancel
    total = 6
    ui.set_widget(train_id, "training_steps", total)
    ui.set_widget(train_id, "seed", 303)
    status, _, texts, before, start, _ = run_and_watch(ui, train_id, None, timeout, "c_progress_during_run3")
    final = ui.progress_text(train_id)
    fresh, why = fresh_start(texts, before, start)
    ok = status == "execution_success" and fresh and "done" in final.lower()
    report.check("(c) a run after the cancel starts fresh and ends 'done'", ok,
                 f"{why}; run: {status}; shows '{final[:80]}'".replace("\n", " | "))


TWO_CHARACTERS = "5. Two characters"
# the template's settings shrunk for the random-weight demo models on a CPU (the masks stay 1024 square)
SHRINK = {TRAIN: {"training_steps": 3, "training_image_size": 64, "num_tokens": 4, "training_dtype": "float32"},
          "EmptyLatentImage": {"width": 128, "height": 128}, "KSampler": {"steps": 2}}


def check_two_characters(ui: Frontend, report: Report, work: Path, timeout: float) -> None:
    dialog = ui.open_templates(PACK_FOLDER)
    ui.open_template(dialog, TWO_CHARACTERS)
    ui.close_dialogs()
    nodes = ui.page.evaluate("() => window.app.graph.nodes.map((n) => [n.id, n.type])")
    for node_id, kind in nodes:
        for name, value in SHRINK.get(kind, {}).items():
            ui.set_widget(node_id, name, value)
    before = set((work / "output").rglob("*.png"))
    since = ui.now()
    status, answer = ui.queue()
    if status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
        report.check(f"(f) template '{TWO_CHARACTERS}' runs", False, f"refused: HTTP {status} {json.dumps(answer)[:600]}")
        return
    end = ui.wait_for_end(answer["prompt_id"], since, timeout)
    if end == "execution_error":
        events, _ = ui.records(since)
        detail = next(e["detail"] for e in events if e["type"] == "execution_error")
        end += f": {detail.get('exception_type')}: {str(detail.get('exception_message'))[:300]}"
    time.sleep(1.0)
    ui.frame([node_id for node_id, kind in nodes if kind in ("AnimaFastTrainApplyContext", "KSampler", "SaveImage")])
    shot = ui.shot("f_two_characters_ran")
    saved = sorted(p.name for p in set((work / "output").rglob("*.png")) - before)
    applies = sum(1 for _, kind in nodes if kind == APPLY)
    report.check(f"(f) template '{TWO_CHARACTERS}' runs", end == "execution_success" and len(saved) == 1 and applies == 2,
                 f"{end}; {applies} Apply Context nodes; saved {saved} ({shot.name})")


def check_refusal(ui: Frontend, report: Report, demo: dict[str, Path]) -> None:
    ui.new_blank_workflow()
    ids = ui.build(
        [*loaders(demo), train_node(5, 404),
         ("apply", APPLY, {"start_percent": 0.8, "end_percent": 0.2}),
         ("pos", "CLIPTextEncode", {"text": "1girl"}), ("neg", "CLIPTextEncode", {"text": ""}),
         ("latent", "EmptyLatentImage", {"width": 64, "height": 64}),
         ("sampler", "KSampler", {"steps": 1}), ("decode", "VAEDecode", {}), ("preview", "PreviewImage", {})],
        [*TRAIN_LINKS, ("unet", "MODEL", "apply", "model"), ("train", 0, "apply", "context"),
         ("clip", "CLIP", "pos", "clip"), ("clip", "CLIP", "neg", "clip"), ("apply", "MODEL", "sampler", "model"),
         ("pos", "CONDITIONING", "sampler", "positive"), ("neg", "CONDITIONING", "sampler", "negative"),
         ("latent", "LATENT", "sampler", "latent_image"), ("sampler", "LATENT", "decode", "samples"),
         ("vae", "VAE", "decode", "vae"), ("decode", "IMAGE", "preview", "images")])
    ui.watch_text(ids["train"])
    since = ui.now()
    status, answer = ui.queue()
    time.sleep(3)  # anything that would run would have started by now
    events, texts = ui.records(since)
    ran = [e for e in events if e["type"] in ("execution_start", "executing")]
    text = json.dumps(answer) if not isinstance(answer, str) else answer
    node_errors = answer.get("node_errors", {}) if isinstance(answer, dict) else {}
    apply_errors = node_errors.get(str(ids["apply"]), {}).get("errors", [])
    messages = " ".join(f"{e.get('message', '')} {e.get('details', '')}" for e in apply_errors)
    found = ui.errors()
    ui.frame([ids["train"], ids["apply"]])
    shot = ui.shot("e_refused")
    shown = ui.error_panel_text()  # what the user reads after 'View details'
    ui.shot("e_refused_details")
    ui.close_panel()
    problems = []
    if status == 200:
        problems.append("the server accepted the prompt")
    if not re.search(r"start_percent", messages) or not re.search(r"end_percent", messages):
        problems.append(f"Apply Context's errors do not name start_percent and end_percent: {messages[:200] or text[:300]}")
    if ran:
        problems.append(f"nodes ran: {[e['detail'] for e in ran][:3]}")
    if any(t["v"] for t in texts):
        problems.append(f"the train node showed '{texts[-1]['v'][:60]}'")
    first = next((f"{e.get('details') or e.get('message')}" for e in apply_errors), "")
    if first and first[:60] not in shown:
        problems.append(f"the frontend's error details do not show the message (shows '{shown[:200]}')")
    if not any(str(ids["apply"]) == m.split()[0] for m in found["marked"]):
        problems.append(f"Apply Context is not marked red in the frontend (marked: {found['marked']})")
    named = sorted({e.get("extra_info", {}).get("input_name", "?") for e in apply_errors})
    report.check("(e) start_percent > end_percent refused when queued", not problems,
                 "; ".join(problems) or f"HTTP {status}, Apply Context marked red, 'View details' shows '{first[:150]}'; "
                                        f"nothing ran ({shot.name})")
    if set(named) - {"start_percent", "end_percent"}:
        report.note(f"the error is listed under inputs {named} (ComfyUI names every input of VALIDATE_INPUTS)")


# --- main -------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI folder (default $COMFYUI_PATH)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs ComfyUI (default: this one)")
    parser.add_argument("--out", type=Path, default=REPO / ".frontend_check",
                        help="screenshots, the server's folders and log (default .frontend_check/ in the clone)")
    parser.add_argument("--models-dir", type=Path, default=REPO / "demo",
                        help="the demo models, written there by demo-models if missing (default demo/, as the README's main job)")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"), help="Chromium to drive")
    parser.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--only", default="abcdef", help="the checks to run, e.g. 'ab' (default abcdef)")
    args = parser.parse_args(argv)
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        parser.error("set COMFYUI_PATH (or --comfyui) to a ComfyUI folder with main.py")
    if not Path(args.chromium).is_file():
        parser.error(f"no Chromium at {args.chromium} (Debian: apt-get install chromium; or --chromium PATH)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        parser.error(f"{sys.executable} has no Playwright: pip install playwright (the browser is the system Chromium)")

    comfyui = Path(args.comfyui).resolve()
    out = args.out.resolve()
    shots = out / "screenshots"
    if shots.exists():
        shutil.rmtree(shots)
    shots.mkdir(parents=True)
    models_dir = args.models_dir.resolve()
    demo = demo_models(models_dir, comfyui, args.python)
    links = out / "official_names"
    official_name_links(links, demo)
    server = Server(comfyui, args.python, out / "server", args.port or free_port(), [models_dir, links])
    report = Report()
    blocked: list[str] = []
    started = time.monotonic()
    print(f"ComfyUI {comfyui} on {server.base} (log {server.log_path}); screenshots in {shots}", flush=True)
    try:
        server.start()
        object_info = get_json(server.base, "/object_info")
        names = {kind: object_info[kind]["display_name"] for kind in (TRAIN, MASKED, APPLY, SAVE, LOAD) if kind in object_info}
        if len(names) < 5:
            raise SystemExit(f"the server lacks the pack's nodes (has {sorted(names)}); see {server.log_path}")
        with sync_playwright() as playwright:
            browser, context = launch(playwright, args.chromium, server.base, blocked)
            try:
                ui = Frontend(context.new_page(), server.base, shots)
                ui.open()
                steps = [("a", lambda: check_templates(ui, report)), ("b", lambda: check_search(ui, report, names)),
                         ("c", lambda: check_runs(ui, report, demo, server.work, args.timeout)),
                         ("e", lambda: check_refusal(ui, report, demo)),
                         ("f", lambda: check_two_characters(ui, report, server.work, args.timeout))]
                if "d" in args.only and "c" not in args.only:
                    args.only += "c"  # Save Context runs in (c)'s first run
                for key, step in steps:
                    if key not in args.only:
                        continue
                    try:
                        step()
                    except Exception as error:  # one broken step must not hide the others
                        ui.shot(f"{key}_crashed")
                        where = traceback.extract_tb(error.__traceback__)[-1]
                        report.check(f"({key}) ran to the end", False,
                                     f"{type(error).__name__}: {str(error)[:400]} (line {where.lineno}: {where.line})")
                scripts = sorted(p.relative_to(REPO / "web").as_posix() for p in (REPO / "web").rglob("*.js"))
                loaded = {url.split(f"/extensions/{PACK_FOLDER}/", 1)[1]: status for url, status in ui.extension_files.items()
                          if f"/extensions/{PACK_FOLDER}/" in url}
                unloaded = [f"{name} ({loaded.get(name, 'not requested')})" for name in scripts if loaded.get(name) != 200]
                report.check("page: the pack's web extension loads", not unloaded,
                             f"not loaded: {unloaded}" if unloaded else f"{scripts} served and loaded")
                pack_errors = [e for e in ui.js_errors if PACK_FOLDER in e or "anima" in e.lower()]
                report.check("page: no JavaScript errors from the pack", not pack_errors, "; ".join(pack_errors)[:400] or
                             f"{len(ui.js_errors)} page errors in all" + (f" (first: {ui.js_errors[0][:120]})" if ui.js_errors else ""))
            finally:
                browser.close()
    finally:
        server.stop()
    if blocked:
        report.note(f"the page tried to reach {len(set(blocked))} outside address(es), refused: {sorted(set(blocked))[:3]}")
    print(f"{'all checks passed' if not report.failed else f'{report.failed} check(s) FAILED'} "
          f"in {time.monotonic() - started:.0f}s; screenshots: {shots}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
