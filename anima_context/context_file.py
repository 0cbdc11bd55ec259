"""Contexts on disk, only when the user asks: ``.safetensors`` with the tokens and the metadata as
JSON in the header (never pickle), names confined to the pack's folders, every load validated."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from .context import ReferenceContext
from .errors import InvalidContextFileError, shortened

SUFFIX = ".safetensors"
METADATA_KEY = "anima_fasttrain"
FORMAT_VERSION = "1"
MAX_FILE_BYTES = 256 * 2**20
LIMITS = {"num_blocks": 128, "num_tokens": 1024, "width": 8192}


def check_file_name(name: str, label: str = "the file name") -> str:
    """The rule for a context's file name, before any folder is known: not empty, no ``..``, not absolute."""
    if not name or "\x00" in name or os.path.isabs(name) or ".." in Path(name).parts or Path(name).drive:
        raise InvalidContextFileError(f"{label} {shortened(name)!r} is not allowed: use a plain name, without '..', "
                                      "inside the contexts folder.")
    return name


def numbered_name(prefix: str, counter: int) -> str:
    """Save Context's file name, ``<prefix>_00001``, under the rule of ``check_file_name``."""
    name = f"{prefix}_{counter:05d}"
    try:
        return check_file_name(name)
    except InvalidContextFileError:
        check_file_name(prefix, "filename_prefix")
        raise


def confined_path(folder: str | os.PathLike, name: str) -> Path:
    """``folder/name`` (``.safetensors`` added), refused if it would leave ``folder``."""
    check_file_name(name)
    root = Path(folder).resolve()
    path = (root / (name if name.endswith(SUFFIX) else name + SUFFIX)).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise InvalidContextFileError(f"the file name {shortened(name)!r} points outside the contexts folder.")
    return path


def save_context(context: ReferenceContext, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {METADATA_KEY: json.dumps(context.metadata, default=str), "format_version": FORMAT_VERSION}
    save_file({"tokens": context.tokens.detach().float().cpu().contiguous()}, str(path), metadata=header)
    return path


def load_context(path: str | os.PathLike) -> ReferenceContext:
    """Read and validate a saved context; any fault is an ``Invalid context file`` error."""
    from safetensors import safe_open

    path = Path(path)
    name = shortened(path.name)
    if not path.is_file():
        raise InvalidContextFileError(f"{name} does not exist.")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidContextFileError(f"{name} is {size / 2**20:.0f} MiB, far larger than any context; refusing to read it.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            keys = set(handle.keys())
            if keys != {"tokens"}:
                raise InvalidContextFileError(f"{name} holds {_tensor_names(keys)}, so it is not an AnimaFastTrain "
                                              "context (which holds one tensor, 'tokens'): load a file that Save Context wrote.")
            tokens = handle.get_tensor("tokens")
    except InvalidContextFileError:
        raise
    except Exception as error:  # safetensors reports truncated or malformed files in several ways
        raise InvalidContextFileError(f"{name} is not a readable .safetensors file ({shortened(str(error), 120)}).") from None
    return _validated(name, tokens, header)


def _validated(name: str, tokens: torch.Tensor, header: dict) -> ReferenceContext:
    if METADATA_KEY not in header:
        raise InvalidContextFileError(f"{name} has no AnimaFastTrain metadata; it was not saved by Save Context.")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise InvalidContextFileError(f"{name} has unreadable metadata ({shortened(str(error), 120)}).") from None
    if not isinstance(metadata, dict):
        raise InvalidContextFileError(f"{name} has metadata of the wrong kind.")
    if tokens.dtype not in (torch.float32, torch.float16, torch.bfloat16) or tokens.ndim != 3:
        raise InvalidContextFileError(
            f"{name} holds tokens of shape {tuple(tokens.shape)} and dtype {tokens.dtype}; expected float [blocks, tokens, width].")
    shape = dict(zip(("num_blocks", "num_tokens", "width"), tokens.shape))
    for key, limit in LIMITS.items():
        if not 1 <= shape[key] <= limit:
            raise InvalidContextFileError(f"{name}: {key} is {shape[key]}, outside 1..{limit}.")
    for key in ("num_blocks", "width"):
        if key in metadata and metadata[key] != shape[key]:
            raise InvalidContextFileError(f"{name}: the metadata says {key} {shortened(str(metadata[key]))} but the tokens have {shape[key]}.")
    tokens = tokens.float()
    if not bool(torch.isfinite(tokens).all()):
        raise InvalidContextFileError(f"{name} holds NaN or infinite tokens.")
    lift = metadata.get("lift")
    if lift is not None and not (isinstance(lift, (int, float)) and math.isfinite(lift)):
        raise InvalidContextFileError(f"{name} has an invalid lift in its metadata.")
    return ReferenceContext(tokens=tokens, metadata=metadata)


def _tensor_names(keys: set[str]) -> str:
    """A few of a file's tensor names, never all: a model file holds hundreds."""
    names = sorted(keys)
    shown = ", ".join(repr(shortened(name)) for name in names[:3])
    return f"{len(names)} tensors ({shown}{', ...' if len(names) > 3 else ''})" if names else "no tensors"
