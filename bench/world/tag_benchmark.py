"""The identity benchmark on the tag world (issue 23): a model that takes who to draw from tags, so a
context is measured against what the character's own tags reach on it (the oracle).

    COMFYUI_PATH=... python -m bench.world.tag_benchmark --world bench/world/tags_cache --out /tmp/tb --split tuning

For each held-out character of the split (tuning for method choices, final for the final table), fresh
references on one scene, and samples asked for a scene three places further on (never the references'):

- **oracle**: the character's own tags and the asked scene, no context, empty negative;
- **plain**: the scene alone, no context;
- **context**: trained with the train node's default prompt, sampled with the scene alone;
- **partial**: trained with a prompt that names the hair colour (and the references' scene), sampled with the
  hair colour and the asked scene: the context should carry what the prompt leaves out;
- **edit outfit** / **edit accessory**: the context, and a prompt that asks for another outfit colour or another
  accessory: the share with the asked value, and the share whose other four attributes are the references'.
- **home** (a diagnosis, not in the issue's table): the context sampled in the references' own scene, empty negative:
  what the tokens carry of the character when the prompt's scene does not fight them.

Each row: identity, attributes, prompted background, leak (the references' scene), both (the character in the
asked scene) and training seconds. Prints a table per reference count, ``TAGROW {json}`` per character and
``TAGSUMMARY {json}`` per reference count, writes OUT/results.json and OUT/grid.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.world import benchmark as scene_benchmark
from bench.world import tags
from bench.world.characters import ATTRIBUTES, BACKGROUNDS, FRESH_SEEDS, attribute_tags, prompt_for, render, render_mask

ROWS = ("oracle", "plain", "context", "partial", "edit_outfit", "edit_accessory", "home")
SCORES = ("identity", "attributes", "background", "leak", "both")
PROMPT_HEAD = "1girl, solo, standing, full body"
REFERENCE_SEEDS = 300_000  # fresh seeds for the tag world's references, apart from the scene world's
OUTFIT, ACCESSORY = list(ATTRIBUTES).index("outfit_colour"), list(ATTRIBUTES).index("accessory")
EDITS = ("edit_outfit", "edit_accessory")  # rows sampled with the context row's context


# The benchmark's sampler (every row, and bench.world.steps_curve's, which pairs with its context row)
SAMPLER = {"sampler": "euler", "scheduler": "simple", "sample_steps": 12, "cfg": 3.0}


def index_of(character) -> int:
    return tags.ALL.index(character)


def noise_seed(character) -> int:
    """The sampling noise of every row of a character: rows, and runs, with the same noise pair sample by sample."""
    return 2000 + index_of(character)


def prompt_encoder(clip):
    """``encode(text)``: the CLIP conditioning of a prompt, each text encoded once."""
    cache = {}

    def encode(text: str):
        if text not in cache:
            cache[text] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        return cache[text]

    return encode


def scenes_for(character) -> tuple[str, str]:
    i = index_of(character)
    return BACKGROUNDS[i % len(BACKGROUNDS)], BACKGROUNDS[(i + 3) % len(BACKGROUNDS)]


def reference_seeds(character, count: int) -> list[int]:
    first = FRESH_SEEDS + REFERENCE_SEEDS + 100 * index_of(character)
    return [first + k for k in range(count)]


def references_for(character, count: int, size: int) -> list:
    b_ref, _ = scenes_for(character)
    return [render(character, b_ref, seed, size=size) for seed in reference_seeds(character, count)]


def reference_masks_for(character, count: int, size: int) -> list:
    """The true character masks of ``references_for``'s pictures (what a user draws for the masked train node)."""
    return [render_mask(character, seed, size=size) for seed in reference_seeds(character, count)]


def hair_tag(values: tuple[str, ...]) -> str:
    return f"{values[0]} hair"


def tag_prompt(tag_text: str, background: str) -> str:
    return f"{PROMPT_HEAD}, {tag_text}, {background} background"


