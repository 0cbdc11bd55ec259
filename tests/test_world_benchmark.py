"""The identity benchmark's mechanics (bench/world/benchmark.py): the real train and apply nodes and
ComfyUI's sampler on a stand-in world made of the demo models, judged by a random stand-in classifier, so
the figures mean nothing; the table, the RESULT/SUMMARY lines, results.json and grid.png must come out.
Needs COMFYUI_PATH and the demo models (``python -m anima_context demo-models demo``, or ANIMA_DEMO_MODELS)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from bench.world import benchmark, grid
from bench.world.benchmark import GRID_SAMPLES, WORLD_FILES, correlations, main, spearman
from bench.world.characters import prompt_for

DEMO_FILES = {"unet": "diffusion_models/anima_demo_dit.safetensors", "clip": "text_encoders/anima_demo_qwen3_06b.safetensors",
              "vae": "vae/anima_demo_vae.safetensors"}


def test_rank_correlation_handles_ties_and_constants():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [0.5, 0.5, 0.5]) is None  # identity constant: no correlation to report
    assert correlations([{"lift": 0.1, "identity": 0.0}])["lift_identity_spearman"] is None


@pytest.fixture(scope="module")
def standin_world(comfyui, tmp_path_factory):
    demo = Path(os.environ.get("ANIMA_DEMO_MODELS", REPO / "demo"))
    missing = [str(demo / rel) for rel in DEMO_FILES.values() if not (demo / rel).is_file()]
    if missing:
        pytest.skip(f"the demo models are missing ({', '.join(missing)}): write them with "
                    "`python -m anima_context demo-models demo` or set ANIMA_DEMO_MODELS to such a folder")
    world = tmp_path_factory.mktemp("standin_world")
    for key, rel in WORLD_FILES.items():
        (world / rel).parent.mkdir(parents=True, exist_ok=True)
        (world / rel).symlink_to(demo / DEMO_FILES[key])
    (world / "world.json").write_text(json.dumps({"image_size": 64}))
    return world


def test_quick_benchmark_prints_the_table_and_writes_the_grid(standin_world, tmp_path):
    lines = []
    out = tmp_path / "out"
    results = main(["--world", str(standin_world), "--out", str(out), "--quick", "--steps", "2", "--sample-steps", "2",
                    "--seeds", "2", "--threads", "1", "--classifier-standin", "--label", "smoke"], say=lines.append)
    text = "\n".join(lines)
    rows = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
    sums = [json.loads(line[len("SUMMARY "):]) for line in lines if line.startswith("SUMMARY ")]
    assert [(r["character"], r["n_refs"]) for r in rows] == [("h00", 1), ("h00", 3), ("h01", 1), ("h01", 3)]
    for r in rows:
        assert r["reference_background"] != r["target_background"]
        assert all(0.0 <= r[k] <= 1.0 for k in ("identity", "attributes", "background", "leak", "plain_identity"))
        assert r["train_seconds"] > 0 and isinstance(r["lift"], float)
    assert [(s["split"], s["n_refs"], s["characters"], s["label"]) for s in sums] == [("held_out", 1, 2, "smoke"), ("held_out", 3, 2, "smoke")]
    assert all("lift_identity_spearman" in s and "lift_identity_pearson" in s for s in sums)
    assert "ident%" in text and "mean held_out" in text and "lift vs identity" in text
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == 4 and saved["settings"]["seeds"] == 2 and results["summaries"] == sums
    picture = Image.open(out / "grid.png")
    side = 64 * grid.SCALE
    shown = min(GRID_SAMPLES, 2)
    assert picture.size == (grid.LABEL_WIDTH + (grid.REF_SLOTS + 2 * shown) * side + 3 * grid.GAP,
                            grid.HEADER + 4 * (side + grid.CAPTION + 4))  # rows: h00, h01 x refs 1, 3


def _recording(function, calls: list):
    """``function``, keeping what each call returns in ``calls``."""
    def wrapper(*args, **kwargs):
        calls.append(function(*args, **kwargs))
        return calls[-1]
    return wrapper


def test_masks_training_seeds_and_saved_contexts(standin_world, tmp_path, monkeypatch):
    import torch

    lines = []
    out = tmp_path / "out"
    main(["--world", str(standin_world), "--out", str(out), "--characters", "h00", "--refs", "1", "--train-seeds", "0,5",
          "--masks", "--save-contexts", "--steps", "2", "--sample-steps", "2", "--seeds", "2", "--threads", "1",
          "--classifier-standin", "--no-grid"], say=lines.append)
    rows = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
    assert [(r["character"], r["train_seed"]) for r in rows] == [("h00", 0), ("h00", 5)]
    assert all(0.0 <= r["true_identity"] <= 1.0 for r in rows)
    sums = [json.loads(line[len("SUMMARY "):]) for line in lines if line.startswith("SUMMARY ")]
    assert [(s["characters"], s["trainings"]) for s in sums] == [(1, 2)]
    saved = {seed: torch.load(out / "contexts" / f"h00_refs1_seed{seed}.pt") for seed in (0, 5)}
    for seed, context in saved.items():
        assert context["metadata"]["masked"] is True and context["metadata"]["seed"] == seed
    assert not torch.equal(saved[0]["tokens"], saved[5]["tokens"])

    # --contexts applies the saved contexts instead of training: the same samples, nothing trained.
    again = []
    main(["--world", str(standin_world), "--out", str(tmp_path / "again"), "--characters", "h00", "--refs", "1",
          "--train-seeds", "0,5", "--contexts", str(out / "contexts"), "--sample-steps", "2", "--seeds", "2",
          "--threads", "1", "--classifier-standin", "--no-grid"], say=again.append)
    reused = [json.loads(line[len("RESULT "):]) for line in again if line.startswith("RESULT ")]
    measures = ("identity", "attributes", "background", "leak", "lift")
    assert [{k: r[k] for k in measures} for r in reused] == [{k: r[k] for k in measures} for r in rows]
    first, second = (json.loads((folder / "results.json").read_text())["rows"] for folder in (out, tmp_path / "again"))
    assert [r["samples"] for r in second] == [r["samples"] for r in first]  # what the classifier read, per sample
    assert [r["train_seconds"] for r in reused] == [saved[seed]["metadata"]["seconds"] for seed in (0, 5)]

    # The sampler's negative prompt names the references' scene by default, and is empty with --negative empty.
    negatives, plain = {}, {}
    real_negative, real_sampler = benchmark.negative_prompt, benchmark.sample_batch
    for choice in ("reference-scene", "empty"):
        texts, latents = [], []
        monkeypatch.setattr(benchmark, "negative_prompt", _recording(real_negative, texts))
        monkeypatch.setattr(benchmark, "sample_batch", _recording(real_sampler, latents))
        options = [] if choice == "reference-scene" else ["--negative", "empty"]
        main(["--world", str(standin_world), "--out", str(tmp_path / choice), "--characters", "h00", "--refs", "1",
              "--train-seeds", "0", "--contexts", str(out / "contexts"), "--sample-steps", "2", "--seeds", "2",
              "--threads", "1", "--classifier-standin", "--no-grid", *options], say=lambda text: None)
        negatives[choice], plain[choice] = texts, latents[0]
    scene = json.loads((tmp_path / "empty" / "results.json").read_text())["rows"][0]["reference_background"]
    assert negatives == {"reference-scene": [prompt_for(scene)], "empty": [""]}
    assert not torch.equal(plain["reference-scene"], plain["empty"])  # the plain model's samples changed with it

    with pytest.raises(SystemExit, match="h01_refs1_seed0.pt is missing"):
        main(["--world", str(standin_world), "--out", str(tmp_path / "none"), "--characters", "h00,h01", "--refs", "1",
              "--train-seeds", "0", "--contexts", str(out / "contexts"), "--classifier-standin", "--no-grid"],
             say=lambda text: None)
    assert not (tmp_path / "none").exists()  # refused before sampling anything
