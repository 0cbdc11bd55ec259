"""The only package that imports ComfyUI. It adapts ComfyUI's Anima (ModelPatcher, VAE, CLIP)
to the plain-torch trainer and patch, the ComfyUI way: a ``model.clone()``, ``load_models_gpu``,
``ProgressBar``, ``throw_exception_if_processing_interrupted``. One module per job."""

from .architecture import anima_geometry, resolve_dtype
from .files import CONTEXT_FOLDER, list_saved_contexts, load_reference_context, register_context_folder, save_reference_context
from .loading import load_diffusion_model, load_text_encoder, load_vae
from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES, apply_reference_context, render
from .training import ComfyAnimaDenoiser, _training_mode, encode_prompt, encode_references, train_reference_context

__all__ = [
    "CONTEXT_FOLDER", "SAMPLER_NAMES", "SCHEDULER_NAMES", "ComfyAnimaDenoiser", "_training_mode", "anima_geometry",
    "apply_reference_context", "encode_prompt", "encode_references", "list_saved_contexts", "load_diffusion_model",
    "load_reference_context", "load_text_encoder", "load_vae", "register_context_folder", "render", "resolve_dtype",
    "save_reference_context", "train_reference_context",
]
