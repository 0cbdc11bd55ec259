"""The tag benchmark's context row against training steps, from one training per character and seed.

At a constant learning rate the first N steps of a longer run are an N-step run exactly (the trainer draws its
timesteps and noise in step order, and the lift evaluations draw nothing), so one training to the largest count,
its tokens copied after each count in ``--steps``, gives every point of the curve for the price of the last one.
Each copy is applied and sampled as ``tag_benchmark``'s context row (node-default training prompt, a new scene,
the references' scene as the negative), from the same noise.

    COMFYUI_PATH=~/ComfyUI python -m bench.world.steps_curve --world bench/world/tags_cache --out /tmp/sc \\
        --split tuning --refs 1 --steps 50,100,200,400 --train-seeds 0,1 --seeds 4
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import time
from pathlib import Path

import torch

from bench.world import benchmark as scene_benchmark
from bench.world import tag_benchmark, tags
from bench.world.characters import prompt_for


def step_counts(text: str) -> list[int]:
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: give step counts of 1 or more, e.g. 50,100,200")
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.world.steps_curve", description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="tuning")
    p.add_argument("--refs", default="1")
    p.add_argument("--steps", type=step_counts, default=step_counts("50,100,200"), help="step counts, e.g. 50,100,200")
    p.add_argument("--seeds", type=int, default=4, help="samples per character, training and step count")
    p.add_argument("--train-seeds", default="0,1")
    p.add_argument("--train-kwargs", type=json.loads, default={}, help="JSON merged into the train inputs (not steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--comfyui", default=None)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--classifier-standin", action="store_true", help="mechanics tests only")
    return p


@contextlib.contextmanager
def recording_training_tokens(trainer_module):
    """While open, the trainer's patch class notes the tokens it trains (the one Parameter it is built with) in
    the dict it yields; the trainer is unchanged otherwise, and the class is put back on leaving."""
    noted: dict = {}
    base = trainer_module.ContextTokenPatch

    class RecordingPatch(base):
        def __init__(self, tokens, *args, **kwargs):
            super().__init__(tokens, *args, **kwargs)
            if isinstance(tokens, torch.nn.Parameter):
                noted["tokens"] = tokens

    trainer_module.ContextTokenPatch = RecordingPatch
    try:
        yield noted
    finally:
        trainer_module.ContextTokenPatch = base


def train_with_copies(glue, model, clip, vae, inputs: dict, counts: list[int], noted: dict) -> dict:
    """One training of ``max(counts)`` steps through the train nodes' own glue; the tokens after each count."""
    copies = {}

    def on_progress(done: int, _total: int, _loss) -> None:
        if done in counts:
            copies[done] = noted["tokens"].detach().float().cpu().clone()

    images = {key: inputs.get(key) for key in ("reference_image", "reference_image_2", "reference_image_3")}
    context, _info, _plot = glue.train_reference_context(
        model, clip, vae, images, inputs["training_prompt"], seed=inputs["seed"], steps=max(counts),
        learning_rate=inputs["learning_rate"], image_size=inputs["training_image_size"], num_tokens=inputs["num_tokens"],
        init_std=inputs["init_std"], dtype_name=inputs["training_dtype"], on_progress=on_progress)
    if not torch.equal(copies[max(counts)], context.tokens):
        raise RuntimeError("the last copy is not the trained context: the recording missed the trained tokens")
    return {count: type(context)(tokens=tokens, metadata={**context.metadata, "steps": count})
            for count, tokens in copies.items()}


def run(args, say=print) -> dict:
    torch.set_num_threads(args.threads)
    nodes, glue, _pack = scene_benchmark.setup(args)
    trainer_module = importlib.import_module(f"{scene_benchmark.PACK_NAME}.anima_context.trainer")
    apply_node = nodes.AnimaFastTrainApplyContext()
    default_prompt = nodes.AnimaFastTrainReferenceContext.INPUT_TYPES()["required"]["training_prompt"][1]["default"]
    settings = {"train": scene_benchmark.node_defaults(nodes), "train_kwargs": args.train_kwargs}
    refs = [int(r) for r in args.refs.split(",")]
    train_seeds = [int(s) for s in args.train_seeds.split(",")]
    rows_by_count: dict[int, list[dict]] = {count: [] for count in args.steps}
    started = time.perf_counter()
    with torch.inference_mode(), recording_training_tokens(trainer_module) as noted:
        meta, model, clip, vae = scene_benchmark.load_world(args.world, glue)
        classifier = scene_benchmark.make_classifier(args, args.world)
        size = scene_benchmark.image_size(meta)
        encode = tag_benchmark.prompt_encoder(clip)

        for character in tags.pick(args.split):
            b_ref, b_tgt = tag_benchmark.scenes_for(character)
            noise = tag_benchmark.noise_seed(character)  # the tag benchmark's noise: its rows pair with these
            references = tag_benchmark.references_for(character, max(refs), size)
            for n in refs:
                for train_seed in train_seeds:
                    inputs = scene_benchmark.train_inputs(character, references[:n], default_prompt, train_seed, size, settings)
                    mark = time.perf_counter()
                    contexts = train_with_copies(glue, model, clip, vae, inputs, args.steps, noted)
                    seconds = time.perf_counter() - mark
                    for count, context in contexts.items():
                        patched = apply_node.apply(model, context, strength=1.0)[0]
                        latents = scene_benchmark.sample_batch(
                            patched, encode(prompt_for(b_tgt)), encode(prompt_for(b_ref)), args.seeds, size, noise,
                            tag_benchmark.SAMPLER)
                        scored = scene_benchmark.score(classifier, latents, character, b_tgt, b_ref)
                        row = {"character": character.name, "n_refs": n, "train_seed": train_seed, "steps": count,
                               **{f"context_{k}": scored[k] for k in tag_benchmark.SCORES},
                               "context_train_seconds": round(seconds * count / max(args.steps), 2)}
                        rows_by_count[count].append(row)
                        say("STEPROW " + json.dumps(row))
    summaries = {count: tag_benchmark.summarize(rows, refs) for count, rows in rows_by_count.items()}
    lines = ["steps  refs  trainings   ident%   attr%    bg%  leak%  both%  train s (share of the run)"]
    for count, per_refs in summaries.items():
        for s in per_refs:
            lines.append(f"{count:5d} {s['n_refs']:5d} {s['rows']:10d}" + "".join(
                f"{100 * s[f'context_{k}']:8.0f}" for k in tag_benchmark.SCORES) + f"{s['context_train_seconds']:9.1f}")
    say("\n".join(lines))
    result = {"summaries": {str(k): v for k, v in summaries.items()}, "rows": rows_by_count,
              "seconds": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps_curve.json").write_text(json.dumps(result, indent=1))
    say("SUMMARY " + json.dumps(result["summaries"]))
    return result


def main(argv=None) -> dict:
    return run(build_parser().parse_args(argv), say=lambda text: print(text, flush=True))


if __name__ == "__main__":
    main()
