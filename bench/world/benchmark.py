"""The identity benchmark (issue 10): the pack's real nodes (Train Context Tokens, Apply Context) and
ComfyUI's sampler on the trained world, judged by the world's classifier.

    COMFYUI_PATH=/work/ComfyUI python -m bench.world.benchmark --world WORLD --out OUT [--quick] [--label NAME]

For each character, references drawn on one background train a context; samples are then asked for a
background three places further on (always a different one), over --seeds noise seeds, with and without
the context. A sample counts as the character when all five attributes read right. Prints a row per
character x reference count, ``RESULT {json}`` per row and ``SUMMARY {json}`` per (split, reference count),
and writes OUT/results.json and OUT/grid.png. Fractions in the JSON are 0..1; the table shows percent.

Everything that varies with a character (backgrounds, reference seeds, noise seed) is keyed by its index in
``characters.CHARACTERS``, so a character's row does not depend on which others run with it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bench.world.build import DIT_FILE, TEXT_ENCODER_FILE, VAE_FILE
from bench.world.characters import (
    BACKGROUNDS,
    CHARACTERS,
    FRESH_SEEDS,
    HELD_OUT,
    attribute_vector,
    background_id,
    character_by_name,
    character_id,
    prompt_for,
    render,
    render_mask,
)

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "anima_fast_train_pack"  # the tests' name for the pack, so a test run shares one copy
# the world's files, as bench.world.build writes them
WORLD_FILES = {"unet": str(DIT_FILE), "clip": str(TEXT_ENCODER_FILE), "vae": str(VAE_FILE)}
DEFAULT_TRAINING = ("t00", "t01")
GRID_REFS = (1, 3)
GRID_SAMPLES = 4
NOISE_SEED, REFERENCE_SEED_STRIDE = 1000, 100
TRUTH_SEEDS = 50_000  # fresh renders of each character on the asked background: the classifier's ceiling
AS_PROMPTED_SHARE = 0.75  # the asked scene fills at least three quarters of the picture (classifier.py)
LEAK_SHARE = 0.25  # the references' scene fills at least a quarter
SCORES = ("identity", "attributes", "background", "leak", "both")  # score()'s rates, with and without the context
METRICS = ("true_identity", *SCORES, *(f"plain_{k}" for k in SCORES), "train_seconds", "lift")


# ---- the pack and ComfyUI ----


def _alias(name: str):
    """The pack's core module under its plain ``anima_context`` name too (one copy of each class)."""
    module = importlib.import_module(f"{PACK_NAME}.anima_context" + (f".{name}" if name else ""))
    sys.modules["anima_context" + (f".{name}" if name else "")] = module
    return module


def load_pack():
    """The repo root as a package, as ComfyUI loads a custom node folder (nodes.py imports relatively)."""
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    _alias("")
    return sys.modules[PACK_NAME]


def setup(args):
    """ComfyUI set up as the command line does; returns the pack's nodes module and its glue."""
    pack = load_pack()
    cli = _alias("cli")
    cli.setup_comfyui(SimpleNamespace(comfyui=args.comfyui, models_dir=None, cpu=args.cpu))
    glue = _alias("comfy_glue")
    return importlib.import_module(f"{PACK_NAME}.nodes"), glue, pack


def load_world(world: Path, glue):
    paths = {key: world / rel for key, rel in WORLD_FILES.items()}
    missing = [str(p) for p in [*paths.values(), world / "world.json"] if not p.is_file()]
    if missing:
        raise SystemExit(f"error: the world {world} lacks {', '.join(missing)}")
    meta = json.loads((world / "world.json").read_text())
    model = glue.load_diffusion_model(str(paths["unet"]))
    clip = glue.load_text_encoder(str(paths["clip"]), [])
    vae = glue.load_vae(str(paths["vae"]))
    return meta, model, clip, vae


def image_size(world_meta: dict) -> int:
    """world.json's image size: at its top level, or in the build's "config"."""
    size = world_meta.get("image_size", world_meta.get("config", {}).get("image_size"))
    if size is None:
        raise SystemExit("error: world.json names no image_size")
    return int(size)


