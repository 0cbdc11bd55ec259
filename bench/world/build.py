"""Build the world: pictures, a VAE, a classifier and a trained small Anima, in one deterministic
command that keeps what it has done (rerun it after an interruption and it goes on).

    COMFYUI_PATH=... python -m bench.world.build --out bench/world/cache      # ~60 min on 2 CPU cores
    COMFYUI_PATH=... python -m bench.world.build --out /tmp/w --scale smoke   # seconds (the tests run it)
    COMFYUI_PATH=... python -m bench.world.build --out /tmp/g --device cuda --threads 16 --dit-batch 256   # the DiT on a GPU
    COMFYUI_PATH=... python -m bench.world.build --out bench/world/tags_cache --scale tags   # the tag world (issue 23)

The folder is a ComfyUI model set plus the benchmark's extras:
``diffusion_models/world_anima.safetensors`` (UNETLoader), ``text_encoders/anima_demo_qwen3_06b.safetensors``
(CLIPLoader, stable_diffusion; the demo set's fixed random encoder), ``vae/world_vae.safetensors``
(VAELoader), ``classifier.pt`` (``bench.world.classifier.load_classifier``), ``world.json`` (settings and
checks) and ``samples.png`` (the model's own samples, one row per background). The tag world (``cast``
"tags", ``bench.world.tags``) adds ``oracle.png`` and the oracle's figures in ``world.json``: its held-out
characters sampled from their own tags, and whether the world is good enough to benchmark on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import characters as world

DIT_FILE = Path("diffusion_models") / "world_anima.safetensors"
VAE_FILE = Path("vae") / "world_vae.safetensors"
TEXT_ENCODER_FILE = Path("text_encoders") / "anima_demo_qwen3_06b.safetensors"
EMPTY_PROMPT = ""  # the negative prompt of the benchmark and what prompt dropout trains


@dataclass(frozen=True)
class WorldConfig:
    cast: str = "scenes"  # "scenes": issue 10's 30 characters; "tags": bench.world.tags (every combination but 16)
    image_size: int = 64
    dit_width: int = 384  # 16 heads (ComfyUI's detection): head_dim 24 leaves rope 4 pairs per image axis
    vae_dim: int = 8
    seeds_per_pair: int = 80  # training pictures per (training character, background)
    extras: int = 0  # further combinations the DiT trains on (characters.EXTRAS; README: 480 did not pay)
    extra_seeds: int = 4  # pictures per (extra, background): 480 extras have as many pictures as the named characters
    classifier_seeds: int = 120  # classifier pictures per (character, background), all 30 characters
    check_seeds: int = 4  # fresh pictures per (character, background) to check the classifier
    vae_steps: int = 2500
    vae_batch: int = 16
    # "random": a fixed random encoder and a trained decoder (the scene world); "trained": encoder and decoder
    # trained together, so the latent keeps the small parts a random one blurs (README, eighth session)
    vae_encoder: str = "random"
    classifier_steps: int = 9000
    classifier_width: int = 128  # 120 seeds, 9000 steps, width 128, split: fresh identity 93.5% (40, 3000, 96: 82.5%)
    classifier_split: float = 0.5  # share of each batch on two backgrounds split by rows (classifier.py)
    # "shared": every character drawn in the same poses (seed k is one pose for all); "distinct": each character
    # in poses of its own, so the classifier meets as many poses as pictures and cannot learn the poses by heart
    classifier_poses: str = "shared"
    classifier_pooled: bool = False  # classifier.LatentClassifier: pool over positions (reads poses it never met)
    dit_steps: int = 2200
    dit_batch: int = 64
    dit_lr: float = 5e-4
    # a second round of DiT training from the first round's weights (its own warm-up and cosine): a world whose DiT
    # undertrained goes on without redoing the first round ("dit more" stage; the first round's file is kept)
    dit_more_steps: int = 0
    dit_more_lr: float = 3e-4
    # a third round from the second round's weights, at its own batch ("dit third" stage; the second round's file is
    # kept while it runs): the measurement taught tags in batches of 16 at 2e-4, many small steps
    dit_third_steps: int = 0
    dit_third_lr: float = 2e-4
    dit_third_batch: int = 16
    # a fourth round from the third round's weights (its own warm-up and cosine, a fresh optimiser; the third round's
    # file is kept while it runs): a world built with a short third round goes on without redoing it
    dit_fourth_steps: int = 0
    dit_fourth_lr: float = 2e-4
    dit_fourth_batch: int = 16
    # the saved DiT's trained weights (its random LLM adapter stays float32, as the training prompts were encoded
    # with it): float16 halves the tag world's artifact and what a GPU build sends back
    dit_save_dtype: str = "float32"
    tag_share: float = 0.0  # share of the DiT's captioned draws that also name the attributes as tags (README, eighth round)
    samples_per_background: int = 8  # the plain model's own samples in samples.png
    sample_steps: int = 12
    oracle_samples: int = 4  # the tag world's oracle: samples per (held-out character, background) from its tags
    oracle_scenes: int = 6  # backgrounds per character in the oracle (rotating with the character)
    combinations: int = 0  # the tag world's training combinations, 0: all 272 (the smoke build takes a few)
    seed: int = 0
    threads: int = 2


# What each stage's product depends on: its own settings and the stages it reads.
STAGE_SETTINGS = {
    "render": ("cast", "combinations", "image_size", "seeds_per_pair"),
    "vae": ("vae_dim", "vae_steps", "vae_batch", "vae_encoder"),
    "text encoder": (),
    "extras": ("extras", "extra_seeds"),
    "dit": ("dit_width", "dit_steps", "dit_batch", "dit_lr", "tag_share", "dit_save_dtype"),
    "dit more": ("dit_more_steps", "dit_more_lr"),
    "dit third": ("dit_third_steps", "dit_third_lr", "dit_third_batch"),
    "dit fourth": ("dit_fourth_steps", "dit_fourth_lr", "dit_fourth_batch"),
    "classifier": ("classifier_seeds", "check_seeds", "classifier_steps", "classifier_width", "classifier_split",
                   "classifier_poses", "classifier_pooled"),
    "samples": ("samples_per_background", "sample_steps"),
    "oracle": ("oracle_samples", "oracle_scenes", "sample_steps"),
}
STAGE_NEEDS = {"render": (), "vae": ("render",), "text encoder": (), "extras": ("vae",), "dit": ("vae", "text encoder", "extras"),
               "classifier": ("vae",), "samples": ("dit fourth", "classifier"), "oracle": ("dit fourth", "classifier"),
               "dit more": ("dit",), "dit third": ("dit more",), "dit fourth": ("dit third",)}

# The DiT's training rounds in order; each later one starts from the one before and keeps that DiT in data/ while
# its own replaces the world's DiT file.
DIT_ROUNDS = ("dit", "dit more", "dit third", "dit fourth")
ROUND_INPUTS = {"dit more": "dit_first_round.safetensors", "dit third": "dit_second_round.safetensors",
                "dit fourth": "dit_third_round.safetensors"}

SCALES = {
    "full": WorldConfig(),
    "smoke": WorldConfig(dit_width=256, vae_dim=8, seeds_per_pair=1, classifier_seeds=1, check_seeds=1, vae_steps=2,
                         vae_batch=4, extras=2, extra_seeds=1, classifier_steps=2, classifier_width=8, dit_steps=3, dit_batch=4,
                         samples_per_background=1, sample_steps=2, tag_share=0.5),
    # issue 23: 272 combinations x 6 scenes x 8 pictures; 70% of draws tagged, 20% the scene alone, 10% empty
    # (a classifier of 12 pictures per character and scene and 6,000 steps read fresh pictures' identity in 20.5%)
    # (24 pictures in the 32 poses every character shared: 100% on those poses, 23% identity on new ones)
    # (then, in distinct poses, 10,000 steps: 65% identity, still learning; the DiT's first 1,800 steps drew held-out
    # characters from their tags with 64% of attributes right: a second round of 1,500; its oracle read 27% identity on
    # the tuning set, and a third round of 6,000 steps in batches of 16 took it to 55%)
    # (its random encoder kept too little of a bow or cat ears for the classifier: 69.6% identity on fresh renders after
    # 20,000 steps; with the encoder trained too, 99.8% after 6,000: README, eighth session)
    # (on the trained encoder's latents the first two rounds drew held-out characters at 88% identity, 98% attributes:
    # ready without the third round's 55 minutes, which --dit-third-steps still gives; README, ninth session)
    "tags": WorldConfig(cast="tags", seeds_per_pair=8, classifier_seeds=24, check_seeds=1, tag_share=7 / 9,
                        classifier_poses="distinct", vae_steps=2500, vae_encoder="trained", classifier_steps=6000,
                        dit_steps=1800, dit_batch=64, dit_lr=6e-4, dit_more_steps=1500, dit_third_steps=0,
                        oracle_samples=1, dit_save_dtype="float16"),
    "tags_smoke": WorldConfig(cast="tags", dit_width=256, seeds_per_pair=1, classifier_seeds=1, check_seeds=1, vae_steps=2,
                              vae_encoder="trained",
                              vae_batch=4, classifier_steps=2, classifier_width=8, dit_steps=3, dit_batch=4,
                              samples_per_background=1, sample_steps=2, tag_share=7 / 9, oracle_samples=1,
                              oracle_scenes=1, combinations=4, dit_save_dtype="float16"),
}
CASTS = ("scenes", "tags")


def cast_of(config: WorldConfig) -> dict:
    """The characters each stage uses: the DiT's training set, what the classifier learns, the held-out ones."""
    if config.cast == "tags":
        from . import tags

        training = tags.TRAINING[:config.combinations] if config.combinations else tags.TRAINING
        return {"training": training, "classified": training + tags.HELD_OUT, "held_out": tags.HELD_OUT}
    if config.cast != "scenes":
        raise ValueError(f"unknown cast {config.cast!r}; one of {CASTS}")
    return {"training": world.TRAINING, "classified": world.CHARACTERS, "held_out": world.HELD_OUT}


