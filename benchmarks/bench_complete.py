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
The figure is complete / generate (the issue asks for <= 0.6). Besides, inside the same
calls: generate's steps before the given rows' end and from there on (the second part is
what no completion can save), and the prefill's share of complete.

--groups MB,...: the same two timings with the sampler's groups sized for other cache
budgets (simcore.model.SAMPLE_CACHE_BYTES; "all": every image in one batch, as before
sampling went in groups), to show what the groups buy.

    python benchmarks/bench_complete.py                 # N = 100, 3 rounds
    python benchmarks/bench_complete.py --groups 4,16,64,all --quick
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
from simcore import model as model_module


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
    ap.add_argument("--groups", default="", help="comma-separated cache budgets in MB for the sampler's "
                                                  "groups, or 'all' (one batch), timed besides the default")
    args = ap.parse_args(argv)
    if args.threads:
        simcore.set_threads(args.threads)
    model = simcore.SIM.pretrained()
    images, labels, what = test_digits(args.n, model.cfg.image_size)
    prefill_s = [0.0]  # the prefill's share of a completion, timed inside it
    prefill = model_module._Sampler.prefill

    def timed_prefill(sampler, P):
        t = time.perf_counter()
        prefill(sampler, P)
        prefill_s[0] += time.perf_counter() - t
    model_module._Sampler.prefill = timed_prefill
    prefills = []
    known = args.rows * model.cfg.image_size
    steps_s = {False: 0.0, True: 0.0}  # generate's steps before the given rows' end, and from there
    step = model_module._Sampler.step

    def timed_step(sampler, t):
        t0 = time.perf_counter()
        step(sampler, t)
        steps_s[t >= known] += time.perf_counter() - t0
    model_module._Sampler.step = timed_step
    halves = []

    def generate(record=False):
        steps_s[False] = steps_s[True] = 0.0
        model.generate(labels, seed=0)
        if record:
            halves.append(dict(steps_s))

    def complete(record=False):
        prefill_s[0] = 0.0
        model.complete(images, args.rows, labels, seed=0)
        if record:
            prefills.append(prefill_s[0])
    runs = {"generate": lambda: generate(record=True), "complete": lambda: complete(record=True)}
    if not args.quick:
        runs["one pixel at a time"] = lambda: model.complete(images, args.rows, labels, seed=0, prefill=False)
    default_budget = model_module.SAMPLE_CACHE_BYTES

    def with_budget(mb, fn):
        def run():
            model_module.SAMPLE_CACHE_BYTES = (1 << 62) if mb == "all" else int(float(mb) * (1 << 20))
            try:
                fn()
            finally:
                model_module.SAMPLE_CACHE_BYTES = default_budget
        return run

    for mb in filter(None, args.groups.split(",")):
        what_ = "one batch" if mb == "all" else f"groups of {mb} MB"
        runs[f"generate, {what_}"] = with_budget(mb, generate)
        runs[f"complete, {what_}"] = with_budget(mb, complete)
    model.complete(images[:2], args.rows, labels[:2], seed=0)  # warm up (buffers, pages)
    times = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    info = simcore.cpu_info()
    group = model_module.sampling_group(model.cfg, args.n, 2, "auto")
    print(f"{args.n} images ({what}), {args.rows} of {model.cfg.image_size} rows given, guidance 2, "
          f"in groups of {group} ({default_budget >> 20} MB of caches), "
          f"{simcore.get_threads()} threads, "
          f"{info['isa']}, {info.get('cpu', '')}; medians of {args.rounds} rounds:")
    for name, t in med.items():
        print(f"  {name:32s} {t:7.2f} s")
    up, low = (statistics.median(h[k] for h in halves) for k in (False, True))
    print(f"  of generate: the steps at positions < {known} {up:.2f} s ({up / med['generate']:.2f}), "
          f"from {known} on {low:.2f} s ({low / med['generate']:.2f}: what a completion cannot save)")
    pf = statistics.median(prefills)
    print(f"  of complete: the prefill {pf:.2f} s ({pf / med['generate']:.2f} of generate), the steps after it "
          f"{med['complete'] - pf:.2f} s ({(med['complete'] - pf) / med['generate']:.2f} of generate)")
    print(f"complete / generate = {med['complete'] / med['generate']:.2f}"
          + (f"; one pixel at a time / generate = {med['one pixel at a time'] / med['generate']:.2f}"
             if "one pixel at a time" in med else ""))
    for mb in filter(None, args.groups.split(",")):
        what_ = "one batch" if mb == "all" else f"groups of {mb} MB"
        print(f"{what_}: complete / generate = {med[f'complete, {what_}'] / med[f'generate, {what_}']:.2f}; "
              f"generate {med[f'generate, {what_}'] / med['generate']:.2f}x the default's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
