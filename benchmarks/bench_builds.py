"""Two builds of simcore, the same work, at every vector level: is the new one slower?

Each build is a source tree with its kernels built in place (`python setup.py
build_ext --inplace`), say a worktree of the last release beside this checkout. For
each level, fresh processes alternate between the two trees (A B A B ...), so that a
shared, noisy machine slows both alike; each process times a `small` training step
(B=16, 784 pixels) and the sampling of 32 digits, after a warm-up, and reports medians.
The figure is the median over rounds of the per-round ratio head / base (below 1:
the head is faster).

    git worktree add ../simcore-base 50e3e82 && (cd ../simcore-base && python setup.py build_ext --inplace)
    python setup.py build_ext --inplace
    python benchmarks/bench_builds.py --base ../simcore-base              # this checkout vs that one
    python benchmarks/bench_builds.py --base ../simcore-base --rounds 3 --isa avx2
    python benchmarks/bench_builds.py --base ../clang --head ../clang --base-threads 1   # 1 -> 2 threads
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import paths
from machine import machine_info, machine_markdown
from paths import portable_text
from report import markdown_table

CHILD = r"""
import json, statistics, sys, time
import numpy as np
import simcore
simcore.set_threads({threads})
cfg = simcore.Config.preset("small")
model = simcore.SIM(cfg, seed=0)
rng = np.random.default_rng(0)
tokens = rng.integers(0, 256, ({batch}, cfg.seq_len)).astype(np.uint8)
tokens[:, 0] = rng.integers(0, 10, {batch})
def timed(fn, n):
    fn()
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return statistics.median(out)
step = timed(lambda: model.train_step(tokens, lr=1e-4), {steps})
sample = timed(lambda: model.generate(list(range(10)) * 3 + [0, 1], seed=0), {samples})
print(json.dumps({{"isa": simcore.get_isa(), "file": simcore.__file__, "step_s": step, "sample_s": sample}}))
"""


def run_child(tree: Path, isa: str, opts, threads: int) -> dict:
    env = {**os.environ, "SIMCORE_ISA": isa, "PYTHONPATH": str(tree)}
    code = CHILD.format(threads=threads, batch=16, steps=opts.steps, samples=opts.samples)
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{tree} at {isa} failed:\n{p.stderr}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if Path(out["file"]).resolve().parent.parent != tree.resolve():
        raise SystemExit(f"{tree}: imported simcore from {out['file']} instead (build it in place first)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other tree, built in place")
    ap.add_argument("--head", type=Path, default=paths.REPO, help="default: this checkout")
    ap.add_argument("--isa", default=None, help="comma-separated levels (default: every level this CPU runs)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per process")
    ap.add_argument("--samples", type=int, default=1, help="timed sampling calls per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-threads", type=int, default=None,
                    help="threads for the base (default --threads): with --base and --head the same "
                         "tree, the speed-up from --base-threads to --threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--md", type=Path, default=None, help="and a markdown report here")
    opts = ap.parse_args(argv)
    import simcore
    machine = machine_info()  # before the runs: the load average is the one they start in
    levels = opts.isa.split(",") if opts.isa else simcore.cpu_info()["supported"][::-1]
    results = {}
    for isa in levels:
        rounds = []
        for r in range(opts.rounds):
            base = run_child(opts.base, isa, opts, opts.base_threads or opts.threads)
            head = run_child(opts.head, isa, opts, opts.threads)
            rounds.append({"base": base, "head": head})
            print(f"{isa} round {r + 1}: step {head['step_s'] * 1e3:.0f} / {base['step_s'] * 1e3:.0f} ms, "
                  f"sampling {head['sample_s']:.2f} / {base['sample_s']:.2f} s (head / base)", flush=True)
        results[isa] = {k: {"base_s": statistics.median(r["base"][k] for r in rounds),
                            "head_s": statistics.median(r["head"][k] for r in rounds),
                            "ratio": statistics.median(r["head"][k] / r["base"][k] for r in rounds)}
                        for k in ("step_s", "sample_s")}
    rows = [[isa, what, f"{v['base_s'] * 1e3:,.0f}", f"{v['head_s'] * 1e3:,.0f}", f"{v['ratio']:.3f}"]
            for isa, res in results.items() for what, v in res.items()]
    table = markdown_table(["level", "work", "base ms", "head ms", "head / base (median of rounds)"], rows)
    print(table)
    rel = lambda p: os.path.relpath(p.resolve(), paths.REPO)  # noqa: E731  (no machine paths in reports)
    command = " ".join(["python benchmarks/bench_builds.py"] + (argv or sys.argv[1:]))
    doc = {"command": command, "machine": machine, "rounds": opts.rounds, "threads": opts.threads,
           "base_threads": opts.base_threads or opts.threads,
           "base": rel(opts.base), "head": rel(opts.head), "results": results}
    if opts.json:
        opts.json.write_text(portable_text(json.dumps(doc, indent=1)) + "\n")
    if opts.md:
        title = f"# Two builds, alternating\n\n`{command}`\n\n{machine_markdown(doc['machine'])}\n\n"
        opts.md.write_text(portable_text(title +
                           f"base `{doc['base']}` ({doc['base_threads']} threads), head `{doc['head']}` "
                           f"({opts.threads} threads), "
                           f"{opts.rounds} rounds; `small` train step B=16, sampling 32 digits\n\n{table}\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
