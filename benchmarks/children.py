"""Fresh child processes: run one job of a benchmark script in a new interpreter (its own
peak memory, its own BLAS or vector level chosen by the environment before any library
loads) and hand its JSON result back to the parent, a crash included.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from report import json_default

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
    print(_RESULT + json.dumps(result, default=json_default), flush=True)
    return True
