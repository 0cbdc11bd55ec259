"""AnimaFastTrain without the ComfyUI server: train a context from picture files, or render an image
with a saved one, so that a script can check the result.

    python -m anima_context train --image ref.png [--image ref2.png ...] [--mask m.png ...] \\
        --prompt "1girl, solo" --out ctx.safetensors
    python -m anima_context sample --context ctx.safetensors --prompt "1girl, solo, smiling" --out image.png
    python -m anima_context demo-models demo    # random-weight models to try it without the real ones

Run it from the pack's folder (the one that holds ``anima_context/``). It uses the ComfyUI the pack is
installed in (``ComfyUI/custom_nodes/<pack>/``), or the one named by ``--comfyui DIR`` or the
``COMFYUI_PATH`` environment variable, and loads the models exactly as ComfyUI's UNETLoader,
CLIPLoader (type stable_diffusion) and VAELoader do, from ComfyUI's model folders.

Exit status: 0 on success, 2 on a user error (its message, no traceback, on stderr), 130 on ctrl-C.
Nothing here imports ComfyUI until a command runs, so the argument handling is testable without it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .activation_checkpoint import CHECKPOINTING_CHOICES
from .demo_models import demo_paths, write_demo_models
from .errors import AnimaFastTrainError
from .image_files import ImageFileError, load_image, load_mask, masks_for_references
from .images import SIZE_MULTIPLE
from .patch import APPLY_TO_CHOICES, DEFAULT_APPLY_TO, DEFAULT_START_PERCENT, check_sampling_range
from .trainer import COMPUTE_DTYPES, DEFAULT_KEEP_BACKGROUND, DEFAULT_MASKED_NUM_TOKENS, DEFAULT_NUM_TOKENS

PACK_DIR = Path(os.path.abspath(__file__)).parents[1]
DEFAULT_TRAIN_PROMPT = "1girl, solo, anime illustration"
DEFAULT_NEGATIVE = "worst quality, low quality, blurry, jpeg artifacts"
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


class CommandLineError(Exception):
    """A problem with what the command line names (ComfyUI folder, model file, output path)."""


@dataclass(frozen=True)
class ModelFile:
    option: str  # the command-line option that names it
    folder: str  # ComfyUI's folder_paths name
    default: str  # the official Anima file (ComfyUI's Anima template)
    what: str
    url: str


_ANIMA_FILES = "https://huggingface.co/circlestone-labs/Anima/resolve/main/split_files"
MODEL_FILES = {
    "unet": ModelFile("--unet", "diffusion_models", "anima-base-v1.0.safetensors", "diffusion model",
                      f"{_ANIMA_FILES}/diffusion_models/anima-base-v1.0.safetensors"),
    "clip": ModelFile("--clip", "text_encoders", "qwen_3_06b_base.safetensors", "text encoder",
                      f"{_ANIMA_FILES}/text_encoders/qwen_3_06b_base.safetensors"),
    "vae": ModelFile("--vae", "vae", "qwen_image_vae.safetensors", "VAE", f"{_ANIMA_FILES}/vae/qwen_image_vae.safetensors"),
}


# ---------------------------------------------------------------------------------------------
# Arguments


def _multiple_of_16(text: str) -> int:
    value = int(text)
    if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"{value} is not a multiple of {SIZE_MULTIPLE} (at least {SIZE_MULTIPLE})")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _percent(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..1")
    return value


def _common_options() -> argparse.ArgumentParser:
    """Where ComfyUI and the models are; shared by both commands."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("ComfyUI and models")
    where.add_argument("--comfyui", metavar="DIR",
                       help="the ComfyUI folder (with main.py and comfy/). Default: $COMFYUI_PATH, else the ComfyUI "
                            "this pack is installed in (ComfyUI/custom_nodes/<pack>).")
    where.add_argument("--models-dir", metavar="DIR",
                       help="ComfyUI's models folder, as ComfyUI's --models-directory. Default: $MODELS_DIR, else ComfyUI/models "
                            "(plus the paths in ComfyUI's extra_model_paths.yaml).")
    where.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is there (as ComfyUI's --cpu); "
                                                          "without a CUDA GPU the CPU is used anyway.")
    for key, spec in MODEL_FILES.items():
        where.add_argument(spec.option, dest=key, default=None, metavar="NAME_OR_PATH",
                           help=f"the {spec.what}: a file name in ComfyUI's {spec.folder} folder, or a path to a file "
                                f"(default: {spec.default}).")
    where.add_argument("--demo-models", metavar="DIR",
                       help="use the random-weight demo models that 'demo-models DIR' wrote (instead of the official "
                            "Anima files; they render noise). --unet, --clip and --vae still take precedence.")
    return common


