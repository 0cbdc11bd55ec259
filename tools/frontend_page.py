"""ComfyUI's real frontend in headless Chromium (Playwright), for tools/check_frontend.py.

Only what a user does or sees: the Templates dialog, the node search box a double-click opens, the Run
shortcut and the cancel button; the page's own ``window.app`` is read for what is drawn on the canvas
(node error marks, the text under a progress bar, a node's widgets) and to lay out a small graph.
Every request that is not for the local server is refused, so the page reaches nothing else.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

VIEWPORT = {"width": 1920, "height": 1200}
TEXT_PREVIEW = "$$node-text-preview"  # the frontend's widget for the text under a progress bar
EVENTS = ("execution_start", "execution_cached", "executing", "executed", "progress_text", "execution_error",
          "execution_interrupted", "execution_success")

# Records the server's websocket events (as the frontend's api object dispatches them) and every change of
# one node's progress text, with the page's clock, so a run can be read back after it ended.
RECORDER_JS = """(events) => {
  if (window.__check) return;
  window.__check = {events: [], texts: [], watched: null, last: undefined};
  for (const type of events) {
    window.app.api.addEventListener(type, (e) => {
      const d = e.detail;
      const detail = type === 'executed' ? {node: d.node, output: d.output, prompt_id: d.prompt_id} : d;
      window.__check.events.push({t: performance.now(), type, detail});
    });
  }
  setInterval(() => {
    const c = window.__check;
    if (c.watched === null) return;
    const node = window.app.graph.getNodeById(c.watched);
    const widget = node?.widgets?.find((w) => w.name === '""" + TEXT_PREVIEW + """');
    const value = widget ? String(widget.value ?? '') : null;
    if (value !== c.last) { c.texts.push({t: performance.now(), v: value}); c.last = value; }
  }, 25);
}"""

ERRORS_JS = """() => {
  const visible = (el) => !!(el.offsetParent || el.getClientRects().length);
  const nodes = window.app.graph.nodes;
  const marked = nodes.filter((n) => n.has_errors).map((n) => `${n.id} ${n.title || n.type}`);
  const unknown = nodes.filter((n) => !window.LiteGraph.registered_node_types[n.type]).map((n) => `${n.id} ${n.type}`);
  const dialogs = [...document.querySelectorAll('[role=dialog],[role=alertdialog]')].filter(visible)
    .map((d) => d.innerText.replace(/\\s+/g, ' ').trim().slice(0, 300));
  const banners = [...document.querySelectorAll('body *')].filter((el) => el.children.length === 0 && visible(el)
    && /^\\d+ errors? found$/i.test((el.innerText || '').trim())).map((el) => el.innerText.trim());
  const toasts = [...document.querySelectorAll('.p-toast-message')].filter(visible)
    .map((d) => d.innerText.replace(/\\s+/g, ' ').trim().slice(0, 300));
  return {count: nodes.length, marked, unknown, dialogs, banners, toasts};
}"""

# Lays out nodes like a user dragging them from the search box: LiteGraph.createNode, widget values by
# name, links by slot name. Returns the new node ids by key.
BUILD_JS = """(spec) => {
  const graph = window.app.graph, ids = {}, made = {};
  let x = 40;
  for (const [key, type, values] of spec.nodes) {
    const node = window.LiteGraph.createNode(type);
    if (!node) throw new Error('the frontend does not know the node type ' + type);
    node.pos = [x, 80 + (Object.keys(made).length % 2) * 40];
    x += node.size[0] + 40;
    graph.add(node);
    for (const [name, value] of Object.entries(values || {})) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (!widget) throw new Error(type + ' has no widget ' + name);
      widget.value = value;
      widget.callback?.(value);
    }
    made[key] = node; ids[key] = node.id;
  }
  for (const [from, output, to, input] of spec.links) {
    const a = made[from], b = made[to];
    const slot = typeof output === 'number' ? output : a.findOutputSlot(output);
    const target = b.findInputSlot(input);
    if (slot < 0 || target < 0) throw new Error(`no slot ${from}.${output} -> ${to}.${input}`);
    a.connect(slot, b, target);
  }
  graph.setDirtyCanvas(true, true);
  return ids;
}"""

# Frames the given nodes on the canvas so that a screenshot shows their text at a readable size.
FRAME_JS = """(ids) => {
  const canvas = window.app.canvas, graph = window.app.graph;
  const nodes = ids.map((id) => graph.getNodeById(id)).filter(Boolean);
  if (!nodes.length) return;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 40);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const rect = canvas.canvas.getBoundingClientRect();
  const scale = Math.min(1.6, rect.width / (x1 - x0 + 120), rect.height / (y1 - y0 + 160));
  canvas.ds.scale = scale;
  canvas.ds.offset = [-x0 + (rect.width / scale - (x1 - x0)) / 2, -y0 + (rect.height / scale - (y1 - y0)) / 2];
  canvas.setDirty(true, true);
}"""


def launch(playwright, chromium: str, base: str, blocked: list[str]):
    """Headless Chromium (the system one: nothing is downloaded) whose page reaches only ``base``."""
    args = ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]  # no name resolves, whatever asks
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
    browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=args)
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")

    def route(route):
        url = route.request.url
        if url.startswith(base + "/") or url == base or url.startswith(("data:", "blob:")):
            return route.continue_()
        blocked.append(url)
        return route.abort()

    context.route("**/*", route)
    return browser, context


class Frontend:
    """One page of ComfyUI's frontend, with the error and event records the checks read."""

    def __init__(self, page, base: str, shots: Path):
        self.page, self.base, self.shots = page, base, shots
        self.js_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda error: self.js_errors.append(str(error)))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.extension_files: dict[str, int] = {}  # /extensions/... URL -> HTTP status
        page.on("response", lambda r: self.extension_files.__setitem__(r.url, r.status) if "/extensions/" in r.url else None)

    # --- the page ---------------------------------------------------------------------------------------

    def open(self, timeout: float = 180) -> None:
        self.page.goto(self.base + "/", timeout=timeout * 1000)
        self.page.wait_for_function("window.app && window.app.graph && window.app.canvas && window.app.api && window.LiteGraph",
                                    timeout=timeout * 1000)
        self.page.evaluate(RECORDER_JS, list(EVENTS))
        time.sleep(2)  # the first visit opens the Templates dialog a moment after the app is ready

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def close_dialogs(self) -> None:
        for _ in range(4):
            if not self.page.locator("[role=dialog]:visible").count():
                return
            self.page.keyboard.press("Escape")
            time.sleep(0.4)

    def command(self, name: str) -> None:
        """A frontend command, as its menu entry or shortcut runs it."""
        self.page.evaluate("(name) => window.app.extensionManager.command.execute(name)", name)
        time.sleep(0.8)

    def new_blank_workflow(self) -> None:
        self.close_dialogs()
        self.command("Comfy.NewBlankWorkflow")
        self.page.wait_for_function("window.app.graph.nodes.length === 0", timeout=10000)

    def errors(self) -> dict:
        return self.page.evaluate(ERRORS_JS)

    def error_panel_text(self) -> str:
        """Click the error toast's 'View details', as a user would; the page's text then (with the panel)."""
        button = self.page.get_by_role("button", name="View details")
        if not button.count():
            return ""
        button.first.click()
        time.sleep(1.2)
        infos = self.page.locator('button[aria-label^="Info for"][aria-expanded="false"]')
        for _ in range(8):  # each error's message opens under its (i) button
            if not infos.count():
                break
            infos.first.click()
            time.sleep(0.3)
        return re.sub(r"\s+", " ", self.page.evaluate("document.body.innerText")).strip()

    def error_details(self) -> str:
        """The error panel's own lines (from 'Errors detected' on), when the frontend offers one."""
        text = self.error_panel_text()
        return text[text.find("Errors detected"):] if "Errors detected" in text else ""

    def close_panel(self) -> None:
        """The right-hand panel that 'View details' opens."""
        if self.page.get_by_text("Workflow Overview", exact=True).count():
            self.page.get_by_role("button", name="Toggle properties panel").first.click()
            time.sleep(0.5)

    def frame(self, node_ids) -> None:
        self.page.evaluate(FRAME_JS, [int(i) for i in node_ids])
        time.sleep(0.5)

    # --- templates --------------------------------------------------------------------------------------

    def open_templates(self, category: str):
        """Templates (the sidebar button; the first visit opens it by itself), then the pack's category."""
        dialog = self.page.locator("[role=dialog]").filter(has_text="Templates")
        if not dialog.count() or not dialog.first.is_visible():
            self.close_dialogs()
            self.page.get_by_role("button", name="Templates", exact=True).click()
        dialog = self.page.locator("[role=dialog]").filter(has_text="Templates").first
        dialog.wait_for(timeout=20000)
        dialog.get_by_text(category, exact=True).first.click()
        time.sleep(1.5)
        return dialog

    def template_cards(self, dialog) -> list[str]:
        cards = dialog.locator('[data-testid^="template-workflow-"]')
        cards.first.wait_for(timeout=20000)
        return [cards.nth(i).locator("h3").inner_text().strip() for i in range(cards.count())]

    def open_template(self, dialog, title: str) -> None:
        dialog.locator('[data-testid^="template-workflow-"]').filter(
            has=self.page.locator("h3", has_text=title)).first.click()
        dialog.wait_for(state="hidden", timeout=20000)
        self.page.wait_for_function("window.app.graph.nodes.length > 0", timeout=20000)
        time.sleep(2.5)  # the frontend checks models and media a moment after the graph is drawn

    # --- node search ------------------------------------------------------------------------------------

    def search(self, words: str, settle: float = 0.6) -> list[str]:
        """Double-click the empty canvas, type ``words`` into the search box, return the result titles."""
        self.close_dialogs()
        self.page.evaluate("window.app.graph.nodes.length && window.app.graph.clear()")
        box = self.page.locator("#graph-canvas").bounding_box()
        x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.55
        self.page.mouse.click(x, y)
        time.sleep(0.8)  # or the canvas takes this click and the next for a double-click, and the third lands in the box
        self.page.mouse.dblclick(x, y, delay=5)
        # the box takes the keyboard focus when it opens
        self.page.wait_for_function("""() => { const el = document.activeElement;
            return el && el.tagName === 'INPUT' && !!el.closest('[role=dialog],[role=search],.comfy-vue-node-search-container'); }""",
                                    timeout=10000)
        self.page.keyboard.type(words, delay=20)
        results = self.page.locator('[data-testid="result-item"]:visible, .comfy-vue-node-search-container [role=option]:visible')
        last, stable_since = None, time.monotonic()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:  # the list updates after a debounce; wait until it holds still
            titles = [t.split("\n")[0].strip() for t in results.all_inner_texts()]
            if titles != last:
                last, stable_since = titles, time.monotonic()
            elif time.monotonic() - stable_since > settle:
                break
            time.sleep(0.1)
        return last or []

    # --- running ----------------------------------------------------------------------------------------

    def build(self, nodes, links) -> dict[str, int]:
        return self.page.evaluate(BUILD_JS, {"nodes": nodes, "links": links})

    def set_widget(self, node_id: int, name: str, value) -> None:
        self.page.evaluate("""([id, name, value]) => { const n = window.app.graph.getNodeById(id);
            const w = n.widgets.find((w) => w.name === name); w.value = value; w.callback?.(value); }""",
                           [int(node_id), name, value])

    def widget_values(self, node_id: int) -> dict:
        return self.page.evaluate("""(id) => Object.fromEntries((window.app.graph.getNodeById(id)?.widgets || [])
            .map((w) => [w.name, w.value === undefined || w.value === null ? '' : String(w.value)]))""", int(node_id))

    def node_dom_text(self, node_id: int) -> str:
        """Text of the DOM widgets (text boxes) the frontend lays over a node."""
        return self.page.evaluate("""(id) => (window.app.graph.getNodeById(id)?.widgets || [])
            .map((w) => w.element ? (w.element.value ?? w.element.innerText ?? '') : '').join('\\n')""", int(node_id))

    def watch_text(self, node_id: int | None) -> None:
        self.page.evaluate("(id) => { window.__check.watched = id; window.__check.last = undefined; }", node_id)

    def now(self) -> float:
        return self.page.evaluate("performance.now()")

    def records(self, since: float) -> tuple[list[dict], list[dict]]:
        return self.page.evaluate("""(since) => [window.__check.events.filter((e) => e.t >= since),
            window.__check.texts.filter((e) => e.t >= since)]""", since)

    def progress_text(self, node_id: int) -> str:
        return self.widget_values(node_id).get(TEXT_PREVIEW, "")

    def queue(self) -> tuple[int, dict | str]:
        """Ctrl+Enter on the canvas (the frontend's Run shortcut); the server's answer to POST /prompt."""
        self.close_dialogs()
        box = self.page.locator("#graph-canvas").bounding_box()
        self.page.mouse.click(box["x"] + box["width"] - 60, box["y"] + box["height"] - 60)
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                                       timeout=30000) as answer:
            self.page.keyboard.press("Control+Enter")
        response = answer.value
        try:
            return response.status, response.json()
        except Exception:  # not JSON: keep the text for the report
            return response.status, response.text()

    def cancel(self) -> str:
        """The frontend's 'Cancel current run' button (else the server's /interrupt, as the button calls it)."""
        button = self.page.get_by_role("button", name="Cancel current run")
        if button.count() and button.first.is_enabled():
            button.first.click()
            return "the frontend's 'Cancel current run' button"
        self.page.evaluate("window.app.api.interrupt()")
        return "POST /interrupt"

    def wait_for_end(self, prompt_id: str, since: float, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events, _ = self.records(since)
            for event in events:
                if event["type"] in ("execution_success", "execution_error", "execution_interrupted") and \
                        (event["detail"] or {}).get("prompt_id") == prompt_id:
                    return event["type"]
            time.sleep(0.2)
        return "timeout"
