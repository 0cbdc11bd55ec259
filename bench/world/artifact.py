"""A built world as one small file, and back: restore in seconds what took an hour and more to build.

    COMFYUI_PATH=... python -m bench.world.artifact pack --world bench/world/tags_cache --out tags_world.tar
    COMFYUI_PATH=... python -m bench.world.artifact unpack tags_world.tar --world bench/world/tags_cache
    COMFYUI_PATH=... python -m bench.world.artifact store --world bench/world/tags_cache    # into main's history
    COMFYUI_PATH=... python -m bench.world.artifact restore --world bench/world/tags_cache  # on a fresh machine

A world folder is over a gigabyte, almost all of it weights nobody trained: the DiT file carries the demo set's
random LLM adapter (135M parameters) and the text encoder is the demo set's random Qwen3. The artifact keeps what
the build learnt (the DiT's other weights, exact, in the precision the build saved them; the VAE; the classifier)
with ``world.json`` and its pictures, and ``unpack`` makes the rest again from the seeds the build used (``dit.init_state``, the demo text
encoder), then checks that every file is the one that was packed (sha256 recorded at packing). The training data
under ``data/`` is not kept: an unpacked world samples, classifies and benchmarks; rebuilding a stage needs ``build``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from . import history_shelf
from .build import DIT_FILE, TEXT_ENCODER_FILE, VAE_FILE, Builder, WorldConfig

KEPT_AS_IS = (str(VAE_FILE), "classifier.pt", "world.json", "samples.png", "oracle.png", "data/dit_more.json",
              "data/dit_third.json", "data/dit_fourth.json")
TRAINED = "dit_trained.safetensors"
ADAPTER = "llm_adapter."
REPO = Path(__file__).resolve().parents[2]
# the tracked record of the tag world's artifact, kept in main's history (history_shelf) since only main survives a machine
POINTER = REPO / "bench" / "world" / "tags_world.shelf.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _config(world: Path) -> WorldConfig:
    recorded = json.loads((world / "world.json").read_text())["config"]
    return WorldConfig(**{k: v for k, v in recorded.items() if k in WorldConfig.__dataclass_fields__})


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(world: Path, out: Path, say=print) -> Path:
    from safetensors.torch import load_file, save

    world = Path(world)
    state = load_file(str(world / DIT_FILE))
    trained = {k: v.contiguous() for k, v in state.items() if not k.startswith(ADAPTER)}
    regenerated = _regenerated_adapter(_config(world))
    if set(regenerated) != {k for k in state if k.startswith(ADAPTER)} or not all(
            torch.equal(regenerated[k], state[k]) for k in regenerated):
        raise RuntimeError(f"{world / DIT_FILE}: its LLM adapter is not the one its seed makes; the artifact could not restore it")
    files = {name: _sha256(world / name) for name in (str(DIT_FILE), str(TEXT_ENCODER_FILE), *KEPT_AS_IS)
             if (world / name).is_file()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        _add(tar, "manifest.json", json.dumps({"sha256": files}, indent=1).encode())
        _add(tar, TRAINED, save(trained))
        for name in KEPT_AS_IS:
            if (world / name).is_file():
                tar.add(world / name, arcname=name)
    say(f"packed {world} into {out} ({out.stat().st_size / 2**20:.0f} MiB; the world folder's weights are "
        f"{sum((world / n).stat().st_size for n in (DIT_FILE, TEXT_ENCODER_FILE)) / 2**20:.0f} MiB)")
    return out


def _regenerated_adapter(config: WorldConfig) -> dict[str, torch.Tensor]:
    from . import dit

    return {k: v for k, v in dit.init_state(config.dit_width, config.seed).items() if k.startswith(ADAPTER)}


def unpack(artifact: Path, world: Path, say=print) -> Path:
    from safetensors.torch import load, save_file

    world = Path(world)
    world.mkdir(parents=True, exist_ok=True)
    with tarfile.open(artifact) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        trained = load(tar.extractfile(TRAINED).read())
        for member in tar.getmembers():
            if member.name in KEPT_AS_IS:
                tar.extract(member, world, filter="data")
    config = _config(world)
    state = {**trained, **_regenerated_adapter(config)}
    (world / DIT_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(world / DIT_FILE))
    Builder(world, config, log=lambda _: None)._make_text_encoder(world / TEXT_ENCODER_FILE)
    # safetensors lays tensors out by dtype and name, not by dict order: the same tensors give the same bytes
    wrong = [name for name, digest in manifest["sha256"].items() if _sha256(world / name) != digest]
    if wrong:
        raise RuntimeError(f"unpacked {world}, but these files differ from the packed world's: {', '.join(wrong)}")
    say(f"unpacked {artifact} into {world}: every file is the packed world's")
    return world


def store(world: Path, pointer: Path = POINTER, say=print, repo: Path = REPO) -> str:
    """Pack ``world`` and keep the artifact in the history of ``repo``'s checked-out branch, found through ``pointer``."""
    with tempfile.TemporaryDirectory() as tmp:
        packed = pack(world, Path(tmp) / "tags_world.tar", say=say)
        head = history_shelf.shelve(repo, packed, pointer, f"World artifact: {Path(world).name} kept in the "
                                    f"branch's history, outside its tree ({pointer.name} finds it)")
    say(f"stored in commit {head}'s history; `restore` gives it back on a fresh clone")
    return head


def restore(world: Path, pointer: Path = POINTER, say=print, repo: Path = REPO) -> Path:
    """The world ``pointer`` records, unpacked from ``repo``'s history into ``world``."""
    if not history_shelf.in_repo(repo, pointer).is_file():
        raise RuntimeError(f"{pointer}: no world has been stored; build one (README) and `store` it")
    with tempfile.TemporaryDirectory() as tmp:
        packed = history_shelf.unshelve(repo, pointer, Path(tmp) / "tags_world.tar")
        return unpack(packed, world, say=say)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.world.artifact", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="a world folder into one file")
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    u = sub.add_parser("unpack", help="an artifact into a world folder")
    u.add_argument("artifact", type=Path)
    u.add_argument("--world", type=Path, required=True)
    for name, text in (("store", "pack a world and keep it in this branch's history (a fresh clone carries it)"),
                       ("restore", "the stored world, from this repository's history, into a world folder")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--world", type=Path, required=True)
        c.add_argument("--pointer", type=Path, default=POINTER, help="the tracked record of the stored artifact")
    args = parser.parse_args(argv)
    from .build import start_comfyui

    start_comfyui()
    if args.command == "pack":
        pack(args.world, args.out)
    elif args.command == "unpack":
        unpack(args.artifact, args.world)
    elif args.command == "store":
        store(args.world, args.pointer)
    else:
        restore(args.world, args.pointer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
