"""Text under a node's progress bar in ComfyUI's frontend."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import comfy.model_management


def _progress_text_sender(node_id: str | None) -> Callable[[str], None]:
    """Text under the node's progress bar, when a ComfyUI server runs it."""
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


class TrainingProgressText:
    """What a training run is doing, never an earlier run's line. The frontend ignores an empty
    text and keeps the last one until the node runs again, so every state sends its own words."""

    def __init__(self, node_id: str | None, total: int):
        self._send = _progress_text_sender(node_id)
        self.total = total
        self.step = 0
        self._loss: tuple[int, float] | None = None  # (step, value) of the last read-back

    def starting(self) -> None:
        self._send(f"preparing: step 0/{self.total}")

    def stepped(self, step: int, loss: float | None) -> None:
        """After step ``step`` (1-based); ``loss`` when the trainer read it back (every few steps)."""
        self.step = step
        if loss is not None:
            self._loss = (step, loss)
        self._send(f"step {step}/{self.total}{self._loss_line()}")

    @contextlib.contextmanager
    def reporting_cancel(self):
        """Says "cancelled" when the run is interrupted: ComfyUI's ops check for it in every layer,
        so it surfaces anywhere in a step, not only at the step's own check."""
        try:
            yield
        except comfy.model_management.InterruptProcessingException:
            self._send(f"cancelled at step {self.step}/{self.total}{self._loss_line()}")
            raise

    def done(self, final_loss: float, lift: float) -> None:
        self._send(f"done: {self.total} steps\nloss {final_loss:.4f}, reference fit {lift * 100:.1f}%")

    def _loss_line(self) -> str:
        if self._loss is None:
            return ""
        step, value = self._loss
        return f"\nloss {value:.4f}" + ("" if step == self.step else f" (at step {step})")