def _render_one(job):
    character, background, seed, size = job
    return np.asarray(world.render(character, background, seed, size=size), dtype=np.uint8)


def render_set(cast, seeds: range, size: int, workers: int, distinct_poses: bool = False,
               first_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures [N, S, S, 3] uint8 and labels [N, 6] (attributes, background) for every character
    of ``cast`` on every background with every seed. ``distinct_poses`` moves each character's seeds to a
    block of its own (character i draws seeds.start + i * len(seeds) + k, i counted from ``first_index``), so
    no two characters share a pose; a character keeps its poses across backgrounds either way
    (``same_pose_partners``)."""
    jobs, labels = [], []
    for i, character in enumerate(cast, start=first_index):
        offset = i * len(seeds) if distinct_poses else 0
        for background in world.BACKGROUNDS:
            for seed in seeds:
                jobs.append((character, background, seed + offset, size))
                labels.append(list(world.attribute_vector(character)) + [world.background_id(background)])
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            pictures = list(pool.map(_render_one, jobs, chunksize=64))
    else:
        pictures = [_render_one(job) for job in jobs]
    return torch.from_numpy(np.stack(pictures)), torch.tensor(labels)


def to_image(pictures: torch.Tensor) -> torch.Tensor:
    return pictures.float() / 255.0


def encode_set(module, cast, seeds: range, size: int, workers: int, distinct_poses: bool = False,
               chunk: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """``render_set``'s pictures as raw latents, a few characters at a time: a large classifier set's float
    pixels would not fit in memory at once."""
    from . import vae

    raws, labels = [], []
    for start in range(0, len(cast), chunk):
        pictures, chunk_labels = render_set(cast[start:start + chunk], seeds, size, workers, distinct_poses, start)
        raws.append(vae.encode(module, to_image(pictures)))
        labels.append(chunk_labels)
    return torch.cat(raws), torch.cat(labels)


class Builder:
    def __init__(self, out: Path, config: WorldConfig, log=print, device: str = "cpu"):
        self.out, self.config, self.log = Path(out), config, log
        self.device = torch.device(device)  # where the DiT trains; everything else runs on the CPU
        self.data = self.out / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.record = self._read_record()

    # -- bookkeeping: every stage's product is a file, made again only when it is missing or when a
    # setting it depends on (its own or an earlier stage's) has changed --

    def _read_record(self) -> dict:
        path = self.out / "world.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        record.setdefault("stage_settings", {})
        return record

    def _write_record(self) -> None:
        self.record["config"] = asdict(self.config)
        (self.out / "world.json").write_text(json.dumps(self.record, indent=1, sort_keys=True))

    def stage_settings(self, name: str) -> dict:
        """The settings a stage's product depends on, its earlier stages' included."""
        fields = set(STAGE_SETTINGS[name]) | {"seed"}
        for earlier in STAGE_NEEDS[name]:
            fields |= set(self.stage_settings(earlier))
        return {field: getattr(self.config, field) for field in sorted(fields)}

    def settings_tag(self, name: str) -> str:
        """A short name for a stage's settings, for its intermediate files (never resume another run)."""
        return hashlib.sha256(json.dumps(self.stage_settings(name), sort_keys=True).encode()).hexdigest()[:10]

    def _stage(self, name: str, path: Path, make):
        wanted = self.stage_settings(name)
        # a folder from before per-stage records: its one "config" stands for every stage; in either record, a
        # setting added since then had its default value
        defaults = asdict(WorldConfig())
        recorded = self.record["stage_settings"].get(name) or self.record.get("config", {})
        built = {k: recorded.get(k, defaults[k]) for k in wanted}
        if path.is_file() and built == wanted:
            return
        if path.is_file():
            self.log(f"[{name}] settings changed: made again")
        started = time.perf_counter()
        self.log(f"[{name}]")
        make(path)
        self.record["stage_settings"][name] = wanted
        self.record.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        self._write_record()

    # -- stages --

    def build(self, stop_after: str | None = None) -> Path:
        """Every stage in order; ``stop_after`` ends the build after that stage (a GPU trains the DiT while
        the CPU makes the classifier in a copy of the folder, say)."""
        c = self.config
        torch.set_num_threads(c.threads)
        cast = cast_of(c)
        stages = [("render", self.data / "train_pictures.pt", lambda p: torch.save(
                      render_set(cast["training"], range(c.seeds_per_pair), c.image_size, c.threads), p)),
                  ("vae", self.out / VAE_FILE, self._make_vae),
                  ("text encoder", self.out / TEXT_ENCODER_FILE, self._make_text_encoder),
                  ("extras", self.data / "extra_latents.pt", self._make_extras),
                  ("dit", self.out / DIT_FILE, self._make_dit),
                  ("dit more", self._round_record("dit more"), self._make_dit_more),
                  ("dit third", self._round_record("dit third"), self._make_dit_third),
                  ("dit fourth", self._round_record("dit fourth"), self._make_dit_fourth),
                  ("classifier", self.out / "classifier.pt", self._make_classifier),
                  ("samples", self.out / "samples.png", self._make_samples)]
        if c.cast == "tags":
            stages.append(("oracle", self.out / "oracle.png", self._make_oracle))
        if stop_after is not None and stop_after not in [name for name, _, _ in stages]:
            raise ValueError(f"no stage {stop_after!r} in this world; its stages: {', '.join(n for n, _, _ in stages)}")
        for name, path, make in stages:
            self._stage(name, path, make)
            if name == stop_after:
                self.log(f"stopped after the {name} stage in {self.out}")
                return self.out
        if c.cast == "tags":
            oracle = self.record["checks"]["oracle"]
            if not oracle["ready"]:
                self.log(f"world NOT ready in {self.out}: the oracle reaches {_rates(oracle['held_out'])} on the held-out "
                         f"characters, below {_rates(oracle['targets'])}; the oracle cannot read more identity than the "
                         f"classifier does on true renders ({self.record['checks']['classifier_fresh']['identity']:.0%}): "
                         "improve whichever is lower (the classifier, or the DiT with --dit-steps) before benchmarking on it")
                return self.out
        self.log(f"world ready in {self.out}: {json.dumps(self.record.get('checks', {}))}")
        return self.out

    def _vae(self):
        from safetensors.torch import load_file

        from .vae import vae_module

        module = vae_module(self.config.vae_dim)
        module.load_state_dict(load_file(self.out / VAE_FILE))
        return module.eval().requires_grad_(False)

    def _make_vae(self, path: Path) -> None:
        from safetensors.torch import save_file

        from . import vae

        c = self.config
        module = vae.random_vae(c.vae_dim, c.seed + 2)
        pictures, labels = torch.load(self.data / "train_pictures.pt")
        images = to_image(pictures)
        if c.vae_encoder == "trained":
            losses = vae.train_autoencoder(module, pictures, c.vae_steps, c.vae_batch, 1e-3, c.seed, self.log)
            raw = vae.fold_normalisation(module, vae.encode(module, images), keep_decoder=True)
            self._save_training_latents(raw, labels)
        elif c.vae_encoder == "random":
            raw = vae.fold_normalisation(module, vae.encode(module, images))
            self._save_training_latents(raw, labels)
            losses = vae.train_decoder(module, raw, images, c.vae_steps, c.vae_batch, 2e-3, c.seed, self.log)
        else:
            raise ValueError(f"vae_encoder must be 'random' or 'trained', got {c.vae_encoder!r}")
        self.record.setdefault("checks", {})["vae_decoder_loss"] = round(sum(losses[-50:]) / len(losses[-50:]), 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))

    def _save_training_latents(self, raw: torch.Tensor, labels: torch.Tensor) -> None:
        """The training pictures' latents, written with the VAE that made them."""
        from . import vae

        fmt = vae.latent_format()
        dit_space = fmt.process_in(raw)
        self.record.setdefault("checks", {})["latent_std_per_channel"] = [round(float(s), 3) for s in dit_space.std(dim=(0, 2, 3, 4))]
        torch.save((raw, labels), self.data / "train_latents.pt")

    def _make_extras(self, path: Path) -> None:
        """Latents of the extra combinations, for the DiT only (the classifier and the benchmark use the 30 named)."""
        from . import vae

        c = self.config
        if c.extras == 0 or c.extra_seeds == 0:  # the first rounds' world: the 24 training characters alone
            torch.save((torch.zeros(0), torch.zeros(0, 6, dtype=torch.long)), path)
            return
        pictures, labels = render_set(world.EXTRAS[:c.extras], range(c.extra_seeds), c.image_size, c.threads)
        torch.save((vae.encode(self._vae(), to_image(pictures)), labels), path)

    def _make_classifier(self, path: Path) -> None:
        from . import classifier

        c = self.config
        module = self._vae()
        cast = cast_of(c)
        distinct = c.classifier_poses == "distinct"
        raw, labels = encode_set(module, cast["classified"], range(c.seeds_per_pair, c.seeds_per_pair + c.classifier_seeds),
                                 c.image_size, c.threads, distinct)
        seen, seen_labels = torch.load(self.data / "train_latents.pt")  # the training characters' pictures too
        backgrounds = len(world.BACKGROUNDS)
        partners = torch.cat([classifier.same_pose_partners(len(cast["classified"]), backgrounds, c.classifier_seeds),
                              classifier.same_pose_partners(len(cast["training"]), backgrounds, c.seeds_per_pair, len(raw))])
        model = classifier.train_classifier(torch.cat([raw, seen]), torch.cat([labels, seen_labels]), c.classifier_steps,
                                            c.seed, self.log, width=c.classifier_width, partners=partners,
                                            split_share=c.classifier_split, pooled=c.classifier_pooled)
        fresh = range(world.FRESH_SEEDS + 900_000, world.FRESH_SEEDS + 900_000 + c.check_seeds)
        fresh_raw, labels = encode_set(module, cast["classified"], fresh, c.image_size, c.threads, distinct)
        checked = classifier.accuracy(model, fresh_raw, labels)
        self.log("  classifier on fresh pictures: " + ", ".join(f"{k} {v:.3f}" for k, v in checked.items()))
        self.record.setdefault("checks", {})["classifier_fresh"] = {k: round(v, 4) for k, v in checked.items()}
        classifier.save_classifier(model, self.out, checked)

    def _make_text_encoder(self, path: Path) -> None:
        """The demo set's Qwen3 file, byte for byte (``python -m anima_context demo-models``)."""
        from safetensors.torch import save_file

        from anima_context.comfy_glue import demo_weights
        from anima_context.demo_models import DEMO_FILES, random_weights

        demo = Path(__file__).resolve().parents[2] / "demo" / DEMO_FILES["clip"][0] / DEMO_FILES["clip"][1]
        path.parent.mkdir(parents=True, exist_ok=True)
        if demo.is_file():
            os.link(demo, path) if demo.stat().st_dev == path.parent.stat().st_dev else path.write_bytes(demo.read_bytes())
            return
        state = random_weights(demo_weights.text_encoder_shapes(), 1, torch.bfloat16, small_init=True)
        note = json.dumps({"generator": "AnimaFastTrain demo-models", "random_weights": True, "seed": 1}, sort_keys=True)
        save_file(state, str(path), metadata={"anima_fasttrain_demo": note})

    def prompt_contexts(self, diffusion_model, tagged: tuple[str, ...] | list[str] = ()) -> list[torch.Tensor]:
        """The padded [1, 512, 1024] context of each background's prompt, then of the empty prompt, then of
        each ``tagged`` caption, as the sampler builds it (CLIPTextEncode, then the DiT's LLM adapter)."""
        cached = self.data / f"prompt_contexts_{self.settings_tag('dit')}.pt"  # the adapter's weights depend on them
        if cached.is_file():
            return torch.load(cached)
        from anima_context.comfy_glue.loading import load_text_encoder
        from anima_context.comfy_glue.training import encode_prompt

        clip = load_text_encoder(str(self.out / TEXT_ENCODER_FILE), [])
        prompts = [world.prompt_for(b) for b in world.BACKGROUNDS] + [EMPTY_PROMPT] + list(tagged)
        with torch.no_grad():
            contexts = [encode_prompt(clip, p, diffusion_model, torch.device("cpu"), torch.float32).float() for p in prompts]
        del clip
        torch.save(contexts, cached)
        return contexts

    def _dit_training_data(self, diffusion_model):
        """(DiT-space latents, labels, compact prompt contexts, each latent's tagged caption row or None)."""
        from . import dit, vae

        c = self.config
        if not (self.data / "train_latents.pt").is_file():  # a VAE brought from another build: encode with it
            pictures, labels = torch.load(self.data / "train_pictures.pt")
            self._save_training_latents(vae.encode(self._vae(), to_image(pictures)), labels)
        raw, labels = torch.load(self.data / "train_latents.pt")
        extra_raw, extra_labels = torch.load(self.data / "extra_latents.pt")
        if len(extra_raw):
            raw, labels = torch.cat([raw, extra_raw]), torch.cat([labels, extra_labels])
        tagged, tagged_index = tagged_captions(labels) if c.tag_share > 0 else ([], None)
        padded = self.prompt_contexts(diffusion_model, tagged)
        latents = vae.latent_format().process_in(raw)
        contexts = dit.CompactContexts(padded, (c.image_size // 16) ** 2)
        self.log(f"  {len(latents)} latents, prompt rows kept {contexts.rows} of {dit.PADDED_ROWS}")
        return latents, labels, contexts, tagged_index

    def _train_dit(self, model, steps: int, lr: float, batch: int, seed: int, checkpoint: Path) -> dict:
        from anima_context.comfy_glue.training import _training_mode

        from . import dit

        c, device = self.config, self.device
        latents, labels, contexts, tagged_index = self._dit_training_data(model.diffusion_model)
        model.diffusion_model.to(device)
        contexts.contexts = contexts.contexts.to(device)
        with _training_mode():  # the pack's differentiable rope kernel and ComfyUI's training flag
            return dit.train(model, latents.to(device), labels[:, 5].to(device), contexts, len(world.BACKGROUNDS), steps,
                             batch, lr, seed, checkpoint, self.log,
                             tagged_index=None if tagged_index is None else tagged_index.to(device), tag_share=c.tag_share)

    def _make_dit(self, path: Path) -> None:
        from . import dit

        c = self.config
        model = dit.build_model(dit.init_state(c.dit_width, c.seed))
        state = self._train_dit(model, c.dit_steps, c.dit_lr, c.dit_batch, c.seed, self.data / f"dit_training_{self.settings_tag('dit')}.pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._save_dit(state, path)
        self._forget_rounds_after("dit")

    def _save_dit(self, state: dict[str, torch.Tensor], path: Path) -> None:
        from safetensors.torch import save_file

        dtype = getattr(torch, self.config.dit_save_dtype)
        save_file({k: (v.float() if k.startswith("llm_adapter.") else v.to(dtype)).contiguous() for k, v in state.items()},
                  str(path))

    def _round_record(self, round_name: str) -> Path:
        """A later round's stage file: its steps, learning rate and batch."""
        return self.data / f"{round_name.replace(' ', '_')}.json"

    def _forget_rounds_after(self, round_name: str) -> None:
        """A round made again: the later rounds start from its new DiT (their kept inputs and records are stale)."""
        for name in DIT_ROUNDS[DIT_ROUNDS.index(round_name) + 1:]:
            (self.data / ROUND_INPUTS[name]).unlink(missing_ok=True)
            self._round_record(name).unlink(missing_ok=True)

    def _make_dit_more(self, path: Path) -> None:
        """Go on training the first round's DiT for ``dit_more_steps``; the result replaces the world's DiT file and
        the first round's is kept as data/dit_first_round.safetensors, so a changed second round starts from it
        again and 0 steps puts it back."""
        c = self.config
        self._forget_rounds_after("dit more")
        self._continue_dit("dit more", path, c.dit_more_steps, c.dit_more_lr, c.dit_batch, c.seed + 1)

    def _make_dit_third(self, path: Path) -> None:
        """The same from the second round's DiT, for ``dit_third_steps`` at its own batch (kept as
        data/dit_second_round.safetensors)."""
        c = self.config
        self._forget_rounds_after("dit third")
        self._continue_dit("dit third", path, c.dit_third_steps, c.dit_third_lr, c.dit_third_batch, c.seed + 2)

    def _make_dit_fourth(self, path: Path) -> None:
        """The same from the third round's DiT (kept as data/dit_third_round.safetensors)."""
        c = self.config
        self._continue_dit("dit fourth", path, c.dit_fourth_steps, c.dit_fourth_lr, c.dit_fourth_batch, c.seed + 3)

    def _continue_dit(self, round_name: str, path: Path, steps: int, lr: float, batch: int, seed: int) -> None:
        import shutil

        from safetensors.torch import load_file

        from . import dit

        before = self.data / ROUND_INPUTS[round_name]
        if not before.is_file() and path.is_file() and json.loads(path.read_text()).get("steps"):  # e.g. an unpacked world
            raise RuntimeError(f"{self.out / DIT_FILE} is a later round's DiT and the file it started from ({before}) is "
                               "gone: delete the DiT file to build every round again")
        if steps > 0:
            if not before.is_file():
                shutil.copyfile(self.out / DIT_FILE, before)
            model = dit.build_model(load_file(str(before)))
            tag = self.settings_tag(round_name)
            state = self._train_dit(model, steps, lr, batch, seed,  # new draws
                                    self.data / f"{round_name.replace(' ', '_')}_training_{tag}.pt")
            self._save_dit(state, self.out / DIT_FILE)
        elif before.is_file():  # no such round (any more): the DiT it started from is the world's
            before.replace(self.out / DIT_FILE)
        path.write_text(json.dumps({"steps": steps, "lr": lr, "batch": batch}))

    def _make_samples(self, path: Path) -> None:
        """Eight samples per background from the plain model (the sampler the benchmark uses), decoded,
        and how often the classifier reads the prompted background: the ceiling for the benchmark."""
        from . import classifier, sampling, vae

        c = self.config
        count = c.samples_per_background
        samples = sampling.sample_plain(self.out, [world.prompt_for(b) for b in world.BACKGROUNDS], count, c.seed, c.sample_steps)
        read = classifier.load_classifier(self.out).classify(samples)
        wanted = torch.arange(len(world.BACKGROUNDS)).repeat_interleave(count)
        self.record.setdefault("checks", {})["plain_background_accuracy"] = round(float((read["background"] == wanted).float().mean()), 3)
        pixels = vae.decode(self._vae(), samples)
        sampling.save_grid(pixels, rows=len(world.BACKGROUNDS), path=path, scale=2)

    def _make_oracle(self, path: Path) -> None:
        """The tag world's ceiling: each held-out character asked for by its own tags on every scene (empty
        negative), read by the classifier as the benchmark reads a sample; training characters beside it."""
        from . import classifier, sampling, tags, vae
        from .benchmark import score

        c = self.config
        count = c.oracle_samples
        read = classifier.load_classifier(self.out)
        model, clip, _ = sampling.load_world(self.out)
        negative = sampling.encode(clip, sampling.NEGATIVE_PROMPT)
        trained = cast_of(c)["training"]
        order = torch.randperm(len(trained), generator=torch.Generator().manual_seed(c.seed + 23)).tolist()
        groups = {"tuning": tags.TUNING, "final": tags.FINAL, "training": tuple(trained[i] for i in order[:len(tags.HELD_OUT)])}
        scenes = len(world.BACKGROUNDS)
        results, grid = {}, []
        for group, characters in groups.items():
            rows = []
            for k, character in enumerate(characters):
                for b in [(k + j * scenes // c.oracle_scenes) % scenes for j in range(c.oracle_scenes)]:
                    background = world.BACKGROUNDS[b]
                    prompt = world.tagged_prompt_for(character.values, background)
                    latents = sampling.sample(model, sampling.encode(clip, prompt), negative, count,
                                              c.seed + 7919 * k + 101 * b, c.image_size, c.sample_steps)
                    rows.append(score(read, latents, character, background, background))
                    if group != "training":
                        grid.append(latents[:1])
            results[group] = {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in ("identity", "attributes", "background")}
            self.log(f"  oracle, {group} characters from their tags: {_rates(results[group])}")
        held = {key: round((results["tuning"][key] + results["final"][key]) / 2, 4) for key in ("identity", "attributes", "background")}
        ready = all(held[key] >= target for key, target in tags.ORACLE_TARGETS.items())
        self.record.setdefault("checks", {})["oracle"] = {**results, "held_out": held, "ready": ready,
                                                           "targets": tags.ORACLE_TARGETS, "samples_each": count}
        pixels = vae.decode(self._vae(), torch.cat(grid))
        sampling.save_grid(pixels, rows=len(tags.HELD_OUT), path=path, scale=2)


def _rates(rates: dict) -> str:
    return ", ".join(f"{key} {value:.0%}" for key, value in rates.items() if key in ("identity", "attributes", "background"))


def tagged_captions(labels: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """The distinct tagged captions of the training pictures (labels [N, 6]: attributes, background) and each
    picture's row among the prompt contexts (after the backgrounds' and the empty prompt's)."""
    names = list(world.ATTRIBUTES.values())
    keys = [tuple(row) for row in labels.tolist()]
    distinct = sorted(set(keys))
    prompts = [world.tagged_prompt_for(tuple(values[i] for values, i in zip(names, key[:5])), world.BACKGROUNDS[key[5]])
               for key in distinct]
    first = len(world.BACKGROUNDS) + 1
    row_of = {key: first + k for k, key in enumerate(distinct)}
    return prompts, torch.tensor([row_of[key] for key in keys])


def start_comfyui(cpu: bool = True):
    """ComfyUI from COMFYUI_PATH, set up as the pack's command line does, on the CPU (or on its own choice of device)."""
    from types import SimpleNamespace

    from anima_context.cli import setup_comfyui

    return setup_comfyui(SimpleNamespace(comfyui=None, models_dir=None, cpu=cpu))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/world/cache", help="the world's folder (kept between runs)")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--dit-steps", type=int, help="override the DiT's training steps")
    parser.add_argument("--dit-batch", type=int, help="override the DiT's batch")
    parser.add_argument("--dit-more-steps", type=int, help="a second round of DiT training from the first round's weights")
    parser.add_argument("--dit-third-steps", type=int, help=f"a third round from the second round's weights (batch {WorldConfig.dit_third_batch})")
    parser.add_argument("--dit-fourth-steps", type=int,
                        help=f"a fourth round from the third round's weights (batch {WorldConfig.dit_fourth_batch})")
    parser.add_argument("--extras", type=int, help="override how many extra combinations the DiT trains on (0: the first rounds' world)")
    parser.add_argument("--oracle-samples", type=int, help="the tag world's oracle: samples per held-out character and scene")
    parser.add_argument("--tag-share", type=float,
                        help="share of the DiT's captioned pictures whose caption also names the attributes as tags (default 0)")
    parser.add_argument("--threads", type=int, help="torch threads and rendering processes (default 2)")
    parser.add_argument("--device", default="cpu", help="where the DiT trains: cpu (default) or a GPU, e.g. cuda")
    parser.add_argument("--stop-after", metavar="STAGE", choices=sorted(STAGE_SETTINGS),
                        help="end the build after this stage, e.g. 'dit third' (the DiT on a GPU, the classifier elsewhere)")
    args = parser.parse_args(argv)
    if args.tag_share is not None and not 0 <= args.tag_share <= 1:
        parser.error(f"--tag-share is a share from 0 to 1, got {args.tag_share}")
    start_comfyui(cpu=args.device == "cpu")
    config = SCALES[args.scale]
    overrides = {"dit_steps": args.dit_steps, "dit_batch": args.dit_batch, "dit_more_steps": args.dit_more_steps,
                 "dit_third_steps": args.dit_third_steps, "dit_fourth_steps": args.dit_fourth_steps,
                 "extras": args.extras, "threads": args.threads,
                 "tag_share": args.tag_share, "oracle_samples": args.oracle_samples}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    Builder(Path(args.out), config, device=args.device).build(args.stop_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
