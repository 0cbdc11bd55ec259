"""Context files in ComfyUI's folders: models/anima_contexts (listed by Load Context) or the output folder."""

from __future__ import annotations

import os

from ..context import ReferenceContext
from ..context_file import confined_path, load_context, numbered_name, save_context
from ..errors import InvalidSettingError

CONTEXT_FOLDER = "anima_contexts"


def register_context_folder() -> str:
    """``models/anima_contexts``, registered with folder_paths so Load Context lists its files."""
    import folder_paths

    if CONTEXT_FOLDER not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, CONTEXT_FOLDER)
        folder_paths.folder_names_and_paths[CONTEXT_FOLDER] = ([path], {".safetensors"})
    return folder_paths.get_folder_paths(CONTEXT_FOLDER)[0]


def list_saved_contexts() -> list[str]:
    import folder_paths

    register_context_folder()
    return folder_paths.get_filename_list(CONTEXT_FOLDER)


def save_reference_context(context: ReferenceContext, filename_prefix: str, destination: str) -> str:
    """Write the context under models/anima_contexts or ComfyUI's output folder, as
    ``<prefix>_00001.safetensors`` (the next free number); returns the file name."""
    import folder_paths

    if not isinstance(context, ReferenceContext):
        raise InvalidSettingError(f"context must come from a Train or Load Context node, got {type(context).__name__}.")
    folder = folder_paths.get_output_directory() if destination == "output" else register_context_folder()
    counter = 1
    while True:
        path = confined_path(folder, numbered_name(filename_prefix, counter))
        if not path.exists():
            break
        counter += 1
    save_context(context, path)
    return os.path.relpath(path, folder)


def load_reference_context(name: str) -> ReferenceContext:
    return load_context(confined_path(register_context_folder(), name))
