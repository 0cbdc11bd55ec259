"""Shared fixtures. The pack is imported as a package (as ComfyUI does with custom_nodes/<dir>);
ComfyUI itself is found through COMFYUI_PATH, and tests that need it skip without it."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for path in (str(REPO), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

PACK_NAME = "anima_fast_train_pack"


CORE_MODULES = ("errors", "regions", "context", "patch", "images", "frozen_weights", "report", "trainer", "context_file",
                "activation_checkpoint", "masks", "loss_plot")


def load_pack():
    """Import the repo root as a package, the way ComfyUI loads a custom node folder, and make
    ``anima_context`` name the pack's own core modules (one copy of each class)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    alias_core_module("")
    for name in CORE_MODULES:
        alias_core_module(name)
    return module


def alias_core_module(name: str):
    full = f"{PACK_NAME}.anima_context" + (f".{name}" if name else "")
    core = importlib.import_module(full)
    sys.modules["anima_context" + (f".{name}" if name else "")] = core
    return core


load_pack()


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture(scope="session")
def comfyui():
    """ComfyUI's checkout on sys.path, on the CPU; skips (saying why) when COMFYUI_PATH is unset."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI checkout to run the ComfyUI integration tests")
    if not (Path(root) / "comfy" / "ldm" / "anima" / "model.py").is_file():
        pytest.skip(f"COMFYUI_PATH={root} has no comfy/ldm/anima/model.py (a ComfyUI with Anima is needed)")
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # as main.py --cpu, before model_management picks a device
    import comfy.model_management  # noqa: F401

    alias_core_module("comfy_glue")
    return Path(root)


# A committer for the git repositories tests make (a CI machine may have no git identity).
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"}


@pytest.fixture
def git_repo(tmp_path, monkeypatch):
    """A git repository with one commit on ``main``, and a git identity in the environment for the test."""
    import subprocess

    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README.md").write_text("hello\n")
    for command in (["add", "README.md"], ["commit", "-q", "-m", "first"]):
        subprocess.run(["git", "-C", str(repo), *command], check=True)
    return repo