def model_names(args) -> dict[str, str]:
    """The name or path of each model: its option, else the demo set's file, else the official name."""
    demo = demo_paths(args.demo_models) if getattr(args, "demo_models", None) else {}
    names = {}
    for key, spec in MODEL_FILES.items():
        explicit = getattr(args, key, None)
        if explicit:
            names[key] = explicit
        elif key in demo:
            if not demo[key].is_file():
                raise CommandLineError(f"--demo-models {args.demo_models}: {demo[key]} is missing. Write the demo set first: "
                                       f"python -m anima_context demo-models {args.demo_models}")
            names[key] = str(demo[key])
        else:
            names[key] = spec.default
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anima_context",
        description="AnimaFastTrain on the command line: train a character context from reference pictures, "
                    "or render an image with a saved context. Run from the pack's folder.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()

    train = commands.add_parser("train", parents=[common], help="train a context from reference pictures and save it",
                                description="Train per-block context tokens from reference pictures (the Train Context "
                                            "Tokens node, headless) and save them as .safetensors.")
    train.add_argument("--image", action="append", required=True, metavar="FILE",
                       help="a reference picture of the character (repeat for more; any size; EXIF rotation applied; "
                            "a multi-frame file counts frame by frame).")
    train.add_argument("--mask", action="append", default=[], metavar="FILE",
                       help="optional: where the character is, white (or opaque) = character, black (or transparent) = "
                            "ignore. Its alpha channel if it has one, else its brightness. One for all images, or one per "
                            "--image in the same order; each the size of its image.")
    train.add_argument("--keep-background", type=float, default=None, metavar="WEIGHT",
                       help="with --mask: how strongly training keeps the tokens from changing the picture outside the "
                            f"mask; 0 only weights the loss by it (default with --mask: {DEFAULT_KEEP_BACKGROUND:g}).")
    train.add_argument("--prompt", default=DEFAULT_TRAIN_PROMPT,
                       help=f"describes the references; the tokens learn what it leaves out (default: {DEFAULT_TRAIN_PROMPT!r}).")
    train.add_argument("--out", required=True, metavar="FILE",
                       help="where to write the context (.safetensors is appended when missing).")
    train.add_argument("--seed", type=int, default=0, help="seed for the token init, noise and timesteps (default: 0).")
    train.add_argument("--steps", type=_positive_int, default=50, help="optimisation steps (default: 50).")
    train.add_argument("--learning-rate", type=float, default=0.1, help="Adam learning rate of the tokens (default: 0.1).")
    train.add_argument("--size", type=int, default=512,
                       help="references are resized and center-cropped to this square, a multiple of 16 (default: 512).")
    train.add_argument("--num-tokens", type=_positive_int, default=None,
                       help=f"context tokens per DiT block (default: {DEFAULT_NUM_TOKENS}; "
                            f"{DEFAULT_MASKED_NUM_TOKENS} with --mask, as the masked train node).")
    train.add_argument("--init-std", type=float, default=0.5, help="spread of the random token init (default: 0.5).")
    train.add_argument("--dtype", choices=list(COMPUTE_DTYPES), default="bfloat16",
                       help="compute dtype while training; tokens stay float32. On a CPU float32 is used (default: bfloat16).")
    train.add_argument("--activation-checkpointing", choices=list(CHECKPOINTING_CHOICES), default="auto",
                       help="recompute the DiT's activations in backward: much less memory, up to about 2x the time per "
                            "step; auto: only when training would not fit the GPU's free memory, never on a CPU (default: auto).")
    train.add_argument("--loss-plot", metavar="FILE.png", help="optional: also save the loss and reference-fit curves as a PNG.")
    train.set_defaults(run=run_train)

    sample = commands.add_parser("sample", parents=[common], help="render an image with a saved context",
                                 description="Render one image with a saved context applied (Apply Context, KSampler, "
                                             "VAE Decode, headless) and save it as PNG.")
    sample.add_argument("--context", required=True, metavar="FILE", help="a context saved by 'train' or the Save Context node.")
    sample.add_argument("--prompt", default=None,
                        help="the positive prompt (default: the prompt the context was trained with).")
    sample.add_argument("--negative", default=DEFAULT_NEGATIVE, help=f"the negative prompt (default: {DEFAULT_NEGATIVE!r}).")
    sample.add_argument("--out", required=True, metavar="FILE.png", help="where to write the image (.png is appended when missing).")
    sample.add_argument("--seed", type=int, default=0, help="noise seed (default: 0).")
    sample.add_argument("--steps", type=_positive_int, default=30, help="sampling steps (default: 30).")
    sample.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (default: 4.0).")
    sample.add_argument("--sampler", default="euler", help="a ComfyUI sampler name, as in KSampler (default: euler).")
    sample.add_argument("--scheduler", default="simple", help="a ComfyUI scheduler name, as in KSampler (default: simple).")
    sample.add_argument("--width", type=_multiple_of_16, default=1024, help="image width, a multiple of 16 (default: 1024).")
    sample.add_argument("--height", type=_multiple_of_16, default=1024, help="image height, a multiple of 16 (default: 1024).")
    sample.add_argument("--strength", type=float, default=1.0,
                        help="scales what the tokens contribute: 1 as trained (--apply-to auto halves it for a context trained "
                             "without a mask), 0 renders the plain model's image (default: 1).")
    sample.add_argument("--apply-to", choices=APPLY_TO_CHOICES, default=DEFAULT_APPLY_TO,
                        help=f"which prompt's rows get the tokens (default: {DEFAULT_APPLY_TO}: the positive prompt's, at half the "
                             "tokens' values for a context trained without a mask, at full values for one trained with a mask and "
                             "--keep-background; positive at full values pulls harder and brings more of the references' "
                             "background; both keeps guidance from multiplying their pull).")
    sample.add_argument("--start-percent", type=_percent, default=DEFAULT_START_PERCENT,
                        help=f"part of sampling where the tokens start to act (default: {DEFAULT_START_PERCENT}: the prompt "
                             "lays out the scene first).")
    sample.add_argument("--end-percent", type=_percent, default=1.0, help="part of sampling where they stop acting (default: 1).")
    sample.add_argument("--blocks", default="all",
                        help="blocks that get their tokens: all, a range 0-13, a list 0,3,5-7, or one weight per block "
                             "with decimal points (default: all).")
    sample.set_defaults(run=run_sample)

    demo = commands.add_parser(
        "demo-models", help="write random-weight Anima models to try the pack without the real ones",
        description="Write a small random-weight Anima model set (DiT, Qwen3-0.6B text encoder, VAE) in ComfyUI's folder "
                    "layout under DIR, plus a reference picture (ComfyUI's input/example.png), for 'train --demo-models DIR' "
                    "and 'sample --demo-models DIR'. About 1.5 GB (the text encoder is full size). The architecture is real, "
                    "the weights are random: images rendered with them are noise.")
    demo.add_argument("folder", metavar="DIR", help="where to write them (created if missing). Not ComfyUI's models folder, "
                                                    "unless you want them listed in its loader nodes.")
    demo.add_argument("--comfyui", metavar="DIR", help="the ComfyUI folder whose classes give the shapes. Default: $COMFYUI_PATH, "
                                                      "else the ComfyUI this pack is installed in.")
    demo.add_argument("--force", action="store_true", help="overwrite files already there (default: keep them).")
    demo.set_defaults(run=run_demo_models, models_dir=None, cpu=True)
    return parser


