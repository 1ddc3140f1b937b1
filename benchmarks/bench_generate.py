"""Generation speed: simcore's key/value-cache sampler, PyTorch's, and the original method.

- SIM.generate (key/value cache: one position per new pixel; its default
  float16 cache, and its float32 cache, which gives the same numbers as
  PyTorch's) and tests/torch_reference.py's generate_kv (the same algorithm in
  PyTorch, SDPA over a float32 cache, inference_mode), same weights and thread
  count, timed in alternation (A B C A B C ...) for 10 and 100 images, at 1 and
  all threads.
- The original's method, simcore.generate.generate_full (a full forward pass
  over the prefix for every new pixel). All 783 pixels would take minutes, so
  its time is extrapolated from measured steps: step t costs one forward over
  t+1 tokens, growing with t (linearly in the projections, quadratically in
  attention), so we time k consecutive steps at several positions spread over
  0..T-2, interpolate the per-step time linearly between them and sum over all
  T-1 steps. A direct timing of generate_full(n_pixels=k) checks the step
  timings against the real function. The speed-up is then cached / original,
  both measured in the same run.
- A kernel-by-kernel profile of simcore's sampler (timing.profile_kernels)
  for the largest batch at the largest thread count.

    python benchmarks/bench_generate.py            # about two minutes on 2 cores
    python benchmarks/bench_generate.py --quick    # seconds
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from charts import bar_chart  # noqa: E402
from machine import import_torch, machine_info  # noqa: E402
from report import (  # noqa: E402
    add_common_args,
    command_line,
    fmt,
    fmt_time,
    markdown_table,
    positive_ints,
    profile_markdown,
    script_main,
)
from timing import (  # noqa: E402
    default_threads,
    profile_kernels,
    ratio_summary,
    set_threads,
    summary,
    time_calls,
    time_interleaved,
)
from workloads import CONFIGS, describe, forward_flops_per_token, random_tokens  # noqa: E402

import simcore  # noqa: E402
from simcore.generate import generate_full, sample_from_logits  # noqa: E402


def labels_for(cfg, n: int) -> np.ndarray:
    return np.arange(n) % cfg.n_classes


def gen_flops_per_image(cfg) -> float:
    """Cached sampling: step t runs one position through the model, with attention
    over t+1 cached positions; summed over the T-1 steps this is (T-1) x the
    forward FLOPs per token (the attention term averages to the same 2 T d)."""
    return (cfg.seq_len - 1) * forward_flops_per_token(cfg)


def full_flops_per_image(cfg) -> float:
    """The original method: step t is a forward over t+1 tokens."""
    return sum((t + 1) * forward_flops_per_token(cfg, T=t + 1) for t in range(cfg.seq_len - 1))


# ---- the original method, extrapolated ------------------------------------------------

def full_step(model, tokens: np.ndarray, t: int, rng) -> None:
    """The body of generate_full's loop, unchanged: a forward over the t+1-token
    prefix, then one pixel sampled from the last position."""
    logits = model.forward(tokens[:, :t + 1])
    tokens[:, t + 1] = sample_from_logits(logits[:, t], 1.0, rng, None)


def time_full_method(model, n_images: int, k: int, n_positions: int, repeats: int) -> dict:
    """Seconds generate_full would take for all T-1 pixels of n_images, from timed steps.

    Each timed step has a new prefix length, so it allocates its activation
    buffers as generate_full's steps do (SIM caches only the last 3 shapes, and
    a sweep visits n_positions * k > 3 shapes before coming back to one).
    """
    cfg = model.cfg
    T = cfg.seq_len
    k = max(1, min(k, T - 1))
    labels = labels_for(cfg, n_images)
    rng = np.random.default_rng(0)
    tokens = random_tokens(cfg, n_images)     # the prefix's values do not change the cost
    tokens[:, 0] = labels
    # Blocks of k steps; the first starts at t=0 and the last ends at t=T-2, so
    # the interpolation below never extrapolates.
    starts = np.unique(np.linspace(0, T - 1 - k, n_positions).round().astype(int))
    steps = sorted({int(s) + i for s in starts for i in range(k)})

    direct = time_calls(lambda: generate_full(model, labels, 1.0, seed=0, n_pixels=k), 1, repeats)
    per_step = {t: [] for t in steps}
    for _ in range(max(1, repeats)):
        for t in steps:
            t0 = time.perf_counter()
            full_step(model, tokens, t, rng)
            per_step[t].append(time.perf_counter() - t0)
    med = np.array([np.median(per_step[t]) for t in steps])
    total = float(np.interp(np.arange(T - 1), steps, med).sum())
    first_k = [t for t in steps if t < k]
    return {"images": n_images, "k": k, "positions": [int(s) for s in starts],
            "step_seconds": {int(t): float(m) for t, m in zip(steps, med)},
            "extrapolated_seconds": total, "images_per_s": n_images / total,
            "direct_generate_full_k": summary(direct),
            "predicted_first_k": float(sum(med[steps.index(t)] for t in first_k))}


# ---- the benchmark -------------------------------------------------------------------

F32_CACHE = "simcore, float32 cache"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--config", default=None, help="model (default small; tiny with --quick)")
    ap.add_argument("--images", type=positive_ints, default=[10, 100],
                    help="batch sizes for the cached samplers")
    ap.add_argument("--full-images", type=positive_ints, default=[10],
                    help="batch sizes for the original method (100 adds about a minute)")
    ap.add_argument("--full-pixels", type=int, default=3, help="k: consecutive steps timed per position")
    ap.add_argument("--full-positions", type=int, default=8, help="positions spread over the sequence")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds after which a measurement stops adding repeats")
    return ap


def resolve(opts) -> None:
    opts.threads = opts.threads or default_threads()
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if opts.quick else 3)
    opts.warmup = opts.warmup if opts.warmup is not None else 1
    opts.config = opts.config or ("tiny" if opts.quick else "small")
    if opts.config not in CONFIGS:
        raise SystemExit(f"unknown config {opts.config!r}; choose from {sorted(CONFIGS)}")
    if opts.quick:
        opts.full_positions = min(opts.full_positions, 4)
        opts.full_pixels = min(opts.full_pixels, 2)


def run(opts) -> dict:
    resolve(opts)
    torch, torch_why = import_torch(opts.no_torch)
    if torch is not None:
        from torch_reference import TorchSIM, generate_kv  # tests/ (paths.py)
    cfg, _ = CONFIGS[opts.config]
    results = {"benchmark": "generate", "command": command_line(), "machine": machine_info(torch),
               "config": opts.config, "desc": describe(cfg), "threads": opts.threads,
               "repeats": opts.repeats, "warmup": opts.warmup, "torch": torch_why or "ok",
               "gflop_per_image": {"cached": gen_flops_per_image(cfg) / 1e9,
                                   "original": full_flops_per_image(cfg) / 1e9},
               "rows": [], "original": [], "profile": None}
    # Random weights: sampling costs the same whatever the weights say.
    model = simcore.SIM(cfg, seed=0)
    tmodel = TorchSIM(cfg, model.weights) if torch is not None else None
    for threads in opts.threads:
        set_threads(threads, torch)
        for n in opts.images:
            labels = labels_for(cfg, n)
            # simcore's default cache holds float16 (half the bytes to stream) at the AVX2 and
            # AVX-512 levels, float32 at the baseline; its float32 cache, the same numbers
            # as PyTorch's, is timed beside it for the record.
            fns = {"simcore": lambda: model.generate(labels, 1.0, seed=0),
                   F32_CACHE: lambda: model.generate(labels, 1.0, seed=0, kv_cache="float32")}
            if tmodel is not None:
                fns["torch"] = lambda: generate_kv(tmodel, cfg, labels, 1.0, seed=0)
            print(f"generate: {n} images, {threads} thread(s): {', '.join(fns)} ...", file=sys.stderr, flush=True)
            times, _ = time_interleaved(fns, opts.warmup, opts.repeats, opts.budget)
            for fw, t in times.items():
                s = summary(t)
                kind = "float16" if fw == "simcore" and simcore.get_isa() != "baseline" else "float32"
                row = {"framework": fw, "method": "key/value cache, " + kind,
                       "threads": threads, "images": n,
                       "seconds": s, "images_per_s": n / s["median"],
                       "gflops": n * gen_flops_per_image(cfg) / s["median"] / 1e9}
                if fw == "torch":
                    row["torch_over_simcore"] = ratio_summary(t, times["simcore"])
                    row["torch_over_simcore_f32"] = ratio_summary(t, times[F32_CACHE])
                results["rows"].append(row)

    threads, n = max(opts.threads), max(opts.images)
    set_threads(threads, torch)
    print(f"generate: profile of simcore, {n} images, {threads} thread(s) ...", file=sys.stderr, flush=True)
    labels = labels_for(cfg, n)
    prof = profile_kernels(lambda: model.generate(labels, 1.0, seed=0), repeats=1, warmup=0)
    results["profile"] = {"images": n, "threads": threads, **prof}
    for n in opts.full_images:
        print(f"generate: original method, {n} images, {threads} thread(s): "
              f"{opts.full_pixels} steps at {opts.full_positions} positions ...", file=sys.stderr, flush=True)
        r = time_full_method(model, n, opts.full_pixels, opts.full_positions, opts.repeats)
        r["threads"] = threads
        cached = next((x for x in results["rows"] if x["framework"] == "simcore"
                       and x["threads"] == threads and x["images"] == n), None)
        if cached:
            r["speedup_of_cache"] = cached["images_per_s"] / r["images_per_s"]
        results["original"].append(r)
    return results


# ---- report ------------------------------------------------------------------------

def report(results: dict, out: Path) -> str:
    md = ["## Generation\n"]
    g = results["gflop_per_image"]
    md.append(f"Model {results['config']} ({results['desc']}). Key/value-cache samplers: "
              f"{results['warmup']} warm-up + up to {results['repeats']} timed calls, simcore and PyTorch "
              "alternating; time is median (IQR). The original method (a full forward over the prefix "
              "per pixel) is extrapolated from timed steps spread over the sequence (see the script). "
              f"Work per image: {g['cached']:.3g} GFLOP with the cache, {g['original']:.3g} GFLOP "
              f"the original way ({g['original'] / g['cached']:.0f}x).\n")
    if results["torch"] != "ok":
        md.append(f"PyTorch: {results['torch']}\n")
    table = []
    def ratio_text(ratio):
        return f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else ""
    for r in results["rows"]:
        table.append([r["images"], r["threads"], f"{r['framework'].split(',')[0]} ({r['method']})",
                      fmt_time(r["seconds"], 1.0), fmt(r["images_per_s"]),
                      fmt(r["seconds"]["median"] / r["images"] * 1e3), fmt(r["gflops"]),
                      ratio_text(r.get("torch_over_simcore")), ratio_text(r.get("torch_over_simcore_f32"))])
    for r in results["original"]:
        table.append([r["images"], r["threads"], "simcore (original method, extrapolated)",
                      fmt(r["extrapolated_seconds"]), fmt(r["images_per_s"]),
                      fmt(r["extrapolated_seconds"] / r["images"] * 1e3), "", "", ""])
    md.append(markdown_table(["images", "threads", "sampler", "seconds", "images/s", "ms/image",
                              "GFLOP/s", "torch time / simcore time", "... / simcore's with a float32 cache"],
                             table))
    for r in results["original"]:
        d = r["direct_generate_full_k"]["median"]
        line = (f"\nOriginal method, {r['images']} images: steps timed at positions {r['positions']} "
                f"(k={r['k']} each); generate_full(n_pixels={r['k']}) measured {d * 1e3:.3g} ms "
                f"vs {r['predicted_first_k'] * 1e3:.3g} ms from the step timings.")
        if "speedup_of_cache" in r:
            line += (f" **Key/value cache speed-up: {r['speedup_of_cache']:.0f}x** "
                     f"({r['threads']} thread{'s' if r['threads'] > 1 else ''}).")
        md.append(line)

    scale = {}
    for r in results["rows"]:
        scale.setdefault((r["images"], r["framework"]), {})[r["threads"]] = r["seconds"]["median"]
    srows = [[n, fw, k, f"{t[1] / t[k]:.2f}x"] for (n, fw), t in scale.items() if 1 in t for k in sorted(t) if k != 1]
    if srows:
        md.append("\n### Thread scaling\n")
        md.append(markdown_table(["images", "framework", "threads", "speed-up over 1 thread"], srows))

    p = results.get("profile")
    if p:
        md.append(f"\n### Where simcore's sampling time goes: {p['images']} images, {p['threads']} threads\n")
        md.append("Wall time per kernel, summed over one `generate` call (one call, timed separately from "
                  "the table above). `block_decode` is a whole transformer block for one position of "
                  "every image: its GEMMs and the attention over the key/value cache.\n")
        md.append(profile_markdown(p, scale=1.0, unit="seconds"))

    groups = {}
    for r in results["rows"]:  # images/s at the slow (q3) and fast (q1) quartile times: the whisker
        n, s = r["images"], r["seconds"]
        groups.setdefault(f"{n} images, {r['threads']} thr", []).append(
            (f"{r['framework']} cached", r["images_per_s"], n / s["q3"], n / s["q1"]))
    for r in results["original"]:
        groups.setdefault(f"{r['images']} images, {r['threads']} thr", []).append(
            ("simcore original method", r["images_per_s"], None, None))
    if groups:
        chart = bar_chart(out / "generate.png", "Sampling speed (higher is better, log scale)",
                          list(groups.items()), "images / s", log=True,
                          note="original method: extrapolated from timed steps; whiskers: IQR")
        md.append(f"\n![generation speed]({chart.name})")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    return script_main("generate", "simcore generation benchmark", build_parser, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
