"""Where things are: this folder, the repository and the results folder; and `import
simcore` from a checkout. The scripts run as `python benchmarks/x.py`, put this folder on
sys.path and import the modules here by name; every module here that imports simcore
imports this one first, so a checkout without simcore installed still works. The PyTorch
reference model is the tests' (tests/torch_reference.py, imported as `torch_reference`).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
TESTS = REPO / "tests"

# tests/torch_reference.py, the PyTorch model the benchmarks race (not installed with simcore)
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))

# `python benchmarks/x.py` puts benchmarks/ on sys.path, not the repository root:
# use the checkout (built in place) when simcore is not installed.
if importlib.util.find_spec("simcore") is None:
    sys.path.insert(0, str(REPO))