def edited(values: tuple[str, ...], attribute: int) -> tuple[str, ...]:
    """The character with the next value of ``attribute`` in the tag world's vocabulary."""
    options = tags.TAG_VALUES[list(ATTRIBUTES)[attribute]]
    changed = list(values)
    changed[attribute] = options[(options.index(values[attribute]) + 1) % len(options)]
    return tuple(changed)


def edit_tag(values: tuple[str, ...], attribute: int) -> str:
    """The tag that asks for the changed value: the outfit with its colour, or the accessory."""
    words = attribute_tags(values).split(", ")
    return words[2] if attribute == OUTFIT else words[3]


def edit_score(classifier, latents, character, asked: tuple[str, ...], attribute: int) -> dict:
    read = classifier.classify(latents)["attributes"].cpu()
    vocabulary = list(ATTRIBUTES.values())
    want = torch.tensor([vocabulary[k].index(v) for k, v in enumerate(asked)])
    own = torch.tensor([vocabulary[k].index(v) for k, v in enumerate(character.values)])
    others = [k for k in range(len(want)) if k != attribute]
    return {"asked": round(float((read[:, attribute] == want[attribute]).float().mean()), 4),
            "kept": round(float((read[:, others] == own[others]).all(dim=1).float().mean()), 4),
            "kept_attributes": round(float((read[:, others] == own[others]).float().mean()), 4)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.world.tag_benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True, help="a tag world folder (python -m bench.world.build --scale tags)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--label", default="run")
    p.add_argument("--split", default="tuning", help="tuning (default), final, held_out, or names: u00,f03")
    p.add_argument("--refs", default="1,3")
    p.add_argument("--seeds", type=int, default=8, help="samples per character and row (default 8)")
    p.add_argument("--train-seeds", default="0")
    p.add_argument("--train-kwargs", type=json.loads, default={}, help="JSON merged into the train node's inputs")
    p.add_argument("--apply-kwargs", type=json.loads, default={}, help="JSON merged into the apply node's inputs")
    p.add_argument("--masks", action="store_true",
                   help="train with each reference's true character mask (the masked train node's training_mask)")
    p.add_argument("--negative", choices=("reference-scene", "empty"), default="reference-scene",
                   help="the negative prompt of the context rows (the oracle's is always empty)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--comfyui", default=None)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--classifier-standin", action="store_true", help="mechanics tests only")
    p.add_argument("--no-grid", action="store_true")
    p.add_argument("--rows", default=",".join(ROWS),
                   help="the rows to run, comma-separated (default all): fewer rows screen a candidate faster")
    return p


