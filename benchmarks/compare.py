"""The whole comparison in one command, at every vector level: training, generation, BLAS builds.

For each vector level this CPU runs (AVX-512, AVX2, baseline; --isa picks), one
fresh process with every library capped at that level (machine.LEVEL_ENV:
SIMCORE_ISA for simcore, OPENBLAS_CORETYPE for its OpenBLAS, ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS for PyTorch) runs bench_train.py
(simcore vs PyTorch interleaved, 1 vs all threads, attention alone, the kernel
profile, peak memory) and bench_generate.py (key/value cache in simcore and
PyTorch vs the original method), and writes its own report into
benchmarks/results/<level>/. The original preset's step runs at the top level
only. Then bench_blas.py (one process per BLAS library) runs once, and
benchmarks/results/compare.md gets the per-level summary on top.

    python benchmarks/compare.py                  # ~8 minutes per level on 2 cores, + ~2 for the original step
    python benchmarks/compare.py --isa avx2       # one level
    python benchmarks/compare.py --skip-original  # without the original preset's step
    python benchmarks/compare.py --quick          # smoke test for CI: tiny models, every level
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_blas  # noqa: E402
import bench_generate  # noqa: E402
import bench_train  # noqa: E402
from machine import LEVEL_ENV, import_torch, machine_info  # noqa: E402
from report import add_common_args, command_line, fmt, markdown_table, out_dir, publish  # noqa: E402

import simcore  # noqa: E402

PARTS = {"train": bench_train, "generate": bench_generate, "blas": bench_blas}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--skip-original", action="store_true", help="leave out the original preset's training step")
    ap.add_argument("--original-torch", action="store_true", help="also time PyTorch on the original preset")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, from {list(PARTS)}")
    ap.add_argument("--isa", default=None,
                    help="comma-separated vector levels to measure (default: every level this CPU runs)")
    # internal: this process is one level's run (the caps are already in its environment)
    ap.add_argument("--one-level", action="store_true", help=argparse.SUPPRESS)
    return ap


def common_flags(opts, threads) -> list[str]:
    """--quick, --no-torch, --repeats, --warmup and --threads as given to us."""
    argv = ["--quick"] * opts.quick + ["--no-torch"] * opts.no_torch
    for flag in ("repeats", "warmup"):
        if getattr(opts, flag) is not None:
            argv += [f"--{flag}", str(getattr(opts, flag))]
    if threads:
        argv += ["--threads", ",".join(map(str, threads))]
    return argv


def level_argv(opts, level: str, top: bool) -> list[str]:
    """The command line of one level's child: the same options, its parts, its folder."""
    argv = ["--one-level", "--only", ",".join(p for p in opts.parts if p != "blas"),
            "--out-dir", str(out_dir(opts) / level)] + common_flags(opts, opts.threads)
    if opts.skip_original or not top:
        argv.append("--skip-original")
    if opts.original_torch:
        argv.append("--original-torch")
    return argv


def run_level(opts, level: str, top: bool) -> dict:
    """One level's run in a fresh process with that level's caps; its results JSON."""
    env = dict(os.environ)
    for key, value in LEVEL_ENV[level].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    print(f"== vector level {level} ==", file=sys.stderr, flush=True)
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), *level_argv(opts, level, top)],
                       env=env, stdout=subprocess.DEVNULL)
    path = out_dir(opts) / level / "compare.json"
    if p.returncode != 0 or not path.exists():
        return {"status": "failed", "error": f"exit code {p.returncode}"}
    return json.loads(path.read_text())


