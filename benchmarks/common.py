"""Shared by the benchmark scripts: the benchmarked configurations, the FLOP
formula, timing, the sgemm sweep, machine information, fresh child processes,
and the output files (JSON, markdown tables, PNG bar charts).

Each script puts its own folder on sys.path and imports this module, so
`python benchmarks/bench_train.py` works from the repository root.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"

# `python benchmarks/x.py` puts benchmarks/ on sys.path, not the repository root:
# use the checkout (built in place) when simcore is not installed.
if importlib.util.find_spec("simcore") is None:
    sys.path.insert(0, str(REPO))

import simcore  # noqa: E402
from simcore import _kernels  # noqa: E402
from simcore.config import VOCAB, Config  # noqa: E402

# The environment that caps every library in a run at one vector level (read by each
# library when it loads, so a level needs a fresh process): simcore's kernels, its
# OpenBLAS (AVX2: Haswell kernels), PyTorch's ATen kernels, oneDNN and MKL. None =
# leave unset (the library's own choice). At the baseline level neither side's BLAS
# is capped: MKL (PyTorch's sgemm) ignores MKL_ENABLE_INSTRUCTIONS on AMD CPUs
# (torch.mm ran at the same 181 GFLOP/s with SSE4_2 as without, EPYC Zen 4), so
# capping OpenBLAS alone would compare SSE GEMMs with AVX-512 ones.
LEVEL_CAPS = ("SIMCORE_ISA", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
              "MKL_ENABLE_INSTRUCTIONS")
LEVEL_ENV = {
    "avx512": dict(zip(LEVEL_CAPS, ("avx512", None, "avx512", "AVX512_CORE", "AVX512"))),
    "avx2": dict(zip(LEVEL_CAPS, ("avx2", "Haswell", "avx2", "AVX2", "AVX2"))),
    "baseline": dict(zip(LEVEL_CAPS, ("baseline", None, "default", "SSE41", "SSE4_2"))),
}

TORCH_INSTALL = "pip install .[torch]  (the pinned CPU build, see pyproject.toml)"

# name -> (config, batch size). T = 784 tokens per image for the real sizes.
CONFIGS = {
    "small": (Config.preset("small"), 16),
    "medium": (Config(d_model=256, d_hidden=1024, n_layers=6, n_heads=8), 16),
    "original": (Config.preset("original"), 32),
    # --quick: tiny sizes so a smoke run takes seconds; one of each norm/head kind,
    # so both FLOP formulas and both code paths run.
    "tiny": (Config(d_model=32, d_hidden=64, n_layers=2, n_heads=2, image_size=8), 4),
    "tiny-mlp": (Config.preset("original", d_model=32, d_hidden=64, n_layers=2, image_size=8), 4),
}


def describe(cfg: Config, batch: int | None = None) -> str:
    """'d128 h512 L4 H4 rmsnorm/linear T784 B16', for tables."""
    s = (f"d{cfg.d_model} h{cfg.d_hidden} L{cfg.n_layers} H{cfg.n_heads} "
         f"{cfg.norm}/{cfg.head} T{cfg.seq_len}")
    return s + (f" B{batch}" if batch else "")


# ---- FLOPs ------------------------------------------------------------------------

def forward_flops_per_token(cfg: Config, T: int | None = None) -> float:
    """Matmul FLOPs of one forward pass per token (a multiply-add counts 2).

    With d = d_model, h = d_hidden, T = tokens per sequence (784 for 28x28):

      per layer    q, k, v, o projections   4 * 2*d*d             = 8 d^2
                   MLP w1 and w2            2 * 2*d*h             = 4 d h
                   causal attention         QK^T and AV: 2 * 2*d per earlier
                                            position, T/2 of them
                                            on average            = 2 T d
      head         linear                   2 d 256
                   mlp                      2 d h + 2 h 256

      forward per token = n_layers * (8 d^2 + 4 d h + 2 T d) + head

    Not counted: embedding, norms, softmax, SiLU, loss and AdamW, all O(d) per
    token. T defaults to the full sequence (cfg.seq_len).
    """
    d, h, L = cfg.d_model, cfg.d_hidden, cfg.n_layers
    T = cfg.seq_len if T is None else T
    head = 2 * d * VOCAB if cfg.head == "linear" else 2 * d * h + 2 * h * VOCAB
    return L * (8 * d * d + 4 * d * h + 2 * T * d) + head


def train_flops_per_step(cfg: Config, batch: int) -> float:
    """One training step = 3 x forward (the backward pass does two matmuls,
    dX and dW, per forward matmul), over batch * T tokens."""
    return 3 * batch * cfg.seq_len * forward_flops_per_token(cfg)


# ---- timing -------------------------------------------------------------------------

def time_calls(fn, warmup: int = 1, repeats: int = 5, budget: float | None = None) -> list[float]:
    """Seconds per call of fn(): `warmup` untimed calls, then up to `repeats`
    timed ones, stopping early (after at least one) once `budget` seconds have
    gone, so a slow backend cannot take all afternoon."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < max(1, repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if budget is not None and time.perf_counter() - start > budget:
            break
    return times


