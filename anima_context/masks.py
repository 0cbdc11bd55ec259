"""Training masks: validate ComfyUI MASK tensors and turn them into per-latent-pixel loss weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidTrainingMaskError
from .images import fit_to_square

# Load Image's MASK is 1 - alpha: 1 where the picture is transparent or painted over in the mask editor,
# and all zero for a picture without alpha (where Invert Mask gives all ones: training on everything).
MASK_HELP = ("White (1) marks the character, black (0) what to ignore. What works: a cut-out PNG with a transparent "
             "background through Load Image and Invert Mask, the character painted over in Load Image's mask editor "
             "(no Invert Mask), or the plain Train Context Tokens node.")

# Load Image's MASK for a picture without alpha: 64x64 zeros (all white after Invert Mask).
LOAD_IMAGE_NO_ALPHA_SIZE = (64, 64)
NO_ALPHA_HINT = (" A 64x64 mask is what Load Image gives a picture without transparency (all white after Invert Mask): "
                 "use a cut-out PNG with a transparent background, or the plain Train Context Tokens node.")


def mask_batch(part, name: str, error: type[Exception]) -> torch.Tensor:
    """One MASK input ([N, H, W] or [H, W]) as float32 [N, H, W] in 0..1 (NaN to 0), or ``error``
    naming ``name`` and what to connect."""
    if not isinstance(part, torch.Tensor):
        raise error(f"{name} is a {type(part).__name__}, not a MASK tensor.")
    if part.ndim == 2:
        part = part.unsqueeze(0)
    if part.ndim == 4 and part.shape[-1] in (1, 3, 4):
        raise error(f"{name} has shape {tuple(part.shape)}, which looks like an IMAGE; connect "
                    "a MASK ([batch, height, width]), e.g. through an Image To Mask node.")
    if part.ndim != 3 or 0 in part.shape:
        raise error(f"{name} has shape {tuple(part.shape)}; a MASK is [batch, height, width].")
    part = part.float() if part.is_floating_point() else part.float() / 255.0
    return torch.nan_to_num(part, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def validate_masks(mask, reference_count: int) -> list[torch.Tensor]:
    """A MASK input ([N, H, W] or [H, W]), or a list of them for references of different sizes, as a
    list of float32 [H, W] masks in 0..1: one for all references, or one per reference."""
    parts = list(mask) if isinstance(mask, (list, tuple)) else [mask]
    masks = []
    for part in parts:
        masks.extend(mask_batch(part, "training_mask", InvalidTrainingMaskError).unbind(0))
    if len(masks) not in (1, reference_count):
        raise InvalidTrainingMaskError(
            f"training_mask holds {len(masks)} masks for {reference_count} reference images: connect one mask for all "
            "of them, or one per reference (in the order reference_image, reference_image_2, reference_image_3, "
            "a batch image by image)."
        )
    return masks


def mask_loss_weights(mask, reference_sizes: list[tuple[int, int]], image_size: int,
                      latent_size: tuple[int, int]) -> torch.Tensor:
    """Loss weights [R, 1, 1, h, w] for R references of the given (width, height): each mask is
    resized and center-cropped exactly like its reference, then area-averaged to the latent grid.
    ``mask`` is a MASK or a list of MASKs (see ``validate_masks``)."""
    masks = validate_masks(mask, len(reference_sizes))
    weights = []
    for index, (width, height) in enumerate(reference_sizes):
        one = masks[index if len(masks) > 1 else 0]
        which = f"mask {index + 1}" if len(masks) > 1 else "the mask"
        if float(one.max()) <= 0.0:  # before the size: Load Image gives a 64x64 zero mask for a picture without alpha
            raise InvalidTrainingMaskError(f"{which} for reference image {index + 1} is all zero (black): nothing would be "
                                           f"learnt (Load Image gives this for a picture without transparency). {MASK_HELP}")
        if tuple(one.shape) != (height, width):
            raise InvalidTrainingMaskError(
                f"size mismatch: {which} is {one.shape[1]}x{one.shape[0]} px but reference image {index + 1} is "
                f"{width}x{height} px. Each mask must have the size of its reference (use the MASK of the same Load Image)."
                + (NO_ALPHA_HINT if tuple(one.shape) == LOAD_IMAGE_NO_ALPHA_SIZE else "")
            )
        square = fit_to_square(one[None, :, :, None], image_size)[..., 0]
        latent = F.interpolate(square.unsqueeze(1), size=latent_size, mode="area")
        if float(latent.max()) <= 0.0:
            raise InvalidTrainingMaskError(f"{which} for reference image {index + 1} is all zero inside the center crop used "
                                           f"for training: nothing would be learnt there. Center the character, or crop the "
                                           f"reference and its mask to it.")
        weights.append(latent)
    return torch.cat(weights).unsqueeze(2)
