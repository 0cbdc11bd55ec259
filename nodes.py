"""ComfyUI nodes: parse inputs, call anima_context, format outputs. Nothing else lives here."""

from __future__ import annotations

from .anima_context.activation_checkpoint import CHECKPOINTING_CHOICES
from .anima_context.context_file import numbered_name
from .anima_context.errors import AnimaFastTrainError
from .anima_context.images import check_training_size
from .anima_context.patch import (
    APPLY_TO_CHOICES,
    DEFAULT_APPLY_TO,
    DEFAULT_START_PERCENT,
    block_weights,
    check_sampling_range,
)
from .anima_context.trainer import COMPUTE_DTYPES, DEFAULT_KEEP_BACKGROUND, DEFAULT_MASKED_NUM_TOKENS, DEFAULT_NUM_TOKENS

CONTEXT_TYPE = "ANIMA_REFERENCE_CONTEXT"
CATEGORY = "AnimaFastTrain"
DTYPE_CHOICES = list(COMPUTE_DTYPES)


def _glue():
    # ComfyUI is imported only when a node runs, so the pack's core imports without it.
    from .anima_context import comfy_glue

    return comfy_glue


def _refusal(node_class, values: dict, check) -> bool | str:
    """A VALIDATE_INPUTS answer: True, or why the prompt is refused before any node runs. ComfyUI
    passes a linked input as None (its value is not known yet: the node checks it when it runs)
    and skips its own min/max check for every input a VALIDATE_INPUTS names, so that is done here."""
    spec = node_class.INPUT_TYPES()
    declared = {**spec["required"], **spec.get("optional", {})}
    for name, value in values.items():
        options = declared[name][1]
        low, high = options.get("min", value), options.get("max", value)
        if value is not None and not low <= value <= high:
            return f"Invalid setting: {name} is {value}, outside {low}..{high}."
    try:
        check()
    except AnimaFastTrainError as error:
        return str(error)
    return True


class AnimaFastTrainReferenceContext:
    DESCRIPTION = (
        "Trains a set of context tokens for every Anima DiT block from one to three reference images, "
        "with the model frozen. Connect the result to 'AnimaFastTrain - Apply Context'. Nothing is written to disk."
    )
    CATEGORY = CATEGORY
    FUNCTION = "train"
    # Words users type in the node search (the frontend matches them like the display name).
    SEARCH_ALIASES = ["train context tokens", "context tokens", "train context", "character", "identity", "reference",
                      "reference image", "anima"]
    RETURN_TYPES = (CONTEXT_TYPE, "STRING", "IMAGE")
    RETURN_NAMES = ("AnimaReferenceContext", "info", "loss_plot")
    OUTPUT_TOOLTIPS = (
        "The trained per-block tokens and their metadata, for the Apply Context node.",
        "Steps, learning rate, loss, reference fit, token norms, references and time taken.",
        "A picture of the training loss and the reference fit over the steps (connect a Preview Image).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        reference_tip = "An optional further reference of the same character (a batch counts image by image)."
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The Anima diffusion model (UNETLoader). It is not changed."}),
                "clip": ("CLIP", {"tooltip": "Anima's Qwen3-0.6B text encoder (CLIPLoader, type stable_diffusion)."}),
                "vae": ("VAE", {"tooltip": "Anima's VAE (qwen_image_vae.safetensors), used to encode the references."}),
                "reference_image": ("IMAGE", {"tooltip": "The character to learn. A batch counts image by image; any size."}),
                "training_prompt": ("STRING", {
                    "multiline": True,
                    "default": "1girl, solo, anime illustration",
                    "tooltip": "A prompt describing the references, their background included; the tokens learn what it leaves "
                               "out. Name that background in the negative prompt when you sample another scene.",
                }),
                # "fixed", not the frontend's default "randomize" for a seed: a new seed each queue would retrain.
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": "fixed",
                                 "tooltip": "Seed for the token init, the noise and the timesteps. Same seed and inputs, same tokens."}),
                "training_steps": ("INT", {"default": 50, "min": 1, "max": 10000,
                                           "tooltip": "Optimisation steps. More steps learn more and take longer."}),
                # The frontend shows as many decimals as the step has and an arrow click adds one step.
                "learning_rate": ("FLOAT", {"default": 0.1, "min": 0.001, "max": 1.0, "step": 0.005, "round": 0.001,
                                            "tooltip": "Adam learning rate for the tokens. Lower it if training fails with NaN."}),
                "training_image_size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 16,
                                                "tooltip": "References are resized and center-cropped to this square size (multiple of 16)."}),
                "num_tokens": ("INT", {"default": DEFAULT_NUM_TOKENS, "min": 1, "max": 256,
                                       "tooltip": "Context tokens per DiT block. More tokens hold more detail."}),
                "init_std": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "Standard deviation of the random token init."}),
                "training_dtype": (DTYPE_CHOICES, {"default": "bfloat16",
                                                   "tooltip": "Compute dtype while training; tokens and optimiser stay float32."}),
            },
            "optional": {
                "reference_image_2": ("IMAGE", {"tooltip": reference_tip}),
                "reference_image_3": ("IMAGE", {"tooltip": reference_tip}),
                "activation_checkpointing": (list(CHECKPOINTING_CHOICES), {
                    "default": "auto",
                    "tooltip": "Recompute the DiT's activations in backward instead of keeping them: much less memory "
                               "(a 12 GB card trains 1024 px with 3 references), up to about 2x the time per step. "
                               "auto: only when training would not fit the GPU's free memory; never on the CPU."}),
            },
            # The node's id, to show the current loss under its progress bar.
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, training_image_size=None):
        # Only what ComfyUI cannot check itself: every input named here yields its own error line.
        return _refusal(cls, {"training_image_size": training_image_size},
                        lambda: training_image_size is None or check_training_size(training_image_size))

    def train(self, model, clip, vae, reference_image, training_prompt, seed, training_steps, learning_rate,
              training_image_size, num_tokens, init_std, training_dtype, reference_image_2=None, reference_image_3=None,
              training_mask=None, unique_id=None, activation_checkpointing="auto", probe_draws=0,
              keep_background=0.0):
        images = {"reference_image": reference_image, "reference_image_2": reference_image_2,
                  "reference_image_3": reference_image_3}
        return _glue().train_reference_context(
            model, clip, vae, images, training_prompt, seed=seed, steps=training_steps,
            learning_rate=learning_rate, image_size=training_image_size, num_tokens=num_tokens,
            init_std=init_std, dtype_name=training_dtype, masks=training_mask, node_id=unique_id,
            activation_checkpointing=activation_checkpointing, probe_draws=probe_draws,
            keep_background=keep_background,
        )


