"""Data-parallel throughput on one machine: 1 rank x N threads vs N ranks x 1 thread.

Runs `python -m simcore.train` for a fixed number of steps of the `small`
preset (global batch 16) under each layout and reads rank 0's metrics.jsonl:
tokens/s (whole job), seconds per step, and the time each step spends in the
gradient Allreduce (its share of the step). The first steps are warm-up.

    python benchmarks/bench_mpi.py                 # ~2 minutes on 2 cores
    python benchmarks/bench_mpi.py --quick         # tiny model, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from report import command_line, publish  # noqa: E402

TINY = ["--d-model", "16", "--d-hidden", "32", "--n-layers", "1", "--n-heads", "2"]


def run_layout(ranks: int, threads: int, steps: int, quick: bool, data: str | None) -> dict:
    out = tempfile.mkdtemp(prefix=f"bench-mpi-{ranks}x{threads}-")
    flags = ["-m", "simcore.train", "--steps", str(steps), "--batch-size", "16", "--threads", str(threads),
             "--eval-every", "100000", "--checkpoint-every", "100000", "--final-eval", "16",
             "--samples-per-class", "1", "--no-progress", "--out", out] + (TINY if quick else [])
    if data:
        flags += ["--data", data]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    mpirun = shutil.which("mpirun")
    if ranks > 1 and mpirun is None:
        return {"ranks": ranks, "threads": threads, "status": "not available: pip install 'simcore[mpi]'"}
    cmd = ([mpirun, "-n", str(ranks)] if ranks > 1 else []) + [sys.executable] + flags
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env)
    if res.returncode != 0:
        return {"ranks": ranks, "threads": threads, "status": f"failed: {res.stderr.strip()[-300:]}"}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if '"loss"' in line]
    shutil.rmtree(out, ignore_errors=True)
    warm = recs[min(2, len(recs) - 1):]
    step_s = statistics.median(r["step_s"] for r in warm)
    reduce_s = statistics.median(r["allreduce_s"] for r in warm)
    return {"ranks": ranks, "threads": threads, "status": "ok", "steps_timed": len(warm),
            "step_ms": step_s * 1e3, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in warm),
            "allreduce_ms": reduce_s * 1e3, "allreduce_share": reduce_s / step_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps (CI smoke)")
    ap.add_argument("--steps", type=int, default=None, help="steps per layout (default 12, quick 4)")
    ap.add_argument("--data", default=None, help="MNIST folder (else $SIMCORE_DATA, the cache, a download)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results JSON to PATH")
    ap.add_argument("--out-dir", type=Path, default=None, help="folder for JSON and markdown")
    opts = ap.parse_args(argv)
    steps = opts.steps or (4 if opts.quick else 12)
    cores = os.cpu_count() or 2
    rows = [run_layout(1, cores, steps, opts.quick, opts.data), run_layout(cores, 1, steps, opts.quick, opts.data)]
    md = ["| layout | status | ms/step | tokens/s | Allreduce ms/step | Allreduce share |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["status"] == "ok":
            md.append(f"| {r['ranks']} rank(s) x {r['threads']} thread(s) | ok | {r['step_ms']:.0f} | "
                      f"{r['tokens_per_s']:,.0f} | {r['allreduce_ms']:.2f} | {r['allreduce_share']:.1%} |")
        else:
            md.append(f"| {r['ranks']} rank(s) x {r['threads']} thread(s) | {r['status']} | | | | |")
    results = {"command": command_line(), "machine": machine_info(), "rows": rows}
    publish("mpi", "simcore data-parallel benchmark", results, "\n".join(md) + "\n", opts)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
