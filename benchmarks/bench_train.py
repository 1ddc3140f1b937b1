"""Training-step throughput and peak memory: simcore against PyTorch, 1 vs all threads.

For each configuration (default: `small` and a medium model, B=16) and thread
count, simcore's `train_step` and a PyTorch train step (TorchSIM built from the
same weights: loss.backward, gradient clipping, AdamW) are timed in alternation
(A B A B ...) in one process, so the torch/simcore ratio holds on a noisy
machine. Reported: ms/step (median and IQR), tokens/s, achieved GFLOP/s (FLOPs
counted analytically, see workloads.forward_flops_per_token) and MFU against the
measured sgemm peak of the same library and thread count (simcore's BLAS for
simcore, torch.mm for PyTorch).

Profile: where a simcore step's time goes, kernel by kernel (timing.profile_kernels),
at the largest thread count.

bfloat16: where the CPU has bf16 dot products, the same steps in simcore bfloat16 and
PyTorch's bf16 autocast beside both float32 steps, the bf16 product on the step's shapes
against torch.mm, and the profile of the bf16 step (bench_bf16.py's measures).

Peak memory: one step per configuration and framework, each in a fresh process
(its own high-water mark, VmHWM; timing.peak_rss_mb says why not ru_maxrss
alone). The `original` preset (d_model 512, 12 layers, B=32: about a minute
and 8 GB a step) runs in its own process too, 1 warm-up + 1 timed step, simcore
only unless --original-torch; --skip-original leaves it out.

    python benchmarks/bench_train.py            # a few minutes + the original step
    python benchmarks/bench_train.py --quick    # seconds
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from charts import bar_chart  # noqa: E402
from children import child_main, run_child  # noqa: E402
from machine import import_torch, machine_info  # noqa: E402
from report import (  # noqa: E402
    add_common_args,
    command_line,
    fmt,
    fmt_time,
    markdown_table,
    profile_markdown,
    script_main,
)
from timing import (  # noqa: E402
    default_threads,
    peak_rss_mb,
    profile_kernels,
    ratio_summary,
    ru_maxrss_mb,
    set_threads,
    summary,
    time_calls,
    time_interleaved,
)
from workloads import (  # noqa: E402
    CONFIGS,
    describe,
    forward_flops_per_token,
    random_tokens,
    sgemm_peak,
    torch_mm_peak,
    train_flops_per_step,
)

import simcore  # noqa: E402
from simcore import _kernels  # noqa: E402

SCRIPT = Path(__file__).resolve()
LR = 1e-3  # simcore's train_step defaults otherwise: AdamW betas (0.9, 0.95), wd 0.01, clip 1.0


# ---- one train step, each framework ----------------------------------------------------

def simcore_step(cfg, weights_seed: int, tokens):
    """A fresh model and a closure doing one simcore train step."""
    model = simcore.SIM(cfg, seed=weights_seed)
    return model, lambda: model.train_step(tokens, lr=LR)


def torch_step(torch, cfg, weights, tokens):
    """The same step in PyTorch: same weights, loss, clipping and AdamW settings
    (weight decay on matrices only); the fused CPU AdamW where this torch has it,
    since simcore's AdamW is one fused C loop too."""
    from torch_reference import TorchSIM, is_norm_gain  # tests/ (paths.py)
    model = TorchSIM(cfg, weights)
    params = list(model.params.values())
    groups = [{"params": [p for n, p in model.params.items() if not is_norm_gain(n)], "weight_decay": 0.01},
              {"params": [p for n, p in model.params.items() if is_norm_gain(n)], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), eps=1e-8)
    tt = torch.as_tensor(tokens, dtype=torch.long)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(tt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.item())
    return model, step


# ---- attention alone ---------------------------------------------------------------------

def attention_flops(cfg, batch: int) -> float:
    """Forward + backward FLOPs of causal attention, counting the causal half of each
    T x T product: forward S = QK^T and PV (2 T^2 d per head), backward S again, dP,
    dQ, dK and dV (5 T^2 d)."""
    T, d = cfg.seq_len, cfg.d_model // cfg.n_heads
    return 7.0 * batch * cfg.n_heads * T * T * d