def run(args, say=print) -> dict:
    from bench.world.grid import GridRow, make_grid

    torch.set_num_threads(args.threads)
    nodes, glue, _pack = scene_benchmark.setup(args)
    # --masks trains with the masked node, so its own defaults (keep_background) are what is measured
    train_node = (nodes.AnimaFastTrainMaskedReferenceContext if args.masks else nodes.AnimaFastTrainReferenceContext)()
    apply_node = nodes.AnimaFastTrainApplyContext()
    default_prompt = nodes.AnimaFastTrainReferenceContext.INPUT_TYPES()["required"]["training_prompt"][1]["default"]
    settings = {"train": scene_benchmark.node_defaults(nodes), "train_kwargs": args.train_kwargs}
    refs = [int(r) for r in args.refs.split(",")]
    train_seeds = [int(s) for s in args.train_seeds.split(",")]
    characters = tags.pick(args.split)
    wanted = {name.strip() for name in args.rows.split(",") if name.strip()}
    if not wanted or wanted - set(ROWS):
        raise SystemExit(f"error: --rows {args.rows!r}: choose from {', '.join(ROWS)}")
    trained_kinds = {kind for kind in ("context", "partial") if kind in wanted} | ({"context"} if wanted & (set(EDITS) | {"home"}) else set())
    started = time.perf_counter()
    with torch.inference_mode():
        meta, model, clip, vae = scene_benchmark.load_world(args.world, glue)
        oracle_record = meta.get("checks", {}).get("oracle")
        if oracle_record is not None and not oracle_record.get("ready"):
            say(f"note: this world is not ready (oracle {oracle_record.get('held_out')}): its figures say little")
        classifier = scene_benchmark.make_classifier(args, args.world)
        size = scene_benchmark.image_size(meta)
        encode = prompt_encoder(clip)

        def draw(patched, positive, negative, seed):
            return scene_benchmark.sample_batch(patched, encode(positive), encode(negative), args.seeds, size, seed, SAMPLER)

        results, grid_rows = [], []
        for character in characters:
            b_ref, b_tgt = scenes_for(character)
            noise = noise_seed(character)
            negative = prompt_for(b_ref) if args.negative == "reference-scene" else ""
            full_tags, hair = attribute_tags(character.values), hair_tag(character.values)
            fixed_prompts = {"oracle": (tag_prompt(full_tags, b_tgt), ""), "plain": (prompt_for(b_tgt), negative)}
            fixed = {name: scene_benchmark.score(classifier, draw(model, *fixed_prompts[name], noise), character, b_tgt, b_ref)
                     for name in fixed_prompts if name in wanted}
            references = references_for(character, max(refs), size)
            for n in refs:
                for train_seed in train_seeds:
                    row = {"character": character.name, "split": "tuning" if character in tags.TUNING else "final",
                           "n_refs": n, "train_seed": train_seed, "tags": full_tags, "reference_background": b_ref,
                           "target_background": b_tgt}
                    row.update({f"{name}_{k}": fixed[name][k] for name in fixed for k in SCORES})
                    contexts = {}
                    for kind, prompt in (("context", default_prompt), ("partial", tag_prompt(hair, b_ref))):
                        if kind not in trained_kinds:
                            continue
                        kwargs = scene_benchmark.train_inputs(character, references[:n], prompt, train_seed, size, settings)
                        if args.masks:
                            kwargs["training_mask"] = [scene_benchmark.as_mask(m) for m in reference_masks_for(character, n, size)]
                        mark = time.perf_counter()
                        contexts[kind] = train_node.train(model, clip, vae, **kwargs)[0]
                        row[f"{kind}_train_seconds"] = round(time.perf_counter() - mark, 2)
                        # the reference fit the info text shows, to see whether it tracks the benchmark
                        row[f"{kind}_lift"] = round(float(contexts[kind].metadata["lift"]), 4)
                        row[f"{kind}_masked"] = bool(contexts[kind].metadata.get("masked"))
                        row[f"{kind}_keep_background"] = float(contexts[kind].metadata.get("keep_background") or 0.0)
                    patched = {kind: apply_node.apply(model, context, **{"strength": 1.0, **args.apply_kwargs})[0]
                               for kind, context in contexts.items()}
                    scored = {}
                    if "context" in wanted:
                        context_latents = draw(patched["context"], prompt_for(b_tgt), negative, noise)
                        scored["context"] = scene_benchmark.score(classifier, context_latents, character, b_tgt, b_ref)
                    if "partial" in wanted:
                        scored["partial"] = scene_benchmark.score(classifier, draw(patched["partial"], tag_prompt(hair, b_tgt),
                                                                                   negative, noise), character, b_tgt, b_ref)
                    if "home" in wanted:
                        scored["home"] = scene_benchmark.score(classifier, draw(patched["context"], prompt_for(b_ref), "", noise),
                                                               character, b_ref, b_ref)
                    for name, value in scored.items():
                        row.update({f"{name}_{k}": value[k] for k in SCORES})
                    for name, attribute in zip(EDITS, (OUTFIT, ACCESSORY)):
                        if name not in wanted:
                            continue
                        asked = edited(character.values, attribute)
                        latents = draw(patched["context"], tag_prompt(edit_tag(asked, attribute), b_tgt), negative, noise)
                        row.update({f"{name}_{k}": v for k, v in edit_score(classifier, latents, character, asked, attribute).items()})
                    results.append(row)
                    say("TAGROW " + json.dumps(row))
                    if not args.no_grid and train_seed == train_seeds[0] and {"oracle", "context"} <= wanted:
                        hits = scored["context"]
                        grid_rows.append(GridRow(
                            title=f"{character.name} refs={n}", detail=[full_tags, f"ref: {b_ref}", f"ask: {b_tgt}",
                                                                         f"ctx id {sum(hits['identity_hits'])}/{args.seeds}"],
                            references=references[:n], plain=scene_benchmark.decode(vae, draw(model, tag_prompt(full_tags, b_tgt), "", noise)[:4]),
                            context=scene_benchmark.decode(vae, context_latents[:4]),
                            plain_hits=list(zip(fixed["oracle"]["identity_hits"], fixed["oracle"]["background_hits"]))[:4],
                            context_hits=list(zip(hits["identity_hits"], hits["background_hits"]))[:4]))
    summaries = summarize(results, refs)
    say(table(summaries))
    tracking = lift_tracking(results)
    if tracking["trainings"]:
        say(f"lift (info) against the benchmark over {tracking['trainings']} trainings: spearman "
            f"{_rounded(tracking['identity_spearman'])} with identity, {_rounded(tracking['attributes_spearman'])} "
            f"with attributes, {_rounded(tracking['both_spearman'])} with both")
    for summary in summaries:
        say("TAGSUMMARY " + json.dumps({"label": args.label, **summary}))
    args.out.mkdir(parents=True, exist_ok=True)
    output = {"label": args.label, "split": args.split, "rows": results, "summaries": summaries, "lift_tracking": tracking,
              "seconds": round(time.perf_counter() - started, 1), "world": str(args.world)}
    (args.out / "results.json").write_text(json.dumps(output, indent=1))
    if grid_rows:
        make_grid(grid_rows, size, 4).save(args.out / "grid.png")
        say(f"wrote {args.out / 'grid.png'} (oracle samples | samples with the context)")
    say(f"wrote {args.out / 'results.json'} ({output['seconds']:.0f}s)")
    return output