class RandomClassifier:
    """Stand-in for mechanics tests only: fixed random linear read-outs of the latents (deterministic,
    input-dependent, meaningless)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def classify(self, latents: torch.Tensor) -> dict:
        features = latents.detach().float().reshape(latents.shape[0], -1).cpu()
        generator = torch.Generator().manual_seed(self.seed)
        from bench.world.characters import ATTRIBUTES

        heads = [len(v) for v in ATTRIBUTES.values()] + [len(BACKGROUNDS)]
        scores = [features @ torch.randn(features.shape[1], n, generator=generator) for n in heads]
        return {"attributes": torch.stack([s.argmax(1) for s in scores[:-1]], dim=1), "background": scores[-1].argmax(1),
                "background_shares": scores[-1].softmax(1)}


def make_classifier(args, world: Path):
    if args.classifier_standin:
        return RandomClassifier()
    from bench.world.classifier import load_classifier

    return load_classifier(world)


# ---- options ----


def node_defaults(nodes) -> dict:
    spec = nodes.AnimaFastTrainReferenceContext.INPUT_TYPES()["required"]
    return {name: spec[name][1]["default"] for name in ("training_steps", "learning_rate", "num_tokens", "init_std")}


def pick_characters(text: str) -> list:
    if text == "held_out":
        return list(HELD_OUT)
    if text == "all":
        return list(CHARACTERS)
    if text == "default":
        return list(HELD_OUT) + [character_by_name(n) for n in DEFAULT_TRAINING]
    try:
        return [character_by_name(name.strip()) for name in text.split(",") if name.strip()]
    except StopIteration:
        raise SystemExit(f"error: --characters {text!r}: use default, held_out, all or names like h00,t01") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.world.benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True, help="the world folder (world.json, diffusion_models/, vae/, ...)")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and grid.png")
    p.add_argument("--label", default="run", help="a name echoed in every SUMMARY line, to compare variants")
    p.add_argument("--characters", default=None,
                   help="default (the held-out six plus t00,t01), held_out, all, or names: h00,h03,t05")
    p.add_argument("--refs", default=None, help="reference counts, from 1 to 3 (default 1,2,3)")
    p.add_argument("--seeds", type=int, default=None, help="samples per character and setting (default 8)")
    p.add_argument("--quick", action="store_true", help="smoke run: h00,h01, refs 1,3, 4 seeds (explicit options win)")
    train = p.add_argument_group("training (default: the node's defaults)")
    train.add_argument("--steps", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--num-tokens", type=int)
    train.add_argument("--init-std", type=float)
    train.add_argument("--train-seeds", default="0",
                       help="training seeds, e.g. 0,1: one training (and row) per seed; the outcome depends a lot on it")
    train.add_argument("--train-kwargs", type=json.loads, default={}, help="JSON merged into the train node's inputs")
    train.add_argument("--masks", action="store_true", help="train with each reference's true character mask")
    train.add_argument("--apply-kwargs", type=json.loads, default={}, help="JSON merged into the apply node's inputs")
    sample = p.add_argument_group("sampling")
    sample.add_argument("--sampler", default="euler")
    sample.add_argument("--scheduler", default="simple")
    sample.add_argument("--sample-steps", type=int, default=12)
    sample.add_argument("--cfg", type=float, default=3.0)
    sample.add_argument("--negative", choices=("reference-scene", "empty"), default="reference-scene",
                        help="the negative prompt: the training prompt, which names the references' scene, as the README "
                             "advises (default), or empty (the first four rounds)")
    run = p.add_argument_group("running")
    run.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    run.add_argument("--comfyui", default=None, help="ComfyUI folder (default $COMFYUI_PATH)")
    run.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    run.add_argument("--classifier-standin", action="store_true",
                     help="a random classifier instead of the world's: for testing the mechanics only, the figures mean nothing")
    run.add_argument("--save-contexts", action="store_true", help="keep each trained context in OUT/contexts/ (for offline analysis)")
    run.add_argument("--contexts", type=Path, default=None,
                     help="apply the contexts an earlier --save-contexts run kept in this folder instead of training "
                          "(for apply-time variants; train s is then the saved run's)")
    run.add_argument("--no-grid", action="store_true", help="skip grid.png (no decoding)")
    return p


def resolve(args, nodes) -> dict:
    """Every setting the run uses, with --quick and the node defaults filled in."""
    quick = args.quick
    refs = [int(r) for r in (args.refs or ("1,3" if quick else "1,2,3")).split(",")]
    if any(not 1 <= r <= 3 for r in refs):
        raise SystemExit("error: --refs takes counts from 1 to 3 (the train node has three reference inputs)")
    defaults = node_defaults(nodes)
    chosen = {"training_steps": args.steps, "learning_rate": args.learning_rate, "num_tokens": args.num_tokens, "init_std": args.init_std}
    return {
        "label": args.label,
        "characters": [c.name for c in pick_characters(args.characters or ("h00,h01" if quick else "default"))],
        "refs": refs,
        "seeds": args.seeds or (4 if quick else 8),
        "train": {k: (defaults[k] if v is None else v) for k, v in chosen.items()},
        "train_seeds": [int(seed) for seed in args.train_seeds.split(",")],
        "train_kwargs": args.train_kwargs,
        "masks": args.masks,
        "save_contexts": args.save_contexts,
        "contexts": str(args.contexts) if args.contexts else None,
        "apply_kwargs": args.apply_kwargs,
        "sampler": args.sampler, "scheduler": args.scheduler, "sample_steps": args.sample_steps, "cfg": args.cfg,
        "negative": args.negative,
        "threads": args.threads,
        "classifier": "random stand-in" if args.classifier_standin else "world",
    }


# ---- the measurements ----


def as_image(picture) -> torch.Tensor:
    """A PIL picture as ComfyUI's IMAGE [1, H, W, 3] in 0..1."""
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)[None]


