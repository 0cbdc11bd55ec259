"""Reference images and masks from files, for the command line: the tensors ComfyUI's Load Image
would give (IMAGE [B, H, W, 3] and MASK [B, H, W], float32 in 0..1). No ComfyUI import."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


class ImageFileError(ValueError):
    """A picture or mask file the command line cannot use; the message names the file."""


# Pillow modes that hold 16- or 32-bit integer pixels: scaled by their range, not by 255.
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def _open_frames(path: str | os.PathLike):
    """Every frame of the picture as an upright Pillow image (EXIF orientation applied, as Load Image
    does), dropping frames whose size differs from the first one's, as Load Image does."""
    from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path} does not exist or is not a file.")
    try:
        with Image.open(path) as picture:
            frames = []
            for frame in ImageSequence.Iterator(picture):
                frame = ImageOps.exif_transpose(frame)
                frame.load()  # read the pixels now, while the file is open
                if frames and frame.size != frames[0].size:
                    continue
                frames.append(frame.copy())
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageFileError(f"{path} is not a picture Pillow can read ({error}).") from None
    if not frames:
        raise ImageFileError(f"{path} holds no picture.")
    return frames


def _gray(frame) -> np.ndarray:
    """One channel in 0..1: luminance, with 16-bit grayscale kept at its full range."""
    if frame.mode in _WIDE_MODES:
        return np.clip(np.asarray(frame, dtype=np.float32) / _WIDE_MODES[frame.mode], 0.0, 1.0)
    if frame.mode == "F":
        return np.clip(np.asarray(frame, dtype=np.float32), 0.0, 1.0)
    return np.asarray(frame.convert("L"), dtype=np.float32) / 255.0


def _rgb(frame) -> np.ndarray:
    if frame.mode in _WIDE_MODES or frame.mode == "F":
        return np.repeat(_gray(frame)[..., None], 3, axis=-1)
    return np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """IMAGE [frames, H, W, 3] float32 in 0..1, as Load Image makes it (alpha dropped)."""
    return torch.from_numpy(np.stack([_rgb(frame) for frame in _open_frames(path)])).contiguous()


def _has_alpha(frame) -> bool:
    return "A" in frame.getbands() or (frame.mode in ("P", "L", "RGB") and "transparency" in frame.info)


def load_mask(path: str | os.PathLike) -> torch.Tensor:
    """MASK [1, H, W] float32 in 0..1, white (or opaque) = the character: the alpha channel when the
    file has one, else its luminance. Unlike Load Image's MASK (1 where transparent), not inverted."""
    frame = _open_frames(path)[0]
    if _has_alpha(frame):
        alpha = frame.convert("RGBA") if "A" not in frame.getbands() else frame
        values = np.asarray(alpha.getchannel("A"), dtype=np.float32) / 255.0
    else:
        values = _gray(frame)
    return torch.from_numpy(values.copy())[None].contiguous()


def masks_for_references(image_paths: list, images: list[torch.Tensor], mask_paths: list,
                         masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """One MASK [1, H, W] per reference picture (a multi-frame file counts frame by frame): one mask
    file for all, or one per --image, in order. Each mask must have its picture's size."""
    if len(masks) not in (1, len(images)):
        raise ImageFileError(
            f"{len(masks)} --mask files for {len(images)} --image files: give one mask for all the images, "
            "or one per image in the same order."
        )
    per_reference = []
    for index, (image_path, image) in enumerate(zip(image_paths, images)):
        which = 0 if len(masks) == 1 else index
        mask, mask_path = masks[which], mask_paths[which]
        height, width = image.shape[1:3]
        if tuple(mask.shape[1:]) != (height, width):
            raise ImageFileError(
                f"the mask {mask_path} is {mask.shape[2]}x{mask.shape[1]} px but the image {image_path} is "
                f"{width}x{height} px: a mask must have the size of its image."
            )
        per_reference.extend([mask] * image.shape[0])
    return per_reference
