"""Text under a node's progress bar in ComfyUI's frontend."""

from __future__ import annotations

from collections.abc import Callable


def _progress_text_sender(node_id: str | None) -> Callable[[str], None]:
    """Text under the node's progress bar (the current loss), when a ComfyUI server runs it."""
    server = None
    if node_id is not None:
        try:
            from server import PromptServer

            server = getattr(PromptServer, "instance", None)
        except ImportError:  # a script or test without the server
            server = None
    if server is None or not hasattr(server, "send_progress_text"):
        return lambda text: None
    return lambda text: server.send_progress_text(text, node_id)