def backgrounds_for(character) -> tuple[str, str]:
    i = character_id(character)
    return BACKGROUNDS[i % len(BACKGROUNDS)], BACKGROUNDS[(i + 3) % len(BACKGROUNDS)]


def reference_seeds(character, count: int) -> list[int]:
    """The render seeds of a character's references: fresh, and apart from every other character's."""
    return [FRESH_SEEDS + REFERENCE_SEED_STRIDE * character_id(character) + k for k in range(count)]


def references_for(character, count: int, size: int) -> list:
    b_ref, _ = backgrounds_for(character)
    return [render(character, b_ref, seed, size=size) for seed in reference_seeds(character, count)]


def reference_masks_for(character, count: int, size: int) -> list:
    """The true character masks of ``references_for``'s pictures."""
    return [render_mask(character, seed, size=size) for seed in reference_seeds(character, count)]


def as_mask(picture) -> torch.Tensor:
    """An "L" picture as ComfyUI's MASK [1, H, W] in 0..1."""
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None]


def train_inputs(character, references: list, prompt: str, seed: int, size: int, settings: dict) -> dict:
    """The train node's inputs for one training: the references (and with ``--masks`` their true masks),
    the node defaults or the chosen settings, and ``--train-kwargs`` on top."""
    images = [as_image(picture) for picture in references]
    kwargs = {"reference_image": images[0], "training_prompt": prompt, "seed": seed, **settings["train"],
              "training_image_size": size, "training_dtype": "float32"}
    kwargs.update({f"reference_image_{k}": image for k, image in enumerate(images[1:], start=2)})
    if settings.get("masks"):
        kwargs["training_mask"] = [as_mask(m) for m in reference_masks_for(character, len(references), size)]
    return {**kwargs, **settings["train_kwargs"]}


def saved_context_name(character: str, n_refs: int, train_seed: int) -> str:
    return f"{character}_refs{n_refs}_seed{train_seed}.pt"


def load_saved_context(folder: Path, character: str, n_refs: int, train_seed: int):
    """A context that ``--save-contexts`` kept, and its info."""
    ReferenceContext = _alias("context").ReferenceContext  # the class the pack's nodes check for

    path = folder / saved_context_name(character, n_refs, train_seed)
    if not path.exists():
        raise SystemExit(f"--contexts: {path} is missing (run with --save-contexts and the same characters, refs and seeds)")
    saved = torch.load(path, weights_only=False)
    return ReferenceContext(saved["tokens"], saved["metadata"]), saved.get("info", "")