class AnimaFastTrainMaskedReferenceContext(AnimaFastTrainReferenceContext):
    DESCRIPTION = (
        "Like Train Context Tokens, with a training_mask: the tokens learn the character (white), and keep_background "
        "holds the model as it was outside the mask (black), so the references' background stays out of new scenes. "
        "One mask for all references or one per reference. About 1.4x the plain node's time per step (README)."
    )
    SEARCH_ALIASES = ["mask train", "masked train", "mask train context tokens", "train context tokens", "context tokens",
                      "character", "identity", "reference", "mask", "cut-out"]

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        required = {}
        for name, entry in spec["required"].items():
            required[name] = entry
            if name == "num_tokens":  # fewer than the plain node's: more let the references' scene back in (README)
                required[name] = (entry[0], {**entry[1], "default": DEFAULT_MASKED_NUM_TOKENS})
            if name == "reference_image":
                required["training_mask"] = ("MASK", {
                    "tooltip": "White (1) = the character, black (0) = ignore. One mask for all references or one per "
                               "reference in order, each the size of its reference. A cut-out PNG (transparent "
                               "background): Load Image's MASK through Invert Mask. Painted over the character in Load "
                               "Image's mask editor: its MASK as it is. A picture without transparency has no mask: use "
                               "the plain train node."})
        optional = {**spec["optional"], "keep_background": ("FLOAT", {
            "default": DEFAULT_KEEP_BACKGROUND, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
            "tooltip": "How strongly training keeps the tokens from changing the picture outside the mask (against the "
                       "model without them). Higher keeps the prompt's scene in new pictures; 0 only weights the loss "
                       "by the mask, and the references' background tends to come along. Each step also runs the "
                       "model once without the tokens (about 1.4x the time per step)."})}
        return {**spec, "required": required, "optional": optional}

    def train(self, *args, keep_background=DEFAULT_KEEP_BACKGROUND, **kwargs):
        # an API prompt from before the input gets the node's default, as the frontend gives old workflows
        return super().train(*args, keep_background=keep_background, **kwargs)


