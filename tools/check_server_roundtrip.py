"""In a real ComfyUI server, with the pack's random-weight demo models (python -m anima_context demo-models DIR):

1. one prompt trains a context, saves it (Save Context), applies it and samples a latent (Save Latent), saves the
   loss picture, and trains the MaskTrain node on Load Image's alpha through Invert Mask;
2. a new prompt loads the saved context (Load Context), applies it and samples with the same seed;
3. a prompt gives MaskTrain an all-zero mask (a picture without alpha) and must fail with "Invalid training mask".

It checks that both latents are identical, that the loss pictures came back as 640x400 images, and that the bad mask
failed with the pack's message. Development only (CI has no ComfyUI):

    COMFYUI_PATH=path/to/ComfyUI python tools/check_server_roundtrip.py [--demo-models DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from run_example_workflows import (
    DEFAULT_DEMO_DIR,
    DEMO_MODELS,
    HOST,
    PrivateServer,
    queue_and_wait,
    saved_context_name,
    test_picture,
    upload_png,
)

MODELS = {"1": ("UNETLoader", {"unet_name": DEMO_MODELS["UNETLoader"][2], "weight_dtype": "default"}),
          "2": ("CLIPLoader", {"clip_name": DEMO_MODELS["CLIPLoader"][2], "type": "stable_diffusion", "device": "default"}),
          "3": ("VAELoader", {"vae_name": DEMO_MODELS["VAELoader"][2]})}
TRAIN = {"training_prompt": "a girl with pink hair", "seed": 3, "training_steps": 8, "learning_rate": 0.1,
         "training_image_size": 128, "num_tokens": 8, "init_std": 0.5, "training_dtype": "float32"}


def node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def sampling(context_link, prefix):
    """Apply the context and sample a latent with fixed noise, saved under ``prefix``."""
    return {
        "20": node("AnimaFastTrainApplyContext", model=["1", 0], context=context_link, strength=1.0, apply_to="positive",
                   start_percent=0.0, end_percent=1.0, blocks="all"),
        "21": node("CLIPTextEncode", clip=["2", 0], text="a girl with pink hair, smiling"),
        "22": node("CLIPTextEncode", clip=["2", 0], text="worst quality"),
        "23": node("EmptyLatentImage", width=128, height=128, batch_size=1),
        "24": node("KSampler", model=["20", 0], positive=["21", 0], negative=["22", 0], latent_image=["23", 0], seed=5,
                   steps=3, cfg=4.0, sampler_name="euler", scheduler="simple", denoise=1.0),
        "25": node("SaveLatent", samples=["24", 0], filename_prefix=prefix),
    }


def base_prompt(image_name):
    prompt = {key: node(kind, **inputs) for key, (kind, inputs) in MODELS.items()}
    prompt["4"] = node("LoadImage", image=image_name)
    return prompt


def files_of(entry, kind):
    return [item for output in entry["outputs"].values() for item in output.get(kind, [])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), required=not os.environ.get("COMFYUI_PATH"),
                        help="the ComfyUI checkout (default: $COMFYUI_PATH)")
    parser.add_argument("--demo-models", default=str(DEFAULT_DEMO_DIR), help="the demo model folder (default: demo/ in the repo)")
    parser.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable))
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--work-dir")
    args = parser.parse_args(argv)
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    base = f"http://{HOST}:{args.port}"
    server = PrivateServer(args.comfyui, args.python, args.port, args.work_dir, None, args.demo_models)
    failures = []
    try:
        server.start(base)
        cutout = upload_png(base, "roundtrip_cutout.png", test_picture())
        first = base_prompt(cutout)
        first.update({
            "10": node("AnimaFastTrainReferenceContext", model=["1", 0], clip=["2", 0], vae=["3", 0], reference_image=["4", 0], **TRAIN),
            "11": node("AnimaFastTrainSaveContext", context=["10", 0], filename_prefix="roundtrip", destination="anima_contexts"),
            "12": node("SaveImage", images=["10", 2], filename_prefix="roundtrip/plot"),
            "13": node("InvertMask", mask=["4", 1]),
            "14": node("AnimaFastTrainMaskedReferenceContext", model=["1", 0], clip=["2", 0], vae=["3", 0],
                       reference_image=["4", 0], training_mask=["13", 0], **TRAIN),
            "15": node("SaveImage", images=["14", 2], filename_prefix="roundtrip/masked_plot"),
            "16": node("PreviewAny", source=["14", 1]),
        })
        first.update(sampling(["10", 0], "roundtrip/memory"))
        ok, message, entry = queue_and_wait(base, first, 900)
        print(f"train + save + sample: {message}")
        if not ok:
            return 1
        saved = saved_context_name(entry)
        masked_info = " | ".join(str(t) for t in entry["outputs"]["16"].get("text", []))
        print(f"  saved {saved}; masked info: {masked_info[:400]}")
        for item in files_of(entry, "images"):
            with Image.open(server.work / "output" / item["subfolder"] / item["filename"]) as picture:
                print(f"  loss picture {item['subfolder']}/{item['filename']}: {picture.size}")
                if picture.size != (640, 400):
                    failures.append(f"loss picture {item['filename']} is {picture.size}")

        second = base_prompt(cutout)
        second["30"] = node("AnimaFastTrainLoadContext", context_name=saved)
        second.update(sampling(["30", 0], "roundtrip/file"))
        ok, message, entry_loaded = queue_and_wait(base, second, 900)
        print(f"load + sample (new prompt): {message}")
        if not ok:
            return 1
        latents = []
        for result in (entry, entry_loaded):
            (item,) = files_of(result, "latents")
            latents.append(load_file(str(server.work / "output" / item["subfolder"] / item["filename"]))["latent_tensor"])
        same = torch.equal(latents[0], latents[1])
        print(f"  latents {tuple(latents[0].shape)}: identical = {same}, max difference {float((latents[0] - latents[1]).abs().max()):.3g}")
        if not same:
            failures.append("the loaded context sampled another latent than the in-memory one")

        # example.png has no alpha: Load Image's MASK is all zero, and MaskTrain must say so.
        bad = base_prompt("example.png")
        bad["40"] = node("AnimaFastTrainMaskedReferenceContext", model=["1", 0], clip=["2", 0], vae=["3", 0],
                         reference_image=["4", 0], training_mask=["4", 1], **TRAIN)
        bad["41"] = node("PreviewAny", source=["40", 1])
        (Path(server.work) / "input" / "example.png").write_bytes((Path(args.comfyui) / "input" / "example.png").read_bytes())
        ok, message, _ = queue_and_wait(base, bad, 900)
        print(f"all-zero mask: {message[:400]}")
        if ok or "Invalid training mask" not in message or "all zero" not in message:
            failures.append("an all-zero mask did not fail with 'Invalid training mask'")
    finally:
        server.stop()
    print("\n" + ("all checks passed" if not failures else "FAILED: " + "; ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
