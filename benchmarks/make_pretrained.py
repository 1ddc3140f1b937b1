"""Make the package's pretrained model from a finished `python -m simcore.train` run.

    python -m simcore.train --minutes 60 --seed 1 --out runs/pretrained
    python benchmarks/make_pretrained.py runs/pretrained     # -> simcore/pretrained-mnist-guided.safetensors

The run must be what the package promises: the default preset with its default recipe,
trained on MNIST for at least --min-minutes (60), with its final evaluation on all 10,000
test images (final.json). Its newest checkpoint is written again without the optimizer
moments (a third of the size), with the run's training state and a ``provenance`` entry:
the command that trained it, its test bits/dim and the CPU it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paths  # noqa: E402  (also: a checkout without simcore installed)

import simcore  # noqa: E402
from simcore import checkpoint, pretrained  # noqa: E402
from simcore.config import DEFAULT_PRESET, Config  # noqa: E402
from simcore.train import _ADDED_LATER, RECIPES, TrainState  # noqa: E402

TEST_IMAGES = 10_000


def train_command(state: dict) -> str:
    """The `python -m simcore.train` line that starts this run (the default preset and
    recipe, so only the length, the seed and any other flag given are spelled out)."""
    words = ["python -m simcore.train"]
    for key in ("minutes", "steps", "epochs"):
        if state.get(key) is not None:
            words.append(f"--{key} {state[key]:g}")
    words.append(f"--seed {state['seed']}")
    if state["batch_size"] != 8:
        words.append(f"--batch-size {state['batch_size']}")
    return " ".join(words)


def check_run(folder: str, min_minutes: float) -> tuple[str, simcore.SIM, dict, dict]:
    """The run's newest checkpoint, model, training state and final.json, or SystemExit
    naming what makes it unfit to ship."""
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: not a run's folder (give the --out of a finished python -m simcore.train)")
    path = checkpoint.resolve(folder)
    model, state = checkpoint.load(path, optimizer=False)
    final_path = os.path.join(folder, "final.json")
    if not state:
        raise SystemExit(f"{path}: no training state (not written by python -m simcore.train)")
    if model.cfg != Config.preset(DEFAULT_PRESET):
        raise SystemExit(f"{path}: {model.cfg} is not the default preset {DEFAULT_PRESET!r}")
    # (fields added since the run was written take their defaults, as on resuming)
    defaults = {k: getattr(TrainState, k) for k in _ADDED_LATER}
    recipe = {k: state.get(k, defaults.get(k)) for k in RECIPES[DEFAULT_PRESET]}
    if recipe != RECIPES[DEFAULT_PRESET]:
        diff = {k: v for k, v in recipe.items() if v != RECIPES[DEFAULT_PRESET][k]}
        raise SystemExit(f"{path}: trained with {diff}, not the default recipe")
    if state.get("dataset") != "mnist":
        raise SystemExit(f"{path}: trained on {state.get('dataset')}, not mnist")
    if state["elapsed"] < 60 * min_minutes:
        raise SystemExit(f"{path}: trained for {state['elapsed'] / 60:.1f} minutes, "
                         f"fewer than --min-minutes {min_minutes:g}")
    try:
        with open(final_path) as f:
            final = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"{final_path}: missing (the run did not finish its final evaluation)") from None
    if final.get("step") != state["step"] or final.get("final_eval_images") != TEST_IMAGES:
        raise SystemExit(f"{final_path}: not the final evaluation of step {state['step']} "
                         f"on all {TEST_IMAGES:,} test images")
    return path, model, state, final


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the finished run's folder (its --out)")
    ap.add_argument("--out", default=str(paths.REPO / "simcore" / pretrained.FILE),
                    help="where to write (default: the file in this checkout's simcore/, which pip install . ships)")
    ap.add_argument("--cpu", default=None, help="the CPU the run trained on (default: this one's name)")
    ap.add_argument("--min-minutes", type=float, default=60.0, help="the least training a shipped model has")
    args = ap.parse_args(argv)
    path, model, state, final = check_run(args.run, args.min_minutes)
    state["provenance"] = {
        "command": train_command(state),
        "test_bits_per_dim": final["final_test_bits"],
        "test_images": final["final_eval_images"],
        "cpu": args.cpu or simcore.cpu_info()["cpu"],
        "simcore": simcore.__version__,
        "from": os.path.basename(path),
    }
    checkpoint.save(args.out, model, optimizer=False, train_state=state)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out} ({size / 1e6:.1f} MB): step {state['step']}, "
          f"{state['elapsed'] / 60:.1f} minutes, {final['final_test_bits']:.4f} bits/dim on the test set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