class AnimaFastTrainApplyContext:
    DESCRIPTION = (
        "Returns a copy of the MODEL whose every DiT block's cross-attention also attends to that block's "
        "trained context tokens while sampling. The input MODEL is not changed. For a scene other than the "
        "references', name their background in the negative prompt, or it tends to come along. With a mask the "
        "tokens act only inside it: chain two Apply Context nodes with two masks for two characters."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    SEARCH_ALIASES = ["apply context", "apply context tokens", "reference context", "anima", "regional context",
                      "masked context", "two characters"]
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The patched model, for KSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The Anima model the context was trained on."}),
                "context": (CONTEXT_TYPE, {"tooltip": "A context from the Train Context Tokens node."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "Scales what the tokens contribute. 1 is as trained (apply_to 'auto' halves it for a "
                                                  "context trained without a mask); 0 leaves the model unchanged."}),
            },
            "optional": {
                "apply_to": (list(APPLY_TO_CHOICES), {
                    "default": DEFAULT_APPLY_TO,
                    "tooltip": "Which prompt's rows get the tokens. 'auto': the positive prompt's, where guidance multiplies "
                               "their pull as it does the prompt's words; a context trained without a mask at half its "
                               "values (its tokens also hold the references' background), one trained with a mask and "
                               "keep_background at full. 'positive' at full values pulls harder: more of the references' "
                               "background too. 'both': guidance does not multiply their pull; the character comes through weaker.",
                }),
                "start_percent": ("FLOAT", {"default": DEFAULT_START_PERCENT, "min": 0.0, "max": 1.0, "step": 0.001,
                                            "tooltip": "Part of sampling where the tokens start to act (0 = the first step). "
                                                       "0.1 lets the prompt lay out the scene first; higher keeps more "
                                                       "of the scene and less of the character."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                          "tooltip": "Part of sampling where the tokens stop acting (1 = the last step)."}),
                "blocks": ("STRING", {"default": "all",
                                      "tooltip": "Blocks that get their tokens: 'all', a range '0-13', a list '0,3,5-7', "
                                                 "or one weight per block with decimal points '1.0,0.5,...'."}),
                "mask": ("MASK", {"tooltip": "Where the character goes: the tokens act only on the picture inside "
                                             "the mask (white) and leave the rest exactly as without them; grey "
                                             "edges blend. Any size: stretched to the latent like regional "
                                             "conditioning. One mask, or one per latent in the batch."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent=DEFAULT_START_PERCENT, end_percent=1.0, blocks="all"):
        def check():
            if start_percent is not None and end_percent is not None:
                check_sampling_range(start_percent, end_percent)
            if blocks is not None:
                block_weights(blocks, None)  # the syntax, and ranges no Anima has: the block count comes with the model

        return _refusal(cls, {"start_percent": start_percent, "end_percent": end_percent, "blocks": blocks}, check)

    def apply(self, model, context, strength, apply_to=DEFAULT_APPLY_TO, start_percent=DEFAULT_START_PERCENT,
              end_percent=1.0, blocks="all", mask=None):
        return (_glue().apply_reference_context(model, context, strength, apply_to, start_percent, end_percent, blocks,
                                                mask=mask),)


class AnimaFastTrainSaveContext:
    DESCRIPTION = (
        "Saves a context as .safetensors (tokens plus metadata, no pickle) under models/anima_contexts, where "
        "Load Context finds it, or in ComfyUI's output folder. Training itself never writes anything."
    )
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("The saved file's name in its folder, as Load Context lists it.",)
    SEARCH_ALIASES = ["save context", "save context tokens", "export context"]

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "context": (CONTEXT_TYPE, {"tooltip": "The context to keep."}),
                "filename_prefix": ("STRING", {"default": "character",
                                               "tooltip": "File name start; a number and .safetensors are added. No '..' or absolute paths."}),
                "destination": (["anima_contexts", "output"], {"default": "anima_contexts",
                                                               "tooltip": "models/anima_contexts (listed by Load Context) or the output folder."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return _refusal(cls, {"filename_prefix": filename_prefix},
                        lambda: filename_prefix is None or numbered_name(filename_prefix, 1))

    def save(self, context, filename_prefix, destination):
        name = _glue().save_reference_context(context, filename_prefix, destination)
        folder = "models/anima_contexts" if destination == "anima_contexts" else "the output folder"
        # web/save_context.js shows the text on the node; the frontend draws no ui.text by itself.
        return {"ui": {"text": [f"saved {name} in {folder}"]}, "result": (name,)}


class AnimaFastTrainLoadContext:
    DESCRIPTION = "Loads a context saved by Save Context from models/anima_contexts, checking its shapes and metadata."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    SEARCH_ALIASES = ["load context", "load context tokens", "open context"]
    RETURN_TYPES = (CONTEXT_TYPE, "STRING")
    RETURN_NAMES = ("AnimaReferenceContext", "info")
    OUTPUT_TOOLTIPS = ("The saved context, for Apply Context.", "What the context was trained on.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"context_name": (_glue().list_saved_contexts(),
                                              {"tooltip": "A .safetensors file in models/anima_contexts."})}}

    def load(self, context_name):
        context = _glue().load_reference_context(context_name)
        meta = context.metadata
        lift = meta.get("lift")
        lift_text = f"{lift * 100:.1f}%" if isinstance(lift, (int, float)) else "unknown"
        info = (f"{context_name}: {context.num_blocks} blocks x {context.num_tokens} tokens x {context.width}; "
                f"{meta.get('steps', '?')} steps, reference fit {lift_text}, prompt {meta.get('prompt', '')!r}")
        return (context, info)


NODE_CLASS_MAPPINGS = {
    "AnimaFastTrainReferenceContext": AnimaFastTrainReferenceContext,
    "AnimaFastTrainMaskedReferenceContext": AnimaFastTrainMaskedReferenceContext,
    "AnimaFastTrainApplyContext": AnimaFastTrainApplyContext,
    "AnimaFastTrainSaveContext": AnimaFastTrainSaveContext,
    "AnimaFastTrainLoadContext": AnimaFastTrainLoadContext,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AnimaFastTrainReferenceContext": "AnimaFastTrain - Train Context Tokens",
    "AnimaFastTrainMaskedReferenceContext": "AnimaFastTrain - MaskTrain Context Tokens",
    "AnimaFastTrainApplyContext": "AnimaFastTrain - Apply Context",
    "AnimaFastTrainSaveContext": "AnimaFastTrain - Save Context",
    "AnimaFastTrainLoadContext": "AnimaFastTrain - Load Context",
}