def forwarded(opts, part: str) -> list[str]:
    """The command-line flags of one part's own parser, from ours."""
    # BLAS builds are compared at one thread count: the largest asked for.
    threads = [max(opts.threads)] if opts.threads and part == "blas" else opts.threads
    argv = common_flags(opts, threads)
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
                rows.append([f"train step, {r['config']}, {top} thr", f"{fmt(s['seconds']['median'] * 1e3)} ms",
                             f"{fmt(r['seconds']['median'] * 1e3)} ms", "",
                             f"PyTorch takes {r['torch_over_simcore']['median']:.2f}x simcore's time"])
    gen = res.get("generate")
    if gen:
        for o in gen["original"]:
            s = next((x for x in gen["rows"] if x["framework"] == "simcore" and x["threads"] == o["threads"]
                      and x["images"] == o["images"]), None)
            t = next((x for x in gen["rows"] if x["framework"] == "torch" and x["threads"] == o["threads"]
                      and x["images"] == o["images"]), None)
            rows.append([f"sample {o['images']} images, {o['threads']} thr (images/s)",
                         fmt(s["images_per_s"]) if s else "n/a", fmt(t["images_per_s"]) if t else "n/a",
                         fmt(o["images_per_s"]),
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
    head = ["measure", "simcore", "PyTorch", "original method", "note"]
    return "## Summary\n\n" + markdown_table(head, rows) + "\n"


def run_parts(opts, parts, results: dict) -> list[str]:
    """Run the parts in this process; their report sections."""
    out, sections = out_dir(opts), []
    for part in parts:
        mod = PARTS[part]
        part_opts = mod.build_parser().parse_args(forwarded(opts, part))
        results[part] = mod.run(part_opts)
        sections.append(mod.report(results[part], out))
    return sections


TARGETS = ("small >= 1.3x, medium >= 1.2x, attention >= 50% of sgemm, sampling >= 2x, 1 -> 2 threads >= 1.6x; "
           "bfloat16: small >= 1.5x autocast and >= 2.5x PyTorch float32, medium >= 1.4x autocast, "
           "the GEMM >= 70% of torch.mm")


def levels_markdown(levels: dict) -> str:
    """One row per vector level: the issue's targets side by side, then the reports."""
    if not levels:
        return ""
    rows = []
    for level, res in levels.items():
        if res.get("status") == "failed":
            rows.append([level, f"failed: {res.get('error')}"] + [""] * 7)
            continue
        train, gen = res.get("train") or {}, res.get("generate") or {}
        trows = train.get("rows", [])
        top = max((r["threads"] for r in trows), default=None)

        def train_ratio(config):
            r = next((r for r in trows if r["config"] == config and r["threads"] == top
                      and r["framework"] == "torch"), None)
            s = next((r for r in trows if r["config"] == config and r["threads"] == top
                      and r["framework"] == "simcore"), None)
            if not s:
                return ""
            ms = f"{fmt(s['seconds']['median'] * 1e3)} ms"
            return f"{ms}, {r['torch_over_simcore']['median']:.2f}x" if r else ms

        def scaling(config):
            t = {r["threads"]: r["seconds"]["median"] for r in trows
                 if r["config"] == config and r["framework"] == "simcore"}
            return f"{t[1] / t[top]:.2f}x" if 1 in t and top and top > 1 else ""

        att = next(iter(train.get("attention", [])), None)
        samp = []
        for n in sorted({r["images"] for r in gen.get("rows", [])}):
            t = next((r for r in gen["rows"] if r["images"] == n and r["framework"] == "torch"
                      and r["threads"] == max(gen["threads"])), None)
            samp.append(f"{n}: {t['torch_over_simcore']['median']:.2f}x" if t else f"{n}: n/a")
        bf = train.get("bf16") or {}
        bf16 = ", ".join(f"{r['config']} {r['ms']['simcore bf16']:,.0f} ms, {r['autocast_over_bf16']:.2f}x "
                         f"({r['torch_f32_over_bf16']:.2f}x f32)" for r in bf.get("steps", []))
        if bf.get("products"):
            least = min(r["of_torch"] for r in bf["products"])
            bf16 += f"; GEMM >= {100 * least:.0f}% of torch.mm"
        peaks = train.get("peaks", {})
        sg = peaks.get(f"simcore@{top}", {}).get("gflops")
        tm = peaks.get(f"torch@{top}", {}).get("gflops")
        rows.append([f"[{level}]({level}/compare.md)", train_ratio(trows[0]["config"]) if trows else "",
                     train_ratio("medium"),
                     f"{fmt(att['gflops'])} GFLOP/s, {100 * att['of_sgemm']:.0f}%" if att else "",
                     ", ".join(samp), scaling(trows[0]["config"]) if trows else "",
                     fmt(sg) if sg else "", fmt(tm) if tm else "", bf16 or "n/a (no AVX512_BF16)"])
    head = ["level", "small train step (simcore ms, PyTorch time / simcore time)", "medium", "attention fwd+bwd",
            "KV sampling, images: PyTorch time / simcore time", "1 -> 2 threads (small)",
            "sgemm GFLOP/s (simcore's BLAS)", "torch.mm GFLOP/s",
            "bfloat16 step (simcore bf16 ms, PyTorch autocast time / simcore bf16 time)"]
    return ("## Every vector level\n\nEach level ran in its own process with every library capped "
            "at it (simcore, its OpenBLAS, PyTorch's ATen, oneDNN, MKL: see the level's report for the "
            "caps; whether PyTorch honoured them shows in its torch.mm peak). Ratios are from "
            f"interleaved runs in that process, at the largest thread count. Targets: {TARGETS}.\n\n"
            + markdown_table(head, rows) + "\n")


def main(argv=None) -> int:
    opts = build_parser().parse_args(argv)
    opts.parts = [p.strip() for p in opts.only.split(",") if p.strip()]
    unknown = [p for p in opts.parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {unknown}; choose from {list(PARTS)}")
    supported = simcore.cpu_info()["supported"]
    levels = [x.strip() for x in opts.isa.split(",")] if opts.isa else supported[::-1]
    bad = [x for x in levels if x not in supported]
    if bad:
        raise SystemExit(f"--isa: this CPU runs {', '.join(supported)}, not {', '.join(bad)}")
    torch, _ = import_torch(opts.no_torch)
    results = {"benchmark": "compare", "command": command_line(), "machine": machine_info(torch)}
    if opts.one_level:  # a child: this level's train and generate parts
        title = f"simcore benchmarks at vector level {simcore.get_isa()}: PyTorch and the original method"
        sections = run_parts(opts, opts.parts, results)
        publish("compare", title, results, summary_markdown(results) + "\n" + "\n".join(sections), opts)
        return 0
    results["levels"] = {}
    if any(p != "blas" for p in opts.parts):
        for i, level in enumerate(levels):
            results["levels"][level] = run_level(opts, level, top=i == 0)
    sections = run_parts(opts, [p for p in opts.parts if p == "blas"], results)
    publish("compare", "simcore benchmarks: every vector level, PyTorch, BLAS builds", results,
            levels_markdown(results["levels"]) + "\n" + "\n".join(sections), opts)
    failed = [lv for lv, r in results["levels"].items() if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
