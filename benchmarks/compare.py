"""The whole comparison in one command: training, generation and BLAS builds.

Runs bench_train.py (simcore vs PyTorch, 1 vs all threads, peak memory, the
original preset's step), bench_generate.py (key/value cache in simcore and
PyTorch vs the original method) and bench_blas.py (one process per BLAS
library), then writes one JSON, one markdown report with a summary on top,
and the charts, into benchmarks/results/.

    python benchmarks/compare.py                  # ~10 minutes on 2 cores, + ~2 for the original step
    python benchmarks/compare.py --skip-original  # without the original preset's step
    python benchmarks/compare.py --quick          # smoke test for CI: tiny models, < 60 s
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_blas  # noqa: E402
import bench_generate  # noqa: E402
import bench_train  # noqa: E402
import common as C  # noqa: E402

PARTS = {"train": bench_train, "generate": bench_generate, "blas": bench_blas}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap)
    ap.add_argument("--skip-original", action="store_true", help="leave out the original preset's training step")
    ap.add_argument("--original-torch", action="store_true", help="also time PyTorch on the original preset")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, from {list(PARTS)}")
    return ap


def forwarded(opts, part: str) -> list[str]:
    """The command-line flags of one part's own parser, from ours."""
    argv = []
    if opts.quick:
        argv.append("--quick")
    if opts.no_torch:
        argv.append("--no-torch")
    for flag in ("repeats", "warmup"):
        if getattr(opts, flag) is not None:
            argv += [f"--{flag}", str(getattr(opts, flag))]
    if opts.threads:
        # BLAS builds are compared at one thread count: the largest asked for.
        threads = [max(opts.threads)] if part == "blas" else opts.threads
        argv += ["--threads", ",".join(map(str, threads))]
    if part == "train":
        argv += ["--skip-original"] * opts.skip_original + ["--original-torch"] * opts.original_torch
    return argv


def summary_markdown(res: dict) -> str:
    """A few headline numbers, side by side."""
    rows = []
    train = res.get("train")
    if train and train["rows"]:
        top = max(r["threads"] for r in train["rows"])
        for r in train["rows"]:
            if r["threads"] == top and r["framework"] == "torch":
                s = next(x for x in train["rows"] if x["config"] == r["config"] and x["threads"] == top
                         and x["framework"] == "simcore")
                rows.append([f"train step, {r['config']}, {top} thr", f"{C.fmt(s['seconds']['median'] * 1e3)} ms",
                             f"{C.fmt(r['seconds']['median'] * 1e3)} ms", "",
                             f"PyTorch takes {r['torch_over_simcore']['median']:.2f}x simcore's time"])
    gen = res.get("generate")
    if gen:
        for o in gen["original"]:
            s = next((x for x in gen["rows"] if x["framework"] == "simcore" and x["threads"] == o["threads"]
                      and x["images"] == o["images"]), None)
            t = next((x for x in gen["rows"] if x["framework"] == "torch" and x["threads"] == o["threads"]
                      and x["images"] == o["images"]), None)
            rows.append([f"sample {o['images']} images, {o['threads']} thr (images/s)",
                         C.fmt(s["images_per_s"]) if s else "n/a", C.fmt(t["images_per_s"]) if t else "n/a",
                         C.fmt(o["images_per_s"]),
                         f"key/value cache is {o['speedup_of_cache']:.0f}x the original method"
                         if "speedup_of_cache" in o else ""])
    blas = res.get("blas")
    if blas:
        ok = [b for b in blas["backends"] if b.get("status") == "ok"]
        if ok:
            best = min(ok, key=lambda b: b["train"]["seconds"]["median"])
            rows.append([f"fastest BLAS for the train step ({blas['config']})", best["name"], "", "",
                         f"{len(ok)} of {len(blas['backends'])} backends available"])
    if not rows:
        return ""
    return "## Summary\n\n" + C.markdown_table(["measure", "simcore", "PyTorch", "original method", "note"], rows) + "\n"


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    parts = [p.strip() for p in opts.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {unknown}; choose from {list(PARTS)}")
    torch, _ = C.import_torch(opts.no_torch)
    out = C.out_dir(opts)
    results = {"benchmark": "compare", "command": C.command_line(), "machine": C.machine_info(torch)}
    sections = []
    for part in parts:
        mod = PARTS[part]
        part_opts = mod.build_parser().parse_args(forwarded(opts, part))
        results[part] = mod.run(part_opts)
        sections.append(mod.report(results[part], out))
    C.publish("compare", "simcore benchmarks: BLAS builds, PyTorch and the original method", results,
              summary_markdown(results) + "\n" + "\n".join(sections), opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