def with_suffix(path: str, suffix: str) -> Path:
    """``path`` with ``suffix`` appended unless it already ends with it (case-insensitive)."""
    return Path(path if path.lower().endswith(suffix) else path + suffix)


def check_writable(path: Path, option: str) -> Path:
    """Refuse an output that could not be written, before minutes of loading and training."""
    if path.is_dir():
        raise CommandLineError(f"{option} {path} is a folder; name a file.")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folders in between are created when saving
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CommandLineError(f"{option} {path}: cannot write there ({existing} is not a writable folder).")
    return path


# ---------------------------------------------------------------------------------------------
# Finding ComfyUI and the model files (no ComfyUI import)


def is_comfyui(folder: Path) -> bool:
    return (folder / "main.py").is_file() and (folder / "comfy").is_dir()


def find_comfyui(explicit: str | None, environ: Mapping[str, str], pack_dir: Path = PACK_DIR) -> Path:
    """--comfyui, else $COMFYUI_PATH, else the ComfyUI whose custom_nodes folder holds the pack."""
    for source, value in (("--comfyui", explicit), ("COMFYUI_PATH", environ.get("COMFYUI_PATH"))):
        if value:
            folder = Path(value).expanduser().resolve()
            if not is_comfyui(folder):
                raise CommandLineError(f"{source} {value}: {folder} is not a ComfyUI folder (it needs main.py and comfy/ in it).")
            return folder
    for location in _pack_locations(pack_dir, environ):
        if is_comfyui(location.parent.parent):
            return location.parent.parent
    raise CommandLineError(
        f"ComfyUI not found: this pack ({pack_dir}) is not installed in ComfyUI/custom_nodes/, and neither --comfyui DIR "
        "nor the COMFYUI_PATH environment variable names a ComfyUI folder. Pass --comfyui path/to/ComfyUI "
        "(the folder with main.py and comfy/) or set COMFYUI_PATH."
    )


