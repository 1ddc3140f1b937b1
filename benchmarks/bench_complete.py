"""Completion's prefill: finishing the lower half of N images against drawing N from scratch.

The pretrained model (guidance 2: each image drawn twice over, with its class and with the
null class), N test digits (real MNIST where SIMCORE_DATA or the cache has it, else noise:
the time does not depend on the pixels), rows 14 of 28 given. Three timings, alternated in
rounds (so a shared machine slows each alike) and quoted as medians:
  - generate:  model.generate(labels), all 783 pixels;
  - complete:  model.complete(images, 14, labels): the 392 given pixels in one forward pass
               into the key/value cache (the prefill), then 392 decode steps;
  - one pixel at a time: the same completion with prefill=False (the given pixels fed
               through the decode steps), for comparison.
The figure is complete / generate (the issue asks for <= 0.6).

    python benchmarks/bench_complete.py                 # N = 100, 3 rounds
    python benchmarks/bench_complete.py --n 10 --rounds 1 --quick
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import paths  # noqa: F401  (simcore from the checkout when not installed)

import simcore
from simcore import data


def test_digits(n: int, side: int):
    """n test digits and their labels (real MNIST if it is at hand without a download)."""
    try:
        images, labels = data.load_split("mnist", "test", download=False, progress=False)
        return images[:n].reshape(n, side, side), labels[:n].astype(np.int64), "MNIST test digits"
    except Exception:  # noqa: BLE001 -- no data here: the time does not depend on the pixels
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, side, side), dtype=np.uint8), rng.integers(0, 10, n), "noise"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="images")
    ap.add_argument("--rows", type=int, default=14, help="rows given")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="leave out the one-pixel-at-a-time timing")
    args = ap.parse_args(argv)
    if args.threads:
        simcore.set_threads(args.threads)
    model = simcore.SIM.pretrained()
    images, labels, what = test_digits(args.n, model.cfg.image_size)
    runs = {"generate": lambda: model.generate(labels, seed=0),
            "complete": lambda: model.complete(images, args.rows, labels, seed=0)}
    if not args.quick:
        runs["one pixel at a time"] = lambda: model.complete(images, args.rows, labels, seed=0, prefill=False)
    model.complete(images[:2], args.rows, labels[:2], seed=0)  # warm up (buffers, pages)
    times = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    info = simcore.cpu_info()
    print(f"{args.n} images ({what}), {args.rows} of {model.cfg.image_size} rows given, guidance 2, "
          f"{simcore.get_threads()} threads, "
          f"{info['isa']}, {info.get('cpu', '')}; medians of {args.rounds} rounds:")
    for name, t in med.items():
        print(f"  {name:20s} {t:7.2f} s")
    print(f"complete / generate = {med['complete'] / med['generate']:.2f}"
          + (f"; one pixel at a time / generate = {med['one pixel at a time'] / med['generate']:.2f}"
             if "one pixel at a time" in med else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