def profile_kernels(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Where fn's wall time goes, kernel by kernel: every function of
    simcore._kernels is wrapped with a timer (about 0.3 us a call) while fn runs,
    so a kernel's time includes its argument checks; what is left of the total
    is NumPy and Python between the kernels. Returns total seconds per call and
    seconds per call for each kernel that ran."""
    import simcore._kernels as K
    names = [n for n in dir(K) if not n.startswith("_") and callable(getattr(K, n))]
    orig = {n: getattr(K, n) for n in names}
    spent = dict.fromkeys(names, 0.0)

    def timed(name, f):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
        return call

    try:
        for n in names:
            setattr(K, n, timed(n, orig[n]))
        for _ in range(warmup):
            fn()
        spent.update(dict.fromkeys(names, 0.0))
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        total = (time.perf_counter() - t0) / repeats
    finally:
        for n, f in orig.items():
            setattr(K, n, f)
    return {"total_s": total, "kernels_s": {n: v / repeats for n, v in spent.items() if v > 0}}


def profile_markdown(prof: dict, scale: float = 1e3, unit: str = "ms") -> str:
    """A profile_kernels result as a table, largest first, with the remainder."""
    total, parts = prof["total_s"], prof["kernels_s"]
    rows = [[f"`{n}`", fmt(v * scale), f"{v / total:.0%}"] for n, v in sorted(parts.items(), key=lambda kv: -kv[1])]
    rest = total - sum(parts.values())
    rows.append(["NumPy and Python between kernels", fmt(rest * scale), f"{rest / total:.0%}"])
    rows.append(["**total**", fmt(total * scale), "100%"])
    return markdown_table(["kernel", unit, "share"], rows)


def time_interleaved(fns: dict, warmup: int = 1, repeats: int = 5,
                     budget: float | None = None) -> tuple[dict, dict]:
    """Time several functions in alternation (A B A B ...), so that a shared,
    noisy machine slows them alike and the per-round ratios stay meaningful.
    Returns ({name: [seconds]}, {name: what its first call returned})."""
    first = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            out = fn()
            first.setdefault(name, out)
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            first.setdefault(name, out)
        if budget is not None and time.perf_counter() - start > budget:
            break
    return times, first


def summary(times) -> dict:
    """Median, quartiles (IQR), min, max and count of a list of seconds."""
    a = np.asarray(times, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3),
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size),
            "times": [float(x) for x in a]}


def ratio_summary(num, den) -> dict:
    """Per-round ratios num[i] / den[i] of interleaved timings: median, min, max."""
    r = np.asarray(num[:len(den)], np.float64) / np.asarray(den[:len(num)], np.float64)
    return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max()),
            "n": int(r.size)}


def default_threads() -> list[int]:
    """1 and every core this process may use (thread scaling)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return [1, n] if n > 1 else [1]


def set_threads(n: int, torch=None) -> None:
    """The same thread count for simcore (OpenMP, BLAS single-threaded inside)
    and for PyTorch's intra-op pool."""
    simcore.set_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def random_tokens(cfg: Config, batch: int, seed: int = 0) -> np.ndarray:
    """uint8 [B, T]: a class label in pixel 0, random intensities after it
    (the kernels' cost does not depend on the values)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(batch, cfg.seq_len), dtype=np.uint8)
    tokens[:, 0] = rng.integers(0, cfg.n_classes, size=batch)
    return tokens


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB.

    VmHWM (/proc/self/status): the high-water mark of this process's own address
    space, which starts afresh at exec. ru_maxrss alone would not do for child
    processes: Linux carries it over fork and exec, so a child started by a
    300 MB parent reports at least 300 MB (measured here: 789 MB for a child of
    an 800 MB parent whose own peak was 9 MB). ru_maxrss where there is no /proc.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """getrusage's peak resident memory (KiB on Linux), inherited across fork/exec."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- sgemm ----------------------------------------------------------------------------

def sgemm_shapes(cfg: Config, batch: int, squares=(256, 512, 1024, 2048)) -> list[dict]:
    """Square products, then the model's own: N = B*T rows, C = d_model, H = d_hidden."""
    N, C, H = batch * cfg.seq_len, cfg.d_model, cfg.d_hidden
    shapes = [dict(name=f"square {s}", M=s, K=s, N=s, trans_a=False) for s in squares]
    shapes += [
        dict(name=f"x @ wq [{N},{C}]x[{C},{C}]", M=N, K=C, N=C, trans_a=False),
        dict(name=f"x @ w1 [{N},{C}]x[{C},{H}]", M=N, K=C, N=H, trans_a=False),
        dict(name=f"h @ w2 [{N},{H}]x[{H},{C}]", M=N, K=H, N=C, trans_a=False),
        dict(name=f"x^T @ dy [{C},{N}]x[{N},{H}]", M=C, K=N, N=H, trans_a=True),
    ]
    return shapes


def time_sgemm(shape: dict, warmup: int, repeats: int, budget: float | None) -> dict:
    """GFLOP/s of simcore's sgemm (its threads, the BLAS it was pointed at)."""
    M, K, N, ta = shape["M"], shape["K"], shape["N"], shape["trans_a"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    out = np.empty((M, N), np.float32)
    s = summary(time_calls(lambda: _kernels.sgemm(out, a, b, ta), warmup, repeats, budget))
    return dict(shape, seconds=s, gflops=2.0 * M * N * K / s["median"] / 1e9)


def sgemm_peak(squares, warmup: int, repeats: int, budget: float | None = None) -> dict:
    """The best measured sgemm GFLOP/s over square sizes: the ceiling for MFU."""
    sweep = [time_sgemm(dict(name=f"square {s}", M=s, K=s, N=s, trans_a=False),
                        warmup, repeats, budget) for s in squares]
    return {"gflops": max(r["gflops"] for r in sweep), "sweep": sweep}


def torch_mm_peak(torch, squares, warmup: int, repeats: int, budget: float | None = None) -> dict:
    """The same for torch.mm (PyTorch's own BLAS) at its current thread count."""
    sweep = []
    for s in squares:
        a, b = torch.randn(s, s), torch.randn(s, s)
        out = torch.empty(s, s)
        t = summary(time_calls(lambda: torch.mm(a, b, out=out), warmup, repeats, budget))
        sweep.append({"name": f"square {s}", "seconds": t, "gflops": 2.0 * s ** 3 / t["median"] / 1e9})
    return {"gflops": max(r["gflops"] for r in sweep), "sweep": sweep}


# ---- optional torch -------------------------------------------------------------------

def import_torch(disabled: bool = False):
    """(torch, None) or (None, why not): PyTorch is an optional comparison."""
    if disabled:
        return None, "skipped (--no-torch)"
    try:
        import torch
    except ImportError:
        return None, f"not available: install with `{TORCH_INSTALL}`"
    return torch, None


# ---- the machine ------------------------------------------------------------------------

def _cpuinfo() -> dict:
    model, flags, cores, logical = None, set(), set(), 0
    phys = core = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    logical += 1
                elif key == "model name" and model is None:
                    model = val
                elif key == "flags" and not flags:
                    flags = set(val.split())
                elif key == "physical id":
                    phys = val
                elif key == "core id":
                    core = val
                    cores.add((phys, core))
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    return {"model": model or platform.processor() or platform.machine(),
            "logical_cpus": logical or os.cpu_count(),
            "physical_cores": len(cores) or None,
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "simd": [f for f in wanted if f in flags]}


def _meminfo_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def _git() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = run("rev-parse", "--short", "HEAD")
    return {"commit": commit or None, "dirty": bool(run("status", "--porcelain")) if commit else None}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or no __version__
        return None


def machine_info(torch=None) -> dict:
    """What ran the benchmark: CPU, memory, load, library versions, the BLAS."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpuinfo(),
        "memory_gb": _meminfo_gb(),
        # The machine may be shared: the load says how much to trust absolute times.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("simcore", "numpy", "scipy", "threadpoolctl", "PIL")},
        "git": _git(),
        "blas": simcore.blas_info(),
        "simcore_cpu": simcore.cpu_info(),
        "env": {k: os.environ[k] for k in ("SIMCORE_BLAS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                            "MKL_NUM_THREADS", *LEVEL_CAPS) if k in os.environ},
    }
    if torch is not None:
        info["versions"]["torch"] = torch.__version__
        info["torch"] = {"num_threads": torch.get_num_threads(),
                         "mkl": torch.backends.mkl.is_available(),
                         "mkldnn": torch.backends.mkldnn.is_available(),
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return info


def machine_markdown(m: dict) -> str:
    cpu, v, b = m["cpu"], m["versions"], m["blas"]
    load = ", ".join(f"{x:.2f}" for x in m["load_average"]) if m.get("load_average") else "?"
    versions = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    git = m["git"]
    lines = [
        f"- Machine: {cpu['model']}, {cpu['logical_cpus']} logical CPUs "
        f"({cpu['physical_cores'] or '?'} physical cores, {cpu['usable_cpus']} usable), "
        f"{m['memory_gb']} GB RAM, SIMD: {' '.join(cpu['simd']) or 'none detected'}",
        f"- Load average at start: {load} (a shared machine slows absolute times; "
        "the interleaved ratios hold better)",
        f"- Python {m['python']}; {versions}",
        f"- simcore BLAS: {b.get('library')} via {b.get('interface')} "
        f"({b.get('internal_api') or '?'} {b.get('version') or ''} {b.get('architecture') or ''}".rstrip()
        + f"), file {b.get('filepath')}",
        f"- simcore vector level: **{m['simcore_cpu']['isa']}** (this CPU runs "
        f"{', '.join(m['simcore_cpu']['supported'])})"
        + (f"; caps in force: {', '.join(f'{k}={v}' for k, v in m['env'].items() if k in LEVEL_CAPS)}"
           if any(k in LEVEL_CAPS for k in m.get("env", {})) else ""),
        f"- Commit {git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''}, {m['date_utc']}",
    ]
    if "torch" in m:
        t = m["torch"]
        lines.append(f"- PyTorch {v.get('torch')}: MKL {t['mkl']}, oneDNN {t['mkldnn']}, "
                     f"CPU capability {t['cpu_capability']}")
    return "\n".join(lines)


# ---- child processes ------------------------------------------------------------------

_RESULT = "BENCH-RESULT "


def run_child(script: Path, spec: dict, env: dict | None = None, timeout: float | None = None) -> dict:
    """Run `python script --child JSON` in a fresh process and return the JSON it
    prints. A fresh process keeps peak memory (VmHWM) per job and lets each
    job load a different BLAS. Never raises: a crash comes back as
    {"status": "failed", "error": ...}."""
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = str(v)
    cmd = [sys.executable, str(script), "--child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    why = f"killed by signal {-p.returncode}" if p.returncode < 0 else f"exit code {p.returncode}"
    lines = p.stderr.strip().splitlines()  # the last line of a traceback names the error
    return {"status": "failed", "error": f"{why}: {lines[-1].strip()}" if lines else why,
            "stderr_tail": lines[-20:]}


def child_main(job) -> bool:
    """If this process is a child (`--child JSON` on the command line), run job(spec),
    print its result for run_child and return True."""
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        return False
    try:
        result = job(json.loads(sys.argv[2]))
    except Exception as e:  # report, don't crash: the parent prints a table row
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    print(_RESULT + json.dumps(result, default=_json_default), flush=True)
    return True


# ---- command line and output files ----------------------------------------------------

def positive_ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny models, 1 repeat, seconds; writes under results/quick/")
    ap.add_argument("--threads", type=positive_ints, default=None,
                    help=f"comma-separated thread counts (default {','.join(map(str, default_threads()))})")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up calls per measurement")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="also write the results JSON to PATH")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="folder for JSON, markdown and PNG "
                         "(default benchmarks/results, or benchmarks/results/quick with --quick)")


def out_dir(opts) -> Path:
    d = opts.out_dir or (RESULTS / "quick" if opts.quick else RESULTS)
    d.mkdir(parents=True, exist_ok=True)
    return d


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (np.ndarray, Path)):
        return x.tolist() if isinstance(x, np.ndarray) else str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)


def save(name: str, results: dict, markdown: str, opts) -> list[Path]:
    """name.json and name.md in the output folder (plus --json PATH)."""
    d = out_dir(opts)
    written = [d / f"{name}.json", d / f"{name}.md"]
    write_json(written[0], results)
    written[1].write_text(markdown)
    if opts.json is not None:
        write_json(opts.json, results)
        written.append(opts.json)
    return written


def publish(name: str, title: str, results: dict, body: str, opts) -> None:
    """The report every script ends with: a title, the command, the machine, then
    `body`; written as name.md and name.json (see save) and printed."""
    md = f"# {title}\n\n`{results['command']}`\n\n" + machine_markdown(results["machine"]) + "\n\n" + body
    for p in save(name, results, md, opts):
        print(f"wrote {p}", file=sys.stderr)
    print(md)


def script_main(name: str, title: str, build_parser, run, report, argv=None) -> int:
    """main() of one benchmark script: parse, run, report."""
    opts = build_parser().parse_args(argv)
    results = run(opts)
    publish(name, title, results, report(results, out_dir(opts)), opts)
    return 0


def fmt(x, digits: int = 3) -> str:
    """Numbers for tables: 3 significant digits, thousands separated; None -> 'n/a'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_time(s: dict | None, scale: float = 1e3) -> str:
    """'median (q1-q3)' of a timing summary, in ms by default."""
    if not s:
        return "n/a"
    if s["n"] == 1:
        return fmt(s["median"] * scale)
    return f"{fmt(s['median'] * scale)} ({fmt(s['q1'] * scale)}-{fmt(s['q3'] * scale)})"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# ---- PNG bar charts (Pillow only) -------------------------------------------------------

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)  # scalable, Pillow >= 10.1
    except (TypeError, OSError):
        return ImageFont.load_default()


def _nice_step(span: float) -> float:
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def bar_chart(path: Path, title: str, groups: list, unit: str, log: bool = False,
              note: str | None = None) -> Path:
    """A horizontal grouped bar chart.

    groups: [(group label, [(series label, value or None, lo or None, hi or None)])];
    bars of one series share a colour (legend on top); lo..hi is drawn as a
    whisker (the IQR); a None value is written "n/a". log=True for values
    spanning decades (e.g. the original sampler against the cached one).
    """
    from PIL import Image, ImageDraw

    font, big = _font(13), _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s, f=font: probe.textbbox((0, 0), s, font=f)[2]  # noqa: E731
    series = list(dict.fromkeys(s for _, bars in groups for s, *_ in bars))
    colour = {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(series)}
    values = [x for _, bars in groups for _, v, lo, hi in bars for x in (v, lo, hi) if x]
    values = [x for x in values if x > 0] or [1.0]

    bar_h, gap, width = 18, 14, 1000
    x0 = max([text_w(g) for g, _ in groups] + [60]) + 20
    x1 = width - 80
    legend_rows, x = 1, 20
    for s in series:  # wrap the legend
        w = text_w(s) + 40
        if x + w > width - 20:
            legend_rows, x = legend_rows + 1, 20
        x += w
    top = 40 + 20 * legend_rows + 10
    height = top + sum(len(b) * bar_h + gap for _, b in groups) + 50 + (20 if note else 0)

    if log:
        lo_dec = math.floor(math.log10(min(values)))
        hi_dec = max(math.ceil(math.log10(max(values))), lo_dec + 1)
        to_x = lambda v: x0 + (math.log10(v) - lo_dec) / (hi_dec - lo_dec) * (x1 - x0)  # noqa: E731
        ticks = [10.0 ** k for k in range(lo_dec, hi_dec + 1)]
    else:
        step = _nice_step(max(values))
        vmax = step * math.ceil(max(values) / step)
        to_x = lambda v: x0 + v / vmax * (x1 - x0)  # noqa: E731
        ticks = [step * i for i in range(int(round(vmax / step)) + 1)]

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 10), title, fill="black", font=big)
    x, y = 20, 40
    for s in series:
        w = text_w(s) + 40
        if x + w > width - 20:
            x, y = 20, y + 20
        d.rectangle([x, y + 2, x + 14, y + 14], fill=colour[s])
        d.text((x + 20, y), s, fill="black", font=font)
        x += w
    bottom = height - 50 - (20 if note else 0)
    for t in ticks:
        tx = to_x(t)
        d.line([tx, top - 4, tx, bottom], fill=(225, 225, 225))
        label = fmt(t)
        d.text((tx - text_w(label) / 2, bottom + 4), label, fill="black", font=font)
    d.text((x0 + (x1 - x0) / 2 - text_w(unit) / 2, bottom + 22), unit, fill="black", font=font)
    d.line([x0, top - 4, x0, bottom], fill="black")

    y = top
    for label, bars in groups:
        gh = len(bars) * bar_h
        d.text((x0 - 10 - text_w(label), y + gh / 2 - 8), label, fill="black", font=font)
        for s, v, lo, hi in bars:
            if v is None or v <= 0:
                d.text((x0 + 6, y + 2), f"{s}: n/a", fill=(120, 120, 120), font=font)
            else:
                d.rectangle([x0, y + 2, max(x0 + 1, to_x(v)), y + bar_h - 2], fill=colour[s])
                if lo and hi and lo > 0 and hi > lo:
                    ym = y + bar_h / 2
                    d.line([to_x(lo), ym, to_x(hi), ym], fill="black", width=1)
                    for e in (lo, hi):
                        d.line([to_x(e), ym - 4, to_x(e), ym + 4], fill="black")
                d.text((max(to_x(v), to_x(hi) if hi else 0) + 6, y + 2), fmt(v), fill="black", font=font)
            y += bar_h
        y += gap
    if note:
        d.text((20, height - 24), note, fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
