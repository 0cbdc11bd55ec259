"""Reference images: validate ComfyUI IMAGE tensors and bring them to the training size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidReferenceImageError, InvalidSettingError

# The VAE downsamples 8x and the DiT patches 2x2: 16 px is one DiT token.
SIZE_MULTIPLE = 16
MIN_IMAGE_SIDE = 16
VALID_CHANNELS = (1, 3, 4)


def check_training_size(size: int) -> int:
    size = int(size)
    if size < 2 * SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        raise InvalidSettingError(
            f"training_image_size must be a multiple of {SIZE_MULTIPLE} and at least {2 * SIZE_MULTIPLE}, got {size}."
        )
    return size


def validate_reference(image, name: str) -> torch.Tensor:
    """Check one ComfyUI IMAGE input ([B, H, W, C] floats) and return it as float32 [B, H, W, 3]."""
    if not isinstance(image, torch.Tensor):
        raise InvalidReferenceImageError(f"{name} is a {type(image).__name__}, not an IMAGE tensor. Connect a Load Image node.")
    shape = tuple(image.shape)
    if image.ndim == 3:
        raise InvalidReferenceImageError(
            f"{name} has shape {shape}, which looks like a MASK ([B, H, W]); connect an IMAGE ([B, H, W, C]) instead."
        )
    if image.ndim != 4:
        raise InvalidReferenceImageError(f"{name} has shape {shape}; an IMAGE must be 4-D [batch, height, width, channels].")
    batch, height, width, channels = shape
    if batch == 0 or height == 0 or width == 0:
        raise InvalidReferenceImageError(f"{name} is empty (shape {shape}). Connect an image with pixels in it.")
    if channels not in VALID_CHANNELS:
        raise InvalidReferenceImageError(
            f"{name} has {channels} channels (shape {shape}); expected 1 (grayscale), 3 (RGB) or 4 (RGBA)."
        )
    if min(height, width) < MIN_IMAGE_SIDE:
        raise InvalidReferenceImageError(
            f"{name} is {width}x{height} px, smaller than the {MIN_IMAGE_SIDE} px the VAE and DiT need on each side. "
            "Use a larger reference image."
        )
    if image.is_floating_point():
        image = image.float()
    else:  # 8-bit images from other packs
        image = image.float() / 255.0
    if channels == 1:
        image = image.expand(-1, -1, -1, 3)
    elif channels == 4:
        image = image[..., :3]
    # NaN or out-of-range pixels (from upstream nodes) would poison the latents.
    return torch.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def fit_to_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize one [1, H, W, 3] image so its short side is ``size`` and center-crop it to size x size."""
    _, height, width, _ = image.shape
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    pixels = image.movedim(-1, 1)
    if (new_h, new_w) != (height, width):
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    pixels = pixels[:, :, top : top + size, left : left + size]
    return pixels.movedim(1, -1).clamp(0.0, 1.0).contiguous()


def prepare_references(images: dict[str, torch.Tensor | None], size: int) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Validate every connected input (each may be a batch) and return one [1, size, size, 3]
    tensor per image, plus the original (width, height) of each."""
    size = check_training_size(size)
    checked = [(name, validate_reference(image, name)) for name, image in images.items() if image is not None]
    if not checked:
        raise InvalidReferenceImageError("no reference image is connected. Connect at least reference_image.")
    prepared, sizes = [], []
    for _, batch in checked:
        for index in range(batch.shape[0]):
            one = batch[index : index + 1]
            sizes.append((int(one.shape[2]), int(one.shape[1])))
            prepared.append(fit_to_square(one, size))
    return prepared, sizes