def _pack_locations(pack_dir: Path, environ: Mapping[str, str]) -> list[Path]:
    """Where the pack sits. A pack linked into custom_nodes/ (as many installs and test harnesses do) is
    found there through the shell's logical working directory; the real path lies elsewhere."""
    locations = [Path(os.path.abspath(pack_dir)), pack_dir.resolve()]
    logical = environ.get("PWD")
    try:
        if logical and os.path.samefile(logical, pack_dir):
            locations.insert(0, Path(logical))
    except OSError:  # PWD names a folder that is gone
        pass
    return locations


def resolve_model(key: str, name: str, get_full_path: Callable[[str, str], str | None], folders: list[str]) -> str:
    """The file for ``--unet/--clip/--vae NAME``: a name in ComfyUI's folder (as the loader nodes
    look it up), else a path to an existing file; else an error naming where to get it."""
    spec = MODEL_FILES[key]
    found = get_full_path(spec.folder, name)
    if found:
        return found
    path = Path(name).expanduser()
    if path.is_file():
        return str(path.resolve())
    target = next((f for f in folders if Path(f).name == spec.folder), folders[0] if folders else f"models/{spec.folder}")
    official = (f"Download it from {spec.url} into {target}" if name == spec.default
                else f"The official Anima {spec.what} is {spec.default}, from {spec.url} (save it in {target})")
    raise CommandLineError(
        f"{spec.what} file {name!r} not found: it is not a file, and ComfyUI's {spec.folder} folder "
        f"({', '.join(folders) or 'none configured'}) has no file of that name. {official}, "
        f"or pass {spec.option} with a file name in that folder or a path to the file."
    )