def time_attention(cfg, batch: int, warmup: int, repeats: int) -> dict:
    """attention_forward + attention_backward of one layer at the config's shape, on
    the current threads; GFLOP/s by attention_flops."""
    K = _kernels
    T, Cw, NH = cfg.seq_len, cfg.d_model, cfg.n_heads
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((batch, T, Cw), dtype=np.float32) for _ in range(4))
    out, lse = np.empty_like(q), np.empty((batch, NH, T), np.float32)
    scratch = np.empty(K.attention_scratch_size(T, Cw, NH, simcore.get_threads()), np.float32)
    grads = [np.zeros_like(q) for _ in range(3)]

    def step():
        K.attention_forward(out, lse, scratch, q, k, v, NH)
        K.attention_backward(*grads, scratch, g, q, k, v, out, lse, NH)
    s = summary(time_calls(step, warmup, repeats))
    return {"seconds": s, "gflops": attention_flops(cfg, batch) / s["median"] / 1e9}


# ---- the child process: one config, one framework, peak memory -------------------------

def child_job(spec: dict) -> dict:
    """Time `warmup` + `repeats` steps in this fresh process and report its peak RSS."""
    cfg, batch = CONFIGS[spec["config"]]
    torch = None
    if spec["framework"] == "torch":
        torch, why = import_torch()
        if torch is None:
            return {"status": why}
    set_threads(spec["threads"], torch)
    rss_imports = peak_rss_mb()          # interpreter + numpy/scipy (+ torch): not the step's
    tokens = random_tokens(cfg, batch)
    if torch is None:
        _, step = simcore_step(cfg, 0, tokens)
    else:
        weights = simcore.SIM(cfg, seed=0).weights   # same initial weights as simcore's
        _, step = torch_step(torch, cfg, weights, tokens)
        del weights
    times = time_calls(step, spec["warmup"], spec["repeats"])
    return {"status": "ok", "times": times, "rss_after_imports_mb": rss_imports,
            "peak_rss_mb": peak_rss_mb(), "ru_maxrss_mb": ru_maxrss_mb(),
            "blas": simcore.blas_info()}


# ---- the benchmark -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--configs", default=None,
                    help=f"comma-separated names from {sorted(CONFIGS)} (default small,medium; "
                         "tiny,tiny-mlp with --quick)")
    ap.add_argument("--skip-original", action="store_true", help="leave out the original preset's step")
    ap.add_argument("--original-torch", action="store_true",
                    help="also time PyTorch on the original preset (another minute or more and ~10 GB)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds after which a measurement stops adding repeats")
    return ap


def resolve(opts) -> None:
    """Fill the defaults that depend on --quick."""
    opts.threads = opts.threads or default_threads()
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if opts.quick else 5)
    opts.warmup = opts.warmup if opts.warmup is not None else 1
    names = opts.configs.split(",") if opts.configs else (["tiny", "tiny-mlp"] if opts.quick else ["small", "medium"])
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)}")
    opts.config_names = names
    opts.peak_squares = [128, 256] if opts.quick else [1024, 2048]


