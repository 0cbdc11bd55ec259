"""Reference fit against steps for a sweep of training settings; picks the defaults.

    COMFYUI_PATH=path/to/ComfyUI python bench/convergence.py --size 256 --steps 100

For each setting it trains from the same references and reports the held-out lift every
--every steps, the final lift, and the steps to reach 90% of it (the defaults should get
there in as few steps as possible).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import DEFAULTS, Setup  # noqa: E402

from anima_context.trainer import train_tokens  # noqa: E402

SWEEP = [
    {},
    {"learning_rate": 0.005}, {"learning_rate": 0.01}, {"learning_rate": 0.05}, {"learning_rate": 0.1},
    {"init_std": 0.1}, {"init_std": 1.0},
    {"num_tokens": 4}, {"num_tokens": 32},
    {"draws_per_reference": 2}, {"draws_per_reference": 4},
]


def steps_to_fraction(curve, fraction=0.9):
    final = curve[-1][1]
    return next((step for step, lift in curve if final > 0 and lift >= fraction * final), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--refs", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--only", type=int, nargs="*", help="indices of SWEEP to run")
    args = parser.parse_args()
    args.draws, args.full = 1, False
    setup = Setup(args)
    print(f"model: {setup.model_name}; {args.refs} ref(s) at {args.size} px, {args.dtype}; base {DEFAULTS}")
    for index, change in enumerate(SWEEP):
        if args.only and index not in args.only:
            continue
        settings = setup.settings(args.steps, eval_every=args.every, **change)
        start = time.perf_counter()
        with setup.training_scope():
            result = train_tokens(setup.denoiser, setup.latents, settings)
        curve = result.lift_curve
        seconds = time.perf_counter() - start
        draws = settings.draws_per_reference * args.refs
        print(f"[{index}] {change or 'base'}: final lift {curve[-1][1] * 100:.2f}%, 90% at step "
              f"{steps_to_fraction(curve)}, {seconds:.0f}s ({draws} draws/step)")
        print("     lift%: " + " ".join(f"{step}:{lift * 100:.1f}" for step, lift in curve))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
