"""bfloat16 against PyTorch: the product (csrc/bf16.c) on the shapes of a `small` training
step, against PyTorch's bf16 torch.mm and simcore's float32 sgemm; then whole training
steps (`small` and `medium`, B=16): simcore float32 and bfloat16, PyTorch float32 and
its bf16 autocast. Everything timed in alternation.

simcore's bgemm takes float32 operands and rounds them as it packs them; torch.mm is
given tensors already in bfloat16 (as autocast hands them over), so the rounding is in
simcore's time and not in PyTorch's.

    python benchmarks/bench_bf16.py                       # B=16, 2 threads
    python benchmarks/bench_bf16.py --md benchmarks/results/amd-epyc-zen5/bf16.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import paths  # noqa: F401  (before simcore: the checkout when simcore is not installed)
from machine import import_torch, machine_info, machine_markdown
from paths import portable_text
from report import markdown_table
from timing import time_interleaved
from workloads import CONFIGS, random_tokens

import simcore
from simcore import _kernels as K


def step_shapes(B: int, cfg) -> list[tuple[str, int, int, int, bool, bool]]:
    """(what, M, K, N, trans_a, trans_b) of every product shape in a training step."""
    R, C, H, V = B * cfg.seq_len, cfg.d_model, cfg.d_hidden, 256
    return [("q/k/v/o forward", R, C, C, False, False), ("mlp w1 forward", R, C, H, False, False),
            ("mlp w2 forward", R, H, C, False, False), ("head forward", R, C, V, False, False),
            ("dx = dy w^T (C->C)", R, C, C, False, True), ("dx = dy w1^T", R, H, C, False, True),
            ("dw = x^T dy (C x C)", C, R, C, True, False), ("dw1 = x^T dy (C x H)", C, R, H, True, False)]


def product_rows(torch, cfg, batch: int, repeats: int) -> list[dict]:
    """simcore's bgemm, PyTorch's bf16 torch.mm and simcore's sgemm on every product shape
    of a step of cfg at this batch, in alternation."""
    rng = np.random.default_rng(0)
    rows = []
    for what, M, Kd, N, ta, tb in step_shapes(batch, cfg):
        a = rng.standard_normal((Kd, M) if ta else (M, Kd)).astype(np.float32)
        b = rng.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
        out = np.empty((M, N), np.float32)
        ta_, tb_ = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
        ta_, tb_ = (ta_.t() if ta else ta_), (tb_.t() if tb else tb_)
        times, _ = time_interleaved({"bgemm": lambda: K.bgemm(out, a, b, ta, tb),
                                     "torch": lambda: torch.mm(ta_, tb_),
                                     "sgemm": lambda: K.sgemm(out, a, b, ta, tb)},
                                    warmup=2, repeats=repeats)
        rows.append({"what": what, "shape": f"{M} x {Kd} x {N}",
                     "gflops": {k: 2 * M * N * Kd / statistics.median(v) / 1e9 for k, v in times.items()},
                     "of_torch": statistics.median(t / s for s, t in zip(times["bgemm"], times["torch"]))})
        print(f"{what}: {rows[-1]['of_torch']:.2f} of torch.mm's speed", file=sys.stderr, flush=True)
    return rows


def products_markdown(rows: list[dict]) -> str:
    return markdown_table(["product", "M x K x N", "simcore bf16 GFLOP/s", "torch bf16 GFLOP/s",
                           "simcore f32 GFLOP/s", "simcore bf16 / torch bf16 (speed)"],
                          [[r["what"], r["shape"], *(f"{r['gflops'][k]:.0f}" for k in ("bgemm", "torch", "sgemm")),
                            f"{r['of_torch']:.2f}"] for r in rows])


STEP_FNS = ("simcore f32", "simcore bf16", "torch f32", "torch autocast")


def step_rows(torch, configs, repeats: int, profile: bool = False) -> list[dict]:
    """simcore float32 / bfloat16 and PyTorch float32 / bf16 autocast train steps, in
    alternation, from the same weights; with profile, where simcore's bf16 step goes."""
    from bench_train import torch_step
    from timing import profile_kernels
    rows = []
    for name in configs:
        cfg, batch = CONFIGS[name]
        tokens = random_tokens(cfg, batch)
        m32, m16 = simcore.SIM(cfg, seed=0), simcore.SIM(cfg, seed=0, precision="bfloat16")
        _, tstep = torch_step(torch, cfg, {k: v.copy() for k, v in m32.weights.items()}, tokens)

        def autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return tstep()
        fns = dict(zip(STEP_FNS, (lambda: m32.train_step(tokens, lr=1e-4), lambda: m16.train_step(tokens, lr=1e-4),
                                  tstep, autocast)))
        print(f"bf16 steps: {name} ...", file=sys.stderr, flush=True)
        times, _ = time_interleaved(fns, warmup=1, repeats=repeats)
        ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
        row = {"config": name, "batch": batch, "ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
               "autocast_over_bf16": ratio("torch autocast", "simcore bf16"),
               "torch_f32_over_bf16": ratio("torch f32", "simcore bf16"),
               "f32_over_bf16": ratio("simcore f32", "simcore bf16")}
        if profile:
            row["profile"] = {"config": f"{name}, bfloat16", **profile_kernels(fns["simcore bf16"], repeats=3,
                                                                               warmup=0)}
        rows.append(row)
    return rows


def steps_markdown(rows: list[dict]) -> str:
    return markdown_table([f"config (B={rows[0]['batch']})" if rows else "config", *STEP_FNS,
                           "simcore bf16 faster than autocast", "than PyTorch f32", "than simcore f32"],
                          [[r["config"], *(f"{r['ms'][k]:,.0f}" for k in STEP_FNS),
                            f"{r['autocast_over_bf16']:.2f}x", f"{r['torch_f32_over_bf16']:.2f}x",
                            f"{r['f32_over_bf16']:.2f}x"] for r in rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--step-repeats", type=int, default=5, help="timed rounds of the whole steps")
    ap.add_argument("--md", type=Path, default=None, help="also write the report here")
    opts = ap.parse_args(argv)
    if not K.bf16_supported():
        raise SystemExit("this CPU has no bfloat16 dot products (AVX512_BF16): nothing to measure")
    torch, why = import_torch()
    if torch is None:
        raise SystemExit(f"PyTorch, the comparison: {why}")
    simcore.set_threads(opts.threads)
    torch.set_num_threads(opts.threads)
    machine = machine_info(torch)
    table = products_markdown(product_rows(torch, simcore.Config.preset("small"), opts.batch, opts.repeats))
    steps = steps_markdown(step_rows(torch, ("small", "medium"), opts.step_repeats))
    table += "\n\nWhole training steps (forward, backward, clip, optimizer), milliseconds:\n\n" + steps
    command = " ".join(["python benchmarks/bench_bf16.py"] + (argv if argv is not None else sys.argv[1:]))
    text = (f"# bfloat16: the product and the training step\n\n`{command}`\n\n{machine_markdown(machine)}\n\n"
            f"`small` preset's products, B={opts.batch}, {opts.threads} threads, medians of {opts.repeats} "
            f"alternating calls ({opts.step_repeats} rounds of the whole steps); a ratio is the median per-round "
            f"ratio. simcore bf16 rounds the operands of every product: the projections', the MLP's, the head's "
            f"and attention's, as PyTorch's autocast does.\n\n{table}\n")
    print(table)
    if opts.md:
        opts.md.write_text(portable_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