def true_renders(vae, character, background: str, count: int, size: int) -> torch.Tensor:
    """Raw latents of fresh renders of the character on ``background``: what a perfect sample would be."""
    first = FRESH_SEEDS + TRUTH_SEEDS + REFERENCE_SEED_STRIDE * character_id(character)
    return torch.cat([vae.encode(as_image(render(character, background, first + k, size=size))) for k in range(count)])


def negative_prompt(choice: str, b_ref: str) -> str:
    """The sampler's negative prompt: the training prompt, which names the references' scene (README), or empty."""
    return prompt_for(b_ref) if choice == "reference-scene" else ""


def sample_batch(model, positive, negative, count: int, size: int, seed: int, settings: dict) -> torch.Tensor:
    """KSampler on an empty latent batch (``sampling.sample``): raw latents [B, 16, 1, h, w]."""
    from bench.world.sampling import sample

    return sample(model, positive, negative, count, seed, size, settings["sample_steps"], settings["cfg"],
                  settings["sampler"], settings["scheduler"])


def score(classifier, latents: torch.Tensor, character, b_tgt: str, b_ref: str) -> dict:
    """Identity: all five attributes read as the character's. Background: the asked scene fills at least
    ``AS_PROMPTED_SHARE`` of the picture; leak: the references' scene fills at least ``LEAK_SHARE`` (a blend
    of both counts as a leak, not as the asked background)."""
    read = classifier.classify(latents)
    attributes, background = read["attributes"].cpu(), read["background"].cpu()
    shares = read["background_shares"].cpu()
    matches = attributes == torch.tensor(attribute_vector(character))
    identity = matches.all(dim=1)
    as_prompted = shares[:, background_id(b_tgt)] >= AS_PROMPTED_SHARE
    leaked = shares[:, background_id(b_ref)] >= LEAK_SHARE
    return {
        "identity": round(identity.float().mean().item(), 4),
        "attributes": round(matches.float().mean().item(), 4),
        "background": round(as_prompted.float().mean().item(), 4),
        "leak": round(leaked.float().mean().item(), 4),
        "both": round((identity & as_prompted).float().mean().item(), 4),  # the character, in the asked scene
        "identity_hits": identity.tolist(),
        "background_hits": as_prompted.tolist(),
        "predicted_attributes": attributes.tolist(),
        "predicted_background": background.tolist(),
        "background_shares": [[round(v, 3) for v in row] for row in shares.tolist()],
    }


def decode(vae, latents: torch.Tensor):
    from bench.world.grid import to_pictures

    images = vae.decode(latents)
    if images.ndim == 5:  # a video VAE: frames into the batch, as VAE Decode does
        images = images.reshape(-1, *images.shape[-3:])
    return to_pictures(images)


# ---- statistics and output ----


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda k: values[k])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):  # ties share their mean rank
            ranks[order[k]] = (start + end) / 2
        start = end + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def spearman(x: list[float], y: list[float]) -> float | None:
    return pearson(_ranks(x), _ranks(y))


def correlations(rows: list[dict]) -> dict:
    pairs = [(r["lift"], r["identity"]) for r in rows if isinstance(r.get("lift"), (int, float)) and math.isfinite(r["lift"])]
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"lift_identity_spearman": spearman(x, y), "lift_identity_pearson": pearson(x, y), "lift_identity_rows": len(pairs)}


def summaries(rows: list[dict], settings: dict, corr: dict) -> list[dict]:
    out = []
    for split in ("held_out", "training"):
        for n in settings["refs"]:
            group = [r for r in rows if r["split"] == split and r["n_refs"] == n]
            if not group:
                continue
            means = {m: sum(r[m] for r in group) / len(group) for m in METRICS if all(isinstance(r[m], (int, float)) for r in group)}
            out.append({"label": settings["label"], "split": split, "n_refs": n, "characters": len({r["character"] for r in group}),
                        "trainings": len(group), **means, **corr,
                        "seeds": settings["seeds"], "train": settings["train"], "train_kwargs": settings["train_kwargs"],
                        "apply_kwargs": settings["apply_kwargs"], "negative": settings["negative"],
                        "classifier": settings["classifier"]})
    return out