def resolve_models_dir(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    for source, value in (("--models-dir", explicit), ("MODELS_DIR", environ.get("MODELS_DIR"))):
        if value:
            folder = Path(value).expanduser().resolve()
            if not folder.is_dir():
                raise CommandLineError(f"{source} {value}: {folder} is not a folder.")
            return folder
    return None


# ---------------------------------------------------------------------------------------------
# ComfyUI, imported only here


@dataclass
class Comfy:
    root: Path
    folder_paths: object
    glue: object
    device: str


def setup_comfyui(args) -> Comfy:
    """Import ComfyUI from its folder, on the right device, with its model folders, as main.py would."""
    import torch

    root = find_comfyui(args.comfyui, os.environ)
    models_dir = resolve_models_dir(args.models_dir, os.environ)
    # ComfyUI first on sys.path: `python -m` puts the pack's folder there, whose own nodes.py (and
    # tests/, tools/) would otherwise shadow ComfyUI's modules of the same names.
    sys.path[:] = [str(root)] + [entry for entry in sys.path if entry != str(root)]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import comfy.cli_args

    # ComfyUI reads its flags once, when comfy.model_management is imported (it picks the device then):
    # set them first, as main.py --cpu / --models-directory would. Its argv parsing stays off.
    flags = comfy.cli_args.args
    if args.cpu or not torch.cuda.is_available():
        flags.cpu = True
    if models_dir is not None:
        flags.models_directory = str(models_dir)
    import comfy.model_management
    import folder_paths

    if models_dir is not None and Path(folder_paths.models_dir) != models_dir:
        raise CommandLineError(f"ComfyUI's folder_paths was set up before --models-dir {models_dir} could apply.")
    extra_paths = root / "extra_model_paths.yaml"
    if extra_paths.is_file():  # as main.py: users keep models elsewhere through this file
        from utils.extra_config import load_extra_path_config

        load_extra_path_config(str(extra_paths))
    from . import comfy_glue  # imports comfy.*: only now that the flags are set

    return Comfy(root=root, folder_paths=folder_paths, glue=comfy_glue, device=str(comfy.model_management.get_torch_device()))


def load_models(args, comfy_env: Comfy, say: Callable[[str], None]):
    """MODEL, CLIP and VAE, loaded as UNETLoader, CLIPLoader (type stable_diffusion) and VAELoader do.
    Call under torch.inference_mode(), as ComfyUI's executor runs its loaders."""
    folder_paths, glue = comfy_env.folder_paths, comfy_env.glue
    paths, missing, names = {}, [], model_names(args)
    for key, spec in MODEL_FILES.items():  # every missing file in one message: a first run often lacks all three
        try:
            paths[key] = resolve_model(key, names[key], folder_paths.get_full_path, folder_paths.get_folder_paths(spec.folder))
        except CommandLineError as error:
            missing.append(str(error))
    if missing:
        raise CommandLineError("\n".join(missing))

    def load(key, loader):
        say(f"loading {MODEL_FILES[key].what} {paths[key]}")
        try:
            return loader(paths[key])
        except (AnimaFastTrainError, KeyboardInterrupt):
            raise
        except Exception as error:  # a wrong or damaged file: say which one, without a traceback
            raise CommandLineError(f"could not load the {MODEL_FILES[key].what} {paths[key]}: {type(error).__name__}: {error}") from None

    model = load("unet", glue.load_diffusion_model)
    clip = load("clip", lambda path: glue.load_text_encoder(path, folder_paths.get_folder_paths("embeddings")))
    vae = load("vae", glue.load_vae)
    return model, clip, vae


# ---------------------------------------------------------------------------------------------
# Commands


def say(text: str) -> None:
    print(text, flush=True)


def save_png(image, path: Path) -> float:
    """Write an IMAGE [H, W, 3] (or [1, H, W, 3]) as ComfyUI's Save Image does; returns its mean pixel in 0..1."""
    import numpy as np
    from PIL import Image

    if image.ndim == 4:
        image = image[0]
    pixels = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return float(pixels.mean()) / 255.0


def read_references(image_paths: list[str], mask_paths: list[str]):
    """The images dict for the glue (one entry per file: files may differ in size) and one MASK per
    reference (each its picture's size), or None."""
    from .images import validate_reference

    references = []
    for index, path in enumerate(image_paths, start=1):
        name = f"image {index} ({Path(path).name})"
        image = load_image(path)
        validate_reference(image, name)  # refuse a bad picture now, not after loading the models
        references.append((name, image))
    masks = None
    if mask_paths:
        loaded = [load_mask(path) for path in mask_paths]
        masks = masks_for_references(image_paths, [image for _, image in references], mask_paths, loaded)
    return dict(references), masks


def progress_printer() -> Callable[[int, int, float | None], None]:
    """A line per step that has a loss (read back every few steps), plus the first and the last step."""
    def on_progress(done: int, total: int, loss: float | None) -> None:
        if loss is not None or done in (1, total):
            say(f"step {done}/{total}" + (f"  loss {loss:.4f}" if loss is not None else ""))
    return on_progress


def run_train(args) -> int:
    import torch

    from .context_file import save_context
    from .images import check_training_size
    from .trainer import TrainSettings

    started = time.perf_counter()
    out = check_writable(with_suffix(args.out, ".safetensors"), "--out")
    loss_plot = check_writable(with_suffix(args.loss_plot, ".png"), "--loss-plot") if args.loss_plot else None
    # Everything that can be checked without the models is checked first: loading them takes a while.
    check_training_size(args.size)
    if args.keep_background is not None and not args.mask:
        raise CommandLineError("--keep-background needs --mask: it keeps the picture as it was outside the mask.")
    keep_background = (DEFAULT_KEEP_BACKGROUND if args.keep_background is None else args.keep_background) if args.mask else 0.0
    args.num_tokens = num_tokens_for(args)
    TrainSettings(steps=args.steps, learning_rate=args.learning_rate, num_tokens=args.num_tokens,
                  init_std=args.init_std, seed=args.seed, keep_background=keep_background).validate()
    images, masks = read_references(args.image, args.mask)
    model_names(args)  # a missing demo set is named before ComfyUI loads
    comfy_env = setup_comfyui(args)
    say(f"ComfyUI {comfy_env.root} on {comfy_env.device}")
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        model, clip, vae = load_models(args, comfy_env, say)
        say(f"training {args.steps} steps on {len(args.image)} picture file(s)" + (" with masks" if masks is not None else ""))
        context, info, plot = comfy_env.glue.train_reference_context(
            model, clip, vae, images, args.prompt, seed=args.seed, steps=args.steps, learning_rate=args.learning_rate,
            image_size=args.size, num_tokens=args.num_tokens, init_std=args.init_std, dtype_name=args.dtype,
            masks=masks, on_progress=progress_printer(), activation_checkpointing=args.activation_checkpointing,
            keep_background=keep_background,
        )
    say(info)
    save_context(context, out)
    if loss_plot is not None:
        save_png(plot, loss_plot)
        say(f"saved loss plot {loss_plot}")
    say(f"saved {out}  ({time.perf_counter() - started:.1f}s in all)")
    return 0


def run_sample(args) -> int:
    import torch

    from .context_file import load_context

    started = time.perf_counter()
    out = check_writable(with_suffix(args.out, ".png"), "--out")
    check_sampling_range(args.start_percent, args.end_percent)  # Apply Context's rule, in option names
    context = load_context(args.context)  # a bad file fails before the models load
    model_names(args)
    meta = context.metadata
    prompt = args.prompt if args.prompt is not None else meta.get("prompt") or DEFAULT_TRAIN_PROMPT
    comfy_env = setup_comfyui(args)
    glue = comfy_env.glue
    for option, value, choices in (("--sampler", args.sampler, glue.SAMPLER_NAMES), ("--scheduler", args.scheduler, glue.SCHEDULER_NAMES)):
        if value not in choices:
            raise CommandLineError(f"{option} {value!r} is not one of ComfyUI's: {', '.join(choices)}.")
    say(f"ComfyUI {comfy_env.root} on {comfy_env.device}")
    lift = meta.get("lift")
    say(f"context {args.context}: {context.num_blocks} blocks x {context.num_tokens} tokens, {meta.get('steps', '?')} steps"
        + (f", reference fit {lift * 100:.1f}%" if isinstance(lift, (int, float)) else "") + f"; strength {args.strength:g}")
    every = max(1, args.steps // 10)

    def on_step(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            say(f"sampling step {done}/{total}")

    with torch.inference_mode():  # as ComfyUI's executor runs every node
        model, clip, vae = load_models(args, comfy_env, say)
        patched = glue.apply_reference_context(model, context, args.strength, args.apply_to,
                                               args.start_percent, args.end_percent, args.blocks)
        say(f"sampling {args.width}x{args.height}, {args.steps} steps, {args.sampler}/{args.scheduler}, cfg {args.cfg:g}")
        images = glue.render(patched, clip, vae, prompt, args.negative, args.width, args.height, args.steps, args.cfg,
                             args.sampler, args.scheduler, args.seed, on_step=on_step)
    mean = save_png(images[0], out)
    say(f"saved {out}  ({images.shape[2]}x{images.shape[1]}, mean pixel {mean:.4f}, {time.perf_counter() - started:.1f}s in all)")
    return 0


def run_demo_models(args) -> int:
    started = time.perf_counter()
    folder = Path(args.folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CommandLineError(f"{folder} is a file; name a folder.")
    comfy_env = setup_comfyui(args)
    say(f"ComfyUI {comfy_env.root}; writing random-weight Anima models into {folder.resolve()}")
    write_demo_models(folder, comfy_env.root, say, force=args.force)
    say(f"done in {time.perf_counter() - started:.0f}s. Use them with: python -m anima_context train --demo-models {args.folder} ...")
    return 0


def num_tokens_for(args) -> int:
    """``--num-tokens``, or the default of the node the options stand for: the masked train node's with ``--mask``."""
    if args.num_tokens is not None:
        return args.num_tokens
    return DEFAULT_MASKED_NUM_TOKENS if args.mask else DEFAULT_NUM_TOKENS


# The pack's messages name the node inputs; on the command line the options stand for them.
NODE_INPUT_OPTIONS = {"training_image_size": "--size", "training_steps": "--steps", "learning_rate": "--learning-rate",
                      "num_tokens": "--num-tokens", "init_std": "--init-std", "training_dtype": "--dtype",
                      "training_mask": "--mask", "activation_checkpointing": "--activation-checkpointing",
                      "keep_background": "--keep-background",
                      "start_percent": "--start-percent", "end_percent": "--end-percent"}


def in_option_names(message: str) -> str:
    return re.sub(r"\b(" + "|".join(NODE_INPUT_OPTIONS) + r")\b", lambda match: NODE_INPUT_OPTIONS[match.group(1)], message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except (CommandLineError, ImageFileError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except AnimaFastTrainError as error:  # the pack's own messages already say what to do
        print(in_option_names(str(error)), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except BaseException as error:
        # ComfyUI's cancel (InterruptProcessingException) is a BaseException: a clean stop as ctrl-C.
        if type(error).__name__ == "InterruptProcessingException":
            print("interrupted", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        raise
