"""What a benchmark script hands back: its command line (the options every script
shares), the output folder and files (JSON, markdown), and the text in them (numbers,
timings, tables, the kernel profile). The charts are charts.bar_chart. Reports are
committed, so every path in them is named as paths.portable names it (relative to the
repository or the home folder), never as this machine's absolute path.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from machine import machine_markdown
from paths import RESULTS, portable, portable_text
from timing import default_threads

# ---- command line -------------------------------------------------------------------


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


def command_line() -> str:
    """This script's command line, its paths relative to the repository (run from its root)."""
    return portable_text("python " + " ".join([portable(os.path.abspath(sys.argv[0]))] + sys.argv[1:]))


# ---- output files -------------------------------------------------------------------


def out_dir(opts) -> Path:
    d = opts.out_dir or (RESULTS / "quick" if opts.quick else RESULTS)
    d.mkdir(parents=True, exist_ok=True)
    return d


def json_default(x):
    """json.dumps's `default`: NumPy scalars and arrays, and paths."""
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (np.ndarray, Path)):
        return x.tolist() if isinstance(x, np.ndarray) else portable(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(portable_text(json.dumps(data, indent=1, default=json_default)) + "\n")
    os.replace(tmp, path)


def save(name: str, results: dict, markdown: str, opts) -> list[Path]:
    """name.json and name.md in the output folder (plus --json PATH)."""
    d = out_dir(opts)
    written = [d / f"{name}.json", d / f"{name}.md"]
    write_json(written[0], results)
    written[1].write_text(portable_text(markdown))
    if opts.json is not None:
        write_json(opts.json, results)
        written.append(opts.json)
    return written


def publish(name: str, title: str, results: dict, body: str, opts) -> None:
    """The report every script ends with: a title, the command, the machine, then
    `body`; written as name.md and name.json (see save) and printed."""
    md = f"# {title}\n\n`{results['command']}`\n\n" + machine_markdown(results["machine"]) + "\n\n" + body
    md = portable_text(md)
    for p in save(name, results, md, opts):
        print(f"wrote {p}", file=sys.stderr)
    print(md)


def script_main(name: str, title: str, build_parser, run, report, argv=None) -> int:
    """main() of one benchmark script: parse, run, report."""
    opts = build_parser().parse_args(argv)
    results = run(opts)
    publish(name, title, results, report(results, out_dir(opts)), opts)
    return 0


# ---- text ---------------------------------------------------------------------------


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


def profile_markdown(prof: dict, scale: float = 1e3, unit: str = "ms") -> str:
    """A profile_kernels result as a table, largest first, with the remainder."""
    total, parts = prof["total_s"], prof["kernels_s"]
    rows = [[f"`{n}`", fmt(v * scale), f"{v / total:.0%}"] for n, v in sorted(parts.items(), key=lambda kv: -kv[1])]
    rest = total - sum(parts.values())
    rows.append(["NumPy and Python between kernels", fmt(rest * scale), f"{rest / total:.0%}"])
    rows.append(["**total**", fmt(total * scale), "100%"])
    return markdown_table(["kernel", unit, "share"], rows)