def run(opts) -> dict:
    resolve(opts)
    torch, torch_why = import_torch(opts.no_torch)
    results = {"benchmark": "train", "command": command_line(), "machine": machine_info(torch),
               "threads": opts.threads, "repeats": opts.repeats, "warmup": opts.warmup,
               "torch": torch_why or "ok", "flops_formula": forward_flops_per_token.__doc__,
               "peaks": {}, "rows": [], "memory": [], "original": None, "profiles": [],
               "attention": []}

    peaks = {}  # (framework, threads) -> GFLOP/s; measured once per thread count

    def peak(framework, threads):
        if (framework, threads) not in peaks:
            if framework == "simcore":
                p = sgemm_peak(opts.peak_squares, 1, 3)
            else:
                p = torch_mm_peak(torch, opts.peak_squares, 1, 3)
            peaks[framework, threads] = p["gflops"]
            results["peaks"][f"{framework}@{threads}"] = p
        return peaks[framework, threads]

    for name in opts.config_names:
        cfg, batch = CONFIGS[name]
        flops = train_flops_per_step(cfg, batch)
        tokens = random_tokens(cfg, batch)
        for threads in opts.threads:
            set_threads(threads, torch)
            fns = {}
            model, fns["simcore"] = simcore_step(cfg, 0, tokens)
            if torch is not None:  # copies simcore's initial weights, before any step
                tmodel, fns["torch"] = torch_step(torch, cfg, model.weights, tokens)
            print(f"train: {name} {describe(cfg, batch)}, {threads} thread(s): {', '.join(fns)} ...",
                  file=sys.stderr, flush=True)
            times, first = time_interleaved(fns, opts.warmup, opts.repeats, opts.budget)
            for fw, t in times.items():
                s = summary(t)
                gflops = flops / s["median"] / 1e9
                p = peak(fw, threads)
                row = {"config": name, "desc": describe(cfg, batch), "batch": batch, "threads": threads,
                       "framework": fw, "seconds": s, "tokens_per_s": batch * cfg.seq_len / s["median"],
                       "flops_per_step": flops, "gflops": gflops, "peak_gflops": p, "mfu": gflops / p,
                       "first_loss": first[fw]}
                if fw == "torch":
                    row["torch_over_simcore"] = ratio_summary(t, times["simcore"])
                results["rows"].append(row)
            if threads == max(opts.threads):  # where a simcore step's time goes
                prof = profile_kernels(fns["simcore"], repeats=1 if opts.quick else 3, warmup=0)
                results["profiles"].append({"config": name, "threads": threads, **prof})
                att = time_attention(cfg, batch, opts.warmup, max(3, opts.repeats))
                p = peak("simcore", threads)
                results["attention"].append({"config": name, "threads": threads, **att,
                                             "sgemm_gflops": p, "of_sgemm": att["gflops"] / p})
            del model, fns
            if torch is not None:
                del tmodel

    results["bf16"] = bf16_part(opts, torch)

    if not opts.no_memory:
        # --quick: one config is enough to exercise the children (each PyTorch child
        # spends seconds importing torch).
        for name in opts.config_names[:1] if opts.quick else opts.config_names:
            for fw in ["simcore"] + (["torch"] if torch is not None else []):
                print(f"train: peak memory, {name}, {fw} (fresh process) ...", file=sys.stderr, flush=True)
                r = run_child(SCRIPT, {"config": name, "framework": fw, "threads": max(opts.threads),
                                       "warmup": 0, "repeats": 1}, timeout=1800)
                results["memory"].append({"config": name, "framework": fw, **r})

    if not (opts.skip_original or opts.quick):
        results["original"] = run_original(opts, torch is not None and opts.original_torch)
        for r in results["original"]:  # MFU against the peak measured above at the same threads
            p = results["peaks"].get(f"{r['framework']}@{r['threads']}")
            if p and "gflops" in r:
                r.update(peak_gflops=p["gflops"], mfu=r["gflops"] / p["gflops"])
    return results


def bf16_part(opts, torch) -> dict:
    """bfloat16 (bench_bf16.py's measures) at the largest thread count: the bf16 product
    on the first config's step shapes against torch.mm, and every config's step in
    simcore float32 / bfloat16 and PyTorch float32 / bf16 autocast, with the kernel
    profile of simcore's bf16 step."""
    if not _kernels.bf16_supported():
        return {"status": "skipped", "why": "no bfloat16 dot products (AVX512_BF16) at this vector level"}
    if torch is None:
        return {"status": "skipped", "why": "no PyTorch to compare with"}
    from bench_bf16 import product_rows, step_rows
    set_threads(max(opts.threads), torch)
    cfg, batch = CONFIGS[opts.config_names[0]]
    print("train: bf16 products ...", file=sys.stderr, flush=True)
    return {"status": "ok", "threads": max(opts.threads), "config": opts.config_names[0],
            "products": product_rows(torch, cfg, batch, 3 if opts.quick else 9),
            "steps": step_rows(torch, opts.config_names, max(1, opts.repeats), profile=True)}


