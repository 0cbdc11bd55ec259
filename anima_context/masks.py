"""Training masks: validate ComfyUI MASK tensors and turn them into per-latent-pixel loss weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidTrainingMaskError
from .images import fit_to_square

MASK_HELP = ("White (1) marks the character, black (0) what to ignore. Load Image's MASK is 1 where the picture is "
             "transparent (and all zero for a picture without alpha): put an Invert Mask node after it for a cut-out.")


def validate_masks(mask, reference_count: int) -> torch.Tensor:
    """A MASK input as float32 [N, H, W] in 0..1, N being 1 (one for all) or one per reference."""
    if not isinstance(mask, torch.Tensor):
        raise InvalidTrainingMaskError(f"training_mask is a {type(mask).__name__}, not a MASK tensor.")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[-1] in (1, 3, 4):
        raise InvalidTrainingMaskError(f"training_mask has shape {tuple(mask.shape)}, which looks like an IMAGE; connect a MASK "
                                       "([batch, height, width]), e.g. through an Image To Mask node.")
    if mask.ndim != 3 or 0 in mask.shape:
        raise InvalidTrainingMaskError(f"training_mask has shape {tuple(mask.shape)}; a MASK is [batch, height, width].")
    if mask.shape[0] not in (1, reference_count):
        raise InvalidTrainingMaskError(
            f"training_mask holds {mask.shape[0]} masks for {reference_count} reference images: connect one mask for all "
            "of them, or one per reference (in the order reference_image, reference_image_2, reference_image_3, "
            "a batch image by image)."
        )
    mask = mask.float() if mask.is_floating_point() else mask.float() / 255.0
    return torch.nan_to_num(mask, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def mask_loss_weights(mask, reference_sizes: list[tuple[int, int]], image_size: int,
                      latent_size: tuple[int, int]) -> torch.Tensor:
    """Loss weights [R, 1, 1, h, w] for R references of the given (width, height): each mask is
    resized and center-cropped exactly like its reference, then area-averaged to the latent grid."""
    masks = validate_masks(mask, len(reference_sizes))
    weights = []
    for index, (width, height) in enumerate(reference_sizes):
        one = masks[index if masks.shape[0] > 1 else 0]
        which = f"mask {index + 1}" if masks.shape[0] > 1 else "the mask"
        if tuple(one.shape) != (height, width):
            raise InvalidTrainingMaskError(
                f"size mismatch: {which} is {one.shape[1]}x{one.shape[0]} px but reference image {index + 1} is "
                f"{width}x{height} px. Each mask must have the size of its reference (use the MASK of the same Load Image)."
            )
        square = fit_to_square(one[None, :, :, None], image_size)[..., 0]
        latent = F.interpolate(square.unsqueeze(1), size=latent_size, mode="area")
        if float(latent.max()) <= 0.0:
            where = "is all zero (black)" if float(one.max()) <= 0.0 else "is all zero inside the center crop used for training"
            raise InvalidTrainingMaskError(f"{which} for reference image {index + 1} {where}: nothing would be learnt. {MASK_HELP}")
        weights.append(latent)
    return torch.cat(weights).unsqueeze(2)