def _pct(value) -> str:
    return f"{100 * value:5.0f}" if isinstance(value, (int, float)) else "    -"


COLUMNS = ("true_identity", "identity", "attributes", "background", "leak", "both", "plain_identity", "plain_background")
HEADS = ("true.id%", "ident%", "attr%", "bg%", "leak%", "both%", "pl.id%", "pl.bg%")


def table(rows: list[dict], sums: list[dict]) -> str:
    head = f"{'row':<16}{'refs':>5}" + "".join(f"{h:>8}" for h in HEADS) + f"{'train s':>9}{'lift':>8}"
    lines = [head, "-" * len(head)]

    def line(name, n, r):
        lift = r.get("lift")
        return (f"{name:<16}{n:>5}" + "".join(f"{_pct(r.get(c)):>8}" for c in COLUMNS)
                + f"{r.get('train_seconds', 0):>9.1f}" + (f"{lift:>8.3f}" if isinstance(lift, (int, float)) else f"{'-':>8}"))

    several_seeds = len({r.get("train_seed") for r in rows}) > 1
    for r in rows:
        seed = f" s{r['train_seed']}" if several_seeds else ""
        lines.append(line(f"{r['character']} ({r['split'][0]}){seed}", r["n_refs"], r))
    lines.append("-" * len(head))
    for s in sums:
        lines.append(line(f"mean {s['split']}", s["n_refs"], s))
    return "\n".join(lines)


# ---- the run ----


