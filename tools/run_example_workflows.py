"""Run every example workflow on a real ComfyUI server, shrunk to the pack's random-weight demo models.

Each ``example_workflows/*.json`` (UI format) becomes an API prompt the way the frontend builds one: links
become inputs, ``widgets_values`` are matched to the widget inputs in the order of the server's
``/object_info`` (skipping the frontend's 'control after generate' value after a seed), notes and muted
nodes are left out, bypassed nodes pass their input through. Then model files are swapped for the demo
ones (``python -m anima_context demo-models DIR``), Load Image gets an uploaded RGBA test picture, sizes and steps shrink, and Apply Context's block
selection is mapped from Anima's 28 blocks onto the demo DiT's 10. A workflow with muted
nodes (save_then_load) runs twice: as it is (train and save), then with the muted part on and the rest
off except what feeds it (load and sample), with Load Context set to the file the first run saved.

    # against a running server (127.0.0.1 only) that has this pack in custom_nodes and the demo models:
    python tools/run_example_workflows.py --port 8190
    # or start a private server (own input/output/temp/user/anima_contexts folders under --work-dir) on
    # ComfyUI's Python, with the demo models of --demo-models DIR (default: demo/ in this folder):
    COMFYUI_PATH=path/to/ComfyUI python tools/run_example_workflows.py --start

Exit code 0 when every workflow succeeded. Development only: CI does not run it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# The files that anima_context/demo_models.py writes (DEMO_FILES; tests/test_cli.py checks they agree).
DEMO_MODELS = {
    "UNETLoader": ("unet_name", "diffusion_models", "anima_demo_dit.safetensors"),
    "CLIPLoader": ("clip_name", "text_encoders", "anima_demo_qwen3_06b.safetensors"),
    "VAELoader": ("vae_name", "vae", "anima_demo_vae.safetensors"),
}
DEFAULT_DEMO_DIR = REPO / "demo"
TRAIN_NODES = {"AnimaFastTrainReferenceContext", "AnimaFastTrainMaskedReferenceContext"}
SKIPPED_TYPES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED, BYPASSED = 2, 4
UPLOAD_NAME = "anima_fasttrain_check_rgba.png"
PACK_LINK = "AnimaFastTrain"


# --- HTTP ---------------------------------------------------------------------------------------------------

def stop_process(process: subprocess.Popen) -> None:
    """Ask the server to exit (as ctrl-C does), then insist; only the process a script started."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        process.send_signal(sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def http(base, path, data=None, headers=None, timeout=60):
    request = urllib.request.Request(base + path, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def get_json(base, path):
    status, body, _ = http(base, path)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {body[:500]!r}")
    return json.loads(body)


def post_json(base, path, payload):
    status, body, _ = http(base, path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def server_up(base):
    try:
        return http(base, "/system_stats", timeout=3)[0] == 200
    except OSError:
        return False


def upload_png(base, name, png_bytes):
    boundary = uuid.uuid4().hex
    parts = []
    for field, value in (("overwrite", "true"), ("type", "input")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + png_bytes + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    status, body, _ = http(base, "/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if status != 200:
        raise RuntimeError(f"upload failed: HTTP {status}: {body[:300]!r}")
    return json.loads(body)["name"]


def test_picture():
    """A 'character' (an ellipse with a face-like mark) on a transparent background, not square."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (192, 256), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse([36, 40, 156, 236], fill=(220, 120, 160, 255))
    draw.ellipse([66, 80, 126, 140], fill=(250, 220, 200, 255))
    draw.rectangle([80, 150, 112, 230], fill=(70, 90, 200, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# --- UI workflow -> API prompt ------------------------------------------------------------------------------

def _widget_names(info):
    """Widget input names of a node in the frontend's order, with None for each extra frontend-only value
    (the 'control after generate' after a seed, the upload button after an image_upload combo)."""
    order = info.get("input_order") or {section: list(info["input"].get(section, {})) for section in ("required", "optional")}
    names = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"].get(section, {}).get(name)
            if not spec:
                continue
            kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                names.append(name)
                if options.get("control_after_generate") or (name in ("seed", "noise_seed") and kind == "INT"):
                    names.append(None)
                if options.get("image_upload"):
                    names.append(None)
    return names


def to_api_prompt(workflow, object_info):
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def active(node):
        return node["type"] not in SKIPPED_TYPES and node.get("mode", 0) not in (MUTED, BYPASSED)

    def source_of(link_id):
        """(node id, slot) feeding this link, through bypassed nodes; None if it comes from a muted node."""
        _, source, slot, _, _, link_type = links[link_id]
        node = nodes[source]
        if node.get("mode", 0) == BYPASSED:
            for entry in node.get("inputs", []):
                if entry.get("link") is not None and entry["type"] in (link_type, "*"):
                    return source_of(entry["link"])
            return None
        if not active(node):
            return None
        return str(source), slot

    prompt = {}
    for node in workflow["nodes"]:
        if not active(node):
            continue
        if node["type"] not in object_info:
            raise KeyError(f"the server has no node type {node['type']} (node {node['id']})")
        inputs = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None and (source := source_of(entry["link"])) is not None:
                inputs[entry["name"]] = list(source)
        values = list(node.get("widgets_values") or [])
        for name, value in zip(_widget_names(object_info[node["type"]]), values):
            if name is not None and name not in inputs:
                inputs[name] = value
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or node["type"]}}
    return prompt


def scale_blocks(selection, blocks_from=28, blocks_to=10):
    """A block selection for Anima's 28 blocks, mapped onto the demo DiT's 10: '0-20' becomes '0-7'."""
    text = str(selection).strip()
    if text.lower() == "all" or not text:
        return text
    if "." in text:  # one weight per block: resample
        weights = [w.strip() for w in text.split(",") if w.strip()]
        return ",".join(weights[round(i * (len(weights) - 1) / max(1, blocks_to - 1))] for i in range(blocks_to))

    def index(value):
        return str(round(int(value) * (blocks_to - 1) / (blocks_from - 1)))

    return ",".join("-".join(index(end) for end in part.split("-")) for part in text.replace(" ", "").split(","))


def shrink(prompt, image_name):
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind in DEMO_MODELS:
            key, _, name = DEMO_MODELS[kind]
            inputs[key] = name
        elif kind == "LoadImage":
            inputs["image"] = image_name
        elif kind == "EmptyLatentImage":
            inputs.update(width=256, height=256, batch_size=1)
        elif kind == "KSampler":
            inputs["steps"] = 2
        elif kind in TRAIN_NODES:
            inputs.update(training_steps=3, training_image_size=128)
        elif kind == "AnimaFastTrainApplyContext" and "blocks" in inputs:
            inputs["blocks"] = scale_blocks(inputs["blocks"])
        elif kind == "SaveImage":
            inputs["filename_prefix"] = "anima_fasttrain_check/" + str(inputs.get("filename_prefix", "image"))
    return prompt


def second_phase(workflow):
    """The muted part switched on, and off whatever was on except the nodes that feed the muted part."""
    workflow = json.loads(json.dumps(workflow))
    nodes = {node["id"]: node for node in workflow["nodes"]}
    muted = {node_id for node_id, node in nodes.items() if node.get("mode", 0) == MUTED}
    feeders = {link[1] for link in workflow["links"] if link[3] in muted and link[1] not in muted}
    for node_id, node in nodes.items():
        if node["type"] in SKIPPED_TYPES:
            continue
        node["mode"] = 0 if node_id in muted or node_id in feeders else MUTED
    return workflow


# --- running ------------------------------------------------------------------------------------------------

def queue_and_wait(base, prompt, timeout):
    status, body = post_json(base, "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    if status != 200:
        return False, f"rejected: {json.dumps(body)[:3000]}", None
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = get_json(base, f"/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            ok = entry.get("status", {}).get("status_str") == "success"
            errors = [f"node {d.get('node_id')} ({d.get('node_type')}): {d.get('exception_type')}: {d.get('exception_message')}"
                      for kind, d in entry.get("status", {}).get("messages", []) if kind == "execution_error"]
            return ok, "; ".join(errors) or ("success" if ok else "failed"), entry
        time.sleep(0.5)
    return False, f"no result in {timeout}s", None


def summarize(prompt, entry):
    lines = []
    for node_id, output in (entry or {}).get("outputs", {}).items():
        kind = prompt.get(node_id, {}).get("class_type", "?")
        if output.get("images"):
            image = output["images"][0]
            lines.append(f"    node {node_id} {kind}: {len(output['images'])} image(s), e.g. {image.get('subfolder') or '.'}/{image.get('filename')}")
        for text in output.get("text", []) or []:
            first = str(text).strip().splitlines()[:3]
            lines.append(f"    node {node_id} {kind}: " + " | ".join(first))
    return "\n".join(lines)


def saved_context_name(entry):
    for output in (entry or {}).get("outputs", {}).values():
        for text in output.get("text", []) or []:
            match = re.match(r"saved (\S+\.safetensors) in (?:models/)?anima_contexts", str(text))
            if match:
                return match.group(1)
    return None


def check_templates(base, module, names):
    """ComfyUI serves a custom node's example_workflows as templates, with <name>.jpg beside each."""
    listed = get_json(base, "/workflow_templates").get(module, [])
    problems = [f"{name} not listed" for name in names if name not in listed]
    for name in names:
        for suffix, kind in ((".json", "json"), (".jpg", "image/jpeg")):
            status, body, content_type = http(base, f"/api/workflow_templates/{module}/{urllib.parse.quote(name + suffix)}")
            if status != 200 or kind not in content_type:
                problems.append(f"{name}{suffix}: HTTP {status} {content_type}")
    return problems


def run_all(base, paths, timeout, module=None):
    object_info = get_json(base, "/object_info")
    missing = [t for t in ("AnimaFastTrainReferenceContext", "AnimaFastTrainApplyContext") if t not in object_info]
    if missing:
        raise SystemExit(f"the server at {base} does not have the pack's nodes ({missing}); link it into custom_nodes")
    image_name = upload_png(base, UPLOAD_NAME, test_picture())
    results = []
    for path in paths:
        workflow = json.loads(path.read_text(encoding="utf-8"))
        phases = [("", workflow)]
        if any(node.get("mode", 0) == MUTED for node in workflow["nodes"]):
            phases = [(" [part 1: as shipped]", workflow), (" [part 2: the muted part]", second_phase(workflow))]
        saved = None
        for label, graph in phases:
            name = path.stem + label
            try:
                info = object_info if not saved else get_json(base, "/object_info")
                prompt = shrink(to_api_prompt(graph, info), image_name)
                for node in prompt.values():
                    if node["class_type"] == "AnimaFastTrainSaveContext":
                        node["inputs"]["filename_prefix"] = "anima_fasttrain_check"
                    if node["class_type"] == "AnimaFastTrainLoadContext":
                        choices = info["AnimaFastTrainLoadContext"]["input"]["required"]["context_name"][0]
                        if saved not in choices:
                            raise RuntimeError(f"Load Context does not list {saved!r} (lists {choices[:5]})")
                        node["inputs"]["context_name"] = saved
                start = time.monotonic()
                ok, message, entry = queue_and_wait(base, prompt, timeout)
                saved = saved_context_name(entry) or saved
                took = time.monotonic() - start
            except Exception as error:  # report and go on with the next workflow
                ok, message, entry, took, prompt = False, f"{type(error).__name__}: {error}", None, 0.0, {}
            results.append((name, ok, message))
            print(f"{'SUCCESS' if ok else 'FAILED '} {name} ({took:.1f}s): {message}", flush=True)
            if entry:
                print(summarize(prompt, entry), flush=True)
    if module:
        problems = check_templates(base, module, [path.stem for path in paths])
        results.append(("templates menu (/workflow_templates, .json and .jpg served)", not problems, "; ".join(problems) or "success"))
        print(f"{'SUCCESS' if not problems else 'FAILED '} templates: {'; '.join(problems) or 'all listed and served'}")
    return results


class PrivateServer:
    """ComfyUI on 127.0.0.1 with only this pack (linked from a private custom_nodes folder) and private
    input/output/temp/user/anima_contexts folders; models come from the checkout's models folder and the
    demo model folder."""

    def __init__(self, comfyui_dir, python, port, work_dir, log_path, demo_models=DEFAULT_DEMO_DIR):
        self.comfyui_dir, self.python, self.port = Path(comfyui_dir).resolve(), python, port
        self.demo_models = Path(demo_models).resolve()
        self.work = Path(work_dir or tempfile.mkdtemp(prefix="anima_fasttrain_check_"))
        self.log_path = Path(log_path) if log_path else self.work / "server.log"
        self.process = None

    def start(self, base, timeout=300):
        if server_up(base):
            raise SystemExit(f"something already answers on {base}: stop it, pick another --port, or leave out --start")
        for sub in ("custom_nodes", "input", "output", "temp", "user", "anima_contexts"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        link = self.work / "custom_nodes" / PACK_LINK
        if not link.is_symlink():
            link.symlink_to(REPO, target_is_directory=True)
        config = self.work / "extra_model_paths.yaml"
        missing = [str(self.demo_models / sub / name) for _, sub, name in DEMO_MODELS.values()
                   if not (self.demo_models / sub / name).is_file()]
        if missing:
            raise SystemExit(f"no demo models in {self.demo_models} ({', '.join(missing)} missing): write them with "
                             f"python -m anima_context demo-models {self.demo_models}")
        models = "".join(f"    {sub}: {self.demo_models / sub}\n" for _, sub, _ in DEMO_MODELS.values())
        config.write_text(f"anima_fasttrain_check:\n    custom_nodes: {self.work / 'custom_nodes'}\n"
                          f"    anima_contexts: {self.work / 'anima_contexts'}\n" + models)
        command = [self.python, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
                   "--extra-model-paths-config", str(config), "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_LINK,
                   "--input-directory", str(self.work / "input"), "--output-directory", str(self.work / "output"),
                   "--temp-directory", str(self.work / "temp"), "--user-directory", str(self.work / "user"),
                   "--database-url", "sqlite:///:memory:"]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=self.comfyui_dir, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        print(f"started ComfyUI pid {self.process.pid} on {base} (log {self.log_path})", flush=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"ComfyUI exited with {self.process.returncode} while starting; see {self.log_path}")
            if server_up(base):
                return
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"ComfyUI did not answer in {timeout}s; see {self.log_path}")

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        stop_process(self.process)
        print(f"stopped ComfyUI pid {self.process.pid} (exit {self.process.returncode})", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflows", nargs="*", type=Path, help="UI-format workflows (default: example_workflows/*.json)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("COMFYUI_PORT", "8190")), help="server port on 127.0.0.1")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per prompt")
    parser.add_argument("--start", action="store_true", help="start a private server for the run and stop it after")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (with --start; default: $COMFYUI_PATH)")
    parser.add_argument("--demo-models", default=str(DEFAULT_DEMO_DIR),
                        help="the folder 'python -m anima_context demo-models DIR' wrote (with --start; default: demo/ here)")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable), help="interpreter for main.py (with --start)")
    parser.add_argument("--work-dir", help="folder for the private server's input/output/... (with --start; default: a temp folder)")
    parser.add_argument("--server-log", help="server log file (with --start)")
    parser.add_argument("--templates-module", help="custom node folder name to check the templates menu for (default with --start: "
                                                   f"{PACK_LINK})")
    args = parser.parse_args(argv)
    paths = args.workflows or sorted((REPO / "example_workflows").glob("*.json"))
    base = f"http://{HOST}:{args.port}"
    server = None
    try:
        if args.start:
            if not args.comfyui:
                raise SystemExit("--start needs --comfyui or COMFYUI_PATH")
            server = PrivateServer(args.comfyui, args.python, args.port, args.work_dir, args.server_log, args.demo_models)
            server.start(base)
        elif not server_up(base):
            raise SystemExit(f"no ComfyUI answers on {base}; start one or pass --start")
        module = args.templates_module or (PACK_LINK if args.start else None)
        results = run_all(base, paths, args.timeout, module)
    finally:
        if server is not None:
            server.stop()
    failed = [name for name, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} succeeded" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
