"""Where things are: this folder, the repository and the results folder; `import simcore`
from a checkout; and how a report names a path. The scripts run as `python benchmarks/x.py`,
put this folder on sys.path and import the modules here by name; every module here that
imports simcore imports this one first, so a checkout without simcore installed still works. The PyTorch
reference model is the tests' (tests/torch_reference.py, imported as `torch_reference`).
"""
from __future__ import annotations

import importlib.util
import os
import re
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


# ---- how a report names a path ----------------------------------------------------------
# Reports are committed, so they must not carry this machine's folders (its venv, its
# scratch space, its home). Paths the same on every machine (/usr/lib/..., /proc/...) stay.

SYSTEM = ("/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/etc/", "/opt/", "/proc/", "/sys/", "/dev/",
          "/Library/", "/System/")
# an absolute path in running text: a slash that does not follow a word, a dot, a tilde
# or a variable (so GB/s, ../x, ~/x and $repo/x are left alone), up to a space or a quote
ABSOLUTE = re.compile(r"(?<![\w.~$}/:-])/[^\s\"'`()\[\],;|<>]+")


def _under(path: Path, root: Path) -> str | None:
    """path relative to root ('a/b', '.' for root itself), or None when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def portable(path) -> str:
    """How a report names a file: an installed library from its site-packages folder
    (`site-packages/scipy.libs/...`), anything in the repository relative to its root, in
    the home folder as `~/...`; system paths as they are; anything else relative to the
    repository root (`../scratch/runs`). A relative path is left as given."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    p = Path(os.path.abspath(text))
    parts = p.parts
    for i, part in enumerate(parts):
        if part in ("site-packages", "dist-packages"):
            return "/".join(parts[i:])
    home = Path.home()
    for candidate in dict.fromkeys((p, Path(os.path.realpath(text)))):
        for root in dict.fromkeys((REPO, Path(os.path.realpath(REPO)))):
            rel = _under(candidate, root)
            if rel is not None:
                return rel
        if home.parent != home:  # a home of "/" would claim every path
            rel = _under(candidate, home)
            if rel is not None:
                return "~" if rel == "." else "~/" + rel
    if (p.as_posix() + "/").startswith(SYSTEM):
        return p.as_posix()
    try:
        return Path(os.path.relpath(p, REPO)).as_posix()
    except ValueError:  # another drive (Windows)
        return p.name


def portable_text(text: str) -> str:
    """text with every absolute path in it named as portable() names it."""
    return ABSOLUTE.sub(lambda m: portable(m.group(0)), text)