def run(settings: dict, world_meta: dict, nodes, model, clip, vae, classifier, out: Path, grid: bool, say) -> dict:
    from bench.world.grid import GridRow, make_grid

    size = image_size(world_meta)
    started = time.perf_counter()
    # --masks trains with the masked node, so its own defaults (keep_background) are what is measured
    train_node = (nodes.AnimaFastTrainMaskedReferenceContext if settings.get("masks") else nodes.AnimaFastTrainReferenceContext)()
    apply_node = nodes.AnimaFastTrainApplyContext()
    conditionings = {}

    def encode(text: str):  # once per prompt
        if text not in conditionings:
            conditionings[text] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return conditionings[text]

    if settings.get("contexts"):  # every saved context up front, not after an hour of sampling
        for name in settings["characters"]:
            for n in settings["refs"]:
                for train_seed in settings["train_seeds"]:
                    load_saved_context(Path(settings["contexts"]), name, n, train_seed)
    rows, grid_rows, seeds = [], [], settings["seeds"]
    shown = min(GRID_SAMPLES, seeds)
    for character in [character_by_name(n) for n in settings["characters"]]:
        i = character_id(character)
        b_ref, b_tgt = backgrounds_for(character)
        split = "held_out" if character.held_out else "training"
        positive = encode(prompt_for(b_tgt))
        negative = encode(negative_prompt(settings["negative"], b_ref))
        noise_seed = NOISE_SEED + i
        plain_latents = sample_batch(model, positive, negative, seeds, size, noise_seed, settings)
        plain = score(classifier, plain_latents, character, b_tgt, b_ref)
        truth = score(classifier, true_renders(vae, character, b_tgt, seeds, size).float(), character, b_tgt, b_ref)
        wants_grid = grid and character.held_out and any(n in GRID_REFS for n in settings["refs"])
        plain_pictures = decode(vae, plain_latents[:shown]) if wants_grid else None
        references = references_for(character, max(settings["refs"]), size)
        for n in settings["refs"]:
            for train_seed in settings["train_seeds"]:
                if settings.get("contexts"):
                    context, info = load_saved_context(Path(settings["contexts"]), character.name, n, train_seed)
                    train_seconds = context.metadata.get("seconds", 0.0)
                else:
                    kwargs = train_inputs(character, references[:n], prompt_for(b_ref), train_seed, size, settings)
                    mark = time.perf_counter()
                    context, info, _plot = train_node.train(model, clip, vae, **kwargs)
                    train_seconds = time.perf_counter() - mark
                patched = apply_node.apply(model, context, **{"strength": 1.0, **settings["apply_kwargs"]})[0]
                mark = time.perf_counter()
                latents = sample_batch(patched, positive, negative, seeds, size, noise_seed, settings)
                sample_seconds = time.perf_counter() - mark
                with_context = score(classifier, latents, character, b_tgt, b_ref)
                meta = context.metadata
                if settings.get("save_contexts"):
                    (out / "contexts").mkdir(parents=True, exist_ok=True)
                    torch.save({"tokens": context.tokens, "metadata": meta, "info": info},
                               out / "contexts" / saved_context_name(character.name, n, train_seed))
                row = {"label": settings["label"], "character": character.name, "split": split, "n_refs": n, "train_seed": train_seed,
                       "reference_background": b_ref, "target_background": b_tgt, "true_identity": truth["identity"],
                       **{k: with_context[k] for k in SCORES},
                       **{f"plain_{k}": plain[k] for k in SCORES},
                       "train_seconds": train_seconds, "sample_seconds": sample_seconds, "lift": meta.get("lift"),
                       "final_loss": meta.get("final_loss")}
                rows.append({**row, "info": info, "probe": meta.get("probe"), "lift_curve": meta.get("lift_curve"),
                             "samples": {k: with_context[k] for k in with_context if k not in row},
                             "plain_samples": {k: plain[k] for k in plain if k not in SCORES}})
                say(f"[{time.perf_counter() - started:7.1f}s] {character.name} refs={n} seed={train_seed}: identity {_pct(row['identity']).strip()}% "
                    f"(plain {_pct(row['plain_identity']).strip()}%), background {_pct(row['background']).strip()}% "
                    f"leak {_pct(row['leak']).strip()}%, train {train_seconds:.1f}s, sample {sample_seconds:.1f}s")
                say("RESULT " + json.dumps(row))
                if wants_grid and n in GRID_REFS:
                    hits = list(zip(with_context["identity_hits"], with_context["background_hits"]))
                    plain_hits = list(zip(plain["identity_hits"], plain["background_hits"]))
                    grid_rows.append(GridRow(
                        title=f"{character.name} refs={n}" + (f" seed {train_seed}" if len(settings["train_seeds"]) > 1 else ""),
                        detail=[f"ctx id {sum(with_context['identity_hits'])}/{seeds}", f"plain id {sum(plain['identity_hits'])}/{seeds}",
                                f"ref: {b_ref}", f"ask: {b_tgt}"],
                        references=references[:n], plain=plain_pictures, context=decode(vae, latents[:shown]),
                        plain_hits=plain_hits[:shown], context_hits=hits[:shown]))

    corr = correlations(rows)
    sums = summaries(rows, settings, corr)
    say(table(rows, sums))
    say(f"lift vs identity over {corr['lift_identity_rows']} rows: spearman {corr['lift_identity_spearman']}, "
        f"pearson {corr['lift_identity_pearson']}")
    for s in sums:
        say("SUMMARY " + json.dumps(s))
    out.mkdir(parents=True, exist_ok=True)
    results = {"settings": settings, "world": world_meta, "rows": rows, "summaries": sums, "correlation": corr,
               "seconds": time.perf_counter() - started}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if grid_rows:
        make_grid(grid_rows, size, shown).save(out / "grid.png")
        say(f"wrote {out / 'grid.png'}")
    say(f"wrote {out / 'results.json'} ({results['seconds']:.0f}s)")
    return results


def main(argv: list[str] | None = None, say=None) -> dict:
    say = say or (lambda text: print(text, flush=True))
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    nodes, glue, _pack = setup(args)
    settings = resolve(args, nodes)
    say(f"benchmark {settings['label']}: {json.dumps({k: v for k, v in settings.items() if k != 'label'})}")
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        mark = time.perf_counter()
        world_meta, model, clip, vae = load_world(args.world, glue)
        classifier = make_classifier(args, args.world)
        say(f"loaded the world {args.world} in {time.perf_counter() - mark:.1f}s")
        return run(settings, world_meta, nodes, model, clip, vae, classifier, args.out, not args.no_grid, say)


if __name__ == "__main__":
    main()
