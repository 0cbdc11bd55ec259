"""The headless command line (``python -m anima_context``). Argument handling, finding ComfyUI and
the model files, and reading pictures and masks run without ComfyUI; the demo model set and the
end-to-end runs on it need COMFYUI_PATH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from anima_context import cli
from anima_context.demo_models import DEMO_FILES, DEMO_PICTURE, DIT_WIDTH, demo_paths
from anima_context.errors import InvalidReferenceImageError
from anima_context.image_files import ImageFileError, load_image, load_mask, masks_for_references


def _png(path: Path, array: np.ndarray, mode: str | None = None, **save) -> Path:
    picture = Image.fromarray(array.astype(np.uint8))
    (picture.convert(mode) if mode and picture.mode != mode else picture).save(path, **save)
    return path


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3))


def _fake_comfyui(folder: Path) -> Path:
    (folder / "comfy").mkdir(parents=True)
    (folder / "main.py").write_text("")
    return folder


# --- arguments ---------------------------------------------------------------------------------


def test_train_defaults_mirror_the_node():
    args = cli.build_parser().parse_args(["train", "--image", "a.png", "--out", "ctx"])
    assert (args.seed, args.steps, args.learning_rate, args.size, cli.num_tokens_for(args), args.init_std, args.dtype) == (
        0, 50, 0.1, 512, 32, 0.5, "bfloat16")
    # with --mask the options stand for the masked node, which keeps fewer tokens; --num-tokens wins over both
    masked = cli.build_parser().parse_args(["train", "--image", "a.png", "--mask", "m.png", "--out", "ctx"])
    assert cli.num_tokens_for(masked) == 16
    chosen = cli.build_parser().parse_args(["train", "--image", "a.png", "--mask", "m.png", "--num-tokens", "8", "--out", "c"])
    assert cli.num_tokens_for(chosen) == 8
    assert args.prompt == "1girl, solo, anime illustration" and args.mask == [] and args.loss_plot is None
    assert cli.model_names(args) == {"unet": "anima-base-v1.0.safetensors", "clip": "qwen_3_06b_base.safetensors",
                                     "vae": "qwen_image_vae.safetensors"}
    assert args.demo_models is None
    assert args.comfyui is None and args.models_dir is None and not args.cpu and args.run is cli.run_train


def test_sample_defaults_and_repeatable_images():
    args = cli.build_parser().parse_args(["sample", "--context", "c.safetensors", "--out", "x.png"])
    assert (args.prompt, args.negative, args.seed, args.steps, args.cfg, args.sampler, args.scheduler) == (
        None, "worst quality, low quality, blurry, jpeg artifacts", 0, 30, 4.0, "euler", "simple")
    assert (args.width, args.height, args.strength, args.apply_to, args.start_percent, args.end_percent, args.blocks) == (
        1024, 1024, 1.0, "auto", 0.1, 1.0, "all")
    train = cli.build_parser().parse_args(["train", "--image", "a.png", "--image", "b.png", "--mask", "m.png", "--out", "o"])
    assert train.image == ["a.png", "b.png"] and train.mask == ["m.png"]


@pytest.mark.parametrize("argv, words", [
    (["train", "--out", "o"], "--image"),
    (["train", "--image", "a.png"], "--out"),
    (["train", "--image", "a.png", "--out", "o", "--dtype", "int8"], "invalid choice"),
    (["sample", "--context", "c", "--out", "o", "--width", "100"], "multiple of 16"),
    (["sample", "--context", "c", "--out", "o", "--end-percent", "2"], "outside 0..1"),
    (["sample", "--context", "c", "--out", "o", "--apply-to", "all"], "invalid choice"),
    ([], "COMMAND"),
])
def test_bad_arguments_exit_2_naming_the_option(argv, words, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(argv)
    assert caught.value.code == 2 and words in capsys.readouterr().err


def test_output_suffixes_are_appended_once():
    assert cli.with_suffix("ctx", ".safetensors") == Path("ctx.safetensors")
    assert cli.with_suffix("a/ctx.SAFETENSORS", ".safetensors") == Path("a/ctx.SAFETENSORS")
    assert cli.with_suffix("image", ".png") == Path("image.png")


def test_outputs_that_cannot_be_written_are_refused_up_front(tmp_path):
    assert cli.check_writable(tmp_path / "new" / "deeper" / "ctx.safetensors", "--out") == tmp_path / "new" / "deeper" / "ctx.safetensors"
    with pytest.raises(cli.CommandLineError, match="is a folder"):
        cli.check_writable(tmp_path, "--out")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(cli.CommandLineError, match="cannot write there"):
        cli.check_writable(blocker / "ctx.safetensors", "--out")


def test_node_input_names_become_option_names():
    message = "Invalid setting: training_image_size must be a multiple of 16; lower learning_rate or use training_dtype float32."
    assert cli.in_option_names(message) == ("Invalid setting: --size must be a multiple of 16; lower --learning-rate "
                                            "or use --dtype float32.")


# --- ComfyUI and model files -------------------------------------------------------------------


def test_comfyui_is_the_option_else_the_variable_else_the_installation(tmp_path):
    option, variable = _fake_comfyui(tmp_path / "a"), _fake_comfyui(tmp_path / "b")
    installed = _fake_comfyui(tmp_path / "ComfyUI")
    pack = installed / "custom_nodes" / "ComfyUI-AnimaFastTrain"
    pack.mkdir(parents=True)
    env = {"COMFYUI_PATH": str(variable)}
    assert cli.find_comfyui(str(option), env, pack) == option.resolve()
    assert cli.find_comfyui(None, env, pack) == variable.resolve()
    assert cli.find_comfyui(None, {}, pack) == installed.resolve()
    assert cli.find_comfyui("", {"COMFYUI_PATH": ""}, pack) == installed.resolve()


def test_a_pack_linked_into_custom_nodes_finds_its_comfyui_through_the_working_directory(tmp_path):
    installed = _fake_comfyui(tmp_path / "ComfyUI")
    pack = tmp_path / "checkout" / "pack"
    pack.mkdir(parents=True)
    (installed / "custom_nodes").mkdir()
    link = installed / "custom_nodes" / "pack"
    link.symlink_to(pack, target_is_directory=True)
    assert cli.find_comfyui(None, {"PWD": str(link)}, pack) == installed
    assert cli.find_comfyui(None, {}, link) == installed  # run by path through the link
    with pytest.raises(cli.CommandLineError):
        cli.find_comfyui(None, {"PWD": str(tmp_path)}, pack)  # a working directory elsewhere does not count


def test_no_comfyui_is_a_clear_error_naming_the_options(tmp_path):
    pack = tmp_path / "somewhere" / "pack"
    pack.mkdir(parents=True)
    with pytest.raises(cli.CommandLineError) as caught:
        cli.find_comfyui(None, {}, pack)
    message = str(caught.value)
    assert "ComfyUI not found" in message and "--comfyui" in message and "COMFYUI_PATH" in message and str(pack) in message
    for source, explicit, env in (("--comfyui", str(tmp_path), {}), ("COMFYUI_PATH", None, {"COMFYUI_PATH": str(tmp_path)})):
        with pytest.raises(cli.CommandLineError) as caught:
            cli.find_comfyui(explicit, env, pack)  # a wrong folder named on purpose is an error, not a fallback
        assert source in str(caught.value) and "main.py" in str(caught.value)


def test_models_dir_is_the_option_else_the_variable(tmp_path):
    assert cli.resolve_models_dir(None, {}) is None
    assert cli.resolve_models_dir(None, {"MODELS_DIR": str(tmp_path)}) == tmp_path.resolve()
    with pytest.raises(cli.CommandLineError, match="--models-dir"):
        cli.resolve_models_dir(str(tmp_path / "missing"), {"MODELS_DIR": str(tmp_path)})


def test_model_files_by_folder_name_or_path_and_a_missing_one_says_where_to_get_it(tmp_path):
    folder = tmp_path / "models" / "diffusion_models"
    folder.mkdir(parents=True)
    (folder / "mine.safetensors").write_bytes(b"x")
    loose = tmp_path / "loose.safetensors"
    loose.write_bytes(b"x")

    def get_full_path(kind, name):
        path = tmp_path / "models" / kind / name
        return str(path) if path.is_file() else None

    folders = [str(tmp_path / "models" / "unet"), str(folder)]
    assert cli.resolve_model("unet", "mine.safetensors", get_full_path, folders) == str(folder / "mine.safetensors")
    assert cli.resolve_model("unet", str(loose), get_full_path, folders) == str(loose.resolve())
    with pytest.raises(cli.CommandLineError) as caught:
        cli.resolve_model("unet", "anima-base-v1.0.safetensors", get_full_path, folders)
    message = str(caught.value)
    assert "'anima-base-v1.0.safetensors' not found" in message and str(folder) in message and "--unet" in message
    assert "https://huggingface.co/circlestone-labs/Anima/resolve/main/split_files/diffusion_models/anima-base-v1.0.safetensors" in message
    with pytest.raises(cli.CommandLineError) as caught:
        cli.resolve_model("vae", "other_vae.safetensors", get_full_path, [str(tmp_path / "models" / "vae")])
    assert "'other_vae.safetensors'" in str(caught.value) and "qwen_image_vae.safetensors" in str(caught.value)


# --- pictures and masks ------------------------------------------------------------------------


def test_images_read_as_load_image_does(tmp_path):
    rgb = _rgb(20, 30)
    image = load_image(_png(tmp_path / "rgb.png", rgb))
    assert image.shape == (1, 20, 30, 3) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.from_numpy(rgb / 255.0).float())
    rgba = np.concatenate([rgb, np.zeros((20, 30, 1))], axis=-1)
    assert torch.equal(load_image(_png(tmp_path / "rgba.png", rgba, "RGBA")), image)  # alpha dropped
    gray = load_image(_png(tmp_path / "gray.png", np.full((20, 30), 64), "L"))
    assert gray.shape == (1, 20, 30, 3) and torch.allclose(gray, torch.full_like(gray, 64 / 255))


def test_16_bit_grayscale_keeps_its_range(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 32768, dtype=np.uint16)).save(path)
    image = load_image(path)
    assert image.shape == (1, 20, 30, 3) and torch.allclose(image, torch.full_like(image, 32768 / 65535))


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3))
    pixels[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
    image = load_image(_png(tmp_path / "rotated.png", pixels, exif=exif))
    assert image.shape == (1, 40, 20, 3)
    assert float(image[0, 0, :, 0].mean()) == 1.0 and float(image[0, -1, :, 0].mean()) == 0.0  # red on top


def test_masks_use_alpha_else_luminance(tmp_path):
    values = np.tile(np.linspace(0, 255, 30).round(), (20, 1))
    gray = load_mask(_png(tmp_path / "gray.png", values, "L"))
    assert gray.shape == (1, 20, 30) and torch.allclose(gray[0], torch.from_numpy(values / 255).float())
    white_rgb = load_mask(_png(tmp_path / "white.png", np.full((20, 30, 3), 255)))
    assert torch.equal(white_rgb, torch.ones(1, 20, 30))
    rgba = np.zeros((20, 30, 4))
    rgba[..., 3] = values  # black picture, opacity carries the mask
    alpha = load_mask(_png(tmp_path / "alpha.png", rgba, "RGBA"))
    assert torch.allclose(alpha, gray)


def test_unreadable_or_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "not_a_picture.png"
    bad.write_text("hello")
    for path, words in ((bad, "not a picture"), (tmp_path / "missing.png", "does not exist")):
        with pytest.raises(ImageFileError) as caught:
            load_image(path)
        assert str(path) in str(caught.value) and words in str(caught.value)


def test_masks_go_one_for_all_or_one_per_image_of_the_same_size():
    images = [torch.rand(1, 20, 30, 3), torch.rand(2, 20, 30, 3)]  # the second file has two frames
    one = [torch.rand(1, 20, 30)]
    assert len(masks_for_references(["a", "b"], images, ["m"], one)) == 3
    two = [torch.rand(1, 20, 30), torch.rand(1, 20, 30)]
    per_reference = masks_for_references(["a", "b"], images, ["m1", "m2"], two)
    assert [id(mask) for mask in per_reference] == [id(two[0]), id(two[1]), id(two[1])]
    with pytest.raises(ImageFileError, match="3 --mask files for 2 --image files"):
        masks_for_references(["a", "b"], images, ["m"] * 3, one * 3)
    with pytest.raises(ImageFileError) as caught:
        masks_for_references(["a.png"], [torch.rand(1, 20, 30, 3)], ["m.png"], [torch.rand(1, 30, 20)])
    assert "m.png is 20x30 px but the image a.png is 30x20 px" in str(caught.value)


def test_read_references_names_each_file_and_refuses_a_tiny_picture(tmp_path):
    a, b = _png(tmp_path / "a.png", _rgb(32, 48)), _png(tmp_path / "b.png", _rgb(40, 40, 1))
    images, masks = cli.read_references([str(a), str(b)], [])
    assert list(images) == ["image 1 (a.png)", "image 2 (b.png)"] and masks is None
    assert images["image 2 (b.png)"].shape == (1, 40, 40, 3)
    with pytest.raises(InvalidReferenceImageError, match=r"image 2 \(tiny.png\) is 8x8 px"):
        cli.read_references([str(a), str(_png(tmp_path / "tiny.png", _rgb(8, 8)))], [])


# --- exit codes (no ComfyUI needed: these fail before it is imported) --------------------------


def test_user_errors_exit_2_with_the_message_and_no_traceback(tmp_path, capsys):
    assert cli.main(["train", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "c")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err
    picture = _png(tmp_path / "a.png", _rgb(32, 32))
    assert cli.main(["train", "--image", str(picture), "--size", "100", "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("Invalid setting: --size must be a multiple of 16")
    assert cli.main(["train", "--image", str(picture), "--comfyui", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "is not a ComfyUI folder" in capsys.readouterr().err
    assert cli.main(["train", "--image", str(picture), "--keep-background", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--keep-background needs --mask" in capsys.readouterr().err
    assert cli.main(["sample", "--context", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("Invalid context file")
    assert cli.main(["sample", "--context", str(tmp_path / "none.safetensors"), "--start-percent", "0.8",
                     "--end-percent", "0.2", "--out", str(tmp_path / "x")]) == 2  # Apply Context's rule, in option names
    assert capsys.readouterr().err.startswith("Invalid setting: --start-percent (0.8) must not be above --end-percent (0.2)")
    assert not (tmp_path / "c.safetensors").exists()


def test_ctrl_c_exits_130_cleanly(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_train", interrupted)
    assert cli.main(["train", "--image", "a.png", "--out", "c"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_python_dash_m_runs_without_comfyui(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "MODELS_DIR")}
    shown = subprocess.run([sys.executable, "-m", "anima_context", "train", "--help"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--learning-rate" in shown.stdout and "--mask" in shown.stdout
    failed = subprocess.run([sys.executable, "-m", "anima_context", "train", "--image", str(tmp_path / "none.png"),
                             "--out", str(tmp_path / "c")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "none.png does not exist" in failed.stderr and "Traceback" not in failed.stderr


def test_demo_models_name_the_demo_files_and_options_still_win(tmp_path):
    paths = demo_paths(tmp_path)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    args = cli.build_parser().parse_args(["train", "--image", "a.png", "--out", "o", "--demo-models", str(tmp_path),
                                          "--vae", "mine.safetensors"])
    assert cli.model_names(args) == {"unet": str(paths["unet"]), "clip": str(paths["clip"]), "vae": "mine.safetensors"}
    assert [path.relative_to(tmp_path).as_posix() for path in paths.values()] == [
        "diffusion_models/anima_demo_dit.safetensors", "text_encoders/anima_demo_qwen3_06b.safetensors", "vae/anima_demo_vae.safetensors"]


def test_a_missing_demo_set_says_how_to_write_it_before_loading_comfyui(tmp_path, capsys):
    picture = _png(tmp_path / "a.png", _rgb(32, 32))
    code = cli.main(["train", "--demo-models", str(tmp_path / "nothing"), "--image", str(picture), "--out", str(tmp_path / "c"),
                     "--comfyui", str(tmp_path / "not_comfyui")])  # never looked at: the demo set is checked first
    err = capsys.readouterr().err
    assert code == 2 and "anima_demo_dit.safetensors is missing" in err
    assert f"python -m anima_context demo-models {tmp_path / 'nothing'}" in err


def test_the_tools_use_the_demo_file_names():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_example_workflows", REPO / "tools" / "run_example_workflows.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert sorted((sub, name) for _, sub, name in tool.DEMO_MODELS.values()) == sorted(DEMO_FILES.values())


# --- end to end, with ComfyUI ------------------------------------------------------------------


def _run(*argv, timeout=900):
    result = subprocess.run([sys.executable, "-m", "anima_context", *map(str, argv)], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    return result


@pytest.fixture(scope="module")
def demo_set(comfyui, tmp_path_factory):
    """The demo model set, written by the command line as a user would (about 1.5 GB, ~25 s on 2 cores)."""
    folder = tmp_path_factory.mktemp("demo") / "my demo"  # a space in the path, as on many Windows set-ups
    result = _run("demo-models", folder, "--comfyui", comfyui, timeout=600)
    return folder, result


@pytest.fixture(scope="module")
def model_files(demo_set, comfyui):
    folder, result = demo_set
    assert result.returncode == 0, result.stderr
    return ["--comfyui", comfyui, "--demo-models", folder]


def test_demo_models_writes_random_weight_files_in_comfyuis_layout(demo_set, comfyui):
    from safetensors import safe_open

    folder, result = demo_set
    assert result.returncode == 0, result.stderr
    for key, path in demo_paths(folder).items():
        assert f"wrote {path}" in result.stdout, result.stdout
        with safe_open(str(path), "pt") as weights:
            note = json.loads(weights.metadata()["anima_fasttrain_demo"])
            assert note["random_weights"] is True
            if key == "unet":  # the key ComfyUI's detection reads the width from
                assert weights.get_slice("x_embedder.proj.1.weight").get_shape()[0] == DIT_WIDTH
    assert (folder / DEMO_PICTURE).read_bytes() == (comfyui / "input" / DEMO_PICTURE).read_bytes()
    assert "train --demo-models" in result.stdout.splitlines()[-1]
    # a second run keeps what is there (no 1.5 GB rewrite) and a file where the folder belongs is refused
    again = _run("demo-models", folder, "--comfyui", comfyui, timeout=300)
    assert again.returncode == 0 and again.stdout.count("kept ") == 3 and "wrote" not in again.stdout, again.stdout
    blocked = _run("demo-models", folder / DEMO_PICTURE, "--comfyui", comfyui, timeout=300)
    assert blocked.returncode == 2 and "is a file" in blocked.stderr and "Traceback" not in blocked.stderr


@pytest.fixture(scope="module")
def trained_file(model_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    picture = _png(folder / "ref.png", _rgb(80, 64))
    result = _run("train", *model_files, "--image", picture, "--steps", 2, "--size", 64, "--num-tokens", 4,
                  "--dtype", "float32", "--prompt", "a girl with silver hair", "--out", folder / "ctx",
                  "--loss-plot", folder / "loss.png")
    return folder, result


def test_train_prints_progress_and_info_and_writes_a_loadable_context(trained_file):
    from anima_context.context_file import load_context

    folder, result = trained_file
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "step 1/2" in lines and any(line.startswith("step 2/2  loss ") for line in lines)
    assert "reference fit" in result.stdout and "references: 1 (64x80)" in result.stdout
    assert "for another scene: name the references' background in the negative prompt too" in lines
    assert lines[-1].startswith(f"saved {folder / 'ctx.safetensors'}")
    context = load_context(folder / "ctx.safetensors")
    assert context.tokens.shape == (10, 4, 1024) and context.metadata["steps"] == 2
    assert context.metadata["prompt"] == "a girl with silver hair"
    with Image.open(folder / "loss.png") as plot:
        assert plot.size == (640, 400)


def test_sample_writes_a_png_and_strength_0_is_the_plain_model(trained_file, model_files):
    folder, trained = trained_file
    assert trained.returncode == 0, trained.stderr
    pictures = {}
    for strength in (1, 0):
        out = folder / f"strength{strength}"
        result = _run("sample", *model_files, "--context", folder / "ctx.safetensors", "--width", 64, "--height", 64,
                      "--steps", 2, "--strength", strength, "--out", out)
        assert result.returncode == 0, result.stderr
        assert f"saved {out}.png  (64x64, mean pixel " in result.stdout and "sampling step 2/2" in result.stdout
        with Image.open(f"{out}.png") as image:
            assert image.size == (64, 64) and image.mode == "RGB"
            pictures[strength] = np.asarray(image)
    assert not np.array_equal(pictures[1], pictures[0])
    # The same render with no patch on the model at all: strength 0 must give exactly this picture.
    plain = folder / "plain.png"
    driver = ("import sys\nfrom anima_context import cli\nsetup = cli.setup_comfyui\n"
              "def unpatched(args):\n    env = setup(args)\n    env.glue.apply_reference_context = lambda model, *a, **k: model\n"
              "    return env\ncli.setup_comfyui = unpatched\nsys.exit(cli.main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", driver, "sample", *map(str, model_files), "--context", str(folder / "ctx.safetensors"),
                             "--width", "64", "--height", "64", "--steps", "2", "--out", str(plain)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    with Image.open(plain) as image:
        assert np.array_equal(np.asarray(image), pictures[0])


def test_masks_and_references_of_different_sizes_train(model_files, tmp_path):
    a, b = _png(tmp_path / "a.png", _rgb(80, 64)), _png(tmp_path / "b.png", _rgb(64, 96, 1))
    mask_a = _png(tmp_path / "ma.png", np.full((80, 64), 255), "L")
    mask_b = np.zeros((64, 96, 4))
    mask_b[16:48, 24:72, 3] = 255  # opaque in the middle: the character
    mask_b = _png(tmp_path / "mb.png", mask_b, "RGBA")
    result = _run("train", *model_files, "--image", a, "--image", b, "--mask", mask_a, "--mask", mask_b, "--steps", 2,
                  "--size", 64, "--num-tokens", 2, "--dtype", "float32", "--out", tmp_path / "masked.safetensors")
    assert result.returncode == 0, result.stderr
    # each picture keeps its own size: its mask is resized and cropped with it inside the trainer
    assert "with masks" in result.stdout and "references: 2 (64x80, 96x64), loss weighted by the training mask, keep_background 1" in result.stdout
    assert (tmp_path / "masked.safetensors").is_file()


def test_missing_model_files_name_their_folders_and_downloads(comfyui, tmp_path):
    picture = _png(tmp_path / "a.png", _rgb(32, 32))
    result = _run("train", "--comfyui", comfyui, "--models-dir", tmp_path, "--image", picture, "--out", tmp_path / "c",
                  timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for name, folder in (("anima-base-v1.0", "diffusion_models"), ("qwen_3_06b_base", "text_encoders"), ("qwen_image_vae", "vae")):
        assert f"'{name}.safetensors' not found" in result.stderr and str(tmp_path / folder) in result.stderr
        assert f"https://huggingface.co/circlestone-labs/Anima/resolve/main/split_files/{folder}/{name}.safetensors" in result.stderr


def test_ctrl_c_while_training_exits_130_without_a_traceback_or_a_file(model_files, tmp_path):
    picture = _png(tmp_path / "a.png", _rgb(64, 64))
    out = tmp_path / "never.safetensors"
    command = [sys.executable, "-m", "anima_context", "train", *map(str, model_files), "--image", str(picture), "--steps", "10000",
               "--size", "64", "--num-tokens", "2", "--dtype", "float32", "--out", str(out)]
    # SIG_DFL in the child: a test run from a background shell job would hand down an ignored SIGINT.
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in process.stdout:
            if line.startswith("step 1/"):
                process.send_signal(signal.SIGINT)
                break
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 130 and stderr.strip().endswith("interrupted") and "Traceback" not in stderr, stderr
    assert not out.exists()
