"""BLAS builds side by side: the same model and thread count on each library.

simcore finds its sgemm at run time (simcore/blas.py), so one build of the
kernels can run on any BLAS. For each backend found on this machine, a fresh
process is started with SIMCORE_BLAS=<library> and measures
  - an sgemm sweep through simcore's sgemm (its threads, panels of one
    single-threaded BLAS call each): square 256..2048 and the model's own
    shapes, [B*T, C] x [C, C], [B*T, C] x [C, H], [B*T, H] x [H, C] and the
    weight gradient x^T @ dy = [C, B*T] x [B*T, H];
  - the training step (ms/step, tokens/s, GFLOP/s, MFU against that backend's
    own best square sgemm).
A backend that is not installed is reported with the command that installs
it (benchmarks/install_blas.sh installs them all), never an error.

Backends run one after another, not interleaved: on a shared machine compare
the load averages recorded in the JSON before trusting small differences.

    python benchmarks/bench_blas.py            # a minute per fast backend; netlib takes ~2
    python benchmarks/bench_blas.py --quick    # seconds
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from charts import bar_chart  # noqa: E402
from children import child_main, run_child  # noqa: E402
from machine import machine_info  # noqa: E402
from report import add_common_args, command_line, fmt, fmt_time, markdown_table, script_main  # noqa: E402
from timing import default_threads, summary, time_calls  # noqa: E402
from workloads import CONFIGS, describe, random_tokens, sgemm_shapes, time_sgemm, train_flops_per_step  # noqa: E402

import simcore  # noqa: E402

SCRIPT = Path(__file__).resolve()
LR = 1e-3

# Where each library lives. Globs first (any multiarch triplet), then `dpkg -L`
# of the packages that ship it, so a different layout is still found.
BACKENDS = [
    dict(name="default (SciPy's OpenBLAS)", path="scipy",
         what="the OpenBLAS bundled in SciPy's PyPI wheels, through scipy.linalg.cython_blas",
         install="pip install scipy"),
    dict(name="Debian OpenBLAS pthread", file="libopenblas.so.0", packages=["libopenblas0-pthread"],
         globs=["/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
                "/usr/lib*/openblas-pthread/libopenblas.so.0"],
         install="apt-get install -y libopenblas0-pthread"),
    dict(name="Debian OpenBLAS OpenMP", file="libopenblas.so.0", packages=["libopenblas0-openmp"],
         globs=["/usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0", "/usr/lib*/openblas-openmp/libopenblas.so.0"],
         install="apt-get install -y libopenblas0-openmp"),
    dict(name="BLIS", file="libblis.so.4", packages=["libblis4-pthread", "libblis4-openmp", "libblis4-serial"],
         globs=["/usr/lib/*-linux-gnu/blis-pthread/libblis.so.4", "/usr/lib/*-linux-gnu/blis-openmp/libblis.so.4",
                "/usr/lib/*-linux-gnu/blis-serial/libblis.so.4", "/usr/lib/*-linux-gnu/libblis.so.4"],
         install="apt-get install -y libblis4-pthread"),
    dict(name="reference BLAS (netlib)", file="libblas.so.3", packages=["libblas3"],
         # Only the blas/ folder: /usr/lib/<triplet>/libblas.so.3 itself is an
         # update-alternatives link that may point at OpenBLAS or BLIS.
         globs=["/usr/lib/*-linux-gnu/blas/libblas.so.3", "/usr/lib*/blas/libblas.so.3"],
         install="apt-get install -y libblas3"),
    dict(name="Intel MKL", file="libmkl_rt.so.2", packages=[],
         globs=[os.path.join(sys.prefix, "lib", "libmkl_rt.so*"), os.path.join(sys.base_prefix, "lib", "libmkl_rt.so*"),
                os.path.expanduser("~/.local/lib/libmkl_rt.so*")],
         install="pip install mkl"),
]

# simcore runs its own OpenMP threads and keeps the BLAS single-threaded inside
# them (simcore/blas.py). Saying so before the library loads also stops it
# from starting a thread pool at all, and keeps MKL from loading Intel's OpenMP
# runtime next to GNU's.
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "BLIS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "MKL_THREADING_LAYER": "SEQUENTIAL"}


def find_library(backend: dict) -> str | None:
    if backend.get("path"):
        return backend["path"]
    for pattern in backend["globs"]:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    for pkg in backend["packages"]:
        try:
            files = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            break  # no dpkg here
        for line in files.splitlines():
            if line.endswith("/" + backend["file"]) and os.path.exists(line):
                return line
    return None


# ---- the child process: one backend ----------------------------------------------------

def child_job(spec: dict) -> dict:
    """Runs with SIMCORE_BLAS already chosen at import: the sweep, then the train step."""
    info = simcore.blas_info()
    result = {"status": "ok", "blas": info}
    want = spec["path"]
    if want != "scipy" and info.get("filepath") and os.path.realpath(want) != info["filepath"]:
        result["warning"] = f"asked for {want}, sgemm resolved in {info['filepath']}"
    simcore.set_threads(spec["threads"])
    cfg, batch = CONFIGS[spec["config"]]
    w, r, budget = spec["warmup"], spec["repeats"], spec["budget"]
    # Each product gets at most 10 s of repeats: netlib's 2048^3 takes seconds a call.
    result["sweep"] = [time_sgemm(s, w, r, min(budget, 10.0))
                       for s in sgemm_shapes(cfg, batch, spec["squares"])]
    result["peak_gflops"] = max(s["gflops"] for s in result["sweep"] if s["name"].startswith("square"))
    model = simcore.SIM(cfg, seed=0)
    tokens = random_tokens(cfg, batch)
    s = summary(time_calls(lambda: model.train_step(tokens, lr=LR), w, r, budget))
    flops = train_flops_per_step(cfg, batch)
    result["train"] = {"seconds": s, "tokens_per_s": batch * cfg.seq_len / s["median"],
                       "gflops": flops / s["median"] / 1e9}
    result["train"]["mfu"] = result["train"]["gflops"] / result["peak_gflops"]
    result["blas_after"] = simcore.blas_info()  # threads as they were during the runs
    return result


# ---- the benchmark -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)  # --no-torch is accepted (and irrelevant) so compare.py can pass it on
    ap.add_argument("--config", default=None, help="model for the train step and the model shapes "
                                                   "(default small; tiny with --quick)")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds after which a measurement stops adding repeats (slow backends)")
    return ap


def resolve(opts) -> None:
    # One thread count for all backends: the comparison is between libraries.
    opts.threads = opts.threads or [max(default_threads())]
    opts.repeats = opts.repeats if opts.repeats is not None else (1 if opts.quick else 3)
    opts.warmup = opts.warmup if opts.warmup is not None else 1
    opts.config = opts.config or ("tiny" if opts.quick else "small")
    if opts.config not in CONFIGS:
        raise SystemExit(f"unknown config {opts.config!r}; choose from {sorted(CONFIGS)}")
    opts.squares = [64, 128] if opts.quick else [256, 512, 1024, 2048]


def run(opts) -> dict:
    resolve(opts)
    cfg, batch = CONFIGS[opts.config]
    results = {"benchmark": "blas", "command": command_line(), "machine": machine_info(),
               "config": opts.config, "desc": describe(cfg, batch), "threads": opts.threads,
               "repeats": opts.repeats, "warmup": opts.warmup, "backends": []}
    for backend in BACKENDS:
        path = find_library(backend)
        for threads in opts.threads:
            row = {"name": backend["name"], "path": path, "threads": threads}
            if path is None:
                row["status"] = f"not available: install with `{backend['install']}`"
                results["backends"].append(row)
                continue
            print(f"blas: {backend['name']} ({path}), {threads} thread(s), fresh process ...",
                  file=sys.stderr, flush=True)
            env = dict(CHILD_ENV, SIMCORE_BLAS=None if path == "scipy" else path)
            spec = {"path": path, "threads": threads, "config": opts.config, "warmup": opts.warmup,
                    "repeats": opts.repeats, "budget": opts.budget, "squares": opts.squares}
            row.update(run_child(SCRIPT, spec, env=env, timeout=1800))
            row["load_average"] = list(os.getloadavg())
            results["backends"].append(row)
    return results


# ---- report ------------------------------------------------------------------------

def report(results: dict, out: Path) -> str:
    md = ["## BLAS builds\n"]
    md.append(f"Same kernels, model {results['config']} ({results['desc']}), each backend in its own "
              "process with SIMCORE_BLAS=<library>, simcore's threads around a single-threaded BLAS. "
              f"{results['warmup']} warm-up + up to {results['repeats']} timed calls; time is median (IQR). "
              "MFU = train GFLOP/s / the backend's best square sgemm GFLOP/s. Backends run one after another "
              "(not interleaved).\n")
    ok = [b for b in results["backends"] if b.get("status") == "ok"]
    default = next((b for b in ok if b["path"] == "scipy"), None)
    table = []
    for b in results["backends"]:
        if b.get("status") != "ok":
            table.append([b["name"], b["threads"], b.get("status") + (f": {b['error']}" if b.get("error") else ""),
                          "", "", "", "", "", ""])
            continue
        info, t = b["blas"], b["train"]
        lib = " ".join(str(x) for x in (info.get("internal_api"), info.get("version"), info.get("architecture"),
                                        info.get("threading_layer")) if x)
        lib = f"{lib or info.get('interface')} `{info.get('filepath')}`"
        if b.get("warning"):
            lib += f" (warning: {b['warning']})"
        vs = ""
        if default and default["threads"] == b["threads"]:
            vs = f"{t['seconds']['median'] / default['train']['seconds']['median']:.2f}x"
        table.append([b["name"], b["threads"], lib, fmt(b["peak_gflops"]), fmt_time(t["seconds"]),
                      fmt(t["tokens_per_s"]), fmt(t["gflops"]), f"{100 * t['mfu']:.0f}%", vs])
    md.append(markdown_table(["backend", "threads", "library", "sgemm peak GFLOP/s", "train ms/step",
                              "tokens/s", "GFLOP/s", "MFU", "time / default"], table))
    if ok:
        md.append("\n### sgemm sweep (GFLOP/s, through simcore's sgemm)\n")
        heads = [f"{b['name']} ({b['threads']} thr)" for b in ok]
        shapes = [s["name"] for s in ok[0]["sweep"]]
        rows = [[name] + [fmt(next(s["gflops"] for s in b["sweep"] if s["name"] == name)) for b in ok]
                for name in shapes]
        md.append(markdown_table(["shape"] + heads, rows))
        groups = [(name, [(h, next(s["gflops"] for s in b["sweep"] if s["name"] == name), None, None)
                          for h, b in zip(heads, ok)]) for name in shapes]
        chart = bar_chart(out / "blas_sgemm.png", "sgemm through simcore, by BLAS (higher is better)",
                          groups, "GFLOP/s")
        md.append(f"\n![sgemm by BLAS]({chart.name})")
        groups = [(h, [("train step", b["train"]["tokens_per_s"],
                        b["train"]["tokens_per_s"] * b["train"]["seconds"]["median"] / b["train"]["seconds"]["q3"],
                        b["train"]["tokens_per_s"] * b["train"]["seconds"]["median"] / b["train"]["seconds"]["q1"])])
                  for h, b in zip(heads, ok)]
        chart = bar_chart(out / "blas_train.png", f"Training step by BLAS, {results['config']} "
                          "(higher is better)", groups, "tokens / s", note="whiskers: IQR over repeats")
        md.append(f"\n![train step by BLAS]({chart.name})")
    # OpenBLAS picks its kernels by CPU model at load time; a release older than
    # the CPU falls back to a generic x86-64 kernel, which is then what we measure.
    generic = [b["name"] for b in ok if str(b["blas"].get("architecture")).lower() in ("prescott", "generic")]
    if generic:
        md.append(f"\nNote: {', '.join(generic)} did not recognise this CPU and runs its generic "
                  "(Prescott) kernels; `OPENBLAS_CORETYPE=SkylakeX` (or `Haswell`) in the environment "
                  "of this benchmark forces a better one.")
    missing = [b for b in results["backends"] if str(b.get("status", "")).startswith("not available")]
    if missing:
        md.append("\nInstall every missing backend at once: `bash benchmarks/install_blas.sh` (apt + pip).")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    return script_main("blas", "simcore BLAS benchmark", build_parser, run, report, argv)


if __name__ == "__main__":
    if not child_main(child_job):
        sys.exit(main())