def run_original(opts, with_torch: bool) -> list[dict]:
    """The original preset: one fresh process per framework, 1 warm-up + 1 timed step,
    which also gives its peak memory."""
    cfg, batch = CONFIGS["original"]
    out = []
    for fw in ["simcore"] + (["torch"] if with_torch else []):
        print(f"train: original preset, {fw}: 1 warm-up + 1 step in a fresh process "
              "(about a minute per step, ~8 GB) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        r = run_child(SCRIPT, {"config": "original", "framework": fw, "threads": max(opts.threads),
                               "warmup": 1, "repeats": 1}, timeout=3600)
        r.update(config="original", framework=fw, threads=max(opts.threads), desc=describe(cfg, batch),
                 wall_s=time.perf_counter() - t0, flops_per_step=train_flops_per_step(cfg, batch))
        if r.get("status") == "ok":
            s = summary(r["times"])
            r.update(seconds=s, tokens_per_s=batch * cfg.seq_len / s["median"],
                     gflops=r["flops_per_step"] / s["median"] / 1e9)
        out.append(r)
    return out


# ---- report ------------------------------------------------------------------------

def report(results: dict, out: Path) -> str:
    """Markdown for the results; writes the charts into `out`."""
    rows, md = results["rows"], []
    md.append("## Training step\n")
    md.append(f"Each row: {results['warmup']} warm-up + up to {results['repeats']} timed steps; "
              "simcore and PyTorch alternate (A B A B) in one process. Time is median (IQR). "
              "MFU = achieved GFLOP/s / the best measured sgemm GFLOP/s of the same library and "
              "thread count (simcore: its BLAS; PyTorch: torch.mm). FLOPs per step = "
              "3 x B x T x [n_layers (8 d^2 + 4 d h + 2 T d) + head], head = 2 d 256 (linear) "
              "or 2 d h + 2 h 256 (mlp).\n")
    if results["torch"] != "ok":
        md.append(f"PyTorch: {results['torch']}\n")
    table = []
    for r in rows:
        ratio = r.get("torch_over_simcore")
        table.append([r["config"], r["desc"], r["threads"], r["framework"], fmt_time(r["seconds"]),
                      fmt(r["tokens_per_s"]), fmt(r["gflops"]),
                      f"{100 * r['mfu']:.0f}% of {fmt(r['peak_gflops'])}",
                      f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else ""])
    for r in results.get("original") or []:
        if r.get("status") == "ok":
            table.append([r["config"], r["desc"], r["threads"], r["framework"], fmt_time(r["seconds"]),
                          fmt(r["tokens_per_s"]), fmt(r["gflops"]),
                          f"{100 * r['mfu']:.0f}% of {fmt(r['peak_gflops'])}" if "mfu" in r else "",
                          "1 warm-up + 1 step, own process"])
        else:
            table.append([r["config"], r["desc"], r["threads"], r["framework"], r.get("status"), "", "", "",
                          r.get("error", "")])
    md.append(markdown_table(["config", "sizes", "threads", "framework", "ms/step", "tokens/s",
                              "GFLOP/s", "MFU", "torch time / simcore time"], table))
    if results.get("original") is None:
        md.append("\nThe original preset was skipped (--skip-original or --quick).")

    scaling = _thread_scaling(rows)
    if scaling:
        md.append("\n### Thread scaling\n")
        md.append(markdown_table(["config", "framework", "threads", "speed-up over 1 thread"], scaling))

    losses = {(r["config"], r["threads"]): {} for r in rows}
    for r in rows:
        losses[r["config"], r["threads"]][r["framework"]] = r["first_loss"]
    diffs = [abs(v["simcore"] - v["torch"]) for v in losses.values() if "torch" in v]
    if diffs:
        md.append("\nFirst-step losses agree (same weights and batch): "
                  f"largest |simcore - torch| = {max(diffs):.2e} nats.")

    att = results.get("attention") or []
    if att:
        md.append("\n### Attention alone (forward + backward of one layer)\n")
        md.append(f"FLOPs: {' '.join(attention_flops.__doc__.split(',', 1)[1].split())} "
                  "The reference is simcore's BLAS at the same thread count (best square sgemm).\n")
        md.append(markdown_table(
            ["config", "threads", "ms", "GFLOP/s", "sgemm GFLOP/s", "share of sgemm"],
            [[a["config"], a["threads"], fmt_time(a["seconds"]), fmt(a["gflops"]),
              fmt(a["sgemm_gflops"]), f"{100 * a['of_sgemm']:.0f}%"] for a in att]))

    for p in results.get("profiles", []):
        md.append(f"\n### Where a simcore step goes: {p['config']}, {p['threads']} threads\n")
        md.append("Wall time per kernel call site, summed over one `train_step` (mean of a few steps, "
                  "timed separately from the table above; each kernel includes its argument checks; "
                  "forward and backward of a layer are separate kernels).\n")
        md.append(profile_markdown(p))

    bf = results.get("bf16") or {}
    if bf.get("status") == "ok":
        from bench_bf16 import products_markdown, steps_markdown
        md.append(f"\n### bfloat16 (mixed precision), {bf['threads']} threads\n")
        md.append("simcore's `precision=\"bfloat16\"` rounds the operands of every product (projections, MLP, "
                  "head, attention), as PyTorch's `torch.autocast(\"cpu\", dtype=torch.bfloat16)` does; the four "
                  "steps alternate from the same weights, a ratio is the median per-round ratio. The products: "
                  f"simcore's bf16 GEMM on the shapes of a `{bf['config']}` step against PyTorch's bf16 `torch.mm` "
                  "(given bf16 tensors; simcore rounds float32 operands as it packs them, in its own time).\n")
        md.append(steps_markdown(bf["steps"]) + "\n")
        md.append(products_markdown(bf["products"]))
        for r in bf["steps"]:
            if "profile" in r:
                md.append(f"\n#### Where a simcore bfloat16 step goes: {r['profile']['config']}\n")
                md.append(profile_markdown(r["profile"]))
    elif bf:
        md.append(f"\n### bfloat16 (mixed precision)\n\nSkipped: {bf['why']}.")

    mem = results["memory"]
    if mem:
        md.append("\n### Peak memory of one training step (fresh process each)\n")
        md.append("Peak RSS is the child's VmHWM (getrusage's ru_maxrss, also in the JSON, is inherited "
                  "from the parent across fork/exec on Linux). \"After imports\" is the interpreter with "
                  "numpy/scipy (and torch for PyTorch); the difference is the step's own memory.\n")
        table = []
        for m in mem + [o for o in results.get("original") or []]:
            if m.get("status") == "ok":
                table.append([m["config"], m["framework"], fmt(m["peak_rss_mb"]), fmt(m["rss_after_imports_mb"]),
                              fmt(m["peak_rss_mb"] - m["rss_after_imports_mb"])])
            else:
                table.append([m["config"], m["framework"], m.get("status"), m.get("error", ""), ""])
        md.append(markdown_table(["config", "framework", "peak RSS MB", "after imports MB",
                                  "step's own MB"], table))

    groups = {}
    for r in rows:  # tokens/s at the slow (q3) and fast (q1) quartile times: the whisker
        tokens = r["tokens_per_s"] * r["seconds"]["median"]
        groups.setdefault(f"{r['config']}, {r['threads']} thr", []).append(
            (r["framework"], r["tokens_per_s"], tokens / r["seconds"]["q3"], tokens / r["seconds"]["q1"]))
    if groups:
        chart = bar_chart(out / "train_throughput.png", "Training step throughput (higher is better)",
                          list(groups.items()), "tokens / s", note="whiskers: IQR over repeats")
        md.append(f"\n![training throughput]({chart.name})")
    mgroups = {}
    for m in mem:
        if m.get("status") == "ok":
            mgroups.setdefault(m["config"], []).append((m["framework"], m["peak_rss_mb"], None, None))
    if mgroups:
        chart = bar_chart(out / "train_memory.png", "Peak resident memory of one training step (lower is better)",
                          list(mgroups.items()), "MiB (VmHWM of a fresh process)")
        md.append(f"\n![training memory]({chart.name})")
    return "\n".join(md) + "\n"


def _thread_scaling(rows) -> list[list]:
    by = {}
    for r in rows:
        by.setdefault((r["config"], r["framework"]), {})[r["threads"]] = r["seconds"]["median"]
    out = []
    for (cfg, fw), t in by.items():
        if 1 in t and len(t) > 1:
            out += [[cfg, fw, n, f"{t[1] / t[n]:.2f}x"] for n in sorted(t) if n != 1]
    return out


def main(argv=None) -> int:
    return script_main("train", "simcore training benchmark", build_parser, run, report, argv)


if __name__ == "__main__":
    if not child_main(child_job):
        sys.exit(main())