def summarize(rows: list[dict], refs: list[int]) -> list[dict]:
    out = []
    for n in refs:
        group = [r for r in rows if r["n_refs"] == n]
        if group:
            keys = [k for k in group[0] if isinstance(group[0][k], (int, float)) and k not in ("n_refs", "train_seed")]
            out.append({"n_refs": n, "rows": len(group), **{k: round(sum(r[k] for r in group) / len(group), 4) for k in keys}})
    return out


def lift_tracking(rows: list[dict]) -> dict:
    """Spearman rank correlation, over every trained context (context and partial rows of every character and
    reference count), of the info text's reference fit (lift) with the benchmark's scores."""
    pairs = [(row[f"{kind}_lift"], {k: row[f"{kind}_{k}"] for k in ("identity", "attributes", "both")})
             for row in rows for kind in ("context", "partial") if f"{kind}_lift" in row and f"{kind}_identity" in row]
    lifts = [lift for lift, _ in pairs]
    return {"trainings": len(pairs),
            **{f"{k}_spearman": scene_benchmark.spearman(lifts, [scores[k] for _, scores in pairs])
               for k in ("identity", "attributes", "both")}}


def _rounded(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def table(summaries: list[dict]) -> str:
    lines = []
    for s in summaries:
        lines.append(f"{s['n_refs']} reference(s), {s['rows']} trainings     ident%   attr%    bg%  leak%  both%  train s")
        for name in ("oracle", "plain", "context", "partial", "home"):
            if f"{name}_identity" not in s:
                continue
            seconds = s.get(f"{name}_train_seconds")
            lines.append(f"  {name:<26}" + "".join(f"{100 * s[f'{name}_{k}']:7.0f}" for k in SCORES)
                         + (f"{seconds:9.1f}" if seconds is not None else f"{'-':>9}"))
        for name in EDITS:
            if f"{name}_asked" not in s:
                continue
            lines.append(f"  {name:<26} asked {100 * s[f'{name}_asked']:.0f}%, other four kept {100 * s[f'{name}_kept']:.0f}% "
                         f"(attributes {100 * s[f'{name}_kept_attributes']:.0f}%)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return run(build_parser().parse_args(argv), say=lambda text: print(text, flush=True))


if __name__ == "__main__":
    main()
